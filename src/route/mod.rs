//! Routing decisions, with no I/O in them.
//!
//! [`route`] takes a message, the owner shard's location table, a view of
//! where each node can be reached ([`Nodes`]), and a sink for what must
//! happen ([`Effects`]): Deliver frames to destination nodes and the Status
//! verdict for the sender. The shard supplies real implementations; the
//! tests below supply fakes and check the decisions alone.
//!
//! The verdict rules (docs/PROTOCOL.md, "Verdicts"):
//!
//! - a recipient with no session (or no session on `to_device`) is
//!   `Offline`, always reported;
//! - a message queued to at least one destination node is `Routed`,
//!   reported only when the sender set the ACK flag (`PartiallyBusy` when
//!   some destination nodes were congested);
//! - a message whose every destination node is congested is `Busy`,
//!   always reported.
//!
//! So every Route gets exactly one verdict when the sender asks for one, and
//! a message that is not delivered is never dropped without telling the
//! sender.

use crate::limits::{DEVICE_ID_BYTES_MAX, SESSIONS_PER_USER_MAX_CEILING, USER_ID_BYTES_MAX};
use crate::table::{NodeId, Table};
use crate::wire::{fb, ROUTE_FLAG_ACK};

/// A Route's fields, read in place from the frame.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub message_id: u64,
    pub from_user: &'a str,
    pub from_device: &'a str,
    pub to_user: &'a str,
    pub to_device: Option<&'a str>,
    pub flags: u32,
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Reads and checks a Route at ingress. An id out of range is refused
    /// with the reason for a `Rejected` verdict.
    pub fn from_route(route: fb::Route<'a>) -> Result<Self, fb::Reason> {
        let message = Message {
            message_id: route.message_id(),
            from_user: route.from_user().unwrap_or(""),
            from_device: route.from_device().unwrap_or(""),
            to_user: route.to_user(),
            to_device: route.to_device(),
            flags: route.flags(),
            payload: route.payload().map_or(&[][..], |payload| payload.bytes()),
        };
        let to_device_ok = message
            .to_device
            .is_none_or(|device| (1..=DEVICE_ID_BYTES_MAX).contains(&device.len()));
        if !(1..=USER_ID_BYTES_MAX).contains(&message.to_user.len()) || !to_device_ok {
            return Err(fb::Reason::InvalidRecipient);
        }
        if message.from_user.len() > USER_ID_BYTES_MAX
            || message.from_device.len() > DEVICE_ID_BYTES_MAX
        {
            return Err(fb::Reason::InvalidSender);
        }
        Ok(message)
    }

    pub fn wants_ack(&self) -> bool {
        self.flags & ROUTE_FLAG_ACK != 0
    }
}

/// The node connection a message came in on, where its verdict goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub shard: usize,
    pub node: NodeId,
    pub epoch: u32,
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

/// What routing asks the shard to do.
pub trait Effects {
    /// Queue one Deliver of `message` to `node`, for `devices`.
    fn deliver(
        &mut self,
        node: NodeId,
        shard: usize,
        epoch: u32,
        sender: Sender,
        message: &Message<'_>,
        devices: &[&[u8]],
    );

    /// Tell the sender's node the verdict on `message_id`.
    fn status(&mut self, sender: Sender, message_id: u64, verdict: fb::Verdict, reason: fb::Reason);
}

/// The decision on one message, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: fb::Verdict,
    pub reason: fb::Reason,
    /// Deliver frames queued.
    pub delivers: usize,
}

/// Routes one message: one Deliver per destination node listing that
/// node's devices of the recipient (or only `to_device`), and the verdict.
pub fn route(
    table: &Table,
    nodes: &mut impl Nodes,
    effects: &mut impl Effects,
    sender: Sender,
    message: &Message<'_>,
) -> Outcome {
    const EMPTY: (NodeId, &[u8]) = (NodeId(0), &[]);
    let mut picked = [EMPTY; SESSIONS_PER_USER_MAX_CEILING as usize];
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

    let mut delivers = 0;
    let mut busy = 0;
    let mut devices = [&[][..]; SESSIONS_PER_USER_MAX_CEILING as usize];
    for group in picked.chunk_by(|a, b| a.0 == b.0) {
        let node = group[0].0;
        match nodes.destination(node) {
            Destination::Deliver { shard, epoch } => {
                for (slot, &(_, device)) in devices.iter_mut().zip(group) {
                    *slot = device;
                }
                effects.deliver(node, shard, epoch, sender, message, &devices[..group.len()]);
                delivers += 1;
            }
            Destination::Busy => busy += 1,
            Destination::Gone => {}
        }
    }

    let (verdict, reason) = match (delivers, busy) {
        (0, 0) if picked_count == 0 && user_has_sessions => {
            (fb::Verdict::Offline, fb::Reason::NoSuchDevice)
        }
        (0, 0) => (fb::Verdict::Offline, fb::Reason::NoSession),
        (0, _) => (fb::Verdict::Busy, fb::Reason::DestinationBusy),
        (_, 0) => (fb::Verdict::Routed, fb::Reason::None),
        (_, _) => (fb::Verdict::Routed, fb::Reason::PartiallyBusy),
    };
    if verdict != fb::Verdict::Routed || message.wants_ack() {
        effects.status(sender, message.message_id, verdict, reason);
    }
    Outcome {
        verdict,
        reason,
        delivers,
    }
}

#[cfg(test)]
mod tests;
