//! The node directory: which IM nodes exist, and on which shards they have
//! connections.
//!
//! It has two halves, kept apart on purpose:
//!
//! - the *control plane*, a mutex-guarded registry touched only when a
//!   connection is attached or detached (node names, incarnations, which
//!   connection holds each shard's place), and
//! - the *data plane*, one cache-line-sized [`NodeEntry`] of atomics per node,
//!   written only under the registry lock and read lock-free on every routed
//!   message: one load tells the node's session epoch, one which shards have
//!   a connection of it, one which of those are congested.
//!
//! # Epochs
//!
//! A node's sessions are valid only for the *epoch* they were opened in. The
//! epoch advances when the node's sessions die: when its last connection
//! closes, or when a new process (a different incarnation) of it attaches.
//! Shards do not have to hear about it in any particular order: every
//! session operation carries the epoch of the connection that sent it, and
//! a shard compares the epoch of the sessions it holds with the directory's
//! before routing to them. A shard that finds its sessions of a node stale
//! drops them; the purge broadcast on departure only frees memory sooner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::table::NodeId;
use crate::wire::fb;

/// The lock-free half of one node's state.
#[repr(align(64))]
#[derive(Default)]
struct NodeEntry {
    /// Epoch of the node's live sessions.
    epoch: AtomicU32,
    /// Bit `s`: the node has a connection on shard `s`.
    connections: AtomicU64,
    /// Bit `s`: that connection's output buffer is over its soft limit.
    congested: AtomicU64,
    /// Bit `s`: that connection is closing (its bit in `connections` goes
    /// when it is unregistered, up to a linger later).
    closing: AtomicU64,
    /// The incarnation of the node's process at `epoch` (for Delivers).
    incarnation: AtomicU64,
}

/// What routing needs to know about a node, read in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub epoch: u32,
    pub connections: u64,
    pub congested: u64,
    pub closing: u64,
}

impl NodeState {
    /// The shard whose connection should receive a Deliver made on
    /// `from_shard`: that shard itself when the node has a connection there
    /// (shard-direct nodes), else the lowest-numbered one, so that every
    /// message from one shard to one node takes the same path and stays in
    /// order.
    #[inline]
    pub fn delivery_shard(&self, from_shard: usize) -> Option<usize> {
        if self.connections & (1 << from_shard) != 0 {
            Some(from_shard)
        } else if self.connections != 0 {
            Some(self.connections.trailing_zeros() as usize)
        } else {
            None
        }
    }

    /// The shard that writes frames sent to every node once (NodeEvents,
    /// Broadcasts) to this node: its lowest-numbered connection that is not
    /// closing.
    #[inline]
    pub fn fan_out_shard(&self) -> Option<usize> {
        let live = self.connections & !self.closing;
        (live != 0).then(|| live.trailing_zeros() as usize)
    }

    #[inline]
    pub fn is_congested_on(&self, shard: usize) -> bool {
        self.congested & (1 << shard) != 0
    }
}

/// The registry record of one node.
struct NodeRecord {
    name: Box<str>,
    incarnation: u64,
    /// When the node (this process of it) joined, in join order; 0 while
    /// it is not live. The live node with the smallest is the senior.
    joined: u64,
    /// The attach ticket of the connection holding each shard's place, or 0.
    tickets: Box<[u64]>,
}

impl NodeRecord {
    fn connection_mask(&self) -> u64 {
        self.tickets
            .iter()
            .enumerate()
            .filter(|(_, &ticket)| ticket != 0)
            .fold(0, |mask, (shard, _)| mask | 1 << shard)
    }
}

struct Registry {
    by_name: HashMap<Box<str>, NodeId>,
    records: Vec<NodeRecord>,
    next_ticket: u64,
    next_join: u64,
    /// Sequence number of the last membership event.
    event_seq: u64,
}

impl Registry {
    /// The live node connected the longest.
    fn senior(&self) -> Option<&NodeRecord> {
        self.records
            .iter()
            .filter(|record| record.joined != 0)
            .min_by_key(|record| record.joined)
    }

    fn senior_name(&self) -> Option<Box<str>> {
        self.senior().map(|record| record.name.clone())
    }

    /// Records an event about `record`, and a SeniorChanged after it when
    /// the senior is no longer `senior_before`.
    fn events_for(
        &mut self,
        events: &mut Vec<MembershipEvent>,
        kind: fb::NodeEventKind,
        name: &str,
        incarnation: u64,
        reason: fb::LeftReason,
    ) {
        self.event_seq += 1;
        events.push(MembershipEvent {
            seq: self.event_seq,
            kind,
            node: name.into(),
            incarnation,
            reason,
            senior: self.senior_name(),
        });
    }

    fn senior_change(&mut self, events: &mut Vec<MembershipEvent>, before: Option<Box<str>>) {
        let after = self.senior_name();
        if after != before {
            self.event_seq += 1;
            events.push(MembershipEvent {
                seq: self.event_seq,
                kind: fb::NodeEventKind::SeniorChanged,
                node: after.clone().unwrap_or_default(),
                incarnation: self.senior().map_or(0, |record| record.incarnation),
                reason: fb::LeftReason::Closed,
                senior: after,
            });
        }
    }

    fn membership(&self) -> Membership {
        let mut nodes: Vec<(Box<str>, u64)> = self
            .records
            .iter()
            .filter(|record| record.joined != 0)
            .map(|record| (record.name.clone(), record.incarnation))
            .collect();
        nodes.sort();
        Membership {
            seq: self.event_seq,
            nodes,
            senior: self.senior_name(),
        }
    }
}

/// A change of the cluster's membership, to be sent to every node as a
/// NodeEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipEvent {
    pub seq: u64,
    pub kind: fb::NodeEventKind,
    pub node: Box<str>,
    pub incarnation: u64,
    pub reason: fb::LeftReason,
    /// The senior node after the event.
    pub senior: Option<Box<str>>,
}

/// The live nodes at one moment, for Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The last event this view includes.
    pub seq: u64,
    /// (name, incarnation), sorted by name.
    pub nodes: Vec<(Box<str>, u64)>,
    pub senior: Option<Box<str>>,
}

/// What a shard must do about the connections a new one superseded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Superseded {
    Nothing,
    /// The same process already had a connection on this shard (a reconnect
    /// that overtook the old connection's close); close that one.
    SameShard {
        ticket: u64,
    },
    /// A previous process of the node still had connections; its sessions
    /// are dead (the epoch advanced) and these connections must be closed.
    PreviousIncarnation {
        connections: Vec<(usize, u64)>,
    },
}

/// A connection's place in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub node: NodeId,
    pub epoch: u32,
    /// Identifies this connection's registration; detaching with an older
    /// ticket does nothing.
    pub ticket: u64,
    pub superseded: Superseded,
    /// Membership events this attach caused (a node joined, a previous
    /// process left, the senior changed), for every other node.
    pub events: Vec<MembershipEvent>,
    /// The live nodes with this one, for its Welcome.
    pub membership: Membership,
}

/// What detaching a connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The node still has connections on other shards.
    StillConnected,
    /// That was the node's last connection: its sessions are dead from
    /// `epoch` on (the new epoch); shards should purge.
    Gone { epoch: u32 },
    /// The connection had already been replaced; nothing changed.
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// `--max-nodes` distinct nodes are connected.
    Full,
}

/// The directory of one router, shared by all its shards.
pub struct Directory {
    entries: Box<[NodeEntry]>,
    registry: Mutex<Registry>,
    /// Connection slots taken on each shard (sockets served there, and
    /// hand-offs on their way), for the per-shard bound and for placing
    /// plain connections.
    shard_connections: Box<[AtomicU32]>,
    shard_count: usize,
}

impl Directory {
    pub fn new(nodes_max: usize, shard_count: usize) -> Self {
        assert!(shard_count <= 64);
        Directory {
            entries: (0..nodes_max).map(|_| NodeEntry::default()).collect(),
            registry: Mutex::new(Registry {
                by_name: HashMap::new(),
                records: Vec::new(),
                next_ticket: 1,
                next_join: 1,
                event_seq: 0,
            }),
            shard_connections: (0..shard_count).map(|_| AtomicU32::new(0)).collect(),
            shard_count,
        }
    }

    /// Reads a node's state; lock-free, for the data plane.
    #[inline]
    pub fn state(&self, node: NodeId) -> NodeState {
        let entry = &self.entries[node.0 as usize];
        NodeState {
            epoch: entry.epoch.load(Ordering::Acquire),
            connections: entry.connections.load(Ordering::Acquire),
            congested: entry.congested.load(Ordering::Relaxed),
            closing: entry.closing.load(Ordering::Acquire),
        }
    }

    /// The incarnation of `node`'s process whose sessions have `epoch`, or
    /// 0 when the node moved on since; lock-free.
    #[inline]
    pub fn incarnation(&self, node: NodeId, epoch: u32) -> u64 {
        let entry = &self.entries[node.0 as usize];
        let incarnation = entry.incarnation.load(Ordering::Acquire);
        if entry.epoch.load(Ordering::Acquire) == epoch {
            incarnation
        } else {
            0
        }
    }

    /// The nodes attached now (a connection, or a suspended one), with
    /// their epochs.
    pub fn attached(&self) -> Vec<(NodeId, u32)> {
        // Only the ids ever given out can be attached.
        let allocated = self.registry.lock().expect("directory lock").records.len();
        self.entries[..allocated]
            .iter()
            .enumerate()
            .filter_map(|(at, entry)| {
                let connected = entry.connections.load(Ordering::Acquire) != 0;
                let node = NodeId(at as u32);
                connected.then(|| (node, entry.epoch.load(Ordering::Acquire)))
            })
            .collect()
    }

    /// The live nodes of this router now (name -> incarnation): what a
    /// router in a cluster writes to etcd.
    pub fn live_nodes(&self) -> std::collections::BTreeMap<String, u64> {
        let registry = self.registry.lock().expect("directory lock");
        registry
            .records
            .iter()
            .filter(|record| record.joined != 0)
            .map(|record| (record.name.to_string(), record.incarnation))
            .collect()
    }

    /// Marks the connection registered under `ticket` on `shard` as
    /// closing (nothing if another connection took its place).
    pub fn mark_closing(&self, node: NodeId, shard: usize, ticket: u64) {
        let registry = self.registry.lock().expect("directory lock");
        if registry.records[node.0 as usize].tickets[shard] == ticket {
            self.entries[node.0 as usize]
                .closing
                .fetch_or(1 << shard, Ordering::AcqRel);
        }
    }

    /// Marks the node's connection on `shard` congested or not.
    pub fn set_congested(&self, node: NodeId, shard: usize, congested: bool) {
        let entry = &self.entries[node.0 as usize];
        if congested {
            entry.congested.fetch_or(1 << shard, Ordering::Relaxed);
        } else {
            entry.congested.fetch_and(!(1 << shard), Ordering::Relaxed);
        }
    }

    /// Reserves a connection slot on the shard that will serve a new
    /// connection: `wanted` (shard-direct) if it has room, else, for a
    /// plain connection, the shard with the fewest connections that has
    /// room (`accepting_shard` on a tie). `None`: no room where it may go.
    /// The slot is given back with [`Directory::release_slot`] when the
    /// connection's socket is gone (or it was refused after all).
    pub fn reserve_slot(
        &self,
        wanted: Option<usize>,
        accepting_shard: usize,
        per_shard_max: usize,
    ) -> Option<usize> {
        let try_reserve = |shard: usize| {
            self.shard_connections[shard]
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                    ((count as usize) < per_shard_max).then_some(count + 1)
                })
                .is_ok()
        };
        if let Some(shard) = wanted {
            return try_reserve(shard).then_some(shard);
        }
        let load = |shard: usize| self.shard_connections[shard].load(Ordering::Acquire);
        let mut order: Vec<usize> = (0..self.shard_count).collect();
        order.sort_by_key(|&shard| (load(shard), shard != accepting_shard, shard));
        order.into_iter().find(|&shard| try_reserve(shard))
    }

    /// Gives back a slot [`Directory::reserve_slot`] took.
    pub fn release_slot(&self, shard: usize) {
        let before = self.shard_connections[shard].fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a connection slot released twice");
    }

    /// Connection slots taken on `shard`.
    pub fn slots_taken(&self, shard: usize) -> usize {
        self.shard_connections[shard].load(Ordering::Acquire) as usize
    }

    /// Every node that ever connected: (id, name, incarnation, epoch,
    /// live). For the admin port.
    pub fn known(&self) -> Vec<(NodeId, String, u64, u32, bool)> {
        let registry = self.registry.lock().expect("directory lock");
        registry
            .records
            .iter()
            .enumerate()
            .map(|(at, record)| {
                let epoch = self.entries[at].epoch.load(Ordering::Acquire);
                (
                    NodeId(at as u32),
                    record.name.to_string(),
                    record.incarnation,
                    epoch,
                    record.joined != 0,
                )
            })
            .collect()
    }

    /// The id and current incarnation of node `name`, if it has ever
    /// connected.
    pub fn lookup(&self, name: &str) -> Option<(NodeId, u64)> {
        let registry = self.registry.lock().expect("directory lock");
        let node = *registry.by_name.get(name)?;
        Some((node, registry.records[node.0 as usize].incarnation))
    }

    /// Where a plain connection of node `name` (process `incarnation`)
    /// should be served to resume a stream: the lowest shard on which that
    /// process still has a connection (open or suspended).
    pub fn resume_shard(&self, name: &str, incarnation: u64) -> Option<usize> {
        let registry = self.registry.lock().expect("directory lock");
        let record = &registry.records[registry.by_name.get(name)?.0 as usize];
        if record.incarnation != incarnation {
            return None;
        }
        record.tickets.iter().position(|&ticket| ticket != 0)
    }

    /// Registers a connection of node `name` (process `incarnation`) served
    /// by `shard`.
    pub fn attach(
        &self,
        name: &str,
        incarnation: u64,
        shard: usize,
    ) -> Result<Attached, AttachError> {
        let mut registry = self.registry.lock().expect("directory lock");
        let ticket = registry.next_ticket;
        registry.next_ticket += 1;

        let node = match registry.by_name.get(name) {
            Some(&node) => node,
            None => self.allocate(&mut registry, name)?,
        };
        let entry = &self.entries[node.0 as usize];
        let senior_before = registry.senior_name();
        let join = registry.next_join;
        let record = &mut registry.records[node.0 as usize];
        let previous_incarnation = record.incarnation;

        let superseded = if record.connection_mask() == 0 {
            // A fresh node, or one whose sessions already died with its last
            // connection (the epoch advanced then).
            Superseded::Nothing
        } else if record.incarnation != incarnation {
            let connections: Vec<(usize, u64)> = record
                .tickets
                .iter()
                .enumerate()
                .filter(|(_, &ticket)| ticket != 0)
                .map(|(shard, &ticket)| (shard, ticket))
                .collect();
            record.tickets.fill(0);
            entry.congested.store(0, Ordering::Relaxed);
            entry.closing.store(0, Ordering::Relaxed);
            entry.epoch.fetch_add(1, Ordering::AcqRel);
            Superseded::PreviousIncarnation { connections }
        } else if record.tickets[shard] != 0 {
            Superseded::SameShard {
                ticket: record.tickets[shard],
            }
        } else {
            Superseded::Nothing
        };

        let joins = record.connection_mask() == 0;
        record.incarnation = incarnation;
        // After the epoch moved: a reader that sees this incarnation sees
        // the epoch it belongs to.
        entry.incarnation.store(incarnation, Ordering::Release);
        record.tickets[shard] = ticket;
        entry.congested.fetch_and(!(1 << shard), Ordering::Relaxed);
        entry.closing.fetch_and(!(1 << shard), Ordering::AcqRel);
        entry
            .connections
            .store(record.connection_mask(), Ordering::Release);

        let mut events = Vec::new();
        if joins {
            if matches!(superseded, Superseded::PreviousIncarnation { .. }) {
                record.joined = 0;
                registry.events_for(
                    &mut events,
                    fb::NodeEventKind::Left,
                    name,
                    previous_incarnation,
                    fb::LeftReason::Replaced,
                );
            }
            let record = &mut registry.records[node.0 as usize];
            record.joined = join;
            registry.next_join += 1;
            registry.events_for(
                &mut events,
                fb::NodeEventKind::Joined,
                name,
                incarnation,
                fb::LeftReason::Closed,
            );
            registry.senior_change(&mut events, senior_before);
        }
        Ok(Attached {
            node,
            epoch: entry.epoch.load(Ordering::Acquire),
            ticket,
            superseded,
            events,
            membership: registry.membership(),
        })
    }

    /// Removes the connection registered under `ticket` from `shard`.
    #[cfg(test)]
    pub fn detach(&self, node: NodeId, shard: usize, ticket: u64) -> Detached {
        self.detach_for(node, shard, ticket, fb::LeftReason::Closed)
            .0
    }

    /// Removes the connection registered under `ticket` from `shard`,
    /// closed for `reason`; when it was the node's last, also returns the
    /// membership events (the node left, maybe the senior changed).
    pub fn detach_for(
        &self,
        node: NodeId,
        shard: usize,
        ticket: u64,
        reason: fb::LeftReason,
    ) -> (Detached, Vec<MembershipEvent>) {
        let mut registry = self.registry.lock().expect("directory lock");
        let detached = self.detach_locked(&mut registry, node, shard, ticket);
        let mut events = Vec::new();
        if let Detached::Gone { .. } = detached {
            let senior_before = registry.senior_name();
            let record = &mut registry.records[node.0 as usize];
            record.joined = 0;
            let (name, incarnation) = (record.name.clone(), record.incarnation);
            registry.events_for(
                &mut events,
                fb::NodeEventKind::Left,
                &name,
                incarnation,
                reason,
            );
            registry.senior_change(&mut events, senior_before);
        }
        (detached, events)
    }

    fn detach_locked(
        &self,
        registry: &mut Registry,
        node: NodeId,
        shard: usize,
        ticket: u64,
    ) -> Detached {
        let record = &mut registry.records[node.0 as usize];
        if record.tickets[shard] != ticket {
            return Detached::Stale;
        }
        record.tickets[shard] = 0;
        let entry = &self.entries[node.0 as usize];
        entry.congested.fetch_and(!(1 << shard), Ordering::Relaxed);
        entry.closing.fetch_and(!(1 << shard), Ordering::AcqRel);
        let mask = record.connection_mask();
        if mask != 0 {
            entry.connections.store(mask, Ordering::Release);
            return Detached::StillConnected;
        }
        // Advance the epoch before the mask goes to zero, so a reader that
        // sees no connection also sees the sessions are dead.
        let epoch = entry.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        entry.connections.store(0, Ordering::Release);
        Detached::Gone { epoch }
    }

    /// The name of a node, for logs.
    pub fn name(&self, node: NodeId) -> String {
        let registry = self.registry.lock().expect("directory lock");
        registry.records[node.0 as usize].name.to_string()
    }

    /// The names of `nodes`, in order, under one lock (a Locate's answer).
    pub fn names(&self, nodes: impl Iterator<Item = NodeId>) -> Vec<String> {
        let registry = self.registry.lock().expect("directory lock");
        nodes
            .map(|node| registry.records[node.0 as usize].name.to_string())
            .collect()
    }

    /// Gives `name` a node id: a new one while there is room, else the id
    /// of a node with no connection (its sessions are already dead, and its
    /// epoch keeps counting up, so nothing of the old node is mistaken for
    /// the new one).
    fn allocate(&self, registry: &mut Registry, name: &str) -> Result<NodeId, AttachError> {
        let name: Box<str> = name.into();
        if registry.records.len() < self.entries.len() {
            let node = NodeId(registry.records.len() as u32);
            registry.records.push(NodeRecord {
                name: name.clone(),
                incarnation: 0,
                joined: 0,
                tickets: vec![0; self.shard_count].into_boxed_slice(),
            });
            // Epoch 0 is never used by a live node, so a shard that has
            // never heard of a node (its epoch 0) never holds live sessions.
            self.entries[node.0 as usize]
                .epoch
                .store(1, Ordering::Release);
            registry.by_name.insert(name, node);
            return Ok(node);
        }
        let node = registry
            .records
            .iter()
            .position(|record| record.connection_mask() == 0)
            .map(|index| NodeId(index as u32))
            .ok_or(AttachError::Full)?;
        let old_name = std::mem::replace(&mut registry.records[node.0 as usize].name, name.clone());
        registry.by_name.remove(&old_name);
        registry.by_name.insert(name, node);
        self.entries[node.0 as usize]
            .epoch
            .fetch_add(1, Ordering::AcqRel);
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_connection_gone_advances_the_epoch() {
        let directory = Directory::new(4, 2);
        let a = directory.attach("n1", 1, 0).unwrap();
        assert_eq!(a.superseded, Superseded::Nothing);
        let b = directory.attach("n1", 1, 1).unwrap();
        assert_eq!((b.node, b.epoch), (a.node, a.epoch));
        assert_eq!(directory.state(a.node).connections, 0b11);
        assert_eq!(
            directory.detach(a.node, 0, a.ticket),
            Detached::StillConnected
        );
        assert_eq!(
            directory.detach(a.node, 1, b.ticket),
            Detached::Gone { epoch: a.epoch + 1 }
        );
        assert_eq!(directory.state(a.node).connections, 0);
        let again = directory.attach("n1", 1, 0).unwrap();
        assert_eq!(again.epoch, a.epoch + 1);
    }

    #[test]
    fn a_new_incarnation_fences_the_old_one() {
        let directory = Directory::new(4, 2);
        let old = directory.attach("n1", 1, 0).unwrap();
        let new = directory.attach("n1", 2, 1).unwrap();
        assert_eq!(new.epoch, old.epoch + 1);
        assert_eq!(
            new.superseded,
            Superseded::PreviousIncarnation {
                connections: vec![(0, old.ticket)]
            }
        );
        assert_eq!(directory.detach(old.node, 0, old.ticket), Detached::Stale);
        assert_eq!(directory.state(new.node).connections, 0b10);
    }

    #[test]
    fn reconnect_on_the_same_shard_replaces_the_connection() {
        let directory = Directory::new(4, 1);
        let old = directory.attach("n1", 1, 0).unwrap();
        let new = directory.attach("n1", 1, 0).unwrap();
        assert_eq!(new.superseded, Superseded::SameShard { ticket: old.ticket });
        assert_eq!(new.epoch, old.epoch);
        assert_eq!(directory.detach(old.node, 0, old.ticket), Detached::Stale);
        assert_eq!(directory.state(new.node).connections, 1);
    }

    #[test]
    fn full_directory_reuses_only_disconnected_ids() {
        let directory = Directory::new(2, 1);
        let a = directory.attach("a", 1, 0).unwrap();
        let b = directory.attach("b", 1, 0).unwrap();
        assert_eq!(directory.attach("c", 1, 0), Err(AttachError::Full));
        directory.detach(a.node, 0, a.ticket);
        let c = directory.attach("c", 1, 0).unwrap();
        assert_eq!(c.node, a.node);
        assert!(c.epoch > a.epoch, "sessions of the old node stay dead");
        assert_ne!(c.node, b.node);
    }

    #[test]
    fn delivery_prefers_the_local_shard_then_the_lowest() {
        let state = NodeState {
            epoch: 1,
            connections: 0b1010,
            congested: 0,
            closing: 0,
        };
        assert_eq!(state.delivery_shard(3), Some(3));
        assert_eq!(state.delivery_shard(0), Some(1));
        assert_eq!(
            NodeState {
                connections: 0,
                ..state
            }
            .delivery_shard(0),
            None
        );
    }

    #[test]
    fn membership_events_and_the_senior() {
        const JOINED: fb::NodeEventKind = fb::NodeEventKind::Joined;
        const LEFT: fb::NodeEventKind = fb::NodeEventKind::Left;
        const SENIOR: fb::NodeEventKind = fb::NodeEventKind::SeniorChanged;
        let kinds = |events: &[MembershipEvent]| -> Vec<(fb::NodeEventKind, String, u64)> {
            events
                .iter()
                .map(|e| (e.kind, e.node.to_string(), e.seq))
                .collect()
        };
        let directory = Directory::new(8, 2);
        let a = directory.attach("a", 1, 0).unwrap();
        assert_eq!(
            kinds(&a.events),
            [(JOINED, "a".into(), 1), (SENIOR, "a".into(), 2)]
        );
        let b = directory.attach("b", 1, 1).unwrap();
        assert_eq!(kinds(&b.events), [(JOINED, "b".into(), 3)]);
        assert_eq!(b.membership.seq, 3);
        assert_eq!(b.membership.senior.as_deref(), Some("a"));
        assert_eq!(b.membership.nodes, [("a".into(), 1), ("b".into(), 1)]);
        // A second connection of b is no event.
        let b2 = directory.attach("b", 1, 0).unwrap();
        assert!(b2.events.is_empty());
        let (_, events) = directory.detach_for(a.node, 0, a.ticket, fb::LeftReason::Goodbye);
        assert_eq!(
            kinds(&events),
            [(LEFT, "a".into(), 4), (SENIOR, "b".into(), 5)]
        );
        assert_eq!(events[0].reason, fb::LeftReason::Goodbye);
        // b leaves only with its last connection.
        let (_, events) = directory.detach_for(b.node, 1, b.ticket, fb::LeftReason::Closed);
        assert!(events.is_empty());
        let (_, events) = directory.detach_for(b.node, 0, b2.ticket, fb::LeftReason::Timeout);
        assert_eq!(
            kinds(&events),
            [(LEFT, "b".into(), 6), (SENIOR, "".into(), 7)]
        );
        assert_eq!(events[1].senior, None);
    }

    #[test]
    fn slots_go_to_the_least_loaded_shard_with_room() {
        let directory = Directory::new(8, 3);
        assert_eq!(directory.reserve_slot(None, 2, 2), Some(2));
        assert_eq!(directory.reserve_slot(None, 2, 2), Some(0));
        assert_eq!(directory.reserve_slot(None, 0, 2), Some(1));
        // Full where it was asked for: refused; elsewhere: placed.
        assert_eq!(directory.reserve_slot(Some(2), 0, 1), None);
        assert_eq!(directory.reserve_slot(None, 2, 2), Some(2));
        assert_eq!(directory.reserve_slot(None, 2, 2), Some(0));
        assert_eq!(directory.reserve_slot(None, 2, 2), Some(1));
        assert_eq!(directory.reserve_slot(None, 2, 2), None, "every shard full");
        directory.release_slot(1);
        assert_eq!(directory.slots_taken(1), 1);
        assert_eq!(directory.reserve_slot(None, 0, 2), Some(1));
    }
}
