//! Which slots a shard serves: the cluster's slot map as this shard
//! applied it.
//!
//! A router alone owns every slot for ever: [`Slots::alone`] answers
//! "serve" without looking at the key, so a single router pays nothing
//! for the cluster. In a cluster the control plane (`cluster::member`, on
//! its own thread) sends every shard a [`ClusterView`] whenever the map,
//! the slots this router may serve or its lease change, and each shard
//! decides every request with [`Slots::access`]:
//!
//! | the slot is | a Route | a session or topic operation, a Locate |
//! |---|---|---|
//! | another router's in the newest map | Status `Moved` (slot, epoch, owner) | `Moved` frame |
//! | this router's, lease not certainly alive (`now >= fence`) | `Unknown`/`Fenced` | `Moved` frame, reason `Fenced` (refused; the node resyncs it later) |
//! | this router's, its previous owner not yet let go | `Unknown`/`Rebuilding` | applied (Locate: `Moved`, reason `Rebuilding`) |
//! | this router's, resyncs not all in | delivered; "no session" is `Unknown`/`Rebuilding` | applied (Locate: `Moved`, reason `Rebuilding`) |
//! | this router's | served | served |
//!
//! Slots this shard loses are dropped from its tables at once (it never
//! serves from a table it does not own); slots it gains are *rebuilt*: the
//! shard waits until every node attached when the slot came has sent a
//! SessionSync for its epoch (the router asks for it in the SlotMap frame
//! it pushes, `resync`), or until `rebuild_timeout` passes.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::map::{RouterId, RouterInfo, SlotMap, SlotSet, SINGLE_ROUTER};
use crate::limits::SLOT_COUNT;
use crate::placement;
use crate::table::NodeId;
use crate::time::Time;
use crate::wire::fb;

use super::directory::Directory;

/// What the control plane tells every shard of a router in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// The newest map this router has (None: not registered yet).
    pub map: Option<Arc<SlotMap>>,
    /// This router's id in the map (its lease id).
    pub me: RouterId,
    /// The slots the map gives this router whose previous owners let go
    /// of them (`Member::serving` without the lease check).
    pub released: Arc<SlotSet>,
    /// The slots this router gained since the view before (router-wide):
    /// what its nodes must resync, asked for in the SlotMap frame.
    pub gained: Arc<SlotSet>,
    /// The lease is certainly alive until then, on this process's clock.
    pub fence: Time,
    /// The most nodes attached to any router of the cluster (as the
    /// routers last wrote in etcd): a slot gained is rebuilt once at least
    /// this many nodes resynced it, not only those attached here when it
    /// came (a node still connecting would be missed).
    pub expected_nodes: u64,
}

/// How a shard may treat a request for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Serve,
    /// Serve, but "no session" is Unknown: the slot's resyncs are not all
    /// in.
    Rebuilding,
    /// Not served yet (the previous owner has not let go): Unknown for
    /// Routes; session operations are applied.
    HandOver,
    /// The lease may have lapsed: serve nothing, refuse everything.
    Fenced,
    /// Another router owns it (0: nobody, no map yet).
    Moved {
        owner: RouterId,
    },
    /// This router owns it on another shard (a map this shard has not
    /// applied yet, or the other shard has not): Unknown, retry.
    OtherShard,
}

impl Access {
    /// The verdict and reason of a Route that is not served, if any.
    pub fn route_refusal(self) -> Option<(fb::Verdict, fb::Reason)> {
        match self {
            Access::Serve | Access::Rebuilding => None,
            Access::HandOver | Access::OtherShard => {
                Some((fb::Verdict::Unknown, fb::Reason::Rebuilding))
            }
            Access::Fenced => Some((fb::Verdict::Unknown, fb::Reason::Fenced)),
            Access::Moved { .. } => Some((fb::Verdict::Moved, fb::Reason::NotOwner)),
        }
    }

    /// The reason of a `Moved` answer to a session or topic operation, if
    /// it is refused.
    pub fn operation_refusal(self) -> Option<fb::Reason> {
        match self {
            Access::Serve | Access::Rebuilding | Access::HandOver => None,
            Access::OtherShard => Some(fb::Reason::Rebuilding),
            Access::Fenced => Some(fb::Reason::Fenced),
            Access::Moved { .. } => Some(fb::Reason::NotOwner),
        }
    }

    /// The reason of a `Moved` answer to a Locate, if it is not answered
    /// (an incomplete table would give a false "nowhere").
    pub fn locate_refusal(self) -> Option<fb::Reason> {
        match self {
            Access::Serve => None,
            Access::Rebuilding | Access::HandOver => Some(fb::Reason::Rebuilding),
            other => other.operation_refusal(),
        }
    }
}

/// Slots gained together, waiting for the nodes' resyncs.
#[derive(Debug, Clone)]
struct Rebuild {
    epoch: u64,
    slots: SlotSet,
    /// Nodes attached when the slots came, with their epochs then.
    waiting: Vec<(NodeId, u32)>,
    /// Nodes whose resync for this epoch is in, and how many are expected.
    resynced: Vec<NodeId>,
    expected: usize,
    deadline: Time,
}

impl Rebuild {
    fn done(&self) -> bool {
        self.waiting.is_empty() && self.resynced.len() >= self.expected
    }
}

/// What applying a view changed, for the shard to act on.
#[derive(Debug, Default)]
pub struct Applied {
    /// The map's epoch or this router's id changed: push the map to the
    /// nodes (with `gained` as the resync request).
    pub map_changed: bool,
    /// Slots this shard no longer owns (drop their users and topics).
    pub lost: Option<SlotSet>,
}

/// See the module docs.
pub struct Slots {
    index: usize,
    shard_count: usize,
    alone: bool,
    map: Option<Arc<SlotMap>>,
    me: RouterId,
    /// Per slot: this router's shard for it, or `NOT_MINE`.
    shard_of: Box<[u8]>,
    /// Slots of this shard (tables kept).
    held: SlotSet,
    /// Of `held`, those whose previous owner let go.
    released: Arc<SlotSet>,
    /// Of `held`, those waiting for resyncs (union of `rebuilds`).
    rebuilding: SlotSet,
    rebuilds: Vec<Rebuild>,
    /// The router-wide slots to ask the nodes to resync (last view).
    gained: Arc<SlotSet>,
    fence: Time,
    /// Counts the views applied: what [`Slots::serving`] answers changes
    /// only with it, or when `now` passes the fence.
    applied_views: u64,
    /// Nodes refused while fenced: they resync the refused slots, and the
    /// shard waits for them when the fence lifts.
    refused: Vec<(NodeId, u32)>,
    rebuild_timeout: Duration,
    /// From the last view.
    expected_nodes: usize,
}

const NOT_MINE: u8 = u8::MAX;

impl Slots {
    /// A router alone: every slot, no lease, nothing to check.
    pub fn alone(index: usize, shard_count: usize, router: RouterInfo) -> Slots {
        let map = SlotMap::single(router);
        let mut held = SlotSet::empty();
        for slot in 0..SLOT_COUNT {
            if placement::shard_for_slot(slot, shard_count) == index {
                held.insert(slot);
            }
        }
        Slots {
            index,
            shard_count,
            alone: true,
            shard_of: (0..SLOT_COUNT)
                .map(|slot| placement::shard_for_slot(slot, shard_count) as u8)
                .collect(),
            map: Some(Arc::new(map)),
            me: SINGLE_ROUTER,
            released: Arc::new(held.clone()),
            held,
            rebuilding: SlotSet::empty(),
            rebuilds: Vec::new(),
            gained: Arc::new(SlotSet::empty()),
            fence: Time::NEVER,
            applied_views: 0,
            refused: Vec::new(),
            rebuild_timeout: Duration::ZERO,
            expected_nodes: 0,
        }
    }

    /// A member of a cluster before its first view: nothing is served.
    pub fn member(index: usize, shard_count: usize, rebuild_timeout: Duration) -> Slots {
        Slots {
            index,
            shard_count,
            alone: false,
            map: None,
            me: 0,
            shard_of: vec![NOT_MINE; SLOT_COUNT as usize].into_boxed_slice(),
            held: SlotSet::empty(),
            released: Arc::new(SlotSet::empty()),
            rebuilding: SlotSet::empty(),
            rebuilds: Vec::new(),
            gained: Arc::new(SlotSet::empty()),
            fence: Time::ZERO,
            applied_views: 0,
            refused: Vec::new(),
            rebuild_timeout,
            expected_nodes: 0,
        }
    }

    pub fn is_alone(&self) -> bool {
        self.alone
    }

    pub fn map(&self) -> Option<&Arc<SlotMap>> {
        self.map.as_ref()
    }

    pub fn me(&self) -> RouterId {
        self.me
    }

    pub fn epoch(&self) -> u64 {
        self.map.as_ref().map_or(0, |map| map.epoch())
    }

    /// The router-wide slots the nodes are asked to resync.
    pub fn gained(&self) -> &SlotSet {
        &self.gained
    }

    /// Slots of this shard whose resyncs are not all in.
    pub fn rebuilding(&self) -> &SlotSet {
        &self.rebuilding
    }

    pub fn held(&self) -> &SlotSet {
        &self.held
    }

    /// The shard of this router that holds `key` (a user or topic id); a
    /// slot this router does not own is answered where it is read.
    #[inline]
    pub fn shard_of(&self, key: &[u8]) -> usize {
        if self.alone {
            return placement::shard_for_user(key, self.shard_count);
        }
        match self.shard_of[placement::slot_for_user(key) as usize] {
            NOT_MINE => self.index,
            shard => shard as usize,
        }
    }

    /// How this shard may treat a request for `key` at `now`, and the
    /// key's slot (0 for a router alone, which never needs it).
    #[inline]
    pub fn access(&self, key: &[u8], now: Time) -> (Access, u16) {
        if self.alone {
            return (Access::Serve, 0);
        }
        let slot = placement::slot_for_user(key);
        (self.access_slot(slot, now), slot)
    }

    pub fn access_slot(&self, slot: u16, now: Time) -> Access {
        let Some(map) = &self.map else {
            return Access::Moved { owner: 0 };
        };
        if !self.held.contains(slot) {
            return if map.owner_id(slot) == self.me {
                Access::OtherShard
            } else {
                Access::Moved {
                    owner: map.owner_id(slot),
                }
            };
        }
        if now >= self.fence {
            Access::Fenced
        } else if !self.released.contains(slot) {
            Access::HandOver
        } else if self.rebuilding.contains(slot) {
            Access::Rebuilding
        } else {
            Access::Serve
        }
    }

    /// Applies a view from the control plane. `attached` lists the nodes
    /// attached to this router now (with their epochs): the nodes a gained
    /// slot waits for.
    pub fn apply(
        &mut self,
        view: &ClusterView,
        attached: impl Fn() -> Vec<(NodeId, u32)>,
        now: Time,
    ) -> Applied {
        self.applied_views += 1;
        debug_assert!(!self.alone);
        let mut applied = Applied::default();
        let same_map = match (&self.map, &view.map) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) && self.me == view.me,
            (None, None) => true,
            _ => false,
        };
        self.fence = view.fence;
        self.expected_nodes = usize::try_from(view.expected_nodes).unwrap_or(usize::MAX);
        if now < self.fence && !self.refused.is_empty() {
            // The lease is back: what was refused meanwhile is missing
            // here until the refused nodes resync it.
            let waiting = std::mem::take(&mut self.refused);
            let slots = self.held.clone();
            self.add_rebuild(slots, waiting, 0, now);
        }
        if !same_map || !Arc::ptr_eq(&self.released, &view.released) {
            let mut released = (*view.released).clone();
            released.intersect_with(&self.my_slots(view));
            self.released = Arc::new(released);
        }
        if same_map {
            return applied;
        }
        applied.map_changed = true;
        self.map = view.map.clone();
        self.me = view.me;
        self.gained = view.gained.clone();
        let mine = self.my_slots(view);
        for slot in 0..SLOT_COUNT {
            self.shard_of[slot as usize] = match &self.map {
                Some(map) if map.owner_id(slot) == self.me => map.owner(slot).1 as u8,
                _ => NOT_MINE,
            };
        }
        let mut lost = self.held.clone();
        lost.subtract(&mine);
        let mut gained = mine.clone();
        gained.subtract(&self.held);
        self.held = mine;
        for rebuild in &mut self.rebuilds {
            rebuild.slots.intersect_with(&self.held);
        }
        if !gained.is_empty() {
            let expected = self.expected_nodes;
            self.add_rebuild(gained, attached(), expected, now);
        }
        self.rebuilds.retain(|rebuild| !rebuild.slots.is_empty());
        self.recompute_rebuilding();
        if !lost.is_empty() {
            applied.lost = Some(lost);
        }
        applied
    }

    /// The slots `view` gives this shard.
    fn my_slots(&self, view: &ClusterView) -> SlotSet {
        let mut set = SlotSet::empty();
        if let Some(map) = &view.map {
            for slot in 0..SLOT_COUNT {
                let (router, shard) = map.owner(slot);
                if router.id == view.me && shard as usize == self.index {
                    set.insert(slot);
                }
            }
        }
        set
    }

    fn add_rebuild(
        &mut self,
        slots: SlotSet,
        waiting: Vec<(NodeId, u32)>,
        expected: usize,
        now: Time,
    ) {
        let rebuild = Rebuild {
            epoch: self.epoch(),
            slots,
            waiting,
            resynced: Vec::new(),
            expected,
            deadline: now + self.rebuild_timeout,
        };
        if rebuild.done() || rebuild.slots.is_empty() {
            return;
        }
        self.rebuilds.push(rebuild);
        self.recompute_rebuilding();
    }

    fn recompute_rebuilding(&mut self) {
        self.rebuilding = SlotSet::empty();
        for rebuild in &self.rebuilds {
            self.rebuilding.union_with(&rebuild.slots);
        }
    }

    /// A node's resync answering map `epoch` is committed on this shard.
    pub fn resynced(&mut self, node: NodeId, epoch: u64) {
        let mut changed = false;
        for rebuild in &mut self.rebuilds {
            if epoch >= rebuild.epoch {
                rebuild.waiting.retain(|&(waiting, _)| waiting != node);
                if !rebuild.resynced.contains(&node) {
                    rebuild.resynced.push(node);
                }
                changed |= rebuild.done();
            }
        }
        if changed {
            self.rebuilds.retain(|rebuild| !rebuild.done());
            self.recompute_rebuilding();
        }
    }

    /// Records that `node` was refused while fenced.
    pub fn refused(&mut self, node: NodeId, epoch: u32) {
        if !self.refused.iter().any(|&(n, _)| n == node) {
            self.refused.push((node, epoch));
        }
    }

    /// Forgets nodes that left and rebuilds past their deadline; returns
    /// the nodes given up on (for the log).
    pub fn tick(&mut self, directory: &Directory, now: Time) -> Vec<NodeId> {
        if self.rebuilds.is_empty() {
            return Vec::new();
        }
        let mut given_up = Vec::new();
        for rebuild in &mut self.rebuilds {
            rebuild.waiting.retain(|&(node, epoch)| {
                let state = directory.state(node);
                state.epoch == epoch && state.connections != 0
            });
            if now >= rebuild.deadline {
                given_up.extend(rebuild.waiting.drain(..).map(|(node, _)| node));
                rebuild.expected = 0;
            }
        }
        let before = self.rebuilds.len();
        self.rebuilds.retain(|rebuild| !rebuild.done());
        if self.rebuilds.len() != before {
            self.recompute_rebuilding();
        }
        given_up
    }

    /// The slots this shard serves at `now` (answering Serve or
    /// Rebuilding): for the simulation's "one server per slot" check.
    pub fn serving(&self, now: Time) -> SlotSet {
        let mut set = SlotSet::empty();
        self.serving_into(now, &mut set);
        set
    }

    /// A key that changes whenever [`Slots::serving`] at `now` may answer
    /// differently than at the last time with the same key.
    pub fn serving_key(&self, now: Time) -> (u64, bool) {
        (self.applied_views, self.alone || now < self.fence)
    }

    /// [`Slots::serving`] into `set` (without allocating).
    pub fn serving_into(&self, now: Time, set: &mut SlotSet) {
        if self.alone {
            set.copy_from(&self.held);
        } else if now >= self.fence {
            set.clear();
        } else {
            set.copy_from(&self.held);
            set.intersect_with(&self.released);
        }
    }

    /// Whether the lease is not known to be alive at `now`.
    pub fn is_fenced(&self, now: Time) -> bool {
        !self.alone && now >= self.fence
    }

    /// (slots held, of those not served yet: not released by their
    /// previous owner, or waiting for resyncs).
    pub fn readiness(&self) -> (usize, usize) {
        let not_ready = self
            .held
            .iter()
            .filter(|&slot| !self.released.contains(slot) || self.rebuilding.contains(slot))
            .count();
        (self.held.len(), not_ready)
    }

    /// Whether a slot of `key` is owned by this shard (sessions of a sync
    /// outside it are ignored).
    pub fn holds(&self, key: &[u8]) -> bool {
        self.alone || self.held.contains(placement::slot_for_user(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(id: RouterId, shards: u16) -> RouterInfo {
        RouterInfo {
            id,
            name: format!("r{id}"),
            addr: format!("10.0.0.{id}:7800"),
            shards,
        }
    }

    fn view(map: &Arc<SlotMap>, me: RouterId, fence: Time) -> ClusterView {
        let released = Arc::new(map.slots_of(me));
        ClusterView {
            map: Some(map.clone()),
            me,
            gained: released.clone(),
            released,
            fence,
            expected_nodes: 0,
        }
    }

    #[test]
    fn a_router_alone_serves_everything_without_hashing() {
        let slots = Slots::alone(1, 2, router(SINGLE_ROUTER, 2));
        assert_eq!(slots.access(b"anyone", Time::NEVER).0, Access::Serve);
        assert_eq!(slots.shard_of(b"ann"), placement::shard_for_user(b"ann", 2));
        assert_eq!(slots.held().len(), SLOT_COUNT as usize / 2);
    }

    #[test]
    fn a_member_serves_what_the_view_gives_it_until_the_fence() {
        let map = Arc::new(crate::cluster::plan::initial(&[router(7, 1), router(9, 1)]));
        let mut slots = Slots::member(0, 1, Duration::from_secs(5));
        let (first_mine, first_other) = {
            let mine = map.slots_of(7);
            let a = mine.iter().next().unwrap();
            let b = (0..SLOT_COUNT).find(|&s| !mine.contains(s)).unwrap();
            (a, b)
        };
        assert_eq!(
            slots.access_slot(first_mine, Time::ZERO),
            Access::Moved { owner: 0 }
        );
        let fence = Time::from_millis(1000);
        let applied = slots.apply(&view(&map, 7, fence), Vec::new, Time::ZERO);
        assert!(applied.map_changed && applied.lost.is_none());
        // Nobody attached: nothing to wait for.
        assert_eq!(slots.access_slot(first_mine, Time::ZERO), Access::Serve);
        assert_eq!(
            slots.access_slot(first_other, Time::ZERO),
            Access::Moved { owner: 9 }
        );
        assert_eq!(
            slots.access_slot(first_mine, Time::from_millis(1000)),
            Access::Fenced
        );
        // The fence moves with the next view of the same map.
        let later = Time::from_millis(2000);
        let applied = slots.apply(&view(&map, 7, later), Vec::new, Time::ZERO);
        assert!(!applied.map_changed);
        assert_eq!(
            slots.access_slot(first_mine, Time::from_millis(1500)),
            Access::Serve
        );
    }

    #[test]
    fn gained_slots_wait_for_every_attached_node_or_the_deadline() {
        let map = Arc::new(crate::cluster::plan::initial(&[router(7, 1)]));
        let mut slots = Slots::member(0, 1, Duration::from_secs(5));
        let nodes = || vec![(NodeId(1), 1), (NodeId(2), 1)];
        slots.apply(&view(&map, 7, Time::NEVER), nodes, Time::ZERO);
        assert_eq!(slots.access_slot(5, Time::ZERO), Access::Rebuilding);
        slots.resynced(NodeId(1), 1);
        assert_eq!(slots.access_slot(5, Time::ZERO), Access::Rebuilding);
        // A resync answering an older epoch does not count.
        slots.resynced(NodeId(2), 0);
        assert_eq!(slots.access_slot(5, Time::ZERO), Access::Rebuilding);
        slots.resynced(NodeId(2), 1);
        assert_eq!(slots.access_slot(5, Time::ZERO), Access::Serve);

        let mut slots = Slots::member(0, 1, Duration::from_secs(5));
        slots.apply(&view(&map, 7, Time::NEVER), nodes, Time::ZERO);
        let directory = Directory::new(4, 1);
        // Nodes 1 and 2 are not attached in this directory: forgotten.
        assert!(slots.tick(&directory, Time::ZERO).is_empty());
        assert_eq!(slots.access_slot(5, Time::ZERO), Access::Serve);
    }

    #[test]
    fn slots_moved_away_are_lost_and_answered_moved() {
        let two = crate::cluster::plan::initial(&[router(7, 1), router(9, 1)]);
        let one = Arc::new(crate::cluster::plan::initial(&[router(7, 1)]));
        let mut slots = Slots::member(0, 1, Duration::from_secs(5));
        slots.apply(&view(&one, 7, Time::NEVER), Vec::new, Time::ZERO);
        let two = Arc::new(two);
        let applied = slots.apply(&view(&two, 7, Time::NEVER), Vec::new, Time::ZERO);
        let lost = applied.lost.expect("slots went to router 9");
        assert_eq!(lost, two.slots_of(9));
        let slot = lost.iter().next().unwrap();
        assert_eq!(
            slots.access_slot(slot, Time::ZERO),
            Access::Moved { owner: 9 }
        );
    }
}
