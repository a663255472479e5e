//! The owner side of a shard: the users and topics whose slot maps here.
//!
//! [`Owner`] holds the location table, the topic table, the epoch of each
//! node's sessions here, and the snapshots being received. It applies
//! session operations and topic operations, answers Locates, and routes
//! messages, sending every frame through [`Out`]. It reads the node
//! directory (is a node live, where is it connected) but never changes it.

use std::collections::HashMap;
use std::rc::Rc;

use crate::placement;
use crate::route::{self, Destination, Message, Plan, Sender};
use crate::table::topics::{SubscribeError, Topics};
use crate::table::{CloseOutcome, LoginPolicy, NodeId, OpenOutcome, Table, TableLimits};
use crate::time::Time;
use crate::wire::{
    fb, DeliverFrame, Encoder, MovedFrame, SessionClose, SessionOpen, ROUTE_FLAG_CARBON,
};

use super::batch::{publish_copies_body, push_entry_with, Class, EntryHeader, EntryKind};
use super::directory::{Directory, NodeState};
use super::out::{plan_flags, DoneTo, Out, ReportTo};
use super::slots::{Access, Slots};

/// Older handles a node may have during snapshots (see
/// `Table::begin_snapshot`); a node starting more snapshots without
/// ending them keeps what they listed instead.
const SNAPSHOTS_OPEN_MAX: usize = 8;

/// A snapshot being received from a node (see `core::sync`).
#[derive(Debug, Clone, Copy)]
pub struct Receiving {
    /// The node's epoch it belongs to.
    pub epoch: u32,
    pub generation: u64,
    /// Sessions the snapshot added (new to this shard).
    pub added: u64,
    pub snapshots_open: usize,
}

/// See the module docs.
pub struct Owner {
    index: usize,
    pub table: Table,
    pub topics: Topics,
    /// The epoch of the sessions this shard holds for each node; see
    /// `directory` for what epochs are.
    node_epochs: Vec<u32>,
    /// Until then, "no session" is answered Unknown (`--warmup-ms`).
    warm_until: Time,
    login_policy: LoginPolicy,
    /// Snapshots in progress, by node.
    pub receiving: HashMap<NodeId, Receiving, ahash::RandomState>,
    /// Scratch for `publish`: (shard, node, epoch) of each copy.
    publish_targets: Vec<(u16, NodeId, u32)>,
    /// The slots this shard serves.
    pub slots: Slots,
    /// Sessions of syncs in progress this shard ignored (slots it does
    /// not own), by node.
    ignored: HashMap<NodeId, u64, ahash::RandomState>,
}

impl Owner {
    /// When the warm-up ends (`--warmup-ms`).
    pub fn warm_until(&self) -> Time {
        self.warm_until
    }

    pub fn new(
        index: usize,
        limits: TableLimits,
        topics_max: usize,
        warm_until: Time,
        slots: Slots,
    ) -> Self {
        Owner {
            index,
            table: Table::new(limits),
            topics: Topics::new(topics_max),
            node_epochs: vec![0; limits.nodes_max],
            warm_until,
            login_policy: limits.login_policy,
            receiving: HashMap::default(),
            publish_targets: Vec::new(),
            slots,
            ignored: HashMap::default(),
        }
    }

    /// The shard owning a user or topic id (this one for a slot another
    /// router owns: the refusal is answered where the request is read).
    #[inline]
    pub fn owner_of(&self, key: &str) -> usize {
        self.slots.shard_of(key.as_bytes())
    }

    /// Refuses a request this shard does not serve with a Moved frame;
    /// returns whether it did.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        now: Time,
        request: fb::Body,
        id: u64,
        key: &str,
        device: &str,
        seq: u64,
    ) -> bool {
        let (access, slot) = self.slots.access(key.as_bytes(), now);
        let Some(reason) = access.operation_refusal() else {
            return false;
        };
        if access == Access::Fenced {
            self.slots.refused(sender.node, sender.epoch);
        }
        out.counters.moved_out += 1;
        let frame = self.moved_frame(access, slot, reason, request, id, key, device, seq);
        out.send_to(sender, Class::Response, |encoder, buf| {
            buf.extend_from_slice(encoder.moved(&frame))
        });
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn moved_frame<'k>(
        &self,
        access: Access,
        slot: u16,
        reason: fb::Reason,
        request: fb::Body,
        id: u64,
        key: &'k str,
        device: &'k str,
        seq: u64,
    ) -> MovedFrame<'k> {
        let owner = match access {
            Access::Moved { owner } => owner,
            _ => self.slots.me(),
        };
        MovedFrame {
            request,
            id,
            key,
            device,
            seq,
            slot,
            epoch: self.slots.epoch(),
            owner,
            reason,
        }
    }

    /// Records that `node`'s sessions from `epoch` on are the live ones,
    /// retiring older sessions it holds. Returns false when `epoch` itself
    /// is older than what this shard has seen (the operation is stale).
    pub fn observe_epoch(&mut self, out: &mut Out<'_>, node: NodeId, epoch: u32) -> bool {
        let seen = self.node_epochs[node.0 as usize];
        if epoch > seen {
            let retired = self.table.retire_node(node);
            out.counters.sessions_purged += retired as u64;
            self.topics.purge_node(node);
            self.receiving.remove(&node);
            self.node_epochs[node.0 as usize] = epoch;
        }
        epoch >= seen
    }

    /// The state of `node` if the sessions this shard holds of it are live:
    /// it is connected and they belong to its current epoch (a dead node's
    /// sessions may not have been retired here yet).
    pub fn live_state(&self, directory: &Directory, node: NodeId) -> Option<NodeState> {
        let state = directory.state(node);
        let live = state.connections != 0 && state.epoch == self.node_epochs[node.0 as usize];
        live.then_some(state)
    }

    // ----- Sessions ---------------------------------------------------------

    /// A SessionOpen from `sender`'s connection: applied unless the
    /// sender's epoch is stale (see [`Owner::observe_epoch`]).
    /// A SessionOpen from `sender`'s connection: applied unless the
    /// sender's epoch is stale (see [`Owner::observe_epoch`]) or the slot
    /// is not served here (answered Moved).
    pub fn open_checked(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        open: &SessionOpen<'_>,
        now: Time,
    ) {
        out.timed.session_ops += 1;
        let body = fb::Body::SessionOpen;
        if self.refuse(out, sender, now, body, 0, open.user, open.device, open.seq) {
            return;
        }
        if self.observe_epoch(out, sender.node, sender.epoch) {
            self.open(out, sender, open);
        }
    }

    /// A SessionClose from `sender`'s connection, the same way.
    pub fn close_checked(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        close: &SessionClose<'_>,
        now: Time,
    ) {
        out.timed.session_ops += 1;
        let body = fb::Body::SessionClose;
        if self.refuse(
            out,
            sender,
            now,
            body,
            0,
            close.user,
            close.device,
            close.seq,
        ) {
            return;
        }
        if self.observe_epoch(out, sender.node, sender.epoch) {
            self.close(out, sender, close);
        }
    }

    /// Applies a SessionOpen; returns what the table did.
    pub fn open(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        open: &SessionOpen<'_>,
    ) -> OpenOutcome {
        let outcome = self.table.open(
            open.user.as_bytes(),
            open.device.as_bytes(),
            open.platform,
            sender.node,
            open.seq,
        );
        let evicted_reason = match self.login_policy {
            LoginPolicy::SingleSession => fb::KickReason::SingleSession,
            _ => fb::KickReason::SamePlatformElsewhere,
        };
        let evicted: Vec<_> = self.table.drain_evicted().collect();
        for evicted in evicted {
            out.counters.sessions_evicted += 1;
            let device = String::from_utf8_lossy(&evicted.device);
            self.kick_node(out, evicted.node, open.user, &device, evicted_reason);
        }
        out.counters.session_opens += 1;
        match outcome {
            OpenOutcome::Added | OpenOutcome::Refreshed => {}
            OpenOutcome::Replaced { previous_node } => self.kick_node(
                out,
                previous_node,
                open.user,
                open.device,
                fb::KickReason::ReplacedElsewhere,
            ),
            OpenOutcome::UserFull => kick_sender(
                out,
                sender,
                open.user,
                open.device,
                fb::KickReason::SessionLimit,
            ),
            OpenOutcome::TableFull => kick_sender(
                out,
                sender,
                open.user,
                open.device,
                fb::KickReason::RouterFull,
            ),
        }
        outcome
    }

    /// Applies a SessionClose.
    fn close(&mut self, out: &mut Out<'_>, sender: Sender, close: &SessionClose<'_>) {
        let outcome = self.table.close(
            close.user.as_bytes(),
            close.device.as_bytes(),
            sender.node,
            close.seq,
        );
        if outcome == CloseOutcome::Stale {
            out.counters.session_closes_stale += 1;
        }
        out.counters.session_closes += 1;
    }

    fn kick_node(
        &self,
        out: &mut Out<'_>,
        node: NodeId,
        user: &str,
        device: &str,
        reason: fb::KickReason,
    ) {
        let state = out.directory.state(node);
        if state.epoch != self.node_epochs[node.0 as usize] {
            return; // The node's sessions are dead anyway; nobody to tell.
        }
        if let Some(shard) = state.delivery_shard(self.index) {
            out.counters.kicks += 1;
            out.send(
                shard,
                node,
                state.epoch,
                Class::Response,
                |encoder, frame| frame.extend_from_slice(encoder.kick(user, device, reason)),
            );
        }
    }

    /// Answers a Locate with the user's sessions on live nodes (a Moved
    /// frame when the slot is not served here, or its table may be
    /// incomplete).
    pub fn locate(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        query_id: u64,
        user: &str,
        now: Time,
    ) {
        let (access, slot) = self.slots.access(user.as_bytes(), now);
        if let Some(reason) = access.locate_refusal() {
            if access == Access::Fenced {
                self.slots.refused(sender.node, sender.epoch);
            }
            out.counters.moved_out += 1;
            let body = fb::Body::Locate;
            let frame = self.moved_frame(access, slot, reason, body, query_id, user, "", 0);
            return answer_locate(out, self.index, sender, |encoder, buf| {
                buf.extend_from_slice(encoder.moved(&frame))
            });
        }
        let found: Vec<_> = self
            .table
            .sessions(user.as_bytes())
            .filter(|session| self.live_state(out.directory, session.node).is_some())
            .map(|session| {
                let device = String::from_utf8_lossy(session.device);
                (session.node, device, fb::Platform(session.platform))
            })
            .collect();
        let names = out.directory.names(found.iter().map(|(node, ..)| *node));
        out.counters.locates += 1;
        let sessions: Vec<(&str, &str, fb::Platform)> = found
            .iter()
            .zip(&names)
            .map(|((_, device, platform), name)| (name.as_str(), device.as_ref(), *platform))
            .collect();
        answer_locate(out, self.index, sender, |encoder, frame| {
            frame.extend_from_slice(encoder.located(query_id, user, &sessions))
        });
    }

    // ----- Routing ----------------------------------------------------------

    /// Routes one message owned here; `token` numbers it router-wide.
    pub fn route(
        &mut self,
        out: &mut Out<'_>,
        now: Time,
        token: u64,
        sender: Sender,
        message: &Message<'_>,
    ) {
        out.timed.routes += 1;
        let (access, slot) = self.slots.access(message.to_user.as_bytes(), now);
        if let Some((verdict, reason)) = access.route_refusal() {
            let owner = match access {
                Access::Moved { owner } => {
                    out.counters.routes_moved += 1;
                    owner
                }
                _ => {
                    out.counters.routes_unknown += 1;
                    self.slots.me()
                }
            };
            let epoch = self.slots.epoch();
            let id = message.message_id;
            return out.send_to(sender, Class::Response, |encoder, frame| {
                frame.extend_from_slice(
                    encoder.status_moved(id, verdict, reason, slot, epoch, owner),
                )
            });
        }
        let mut nodes = OwnerNodes {
            index: self.index,
            directory: out.directory,
            node_epochs: &self.node_epochs,
            stale: [NodeId(0); 4],
            stale_count: 0,
        };
        let origin = out.directory.incarnation(sender.node, sender.epoch);
        let mut effects = RouteEffects {
            out: &mut *out,
            token,
            warm: now < self.warm_until || access == Access::Rebuilding,
            origin,
        };
        let outcome = route::route(&self.table, &mut nodes, &mut effects, sender, message);

        let (stale, stale_count) = (nodes.stale, nodes.stale_count);
        for &node in &stale[..stale_count] {
            let epoch = out.directory.state(node).epoch;
            self.observe_epoch(out, node, epoch);
        }
        match outcome.immediate {
            None => out.counters.routes_routed += 1,
            Some((fb::Verdict::Busy, _)) => out.counters.routes_busy += 1,
            Some(_) => out.counters.routes_offline += 1,
        }
    }

    /// Sends the carbon copies of `message` (the sender's user is owned
    /// here): one Deliver per node holding another device of `from_user`,
    /// listing those devices, with the CARBON flag. Best effort, no
    /// verdict: a congested or departed node is skipped and counted.
    pub fn carbons(&self, out: &mut Out<'_>, sender: Sender, message: &Message<'_>, now: Time) {
        if self.slots.access(message.from_user.as_bytes(), now).0 != Access::Serve {
            // Best effort: not from a table this shard may not serve.
            out.counters.carbons_skipped += 1;
            return;
        }
        let origin = out.directory.incarnation(sender.node, sender.epoch);
        // Fixed arrays, as in `route::route`: nothing allocated per message.
        const CEILING: usize = crate::limits::SESSIONS_PER_USER_MAX_CEILING as usize;
        const EMPTY: (NodeId, &[u8]) = (NodeId(0), &[]);
        let mut picked = [EMPTY; CEILING];
        let mut picked_count = 0;
        for session in self.table.sessions(message.from_user.as_bytes()) {
            if session.device != message.from_device.as_bytes() {
                // The table holds at most `sessions_per_user_max` per user.
                picked[picked_count] = (session.node, session.device);
                picked_count += 1;
            }
        }
        let picked = &mut picked[..picked_count];
        picked.sort_by_key(|&(node, _)| node);
        for group in picked.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0;
            let state = self.live_state(out.directory, node);
            let shard = state.and_then(|state| {
                state
                    .delivery_shard(self.index)
                    .filter(|&shard| !state.is_congested_on(shard))
            });
            let (Some(state), Some(shard)) = (state, shard) else {
                out.counters.carbons_skipped += 1;
                continue;
            };
            let mut devices = [&[][..]; CEILING];
            for (slot, &(_, device)) in devices.iter_mut().zip(group) {
                *slot = device;
            }
            let frame = DeliverFrame {
                message_id: message.message_id,
                from_user: message.from_user,
                from_device: message.from_device,
                to_user: message.to_user,
                devices: &devices[..group.len()],
                flags: ROUTE_FLAG_CARBON,
                payload: message.payload,
                origin,
            };
            if shard == self.index {
                if let Some(id) = out.conns.for_node(node, state.epoch) {
                    out.message_to(id, |buf| Encoder::write_deliver(buf, &frame));
                }
            } else {
                let header = EntryHeader::new(EntryKind::Frame, node, state.epoch);
                push_entry_with(out.outboxes.batch(shard, Class::Response), &header, |buf| {
                    Encoder::write_deliver(buf, &frame)
                });
            }
            out.counters.carbons_out += 1;
        }
    }

    // ----- Topics -----------------------------------------------------------

    /// Applies a Subscribe.
    pub fn subscribe(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        topic: &str,
        request_id: u64,
        now: Time,
    ) {
        let body = fb::Body::Subscribe;
        if self.refuse(out, sender, now, body, request_id, topic, "", 0) {
            return;
        }
        if !self.observe_epoch(out, sender.node, sender.epoch) {
            return; // From a connection whose node is already gone.
        }
        let result = self
            .topics
            .subscribe(topic.as_bytes(), sender.node, sender.epoch);
        if let Err(SubscribeError::Full) = result {
            out.counters.subscribes_refused += 1;
            let (verdict, reason) = (fb::Verdict::Rejected, fb::Reason::TopicsFull);
            out.status(sender, request_id, verdict, reason, Class::Response);
        }
    }

    pub fn unsubscribe(&mut self, out: &mut Out<'_>, sender: Sender, topic: &str, now: Time) {
        let body = fb::Body::Unsubscribe;
        if self.refuse(out, sender, now, body, 0, topic, "", 0) {
            return;
        }
        if !self.observe_epoch(out, sender.node, sender.epoch) {
            return;
        }
        self.topics.unsubscribe(topic.as_bytes(), sender.node);
    }

    /// Sends a Publish (re-encoded with its sender's name) to every node
    /// subscribed to its topic but the sender: one entry per shard that
    /// holds subscribers' connections, listing them. Each of those shards
    /// reports when its copies are queued (`done`, one part of as many as
    /// there are such shards).
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        topic: &str,
        message_id: u64,
        frame: &Rc<[u8]>,
        token: u64,
        units: u64,
        now: Time,
    ) {
        if self.refuse(
            out,
            sender,
            now,
            fb::Body::Publish,
            message_id,
            topic,
            "",
            0,
        ) {
            let done = DoneTo {
                sender,
                token,
                parts: 1,
                units,
            };
            return out.done(done, super::batch::CreditKind::FanOutBytes);
        }
        out.counters.publishes += 1;
        // The subscribers by shard, in a scratch list kept for the next
        // Publish (no allocation per message once it has grown).
        let mut targets = std::mem::take(&mut self.publish_targets);
        targets.clear();
        for &(node, epoch) in self.topics.subscribers(topic.as_bytes()) {
            if node == sender.node {
                continue;
            }
            let state = out.directory.state(node);
            // The copy goes where the node's Broadcasts go: its first
            // connection that is not closing.
            let Some(shard) = state.fan_out_shard().filter(|_| state.epoch == epoch) else {
                continue; // The node is gone; its subscriptions go with it.
            };
            targets.push((shard as u16, node, epoch));
        }
        targets.sort_unstable_by_key(|&(shard, _, _)| shard);
        let groups = || targets.chunk_by(|a, b| a.0 == b.0);
        let parts = groups().count();
        let done = DoneTo {
            sender,
            token,
            parts: u8::try_from(parts.max(1)).expect("shards fit u8"),
            units,
        };
        if parts == 0 {
            self.publish_targets = targets;
            return out.done(done, super::batch::CreditKind::FanOutBytes);
        }
        for group in groups() {
            let shard = usize::from(group[0].0);
            let subscribers = group.iter().map(|&(_, node, epoch)| (node, epoch));
            out.counters.publish_copies_out += group.len() as u64;
            if shard == self.index {
                copies_here(out, frame, subscribers, done);
            } else {
                let header = EntryHeader {
                    fanout: done.parts,
                    message_id: units,
                    token,
                    ..EntryHeader::for_sender(EntryKind::PublishCopies, sender)
                };
                push_entry_with(out.outboxes.batch(shard, Class::Response), &header, |buf| {
                    publish_copies_body(buf, frame, subscribers)
                });
            }
        }
        self.publish_targets = targets;
    }

    // ----- Snapshots --------------------------------------------------------

    /// Applies sessions of `node`'s snapshot `generation`; returns how
    /// many were applied.
    pub fn sync_sessions<'s>(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        generation: u64,
        sessions: impl Iterator<Item = SessionOpen<'s>>,
    ) {
        if !self.observe_epoch(out, sender.node, sender.epoch) {
            return;
        }
        let current = self.receiving.get(&sender.node).copied();
        let fresh = current.is_none_or(|r| r.generation != generation || r.epoch != sender.epoch);
        if fresh {
            let snapshots_open = current.map_or(0, |r| r.snapshots_open);
            if snapshots_open < SNAPSHOTS_OPEN_MAX {
                self.table.begin_snapshot(sender.node);
            }
            self.receiving.insert(
                sender.node,
                Receiving {
                    epoch: sender.epoch,
                    generation,
                    added: 0,
                    snapshots_open: snapshots_open + 1,
                },
            );
        }
        for session in sessions {
            if !self.slots.holds(session.user.as_bytes()) {
                *self.ignored.entry(sender.node).or_default() += 1;
                continue;
            }
            let outcome = self.open(out, sender, &session);
            if matches!(outcome, OpenOutcome::Added | OpenOutcome::Replaced { .. }) {
                let receiving = self
                    .receiving
                    .get_mut(&sender.node)
                    .expect("inserted above");
                receiving.added += 1;
            }
        }
    }

    /// Ends `node`'s snapshot `generation`: its sessions here in `scope`
    /// (all when empty) that the snapshot did not list die; a resync
    /// answering map `epoch` counts for the slots being rebuilt. Returns
    /// (added, removed, ignored).
    pub fn sync_end(
        &mut self,
        out: &mut Out<'_>,
        sender: Sender,
        generation: u64,
        end: &SyncScope,
    ) -> (u64, u64, u64) {
        let ignored = self.ignored.remove(&sender.node).unwrap_or(0);
        let Some(receiving) = self.receiving.get(&sender.node).copied() else {
            // Every batch reaches every shard, so this is a stale end.
            return (0, 0, ignored);
        };
        if receiving.generation != generation || receiving.epoch != sender.epoch {
            // Another snapshot (a newer generation) is arriving: leave it
            // and this shard's sessions alone.
            return (0, 0, ignored);
        }
        self.receiving.remove(&sender.node);
        if !self.observe_epoch(out, sender.node, sender.epoch) {
            return (receiving.added, 0, ignored);
        }
        let removed = if end.scope.is_empty() {
            self.table.end_snapshot(sender.node)
        } else {
            let scope = crate::cluster::map::SlotSet::from_spans(&end.scope);
            self.table.end_snapshot_scoped(sender.node, |user| {
                scope.contains(placement::slot_for_user(user))
            })
        } as u64;
        out.counters.sessions_removed_by_sync += removed;
        self.slots.resynced(sender.node, end.epoch);
        (receiving.added, removed, ignored)
    }

    /// Drops the users and topics of slots this shard lost.
    pub fn drop_slots(&mut self, out: &mut Out<'_>, lost: &crate::cluster::map::SlotSet) {
        let in_lost = |key: &[u8]| lost.contains(placement::slot_for_user(key));
        let sessions = self.table.remove_users(in_lost);
        let topics = self.topics.remove_topics(in_lost);
        out.counters.sessions_dropped_moved += sessions as u64;
        out.counters.topics_dropped_moved += topics as u64;
    }
}

/// Queues a fanned-out copy to each listed `(node, epoch)` whose
/// connection is here, holding it where the connection is congested, and
/// reports the part done (now, or when the last held copy is queued).
pub fn copies_here(
    out: &mut Out<'_>,
    frame: &Rc<[u8]>,
    targets: impl Iterator<Item = (NodeId, u32)>,
    done: DoneTo,
) {
    let mut held = 0;
    for (node, epoch) in targets {
        let Some(id) = out.conns.for_node(node, epoch) else {
            continue;
        };
        if !out.conns.get(id).is_some_and(|conn| conn.is_open()) {
            continue;
        }
        if out.copy_to(id, frame, done.token) {
            held += 1;
        }
    }
    if held > 0 {
        out.hold_copies(done.token, held, done);
    } else {
        out.done(done, super::batch::CreditKind::FanOutBytes);
    }
}

/// The scope of a SessionSync being committed (see `core::sync`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncScope {
    /// Slot ranges (first, last); empty: every slot.
    pub scope: Vec<(u16, u16)>,
    /// The map epoch the resync answers.
    pub epoch: u64,
}

/// Queues the answer to a Locate on the sender's connection and gives the
/// Locate back to its budget there.
fn answer_locate(
    out: &mut Out<'_>,
    index: usize,
    sender: Sender,
    write: impl FnOnce(&mut Encoder, &mut Vec<u8>),
) {
    if sender.shard == index {
        out.control_here(sender, write);
        give_back_locate(out, sender);
    } else {
        let header = EntryHeader::for_sender(EntryKind::Located, sender);
        let encoder = &mut *out.encoder;
        push_entry_with(
            out.outboxes.batch(sender.shard, Class::Response),
            &header,
            |frame| write(encoder, frame),
        );
    }
}

/// Gives one Locate back to the budget of the connection it came from
/// (its answer was just queued).
pub fn give_back_locate(out: &mut Out<'_>, sender: Sender) {
    out.conns.give_back(sender, |budget| {
        budget.locates = budget.locates.saturating_sub(1)
    });
}

fn kick_sender(
    out: &mut Out<'_>,
    sender: Sender,
    user: &str,
    device: &str,
    reason: fb::KickReason,
) {
    out.counters.kicks += 1;
    out.send_to(sender, Class::Response, |encoder, frame| {
        frame.extend_from_slice(encoder.kick(user, device, reason))
    });
}

/// The owner's view of the nodes, for `route`.
struct OwnerNodes<'a> {
    index: usize,
    directory: &'a Directory,
    node_epochs: &'a [u32],
    /// Nodes whose sessions here turned out stale, retired after routing.
    stale: [NodeId; 4],
    stale_count: usize,
}

impl route::Nodes for OwnerNodes<'_> {
    fn destination(&mut self, node: NodeId) -> Destination {
        let state = self.directory.state(node);
        if state.epoch != self.node_epochs[node.0 as usize] {
            if self.stale_count < self.stale.len() {
                self.stale[self.stale_count] = node;
                self.stale_count += 1;
            }
            return Destination::Gone;
        }
        match state.delivery_shard(self.index) {
            None => Destination::Gone,
            Some(shard) if state.is_congested_on(shard) => Destination::Busy,
            Some(shard) => Destination::Deliver {
                shard,
                epoch: state.epoch,
            },
        }
    }
}

/// Carries out routing decisions: each Deliver is encoded straight into
/// the destination connection's stream, or into the batch for its shard.
struct RouteEffects<'o, 'a> {
    out: &'o mut Out<'a>,
    /// The token of the message being routed.
    token: u64,
    /// The router is warming up, or the slot is being rebuilt: "no
    /// session" is Unknown.
    warm: bool,
    /// The sender's incarnation, for the Delivers.
    origin: u64,
}

impl route::Effects for RouteEffects<'_, '_> {
    fn destination_busy(&mut self, node: NodeId) {
        let epoch = self.out.directory.state(node).epoch;
        self.out.per_node.at(node, epoch).busy += 1;
    }

    fn deliver(
        &mut self,
        node: NodeId,
        shard: usize,
        epoch: u32,
        sender: Sender,
        message: &Message<'_>,
        devices: &[&[u8]],
        plan: Plan,
    ) {
        let frame = DeliverFrame {
            message_id: message.message_id,
            from_user: message.from_user,
            from_device: message.from_device,
            to_user: message.to_user,
            devices,
            // CARBON marks carbon copies only: the recipient's own Deliver
            // never carries it, so a node can tell the two apart.
            flags: message.flags & !ROUTE_FLAG_CARBON,
            payload: message.payload,
            origin: self.origin,
        };
        let out = &mut *self.out;
        if shard == out.index {
            let report = ReportTo {
                sender,
                message_id: message.message_id,
                token: self.token,
                plan,
            };
            out.deliver_here(node, epoch, report, Class::Response, |buf| {
                Encoder::write_deliver(buf, &frame)
            });
        } else {
            let header = EntryHeader {
                kind: EntryKind::Deliver,
                origin_shard: sender.shard as u8,
                fanout: plan.fanout,
                flags: plan_flags(plan),
                node,
                epoch,
                origin_node: sender.node,
                origin_epoch: sender.epoch,
                stream: 0,
                origin_stream: sender.stream,
                message_id: message.message_id,
                token: self.token,
            };
            push_entry_with(out.outboxes.batch(shard, Class::Response), &header, |buf| {
                Encoder::write_deliver(buf, &frame)
            });
        }
    }

    fn status(
        &mut self,
        sender: Sender,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
    ) {
        let no_session = matches!(reason, fb::Reason::NoSession | fb::Reason::NoSuchDevice);
        let verdict = if verdict == fb::Verdict::Offline && no_session && self.warm {
            fb::Verdict::Unknown
        } else {
            verdict
        };
        self.out
            .status(sender, message_id, verdict, reason, Class::Response);
    }
}
