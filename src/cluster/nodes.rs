//! The IM nodes of a cluster of routers, kept in etcd, sans-IO.
//!
//! Each router writes `nodes/<node name>/<router id>` = the node's
//! incarnation, under its own lease, while that node (that process of
//! it) is attached to it, and deletes the key when the node leaves it. A
//! node is live in the cluster while it has a key at any router; its
//! process is the incarnation of its newest key. Every router watches
//! these keys and folds them here, in etcd's revision order, into the
//! same membership events: a node joined (its first key), left (its last
//! key went, or a new process of it appeared: `Replaced`), the senior
//! changed (the live node that joined first, by revision). Each event's
//! sequence number comes from the revision of the change (`revision * 4 +
//! k`, `k` counting the events of one revision), so every router numbers
//! every event alike, whichever router the node talks to and whichever is
//! the controller: one cluster-wide sequence, which survives any router.
//!
//! A router that dies takes its keys with its lease: its nodes stay live
//! if they are attached to another router, and leave (once) if not.

use std::collections::BTreeMap;

use super::etcd::Kv;
use super::map::RouterId;
use crate::core::directory::{Membership, MembershipEvent};
use crate::wire::fb;

/// One node's keys, and its life in the cluster.
#[derive(Debug, Clone, Default)]
struct NodeKeys {
    /// Router -> (incarnation, mod revision).
    at: BTreeMap<RouterId, (u64, i64)>,
    /// The live process: (incarnation, the revision it joined at); None
    /// while not live.
    live: Option<(u64, i64)>,
}

impl NodeKeys {
    /// The incarnation of the newest key.
    fn newest(&self) -> Option<u64> {
        self.at
            .values()
            .max_by_key(|(_, revision)| *revision)
            .map(|(incarnation, _)| *incarnation)
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct ClusterNodes {
    nodes: BTreeMap<String, NodeKeys>,
    /// The last event's sequence number.
    seq: u64,
    events: Vec<MembershipEvent>,
}

/// The key of `node` at `router`, under the cluster's prefix.
pub fn node_key(prefix: &str, node: &str, router: RouterId) -> String {
    format!("{prefix}nodes/{node}/{router:016x}")
}

/// (node, router) of a key's part after `<prefix>nodes/`.
fn parse(rest: &str) -> Option<(&str, RouterId)> {
    let (node, hex) = rest.rsplit_once('/')?;
    let router = (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()?;
    (!node.is_empty()).then_some((node, router))
}

impl ClusterNodes {
    /// The live nodes now, for a Welcome.
    pub fn membership(&self) -> Membership {
        let nodes = self
            .nodes
            .iter()
            .filter_map(|(name, keys)| keys.live.map(|(inc, _)| (name.as_str().into(), inc)))
            .collect();
        Membership {
            seq: self.seq,
            nodes,
            senior: self.senior(),
        }
    }

    /// The events since the last call, in order.
    pub fn take_events(&mut self) -> Vec<MembershipEvent> {
        std::mem::take(&mut self.events)
    }

    fn senior(&self) -> Option<Box<str>> {
        self.nodes
            .iter()
            .filter_map(|(name, keys)| keys.live.map(|(_, joined)| (joined, name)))
            .min()
            .map(|(_, name)| name.as_str().into())
    }

    /// Replaces everything with a snapshot (a range of `<prefix>nodes/`
    /// at `revision`). The first snapshot makes no event; a later one (the
    /// watch was lost) makes the events that turn the old state into it.
    pub fn load(&mut self, prefix: &str, revision: i64, kvs: &[Kv]) {
        let first = self.nodes.is_empty() && self.seq == 0;
        let mut fresh: BTreeMap<String, NodeKeys> = BTreeMap::new();
        for kv in kvs {
            let Some((node, router, incarnation)) = Self::read(prefix, kv) else {
                continue;
            };
            let keys = fresh.entry(node.to_owned()).or_default();
            keys.at.insert(router, (incarnation, kv.mod_revision));
            let created = keys
                .live
                .map_or(kv.create_revision, |(_, r)| r.min(kv.create_revision));
            keys.live = Some((incarnation, created));
        }
        for keys in fresh.values_mut() {
            if let (Some(newest), Some((_, joined))) = (keys.newest(), keys.live) {
                keys.live = Some((newest, joined));
            }
        }
        if first {
            self.nodes = fresh;
            self.seq = (revision.max(0) as u64) << 2;
            return;
        }
        // Whatever changed while the watch was down, at this revision.
        let names: std::collections::BTreeSet<String> =
            self.nodes.keys().chain(fresh.keys()).cloned().collect();
        let mut batch = Batch::new(self, revision);
        for name in names {
            let keys = fresh.remove(&name).unwrap_or_default();
            let joined = keys.live.map_or(revision, |(_, joined)| joined);
            batch.set(&name, keys, joined);
        }
        batch.finish();
    }

    /// A put of a key under `<prefix>nodes/`, at its mod revision.
    pub fn put(&mut self, prefix: &str, kv: &Kv) {
        let Some((node, router, incarnation)) = Self::read(prefix, kv) else {
            return;
        };
        let mut keys = self.nodes.get(node).cloned().unwrap_or_default();
        keys.at.insert(router, (incarnation, kv.mod_revision));
        let node = node.to_owned();
        let mut batch = Batch::new(self, kv.mod_revision);
        batch.set(&node, keys, kv.mod_revision);
        batch.finish();
    }

    /// A delete of `key` at `revision`.
    pub fn delete(&mut self, prefix: &str, key: &str, revision: i64) {
        let Some((node, router)) = key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("nodes/"))
            .and_then(parse)
        else {
            return;
        };
        let Some(mut keys) = self.nodes.get(node).cloned() else {
            return;
        };
        if keys.at.remove(&router).is_none() {
            return;
        }
        let node = node.to_owned();
        let mut batch = Batch::new(self, revision);
        batch.set(&node, keys, revision);
        batch.finish();
    }

    fn read<'k>(prefix: &str, kv: &'k Kv) -> Option<(&'k str, RouterId, u64)> {
        let rest = kv.key.strip_prefix(prefix)?.strip_prefix("nodes/")?;
        let (node, router) = parse(rest)?;
        let incarnation = kv.value.trim().parse().ok()?;
        Some((node, router, incarnation))
    }
}

/// The changes of one revision: each node's new keys, then the senior.
struct Batch<'a> {
    nodes: &'a mut ClusterNodes,
    revision: i64,
    k: u64,
    senior_before: Option<Box<str>>,
}

impl<'a> Batch<'a> {
    fn new(nodes: &'a mut ClusterNodes, revision: i64) -> Batch<'a> {
        let senior_before = nodes.senior();
        Batch {
            nodes,
            revision,
            k: 0,
            senior_before,
        }
    }

    fn event(
        &mut self,
        kind: fb::NodeEventKind,
        node: &str,
        incarnation: u64,
        reason: fb::LeftReason,
    ) {
        // Never below a number already used (a snapshot's revision may
        // equal the last event's).
        let seq = ((self.revision.max(0) as u64) << 2 | self.k.min(3)).max(self.nodes.seq + 1);
        self.k += 1;
        self.nodes.seq = seq;
        let senior = self.nodes.senior();
        self.nodes.events.push(MembershipEvent {
            seq,
            kind,
            node: node.into(),
            incarnation,
            reason,
            senior,
        });
    }

    /// Node `name` now has `keys` (its `live` recomputed here; `joined`:
    /// the revision it joined at if it is new).
    fn set(&mut self, name: &str, mut keys: NodeKeys, joined: i64) {
        let before = self.nodes.nodes.get(name).and_then(|k| k.live);
        let now = keys.newest();
        keys.live = match (before, now) {
            (Some((old, since)), Some(new)) if old == new => Some((new, since)),
            (_, Some(new)) => Some((new, joined)),
            (_, None) => None,
        };
        if keys.at.is_empty() {
            self.nodes.nodes.remove(name);
        } else {
            self.nodes.nodes.insert(name.to_owned(), keys);
        }
        match (before, now) {
            (Some((old, _)), Some(new)) if old == new => {}
            (Some((old, _)), Some(new)) => {
                self.event(fb::NodeEventKind::Left, name, old, fb::LeftReason::Replaced);
                self.event(fb::NodeEventKind::Joined, name, new, fb::LeftReason::Closed);
            }
            (None, Some(new)) => {
                self.event(fb::NodeEventKind::Joined, name, new, fb::LeftReason::Closed)
            }
            (Some((old, _)), None) => {
                self.event(fb::NodeEventKind::Left, name, old, fb::LeftReason::Closed)
            }
            (None, None) => {}
        }
    }

    fn finish(mut self) {
        let after = self.nodes.senior();
        if after != self.senior_before {
            let incarnation = after
                .as_deref()
                .and_then(|name| self.nodes.nodes.get(name))
                .and_then(|keys| keys.live)
                .map_or(0, |(incarnation, _)| incarnation);
            let name = after.clone().unwrap_or_default();
            self.event(
                fb::NodeEventKind::SeniorChanged,
                &name,
                incarnation,
                fb::LeftReason::Closed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/imrouter/c/";

    fn kv(node: &str, router: RouterId, incarnation: u64, revision: i64) -> Kv {
        Kv {
            key: node_key(PREFIX, node, router),
            value: incarnation.to_string(),
            create_revision: revision,
            mod_revision: revision,
            lease: router as i64,
        }
    }

    fn kinds(events: &[MembershipEvent]) -> Vec<(fb::NodeEventKind, String, u64)> {
        events
            .iter()
            .map(|e| (e.kind, e.node.to_string(), e.seq))
            .collect()
    }

    #[test]
    fn a_node_joins_once_and_leaves_with_its_last_key() {
        let mut nodes = ClusterNodes::default();
        nodes.load(PREFIX, 10, &[]);
        nodes.put(PREFIX, &kv("a", 1, 7, 11));
        nodes.put(PREFIX, &kv("a", 2, 7, 12));
        nodes.put(PREFIX, &kv("b", 2, 9, 13));
        let events = nodes.take_events();
        assert_eq!(
            kinds(&events),
            [
                (fb::NodeEventKind::Joined, "a".into(), 44),
                (fb::NodeEventKind::SeniorChanged, "a".into(), 45),
                (fb::NodeEventKind::Joined, "b".into(), 52),
            ]
        );
        assert_eq!(events[2].senior.as_deref(), Some("a"));
        // Router 1 dies: a is still at router 2.
        nodes.delete(PREFIX, &node_key(PREFIX, "a", 1), 14);
        assert!(nodes.take_events().is_empty());
        nodes.delete(PREFIX, &node_key(PREFIX, "a", 2), 15);
        assert_eq!(
            kinds(&nodes.take_events()),
            [
                (fb::NodeEventKind::Left, "a".into(), 60),
                (fb::NodeEventKind::SeniorChanged, "b".into(), 61),
            ]
        );
        let membership = nodes.membership();
        assert_eq!(membership.nodes, [("b".into(), 9)]);
        assert_eq!(membership.senior.as_deref(), Some("b"));
        assert_eq!(membership.seq, 61);
    }

    #[test]
    fn a_new_process_replaces_the_old_one() {
        let mut nodes = ClusterNodes::default();
        nodes.load(PREFIX, 5, &[kv("a", 1, 7, 3), kv("a", 2, 7, 4)]);
        assert!(nodes.take_events().is_empty(), "a first snapshot is quiet");
        assert_eq!(nodes.membership().senior.as_deref(), Some("a"));
        // The new process attaches at router 1 first; router 2 still has
        // the old one's key for a moment.
        nodes.put(PREFIX, &kv("a", 1, 8, 6));
        let events = nodes.take_events();
        assert_eq!(
            events
                .iter()
                .map(|e| (e.kind, e.incarnation, e.reason))
                .collect::<Vec<_>>(),
            [
                (fb::NodeEventKind::Left, 7, fb::LeftReason::Replaced),
                (fb::NodeEventKind::Joined, 8, fb::LeftReason::Closed),
            ]
        );
        nodes.delete(PREFIX, &node_key(PREFIX, "a", 2), 7);
        assert!(nodes.take_events().is_empty(), "still live as process 8");
    }

    #[test]
    fn two_routers_folding_the_same_keys_number_events_alike() {
        let changes = |nodes: &mut ClusterNodes| {
            nodes.put(PREFIX, &kv("a", 1, 7, 21));
            nodes.put(PREFIX, &kv("b", 1, 8, 22));
            nodes.delete(PREFIX, &node_key(PREFIX, "a", 1), 23);
        };
        let mut early = ClusterNodes::default();
        early.load(PREFIX, 20, &[]);
        changes(&mut early);
        // A router that started later loads a snapshot, then sees the rest.
        let mut late = ClusterNodes::default();
        late.load(PREFIX, 21, &[kv("a", 1, 7, 21)]);
        late.put(PREFIX, &kv("b", 1, 8, 22));
        late.delete(PREFIX, &node_key(PREFIX, "a", 1), 23);
        let early_events = early.take_events();
        let late_events = late.take_events();
        assert_eq!(
            &early_events[early_events.len() - late_events.len()..],
            &late_events[..]
        );
        assert_eq!(early.membership(), late.membership());
    }

    #[test]
    fn a_snapshot_after_a_lost_watch_makes_the_missed_events() {
        let mut nodes = ClusterNodes::default();
        nodes.load(PREFIX, 1, &[kv("a", 1, 7, 1)]);
        nodes.load(PREFIX, 9, &[kv("b", 1, 8, 5)]);
        let events = nodes.take_events();
        assert_eq!(
            events
                .iter()
                .map(|e| (e.kind, e.node.to_string()))
                .collect::<Vec<_>>(),
            [
                (fb::NodeEventKind::Left, "a".into()),
                (fb::NodeEventKind::Joined, "b".into()),
                (fb::NodeEventKind::SeniorChanged, "b".into()),
            ]
        );
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}
