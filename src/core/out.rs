//! Sending: where every frame a shard produces goes.
//!
//! [`Out`] borrows the parts of a shard that frames and outcomes flow
//! into: the connections here, the outboxes to other shards, the chunk
//! pool, the encoder, the counters. Routing, session operations and the
//! multi-shard jobs call it; it decides "here or by batch" once, encodes
//! each frame straight into its destination (a connection's stream or a
//! batch), and turns destinations' outcomes into the sender's verdict.
//! Everything it does is synchronous and bounded; nothing in it waits.

use std::collections::HashMap;
use std::rc::Rc;

use crate::metrics::ShardMetrics;
use crate::route::{self, Plan, Sender};
use crate::table::NodeId;
use crate::wire::{fb, Encoder};

use super::batch::{push_entry_with, Class, CreditKind, EntryHeader, EntryKind, Outboxes};
use super::batch::{FLAG_ACK, FLAG_BUSY_SEEN, FLAG_QUEUED};
use super::conns::{ConnId, Conns, Held, LeaveReason, LinkState, PushError};
use super::directory::Directory;
use super::stream::{BufferPool, Deferred};

/// Where a Deliver's outcome goes, and what the sender's verdict needs.
#[derive(Debug, Clone, Copy)]
pub struct ReportTo {
    pub sender: Sender,
    pub message_id: u64,
    pub token: u64,
    pub plan: Plan,
}

pub fn plan_flags(plan: Plan) -> u8 {
    (if plan.wants_ack { FLAG_ACK } else { 0 }) | if plan.busy_seen { FLAG_BUSY_SEEN } else { 0 }
}

pub fn plan_from_flags(fanout: u8, flags: u8) -> Plan {
    Plan {
        fanout,
        wants_ack: flags & FLAG_ACK != 0,
        busy_seen: flags & FLAG_BUSY_SEEN != 0,
    }
}

/// The completion report owed for a fanned-out request (a Broadcast or
/// Publish) once every copy on this shard is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoneTo {
    pub sender: Sender,
    pub token: u64,
    /// The request's parts (shards that report).
    pub parts: u8,
    /// Budget units the request holds.
    pub units: u64,
}

/// Copies waiting for connections whose sockets are behind, per request.
#[derive(Default)]
pub struct HeldCopies {
    /// token -> (copies still held here, where to report when none is).
    waiting: HashMap<u64, (u32, DoneTo), ahash::RandomState>,
}

/// Why a connection closes, with the Error frame the node is told (if any).
#[derive(Debug, Clone)]
pub struct Close {
    pub code: Option<fb::ErrorCode>,
    pub text: String,
    pub reason: LeaveReason,
}

impl Close {
    pub fn error(code: fb::ErrorCode, text: impl Into<String>, reason: LeaveReason) -> Close {
        Close {
            code: Some(code),
            text: text.into(),
            reason,
        }
    }

    pub fn silent(text: impl Into<String>, reason: LeaveReason) -> Close {
        Close {
            code: None,
            text: text.into(),
            reason,
        }
    }

    pub fn slow_consumer() -> Close {
        Close::error(
            fb::ErrorCode::SlowConsumer,
            "the node reads too slowly: the NodeEvents held for it passed --out-buffer-bytes",
            fb::LeftReason::Slow,
        )
    }
}

/// The parts of a shard that frames flow into. See the module docs.
pub struct Out<'a> {
    pub index: usize,
    pub conns: &'a mut Conns,
    pub outboxes: &'a mut Outboxes,
    pub pool: &'a mut BufferPool,
    pub counters: &'a mut ShardMetrics,
    pub directory: &'a Directory,
    pub encoder: &'a mut Encoder,
    pub held: &'a mut HeldCopies,
    /// Connections closed during this operation, for the log.
    pub closed: &'a mut Vec<(ConnId, Close)>,
    /// Fanout Deliver outcomes for Fanouts coordinated here:
    /// (token, node, queued).
    pub fanout_reports: &'a mut Vec<(u64, NodeId, bool)>,
    /// Answers to Fanouts coordinated here, resolved here: (token, answer).
    pub fanout_answers: &'a mut Vec<(u64, Vec<u8>)>,
    /// Work to time when the operation ends.
    pub timed: &'a mut Timed,
    /// Per node: Busy verdicts and slow-consumer closes (for `/nodez`).
    pub per_node: &'a mut PerNode,
}

/// Counts kept per node by each shard, for the admin port's `/nodez`:
/// indexed by `NodeId`, each tagged with the node's epoch (a directory
/// record reused by another node process starts again from zero).
#[derive(Debug, Default)]
pub struct PerNode {
    counts: Vec<NodeCounts>,
}

/// See [`PerNode`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounts {
    pub epoch: u32,
    /// Routes answered Busy (or delivered partially) because this node's
    /// connection was over its soft limit.
    pub busy: u64,
    /// Connections of this node closed as slow consumers.
    pub slow: u64,
}

impl PerNode {
    /// The counts of `node` at `epoch`, reset when the epoch changed.
    pub fn at(&mut self, node: NodeId, epoch: u32) -> &mut NodeCounts {
        let index = node.0 as usize;
        if index >= self.counts.len() {
            self.counts.resize(index + 1, NodeCounts::default());
        }
        let counts = &mut self.counts[index];
        if counts.epoch != epoch {
            *counts = NodeCounts {
                epoch,
                ..NodeCounts::default()
            };
        }
        counts
    }

    /// The counts of `node` at `epoch`, if any.
    pub fn get(&self, node: NodeId, epoch: u32) -> NodeCounts {
        match self.counts.get(node.0 as usize) {
            Some(counts) if counts.epoch == epoch => *counts,
            _ => NodeCounts::default(),
        }
    }
}

/// Requests handled as owner during the current operation, timed when it
/// ends ([`super::ShardCore::settle_timing`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timed {
    pub routes: u64,
    pub session_ops: u64,
}

impl Out<'_> {
    /// Writes a frame `write` encodes to `node`'s connection on `shard`,
    /// if it is still the one at `epoch`: here, or by an entry of `class`.
    /// A control frame: over the hard limit, the connection closes as a
    /// slow consumer.
    pub fn send(
        &mut self,
        shard: usize,
        node: NodeId,
        epoch: u32,
        class: Class,
        write: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) {
        let to = Sender {
            shard,
            node,
            epoch,
            stream: 0,
        };
        self.send_to(to, class, write);
    }

    /// Writes a frame to the connection a request came in on (its
    /// stream), here or by an entry of `class`.
    pub fn send_to(
        &mut self,
        sender: Sender,
        class: Class,
        write: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) {
        let shard = sender.shard;
        if shard == self.index {
            self.control_here(sender, write);
        } else {
            let header = EntryHeader::for_sender(EntryKind::Frame, sender);
            let encoder = &mut *self.encoder;
            push_entry_with(self.outboxes.batch(shard, class), &header, |out| {
                write(encoder, out)
            });
        }
    }

    /// Sends a Status to the connection a message came in on.
    pub fn status(
        &mut self,
        sender: Sender,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
        class: Class,
    ) {
        self.send_to(sender, class, |encoder, out| {
            out.extend_from_slice(encoder.status(message_id, verdict, reason))
        });
    }

    /// Queues a control frame to the connection of `to` here (its node at
    /// its epoch, and its stream unless that is 0), if it still takes
    /// frames.
    pub fn control_here(&mut self, to: Sender, write: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        let Some(id) = self.conns.for_sender(to) else {
            self.counters.frames_undeliverable += 1;
            return;
        };
        self.control_to(id, write);
    }

    /// Queues a control frame to connection `id`.
    pub fn control_to(&mut self, id: ConnId, write: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        let encoder = &mut *self.encoder;
        let pushed = self
            .conns
            .push(id, self.pool, self.directory, self.index, |out| {
                write(encoder, out)
            });
        if let Err(PushError::Closed) = pushed {
            self.counters.frames_undeliverable += 1;
        }
    }

    /// Queues a message frame (a Deliver) to connection `id`: never refused
    /// for size while open. Returns whether it was queued.
    pub fn message_to(&mut self, id: ConnId, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.conns
            .push(id, self.pool, self.directory, self.index, write)
            .is_ok()
    }

    /// Queues a Deliver to `node`'s connection here if it is still the one
    /// at `epoch`, and reports the outcome to the sender when the message's
    /// plan asks for it (in `class`, if the sender is on another shard).
    pub fn deliver_here(
        &mut self,
        node: NodeId,
        epoch: u32,
        report: ReportTo,
        class: Class,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let id = self.conns.for_node(node, epoch);
        let queued = id.is_some_and(|id| self.message_to(id, write));

        if queued {
            self.counters.delivers_out += 1;
        } else {
            self.counters.delivers_node_gone += 1;
        }
        if let Some(id) = id.filter(|_| queued) {
            let conn = self.conns.get_mut(id).expect("queued to it");
            if conn.defers_reports() {
                conn.stream.defer(Deferred::Route {
                    sender: report.sender,
                    message_id: report.message_id,
                    token: report.token,
                    plan: report.plan,
                });
                return;
            }
        }
        self.report_outcome(report, queued, class);
    }

    /// Reports one destination's outcome to the message's sender, when its
    /// plan needs it (in `class`, if the sender's connection is elsewhere).
    pub fn report_outcome(&mut self, report: ReportTo, queued: bool, class: Class) {
        if !report.plan.must_report(queued) {
            return;
        }
        if report.sender.shard == self.index {
            self.apply_report(&report, queued);
        } else {
            let header = EntryHeader {
                fanout: report.plan.fanout,
                flags: plan_flags(report.plan) | if queued { FLAG_QUEUED } else { 0 },
                message_id: report.message_id,
                token: report.token,
                ..EntryHeader::for_sender(EntryKind::Report, report.sender)
            };
            self.outboxes.push(report.sender.shard, class, &header, &[]);
        }
    }

    /// One destination's outcome, on the sender's shard: once every
    /// destination of the message has reported, write its verdict.
    pub fn apply_report(&mut self, report: &ReportTo, queued: bool) {
        let sender = report.sender;
        let Some(id) = self.conns.for_sender(sender) else {
            // The sender's own connection closed; it sees that failure.
            self.counters.frames_undeliverable += 1;
            return;
        };
        let conn = self.conns.get_mut(id).expect("found");
        let queued_total = match conn.collect_report(report.token, report.plan.fanout, queued) {
            Ok(Some(total)) => total,
            Ok(None) => return, // More destinations to hear from.
            Err(()) => {
                let text = "too many messages to several nodes await their verdicts";
                let close = Close::error(fb::ErrorCode::RouterFull, text, fb::LeftReason::Refused);
                return self.close(id, close);
            }
        };
        if let Some((verdict, reason)) = route::verdict(report.plan, queued_total) {
            let message_id = report.message_id;
            self.control_to(id, |encoder, out| {
                out.extend_from_slice(encoder.status(message_id, verdict, reason))
            });
        }
    }

    /// Settles outcomes that waited on `node`'s connection here: delivered
    /// (acknowledged, or queued to a resuming connection) or not.
    pub fn settle(&mut self, node: NodeId, outcomes: Vec<Deferred>, delivered: bool) {
        if !delivered {
            self.counters.parked_messages_failed += outcomes.len() as u64;
        }
        for outcome in outcomes {
            match outcome {
                Deferred::Route {
                    sender,
                    message_id,
                    token,
                    plan,
                } => {
                    let report = ReportTo {
                        sender,
                        message_id,
                        token,
                        plan,
                    };
                    self.report_outcome(report, delivered, Class::Bounce);
                }
                Deferred::Fanout { coordinator, token } => {
                    self.report_fanout_deliver(coordinator, token, node, delivered)
                }
            }
        }
    }

    /// On the shard that queued (or failed to queue) a Fanout Deliver: the
    /// outcome, to the coordinator.
    pub fn report_fanout_deliver(
        &mut self,
        coordinator: usize,
        token: u64,
        node: NodeId,
        queued: bool,
    ) {
        if coordinator == self.index {
            // Applied by the shard once this operation is over: the job
            // may be the one queueing right now.
            self.fanout_reports.push((token, node, queued));
            return;
        }
        let header = EntryHeader {
            token,
            flags: if queued { FLAG_QUEUED } else { 0 },
            ..EntryHeader::new(EntryKind::FanoutReport, node, 0)
        };
        self.outboxes.push(coordinator, Class::Bounce, &header, &[]);
    }

    /// Sends the completion of part of a request's work to its sender's
    /// shard (or applies it here).
    pub fn done(&mut self, to: DoneTo, kind: CreditKind) {
        if to.sender.shard == self.index {
            self.apply_done(to.sender, to.token, to.parts, to.units, kind);
            return;
        }
        let header = EntryHeader {
            fanout: to.parts,
            flags: kind as u8,
            message_id: to.units,
            token: to.token,
            ..EntryHeader::for_sender(EntryKind::Done, to.sender)
        };
        self.outboxes
            .push(to.sender.shard, Class::Bounce, &header, &[]);
    }

    /// On the sender's shard: one part of a request is done; once all
    /// are, its budget comes back.
    pub fn apply_done(
        &mut self,
        sender: Sender,
        token: u64,
        parts: u8,
        units: u64,
        kind: CreditKind,
    ) {
        let Some(id) = self.conns.for_node(sender.node, sender.epoch) else {
            return; // The connection is gone, and its budget with it.
        };
        let conn = self.conns.get_mut(id).expect("found");
        match conn.collect_report(token, parts, true) {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(()) => {
                let text = "too many requests await their completion";
                let close = Close::error(fb::ErrorCode::RouterFull, text, fb::LeftReason::Refused);
                return self.close(id, close);
            }
        }
        let was_exhausted = conn.budget.exhausted();
        conn.budget.give_back(kind, units);
        if was_exhausted && !conn.budget.exhausted() {
            self.conns.wake(id);
        }
    }

    /// Queues a fanned-out copy (Broadcast, Publish) to connection `id`, or
    /// holds it while the socket has a soft limit's worth still to write
    /// (see [`Held`]; bytes waiting only for the node's Ack do not count:
    /// the copy must not wait for a reader that may itself be paused).
    /// Returns whether it was held.
    pub fn copy_to(&mut self, id: ConnId, frame: &Rc<[u8]>, token: u64) -> bool {
        let soft = self.conns.limits.soft;
        let conn = self.conns.get_mut(id).expect("a target connection");
        debug_assert!(conn.is_open());
        if conn.must_hold(soft) {
            conn.held_bytes += frame.len();
            conn.held.push_back(Held {
                frame: frame.clone(),
                token: Some(token),
            });
            self.counters.copies_held += 1;
            return true;
        }
        self.message_to(id, |out| out.extend_from_slice(frame));
        false
    }

    /// Queues a NodeEvent to connection `id`, behind its held copies and
    /// held itself while the socket is behind, as a Broadcast copy is: a node that reads slowly is not dropped because others came and
    /// went. A node whose held NodeEvents pass its soft limit does not
    /// read at all: it is closed as a slow consumer.
    pub fn event_to(&mut self, id: ConnId, frame: &Rc<[u8]>) {
        let soft = self.conns.limits.soft;
        let conn = self.conns.get_mut(id).expect("a target connection");
        debug_assert!(conn.is_open());
        if !conn.must_hold(soft) {
            self.message_to(id, |out| out.extend_from_slice(frame));
            return;
        }
        if conn.held_event_bytes + frame.len() > soft {
            return self.close(id, Close::slow_consumer());
        }
        conn.held_bytes += frame.len();
        conn.held_event_bytes += frame.len();
        conn.held.push_back(Held {
            frame: frame.clone(),
            token: None,
        });
    }

    /// Records that `count` copies of request `token` wait here; `done`
    /// goes out when the last one is queued (or dropped).
    pub fn hold_copies(&mut self, token: u64, count: u32, done: DoneTo) {
        debug_assert!(count > 0);
        let entry = self.held.waiting.entry(token).or_insert((0, done));
        entry.0 += count;
    }

    /// Queues the held copies of connection `id` while it has room.
    pub fn release_held(&mut self, id: ConnId) {
        let soft = self.conns.limits.soft;
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                return;
            };
            if !conn.is_open() || conn.stream.unwritten_bytes() >= soft {
                return;
            }
            let Some(held) = conn.held.pop_front() else {
                return;
            };
            conn.held_bytes -= held.frame.len();
            if held.token.is_none() {
                conn.held_event_bytes -= held.frame.len();
            }
            self.message_to(id, |out| out.extend_from_slice(&held.frame));
            if let Some(token) = held.token {
                self.copy_settled(token);
            }
        }
    }

    /// Drops the held copies of a connection that ends or is suspended.
    pub fn drop_held(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let held = std::mem::take(&mut conn.held);
        conn.held_bytes = 0;
        conn.held_event_bytes = 0;
        for copy in held {
            if let Some(token) = copy.token {
                self.counters.copies_dropped += 1;
                self.copy_settled(token);
            }
        }
    }

    fn copy_settled(&mut self, token: u64) {
        let Some(entry) = self.held.waiting.get_mut(&token) else {
            debug_assert!(false, "a held copy without its request");
            return;
        };
        entry.0 -= 1;
        if entry.0 == 0 {
            let (_, done) = self.held.waiting.remove(&token).expect("present");
            self.done(done, CreditKind::FanOutBytes);
        }
    }

    /// Starts closing connection `id`: no more frames are queued; the
    /// socket writes what is queued, then `close`'s Error frame, and the
    /// connection ends when the driver reports the socket released. A
    /// suspended connection (no socket) ends at the next timeout. Closing
    /// twice does nothing.
    pub fn close(&mut self, id: ConnId, close: Close) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        match conn.state {
            LinkState::Closing => return,
            LinkState::Suspended { .. } => {
                // Given up: the grace ends now.
                conn.set_leave_reason(close.reason);
                conn.give_up();
                self.conns.deadlines_changed = true;
                self.closed.push((id, close));
                return;
            }
            LinkState::Open => {}
        }
        conn.set_leave_reason(close.reason);
        if close.reason == fb::LeftReason::Slow {
            self.counters.connections_slow += 1;
            self.per_node.at(conn.node, conn.epoch).slow += 1;
        }
        let farewell = close.code.map(|code| (code, close.text.as_str()));
        self.stop(id, LinkState::Closing, farewell);
        self.closed.push((id, close));
    }

    /// Suspends an open connection whose socket is lost: frames queued from
    /// now on are parked for a resuming connection until `until`. The
    /// socket writes `error` (not part of the stream) and is dropped.
    pub fn suspend(
        &mut self,
        id: ConnId,
        until: crate::time::Time,
        error: Option<(fb::ErrorCode, &str)>,
    ) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.state != LinkState::Open {
            return;
        }
        self.counters.connections_suspended += 1;
        self.conns.deadlines_changed = true;
        self.stop(id, LinkState::Suspended { until }, error);
    }

    /// What closing and suspending an open connection share: its socket
    /// writes `farewell` (an Error frame, not part of the stream) after
    /// what is queued; it takes `state`; other shards stop sending to it;
    /// its held copies are dropped; the driver is woken.
    fn stop(&mut self, id: ConnId, state: LinkState, farewell: Option<(fb::ErrorCode, &str)>) {
        let conn = self.conns.get_mut(id).expect("an open connection");
        if let Some((code, text)) = farewell {
            let frame = self.encoder.error(code, text);
            conn.stream.set_farewell(frame);
        }
        conn.state = state;
        if conn.congested {
            conn.congested = false;
            self.directory.set_congested(conn.node, self.index, false);
        }
        self.directory
            .mark_closing(conn.node, self.index, conn.ticket);
        self.drop_held(id);
        self.conns.wake(id);
    }
}
