//! Routing decisions, with no I/O in them.
//!
//! [`route`] takes a message, the owner shard's location table, a view of
//! where each node can be reached ([`Nodes`]), and a sink for what must
//! happen ([`Effects`]). The shard supplies real implementations; the tests
//! supply fakes and check the decisions alone.
//!
//! # Verdicts
//!
//! Every Route gets exactly one verdict when its sender sets ACK, and a
//! message that reaches nobody always gets one. It is decided where the
//! outcome is known:
//!
//! - When no destination node can take the message, the owner shard answers
//!   at once: `Offline` (no session, no such device) or `Busy` (every
//!   destination node is congested).
//! - Otherwise the owner sends one Deliver to each of the `fanout`
//!   destination nodes, each carrying a [`Plan`]. The shard of each
//!   destination connection reports whether it could queue its Deliver, and
//!   the sender's shard turns the `fanout` reports into one verdict
//!   ([`verdict`]): `Routed` if any copy was queued (reported only with
//!   ACK), else `Busy` or `Offline/NodeGone`. A single destination that took
//!   a message without ACK reports nothing, so the common path costs
//!   nothing extra.

use crate::limits::SESSIONS_PER_USER_MAX_CEILING;
use crate::table::{NodeId, Table};
use crate::wire::{fb, ROUTE_FLAG_ACK};

pub use crate::wire::Message;

/// The node connection a message came in on, where its verdict goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub shard: usize,
    pub node: NodeId,
    pub epoch: u32,
    /// The connection's stream (see `OutputStream::tag`): a verdict goes
    /// to this stream only, never to a newer stream of the same node.
    pub stream: u32,
}

/// Where a node's sessions can be reached right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Through its connection on `shard`, as long as it is still at `epoch`.
    Deliver { shard: usize, epoch: u32 },
    /// Its connection's output buffer is over the soft limit.
    Busy,
    /// The node's sessions here are dead (it disconnected or restarted).
    Gone,
}

/// A view of the nodes, as the owner shard sees them.
pub trait Nodes {
    fn destination(&mut self, node: NodeId) -> Destination;
}

/// What the destinations of one message need to report its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Deliver frames sent for the message (destination nodes), at least 1.
    pub fanout: u8,
    /// The sender set ACK: report `Routed` too.
    pub wants_ack: bool,
    /// Some destination nodes were congested and got no Deliver.
    pub busy_seen: bool,
}

impl Plan {
    /// Whether a destination must report its outcome: always when the
    /// verdict depends on other destinations or on failure, and for a lone
    /// successful Deliver only when the sender wants `Routed`.
    pub fn must_report(&self, queued: bool) -> bool {
        self.fanout > 1 || !queued || self.wants_ack
    }
}

/// The verdict once every destination has reported: `queued` of the
/// `plan.fanout` Deliver frames were queued to their connections. `None`
/// when nothing is to be sent (delivered, and no ACK asked).
pub fn verdict(plan: Plan, queued: u8) -> Option<(fb::Verdict, fb::Reason)> {
    debug_assert!(queued <= plan.fanout);
    if queued == 0 {
        return Some(if plan.busy_seen {
            (fb::Verdict::Busy, fb::Reason::DestinationBusy)
        } else {
            (fb::Verdict::Offline, fb::Reason::NodeGone)
        });
    }
    if !plan.wants_ack {
        return None;
    }
    if plan.busy_seen || queued < plan.fanout {
        Some((fb::Verdict::Routed, fb::Reason::Partial))
    } else {
        Some((fb::Verdict::Routed, fb::Reason::None))
    }
}

/// What routing asks the shard to do.
pub trait Effects {
    /// Queue one Deliver of `message` to `node` (through its connection on
    /// `shard`, if still at `epoch`) for `devices`.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        node: NodeId,
        shard: usize,
        epoch: u32,
        sender: Sender,
        message: &Message<'_>,
        devices: &[&[u8]],
        plan: Plan,
    );

    /// Tell the sender's node the verdict on `message_id` now.
    fn status(&mut self, sender: Sender, message_id: u64, verdict: fb::Verdict, reason: fb::Reason);

    /// `node` got no Deliver of this message because its connection was
    /// over its soft limit (for per-node counts; nothing to do by default).
    fn destination_busy(&mut self, _node: NodeId) {}
}

/// The decision on one message, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Deliver frames sent; 0 means the verdict was given at once.
    pub delivers: usize,
    /// The verdict given at once, when `delivers` is 0.
    pub immediate: Option<(fb::Verdict, fb::Reason)>,
}

/// Routes one message: one Deliver per destination node listing that
/// node's devices of the recipient (or only `to_device`), or the verdict
/// when there is nobody to deliver to.
pub fn route(
    table: &Table,
    nodes: &mut impl Nodes,
    effects: &mut impl Effects,
    sender: Sender,
    message: &Message<'_>,
) -> Outcome {
    const EMPTY: (NodeId, &[u8]) = (NodeId(0), &[]);
    const CEILING: usize = SESSIONS_PER_USER_MAX_CEILING as usize;
    let mut picked = [EMPTY; CEILING];
    let mut picked_count = 0;
    let mut user_has_sessions = false;
    for session in table.sessions(message.to_user.as_bytes()) {
        user_has_sessions = true;
        if message
            .to_device
            .is_some_and(|device| device.as_bytes() != session.device)
        {
            continue;
        }
        // The table holds at most `sessions_per_user_max` per user.
        picked[picked_count] = (session.node, session.device);
        picked_count += 1;
    }
    let picked = &mut picked[..picked_count];
    // Group by node; a stable sort keeps devices in table order.
    picked.sort_by_key(|&(node, _)| node);

    // First pass: where each node's group goes, so that every Deliver can
    // carry the fan-out.
    let mut destinations = [(0usize, 0usize, Destination::Gone); CEILING];
    let mut group_count = 0;
    let mut fanout = 0u8;
    let mut busy_seen = false;
    let mut start = 0;
    for group in picked.chunk_by(|a, b| a.0 == b.0) {
        let destination = nodes.destination(group[0].0);
        match destination {
            Destination::Deliver { .. } => fanout += 1,
            Destination::Busy => {
                busy_seen = true;
                effects.destination_busy(group[0].0);
            }
            Destination::Gone => {}
        }
        destinations[group_count] = (start, group.len(), destination);
        group_count += 1;
        start += group.len();
    }

    if fanout == 0 {
        let immediate = if busy_seen {
            (fb::Verdict::Busy, fb::Reason::DestinationBusy)
        } else if picked_count == 0 && user_has_sessions {
            (fb::Verdict::Offline, fb::Reason::NoSuchDevice)
        } else {
            (fb::Verdict::Offline, fb::Reason::NoSession)
        };
        effects.status(sender, message.message_id, immediate.0, immediate.1);
        return Outcome {
            delivers: 0,
            immediate: Some(immediate),
        };
    }

    let plan = Plan {
        fanout,
        wants_ack: message.flags & ROUTE_FLAG_ACK != 0,
        busy_seen,
    };
    let mut devices = [&[][..]; CEILING];
    for &(start, len, destination) in &destinations[..group_count] {
        if let Destination::Deliver { shard, epoch } = destination {
            let group = &picked[start..start + len];
            for (slot, &(_, device)) in devices.iter_mut().zip(group) {
                *slot = device;
            }
            effects.deliver(
                group[0].0,
                shard,
                epoch,
                sender,
                message,
                &devices[..len],
                plan,
            );
        }
    }
    Outcome {
        delivers: fanout as usize,
        immediate: None,
    }
}

#[cfg(test)]
mod tests;
