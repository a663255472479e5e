//! Shards: one glommio executor per core, each owning a share of the users.
//!
//! A [`Shard`] is the per-core service (Seastar's `sharded<T>`): it accepts
//! node connections, owns the location-table entries of the users whose
//! slot maps to it ([`placement`]), and talks to the other shards only by
//! explicit messages over [`link`]s. Everything in it is `!Send` and touched
//! by its own thread alone, so there are no locks on the data plane.
//!
//! A message takes one of these paths (A: the sender's connection, B: the
//! recipient's owner, C: the recipient node's connection):
//!
//! ```text
//! A == B == C   read, route and write on one core (shard-direct nodes)
//! A -> B        Forward batch: B routes it (an immediate Offline or Busy
//!               verdict goes back B -> A in a Response batch)
//! B -> C        Response batch: C queues the Deliver
//! C -> A        Bounce batch: C reports the outcome when the verdict
//!               depends on it; A writes the one Status
//! ```
//!
//! Ownership-side logic (applying session operations, routing) lives here;
//! the decisions themselves are in `route` and `table`, and connection I/O
//! is in `node`.

mod fanout;
pub mod link;
mod outbox;
pub mod placement;
mod router;
pub mod signal;
mod sync;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::limits::{SHARDS_MAX, SLOT_COUNT};
use crate::metrics::Counters;
use crate::node::{self, Connection, Directory, PushError};
use crate::route::{self, Destination, Message, Plan, Sender};
use crate::table::topics::{SubscribeError, Topics};
use crate::table::{CloseOutcome, LoginPolicy, NodeId, OpenOutcome, Table, TableLimits};
use crate::wire::{
    envelope_unchecked, fb, Encoder, NodeEventFrame, PublishFrame, Verifier, ROUTE_FLAG_CARBON,
};

/// A node id no node has, for fan-outs that leave nobody out.
const NO_NODE: NodeId = NodeId(u32::MAX);

use link::{
    Class, Control, Entries, EntryHeader, EntryKind, Inbox, ShardLink, FLAG_ACK, FLAG_BUSY_SEEN,
    FLAG_QUEUED,
};
use outbox::Outboxes;
use signal::{Broadcast, Signal};

pub use router::{Router, RunningRouter, StartError};
pub(crate) use sync::check as check_session_sync;

/// Batches of one class taken per drain round before the other classes and
/// the connection readers get a turn.
const BATCHES_PER_ROUND: usize = 8;

/// First and longest pause before retrying a hand-off to a full channel.
/// Only a congested router waits here; an idle one never arms a timer.
const FLUSH_RETRY_FIRST: Duration = Duration::from_micros(20);
const FLUSH_RETRY_MAX: Duration = Duration::from_millis(1);

/// The state of one shard. See the module docs.
pub struct Shard {
    pub index: usize,
    pub config: Arc<Config>,
    pub directory: Arc<Directory>,
    /// Random per router process, sent in Welcome.
    pub router_id: u64,
    /// `links[t]` sends to shard `t`.
    pub(crate) links: Vec<ShardLink>,
    inbox: Inbox,
    table: RefCell<Table>,
    /// The epoch of the sessions this shard holds for each node; see
    /// `node::directory` for what epochs are.
    node_epochs: RefCell<Vec<u32>>,
    /// Each node's connection on this shard, if it has one.
    node_connections: RefCell<Vec<Option<Rc<Connection>>>>,
    /// Every open connection of this shard, including ones being replaced.
    open_connections: RefCell<Vec<Rc<Connection>>>,
    /// Until then, "no session" is answered Unknown (`--warmup-ms`).
    warm_until: std::time::Instant,
    /// Session snapshots in progress (see `sync`).
    syncs: RefCell<sync::Syncs>,
    /// The topics this shard owns.
    topics: RefCell<Topics>,
    /// Fanouts this shard coordinates, by token: being resolved, and
    /// waiting for their Delivers' outcomes.
    fanout_jobs: RefCell<HashMap<u64, fanout::Job>>,
    fanout_delivering: RefCell<HashMap<u64, fanout::Delivering>>,
    next_fanout_token: Cell<u64>,
    /// Sockets accepted or adopted and not yet closed (handshaking or open).
    pub(crate) sockets: Cell<usize>,
    outboxes: RefCell<Outboxes>,
    /// Builds Deliver frames only. Kept apart from `encoder` because a
    /// Deliver that cannot be written is answered with a Status while the
    /// Deliver frame is still borrowed from its encoder.
    deliver_encoder: RefCell<Encoder>,
    /// Builds every other frame the shard writes.
    pub(crate) encoder: RefCell<Encoder>,
    pub(crate) verifier: Verifier,
    /// Numbers the messages this shard routes, for report tokens.
    next_route_seq: Cell<u64>,
    pub counters: Counters,
    /// Asks the flusher to hand off the outboxes.
    flush_wanted: Signal,
    /// Outbox room changed (readers waiting for room re-check).
    pub(crate) room: Broadcast,
    /// Something arrived in the inbox, or outbox room appeared.
    inbox_ready: Signal,
    /// A connection closed.
    pub(crate) connections_changed: Broadcast,
    pub(crate) shutting_down: Cell<bool>,
    stopped: Signal,
    /// The Error frame a connection queues when it passes its hard limit,
    /// built once because that happens while an encoder is in use.
    pub(crate) slow_consumer_error: Rc<[u8]>,
}

impl Shard {
    pub(crate) fn new(
        index: usize,
        config: Arc<Config>,
        directory: Arc<Directory>,
        links: Vec<ShardLink>,
        inbox: Inbox,
        router_id: u64,
    ) -> Self {
        let shard_count = config.shard_count();
        assert!(shard_count <= SHARDS_MAX && index < shard_count);
        let nodes_max = config.nodes_max as usize;
        let table = Table::new(TableLimits {
            sessions_max: config.sessions_per_shard_max(),
            sessions_per_user_max: config.sessions_per_user_max as usize,
            nodes_max,
            login_policy: config.login_policy,
        });
        Shard {
            index,
            verifier: Verifier::new(config.frame_bytes_max),
            directory,
            router_id,
            links,
            inbox,
            table: RefCell::new(table),
            node_epochs: RefCell::new(vec![0; nodes_max]),
            node_connections: RefCell::new(vec![None; nodes_max]),
            open_connections: RefCell::new(Vec::new()),
            warm_until: std::time::Instant::now() + config.warmup,
            syncs: RefCell::new(sync::Syncs::default()),
            topics: RefCell::new(Topics::new(config.topics_per_shard_max())),
            fanout_jobs: RefCell::new(HashMap::new()),
            fanout_delivering: RefCell::new(HashMap::new()),
            next_fanout_token: Cell::new(1),
            sockets: Cell::new(0),
            outboxes: RefCell::new(Outboxes::new(shard_count)),
            deliver_encoder: RefCell::new(Encoder::new()),
            encoder: RefCell::new(Encoder::new()),
            next_route_seq: Cell::new(0),
            counters: Counters::default(),
            flush_wanted: Signal::default(),
            room: Broadcast::default(),
            inbox_ready: Signal::default(),
            connections_changed: Broadcast::default(),
            shutting_down: Cell::new(false),
            stopped: Signal::default(),
            slow_consumer_error: Encoder::new()
                .error(
                    fb::ErrorCode::SlowConsumer,
                    "the node stopped reading and its output buffer passed the hard limit",
                )
                .into(),
            config,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.config.shard_count()
    }

    fn owner_of(&self, user: &str) -> usize {
        placement::shard_for_user(user.as_bytes(), self.shard_count())
    }

    // ----- Ingress: frames read from a connection on this shard ------------

    /// A verified Route from `sender`'s connection on this shard.
    pub(crate) fn on_route(&self, sender: Sender, route: fb::Route<'_>, frame: &[u8]) {
        self.counters
            .routes_in
            .set(self.counters.routes_in.get() + 1);
        match route::message_from(route) {
            Err(reason) => {
                self.counters
                    .routes_rejected
                    .set(self.counters.routes_rejected.get() + 1);
                let message_id = route.message_id();
                self.send_status(
                    sender,
                    message_id,
                    fb::Verdict::Rejected,
                    reason,
                    Class::Response,
                );
            }
            Ok(message) => {
                let owner = self.owner_of(message.to_user);
                if owner == self.index {
                    self.route_here(sender, &message);
                } else {
                    self.forward(owner, EntryKind::Route, sender, frame);
                }
                if message.flags & ROUTE_FLAG_CARBON != 0 {
                    let owner = self.owner_of(message.from_user);
                    if owner == self.index {
                        self.carbons_here(&message);
                    } else {
                        self.forward(owner, EntryKind::Carbon, sender, frame);
                    }
                }
            }
        }
    }

    /// A verified SessionOpen or SessionClose whose ids were checked.
    pub(crate) fn on_session_op(&self, sender: Sender, kind: EntryKind, user: &str, frame: &[u8]) {
        // SAFETY: the caller verified `frame`.
        if let Some(envelope) = unsafe { self.here_or_forward(user, kind, sender, frame) } {
            self.apply_session_op(sender, kind, envelope);
        }
    }

    /// When this shard owns `key` (a user or topic id), the frame's
    /// envelope, to apply here; otherwise the frame is forwarded to the
    /// owner as a `kind` entry and `None` is returned.
    ///
    /// # Safety
    ///
    /// `frame` must have passed verification (see `envelope_unchecked`).
    unsafe fn here_or_forward<'f>(
        &self,
        key: &str,
        kind: EntryKind,
        sender: Sender,
        frame: &'f [u8],
    ) -> Option<fb::Envelope<'f>> {
        let owner = self.owner_of(key);
        if owner != self.index {
            self.forward(owner, kind, sender, frame);
            return None;
        }
        // SAFETY: the caller's contract.
        Some(unsafe { envelope_unchecked(frame) })
    }

    /// A Broadcast from `sender`'s connection: one copy for every other
    /// connected node, written by the shard of that node's first connection
    /// (so a shard-direct node gets one copy, not one per connection).
    pub(crate) fn on_broadcast(&self, sender: Sender, sender_name: &str, payload: &[u8]) {
        let counter = &self.counters.broadcasts_in;
        counter.set(counter.get() + 1);
        let mut encoder = self.encoder.borrow_mut();
        let frame = encoder.broadcast(sender_name, payload);
        self.fan_out(EntryKind::Broadcast, sender.node, frame);
    }

    /// Sends membership events to every node, except `except` (a node that
    /// learns them from its Welcome).
    pub(crate) fn announce(&self, events: &[node::MembershipEvent], except: Option<NodeId>) {
        for event in events {
            crate::log!(
                "shard {}: membership event {}: {:?} {} ({:?}), senior {}",
                self.index,
                event.seq,
                event.kind,
                event.node,
                event.reason,
                event.senior.as_deref().unwrap_or("none")
            );
            let mut encoder = self.encoder.borrow_mut();
            let frame = encoder.node_event(&NodeEventFrame {
                seq: event.seq,
                kind: event.kind,
                node: &event.node,
                incarnation: event.incarnation,
                reason: event.reason,
                senior: event.senior.as_deref(),
            });
            self.fan_out(EntryKind::NodeEvent, except.unwrap_or(NO_NODE), frame);
        }
        self.request_flush();
    }

    /// Hands `frame` to every shard (this one at once) to write to every
    /// node but `except`, once per node.
    fn fan_out(&self, kind: EntryKind, except: NodeId, frame: &[u8]) {
        let header = EntryHeader::new(kind, except, 0);
        let mut outboxes = self.outboxes.borrow_mut();
        for target in (0..self.shard_count()).filter(|&t| t != self.index) {
            outboxes.push(target, Class::Response, &header, frame);
        }
        drop(outboxes);
        self.fan_out_here(kind, except, frame);
    }

    /// Writes a fanned-out frame to the nodes whose first connection is
    /// here.
    fn fan_out_here(&self, kind: EntryKind, from: NodeId, frame: &[u8]) {
        let counter = match kind {
            EntryKind::NodeEvent => &self.counters.node_event_copies_out,
            _ => &self.counters.broadcast_copies_out,
        };
        let open: Vec<_> = self.open_connections.borrow().clone();
        for connection in open {
            if connection.node == from || connection.is_closing() {
                continue;
            }
            let state = self.directory.state(connection.node);
            if state.fan_out_shard() != Some(self.index) || state.epoch != connection.epoch {
                continue; // Another shard writes this node's copy.
            }
            // Membership events are rare and small, and a node must not be
            // disconnected because others came or went while it was busy:
            // they are queued like Delivers. Broadcasts, which any node can
            // send at any rate, count against the hard limit.
            let pushed = match kind {
                EntryKind::NodeEvent => connection.push_deliver(frame),
                _ => connection.push_control(frame),
            };
            match pushed {
                Ok(()) => counter.set(counter.get() + 1),
                Err(PushError::OverHardLimit) => self.count_slow_consumer(),
                Err(PushError::Closed) => {}
            }
        }
    }

    /// A verified Subscribe or Unsubscribe whose topic was checked.
    pub(crate) fn on_topic_op(&self, sender: Sender, topic: &str, frame: &[u8]) {
        // SAFETY: the caller verified `frame`.
        let here = unsafe { self.here_or_forward(topic, EntryKind::TopicOp, sender, frame) };
        if let Some(envelope) = here {
            self.apply_topic_op(sender, envelope);
        }
    }

    fn apply_topic_op(&self, sender: Sender, envelope: fb::Envelope<'_>) {
        if !self.observe_epoch(sender.node, sender.epoch) {
            return; // From a connection whose node is already gone.
        }
        if let Some(subscribe) = envelope.body_as_subscribe() {
            let result = self.topics.borrow_mut().subscribe(
                subscribe.topic().as_bytes(),
                sender.node,
                sender.epoch,
            );
            if let Err(SubscribeError::Full) = result {
                let counter = &self.counters.subscribes_refused;
                counter.set(counter.get() + 1);
                let (verdict, reason) = (fb::Verdict::Rejected, fb::Reason::TopicsFull);
                let id = subscribe.request_id();
                self.send_status(sender, id, verdict, reason, Class::Response);
            }
        } else if let Some(unsubscribe) = envelope.body_as_unsubscribe() {
            self.topics
                .borrow_mut()
                .unsubscribe(unsubscribe.topic().as_bytes(), sender.node);
        }
    }

    /// A verified Publish whose topic was checked: re-encoded with the
    /// sender's name, then sent by the topic's owner.
    pub(crate) fn on_publish(&self, sender: Sender, sender_name: &str, publish: fb::Publish<'_>) {
        let mut encoder = self.encoder.borrow_mut();
        let frame = encoder.publish(&PublishFrame {
            topic: publish.topic(),
            message_id: publish.message_id(),
            from_user: publish.from_user().unwrap_or(""),
            from_device: publish.from_device().unwrap_or(""),
            from_node: sender_name,
            flags: publish.flags(),
            payload: publish.payload().map_or(&[][..], |p| p.bytes()),
        });
        let owner = self.owner_of(publish.topic());
        if owner == self.index {
            self.publish_here(sender.node, frame);
        } else {
            self.forward(owner, EntryKind::Publish, sender, frame);
        }
    }

    /// Sends a Publish to every node subscribed to its topic but `from`.
    fn publish_here(&self, from: NodeId, frame: &[u8]) {
        let counter = &self.counters.publishes;
        counter.set(counter.get() + 1);
        // SAFETY: encoded by this router.
        let envelope = unsafe { envelope_unchecked(frame) };
        let topic = envelope.body_as_publish().expect("a Publish").topic();
        let subscribers: Vec<(NodeId, u32)> =
            self.topics.borrow().subscribers(topic.as_bytes()).to_vec();
        for (node, epoch) in subscribers {
            if node == from {
                continue;
            }
            let state = self.directory.state(node);
            let Some(shard) = state
                .delivery_shard(self.index)
                .filter(|_| state.epoch == epoch)
            else {
                continue; // The node is gone; its subscriptions go with it.
            };
            self.send_frame(shard, node, epoch, Class::Response, frame);
            let counter = &self.counters.publish_copies_out;
            counter.set(counter.get() + 1);
        }
    }

    /// A verified Locate whose user id was checked.
    pub(crate) fn on_locate(&self, sender: Sender, user: &str, frame: &[u8]) {
        // SAFETY: the caller verified `frame`.
        if let Some(envelope) =
            unsafe { self.here_or_forward(user, EntryKind::Locate, sender, frame) }
        {
            self.locate_here(sender, envelope);
        }
    }

    fn forward(&self, owner: usize, kind: EntryKind, sender: Sender, frame: &[u8]) {
        let header = EntryHeader {
            origin_shard: sender.shard as u8,
            ..EntryHeader::new(kind, sender.node, sender.epoch)
        };
        self.outboxes
            .borrow_mut()
            .push(owner, Class::Forward, &header, frame);
    }

    // ----- Owner side ------------------------------------------------------

    fn apply_session_op(&self, sender: Sender, kind: EntryKind, envelope: fb::Envelope<'_>) {
        if !self.observe_epoch(sender.node, sender.epoch) {
            return; // From a connection whose sessions are already dead.
        }
        match kind {
            EntryKind::SessionOpen => {
                let open = envelope
                    .body_as_session_open()
                    .expect("a SessionOpen entry");
                let outcome = self.open_here(
                    sender,
                    open.user(),
                    open.device(),
                    open.platform().0,
                    open.seq(),
                );
                self.note_sync_op(
                    sender.node,
                    open.user().as_bytes(),
                    open.device().as_bytes(),
                    Some(outcome),
                );
            }
            EntryKind::SessionClose => {
                let close = envelope
                    .body_as_session_close()
                    .expect("a SessionClose entry");
                let mut table = self.table.borrow_mut();
                let outcome = table.close(
                    close.user().as_bytes(),
                    close.device().as_bytes(),
                    sender.node,
                    close.seq(),
                );
                if outcome == CloseOutcome::Removed {
                    drop(table);
                    let (user, device) = (close.user().as_bytes(), close.device().as_bytes());
                    self.note_sync_op(sender.node, user, device, None);
                } else if outcome == CloseOutcome::Stale {
                    let counter = &self.counters.session_closes_stale;
                    counter.set(counter.get() + 1);
                }
                self.counters
                    .session_closes
                    .set(self.counters.session_closes.get() + 1);
            }
            other => unreachable!("{other:?} is not a session operation"),
        }
    }

    fn open_here(
        &self,
        sender: Sender,
        user: &str,
        device: &str,
        platform: u8,
        seq: u64,
    ) -> OpenOutcome {
        let mut table = self.table.borrow_mut();
        let outcome = table.open(
            user.as_bytes(),
            device.as_bytes(),
            platform,
            sender.node,
            seq,
        );
        let evicted_reason = match self.config.login_policy {
            LoginPolicy::SingleSession => fb::KickReason::SingleSession,
            _ => fb::KickReason::SamePlatformElsewhere,
        };
        for evicted in table.drain_evicted() {
            self.counters
                .sessions_evicted
                .set(self.counters.sessions_evicted.get() + 1);
            let device = String::from_utf8_lossy(&evicted.device);
            self.kick_node(evicted.node, user, &device, evicted_reason);
        }
        drop(table);
        self.counters
            .session_opens
            .set(self.counters.session_opens.get() + 1);
        match outcome {
            OpenOutcome::Added | OpenOutcome::Refreshed => {}
            OpenOutcome::Replaced { previous_node } => {
                self.kick_node(
                    previous_node,
                    user,
                    device,
                    fb::KickReason::ReplacedElsewhere,
                );
            }
            OpenOutcome::UserFull => {
                self.kick_sender(sender, user, device, fb::KickReason::SessionLimit);
            }
            OpenOutcome::TableFull => {
                self.kick_sender(sender, user, device, fb::KickReason::RouterFull);
            }
        }
        outcome
    }

    /// The state of `node` if the sessions this shard holds of it are live:
    /// it is connected and they belong to its current epoch (a dead node's
    /// sessions may not have been purged here yet).
    fn live_state(&self, node: NodeId) -> Option<node::NodeState> {
        let state = self.directory.state(node);
        let live =
            state.connections != 0 && state.epoch == self.node_epochs.borrow()[node.0 as usize];
        live.then_some(state)
    }

    /// Answers a Locate with the user's sessions on live nodes.
    fn locate_here(&self, sender: Sender, envelope: fb::Envelope<'_>) {
        let locate = envelope.body_as_locate().expect("a Locate entry");
        let user = locate.user();
        let mut found: Vec<(String, String, fb::Platform)> = Vec::new();
        {
            for session in self.table.borrow().sessions(user.as_bytes()) {
                if self.live_state(session.node).is_none() {
                    continue;
                }
                found.push((
                    self.directory.name(session.node),
                    String::from_utf8_lossy(session.device).into_owned(),
                    fb::Platform(session.platform),
                ));
            }
        }
        let counter = &self.counters.locates;
        counter.set(counter.get() + 1);
        let sessions: Vec<(&str, &str, fb::Platform)> = found
            .iter()
            .map(|(node, device, platform)| (node.as_str(), device.as_str(), *platform))
            .collect();
        let mut encoder = self.encoder.borrow_mut();
        let frame = encoder.located(locate.query_id(), user, &sessions);
        self.send_to(sender, Class::Response, frame);
    }

    /// Records that `node`'s sessions from `epoch` on are the live ones,
    /// dropping older sessions it holds. Returns false when `epoch` itself
    /// is older than what this shard has seen (the operation is stale).
    fn observe_epoch(&self, node: NodeId, epoch: u32) -> bool {
        let mut epochs = self.node_epochs.borrow_mut();
        let seen = epochs[node.0 as usize];
        if epoch > seen {
            let purged = self.table.borrow_mut().purge_node(node);
            let counter = &self.counters.sessions_purged;
            counter.set(counter.get() + purged as u64);
            self.topics.borrow_mut().purge_node(node);
            self.forget_sync(node);
            epochs[node.0 as usize] = epoch;
        }
        epoch >= seen
    }

    fn route_here(&self, sender: Sender, message: &Message<'_>) {
        let seq = self.next_route_seq.get();
        self.next_route_seq.set(seq.wrapping_add(1));
        let token = (self.index as u64) << 56 | (seq & ((1 << 56) - 1));
        let mut nodes = ShardNodes {
            shard: self,
            stale: [NodeId(0); 4],
            stale_count: 0,
        };
        let outcome = {
            let table = self.table.borrow();
            let mut effects = ShardEffects { shard: self, token };
            route::route(&table, &mut nodes, &mut effects, sender, message)
        };
        for &node in &nodes.stale[..nodes.stale_count] {
            self.observe_epoch(node, self.directory.state(node).epoch);
        }
        let counter = match outcome.immediate {
            None => &self.counters.routes_routed,
            Some((fb::Verdict::Busy, _)) => &self.counters.routes_busy,
            Some(_) => &self.counters.routes_offline,
        };
        counter.set(counter.get() + 1);
    }

    /// Sends the carbon copies of `message` (the sender's user is owned
    /// here): one Deliver per node holding another device of `from_user`,
    /// listing those devices, with the CARBON flag. Best effort, no
    /// verdict: a congested or departed node is skipped and counted.
    fn carbons_here(&self, message: &Message<'_>) {
        // Fixed arrays, as in `route::route`: nothing allocated per message.
        const CEILING: usize = crate::limits::SESSIONS_PER_USER_MAX_CEILING as usize;
        const EMPTY: (NodeId, &[u8]) = (NodeId(0), &[]);
        let table = self.table.borrow();
        let mut picked = [EMPTY; CEILING];
        let mut picked_count = 0;
        for session in table.sessions(message.from_user.as_bytes()) {
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
            let state = self.live_state(node);
            let shard = state.and_then(|state| {
                state
                    .delivery_shard(self.index)
                    .filter(|&shard| !state.is_congested_on(shard))
            });
            let (Some(state), Some(shard)) = (state, shard) else {
                let counter = &self.counters.carbons_skipped;
                counter.set(counter.get() + 1);
                continue;
            };
            let mut devices = [&[][..]; CEILING];
            for (slot, &(_, device)) in devices.iter_mut().zip(group) {
                *slot = device;
            }
            let devices = &devices[..group.len()];
            let mut encoder = self.deliver_encoder.borrow_mut();
            let frame = encoder.deliver(&crate::wire::DeliverFrame {
                message_id: message.message_id,
                from_user: message.from_user,
                from_device: message.from_device,
                to_user: message.to_user,
                devices,
                flags: ROUTE_FLAG_CARBON,
                payload: message.payload,
            });
            self.send_frame(shard, node, state.epoch, Class::Response, frame);
            let counter = &self.counters.carbons_out;
            counter.set(counter.get() + 1);
        }
    }

    /// Tells every shard that `node`'s sessions before `epoch` are dead.
    pub(crate) fn broadcast_purge(&self, node: NodeId, epoch: u32) {
        let header = EntryHeader::new(EntryKind::PurgeNode, node, epoch);
        let mut outboxes = self.outboxes.borrow_mut();
        for target in (0..self.shard_count()).filter(|&t| t != self.index) {
            outboxes.push(target, Class::Forward, &header, &[]);
        }
        drop(outboxes);
        self.observe_epoch(node, epoch);
        self.request_flush();
    }

    fn kick_node(&self, node: NodeId, user: &str, device: &str, reason: fb::KickReason) {
        let state = self.directory.state(node);
        if state.epoch != self.node_epochs.borrow()[node.0 as usize] {
            return; // The node's sessions are dead anyway; nobody to tell.
        }
        if let Some(shard) = state.delivery_shard(self.index) {
            self.counters.kicks.set(self.counters.kicks.get() + 1);
            let mut encoder = self.encoder.borrow_mut();
            let frame = encoder.kick(user, device, reason);
            self.send_frame(shard, node, state.epoch, Class::Response, frame);
        }
    }

    fn kick_sender(&self, sender: Sender, user: &str, device: &str, reason: fb::KickReason) {
        self.counters.kicks.set(self.counters.kicks.get() + 1);
        let mut encoder = self.encoder.borrow_mut();
        let frame = encoder.kick(user, device, reason);
        self.send_to(sender, Class::Response, frame);
    }

    // ----- Delivery side ---------------------------------------------------

    /// Sends a Status to the connection a message came in on.
    pub(crate) fn send_status(
        &self,
        sender: Sender,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
        class: Class,
    ) {
        let mut encoder = self.encoder.borrow_mut();
        let frame = encoder.status(message_id, verdict, reason);
        self.send_to(sender, class, frame);
    }

    /// Writes `frame` to the connection a request came in on.
    fn send_to(&self, sender: Sender, class: Class, frame: &[u8]) {
        self.send_frame(sender.shard, sender.node, sender.epoch, class, frame);
    }

    /// Writes `frame` to `node`'s connection on `shard`, here or by batch.
    fn send_frame(&self, shard: usize, node: NodeId, epoch: u32, class: Class, frame: &[u8]) {
        if shard == self.index {
            self.write_here(node, epoch, frame);
        } else {
            let header = EntryHeader::new(EntryKind::Frame, node, epoch);
            self.outboxes
                .borrow_mut()
                .push(shard, class, &header, frame);
        }
    }

    /// Queues a Fanout's Deliver (coordinated by shard `coordinator` under
    /// `token`) to `node`'s connection here if it is still at `epoch`: like
    /// a Deliver, not refused for size. Returns whether it was queued, or
    /// `None` when the outcome waits for the node's Ack (or its resumption).
    fn write_message_here(
        &self,
        node: NodeId,
        epoch: u32,
        frame: &[u8],
        coordinator: usize,
        token: u64,
    ) -> Option<bool> {
        let connection = self.connection_for(node, epoch);
        let queued = connection
            .as_ref()
            .is_some_and(|connection| connection.push_deliver(frame).is_ok());
        if !queued {
            let counter = &self.counters.frames_undeliverable;
            counter.set(counter.get() + 1);
            return Some(false);
        }
        let connection = connection.expect("queued");
        if connection.defers_reports() {
            connection.defer(node::Deferred::Fanout { coordinator, token });
            return None;
        }
        Some(true)
    }

    /// Settles outcomes that waited on `node`'s connection here: delivered
    /// (acknowledged, or queued to a resuming connection) or not.
    pub(crate) fn settle(&self, node: NodeId, outcomes: Vec<node::Deferred>, delivered: bool) {
        if !delivered {
            let counter = &self.counters.parked_messages_failed;
            counter.set(counter.get() + outcomes.len() as u64);
        }
        for outcome in outcomes {
            match outcome {
                node::Deferred::Route {
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
                node::Deferred::Fanout { coordinator, token } => {
                    self.report_fanout_deliver(coordinator, token, node, delivered)
                }
            }
        }
        self.request_flush();
    }

    /// An Ack from the node on `connection`.
    pub(crate) fn on_ack(&self, connection: &Connection, received: u64) -> Result<(), String> {
        let counter = &self.counters.acks_in;
        counter.set(counter.get() + 1);
        let mut delivered = Vec::new();
        connection.ack(received, &mut delivered)?;
        if !delivered.is_empty() {
            self.settle(connection.node, delivered, true);
        }
        Ok(())
    }

    /// Writes a Status or Kick to `node`'s connection on this shard, if it
    /// is still the one at `epoch`.
    fn write_here(&self, node: NodeId, epoch: u32, frame: &[u8]) {
        match self.connection_for(node, epoch) {
            Some(connection) => {
                // Over the hard limit the connection closes itself as a slow
                // consumer; the frame is lost with it.
                if connection.push_control(frame) == Err(PushError::OverHardLimit) {
                    self.count_slow_consumer();
                }
            }
            None => {
                let counter = &self.counters.frames_undeliverable;
                counter.set(counter.get() + 1);
            }
        }
    }

    /// Queues a Deliver to `node`'s connection on this shard if it is still
    /// the one at `epoch`, and reports the outcome to the sender when the
    /// message's plan asks for it (in `class`, if the sender's connection
    /// is on another shard).
    fn deliver_here(&self, node: NodeId, epoch: u32, report: ReportTo, frame: &[u8], class: Class) {
        let connection = self.connection_for(node, epoch);
        let queued = connection
            .as_ref()
            .is_some_and(|connection| connection.push_deliver(frame).is_ok());
        let counter = if queued {
            &self.counters.delivers_out
        } else {
            &self.counters.delivers_node_gone
        };
        counter.set(counter.get() + 1);
        if let Some(connection) = connection.filter(|c| queued && c.defers_reports()) {
            connection.defer(node::Deferred::Route {
                sender: report.sender,
                message_id: report.message_id,
                token: report.token,
                plan: report.plan,
            });
            return;
        }
        self.report_outcome(report, queued, class);
    }

    /// Reports one destination's outcome to the message's sender, when its
    /// plan needs it (in `class`, if the sender's connection is elsewhere).
    fn report_outcome(&self, report: ReportTo, queued: bool, class: Class) {
        if !report.plan.must_report(queued) {
            return;
        }
        if report.sender.shard == self.index {
            self.apply_report(&report, queued);
        } else {
            let header = EntryHeader {
                origin_shard: report.sender.shard as u8,
                fanout: report.plan.fanout,
                flags: plan_flags(report.plan) | if queued { FLAG_QUEUED } else { 0 },
                message_id: report.message_id,
                token: report.token,
                ..EntryHeader::new(EntryKind::Report, report.sender.node, report.sender.epoch)
            };
            self.outboxes
                .borrow_mut()
                .push(report.sender.shard, class, &header, &[]);
        }
    }

    /// One destination's outcome, on the sender's shard: once every
    /// destination of the message has reported, write its verdict.
    fn apply_report(&self, report: &ReportTo, queued: bool) {
        let sender = report.sender;
        let Some(connection) = self.connection_for(sender.node, sender.epoch) else {
            // The sender's own connection closed; it sees that failure.
            let counter = &self.counters.frames_undeliverable;
            counter.set(counter.get() + 1);
            return;
        };
        let queued_total = if report.plan.fanout == 1 {
            Some(u8::from(queued))
        } else {
            match connection.collect_report(report.token, report.plan.fanout, queued) {
                Ok(total) => total,
                Err(()) => {
                    let text = "too many messages to several nodes await their verdicts";
                    self.close_connection(&connection, Some((fb::ErrorCode::RouterFull, text)));
                    return;
                }
            }
        };
        let Some(queued_total) = queued_total else {
            return; // More destinations to hear from.
        };
        if let Some((verdict, reason)) = route::verdict(report.plan, queued_total) {
            let mut encoder = self.encoder.borrow_mut();
            let frame = encoder.status(report.message_id, verdict, reason);
            if connection.push_control(frame) == Err(PushError::OverHardLimit) {
                self.count_slow_consumer();
            }
        }
    }

    pub(crate) fn count_slow_consumer(&self) {
        let counter = &self.counters.connections_slow;
        counter.set(counter.get() + 1);
        crate::log!(
            "shard {}: disconnecting a node that stopped reading",
            self.index
        );
    }

    fn connection_for(&self, node: NodeId, epoch: u32) -> Option<Rc<Connection>> {
        self.node_connections.borrow()[node.0 as usize]
            .as_ref()
            .filter(|connection| connection.epoch == epoch && connection.accepts())
            .cloned()
    }

    // ----- Connections -----------------------------------------------------

    pub(crate) fn register_connection(&self, connection: &Rc<Connection>) {
        self.node_connections.borrow_mut()[connection.node.0 as usize] = Some(connection.clone());
        self.open_connections.borrow_mut().push(connection.clone());
        self.counters
            .connections_opened
            .set(self.counters.connections_opened.get() + 1);
    }

    /// Forgets a closed connection and detaches it from the directory.
    pub(crate) fn unregister_connection(&self, connection: &Rc<Connection>) {
        {
            let mut slots = self.node_connections.borrow_mut();
            let slot = &mut slots[connection.node.0 as usize];
            if slot
                .as_ref()
                .is_some_and(|held| Rc::ptr_eq(held, connection))
            {
                *slot = None;
            }
        }
        self.open_connections
            .borrow_mut()
            .retain(|open| !Rc::ptr_eq(open, connection));
        let (detached, events) = self.directory.detach_for(
            connection.node,
            self.index,
            connection.ticket,
            connection.leave_reason(),
        );
        if let node::Detached::Gone { epoch } = detached {
            self.broadcast_purge(connection.node, epoch);
        }
        self.announce(&events, None);
        self.counters
            .connections_closed
            .set(self.counters.connections_closed.get() + 1);
        self.connections_changed.notify_all();
    }

    /// The open connection of `node` registered under `ticket`, if any.
    pub(crate) fn connection_with_ticket(
        &self,
        node: NodeId,
        ticket: u64,
    ) -> Option<Rc<Connection>> {
        self.open_connections
            .borrow()
            .iter()
            .find(|connection| connection.node == node && connection.ticket == ticket)
            .cloned()
    }

    /// Closes a connection, telling the node why when `error` is given.
    pub(crate) fn close_connection(
        &self,
        connection: &Connection,
        error: Option<(fb::ErrorCode, &str)>,
    ) {
        match error {
            Some((code, text)) => {
                let mut encoder = self.encoder.borrow_mut();
                connection.close(Some(encoder.error(code, text)));
            }
            None => connection.close(None),
        }
    }

    pub(crate) fn open_connection_count(&self) -> usize {
        self.open_connections.borrow().len()
    }

    // ----- Cross-core ------------------------------------------------------

    /// Asks for the outboxes to be handed off once the running tasks yield.
    pub(crate) fn request_flush(&self) {
        self.flush_wanted.notify();
    }

    /// Whether connection readers may read more: the outboxes their frames
    /// feed (forward, and response for routes owned here) have room.
    pub(crate) fn has_room_for_reading(&self) -> bool {
        let outboxes = self.outboxes.borrow();
        outboxes.has_room(Class::Forward) && outboxes.has_room(Class::Response)
    }

    /// Whether the drain task may take a batch of `class` now (see
    /// `link`: a class only waits on the class after it).
    fn may_take(&self, class: Class) -> bool {
        match class {
            Class::Bounce => true,
            Class::Response => self.outboxes.borrow().has_room(Class::Bounce),
            Class::Forward => self.outboxes.borrow().has_room(Class::Response),
        }
    }

    /// Hands the outboxes off, retrying while a target channel is full.
    async fn run_flusher(self: Rc<Self>) {
        loop {
            self.flush_wanted.wait().await;
            let mut retry = FLUSH_RETRY_FIRST;
            loop {
                let flushed = self.outboxes.borrow_mut().try_flush(&self.links);
                let counters = &self.counters;
                counters
                    .batches_sent
                    .set(counters.batches_sent.get() + flushed.sent);
                counters
                    .batches_deferred
                    .set(counters.batches_deferred.get() + flushed.deferred);
                if flushed.sent > 0 {
                    self.room.notify_all();
                    self.inbox_ready.notify();
                }
                if flushed.deferred == 0 {
                    break;
                }
                glommio::timer::sleep(retry).await;
                retry = (retry * 2).min(FLUSH_RETRY_MAX);
            }
        }
    }

    /// Takes batches and control messages from the inbox until it is empty,
    /// then sleeps until the doorbell rings.
    async fn run_drain(self: Rc<Self>) {
        loop {
            if self.drain_round() {
                self.request_flush();
                glommio::executor().yield_now().await;
                continue;
            }
            self.inbox.doorbell.park();
            if self.inbox.has_work(|class| self.may_take(class)) {
                self.inbox.doorbell.unpark();
                continue;
            }
            self.inbox_ready.wait().await;
            self.inbox.doorbell.unpark();
        }
    }

    /// Turns doorbell bytes into a wake-up of the drain task.
    async fn run_doorbell(self: Rc<Self>, mut bell: glommio::net::UnixStream) {
        use futures_lite::AsyncReadExt;
        let mut bytes = [0u8; 64];
        while let Ok(1..) = bell.read(&mut bytes).await {
            self.inbox_ready.notify();
        }
    }

    /// One round over the inbox; returns whether anything was taken.
    fn drain_round(self: &Rc<Self>) -> bool {
        let mut worked = false;
        while let Ok(message) = self.inbox.control.try_recv() {
            self.on_control(message);
            worked = true;
        }
        for class in [Class::Bounce, Class::Response, Class::Forward] {
            for _ in 0..BATCHES_PER_ROUND {
                if !self.may_take(class) {
                    break;
                }
                let Ok(batch) = self.inbox.batches[class as usize].try_recv() else {
                    break;
                };
                self.process_batch(&batch);
                self.outboxes.borrow_mut().recycle(batch);
                worked = true;
            }
        }
        worked
    }

    fn process_batch(self: &Rc<Self>, batch: &[u8]) {
        let counter = &self.counters.batches_received;
        counter.set(counter.get() + 1);
        for (header, frame) in Entries::new(batch) {
            let sender = Sender {
                shard: header.origin_shard as usize,
                node: header.node,
                epoch: header.epoch,
            };
            match header.kind {
                EntryKind::Route => {
                    // SAFETY: forwarded frames were verified at ingress.
                    let envelope = unsafe { envelope_unchecked(frame) };
                    let route = envelope.body_as_route().expect("a Route entry");
                    let message = route::message_from(route).expect("checked at ingress");
                    self.route_here(sender, &message);
                }
                EntryKind::SessionOpen | EntryKind::SessionClose => {
                    // SAFETY: as above.
                    let envelope = unsafe { envelope_unchecked(frame) };
                    self.apply_session_op(sender, header.kind, envelope);
                }
                EntryKind::Locate => {
                    // SAFETY: as above.
                    let envelope = unsafe { envelope_unchecked(frame) };
                    self.locate_here(sender, envelope);
                }
                EntryKind::FanoutResolve => {
                    let task = self.clone().resolve_fanout(
                        header.origin_shard as usize,
                        header.token,
                        frame.to_vec(),
                    );
                    glommio::spawn_local(task).detach();
                }
                EntryKind::FanoutResolved => self.fanout_answered(header.token, frame.to_vec()),
                EntryKind::SyncBatch => self.apply_sync_batch(sender, header.token, frame),
                EntryKind::SyncEnd => {
                    self.apply_sync_end(sender, header.token, header.origin_shard as usize)
                }
                EntryKind::SyncDone => self.sync_done(header.node, header.token, frame),
                EntryKind::TopicOp => {
                    // SAFETY: forwarded frames were verified at ingress.
                    let envelope = unsafe { envelope_unchecked(frame) };
                    self.apply_topic_op(sender, envelope);
                }
                EntryKind::Publish => self.publish_here(header.node, frame),
                EntryKind::Carbon => {
                    // SAFETY: forwarded frames were verified at ingress.
                    let envelope = unsafe { envelope_unchecked(frame) };
                    let route = envelope.body_as_route().expect("a Route entry");
                    let message = route::message_from(route).expect("checked at ingress");
                    self.carbons_here(&message);
                }
                EntryKind::Broadcast | EntryKind::NodeEvent => {
                    self.fan_out_here(header.kind, header.node, frame)
                }
                EntryKind::PurgeNode => {
                    self.observe_epoch(header.node, header.epoch);
                }
                EntryKind::Deliver => {
                    let report = ReportTo::from_header(&header);
                    self.deliver_here(header.node, header.epoch, report, frame, Class::Bounce);
                }
                EntryKind::Report => {
                    let report = ReportTo {
                        sender,
                        message_id: header.message_id,
                        token: header.token,
                        plan: plan_from_flags(header.fanout, header.flags),
                    };
                    self.apply_report(&report, header.flags & FLAG_QUEUED != 0);
                }
                EntryKind::Frame => self.write_here(header.node, header.epoch, frame),
                EntryKind::FanoutDeliver => {
                    let coordinator = header.origin_shard as usize;
                    let queued = self.write_message_here(
                        header.node,
                        header.epoch,
                        frame,
                        coordinator,
                        header.token,
                    );
                    if let Some(queued) = queued {
                        self.report_fanout_deliver(coordinator, header.token, header.node, queued);
                    }
                }
                EntryKind::FanoutReport => self.fanout_delivered(
                    header.token,
                    header.node,
                    header.flags & FLAG_QUEUED != 0,
                ),
            }
        }
    }

    /// Counters plus the gauges of this moment.
    fn snapshot(&self) -> crate::metrics::ShardMetrics {
        let mut metrics = self.counters.snapshot();
        let table = self.table.borrow();
        metrics.sessions = table.session_count() as u64;
        metrics.users = table.user_count() as u64;
        metrics.connections_open = self.open_connection_count() as u64;
        let depth = |class: Class| self.inbox.batches[class as usize].len() as u64;
        metrics.inbox_forward_batches = depth(Class::Forward);
        metrics.inbox_response_batches = depth(Class::Response);
        metrics.inbox_bounce_batches = depth(Class::Bounce);
        let outboxes = self.outboxes.borrow();
        metrics.outbox_forward_bytes = outboxes.bytes(Class::Forward) as u64;
        metrics.outbox_response_bytes = outboxes.bytes(Class::Response) as u64;
        metrics.outbox_bounce_bytes = outboxes.bytes(Class::Bounce) as u64;
        metrics
    }

    fn on_control(self: &Rc<Self>, message: Control) {
        match message {
            Control::Adopt(handoff) => {
                glommio::spawn_local(node::adopt(self.clone(), handoff)).detach();
            }
            Control::CloseConnection {
                node,
                ticket,
                code,
                reason,
            } => {
                if let Some(connection) = self.connection_with_ticket(node, ticket) {
                    self.close_connection(&connection, Some((code, reason)));
                }
            }
            Control::Metrics(reply) => {
                let _ = reply.try_send(self.snapshot());
            }
            Control::Shutdown => {
                self.shutting_down.set(true);
                self.stopped.notify();
            }
        }
    }

    /// Runs the shard until a `Shutdown` control message arrives.
    async fn run(
        self: Rc<Self>,
        listener: glommio::net::TcpListener,
        bell: glommio::net::UnixStream,
    ) {
        glommio::spawn_local(self.clone().run_drain()).detach();
        glommio::spawn_local(self.clone().run_flusher()).detach();
        glommio::spawn_local(self.clone().run_doorbell(bell)).detach();
        let acceptor = glommio::spawn_local(node::accept_loop(self.clone(), listener));
        self.stopped.wait().await;
        drop(acceptor);
        let open: Vec<_> = self.open_connections.borrow().clone();
        for connection in &open {
            self.close_connection(
                connection,
                Some((fb::ErrorCode::ShuttingDown, "router shutting down")),
            );
        }
        let all_closed = async {
            self.connections_changed
                .wait_until(|| self.open_connection_count() == 0)
                .await
        };
        let deadline = glommio::timer::sleep(crate::limits::SHUTDOWN_GRACE);
        futures_lite::future::or(all_closed, deadline).await;
    }
}

/// The owner shard's view of the nodes, for `route`.
struct ShardNodes<'a> {
    shard: &'a Shard,
    /// Nodes whose sessions here turned out stale, purged after routing.
    stale: [NodeId; 4],
    stale_count: usize,
}

impl route::Nodes for ShardNodes<'_> {
    fn destination(&mut self, node: NodeId) -> Destination {
        let state = self.shard.directory.state(node);
        if state.epoch != self.shard.node_epochs.borrow()[node.0 as usize] {
            if self.stale_count < self.stale.len() {
                self.stale[self.stale_count] = node;
                self.stale_count += 1;
            }
            return Destination::Gone;
        }
        match state.delivery_shard(self.shard.index) {
            None => Destination::Gone,
            Some(shard) if state.is_congested_on(shard) => Destination::Busy,
            Some(shard) => Destination::Deliver {
                shard,
                epoch: state.epoch,
            },
        }
    }
}

/// Where a Deliver's outcome goes, and what the sender's verdict needs.
#[derive(Debug, Clone, Copy)]
struct ReportTo {
    sender: Sender,
    message_id: u64,
    token: u64,
    plan: Plan,
}

impl ReportTo {
    fn from_header(header: &EntryHeader) -> Self {
        ReportTo {
            sender: Sender {
                shard: header.origin_shard as usize,
                node: header.origin_node,
                epoch: header.origin_epoch,
            },
            message_id: header.message_id,
            token: header.token,
            plan: plan_from_flags(header.fanout, header.flags),
        }
    }
}

fn plan_flags(plan: Plan) -> u8 {
    (if plan.wants_ack { FLAG_ACK } else { 0 }) | if plan.busy_seen { FLAG_BUSY_SEEN } else { 0 }
}

fn plan_from_flags(fanout: u8, flags: u8) -> Plan {
    Plan {
        fanout,
        wants_ack: flags & FLAG_ACK != 0,
        busy_seen: flags & FLAG_BUSY_SEEN != 0,
    }
}

/// Carries out routing decisions: encodes frames and queues them locally
/// or in a Response batch.
struct ShardEffects<'a> {
    shard: &'a Shard,
    /// The token of the message being routed.
    token: u64,
}

impl route::Effects for ShardEffects<'_> {
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
        let this = self.shard;
        let mut encoder = this.deliver_encoder.borrow_mut();
        let frame = encoder.deliver(&crate::wire::DeliverFrame {
            message_id: message.message_id,
            from_user: message.from_user,
            from_device: message.from_device,
            to_user: message.to_user,
            devices,
            flags: message.flags,
            payload: message.payload,
        });
        if shard == this.index {
            let report = ReportTo {
                sender,
                message_id: message.message_id,
                token: self.token,
                plan,
            };
            this.deliver_here(node, epoch, report, frame, Class::Response);
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
                message_id: message.message_id,
                token: self.token,
            };
            this.outboxes
                .borrow_mut()
                .push(shard, Class::Response, &header, frame);
        }
    }

    fn status(
        &mut self,
        sender: Sender,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
    ) {
        let shard = self.shard;
        let no_session = matches!(reason, fb::Reason::NoSession | fb::Reason::NoSuchDevice);
        let verdict = if verdict == fb::Verdict::Offline
            && no_session
            && std::time::Instant::now() < shard.warm_until
        {
            fb::Verdict::Unknown
        } else {
            verdict
        };
        shard.send_status(sender, message_id, verdict, reason, Class::Response);
    }
}

const _: () = assert!(SHARDS_MAX <= u8::MAX as usize, "origin_shard is a u8");
const _: () = assert!(SLOT_COUNT.is_power_of_two());
