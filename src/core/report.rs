//! What a shard tells the admin port: its health and its connections
//! (`/healthz`, `/readyz`, `/nodez`). Read-only looks at the core,
//! answered to control messages off the message path.

use std::net::SocketAddr;

use super::conns::LinkState;
use super::ShardCore;
use crate::time::Time;

/// One shard's readiness, for `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardHealth {
    pub shard: usize,
    /// Milliseconds of warm-up left (`--warmup-ms`; 0 when over).
    pub warmup_left_ms: u64,
    /// A member of a cluster (else a router alone, owning every slot).
    pub member: bool,
    /// In a cluster: a slot map has been received.
    pub has_map: bool,
    /// In a cluster: the lease is not known to be alive (fenced).
    pub fenced: bool,
    /// Slots this shard owns.
    pub slots_held: usize,
    /// Of those, slots not served yet: their previous owner has not let
    /// go, or their nodes' resyncs are not all in.
    pub slots_not_ready: usize,
    pub shutting_down: bool,
    /// Node connections served by this shard.
    pub connections: usize,
}

impl ShardHealth {
    /// Ready to be sent traffic: warmed up, not stopping and, in a
    /// cluster, in the map, not fenced, and every owned slot served.
    pub fn ready(&self) -> bool {
        !self.shutting_down
            && self.warmup_left_ms == 0
            && (!self.member || (self.has_map && !self.fenced && self.slots_not_ready == 0))
    }

    /// Why not [`ShardHealth::ready`], in words.
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.shutting_down {
            reasons.push("shutting down".to_string());
        }
        if self.warmup_left_ms > 0 {
            reasons.push(format!("warming up ({} ms left)", self.warmup_left_ms));
        }
        if self.member && !self.has_map {
            reasons.push("no slot map yet".to_string());
        }
        if self.member && self.fenced {
            reasons.push("fenced (lease not known to be alive)".to_string());
        }
        if self.member && self.slots_not_ready > 0 {
            reasons.push(format!(
                "{} of {} slots waiting for their hand-over or resyncs",
                self.slots_not_ready, self.slots_held
            ));
        }
        reasons
    }
}

/// One node connection of a shard, for `/nodez`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnReport {
    pub node: String,
    pub incarnation: u64,
    pub shard: usize,
    pub peer: Option<SocketAddr>,
    /// "open", "suspended" or "closing".
    pub state: &'static str,
    /// Bytes queued for the node and not yet written to its socket.
    pub unwritten_bytes: usize,
    /// Bytes written and not yet acknowledged (nodes with acks).
    pub unacked_bytes: usize,
    /// Fanned-out copies held while the connection is over its soft limit.
    pub held_bytes: usize,
    /// Milliseconds since the node last sent anything.
    pub last_heard_ms: u64,
    /// Milliseconds since its last Pong, if any came.
    pub last_pong_ms: Option<u64>,
}

/// One node as one shard sees it, for `/nodez` (summed over shards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShardReport {
    pub node: String,
    pub incarnation: u64,
    pub live: bool,
    /// Its sessions in this shard's table.
    pub sessions: u64,
    /// Routes this shard answered Busy (or Partial) because the node's
    /// connection was over its soft limit.
    pub busy_verdicts: u64,
    /// Its connections this shard closed as slow consumers.
    pub slow_disconnects: u64,
}

/// A shard's answer to a `/nodez` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodesReport {
    pub conns: Vec<ConnReport>,
    pub nodes: Vec<NodeShardReport>,
}

impl ShardCore {
    /// This shard's readiness at `now`.
    pub fn health(&self, now: Time) -> ShardHealth {
        let slots = &self.owner.slots;
        let (slots_held, slots_not_ready) = slots.readiness();
        ShardHealth {
            shard: self.index,
            warmup_left_ms: self.owner.warm_until().since(now).as_millis() as u64,
            member: !slots.is_alone(),
            has_map: slots.map().is_some(),
            fenced: !slots.is_alone() && slots.is_fenced(now),
            slots_held,
            slots_not_ready,
            shutting_down: self.shutting_down || self.draining,
            connections: self.conns.len(),
        }
    }

    /// This shard's connections, and its figures for every node known.
    pub fn nodes_report(&self, now: Time) -> NodesReport {
        let ago = |then: Time| now.since(then).as_millis() as u64;
        let conns = self
            .conns
            .iter()
            .map(|(_, conn)| ConnReport {
                node: conn.name.to_string(),
                incarnation: conn.incarnation,
                shard: self.index,
                peer: conn.peer,
                state: match conn.state {
                    LinkState::Open => "open",
                    LinkState::Suspended { .. } => "suspended",
                    LinkState::Closing => "closing",
                },
                unwritten_bytes: conn.stream.unwritten_bytes(),
                unacked_bytes: conn.stream.unacked_bytes(),
                held_bytes: conn.held_bytes,
                last_heard_ms: ago(conn.last_heard),
                last_pong_ms: conn.last_pong.map(ago),
            })
            .collect();
        let nodes = self
            .directory
            .known()
            .into_iter()
            .map(|(node, name, incarnation, epoch, live)| {
                let counts = self.per_node.get(node, epoch);
                NodeShardReport {
                    node: name,
                    incarnation,
                    live,
                    sessions: self.owner.table.node_session_count(node) as u64,
                    busy_verdicts: counts.busy,
                    slow_disconnects: counts.slow,
                }
            })
            .collect();
        NodesReport { conns, nodes }
    }
}
