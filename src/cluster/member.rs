//! One router's membership in the cluster, sans-IO: its lease and
//! registration, the fence, its view of the other routers and of the slot
//! map (a range, then a watch), which slots it may serve now, and, while it
//! is the controller, the map's next epoch.
//!
//! It asks for etcd requests ([`Member::poll_request`]) and is fed their
//! responses ([`Member::handle`]) and the time ([`Member::tick`]); it
//! never blocks and never reads a clock.
//!
//! Keys, under `/imrouter/<cluster>/`:
//!
//! | key | value | lease | written by |
//! |---|---|---|---|
//! | `routers/<id>` | `name addr shards` | the router's | the router, once |
//! | `applied/<id>` | the newest map epoch it applied | the router's | the router |
//! | `map` | the slot map ([`SlotMap::encode`]) | none | the controller |
//! | `drain/<id>` | empty | none | `imrouter cluster drain` |
//! | `nodes/<node>/<id>` | the node's incarnation | the router's | the router, while the node is attached to it |
//!
//! The `nodes/` keys make the IM nodes' membership one for the whole
//! cluster ([`super::nodes`]): every router folds them into the same
//! events, numbered by etcd's revisions.
//!
//! `<id>` is the router's lease id in 16 hex digits: its [`RouterId`].
//!
//! **Election.** The controller is the registered router whose
//! `routers/<id>` key has the lowest create revision: etcd's own election
//! recipe. Every write of the map is a transaction that requires the
//! controller's key to still exist with that create revision and the map
//! to be at the mod revision the controller read, so a deposed or stale
//! controller cannot write.
//!
//! **Fencing.** A router serves only while its lease is certainly alive:
//! until the send time of the last keep-alive etcd answered, plus the TTL,
//! minus a margin. etcd counts the TTL from when it received that
//! keep-alive, later than we sent it, so the router stops before etcd can
//! expire the lease, and the controller moves a router's slots only once
//! etcd deleted its `routers/` key, that is, after the lease expired or
//! was revoked.
//!
//! **Hand-over.** A router that gains a slot from a live router serves it
//! only once that router has applied the new epoch (`applied/<id>`); if
//! the previous owner is gone (fenced), once every live router has: the
//! gone one may itself never have served the slot, still waiting for its
//! own previous owner, which may be live and behind. So at most one router
//! serves a slot at any moment. A router that loses a slot stops serving
//! it as soon as it sees the new map.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::etcd::{Compare, Event, Kv, LeaseId, Op, Request, Response};
use super::map::{RouterId, RouterInfo, SlotMap, SlotSet};
use super::nodes::{node_key, ClusterNodes};
use super::plan;
use crate::core::directory::{Membership, MembershipEvent};
use crate::limits::NODE_OPS_PER_TXN;
use crate::limits::SLOT_COUNT;
use crate::time::Time;

fn ms(millis: u64) -> std::time::Duration {
    std::time::Duration::from_millis(millis)
}

/// How a router joins the cluster.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// `--cluster`: the key prefix is `/imrouter/<cluster>/`.
    pub cluster: String,
    /// `--name`, for operators.
    pub name: String,
    /// `--advertise`: where nodes reach this router.
    pub addr: String,
    pub shards: u16,
    /// `--lease-ttl-ms`.
    pub lease_ttl_ms: u64,
    /// Slots moved per rebalancing epoch.
    pub rebalance_batch: usize,
    /// Least time between two rebalancing epochs.
    pub rebalance_interval_ms: u64,
}

impl MemberConfig {
    /// Keep-alives are sent this often (a third of the TTL).
    pub fn keepalive_every_ms(&self) -> u64 {
        (self.lease_ttl_ms / 3).max(1)
    }

    /// The fence's margin: a router stops serving this long before its
    /// lease could expire (a fifth of the TTL, at least 100 ms), for
    /// clock-rate differences and scheduling delays.
    pub fn fence_margin_ms(&self) -> u64 {
        (self.lease_ttl_ms / 5).max(100).min(self.lease_ttl_ms / 2)
    }

    /// A request not answered in this long is given up (and retried).
    pub fn request_timeout_ms(&self) -> u64 {
        (self.lease_ttl_ms / 3).max(50)
    }

    pub fn prefix(&self) -> String {
        format!("/imrouter/{}/", self.cluster)
    }
}

/// What a member tells its router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// Registered under a new id (the first time, or after its lease was
    /// lost: everything it owned is gone).
    Registered(RouterId),
    /// A new map (the router pushes it to its nodes).
    Map(u64),
    /// The lease is no longer certainly alive: serve nothing.
    Fenced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Grant,
    KeepAlive,
    Register,
    Range,
    Watch,
    Applied(u64),
    WriteMap,
    /// A write of this router's `nodes/` keys.
    Nodes,
}

/// Which router a slot came from, for the hand-over rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// Nobody serves it any more (or nobody ever did).
    Released,
    /// This router, until it applied `epoch` (or is gone).
    Router(RouterId, u64),
    /// Unknown (maps were missed): every other router must have applied
    /// `epoch` (or be gone).
    Everyone(u64),
}

pub struct Member {
    config: MemberConfig,
    prefix: String,
    next_request: u64,
    pending: HashMap<u64, (Pending, Time)>,
    requests: VecDeque<(u64, Request)>,
    events: VecDeque<MemberEvent>,

    lease: Option<LeaseId>,
    /// Create revision of our `routers/` key (0: not registered yet; -1:
    /// registered, the revision to be read: the answer to our registration
    /// was lost and its retry found the key there).
    registered_at: i64,
    /// The fence: we serve strictly before this time.
    serving_until: Option<Time>,
    fenced_reported: bool,
    next_keepalive: Time,
    /// When to try again after a failure (grant, range, watch).
    retry_at: Time,

    /// Loaded (a range done); then watching from `revision + 1`.
    loaded: bool,
    /// The watch answered once (it exists at etcd); until then its request
    /// times out like any other.
    watch_created: bool,
    revision: i64,
    routers: BTreeMap<RouterId, (RouterInfo, i64)>,
    applied: BTreeMap<RouterId, u64>,
    draining: Vec<RouterId>,
    map: Option<SlotMap>,
    map_mod_revision: i64,
    from: Vec<From>,
    /// The newest epoch we told etcd we applied.
    applied_written: u64,
    /// Nodes attached to this router (told by its driver), and the count
    /// last written beside the applied epoch.
    attached_nodes: u64,
    nodes_written: u64,
    /// The count in the write in flight, and when the last write went
    /// (counts alone are written at most once per keep-alive interval).
    pending_nodes: u64,
    nodes_written_at: Time,
    /// Each router's attached nodes, as last written.
    nodes: BTreeMap<RouterId, u64>,
    last_map_write: Option<Time>,
    /// Changes whenever what [`Member::serves`] answers may change other
    /// than by the fence's time running out.
    version: u64,
    /// The controller found nothing to write at this version (and whether
    /// its rebalancing interval was over then).
    no_plan: Option<(u64, bool)>,
    /// The IM nodes of the whole cluster, from the `nodes/` keys.
    cluster_nodes: ClusterNodes,
    /// The nodes attached here (name -> incarnation), told by the driver;
    /// our `nodes/` keys as etcd has them; the changes in flight.
    local_nodes: BTreeMap<String, u64>,
    node_keys: BTreeMap<String, u64>,
    node_keys_in_flight: Vec<(String, Option<u64>)>,
    node_keys_retry_at: Time,
}

impl Member {
    pub fn new(config: MemberConfig, now: Time) -> Member {
        let prefix = config.prefix();
        Member {
            config,
            prefix,
            next_request: 1,
            pending: HashMap::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
            lease: None,
            registered_at: 0,
            serving_until: None,
            fenced_reported: true,
            next_keepalive: now,
            retry_at: now,
            loaded: false,
            watch_created: false,
            revision: 0,
            routers: BTreeMap::new(),
            applied: BTreeMap::new(),
            draining: Vec::new(),
            map: None,
            map_mod_revision: 0,
            from: vec![From::Released; SLOT_COUNT as usize],
            applied_written: 0,
            attached_nodes: 0,
            nodes_written: 0,
            pending_nodes: 0,
            nodes_written_at: now,
            nodes: BTreeMap::new(),
            last_map_write: None,
            version: 0,
            no_plan: None,
            cluster_nodes: ClusterNodes::default(),
            local_nodes: BTreeMap::new(),
            node_keys: BTreeMap::new(),
            node_keys_in_flight: Vec::new(),
            node_keys_retry_at: now,
        }
    }

    /// The IM nodes attached to this router now (name -> incarnation):
    /// written to etcd as `nodes/` keys under our lease.
    pub fn set_local_nodes(&mut self, nodes: BTreeMap<String, u64>) {
        self.local_nodes = nodes;
    }

    /// The cluster's membership events since the last call (the same, with
    /// the same sequence numbers, at every router).
    pub fn take_node_events(&mut self) -> Vec<MembershipEvent> {
        self.cluster_nodes.take_events()
    }

    /// The cluster's live nodes now.
    pub fn node_membership(&self) -> Membership {
        self.cluster_nodes.membership()
    }

    /// See the field: a cache of [`Member::serving`] is good while this
    /// stays the same and the lease stays alive.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A line of its state, for traces.
    pub fn describe(&self) -> String {
        let mut pending: Vec<String> = self
            .pending
            .iter()
            .map(|(id, (kind, sent))| format!("{id}:{kind:?}@{sent:?}"))
            .collect();
        pending.sort();
        format!(
            "lease {:x?} registered_at {} loaded {} watch created {} revision {} map {:?} routers {} fence {:?} retry_at {:?} keepalive {:?} pending [{}]",
            self.lease,
            self.registered_at,
            self.loaded,
            self.watch_created,
            self.revision,
            self.map.as_ref().map(|m| m.epoch()),
            self.routers.len(),
            self.serving_until,
            self.retry_at,
            self.next_keepalive,
            pending.join(" ")
        )
    }

    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    /// Our id, once registered.
    pub fn id(&self) -> Option<RouterId> {
        (self.registered_at > 0).then(|| self.lease.map(|l| l as RouterId))?
    }

    pub fn map(&self) -> Option<&SlotMap> {
        self.map.as_ref()
    }

    /// Routers registered (live leases), as last seen.
    pub fn routers(&self) -> impl Iterator<Item = &RouterInfo> {
        self.routers.values().map(|(info, _)| info)
    }

    /// The lease is certainly alive at `now`.
    pub fn lease_alive(&self, now: Time) -> bool {
        self.serving_until.is_some_and(|until| now < until)
    }

    /// We are the controller (as far as we know: our writes are fenced by
    /// etcd anyway).
    pub fn is_controller(&self) -> bool {
        self.registered_at > 0
            && self
                .routers
                .values()
                .map(|(_, created)| *created)
                .min()
                .is_some_and(|lowest| lowest == self.registered_at)
    }

    /// Whether this router may serve `slot` at `now`: its lease is
    /// certainly alive, the newest map it has gives it the slot, and the
    /// slot's previous owner let go of it.
    pub fn serves(&self, slot: u16, now: Time) -> bool {
        let (Some(id), Some(map)) = (self.id(), &self.map) else {
            return false;
        };
        self.lease_alive(now) && map.owner_id(slot) == id && self.released(slot)
    }

    /// The slots the map gives this router whose previous owners let go
    /// of them ([`Member::serves`] without the lease check: the shards
    /// check the fence themselves, on every request).
    pub fn released_slots(&self) -> SlotSet {
        let mut set = SlotSet::empty();
        let (Some(id), Some(map)) = (self.id(), &self.map) else {
            return set;
        };
        // Our ranges only, and `released` once per distinct origin (a map
        // has few): this runs whenever the view may have changed.
        let mut known: Vec<(From, bool)> = Vec::new();
        for range in map.ranges().iter().filter(|range| range.router == id) {
            for slot in range.first..=range.last {
                let from = self.from[slot as usize];
                let released = match known.iter().find(|(f, _)| *f == from) {
                    Some(&(_, released)) => released,
                    None => {
                        let released = self.released(slot);
                        known.push((from, released));
                        released
                    }
                };
                if released {
                    set.insert(slot);
                }
            }
        }
        set
    }

    /// Until when the lease is certainly alive (None: it is not).
    pub fn fence(&self) -> Option<Time> {
        self.serving_until
    }

    /// The most nodes any router said are attached to it (this one's own
    /// count included).
    pub fn most_nodes(&self) -> u64 {
        self.nodes
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.attached_nodes)
    }

    /// How many nodes are attached to this router now (the controller
    /// gives a new router slots only once it has as many as the others).
    pub fn set_attached_nodes(&mut self, nodes: u64) {
        self.attached_nodes = nodes;
    }

    /// Every slot [`Member::serves`] at `now`.
    pub fn serving(&self, now: Time) -> SlotSet {
        if !self.lease_alive(now) {
            return SlotSet::empty();
        }
        self.released_slots()
    }

    fn released(&self, slot: u16) -> bool {
        let applied =
            |router: RouterId, epoch: u64| self.applied.get(&router).is_some_and(|&a| a >= epoch);
        match self.from[slot as usize] {
            From::Released => true,
            From::Router(router, epoch) if self.routers.contains_key(&router) => {
                applied(router, epoch)
            }
            // A previous owner that is gone serves nothing, but it may never
            // have served this slot: it may have been waiting for its own
            // previous owner, which may still be live and behind (a failover
            // epoch is written without waiting for anyone). So every other
            // live router must have applied the epoch; a router gone from
            // our view is fenced.
            From::Router(_, epoch) | From::Everyone(epoch) => {
                let me = self.id();
                self.routers
                    .keys()
                    .all(|&router| Some(router) == me || applied(router, epoch))
            }
        }
    }

    pub fn poll_request(&mut self) -> Option<(u64, Request)> {
        self.requests.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// The next time after `now` at which [`Member::tick`] has something
    /// to do (`Time::NEVER`: nothing planned).
    pub fn next_wake(&self, now: Time) -> Time {
        let mut times = vec![self.next_keepalive, self.retry_at, self.node_keys_retry_at];
        times.extend(self.serving_until);
        let timeout = ms(self.config.request_timeout_ms());
        for (kind, sent) in self.pending.values() {
            if *kind != Pending::Watch || !self.watch_created {
                times.push(*sent + timeout);
            }
        }
        if let Some(last) = self.last_map_write {
            times.push(last + ms(self.config.rebalance_interval_ms));
        }
        times
            .into_iter()
            .filter(|&time| time > now)
            .min()
            .unwrap_or(Time::NEVER)
    }

    fn has(&self, kind: Pending) -> bool {
        self.pending.values().any(|(k, _)| *k == kind)
    }

    fn has_write(&self) -> bool {
        self.pending.values().any(|(k, _)| {
            matches!(
                k,
                Pending::Applied(_) | Pending::WriteMap | Pending::Register
            )
        })
    }

    fn send(&mut self, kind: Pending, request: Request, now: Time) {
        let id = self.next_request;
        self.next_request += 1;
        self.pending.insert(id, (kind, now));
        self.requests.push_back((id, request));
    }

    fn key(&self, what: &str, id: RouterId) -> String {
        format!("{}{what}/{id:016x}", self.prefix)
    }

    /// Timers: keep-alives, retries, the fence, request timeouts, and the
    /// controller's work.
    pub fn tick(&mut self, now: Time) {
        let timeout = ms(self.config.request_timeout_ms());
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (kind, sent))| {
                (*kind != Pending::Watch || !self.watch_created) && now >= *sent + timeout
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.handle(id, Response::Failed("timed out".into()), now);
        }
        if !self.fenced_reported && !self.lease_alive(now) {
            self.fenced_reported = true;
            self.events.push_back(MemberEvent::Fenced);
        }
        match self.lease {
            None => {
                if !self.has(Pending::Grant) && now >= self.retry_at {
                    let ttl_ms = self.config.lease_ttl_ms;
                    self.send(Pending::Grant, Request::LeaseGrant { ttl_ms }, now);
                }
                return;
            }
            Some(lease) => {
                if now >= self.next_keepalive && !self.has(Pending::KeepAlive) {
                    self.next_keepalive = now + ms(self.config.keepalive_every_ms());
                    self.send(Pending::KeepAlive, Request::LeaseKeepAlive { lease }, now);
                }
            }
        }
        if self.registered_at == 0 {
            if !self.has(Pending::Register) && now >= self.retry_at {
                self.register(now);
            }
            return;
        }
        if !self.loaded {
            if !self.has(Pending::Range) && now >= self.retry_at {
                let prefix = self.prefix.clone();
                self.send(Pending::Range, Request::RangePrefix { prefix }, now);
            }
            return;
        }
        if !self.has(Pending::Watch) {
            let start_revision = self.revision + 1;
            let prefix = self.prefix.clone();
            self.send(
                Pending::Watch,
                Request::Watch {
                    prefix,
                    start_revision,
                },
                now,
            );
            self.watch_created = false;
        }
        self.write(now);
        self.write_node_keys(now);
    }

    fn register(&mut self, now: Time) {
        let lease = self.lease.expect("a lease");
        let id = lease as RouterId;
        let key = self.key("routers", id);
        let value = format!(
            "{} {} {}",
            self.config.name, self.config.addr, self.config.shards
        );
        self.send(
            Pending::Register,
            Request::Txn {
                compares: vec![Compare::CreateRevision {
                    key: key.clone(),
                    equals: 0,
                }],
                success: vec![Op::Put { key, value, lease }],
            },
            now,
        );
    }

    /// Writes: our applied epoch, then (as the controller) the map.
    fn write(&mut self, now: Time) {
        if self.has_write() || !self.lease_alive(now) {
            return;
        }
        let (Some(id), Some(lease)) = (self.id(), self.lease) else {
            return;
        };
        if let Some(map) = &self.map {
            let count_due = self.attached_nodes != self.nodes_written
                && now >= self.nodes_written_at + ms(self.config.keepalive_every_ms());
            if map.epoch() > self.applied_written || count_due {
                let epoch = map.epoch();
                let nodes = self.attached_nodes;
                self.pending_nodes = nodes;
                self.nodes_written_at = now;
                let key = self.key("applied", id);
                self.send(
                    Pending::Applied(epoch),
                    Request::Txn {
                        compares: vec![],
                        success: vec![Op::Put {
                            key,
                            value: format!("{epoch} {nodes}"),
                            lease,
                        }],
                    },
                    now,
                );
                return;
            }
        }
        if self.is_controller() {
            // Planning walks every slot: not again while nothing it reads
            // changed (the version) and no rebalancing interval ended.
            let interval = ms(self.config.rebalance_interval_ms);
            let interval_over = self
                .last_map_write
                .is_none_or(|last| now >= last + interval);
            if self.no_plan == Some((self.version, interval_over)) {
                return;
            }
            let planned = self.plan(now);
            if planned.is_none() {
                self.no_plan = Some((self.version, interval_over));
            }
            if let Some(next) = planned {
                let map_key = format!("{}map", self.prefix);
                let my_key = self.key("routers", id);
                self.last_map_write = Some(now);
                self.send(
                    Pending::WriteMap,
                    Request::Txn {
                        compares: vec![
                            Compare::CreateRevision {
                                key: my_key,
                                equals: self.registered_at,
                            },
                            Compare::ModRevision {
                                key: map_key.clone(),
                                equals: self.map_mod_revision,
                            },
                        ],
                        success: vec![Op::Put {
                            key: map_key,
                            value: next.encode(),
                            lease: 0,
                        }],
                    },
                    now,
                );
            }
        }
    }

    /// The controller's next map, if one is due.
    fn plan(&self, now: Time) -> Option<SlotMap> {
        let live: Vec<RouterInfo> = self.routers().cloned().collect();
        let Some(map) = &self.map else {
            return Some(plan::initial(&live));
        };
        if let Some(next) = plan::without_dead(map, &live) {
            return Some(next);
        }
        let interval = ms(self.config.rebalance_interval_ms);
        if self
            .last_map_write
            .is_some_and(|last| now < last + interval)
        {
            return None;
        }
        // One batch at a time: every live router applied the current map.
        let settled = self
            .routers
            .keys()
            .all(|id| self.applied.get(id).is_some_and(|&a| a >= map.epoch()));
        if !settled {
            return None;
        }
        // A router receives slots once it applied a map (it is watching)
        // and has as many nodes attached as any router that owns slots
        // (every live node connected to it: its resyncs will come).
        let most = map
            .routers()
            .iter()
            .filter_map(|router| self.nodes.get(&router.id))
            .max()
            .copied()
            .unwrap_or(0);
        let may_receive = |id: RouterId| {
            self.applied.contains_key(&id) && self.nodes.get(&id).copied().unwrap_or(0) >= most
        };
        plan::rebalance_step(
            map,
            &live,
            &self.draining,
            may_receive,
            self.config.rebalance_batch,
        )
    }

    /// A response to request `id` (a late one, for a request given up, is
    /// ignored).
    pub fn handle(&mut self, id: u64, response: Response, now: Time) {
        let Some(&(kind, sent)) = self.pending.get(&id) else {
            return;
        };
        let retry = now + ms(self.config.request_timeout_ms() / 2);
        let nodes_only = match (&response, kind) {
            (Response::KeptAlive { ttl_ms }, _) => *ttl_ms > 0,
            (Response::Events(events), _) => events.iter().all(|e| self.is_node_key(e.key())),
            (Response::Txn { .. }, Pending::Nodes) => true,
            _ => false,
        };
        if !nodes_only {
            // (What the slots depend on may have changed.)
            self.version += 1;
        }
        match (kind, response) {
            (Pending::Watch, Response::Events(events)) => {
                self.watch_created = true;
                for event in events {
                    self.apply_event(event);
                }
                self.after_change();
                return; // The watch goes on.
            }
            (Pending::Watch, _) => {
                self.loaded = false; // Range again, then watch again.
                self.retry_at = retry;
            }
            (Pending::Grant, Response::LeaseGranted { lease, ttl_ms }) => {
                self.lease = Some(lease);
                self.registered_at = 0;
                self.set_fence(sent, ttl_ms);
                self.next_keepalive = now + ms(self.config.keepalive_every_ms());
            }
            (Pending::KeepAlive, Response::KeptAlive { ttl_ms }) if ttl_ms > 0 => {
                self.set_fence(sent, ttl_ms);
            }
            (Pending::KeepAlive, Response::KeptAlive { .. }) => {
                // The lease is gone: so is everything we owned. Join again
                // under a new id.
                self.lost_lease(now);
            }
            (
                Pending::Register,
                Response::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                if succeeded {
                    self.registered_at = revision;
                    let id = self.lease.expect("a lease") as RouterId;
                    self.events.push_back(MemberEvent::Registered(id));
                } else {
                    // The key is there: ours (it is named by our lease),
                    // from an attempt whose answer was lost.
                    self.registered_at = -1;
                }
            }
            (Pending::Range, Response::Range { revision, kvs }) => {
                self.load(revision, kvs);
                self.loaded = true;
                self.after_change();
            }
            (Pending::Applied(epoch), Response::Txn { .. }) => {
                // (An unconditional put: it succeeded.) The node count
                // written may be older than now: compared again next tick.
                self.applied_written = self.applied_written.max(epoch);
                self.nodes_written = self.pending_nodes;
            }
            (Pending::WriteMap, Response::Txn { .. }) => {
                // Written, or someone else changed the map, or we are
                // deposed: the watch tells what happened.
            }
            (Pending::Nodes, Response::Failed(_)) => {
                // Perhaps written, perhaps not: the next write compares
                // again with what we think etcd has (puts and deletes are
                // idempotent), after a pause.
                self.node_keys_in_flight.clear();
                self.node_keys_retry_at = retry;
            }
            (Pending::Nodes, Response::Txn { .. }) => {
                for (node, incarnation) in std::mem::take(&mut self.node_keys_in_flight) {
                    match incarnation {
                        Some(incarnation) => self.node_keys.insert(node, incarnation),
                        None => self.node_keys.remove(&node),
                    };
                }
            }
            (_, _) => self.retry_at = retry,
        }
        self.pending.remove(&id);
        self.tick(now);
    }

    fn set_fence(&mut self, sent: Time, ttl_ms: u64) {
        let margin = self.config.fence_margin_ms();
        let until = sent + ms(ttl_ms.saturating_sub(margin));
        if self.serving_until.is_none_or(|old| until > old) {
            self.serving_until = Some(until);
        }
        self.fenced_reported = false;
    }

    fn lost_lease(&mut self, now: Time) {
        self.lease = None;
        self.registered_at = 0;
        self.serving_until = None;
        if !self.fenced_reported {
            self.fenced_reported = true;
            self.events.push_back(MemberEvent::Fenced);
        }
        // Our old id's slots are someone else's to give away; we see the
        // cluster afresh.
        self.pending.clear();
        self.loaded = false;
        self.applied_written = 0;
        self.nodes_written = 0;
        // Our `nodes/` keys went with the lease.
        self.node_keys.clear();
        self.node_keys_in_flight.clear();
        self.retry_at = now;
    }

    fn is_node_key(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with("nodes/"))
    }

    /// Brings our `nodes/` keys to the nodes attached here: one
    /// transaction at a time, at most [`NODE_OPS_PER_TXN`] changes each.
    fn write_node_keys(&mut self, now: Time) {
        if self.has(Pending::Nodes) || !self.lease_alive(now) || now < self.node_keys_retry_at {
            return;
        }
        let (Some(id), Some(lease)) = (self.id(), self.lease) else {
            return;
        };
        let mut changes: Vec<(String, Option<u64>)> = Vec::new();
        for (node, &incarnation) in &self.local_nodes {
            if self.node_keys.get(node) != Some(&incarnation) {
                changes.push((node.clone(), Some(incarnation)));
            }
        }
        for node in self.node_keys.keys() {
            if !self.local_nodes.contains_key(node) {
                changes.push((node.clone(), None));
            }
        }
        if changes.is_empty() {
            return;
        }
        changes.truncate(NODE_OPS_PER_TXN);
        let success = changes
            .iter()
            .map(|(node, incarnation)| {
                let key = node_key(&self.prefix, node, id);
                match incarnation {
                    Some(incarnation) => Op::Put {
                        key,
                        value: incarnation.to_string(),
                        lease,
                    },
                    None => Op::Delete { key },
                }
            })
            .collect();
        self.node_keys_in_flight = changes;
        self.send(
            Pending::Nodes,
            Request::Txn {
                compares: vec![],
                success,
            },
            now,
        );
    }

    fn load(&mut self, revision: i64, kvs: Vec<Kv>) {
        self.routers.clear();
        self.applied.clear();
        self.nodes.clear();
        self.draining.clear();
        let had_map = self.map.take();
        self.map_mod_revision = 0;
        self.revision = revision;
        let mine = self
            .lease
            .map(|lease| self.key("routers", lease as RouterId));
        let unknown = self.registered_at < 0;
        self.registered_at = 0;
        let (node_kvs, kvs): (Vec<Kv>, Vec<Kv>) =
            kvs.into_iter().partition(|kv| self.is_node_key(&kv.key));
        self.cluster_nodes.load(&self.prefix, revision, &node_kvs);
        // Our own keys, as etcd has them (a write whose answer was lost).
        if let Some(lease) = self.lease {
            let suffix = format!("/{:016x}", lease as RouterId);
            let nodes = format!("{}nodes/", self.prefix);
            self.node_keys = node_kvs
                .iter()
                .filter(|kv| kv.lease == lease)
                .filter_map(|kv| {
                    let node = kv.key.strip_prefix(&nodes)?.strip_suffix(&suffix)?;
                    Some((node.to_owned(), kv.value.trim().parse().ok()?))
                })
                .collect();
        }
        for kv in kvs {
            if Some(&kv.key) == mine.as_ref() {
                self.registered_at = kv.create_revision;
            }
            self.apply_put(kv);
        }
        if unknown && self.registered_at > 0 {
            let id = self.lease.expect("a lease") as RouterId;
            self.events.push_back(MemberEvent::Registered(id));
        }
        self.map_replaced(had_map);
    }

    /// Where the slots of the current map came from, after `old` was the
    /// map: from the previous epoch, each changed slot from its previous
    /// owner; after a gap (maps missed), from everyone; the first map,
    /// from nobody.
    fn map_replaced(&mut self, old: Option<SlotMap>) {
        let Some(map) = &self.map else {
            return;
        };
        let epoch = map.epoch();
        match old {
            Some(old) if old.epoch() >= epoch => {}
            Some(old) if old.epoch() + 1 == epoch => self.hand_over(&old),
            None if epoch <= 1 => self.from.fill(From::Released),
            _ => self.from.fill(From::Everyone(epoch)),
        }
    }

    fn apply_event(&mut self, event: Event) {
        self.revision = self.revision.max(event.revision());
        if self.is_node_key(event.key()) {
            match &event {
                Event::Put(kv) => self.cluster_nodes.put(&self.prefix, kv),
                Event::Delete { key, revision } => {
                    self.cluster_nodes.delete(&self.prefix, key, *revision)
                }
            }
            return;
        }
        match event {
            Event::Put(kv) => {
                if kv.key.strip_prefix(&self.prefix) == Some("map") {
                    let old = self.map.clone();
                    self.apply_put(kv);
                    self.map_replaced(old);
                } else {
                    self.apply_put(kv);
                }
            }
            Event::Delete { key, .. } => {
                let Some(rest) = key.strip_prefix(&self.prefix) else {
                    return;
                };
                if let Some(id) = parse_id(rest, "routers/") {
                    self.routers.remove(&id);
                } else if let Some(id) = parse_id(rest, "applied/") {
                    self.applied.remove(&id);
                    self.nodes.remove(&id);
                } else if let Some(id) = parse_id(rest, "drain/") {
                    self.draining.retain(|&d| d != id);
                }
            }
        }
    }

    /// Records where each slot we gained from `old` to the current map
    /// came from.
    fn hand_over(&mut self, old: &SlotMap) {
        let map = self.map.as_ref().expect("a map");
        let epoch = map.epoch();
        for slot in 0..SLOT_COUNT {
            let before = old.owner_id(slot);
            if map.owner_id(slot) != before {
                self.from[slot as usize] = From::Router(before, epoch);
            }
        }
    }

    fn apply_put(&mut self, kv: Kv) {
        let Some(rest) = kv.key.strip_prefix(&self.prefix) else {
            return;
        };
        if let Some(id) = parse_id(rest, "routers/") {
            let mut words = kv.value.split(' ');
            let (Some(name), Some(addr), Some(shards)) = (words.next(), words.next(), words.next())
            else {
                return;
            };
            let Ok(shards) = shards.parse::<u16>() else {
                return;
            };
            let info = RouterInfo {
                id,
                name: name.to_string(),
                addr: addr.to_string(),
                shards,
            };
            self.routers.insert(id, (info, kv.create_revision));
        } else if let Some(id) = parse_id(rest, "applied/") {
            // `epoch nodes` (the node count is optional).
            let mut words = kv.value.split(' ');
            if let Some(Ok(epoch)) = words.next().map(str::parse::<u64>) {
                self.applied.insert(id, epoch);
            }
            let nodes = words.next().and_then(|n| n.parse::<u64>().ok());
            self.nodes.insert(id, nodes.unwrap_or(0));
        } else if let Some(id) = parse_id(rest, "drain/") {
            if !self.draining.contains(&id) {
                self.draining.push(id);
            }
        } else if rest == "map" {
            if let Ok(map) = SlotMap::decode(&kv.value) {
                if self
                    .map
                    .as_ref()
                    .is_none_or(|old| map.epoch() > old.epoch())
                {
                    self.map = Some(map);
                }
            }
            self.map_mod_revision = kv.mod_revision;
        }
    }

    fn after_change(&mut self) {
        if let Some(map) = &self.map {
            if self
                .events
                .iter()
                .all(|e| *e != MemberEvent::Map(map.epoch()))
            {
                self.events.push_back(MemberEvent::Map(map.epoch()));
            }
        }
    }
}

fn parse_id(rest: &str, what: &str) -> Option<RouterId> {
    let hex = rest.strip_prefix(what)?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}
