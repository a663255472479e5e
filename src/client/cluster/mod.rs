//! The node side of a cluster of routers, sans-IO.
//!
//! [`ClusterNode`] is what a node keeps to talk to every router of a
//! cluster (or to a router alone: a cluster of one, the same code): one
//! [`NodeCore`] per router (a *link*), the newest slot map, the node's own
//! sessions and topics (the truth the routers are rebuilt from), every
//! Route that has no final outcome yet, and a window of messages already
//! handed to the application. It never touches a socket or a clock; the
//! driver (the load generator, the simulation, a node's runtime):
//!
//! | the driver calls | when |
//! |---|---|
//! | [`ClusterNode::connect_due`] | to learn which links to open a socket for (`addr`) |
//! | [`ClusterNode::connected`], [`ClusterNode::connect_failed`], [`ClusterNode::disconnected`] | a socket to a link opened, could not, or ended |
//! | [`ClusterNode::link_mut`] | to move bytes: `transmit`/`transmitted`/`receive` on the link's core |
//! | [`ClusterNode::poll_link`] | to take what a link received: frames for the application, one at a time |
//! | [`ClusterNode::handle_timeout`] | the time [`ClusterNode::poll_timeout`] asked for came |
//!
//! and the application calls [`ClusterNode::route`], [`ClusterNode::fanout`], [`ClusterNode::open`],
//! [`ClusterNode::close`], [`ClusterNode::subscribe`] and takes outcomes
//! with [`ClusterNode::poll_outcome`].
//!
//! The rules it follows (docs/PROTOCOL.md, "Several routers"):
//!
//! - Every request goes to the router that owns its slot in the newest
//!   map the node has; a router's `Moved` sends it again to the owner it
//!   names (once the node has a map that agrees).
//! - Every Route is sent with ACK and kept until its final outcome: a
//!   verdict other than `Moved` and `Unknown`. `Unknown` is retried after
//!   a delay, up to `unknown_retries` times. When a router's stream is not
//!   resumed, or a new map gives the slot to another router, the Routes
//!   sent to it without an outcome are sent again (at least once).
//! - A Fanout is split by owner: one Fanout per router, listing its
//!   recipients, one part in flight per router; a part is sent again as a
//!   Route is, and the recipients a router did not serve (`moved_users`)
//!   go to their owner in a part of their own. The application sees one
//!   outcome for the whole Fanout.
//! - NodeEvents carry one cluster-wide sequence (every router sends the
//!   same events with the same numbers): each is handed on once, in
//!   order; one numbered at or below the last handed on is dropped.
//! - A Deliver is handed to the application once: its (origin, message id,
//!   recipient) is remembered for the last `dedup_window` messages, and a
//!   copy that comes again is dropped.
//! - The node's sessions and topics are its own: after a stream that was
//!   not resumed it resyncs everything the router owns; when a router asks
//!   (`SlotMap.resync`) or refused something, it resyncs those slots
//!   (a SessionSync scoped to them), after a random delay and at a bounded
//!   rate, so that a thousand nodes do not resync at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::map::{RouterId, SlotMap, SlotSet, SINGLE_ROUTER};
use crate::limits::{
    NODE_DEDUP_WINDOW_DEFAULT, NODE_PENDING_ROUTES_DEFAULT, NODE_PROBES_MAX as PROBES_MAX,
};
use crate::placement::slot_for_user;
use crate::time::Time;
use crate::wire::{fb, FanoutFrame, PublishFrame, RouteFrame, ROUTE_FLAG_ACK, ROUTE_FLAG_CARBON};

use super::core::{Incoming, NodeConfig, NodeCore, NodeError, State};

/// How a [`ClusterNode`] behaves.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Who the node is (`acks` is forced on: a link resumes without loss).
    pub node: NodeConfig,
    /// Routers to ask for the map first (any router of the cluster).
    pub seeds: Vec<String>,
    /// Routes without a final outcome, at most; more are refused.
    pub pending_max: usize,
    /// Messages remembered for dropping duplicates.
    pub dedup_window: usize,
    /// An Unknown verdict is retried this many times before it is final.
    pub unknown_retries: u32,
    /// The first retry of an Unknown comes after this long; each next one
    /// after twice as long (at most 16 times), with jitter.
    pub retry_delay: Duration,
    /// A resync starts after a random delay up to this long.
    pub resync_jitter: Duration,
    /// Sessions per SessionSync frame, and per `resync_interval`.
    pub resync_batch: usize,
    pub resync_interval: Duration,
    /// Reconnects back off from this delay, doubling up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl ClusterConfig {
    pub fn new(node: NodeConfig, seeds: Vec<String>) -> Self {
        ClusterConfig {
            node,
            seeds,
            pending_max: NODE_PENDING_ROUTES_DEFAULT,
            dedup_window: NODE_DEDUP_WINDOW_DEFAULT,
            unknown_retries: 8,
            retry_delay: Duration::from_millis(100),
            resync_jitter: Duration::from_millis(200),
            resync_batch: 1000,
            resync_interval: Duration::from_millis(1),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

/// A link's name: the router's id once known (from a map or its
/// Welcome), and its address.
pub type LinkId = usize;

/// The final outcome of a Route, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub message_id: u64,
    pub verdict: fb::Verdict,
    pub reason: fb::Reason,
    /// Times it was sent (more than once after a Moved, an Unknown or a
    /// lost router).
    pub sends: u32,
    /// The router that gave it (`None` for a Fanout: several may have).
    pub router: Option<RouterId>,
    /// A Fanout's recipients with no session (empty for a Route).
    pub offline_users: Vec<String>,
}

/// Why [`ClusterNode::route`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// `pending_max` Routes wait for their outcomes: wait for some.
    Full,
    /// The message id is already waiting for its outcome.
    Duplicate,
}

/// What [`ClusterNode::poll_link`] took from a link.
#[derive(Debug)]
pub enum Polled<'a> {
    /// A frame for the application (a Deliver seen for the first time, a
    /// Kick, a NodeEvent, a Located, a Publish, a Broadcast, ...).
    Frame(Incoming<'a>),
    /// A Fanout's Deliver, with which of its recipients are new (a copy
    /// that came again lists some that are not).
    FanoutDeliver(fb::Deliver<'a>, Vec<bool>),
    /// Something the cluster logic handled itself (a map, a Moved, a
    /// verdict, a duplicate). Poll again.
    Handled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// No socket; connect at `retry_at`.
    Down {
        retry_at: Time,
    },
    /// The driver is opening a socket (or the handshake runs).
    Connecting,
    Live,
}

/// A scoped resync to send on a link.
#[derive(Debug)]
struct Resync {
    /// Slots to resync (empty set + `full`: every slot the router owns).
    scope: SlotSet,
    full: bool,
    /// The map epoch it answers.
    epoch: u64,
    /// When it starts (jitter), then when the next batch may go.
    at: Time,
    /// The snapshot, taken when it starts, and how much of it went.
    sessions: Vec<(String, String, fb::Platform, u64)>,
    sent: usize,
    started: bool,
    /// Its SessionSync generation, fixed when it starts (several links'
    /// resyncs interleave; each keeps its own).
    generation: u64,
}

/// One router.
pub struct Link {
    pub addr: String,
    /// The router's id, once a map or a Welcome said it.
    pub router: Option<RouterId>,
    pub core: NodeCore,
    state: LinkState,
    failures: u32,
    resync: Option<Resync>,
    /// Slots whose requests this router refused (fenced): resynced later.
    refused: SlotSet,
    /// A seed (not from the map): dropped once the map names the routers.
    seed: bool,
    /// The router drains (a Draining frame): leave it at this moment (a
    /// random one within its window), once it owns no slot.
    leave_at: Option<Time>,
    /// Do not connect to it again before this (it is stopping).
    shunned_until: Time,
}

impl Link {
    pub fn is_live(&self) -> bool {
        self.state == LinkState::Live
    }
}

/// A Route waiting for its final outcome.
#[derive(Debug)]
struct PendingRoute {
    /// The encoded Route (ACK set).
    frame: Vec<u8>,
    slot: u16,
    /// The router it was last sent to (None: not sent now).
    sent_to: Option<RouterId>,
    /// Not sent before a map of at least this epoch (a Moved from a
    /// router with a newer map).
    wait_epoch: u64,
    retry_at: Option<Time>,
    unknowns: u32,
    sends: u32,
}

/// A Fanout without its final outcome: its recipients split by the
/// router owning their slots, one part in flight per router at a time
/// (a router's Status for the message id is then that part's).
#[derive(Debug)]
struct PendingFanout {
    from_user: String,
    from_device: String,
    flags: u32,
    payload: Vec<u8>,
    /// In flight: router -> the recipients sent to it.
    parts: BTreeMap<RouterId, Vec<String>>,
    /// Recipients to send (no owner known yet, its router's part still in
    /// flight, or a retry).
    unsent: Vec<String>,
    wait_epoch: u64,
    retry_at: Option<Time>,
    unknowns: u32,
    sends: u32,
    /// What the parts answered.
    routed: bool,
    rejected: Option<(fb::Verdict, fb::Reason)>,
    offline: Vec<String>,
    /// Recipients given up on after `unknown_retries` Unknowns.
    unknown: Vec<String>,
}

/// See the module docs.
pub struct ClusterNode {
    config: ClusterConfig,
    map: Option<Arc<SlotMap>>,
    /// By id; ids are never reused (a driver holding a socket for a removed
    /// link finds it gone, not replaced).
    links: BTreeMap<LinkId, Link>,
    next_link: LinkId,
    /// The node's sessions: (user, device) -> (platform, seq).
    sessions: BTreeMap<(String, String), (fb::Platform, u64)>,
    topics: BTreeSet<String>,
    next_seq: u64,
    next_generation: u64,
    pending: HashMap<u64, PendingRoute, ahash::RandomState>,
    fanouts: HashMap<u64, PendingFanout, ahash::RandomState>,
    outcomes: VecDeque<Outcome>,
    /// The last NodeEvent handed to the application.
    node_event_seq: u64,
    /// Slots whose session operations a router with a newer map refused:
    /// resynced at their owner once this node has that map.
    stale_slots: BTreeMap<u16, u64>,
    dedup: Dedup,
    rng: u64,
    /// Counters, for tests and reports.
    pub stats: ClusterStats,
}

/// What the cluster logic did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub resends: u64,
    pub moved: u64,
    pub unknown_retries: u64,
    pub duplicates_dropped: u64,
    pub resyncs: u64,
    pub maps: u64,
    /// Draining routers this node left (with a Goodbye).
    pub drained_routers_left: u64,
}

impl ClusterNode {
    pub fn new(mut config: ClusterConfig) -> Self {
        config.node.acks = true;
        let rng = config.node.incarnation | 1;
        let mut node = ClusterNode {
            map: None,
            links: BTreeMap::new(),
            next_link: 0,
            sessions: BTreeMap::new(),
            topics: BTreeSet::new(),
            next_seq: 1,
            next_generation: 1,
            pending: HashMap::default(),
            fanouts: HashMap::default(),
            outcomes: VecDeque::new(),
            node_event_seq: 0,
            stale_slots: BTreeMap::new(),
            dedup: Dedup::new(config.dedup_window),
            rng,
            stats: ClusterStats::default(),
            config,
        };
        for addr in node.config.seeds.clone() {
            node.add_link(addr, None, true);
        }
        node
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn map(&self) -> Option<&Arc<SlotMap>> {
        self.map.as_ref()
    }

    /// Routes and Fanouts waiting for their final outcome.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.fanouts.len()
    }

    /// A line about pending Route `id` and the links, for traces.
    pub fn describe_pending(&self, id: u64) -> String {
        let pending = self.pending.get(&id).map(|p| {
            format!(
                "slot {} sent_to {:x?} wait_epoch {} retry_at {:?} unknowns {} sends {}",
                p.slot, p.sent_to, p.wait_epoch, p.retry_at, p.unknowns, p.sends
            )
        });
        let links: Vec<String> = self
            .links()
            .map(|(id, l)| format!("{id}:{:x?}@{}:{:?}", l.router, l.addr, l.state))
            .collect();
        format!(
            "pending {pending:?}; map {:?} owner {:x?}; links {links:?}",
            self.map.as_ref().map(|m| m.epoch()),
            self.pending.get(&id).and_then(|p| self.owner(p.slot))
        )
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The links, by id (a removed link leaves a hole).
    pub fn links(&self) -> impl Iterator<Item = (LinkId, &Link)> {
        self.links.iter().map(|(&id, link)| (id, link))
    }

    pub fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.links.get_mut(&id)
    }

    fn add_link(&mut self, addr: String, router: Option<RouterId>, seed: bool) -> LinkId {
        let link = Link {
            addr,
            router,
            core: NodeCore::new(self.config.node.clone()),
            state: LinkState::Down {
                retry_at: Time::ZERO,
            },
            failures: 0,
            resync: None,
            refused: SlotSet::empty(),
            seed,
            leave_at: None,
            shunned_until: Time::ZERO,
        };
        let id = self.next_link;
        self.next_link += 1;
        self.links.insert(id, link);
        id
    }

    fn link_of(&self, router: RouterId) -> Option<LinkId> {
        self.links()
            .find(|(_, link)| link.router == Some(router))
            .map(|(id, _)| id)
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn jitter(&mut self, up_to: Duration) -> Duration {
        let nanos = up_to.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.random() % nanos)
    }

    // ----- Sockets ------------------------------------------------------------

    /// Links to open a socket for now: (link, address). Each is then in
    /// progress until [`ClusterNode::connected`] or
    /// [`ClusterNode::connect_failed`].
    pub fn connect_due(&mut self, now: Time) -> Vec<(LinkId, String)> {
        let mut due = Vec::new();
        for (&id, link) in self.links.iter_mut() {
            if let LinkState::Down { retry_at } = link.state {
                if now >= retry_at {
                    link.state = LinkState::Connecting;
                    due.push((id, link.addr.clone()));
                }
            }
        }
        due
    }

    /// A socket to `id` is open: the Hello goes out (a resume when the
    /// link had a stream).
    pub fn connected(&mut self, id: LinkId, now: Time) {
        if let Some(link) = self.link_mut(id) {
            link.core.connect(now);
        }
    }

    /// The socket to `id` could not be opened.
    pub fn connect_failed(&mut self, id: LinkId, now: Time) {
        self.link_down(id, now);
    }

    /// The socket to `id` ended (or the driver gave up on it).
    pub fn disconnected(&mut self, id: LinkId, now: Time) {
        if let Some(link) = self.link_mut(id) {
            link.core.connection_lost();
        }
        self.link_down(id, now);
    }

    fn link_down(&mut self, id: LinkId, now: Time) {
        let (min, max) = (self.config.reconnect_min, self.config.reconnect_max);
        let Some(link) = self.link_mut(id) else {
            return;
        };
        link.failures = link.failures.saturating_add(1);
        let exponent = link.failures.min(16) - 1;
        let backoff = min.saturating_mul(1 << exponent).min(max);
        let jitter = self.jitter(backoff / 2);
        if let Some(link) = self.link_mut(id) {
            link.state = LinkState::Down {
                retry_at: (now + backoff / 2 + jitter).max(link.shunned_until),
            };
            // A moment to leave a draining router is about this connection
            // only (a router at that address later is another process).
            link.leave_at = None;
        }
    }

    /// Link `id`'s router drains: the node leaves it at a random moment
    /// within `window` (spreading a thousand nodes' reconnects), with a
    /// Goodbye, once the router owns no slot in the newest map (in a
    /// cluster it hands them over first). A router alone keeps its slots:
    /// the node stays until it closes, and connects again afterwards (to
    /// the router that replaces it); Routes without an outcome are sent
    /// again then, as after any lost stream.
    fn draining(&mut self, id: LinkId, window: Duration, now: Time) {
        let leave_at = now + self.jitter(window);
        if let Some(link) = self.link_mut(id) {
            link.leave_at = Some(leave_at);
        }
    }

    /// Leaves draining routers whose moment came (see `draining`).
    fn leave_drained(&mut self, now: Time) {
        let leaving: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, link)| link.is_live() && link.leave_at.is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in leaving {
            let router = self.links[&id].router;
            let owns_slots = match (&self.map, router) {
                (Some(map), Some(router)) => !map.slots_of(router).is_empty(),
                _ => true,
            };
            let link = self.links.get_mut(&id).expect("listed");
            link.leave_at = None;
            if owns_slots {
                // Still serving (alone, or the hand-over did not finish):
                // stay until it closes.
                continue;
            }
            link.core.goodbye("the router drains");
            // The router is stopping: not before a while (by then a new
            // map without it has dropped the link).
            link.shunned_until = now + self.config.reconnect_max;
            self.stats.drained_routers_left += 1;
        }
    }

    // ----- Time ---------------------------------------------------------------

    /// The next time [`ClusterNode::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Time {
        let mut next = Time::NEVER;
        for (_, link) in self.links() {
            if let LinkState::Down { retry_at } = link.state {
                next = next.min(retry_at);
            }
            if let Some(at) = link.leave_at {
                next = next.min(at);
            }
            if let Some(resync) = &link.resync {
                if link.is_live() {
                    next = next.min(resync.at);
                }
            }
        }
        for pending in self.pending.values() {
            if let Some(at) = pending.retry_at {
                next = next.min(at);
            }
        }
        for fanout in self.fanouts.values() {
            if let Some(at) = fanout.retry_at {
                next = next.min(at);
            }
        }
        next
    }

    /// Sends what is due: Routes to retry, resync batches.
    pub fn handle_timeout(&mut self, now: Time) {
        let mut due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        // In message order (the map's order is random per process).
        due.sort_unstable();
        for id in due {
            if let Some(pending) = self.pending.get_mut(&id) {
                pending.retry_at = None;
            }
            self.dispatch(id, now);
        }
        let mut due: Vec<u64> = self
            .fanouts
            .iter()
            .filter(|(_, f)| f.retry_at.is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        due.sort_unstable();
        for id in due {
            if let Some(fanout) = self.fanouts.get_mut(&id) {
                fanout.retry_at = None;
            }
            self.dispatch_fanout(id, now);
        }
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            self.resync_step(id, now);
        }
        self.leave_drained(now);
    }

    // ----- Requests -----------------------------------------------------------

    /// Routes a message: sent with ACK to the owner of `to_user`'s slot,
    /// kept until its final outcome ([`ClusterNode::poll_outcome`]).
    pub fn route(&mut self, route: &RouteFrame<'_>, now: Time) -> Result<(), RouteError> {
        self.room_for(route.message_id)?;
        let mut frame = Vec::new();
        crate::wire::Encoder::write_route(
            &mut frame,
            &RouteFrame {
                flags: route.flags | ROUTE_FLAG_ACK,
                ..*route
            },
        );
        self.pending.insert(
            route.message_id,
            PendingRoute {
                frame,
                slot: slot_for_user(route.to_user.as_bytes()),
                sent_to: None,
                wait_epoch: 0,
                retry_at: None,
                unknowns: 0,
                sends: 0,
            },
        );
        self.dispatch(route.message_id, now);
        Ok(())
    }

    fn room_for(&self, id: u64) -> Result<(), RouteError> {
        if self.pending() >= self.config.pending_max {
            return Err(RouteError::Full);
        }
        if self.pending.contains_key(&id) || self.fanouts.contains_key(&id) {
            return Err(RouteError::Duplicate);
        }
        Ok(())
    }

    /// Sends a message to several users: split by the router owning
    /// each recipient's slot, one Fanout per router, each part sent again
    /// as Routes are (Moved, Unknown, a lost stream) and recipients a
    /// router no longer serves (`moved_users`) sent to their new owner.
    /// One final outcome ([`ClusterNode::poll_outcome`]): Routed if any
    /// recipient was reached (reason `Partial` if some were not), Offline
    /// (`NoSession`) if none has a session, Unknown if the ones not
    /// reached stayed unknown; `offline_users` lists those with no
    /// session. The frame's `to_users` are its recipients (duplicates
    /// are sent once).
    pub fn fanout(&mut self, frame: &FanoutFrame<'_>, now: Time) -> Result<(), RouteError> {
        self.room_for(frame.message_id)?;
        let mut unsent: Vec<String> = frame.to_users.iter().map(|&u| u.to_owned()).collect();
        unsent.sort_unstable();
        unsent.dedup();
        self.fanouts.insert(
            frame.message_id,
            PendingFanout {
                from_user: frame.from_user.to_owned(),
                from_device: frame.from_device.to_owned(),
                flags: frame.flags,
                payload: frame.payload.to_vec(),
                parts: BTreeMap::new(),
                unsent,
                wait_epoch: 0,
                retry_at: None,
                unknowns: 0,
                sends: 0,
                routed: false,
                rejected: None,
                offline: Vec::new(),
                unknown: Vec::new(),
            },
        );
        self.dispatch_fanout(frame.message_id, now);
        Ok(())
    }

    /// Sends Fanout `id`'s unsent recipients, a part per owner that has
    /// none in flight; finishes it when nothing is left.
    fn dispatch_fanout(&mut self, id: u64, now: Time) {
        let Some(fanout) = self.fanouts.get_mut(&id) else {
            return;
        };
        let epoch = self.map.as_ref().map_or(0, |map| map.epoch());
        if fanout.retry_at.is_some() || fanout.wait_epoch > epoch {
            return;
        }
        if fanout.parts.is_empty() && fanout.unsent.is_empty() {
            self.finish_fanout(id);
            return;
        }
        let Some(map) = self.map.clone() else {
            return;
        };
        let mut by_owner: BTreeMap<RouterId, Vec<String>> = BTreeMap::new();
        let mut keep = Vec::new();
        for user in std::mem::take(&mut fanout.unsent) {
            let owner = map.owner_id(slot_for_user(user.as_bytes()));
            if fanout.parts.contains_key(&owner) {
                keep.push(user);
            } else {
                by_owner.entry(owner).or_default().push(user);
            }
        }
        fanout.unsent = keep;
        for (owner, users) in by_owner {
            let Some(link_id) = self.link_of(owner) else {
                self.fanouts
                    .get_mut(&id)
                    .expect("present")
                    .unsent
                    .extend(users);
                continue;
            };
            let fanout = self.fanouts.get_mut(&id).expect("present");
            if fanout.sends > 0 {
                self.stats.resends += 1;
            }
            fanout.sends += 1;
            let to_users: Vec<&str> = users.iter().map(String::as_str).collect();
            let frame = FanoutFrame {
                message_id: id,
                from_user: &fanout.from_user,
                from_device: &fanout.from_device,
                to_users: &to_users,
                flags: fanout.flags,
                payload: &fanout.payload,
            };
            let link = self.links.get_mut(&link_id).expect("found");
            link.core.fanout(&frame, now);
            fanout.parts.insert(owner, users);
        }
    }

    /// The Status of Fanout `id`'s part sent to router `from`.
    fn fanout_status(&mut self, from: Option<RouterId>, status: StatusSummary, now: Time) {
        let id = status.message_id;
        let Some(fanout) = self.fanouts.get_mut(&id) else {
            return;
        };
        let Some(users) = from.and_then(|router| fanout.parts.remove(&router)) else {
            return; // Not a part in flight (sent again elsewhere).
        };
        let epoch = self.map.as_ref().map_or(0, |map| map.epoch());
        match status.verdict {
            fb::Verdict::Moved => {
                self.stats.moved += 1;
                fanout.unsent.extend(users);
                if status.epoch > epoch {
                    fanout.wait_epoch = fanout.wait_epoch.max(status.epoch);
                } else {
                    fanout.retry_at = Some(now + self.config.retry_delay / 2);
                }
            }
            fb::Verdict::Unknown if fanout.unknowns < self.config.unknown_retries => {
                fanout.unknowns += 1;
                self.stats.unknown_retries += 1;
                fanout.unsent.extend(users);
                let exponent = (fanout.unknowns - 1).min(4);
                let delay = self.config.retry_delay.saturating_mul(1 << exponent);
                fanout.retry_at = Some(now + delay / 2);
            }
            fb::Verdict::Unknown => fanout.unknown.extend(users),
            fb::Verdict::Routed | fb::Verdict::Offline => {
                fanout.routed |= status.verdict == fb::Verdict::Routed;
                fanout.offline.extend(status.offline_users);
                if !status.moved_users.is_empty() {
                    self.stats.moved += 1;
                    fanout.unsent.extend(status.moved_users);
                    if status.epoch > epoch {
                        fanout.wait_epoch = fanout.wait_epoch.max(status.epoch);
                    }
                }
            }
            verdict => fanout.rejected = Some((verdict, status.reason)),
        }
        self.dispatch_fanout(id, now);
    }

    fn finish_fanout(&mut self, id: u64) {
        let Some(mut fanout) = self.fanouts.remove(&id) else {
            return;
        };
        fanout.offline.sort_unstable();
        fanout.offline.dedup();
        let (verdict, reason) = match fanout.rejected {
            Some(rejected) => rejected,
            None if fanout.routed && (fanout.offline.is_empty() && fanout.unknown.is_empty()) => {
                (fb::Verdict::Routed, fb::Reason::None)
            }
            None if fanout.routed => (fb::Verdict::Routed, fb::Reason::Partial),
            None if !fanout.unknown.is_empty() => (fb::Verdict::Unknown, fb::Reason::None),
            None => (fb::Verdict::Offline, fb::Reason::NoSession),
        };
        self.outcomes.push_back(Outcome {
            message_id: id,
            verdict,
            reason,
            sends: fanout.sends,
            router: None,
            offline_users: fanout.offline,
        });
    }

    /// Sends pending Route `id` to its slot's owner, if the node knows one.
    fn dispatch(&mut self, id: u64, now: Time) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        let epoch = self.map.as_ref().map_or(0, |map| map.epoch());
        if pending.retry_at.is_some() || pending.wait_epoch > epoch {
            return;
        }
        let Some(owner) = self.owner(pending.slot) else {
            return;
        };
        let Some(link_id) = self.link_of(owner) else {
            return;
        };
        let link = self.links.get_mut(&link_id).expect("found");
        let pending = self.pending.get_mut(&id).expect("present");
        if pending.sends > 0 {
            self.stats.resends += 1;
        }
        pending.sends += 1;
        pending.sent_to = Some(owner);
        link.core.route_encoded(id, &pending.frame, now);
    }

    /// The owner of `slot` in the newest map.
    fn owner(&self, slot: u16) -> Option<RouterId> {
        self.map.as_ref().map(|map| map.owner_id(slot))
    }

    /// The link of the owner of `key`'s slot.
    fn owner_link(&mut self, key: &str) -> Option<&mut Link> {
        let owner = self.owner(slot_for_user(key.as_bytes()))?;
        let id = self.link_of(owner)?;
        self.link_mut(id)
    }

    /// The next final outcome of a Route.
    pub fn poll_outcome(&mut self) -> Option<Outcome> {
        self.outcomes.pop_front()
    }

    /// Opens a session (the node's truth; sent to the owner of its slot).
    pub fn open(&mut self, user: &str, device: &str, platform: fb::Platform) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sessions
            .insert((user.to_owned(), device.to_owned()), (platform, seq));
        if let Some(link) = self.owner_link(user) {
            link.core.open_with_seq(user, device, platform, seq);
        }
        seq
    }

    /// Closes a session.
    pub fn close(&mut self, user: &str, device: &str) {
        let Some((_, seq)) = self.sessions.remove(&(user.to_owned(), device.to_owned())) else {
            return;
        };
        if let Some(link) = self.owner_link(user) {
            link.core.close(user, device, seq);
        }
    }

    pub fn subscribe(&mut self, topic: &str) {
        if self.topics.insert(topic.to_owned()) {
            if let Some(link) = self.owner_link(topic) {
                link.core.subscribe(topic, 0);
            }
        }
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        if self.topics.remove(topic) {
            if let Some(link) = self.owner_link(topic) {
                link.core.unsubscribe(topic);
            }
        }
    }

    /// Publishes to a topic, through the owner of its slot (at most once:
    /// nothing is kept; with no owner known, nothing is sent, and false).
    pub fn publish(&mut self, frame: &PublishFrame<'_>) -> bool {
        match self.owner_link(frame.topic) {
            Some(link) if link.is_live() => {
                link.core.publish(frame);
                true
            }
            _ => false,
        }
    }

    /// Asks where `user` is (the answer, or a Moved, comes on some link).
    pub fn locate(&mut self, query_id: u64, user: &str) {
        if let Some(link) = self.owner_link(user) {
            link.core.locate(query_id, user);
        }
    }

    /// A Broadcast goes through any one live router (each has every node).
    pub fn broadcast(&mut self, payload: &[u8]) -> bool {
        let live = self.links.values_mut().find(|link| link.is_live());
        match live {
            Some(link) => {
                link.core.broadcast(payload);
                true
            }
            None => false,
        }
    }

    // ----- What links receive ---------------------------------------------------

    /// Takes the next frame link `id` received, handling what belongs to
    /// the cluster logic. `None`: nothing more buffered on that link.
    pub fn poll_link(&mut self, id: LinkId, now: Time) -> Option<Result<Polled<'_>, NodeError>> {
        // Decide on an owned summary first, then hand out the borrowed
        // frame only when it is for the application.
        let summary = {
            let link = self.links.get_mut(&id)?;
            match link.core.poll_incoming()? {
                Err(error) => Summary::Error(error),
                Ok(incoming) => summarize(&incoming),
            }
        };
        match summary {
            Summary::Error(error) => {
                return Some(Err(error));
            }
            Summary::Welcome => {
                self.welcomed(id, now);
                return Some(Ok(Polled::Handled));
            }
            Summary::Map { map, resync } => {
                self.map_frame(id, *map, resync, now);
                return Some(Ok(Polled::Handled));
            }
            Summary::Status(status) => {
                self.status(id, status, now);
                return Some(Ok(Polled::Handled));
            }
            Summary::Moved(moved) => {
                self.moved(id, moved, now);
                return Some(Ok(Polled::Handled));
            }
            Summary::Deliver { key } => {
                if let Some(key) = key {
                    if !self.dedup.insert(key) {
                        self.stats.duplicates_dropped += 1;
                        return Some(Ok(Polled::Handled));
                    }
                }
            }
            Summary::FanoutDeliver { keys } => {
                let fresh: Vec<bool> = keys
                    .iter()
                    .map(|key| key.is_none_or(|key| self.dedup.insert(key)))
                    .collect();
                if !fresh.iter().any(|&fresh| fresh) {
                    self.stats.duplicates_dropped += 1;
                    return Some(Ok(Polled::Handled));
                }
                let link = self.links.get_mut(&id).expect("polled");
                let Some(Ok(Incoming::FanoutDeliver(deliver))) = link.core.repeat_incoming() else {
                    unreachable!("the frame just summarized")
                };
                return Some(Ok(Polled::FanoutDeliver(deliver, fresh)));
            }
            Summary::NodeEvent { seq } => {
                // Every router sends every event of the cluster, numbered
                // alike: the application sees each once, in order.
                if seq <= self.node_event_seq {
                    return Some(Ok(Polled::Handled));
                }
                self.node_event_seq = seq;
            }
            Summary::Draining { window } => {
                self.draining(id, window, now);
                return Some(Ok(Polled::Handled));
            }
            Summary::Control(incoming) => return Some(Ok(Polled::Frame(incoming))),
            Summary::Pass => {}
        }
        let link = self.links.get_mut(&id).expect("polled");
        Some(link.core.repeat_incoming()?.map(Polled::Frame))
    }

    /// A Welcome on link `id`: learn the router and the map; a stream that
    /// was not resumed lost what was sent on it.
    fn welcomed(&mut self, id: LinkId, now: Time) {
        let link = self.links.get_mut(&id).expect("polled");
        link.state = LinkState::Live;
        link.failures = 0;
        let welcome = link.core.welcome().expect("welcomed").clone();
        // A router that has no id yet (not registered, or its shards have
        // no view yet) says 0: the link keeps what the map said.
        if welcome.member != 0 {
            link.router = Some(welcome.member);
            link.seed = false;
        }
        if let Some(map) = welcome.map.clone() {
            self.install_map(map, now);
        }
        // (The map may have made this link unneeded: a seed whose router
        // has no id yet, now that the map names every router.)
        if welcome.resumed || self.link_mut(id).is_none() {
            return;
        }
        // A new stream: the Routes sent on the old one have no outcome
        // coming; everything this router owns is resynced.
        let link = self.links.get_mut(&id).expect("present");
        let router = link.router;
        let mut lost: Vec<u64> = link.core.take_pending();
        lost.sort_unstable();
        for message in lost {
            if let Some(pending) = self.pending.get_mut(&message) {
                pending.sent_to = None;
                self.dispatch(message, now);
            } else if let Some(fanout) = self.fanouts.get_mut(&message) {
                if let Some(users) = router.and_then(|router| fanout.parts.remove(&router)) {
                    fanout.unsent.extend(users);
                }
                self.dispatch_fanout(message, now);
            }
        }
        let epoch = self.map.as_ref().map_or(0, |map| map.epoch());
        self.schedule_resync(id, SlotSet::empty(), true, epoch, now);
        self.resubscribe(id, None);
    }

    /// A SlotMap frame on link `id`: `map`, and the slots it asks to
    /// resync.
    fn map_frame(&mut self, id: LinkId, map: SlotMap, resync: Vec<(u16, u16)>, now: Time) {
        let epoch = map.epoch();
        self.install_map(Arc::new(map), now);
        if !resync.is_empty() {
            let scope = SlotSet::from_spans(&resync);
            self.schedule_resync(id, scope.clone(), false, epoch, now);
            self.resubscribe(id, Some(&scope));
        }
    }

    /// Keeps `map` if it is newer: links for its routers, and every Route
    /// whose owner changed goes to its new owner.
    fn install_map(&mut self, map: Arc<SlotMap>, now: Time) {
        // A newer epoch, or the same one listing other routers (a router
        // joined: it owns nothing yet, but nodes connect to it now).
        // Only ever more routers within an epoch: two routers' listings
        // may differ for a moment, and a node must not flip between them.
        if let Some(current) = &self.map {
            let newer = map.epoch() > current.epoch();
            let relisted = map.epoch() == current.epoch()
                && map
                    .routers()
                    .iter()
                    .any(|router| current.router(router.id).is_none());
            if !newer && !relisted {
                return;
            }
        }
        let map = match &self.map {
            // Keep the routers the current listing had.
            Some(current) if current.epoch() == map.epoch() => {
                Arc::new((*map).clone().listing(current.routers().iter().cloned()))
            }
            _ => map,
        };
        self.stats.maps += 1;
        self.map = Some(map.clone());
        // A link per router of the map; seeds and routers gone are dropped
        // (a router alone lists its --listen address: its seed link is it).
        // A router alone (not a member of a cluster: id 1) lists its
        // --listen address, perhaps 0.0.0.0: its seed link is it.
        let single = map.routers().len() == 1 && map.routers()[0].id == SINGLE_ROUTER;
        for router in map.routers() {
            if self.link_of(router.id).is_none() {
                let seed = self.links().find(|(_, link)| link.seed).map(|(id, _)| id);
                if let (true, Some(id)) = (single, seed) {
                    let link = self.links.get_mut(&id).expect("found");
                    link.router = Some(router.id);
                    link.seed = false;
                    continue;
                }
                self.add_link(router.addr.clone(), Some(router.id), false);
            }
        }
        // Links to routers gone from the map: a link whose address another
        // router of the map has goes (that router has its own link); one
        // whose address the map does not know becomes a probe, kept to
        // learn later maps from (a router that lost its lease registers
        // again under a new id, at the same address; a node whose every
        // router changed would otherwise hear of the cluster no more).
        let mut probes = 0;
        self.links.retain(|_, link| {
            if link.router.is_some_and(|id| map.router(id).is_some()) {
                return true;
            }
            let covered = map.routers().iter().any(|router| router.addr == link.addr);
            if covered || probes >= PROBES_MAX {
                return false;
            }
            probes += 1;
            link.router = None;
            link.seed = true;
            true
        });
        let stale: Vec<u16> = self
            .stale_slots
            .iter()
            .filter(|(_, &epoch)| epoch <= map.epoch())
            .map(|(&slot, _)| slot)
            .collect();
        for slot in stale {
            self.stale_slots.remove(&slot);
            self.resync_slot_at_owner(slot, Duration::ZERO, now);
        }
        let mut moved: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent_to.is_none_or(|to| to != map.owner_id(p.slot)))
            .map(|(&id, _)| id)
            .collect();
        moved.sort_unstable();
        for id in moved {
            self.dispatch(id, now);
        }
        // Fanout recipients waiting for an owner, or for this map.
        let mut waiting: Vec<u64> = self
            .fanouts
            .iter()
            .filter(|(_, f)| !f.unsent.is_empty())
            .map(|(&id, _)| id)
            .collect();
        waiting.sort_unstable();
        for id in waiting {
            self.dispatch_fanout(id, now);
        }
    }

    /// The verdict on a Route (or a Fanout) from link `id`.
    fn status(&mut self, id: LinkId, status: StatusSummary, now: Time) {
        let from = self.links.get(&id).and_then(|link| link.router);
        if status.fanout {
            return self.fanout_status(from, status, now);
        }
        let Some(pending) = self.pending.get_mut(&status.message_id) else {
            return;
        };
        if pending.sent_to != from {
            // From a router it is no longer waiting on (it was sent again
            // elsewhere): the other verdict counts.
            return;
        }
        match status.verdict {
            fb::Verdict::Moved => {
                self.stats.moved += 1;
                pending.sent_to = None;
                let epoch = self.map.as_ref().map_or(0, |map| map.epoch());
                if status.epoch > epoch {
                    // The router knows a newer map: send it on once this
                    // node has it too.
                    pending.wait_epoch = status.epoch;
                    self.dispatch(status.message_id, now);
                } else {
                    // The router is behind this node's map (it has not
                    // applied the epoch that gave it the slot): again
                    // after a moment.
                    let delay = self.config.retry_delay / 2;
                    let jitter = self.jitter(delay);
                    let pending = self.pending.get_mut(&status.message_id).expect("present");
                    pending.retry_at = Some(now + delay / 2 + jitter);
                }
                return;
            }
            fb::Verdict::Unknown if pending.unknowns < self.config.unknown_retries => {
                pending.unknowns += 1;
                pending.sent_to = None;
                let exponent = (pending.unknowns - 1).min(4);
                let delay = self.config.retry_delay.saturating_mul(1 << exponent);
                self.stats.unknown_retries += 1;
                let jitter = self.jitter(delay / 2);
                let pending = self.pending.get_mut(&status.message_id).expect("present");
                pending.retry_at = Some(now + delay / 2 + jitter);
                return;
            }
            _ => {}
        }
        let pending = self.pending.remove(&status.message_id).expect("present");
        self.outcomes.push_back(Outcome {
            message_id: status.message_id,
            verdict: status.verdict,
            reason: status.reason,
            sends: pending.sends,
            router: from,
            offline_users: Vec::new(),
        });
    }

    /// A request link `id` did not serve.
    fn moved(&mut self, id: LinkId, moved: MovedSummary, now: Time) {
        self.stats.moved += 1;
        let slot = moved.slot;
        let request = fb::Body(moved.request);
        let epoch = self.map.as_ref().map_or(0, |map| map.epoch());
        let refuser = self.links.get(&id).and_then(|link| link.router);
        match request {
            fb::Body::SessionOpen | fb::Body::SessionClose => {
                // The session's state is this node's: the owner gets it in
                // a resync of that slot, now if this node's map names
                // another owner, else once a map at least as new as the
                // router's does, or (the router refused its own slot:
                // fenced, or the slot is on its way) after a while.
                if moved.epoch > epoch {
                    self.stale_slots.insert(slot, moved.epoch);
                } else if self.owner(slot) != refuser {
                    self.resync_slot_at_owner(slot, Duration::ZERO, now);
                } else {
                    self.resync_slot_at_owner(slot, self.config.retry_delay, now);
                }
            }
            fb::Body::Subscribe => {
                if let Some(topic) = moved.key.filter(|topic| self.topics.contains(topic)) {
                    if let Some(link) = self.owner_link(&topic) {
                        link.core.subscribe(&topic, 0);
                    }
                }
            }
            // A Locate goes to the owner this node's map names, if that
            // is another router (else the application's timeout decides).
            fb::Body::Locate => {
                let owner = self.owner(slot);
                if let (Some(user), true) = (moved.key, owner.is_some() && owner != refuser) {
                    self.locate(moved.id, &user);
                }
            }
            // Unsubscribe: the owner never had it. Publish is at most
            // once: the application sees no answer.
            _ => {}
        }
    }

    // ----- Resync ---------------------------------------------------------------

    /// Resyncs `slot` at its owner's link, after `delay`.
    fn resync_slot_at_owner(&mut self, slot: u16, delay: Duration, now: Time) {
        let epoch = self.map.as_ref().map_or(0, |map| map.epoch());
        let Some(target) = self.owner(slot).and_then(|owner| self.link_of(owner)) else {
            return;
        };
        let link = self.links.get_mut(&target).expect("a link");
        link.refused.insert(slot);
        let scope = std::mem::replace(&mut link.refused, SlotSet::empty());
        self.schedule_resync_after(target, scope, epoch, now + delay);
    }

    fn schedule_resync(&mut self, id: LinkId, scope: SlotSet, full: bool, epoch: u64, now: Time) {
        let jitter = self.jitter(self.config.resync_jitter);
        self.merge_resync(id, scope, full, epoch, now + jitter);
    }

    fn schedule_resync_after(&mut self, id: LinkId, scope: SlotSet, epoch: u64, at: Time) {
        self.merge_resync(id, scope, false, epoch, at);
    }

    fn merge_resync(&mut self, id: LinkId, scope: SlotSet, full: bool, epoch: u64, at: Time) {
        let Some(link) = self.link_mut(id) else {
            return;
        };
        match &mut link.resync {
            Some(resync) if !resync.started => {
                resync.scope.union_with(&scope);
                resync.full |= full;
                resync.epoch = resync.epoch.max(epoch);
                resync.at = resync.at.min(at);
            }
            _ => {
                // A resync in flight is replaced: the new snapshot lists
                // everything in both scopes (the router ends the old one
                // unfinished).
                let (mut scope, mut full) = (scope, full);
                if let Some(old) = link.resync.take() {
                    scope.union_with(&old.scope);
                    full |= old.full;
                }
                link.resync = Some(Resync {
                    scope,
                    full,
                    epoch,
                    at,
                    sessions: Vec::new(),
                    sent: 0,
                    started: false,
                    generation: 0,
                });
            }
        }
    }

    /// Sends the next batch of link `id`'s resync, if it is due.
    fn resync_step(&mut self, id: LinkId, now: Time) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        let due = link.is_live() && link.resync.as_ref().is_some_and(|r| r.at <= now);
        if !due {
            return;
        }
        let router = link.router;
        let map = self.map.clone();
        let owned = |slot: u16| match (&map, router) {
            (Some(map), Some(router)) => map.owner_id(slot) == router,
            _ => true,
        };
        let link = self.links.get_mut(&id).expect("checked");
        let resync = link.resync.as_mut().expect("checked");
        if !resync.started {
            resync.started = true;
            self.next_generation += 1;
            resync.generation = self.next_generation;
            let (scope, full) = (&resync.scope, resync.full);
            resync.sessions = self
                .sessions
                .iter()
                .filter(|((user, _), _)| {
                    let slot = slot_for_user(user.as_bytes());
                    (full || scope.contains(slot)) && owned(slot)
                })
                .map(|((user, device), &(platform, seq))| {
                    (user.clone(), device.clone(), platform, seq)
                })
                .collect();
            self.stats.resyncs += 1;
        }
        let batch = self.config.resync_batch.max(1);
        let end = (resync.sent + batch).min(resync.sessions.len());
        let chunk: Vec<(&str, &str, fb::Platform, u64)> = resync.sessions[resync.sent..end]
            .iter()
            .map(|(u, d, p, s)| (u.as_str(), d.as_str(), *p, *s))
            .collect();
        let last = end == resync.sessions.len();
        let scope = if resync.full {
            Vec::new()
        } else {
            resync.scope.spans()
        };
        let generation = resync.generation;
        link.core
            .sync_batch(generation, &chunk, last, &scope, resync.epoch);
        resync.sent = end;
        resync.at = now + self.config.resync_interval;
        if last {
            link.resync = None;
        }
    }

    /// Subscribes again, on link `id`, to the topics it owns (in `scope`).
    fn resubscribe(&mut self, id: LinkId, scope: Option<&SlotSet>) {
        let map = self.map.clone();
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        for topic in &self.topics {
            let slot = slot_for_user(topic.as_bytes());
            let owned = match (&map, link.router) {
                (Some(map), Some(router)) => map.owner_id(slot) == router,
                _ => true,
            };
            if owned && scope.is_none_or(|scope| scope.contains(slot)) {
                link.core.subscribe(topic, 0);
            }
        }
    }
}

/// What a frame is, as far as the cluster logic cares, owned.
enum Summary {
    Error(NodeError),
    Welcome,
    Map {
        map: Box<SlotMap>,
        resync: Vec<(u16, u16)>,
    },
    Status(StatusSummary),
    Moved(MovedSummary),
    Deliver {
        key: Option<u64>,
    },
    FanoutDeliver {
        keys: Vec<Option<u64>>,
    },
    NodeEvent {
        seq: u64,
    },
    Draining {
        window: Duration,
    },
    /// A frame with nothing borrowed (Ping, Pong, Ack): handed on as is
    /// (the core may have consumed it already).
    Control(Incoming<'static>),
    Pass,
}

struct StatusSummary {
    message_id: u64,
    verdict: fb::Verdict,
    reason: fb::Reason,
    epoch: u64,
    /// A Fanout's: its Status lists users (empty for a Route's).
    fanout: bool,
    offline_users: Vec<String>,
    moved_users: Vec<String>,
}

struct MovedSummary {
    request: u8,
    id: u64,
    key: Option<String>,
    slot: u16,
    epoch: u64,
}

fn summarize(incoming: &Incoming<'_>) -> Summary {
    match incoming {
        Incoming::Welcome { .. } => Summary::Welcome,
        Incoming::SlotMap(table) => match SlotMap::from_wire(*table) {
            Ok((map, resync)) => Summary::Map {
                map: Box::new(map),
                resync,
            },
            Err(error) => Summary::Error(NodeError::Map(error)),
        },
        Incoming::Status { status, .. } => Summary::Status(StatusSummary {
            message_id: status.message_id(),
            verdict: status.verdict(),
            reason: status.reason(),
            epoch: status.epoch(),
            fanout: false,
            offline_users: Vec::new(),
            moved_users: Vec::new(),
        }),
        Incoming::FanoutStatus(status) => {
            let users = |list: Option<
                flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>,
            >| { list.iter().flatten().map(str::to_owned).collect() };
            Summary::Status(StatusSummary {
                message_id: status.message_id(),
                verdict: status.verdict(),
                reason: status.reason(),
                epoch: status.epoch(),
                fanout: true,
                offline_users: users(status.offline_users()),
                moved_users: users(status.moved_users()),
            })
        }
        Incoming::Moved(moved) => Summary::Moved(MovedSummary {
            request: moved.request(),
            id: moved.id(),
            key: moved.key().map(str::to_owned),
            slot: moved.slot(),
            epoch: moved.epoch(),
        }),
        Incoming::Deliver(deliver) => Summary::Deliver {
            key: dedup_key(
                deliver.origin(),
                deliver.message_id(),
                deliver.to_user().unwrap_or(""),
                deliver.flags() & ROUTE_FLAG_CARBON != 0,
            ),
        },
        Incoming::FanoutDeliver(deliver) => Summary::FanoutDeliver {
            keys: deliver
                .recipients()
                .iter()
                .flatten()
                .map(|user| dedup_key(deliver.origin(), deliver.message_id(), user, false))
                .collect(),
        },
        Incoming::NodeEvent(event) => Summary::NodeEvent { seq: event.seq() },
        Incoming::Draining { window_ms, .. } => Summary::Draining {
            window: Duration::from_millis(u64::from(*window_ms)),
        },
        Incoming::Ping { nonce } => Summary::Control(Incoming::Ping { nonce: *nonce }),
        Incoming::Pong { nonce } => Summary::Control(Incoming::Pong { nonce: *nonce }),
        Incoming::Ack { received } => Summary::Control(Incoming::Ack {
            received: *received,
        }),
        _ => Summary::Pass,
    }
}

/// The key of one copy of a message for one recipient (None: the sender
/// is not known, nothing to compare).
fn dedup_key(origin: u64, message_id: u64, user: &str, carbon: bool) -> Option<u64> {
    // Hashed in place (no buffer per Deliver); the keys never leave the
    // process, so a fast hasher with fixed seeds will do.
    const KEYS: ahash::RandomState = ahash::RandomState::with_seeds(0x1d3d, 1, 2, 3);
    (origin != 0).then(|| KEYS.hash_one((origin, message_id, carbon, user)))
}

/// The last `capacity` keys seen, in order.
struct Dedup {
    capacity: usize,
    order: VecDeque<u64>,
    seen: HashSet<u64, ahash::RandomState>,
}

impl Dedup {
    fn new(capacity: usize) -> Self {
        Dedup {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashSet::default(),
        }
    }

    /// Remembers `key`; false when it was already remembered.
    fn insert(&mut self, key: u64) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            let old = self.order.pop_front().expect("not empty");
            self.seen.remove(&old);
        }
        true
    }
}

pub mod net;
#[cfg(test)]
mod tests;

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("router", &self.router)
            .field("state", &self.state)
            .finish()
    }
}

impl State {
    /// Whether the connection has completed its handshake.
    pub fn is_live(self) -> bool {
        self == State::Live
    }
}
