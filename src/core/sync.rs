//! Resync: a node's full session list (SessionSync), after it (re)connects.
//!
//! The shard that reads the snapshot's batches (the node's connection's
//! shard, *R*) splits each batch by owner shard and forwards the sessions
//! (`SyncBatch`, at most `SYNC_ENTRY_SESSIONS` per entry); each owner opens
//! them (with the login policy, as any SessionOpen) into the node's
//! snapshot handle (see `table`). After the last batch R sends `SyncEnd`
//! to every shard: each retires the node's sessions the snapshot did not
//! list, and answers R with its counts (`SyncDone`). When every shard has
//! answered, R sends the node `SessionSyncAck`. All of it travels the
//! Forward class in order behind the node's other frames, so a SessionOpen
//! or SessionClose the node sends while its snapshot is in flight is
//! applied in order and counted in the snapshot.
//!
//! State is bounded: one snapshot in progress per node and shard (a new
//! generation replaces an unfinished one). The sessions a snapshot has in
//! flight count against its connection's budget (`Budget::sync_sessions`),
//! given back as owners apply them.

use crate::route::Sender;
use crate::table::NodeId;
use crate::wire::{SessionOpen, SessionSync};

use super::batch::{put_id, take_id, Class, CreditKind, EntryHeader, EntryKind};
use super::out::{DoneTo, Out};
use super::owner::{Owner, SyncScope};

/// Sessions in one `SyncBatch` entry: about 0.3 ms of an owner's time.
pub const SYNC_ENTRY_SESSIONS: usize = 512;

/// A snapshot whose owners have not all answered, on the reading shard.
pub struct Committing {
    pub sender: Sender,
    pub missing: usize,
    pub added: u64,
    pub removed: u64,
    pub ignored: u64,
}

/// The sessions of a `SyncBatch` entry.
pub fn decode_batch(input: &[u8]) -> impl Iterator<Item = SessionOpen<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at == input.len() {
            return None;
        }
        let user = take_id(input, &mut at);
        let device = take_id(input, &mut at);
        let platform = input[at];
        let seq = u64::from_le_bytes(input[at + 1..at + 9].try_into().expect("8 bytes"));
        at += 9;
        Some(SessionOpen {
            user,
            device,
            platform,
            seq,
        })
    })
}

/// Splits a SessionSync batch by owner: `(owner, sessions, encoded)`
/// entries, every shard at least once (with nothing of its own, so that
/// each knows the snapshot is in flight from its first batch on).
pub fn split(
    owner: &Owner,
    shard_count: usize,
    sync: &SessionSync<'_>,
) -> Vec<(usize, u64, Vec<u8>)> {
    let mut entries: Vec<(usize, u64, Vec<u8>)> =
        (0..shard_count).map(|s| (s, 0, Vec::new())).collect();
    let mut open: Vec<usize> = (0..shard_count).collect();
    for i in 0..sync.len() {
        let (user, device, platform, seq) = sync.session(i);
        let shard = owner.owner_of(user);
        let mut slot = open[shard];
        if entries[slot].1 as usize >= SYNC_ENTRY_SESSIONS {
            entries.push((shard, 0, Vec::new()));
            slot = entries.len() - 1;
            open[shard] = slot;
        }
        let entry = &mut entries[slot];
        entry.1 += 1;
        put_id(&mut entry.2, user.as_bytes());
        put_id(&mut entry.2, device.as_bytes());
        entry.2.push(platform);
        entry.2.extend_from_slice(&seq.to_le_bytes());
    }
    entries
}

/// On an owner: applies one `SyncBatch` entry and gives its sessions back
/// to the sender's budget.
pub fn apply_batch(
    out: &mut Out<'_>,
    owner: &mut Owner,
    sender: Sender,
    generation: u64,
    count: u64,
    body: &[u8],
) {
    owner.sync_sessions(out, sender, generation, decode_batch(body));
    if count > 0 {
        let done = DoneTo {
            sender,
            token: 0,
            parts: 1,
            units: count,
        };
        out.done(done, CreditKind::SyncSessions);
    }
}

/// On an owner: the snapshot is complete; answers the reading shard.
pub fn apply_end(
    out: &mut Out<'_>,
    owner: &mut Owner,
    sender: Sender,
    generation: u64,
    scope: &SyncScope,
) -> Option<Counts> {
    let (added, removed, ignored) = owner.sync_end(out, sender, generation, scope);
    if sender.shard == out.index {
        return Some((added, removed, ignored));
    }
    let mut counts = added.to_le_bytes().to_vec();
    counts.extend_from_slice(&removed.to_le_bytes());
    counts.extend_from_slice(&ignored.to_le_bytes());
    let header = EntryHeader {
        token: generation,
        ..EntryHeader::for_sender(EntryKind::SyncDone, sender)
    };
    out.outboxes
        .push(sender.shard, Class::Response, &header, &counts);
    None
}

/// What an owner did with a snapshot: sessions (added, removed, ignored).
pub type Counts = (u64, u64, u64);

/// Decodes a `SyncDone` body.
pub fn decode_done(body: &[u8]) -> Counts {
    let word = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    (word(0), word(8), word(16))
}

/// A `SyncEnd` body: the map epoch, then the scope's (first, last) pairs.
pub fn encode_scope(scope: &SyncScope) -> Vec<u8> {
    let mut body = scope.epoch.to_le_bytes().to_vec();
    for &(first, last) in &scope.scope {
        body.extend_from_slice(&first.to_le_bytes());
        body.extend_from_slice(&last.to_le_bytes());
    }
    body
}

pub fn decode_scope(body: &[u8]) -> SyncScope {
    let epoch = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let scope = body[8..]
        .chunks_exact(4)
        .map(|pair| {
            (
                u16::from_le_bytes([pair[0], pair[1]]),
                u16::from_le_bytes([pair[2], pair[3]]),
            )
        })
        .collect();
    SyncScope { scope, epoch }
}

/// The key of a snapshot being committed.
pub type CommitKey = (NodeId, u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        for scope in [
            SyncScope::default(),
            SyncScope {
                scope: vec![(0, 0), (5, 16383)],
                epoch: 9,
            },
        ] {
            assert_eq!(decode_scope(&encode_scope(&scope)), scope);
        }
    }
}
