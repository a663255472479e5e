//! Resync: a node's full session list (SessionSync), after it (re)connects.
//!
//! The shard that reads the snapshot's batches (the node's connection's
//! shard, *R*) splits each batch by owner shard and forwards the sessions
//! (`SyncBatch`); each owner opens them (with the login policy, as any
//! SessionOpen) and remembers which (user, device) the snapshot listed.
//! After the last batch R sends `SyncEnd` to every shard: each drops the
//! node's sessions it holds that the snapshot did not list, and answers R
//! with its counts (`SyncDone`). When every shard has answered, R sends the
//! node `SessionSyncAck`. All of it travels the Forward class in order
//! behind the node's other frames, so a SessionOpen or SessionClose the node
//! sends while its snapshot is in flight is applied in order and counted in
//! the snapshot.
//!
//! State is bounded: one snapshot in progress per node and shard (a new
//! generation replaces an unfinished one), holding at most the node's
//! sessions on that shard.

use std::collections::{HashMap, HashSet};

use crate::limits::{DEVICE_ID_BYTES_MAX, USER_ID_BYTES_MAX};
use crate::route::Sender;
use crate::table::{NodeId, OpenOutcome};

/// Whether the table holds the session after an open with this outcome.
fn holds(outcome: OpenOutcome) -> bool {
    matches!(
        outcome,
        OpenOutcome::Added | OpenOutcome::Refreshed | OpenOutcome::Replaced { .. }
    )
}
use crate::wire::fb;

use super::link::{Class, EntryHeader, EntryKind};
use super::Shard;

/// A snapshot being received by an owner shard.
pub(crate) struct Receiving {
    /// The node's epoch (process and connection generation) it belongs to.
    epoch: u32,
    generation: u64,
    /// The (user, device) keys the snapshot listed so far.
    listed: HashSet<Vec<u8>>,
    added: u64,
}

/// A snapshot whose owners have not all answered, on the reading shard.
pub(crate) struct Committing {
    sender: Sender,
    missing: usize,
    added: u64,
    removed: u64,
}

/// Per-shard resync state.
#[derive(Default)]
pub(crate) struct Syncs {
    receiving: HashMap<NodeId, Receiving>,
    committing: HashMap<(NodeId, u64), Committing>,
}

/// One session of a snapshot.
struct Synced<'a> {
    user: &'a str,
    device: &'a str,
    platform: u8,
    seq: u64,
}

fn key(user: &[u8], device: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + user.len() + device.len());
    key.extend_from_slice(&(user.len() as u16).to_le_bytes());
    key.extend_from_slice(user);
    key.extend_from_slice(device);
    key
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = input.split_at(n);
    *input = rest;
    head
}

fn take_str<'a>(input: &mut &'a [u8]) -> &'a str {
    let len = u16::from_le_bytes(take(input, 2).try_into().expect("2 bytes")) as usize;
    // Written by `put_str` from verified (UTF-8) strings.
    std::str::from_utf8(take(input, len)).expect("UTF-8 from a verified frame")
}

fn decode_batch(mut input: &[u8]) -> Vec<Synced<'_>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let user = take_str(&mut input);
        let device = take_str(&mut input);
        let platform = take(&mut input, 1)[0];
        let seq = u64::from_le_bytes(take(&mut input, 8).try_into().expect("8 bytes"));
        out.push(Synced {
            user,
            device,
            platform,
            seq,
        });
    }
    out
}

/// Checks a SessionSync's vectors; the reason when they are unusable.
pub(crate) fn check(sync: fb::SessionSync<'_>) -> Result<(), String> {
    let users = sync.users().map_or(0, |v| v.len());
    let devices = sync.devices().map_or(0, |v| v.len());
    let platforms = sync.platforms().map_or(0, |v| v.len());
    let seqs = sync.seqs().map_or(0, |v| v.len());
    if devices != users || (platforms != 0 && platforms != users) || (seqs != 0 && seqs != users) {
        return Err(format!(
            "SessionSync vectors differ in length: {users} users, {devices} devices, \
             {platforms} platforms, {seqs} seqs"
        ));
    }
    let ids = sync
        .users()
        .into_iter()
        .flatten()
        .zip(sync.devices().into_iter().flatten());
    for (user, device) in ids {
        if !(1..=USER_ID_BYTES_MAX).contains(&user.len())
            || !(1..=DEVICE_ID_BYTES_MAX).contains(&device.len())
        {
            return Err("a SessionSync user or device id is empty or too long".into());
        }
    }
    Ok(())
}

impl Shard {
    /// A checked SessionSync batch from `sender`'s connection.
    pub(crate) fn on_session_sync(&self, sender: Sender, sync: fb::SessionSync<'_>) {
        let generation = sync.generation();
        let mut batches: Vec<Vec<u8>> = vec![Vec::new(); self.shard_count()];
        let users = sync.users().into_iter().flatten();
        let devices = sync.devices().into_iter().flatten();
        for (i, (user, device)) in users.zip(devices).enumerate() {
            // `check` made every present, non-empty vector as long as
            // `users`; an empty one means "all default".
            let platform = sync
                .platforms()
                .filter(|v| !v.is_empty())
                .map_or(0, |v| v.get(i));
            let seq = sync
                .seqs()
                .filter(|v| !v.is_empty())
                .map_or(0, |v| v.get(i));
            let batch = &mut batches[self.owner_of(user)];
            put_str(batch, user);
            put_str(batch, device);
            batch.push(platform);
            batch.extend_from_slice(&seq.to_le_bytes());
        }
        // Every shard hears of every batch, even with no session of its own,
        // so that each knows the snapshot is in flight from its first
        // batch on (SessionOpens behind it on this connection count).
        for (owner, batch) in batches.iter().enumerate() {
            if owner == self.index {
                self.apply_sync_batch(sender, generation, batch);
            } else {
                self.forward_sync(owner, EntryKind::SyncBatch, sender, generation, batch);
            }
        }
        if sync.last() {
            self.syncs.borrow_mut().committing.insert(
                (sender.node, generation),
                Committing {
                    sender,
                    missing: self.shard_count(),
                    added: 0,
                    removed: 0,
                },
            );
            for shard in (0..self.shard_count()).filter(|&s| s != self.index) {
                self.forward_sync(shard, EntryKind::SyncEnd, sender, generation, &[]);
            }
            self.apply_sync_end(sender, generation, self.index);
        }
    }

    fn forward_sync(
        &self,
        to: usize,
        kind: EntryKind,
        sender: Sender,
        generation: u64,
        bytes: &[u8],
    ) {
        let header = EntryHeader {
            origin_shard: sender.shard as u8,
            token: generation,
            ..EntryHeader::new(kind, sender.node, sender.epoch)
        };
        self.outboxes
            .borrow_mut()
            .push(to, Class::Forward, &header, bytes);
    }

    /// On an owner: opens a batch of snapshot sessions.
    pub(crate) fn apply_sync_batch(&self, sender: Sender, generation: u64, batch: &[u8]) {
        if !self.observe_epoch(sender.node, sender.epoch) {
            return;
        }
        {
            let mut syncs = self.syncs.borrow_mut();
            let fresh = || Receiving {
                epoch: sender.epoch,
                generation,
                listed: HashSet::new(),
                added: 0,
            };
            let receiving = syncs.receiving.entry(sender.node).or_insert_with(fresh);
            if receiving.generation != generation || receiving.epoch != sender.epoch {
                *receiving = fresh();
            }
        }
        for session in decode_batch(batch) {
            let outcome = self.open_here(
                sender,
                session.user,
                session.device,
                session.platform,
                session.seq,
            );
            let mut syncs = self.syncs.borrow_mut();
            let receiving = syncs
                .receiving
                .get_mut(&sender.node)
                .expect("created above");
            // Only what the table now holds is listed: a refused open
            // (session or table limit) neither counts nor grows the set,
            // which so stays within the node's sessions here.
            if holds(outcome) {
                receiving
                    .listed
                    .insert(key(session.user.as_bytes(), session.device.as_bytes()));
            }
            if matches!(outcome, OpenOutcome::Added | OpenOutcome::Replaced { .. }) {
                receiving.added += 1;
            }
        }
    }

    /// Forgets a node's snapshot in progress (its sessions died).
    pub(crate) fn forget_sync(&self, node: NodeId) {
        let mut syncs = self.syncs.borrow_mut();
        if !syncs.receiving.is_empty() {
            syncs.receiving.remove(&node);
        }
    }

    /// On an owner: a SessionOpen (`Some(outcome)`) or SessionClose
    /// (`None`) of a node while its snapshot is arriving also updates what
    /// the snapshot lists.
    pub(crate) fn note_sync_op(
        &self,
        node: NodeId,
        user: &[u8],
        device: &[u8],
        open: Option<OpenOutcome>,
    ) {
        let mut syncs = self.syncs.borrow_mut();
        if syncs.receiving.is_empty() {
            return; // The common case: no snapshot in flight, no hashing.
        }
        if let Some(receiving) = syncs.receiving.get_mut(&node) {
            if let Some(outcome) = open {
                if holds(outcome) {
                    receiving.listed.insert(key(user, device));
                }
            } else {
                receiving.listed.remove(&key(user, device));
            }
        }
    }

    /// On an owner: the snapshot is complete; drop what it did not list.
    pub(crate) fn apply_sync_end(&self, sender: Sender, generation: u64, origin: usize) {
        let receiving = self.syncs.borrow_mut().receiving.remove(&sender.node);
        let matching = receiving
            .as_ref()
            .is_some_and(|r| r.generation == generation && r.epoch == sender.epoch);
        let (listed, added, reconcile) = match receiving {
            Some(r) if matching => (r.listed, r.added, true),
            // Another snapshot (a newer generation) is arriving: leave it
            // and this shard's sessions alone.
            Some(other) => {
                self.syncs.borrow_mut().receiving.insert(sender.node, other);
                (HashSet::new(), 0, false)
            }
            // Every batch reaches every shard, so this is a stale end.
            None => (HashSet::new(), 0, false),
        };
        let removed = if reconcile && self.observe_epoch(sender.node, sender.epoch) {
            self.table
                .borrow_mut()
                .retain_node(sender.node, |user, device| {
                    listed.contains(&key(user, device))
                })
        } else {
            0
        };
        let counter = &self.counters.sessions_removed_by_sync;
        counter.set(counter.get() + removed as u64);
        let mut counts = added.to_le_bytes().to_vec();
        counts.extend_from_slice(&(removed as u64).to_le_bytes());
        if origin == self.index {
            self.sync_done(sender.node, generation, &counts);
        } else {
            let header = EntryHeader {
                token: generation,
                ..EntryHeader::new(EntryKind::SyncDone, sender.node, sender.epoch)
            };
            self.outboxes
                .borrow_mut()
                .push(origin, Class::Response, &header, &counts);
        }
    }

    /// On the reading shard: one owner's counts; the ack once all are in.
    pub(crate) fn sync_done(&self, node: NodeId, generation: u64, counts: &[u8]) {
        let added = u64::from_le_bytes(counts[..8].try_into().expect("8 bytes"));
        let removed = u64::from_le_bytes(counts[8..16].try_into().expect("8 bytes"));
        let done = {
            let mut syncs = self.syncs.borrow_mut();
            let Some(committing) = syncs.committing.get_mut(&(node, generation)) else {
                return;
            };
            committing.missing -= 1;
            committing.added += added;
            committing.removed += removed;
            if committing.missing > 0 {
                return;
            }
            syncs.committing.remove(&(node, generation))
        };
        if let Some(committing) = done {
            let counter = &self.counters.syncs_committed;
            counter.set(counter.get() + 1);
            let sender = committing.sender;
            let mut encoder = self.encoder.borrow_mut();
            let frame = encoder.session_sync_ack(generation, committing.added, committing.removed);
            self.send_to(sender, Class::Bounce, frame);
        }
    }
}
