//! The router core of one shard, sans-IO.
//!
//! [`ShardCore`] is everything one shard knows and decides, as plain data
//! changed through `&mut self`: the users and topics it owns, its node
//! connections and their output streams, the multi-shard jobs it
//! coordinates, and the batches it has built for other shards. It never
//! touches a socket, a channel, a clock or an executor. A driver feeds it
//! (the shard driver over glommio, `shard`; the seeded simulation, `sim`):
//!
//! | the driver calls | when |
//! |---|---|
//! | [`ShardCore::hello`], [`ShardCore::place`], [`ShardCore::open`] | a socket's first frame arrived; it is served here or handed to the shard `place` picked |
//! | [`ShardCore::receive`] | bytes were read from a connection's socket |
//! | [`ShardCore::writable`], [`ShardCore::wrote`] | a socket can take bytes; it took some |
//! | [`ShardCore::socket_lost`], [`ShardCore::socket_released`] | a socket ended; the driver is done with it |
//! | [`ShardCore::handle_batch`] | a batch from another shard arrived |
//! | [`ShardCore::handle_timeout`] | the time [`ShardCore::poll_timeout`] asked for came |
//! | [`ShardCore::step`] | there is sliced work ([`ShardCore::has_work`]) and the driver has a moment |
//!
//! and takes what it produces: bytes per connection (`writable`), batches
//! per shard ([`ShardCore::take_batch`]), connections to look at
//! ([`ShardCore::take_wakes`]: output to write, a state that changed, a
//! reader that may read again) and log lines. Every entry point takes
//! the current [`Time`]; nothing in here reads a clock.
//!
//! The path of a Route: `receive` cuts frames, `Request::parse` types
//! each one; a Route for a user owned here goes to `Owner::route`
//! (`owner`), which decides with `route::route` and writes each Deliver
//! through `Out` (`out`) straight into the destination connection's
//! stream (`stream`) or into the batch for the destination's shard
//! (`batch`); a Route for a user owned elsewhere is copied into a Forward
//! batch and takes the same path from `handle_batch` on the owner.

pub mod batch;
pub mod conns;
pub mod directory;
pub mod fanout;
mod lifecycle;
mod liveness;
pub mod out;
pub mod owner;
pub mod report;
pub mod slots;
pub mod stream;
pub mod sync;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::cluster::map::{RouterInfo, SINGLE_ROUTER};
use crate::config::Config;
use crate::limits::{FANOUT_CHUNK, FANOUT_JOBS_MAX, MEMORY_RELEASE_INTERVAL, SHARDS_MAX};
use crate::metrics::{Latencies, ShardMetrics};
use crate::route::Sender;
use crate::table::{NodeId, TableLimits};
use crate::time::Time;
use crate::wire::{
    check, fb, Check, Encoder, FrameError, PeerFault, PublishFrame, Request, RequestLimits,
    Verifier, ROUTE_FLAG_CARBON,
};

use batch::{Batch, Class, CreditKind, EntryHeader, EntryKind, Outboxes, FLAG_QUEUED};
use conns::{ConnId, Conns, LinkState, OutputLimits};
use directory::{Directory, Membership, MembershipEvent};
use fanout::Fanouts;
use out::{plan_from_flags, Close, DoneTo, HeldCopies, ReportTo};
use owner::Owner;
use owner::SyncScope;
use slots::{ClusterView, Slots};
use stream::BufferPool;
use sync::{CommitKey, Committing};

pub use conns::ConnId as Conn;

/// A node that acknowledges is sent an Ack of its own stream once this
/// many new bytes of it were processed (and at every heartbeat): what it
/// must keep for a resend is bounded by this plus a heartbeat's worth.
const PEER_ACK_EVERY_BYTES: u64 = 64 * 1024;

/// A connection keeps a buffer for partial frames up to this size between
/// reads; larger ones are freed once the frame is handled.
const CARRY_BYTES_KEPT: usize = 4096;

/// Log lines kept for the driver to print; more are counted and dropped.
const LOG_LINES_MAX: usize = 4096;

/// Builds an [`Out`] from a `ShardCore`'s fields, leaving its other
/// fields (the owner, the jobs) free to borrow at the same time.
macro_rules! sink {
    ($core:ident) => {
        $crate::core::out::Out {
            index: $core.index,
            conns: &mut $core.conns,
            outboxes: &mut $core.outboxes,
            pool: &mut $core.pool,
            counters: &mut $core.counters,
            directory: &$core.directory,
            encoder: &mut $core.encoder,
            held: &mut $core.held,
            closed: &mut $core.closed,
            fanout_reports: &mut $core.fanout_reports,
            fanout_answers: &mut $core.fanout_answers,
            timed: &mut $core.timed,
            per_node: &mut $core.per_node,
        }
    };
}
pub(crate) use sink;

/// What the driver should do with a connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAction {
    /// Read (when `may_read`) and write.
    Serve,
    /// Write what is left (the stream, then the Error frame), shut the
    /// write side, and read until the node closes (feeding what it reads
    /// to `receive`: a node that said Goodbye may still acknowledge), for
    /// at most `CLOSE_LINGER`; then release the socket.
    Flush,
    /// Write the Error frame if there is one, then release the socket at
    /// once: the connection is suspended (or gone), its stream kept.
    Drop,
}

/// How a socket's reading ended, as the driver saw it.
#[derive(Debug, Clone)]
pub enum Lost {
    /// The node closed the connection (end of file).
    Closed,
    /// A read or write failed.
    Failed(String),
}

/// A shard's log: lines for the driver to print.
#[derive(Default)]
pub struct Log {
    lines: Vec<LogLine>,
    dropped: u64,
}

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Warn,
    Info,
}

/// One line of a shard's log, with its structured fields (the driver
/// writes it with the shard's index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    /// What happened, one word: connect, resume, suspend, disconnect,
    /// close, refuse, give_up, or "shard" for the rest.
    pub event: &'static str,
    /// The node it is about, and its process's incarnation.
    pub node: Option<Box<str>>,
    pub incarnation: Option<u64>,
    pub reason: Option<String>,
    pub text: String,
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(node) = &self.node {
            write!(f, "node {node}: ")?;
        }
        f.write_str(&self.text)?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

impl Log {
    /// An informational line about the shard.
    pub fn line(&mut self, text: String) {
        self.push(LogLevel::Info, "shard", None, None, None, text);
    }

    /// A warning about the shard.
    pub fn warn(&mut self, text: String) {
        self.push(LogLevel::Warn, "shard", None, None, None, text);
    }

    /// A line about one node's connection.
    pub fn node_line(
        &mut self,
        level: LogLevel,
        event: &'static str,
        node: &str,
        incarnation: u64,
        reason: Option<String>,
        text: String,
    ) {
        self.push(
            level,
            event,
            Some(node.into()),
            Some(incarnation),
            reason,
            text,
        );
    }

    fn push(
        &mut self,
        level: LogLevel,
        event: &'static str,
        node: Option<Box<str>>,
        incarnation: Option<u64>,
        reason: Option<String>,
        text: String,
    ) {
        if self.lines.len() < LOG_LINES_MAX {
            self.lines.push(LogLine {
                level,
                event,
                node,
                incarnation,
                reason,
                text,
            });
        } else {
            self.dropped += 1;
        }
    }
}

/// The state of one shard. See the module docs.
pub struct ShardCore {
    index: usize,
    shard_count: usize,
    config: Arc<Config>,
    directory: Arc<Directory>,
    /// Random per router process, sent in Welcome.
    router_id: u64,
    /// Keys stream ids (the secret that resumes a stream); never sent.
    /// `router_id` until the driver sets a secret one
    /// (`set_stream_key`): the simulation stays deterministic.
    stream_key: (u64, u64),
    verifier: Verifier,
    limits: RequestLimits,
    owner: Owner,
    conns: Conns,
    fanouts: Fanouts,
    /// Snapshots read here whose owners have not all answered.
    committing: HashMap<CommitKey, Committing>,
    held: HeldCopies,
    outboxes: Outboxes,
    pool: BufferPool,
    encoder: Encoder,
    counters: ShardMetrics,
    /// Numbers requests router-wide (this shard in the top byte).
    next_token: u64,
    /// The next liveness check.
    next_tick: Time,
    shutting_down: bool,
    /// Draining: new Hellos are refused (and `/readyz` says so).
    draining: bool,
    /// Every open connection was sent a Draining frame.
    drain_told: bool,
    /// Connections closed during the current operation (for the log).
    closed: Vec<(ConnId, Close)>,
    /// Outcomes and answers of Fanouts coordinated here, produced here.
    fanout_reports: Vec<(u64, NodeId, bool)>,
    fanout_answers: Vec<(u64, Vec<u8>)>,
    log: Log,
    /// Open connections at the last release of memory (or the most since).
    conns_at_release: usize,
    /// Memory was given back since the driver last asked.
    memory_released: bool,
    /// When `give_memory_back` runs next.
    next_release: Time,
    /// In a cluster: the IM nodes of the whole cluster, as the control
    /// plane last said (Welcomes list them; NodeEvents come from it, not
    /// from this router's directory). `None`: a router alone.
    cluster_nodes: Option<Membership>,
    /// Routes and session operations handled since the last
    /// `settle_timing`, and when the earliest of their reads was.
    timed: out::Timed,
    timing_started: Time,
    latencies: Latencies,
    per_node: out::PerNode,
}

/// The cluster's node membership changed: the events, in order, and the
/// membership after them.
#[derive(Debug, Clone)]
pub struct MembersUpdate {
    pub events: Vec<MembershipEvent>,
    pub membership: Membership,
}

impl ShardCore {
    pub fn new(
        index: usize,
        config: Arc<Config>,
        directory: Arc<Directory>,
        router_id: u64,
        now: Time,
    ) -> Self {
        let shard_count = config.shard_count();
        assert!(shard_count <= SHARDS_MAX && index < shard_count);
        let nodes_max = config.nodes_max as usize;
        let table_limits = TableLimits {
            sessions_max: config.sessions_per_shard_max(),
            sessions_per_user_max: config.sessions_per_user_max as usize,
            nodes_max,
            login_policy: config.login_policy,
        };
        ShardCore {
            index,
            shard_count,
            verifier: Verifier::new(config.frame_bytes_max),
            limits: RequestLimits {
                fanout_max: config.fanout_max,
            },
            owner: Owner::new(
                index,
                table_limits,
                config.topics_per_shard_max(),
                now + config.warmup,
                match &config.cluster {
                    None => Slots::alone(
                        index,
                        shard_count,
                        RouterInfo {
                            id: SINGLE_ROUTER,
                            name: "imrouter".into(),
                            addr: config.listen.to_string(),
                            shards: shard_count as u16,
                        },
                    ),
                    Some(_) => Slots::member(index, shard_count, config.rebuild_timeout),
                },
            ),
            conns: Conns::new(
                nodes_max,
                OutputLimits::new(config.out_buffer_bytes, config.park_bytes_max),
            ),
            fanouts: Fanouts::default(),
            committing: HashMap::new(),
            held: HeldCopies::default(),
            outboxes: Outboxes::new(shard_count),
            pool: BufferPool::default(),
            encoder: Encoder::new(),
            counters: ShardMetrics::default(),
            next_token: 1,
            next_tick: now + config.heartbeat,
            shutting_down: false,
            draining: false,
            drain_told: false,
            closed: Vec::new(),
            fanout_reports: Vec::new(),
            fanout_answers: Vec::new(),
            log: Log::default(),
            conns_at_release: 0,
            memory_released: false,
            next_release: now + MEMORY_RELEASE_INTERVAL,
            cluster_nodes: config.cluster.as_ref().map(|_| Membership {
                seq: 0,
                nodes: Vec::new(),
                senior: None,
            }),
            timed: out::Timed::default(),
            timing_started: now,
            latencies: Latencies::default(),
            per_node: out::PerNode::default(),
            directory,
            router_id,
            stream_key: (router_id, !router_id),
            config,
        }
    }

    /// Keys this shard's stream ids with `key` (a random secret of the
    /// router process, the same on every shard).
    pub fn set_stream_key(&mut self, key: (u64, u64)) {
        self.stream_key = key;
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    fn token(&mut self) -> u64 {
        let seq = self.next_token;
        self.next_token = seq.wrapping_add(1);
        (self.index as u64) << 56 | (seq & ((1 << 56) - 1))
    }

    fn sender_of(&self, id: ConnId) -> Option<Sender> {
        let conn = self.conns.get(id)?;
        Some(Sender {
            shard: self.index,
            node: conn.node,
            epoch: conn.epoch,
            stream: conn.stream.tag(),
        })
    }

    // ----- Reading ------------------------------------------------------------

    /// Bytes read from connection `id`'s socket: every whole frame among
    /// them (and a frame started in an earlier read) is handled; a partial
    /// frame at the end is kept for the next read.
    ///
    /// A connection whose budget runs out stops at the next frame: the
    /// rest is kept, unhandled, and its reader pauses
    /// ([`ShardCore::may_read`]). When the budget comes back, the driver
    /// hands the kept frames in by calling this with no bytes
    /// ([`ShardCore::has_input`]) before it reads more.
    pub fn receive(&mut self, id: ConnId, bytes: &[u8], now: Time) {
        self.outboxes.set_now(now);
        self.begin_timing(now);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !bytes.is_empty() {
            self.counters.bytes_in += bytes.len() as u64;
            conn.last_heard = now;
            conn.heard_since_tick = true;
        }
        let max = self.config.frame_bytes_max;
        let mut input = bytes;
        if !conn.carry.is_empty() {
            let mut carry = std::mem::take(&mut conn.carry);
            // First the whole frames kept when the budget ran out.
            let mut at = 0;
            while let Check::Complete(len) = check(&carry[at..], max) {
                if self.input_stops(id) {
                    carry.drain(..at);
                    carry.extend_from_slice(input);
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.carry = carry;
                    }
                    return self.finish_operation(now);
                }
                let body = self.handle_frame(id, &carry[at..at + len], now);
                self.count_peer_frame(id, body, len);
                at += len;
            }
            carry.drain(..at);
            // Then the frame begun in an earlier read, copying only its
            // rest from `input`: first the length prefix, then the body.
            if !carry.is_empty() {
                loop {
                    let need = match check(&carry, max) {
                        Check::Complete(_) => break,
                        Check::TooLarge(declared) => {
                            self.fault(id, FrameError::TooLarge { declared, max }.into(), now);
                            return self.finish_operation(now);
                        }
                        Check::Incomplete => crate::wire::frame_need(&carry),
                    };
                    let take = (need - carry.len()).min(input.len());
                    if take == 0 {
                        // Still partial: keep it for the next read.
                        if let Some(conn) = self.conns.get_mut(id) {
                            conn.carry = carry;
                        }
                        return self.finish_operation(now);
                    }
                    carry.extend_from_slice(&input[..take]);
                    input = &input[take..];
                }
                if self.input_stops(id) {
                    carry.extend_from_slice(input);
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.carry = carry;
                    }
                    return self.finish_operation(now);
                }
                let body = self.handle_frame(id, &carry, now);
                self.count_peer_frame(id, body, carry.len());
                carry.clear();
            }
            // A small buffer is kept for the next partial frame; a large one
            // goes back, so an idle connection holds nothing big.
            if carry.capacity() <= CARRY_BYTES_KEPT {
                if let Some(conn) = self.conns.get_mut(id) {
                    if conn.carry.is_empty() {
                        conn.carry = carry;
                    }
                }
            }
        }
        loop {
            if !self.reads_frames(id) {
                break;
            }
            match check(input, max) {
                Check::Complete(len) => {
                    if self.input_stops(id) {
                        if let Some(conn) = self.conns.get_mut(id) {
                            conn.carry.extend_from_slice(input);
                        }
                        break;
                    }
                    let body = self.handle_frame(id, &input[..len], now);
                    self.count_peer_frame(id, body, len);
                    input = &input[len..];
                }
                Check::Incomplete => {
                    if let Some(conn) = self.conns.get_mut(id) {
                        conn.carry.extend_from_slice(input);
                    }
                    break;
                }
                Check::TooLarge(declared) => {
                    self.fault(id, FrameError::TooLarge { declared, max }.into(), now);
                    break;
                }
            }
        }
        self.ack_peer(id, false);
        self.finish_operation(now);
    }

    /// Whether `id`'s input stops before its next frame: its budget ran
    /// out (see [`ShardCore::receive`]).
    fn input_stops(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .is_some_and(|conn| conn.is_open() && conn.budget.exhausted())
    }

    /// Whether whole frames read from `id` wait, kept when its budget ran
    /// out: once [`ShardCore::may_read`] allows, the driver hands them in
    /// (`receive` with no bytes) before it reads the socket again.
    pub fn has_input(&self, id: ConnId) -> bool {
        self.conns.get(id).is_some_and(|conn| {
            matches!(
                check(&conn.carry, self.config.frame_bytes_max),
                Check::Complete(_)
            )
        })
    }

    /// Counts a frame of the node's stream handled (see
    /// `OutputStream::peer_received`): every frame but Pings, Pongs and
    /// Acks, which are not sent again on a resume.
    fn count_peer_frame(&mut self, id: ConnId, body: fb::Body, len: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        // A frame refused (or one after which the connection closed) does
        // not count: the connection does not resume past it.
        if conn.is_open()
            && !matches!(
                body,
                fb::Body::NONE | fb::Body::Ping | fb::Body::Pong | fb::Body::Ack
            )
        {
            conn.stream.peer_received += len as u64;
        }
    }

    /// With acks: acknowledges the node's stream when enough is new (after
    /// a read), or anything is (`always`, at a heartbeat).
    fn ack_peer(&mut self, id: ConnId, always: bool) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.stream.acks() || !conn.is_open() {
            return;
        }
        let new = conn.stream.peer_received - conn.stream.peer_acked;
        if new == 0 || (!always && new < PEER_ACK_EVERY_BYTES) {
            return;
        }
        let received = conn.stream.peer_received;
        conn.stream.peer_acked = received;
        self.counters.acks_out += 1;
        sink!(self).control_to(id, |encoder, out| {
            out.extend_from_slice(encoder.ack(received))
        });
    }

    /// Whether frames read on `id` are still handled: an open connection,
    /// or one closing after a Goodbye (its Acks count).
    fn reads_frames(&self, id: ConnId) -> bool {
        self.conns.get(id).is_some_and(|conn| {
            conn.is_open() || (conn.state == LinkState::Closing && conn.after_goodbye)
        })
    }

    /// Handles one whole frame read on `id`; returns its body type (`NONE`
    /// when it was refused).
    fn handle_frame(&mut self, id: ConnId, bytes: &[u8], now: Time) -> fb::Body {
        self.counters.frames_in += 1;
        let Some(conn) = self.conns.get(id) else {
            return fb::Body::NONE;
        };
        let closing = conn.state == LinkState::Closing;
        let frame = match self.verifier.verify(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                if !closing {
                    self.fault(id, error.into(), now);
                }
                return fb::Body::NONE;
            }
        };
        let body = frame.body_type();
        let request = match Request::parse(frame, &self.limits) {
            Ok(request) => request,
            Err(fault) => {
                if !closing {
                    self.fault(id, fault, now);
                }
                return fb::Body::NONE;
            }
        };
        if closing {
            // After a Goodbye: only Acks still count.
            if let Request::Ack { received } = request {
                let _ = self.ack(id, received);
            }
            return body;
        }
        self.handle_request(id, frame, request, now);
        body
    }

    /// Acts on one request read on `id`.
    fn handle_request(
        &mut self,
        id: ConnId,
        frame: crate::wire::Frame<'_>,
        request: Request<'_>,
        now: Time,
    ) {
        let sender = self.sender_of(id).expect("present");
        match request {
            Request::Route(message) => {
                self.counters.routes_in += 1;
                let owner = self.owner.owner_of(message.to_user);
                if owner == self.index {
                    let token = self.token();
                    self.owner
                        .route(&mut sink!(self), now, token, sender, &message);
                } else {
                    self.forward(owner, EntryKind::Route, sender, frame.bytes());
                }
                if message.flags & ROUTE_FLAG_CARBON != 0 {
                    let owner = self.owner.owner_of(message.from_user);
                    if owner == self.index {
                        self.owner.carbons(&mut sink!(self), sender, &message, now);
                    } else {
                        self.forward(owner, EntryKind::Carbon, sender, frame.bytes());
                    }
                }
            }
            Request::Rejected { message_id, reason } => {
                if frame.body_type() == fb::Body::Route {
                    self.counters.routes_in += 1;
                    self.counters.routes_rejected += 1;
                } else {
                    self.counters.fanouts_in += 1;
                }
                let verdict = fb::Verdict::Rejected;
                sink!(self).status(sender, message_id, verdict, reason, Class::Response);
            }
            Request::SessionOpen(open) => {
                let owner = self.owner.owner_of(open.user);
                if owner == self.index {
                    self.owner
                        .open_checked(&mut sink!(self), sender, &open, now);
                } else {
                    self.forward(owner, EntryKind::SessionOpen, sender, frame.bytes());
                }
            }
            Request::SessionClose(close) => {
                let owner = self.owner.owner_of(close.user);
                if owner == self.index {
                    self.owner
                        .close_checked(&mut sink!(self), sender, &close, now);
                } else {
                    self.forward(owner, EntryKind::SessionClose, sender, frame.bytes());
                }
            }
            Request::SessionSync(sync) => self.session_sync(id, sender, &sync),
            Request::Locate { query_id, user } => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.budget.locates += 1;
                }
                let owner = self.owner.owner_of(user);
                if owner == self.index {
                    self.owner
                        .locate(&mut sink!(self), sender, query_id, user, now);
                } else {
                    self.forward(owner, EntryKind::Locate, sender, frame.bytes());
                }
            }
            Request::Subscribe { topic, request_id } => {
                let owner = self.owner.owner_of(topic);
                if owner == self.index {
                    self.owner
                        .subscribe(&mut sink!(self), sender, topic, request_id, now);
                } else {
                    self.forward(owner, EntryKind::TopicOp, sender, frame.bytes());
                }
            }
            Request::Unsubscribe { topic } => {
                let owner = self.owner.owner_of(topic);
                if owner == self.index {
                    self.owner.unsubscribe(&mut sink!(self), sender, topic, now);
                } else {
                    self.forward(owner, EntryKind::TopicOp, sender, frame.bytes());
                }
            }
            Request::Publish(publish) => self.publish(id, sender, publish, now),
            Request::Fanout(fanout) => {
                self.counters.fanouts_in += 1;
                if self.fanouts.len() >= FANOUT_JOBS_MAX {
                    let (verdict, reason) = (fb::Verdict::Busy, fb::Reason::RouterBusy);
                    let message_id = fanout.message_id();
                    return sink!(self).status(
                        sender,
                        message_id,
                        verdict,
                        reason,
                        Class::Response,
                    );
                }
                let recipients = fanout.to_users().len();
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.budget.fanout_recipients += recipients as u64;
                    conn.budget.fanouts += 1;
                }
                let token = self.token();
                self.fanouts.start(
                    token,
                    sender,
                    frame.to_owned_frame(),
                    recipients,
                    self.shard_count,
                );
            }
            Request::Broadcast { payload } => self.broadcast(id, sender, payload),
            Request::Ping { nonce } => {
                sink!(self).control_to(id, |encoder, out| {
                    out.extend_from_slice(encoder.pong(nonce))
                });
            }
            Request::Pong => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.last_pong = Some(now);
                }
            }
            Request::Ack { received } => {
                if let Err(fault) = self.ack(id, received) {
                    self.fault(id, fault, now);
                }
            }
            Request::Goodbye { reason } => self.goodbye(id, reason),
            Request::Error { code, text } => {
                let text = format!(
                    "the node sent Error {}: {text}",
                    code.variant_name().unwrap_or("unknown code")
                );
                self.lose(id, Lost::Failed(text), now);
            }
        }
    }

    /// Hands a frame read here to the shard that owns its user or topic.
    fn forward(&mut self, owner: usize, kind: EntryKind, sender: Sender, frame: &[u8]) {
        let header = EntryHeader::for_sender(kind, sender);
        self.outboxes.push(owner, Class::Forward, &header, frame);
    }

    /// An Ack from the node on `id`.
    fn ack(&mut self, id: ConnId, received: u64) -> Result<(), PeerFault> {
        self.counters.acks_in += 1;
        let conn = self.conns.get_mut(id).expect("reading it");
        let node = conn.node;
        let mut delivered = Vec::new();
        conn.stream.ack(&mut self.pool, received, &mut delivered)?;
        let mut out = sink!(self);
        if !delivered.is_empty() {
            out.settle(node, delivered, true);
        }
        if out
            .conns
            .uncongest_if_drained(id, out.directory, self.index)
        {
            out.release_held(id);
        }
        Ok(())
    }

    /// A Publish: re-encoded with its sender's name, then sent by the
    /// topic's owner. Its bytes count against the sender's budget until
    /// every copy is queued.
    fn publish(&mut self, id: ConnId, sender: Sender, publish: fb::Publish<'_>, now: Time) {
        let token = self.token();
        // (Encoded with the name where it is, not a copy of it.)
        let name = &self.conns.get(id).expect("reading it").name;
        let frame = self.encoder.publish(&PublishFrame {
            topic: publish.topic(),
            message_id: publish.message_id(),
            from_user: publish.from_user().unwrap_or(""),
            from_device: publish.from_device().unwrap_or(""),
            from_node: name,
            flags: publish.flags(),
            payload: publish.payload().map_or(&[][..], |p| p.bytes()),
        });
        let units = frame.len() as u64;
        self.conns
            .get_mut(id)
            .expect("reading it")
            .budget
            .fan_out_bytes += units;
        let owner = self.owner.owner_of(publish.topic());
        if owner == self.index {
            // Shared by the copies queued or held here.
            let frame: Rc<[u8]> = frame.into();
            self.owner.publish(
                &mut sink!(self),
                sender,
                publish.topic(),
                publish.message_id(),
                &frame,
                token,
                units,
                now,
            );
        } else {
            let header = EntryHeader {
                message_id: units,
                token,
                ..EntryHeader::for_sender(EntryKind::Publish, sender)
            };
            self.outboxes.push(owner, Class::Forward, &header, frame);
        }
    }

    /// A Broadcast: one copy for every other connected node, queued by the
    /// shard of that node's first connection (so a shard-direct node gets
    /// one copy, not one per connection). Every shard reports when its
    /// copies are queued; the bytes count against the sender's budget
    /// until then.
    fn broadcast(&mut self, id: ConnId, sender: Sender, payload: &[u8]) {
        self.counters.broadcasts_in += 1;
        let name = &self.conns.get(id).expect("reading it").name;
        let frame: Rc<[u8]> = self.encoder.broadcast(name, payload).into();
        let units = frame.len() as u64;
        self.conns
            .get_mut(id)
            .expect("reading it")
            .budget
            .fan_out_bytes += units;
        let token = self.token();
        let done = DoneTo {
            sender,
            token,
            parts: self.shard_count as u8,
            units,
        };
        let header = EntryHeader {
            fanout: done.parts,
            message_id: units,
            token,
            ..EntryHeader::for_sender(EntryKind::Broadcast, sender)
        };
        self.outboxes
            .push_to_others(self.index, Class::Response, &header, &frame);
        self.broadcast_here(&frame, sender.node, done);
    }

    /// Queues a Broadcast copy to every node whose first connection is
    /// here, but `from`.
    fn broadcast_here(&mut self, frame: &Rc<[u8]>, from: NodeId, done: DoneTo) {
        let mut out = sink!(self);
        let mut held = 0;
        for index in 0..out.conns.slot_count() {
            let Some(id) = out.conns.id_at(index) else {
                continue;
            };
            let conn = out.conns.get(id).expect("present");
            if conn.node == from || !conn.is_open() {
                continue;
            }
            let state = out.directory.state(conn.node);
            if state.fan_out_shard() != Some(self.index) || state.epoch != conn.epoch {
                continue; // Another shard writes this node's copy.
            }
            out.counters.broadcast_copies_out += 1;
            if out.copy_to(id, frame, done.token) {
                held += 1;
            }
        }
        if held > 0 {
            out.hold_copies(done.token, held, done);
        } else {
            out.done(done, CreditKind::FanOutBytes);
        }
    }

    /// Queues a NodeEvent to every node whose first connection is here, but
    /// `except` (see `Out::event_to`).
    fn node_event_here(&mut self, frame: &[u8], except: NodeId) {
        let frame: Rc<[u8]> = frame.into();
        let mut out = sink!(self);
        for index in 0..out.conns.slot_count() {
            let Some(id) = out.conns.id_at(index) else {
                continue;
            };
            let conn = out.conns.get(id).expect("present");
            if conn.node == except || !conn.is_open() {
                continue;
            }
            let state = out.directory.state(conn.node);
            if state.fan_out_shard() != Some(self.index) || state.epoch != conn.epoch {
                continue;
            }
            out.counters.node_event_copies_out += 1;
            out.event_to(id, &frame);
        }
    }

    // ----- The cluster ----------------------------------------------------------

    /// The cluster's node membership changed: each event goes to the
    /// nodes whose first connection is on this shard (every shard gets the
    /// update), and later Welcomes list the new membership.
    pub fn apply_members(&mut self, update: &MembersUpdate) {
        let Some(current) = &mut self.cluster_nodes else {
            return;
        };
        if update.membership.seq < current.seq {
            return; // Older than what we have.
        }
        *current = update.membership.clone();
        for event in &update.events {
            let frame = self.membership_event_frame(event);
            self.node_event_here(&frame, NodeId(u32::MAX));
        }
    }

    /// Applies what the control plane says about the slots (a cluster
    /// member only): drops the users and topics of slots lost, starts
    /// rebuilding the slots gained, and pushes a new map to the nodes
    /// connected here, asking them to resync what this router gained.
    pub fn apply_view(&mut self, view: &ClusterView, now: Time) {
        self.outboxes.set_now(now);
        let directory = self.directory.clone();
        let applied = self.owner.slots.apply(view, || directory.attached(), now);
        if let Some(lost) = &applied.lost {
            self.owner.drop_slots(&mut sink!(self), lost);
            self.log.line(format!(
                "{} slots moved to other routers (epoch {})",
                lost.len(),
                self.owner.slots.epoch()
            ));
        }
        if !applied.map_changed {
            return;
        }
        let Some(map) = self.owner.slots.map().cloned() else {
            return;
        };
        let resync = self.owner.slots.gained().spans();
        let frame: Rc<[u8]> = self.encoder.slot_map(&map, &resync).into();
        let mut out = sink!(self);
        for index in 0..out.conns.slot_count() {
            let Some(id) = out.conns.id_at(index) else {
                continue;
            };
            let conn = out.conns.get(id).expect("present");
            out.counters.maps_pushed += 1;
            if conn.is_open() {
                out.event_to(id, &frame);
            } else if conn.is_suspended() {
                // Parked: the node sees it when it resumes.
                out.message_to(id, |buf| buf.extend_from_slice(&frame));
            }
        }
    }

    /// The map epoch and router id this shard applied.
    pub fn slots_epoch(&self) -> u64 {
        self.owner.slots.epoch()
    }

    pub fn slots_me(&self) -> u64 {
        self.owner.slots.me()
    }

    /// The slots this shard serves at `now` (see `Slots::serving`).
    pub fn serving_slots(&self, now: Time) -> crate::cluster::map::SlotSet {
        self.owner.slots.serving(now)
    }

    /// Changes whenever [`ShardCore::serving_slots`] may (see
    /// `Slots::serving_key`).
    pub fn serving_key(&self, now: Time) -> (u64, bool) {
        self.owner.slots.serving_key(now)
    }

    /// [`ShardCore::serving_slots`] into `set` (without allocating).
    pub fn serving_slots_into(&self, now: Time, set: &mut crate::cluster::map::SlotSet) {
        self.owner.slots.serving_into(now, set)
    }

    /// Once per heartbeat: rebuilds that wait for nodes that left, or for
    /// too long, end.
    fn tick_slots(&mut self, now: Time) {
        let given_up = self.owner.slots.tick(&self.directory, now);
        if !given_up.is_empty() {
            let names = self.directory.names(given_up.into_iter());
            self.log.warn(format!(
                "served slots without the resyncs of {} (--rebuild-timeout-ms passed)",
                names.join(", ")
            ));
        }
    }

    /// A SessionSync batch read on `id`: split by owner and forwarded.
    fn session_sync(&mut self, id: ConnId, sender: Sender, sync: &crate::wire::SessionSync<'_>) {
        let entries = sync::split(&self.owner, self.shard_count, sync);
        let total: u64 = entries.iter().map(|(_, count, _)| count).sum();
        if let Some(conn) = self.conns.get_mut(id) {
            conn.budget.sync_sessions += total;
        }
        for (owner, count, body) in entries {
            if owner == self.index {
                sync::apply_batch(
                    &mut sink!(self),
                    &mut self.owner,
                    sender,
                    sync.generation,
                    count,
                    &body,
                );
            } else {
                let header = EntryHeader {
                    token: sync.generation,
                    message_id: count,
                    ..EntryHeader::for_sender(EntryKind::SyncBatch, sender)
                };
                self.outboxes.push(owner, Class::Forward, &header, &body);
            }
        }
        if sync.last {
            let key = (sender.node, sync.generation);
            self.committing.insert(
                key,
                Committing {
                    sender,
                    missing: self.shard_count,
                    added: 0,
                    removed: 0,
                    ignored: 0,
                },
            );
            let scope = SyncScope {
                scope: sync.scope(),
                epoch: sync.epoch,
            };
            let header = EntryHeader {
                token: sync.generation,
                ..EntryHeader::for_sender(EntryKind::SyncEnd, sender)
            };
            let body = sync::encode_scope(&scope);
            self.outboxes
                .push_to_others(self.index, Class::Forward, &header, &body);
            let counts = sync::apply_end(
                &mut sink!(self),
                &mut self.owner,
                sender,
                sync.generation,
                &scope,
            );
            if let Some(counts) = counts {
                self.sync_done(sender.node, sync.generation, counts);
            }
        }
    }

    /// On the reading shard: one owner's counts; the ack once all are in.
    fn sync_done(&mut self, node: NodeId, generation: u64, counts: sync::Counts) {
        let key = (node, generation);
        let Some(committing) = self.committing.get_mut(&key) else {
            return;
        };
        committing.missing -= 1;
        committing.added += counts.0;
        committing.removed += counts.1;
        committing.ignored += counts.2;
        if committing.missing > 0 {
            return;
        }
        let committing = self.committing.remove(&key).expect("present");
        self.counters.syncs_committed += 1;
        let (added, removed, ignored) = (committing.added, committing.removed, committing.ignored);
        sink!(self).send_to(committing.sender, Class::Bounce, |encoder, out| {
            out.extend_from_slice(encoder.session_sync_ack(generation, added, removed, ignored))
        });
    }

    // ----- Batches from other shards -----------------------------------------

    /// Whether a batch of `class` may be taken now: a class only waits on
    /// the class after it (see `batch`).
    pub fn may_take(&self, class: Class) -> bool {
        match class {
            Class::Bounce => true,
            Class::Response => self.outboxes.has_room(Class::Bounce),
            Class::Forward => self.outboxes.has_room(Class::Response),
        }
    }

    /// Handles a batch from another shard (or from this one).
    pub fn handle_batch(&mut self, batch: &[u8], now: Time) {
        self.outboxes.set_now(now);
        self.begin_timing(batch::started(batch));
        self.counters.batches_received += 1;
        for entry in batch::entries(batch) {
            self.handle_entry(entry, now);
        }
        self.finish_operation(now);
    }

    fn handle_entry(&mut self, entry: batch::Entry<'_>, now: Time) {
        let header = entry.header;
        let sender = header.sender();
        // Frames in entries were verified at ingress or built here; parsing
        // them again only reads their fields.
        let request = || Request::parse(entry.frame(), &self.limits).expect("checked at ingress");
        match header.kind {
            EntryKind::Route => {
                let Request::Route(message) = request() else {
                    unreachable!("a Route entry")
                };
                let token = self.token();
                self.owner
                    .route(&mut sink!(self), now, token, sender, &message);
            }
            EntryKind::Carbon => {
                let Request::Route(message) = request() else {
                    unreachable!("a Carbon entry")
                };
                self.owner.carbons(&mut sink!(self), sender, &message, now);
            }
            EntryKind::SessionOpen => {
                let Request::SessionOpen(open) = request() else {
                    unreachable!("a SessionOpen entry")
                };
                self.owner
                    .open_checked(&mut sink!(self), sender, &open, now);
            }
            EntryKind::SessionClose => {
                let Request::SessionClose(close) = request() else {
                    unreachable!("a SessionClose entry")
                };
                self.owner
                    .close_checked(&mut sink!(self), sender, &close, now);
            }
            EntryKind::Locate => {
                let Request::Locate { query_id, user } = request() else {
                    unreachable!("a Locate entry")
                };
                self.owner
                    .locate(&mut sink!(self), sender, query_id, user, now);
            }
            EntryKind::TopicOp => match request() {
                Request::Subscribe { topic, request_id } => {
                    self.owner
                        .subscribe(&mut sink!(self), sender, topic, request_id, now)
                }
                Request::Unsubscribe { topic } => {
                    self.owner.unsubscribe(&mut sink!(self), sender, topic, now)
                }
                _ => unreachable!("a topic entry"),
            },
            EntryKind::Publish => {
                let frame = entry.frame();
                let publish = frame.envelope().body_as_publish().expect("a Publish entry");
                let shared: Rc<[u8]> = frame.bytes().into();
                self.owner.publish(
                    &mut sink!(self),
                    sender,
                    publish.topic(),
                    publish.message_id(),
                    &shared,
                    header.token,
                    header.message_id,
                    now,
                );
            }
            EntryKind::PurgeNode => {
                self.owner
                    .observe_epoch(&mut sink!(self), header.node, header.epoch);
            }
            EntryKind::Deliver => {
                let report = ReportTo {
                    sender: header.origin(),
                    message_id: header.message_id,
                    token: header.token,
                    plan: plan_from_flags(header.fanout, header.flags),
                };
                let body = entry.body;
                sink!(self).deliver_here(header.node, header.epoch, report, Class::Bounce, |buf| {
                    buf.extend_from_slice(body)
                });
            }
            EntryKind::Frame => {
                let body = entry.body;
                sink!(self).control_here(sender, |_, buf| buf.extend_from_slice(body));
            }
            EntryKind::Located => {
                let body = entry.body;
                let mut out = sink!(self);
                out.control_here(sender, |_, buf| buf.extend_from_slice(body));
                owner::give_back_locate(&mut out, sender);
            }
            EntryKind::Report => {
                let report = ReportTo {
                    sender,
                    message_id: header.message_id,
                    token: header.token,
                    plan: plan_from_flags(header.fanout, header.flags),
                };
                sink!(self).apply_report(&report, header.flags & FLAG_QUEUED != 0);
            }
            EntryKind::Broadcast => {
                let frame: Rc<[u8]> = entry.body.into();
                self.broadcast_here(&frame, header.node, done_to(&header));
            }
            EntryKind::NodeEvent => self.node_event_here(entry.body, header.node),
            EntryKind::PublishCopies => {
                let frame: Rc<[u8]> = entry.frame().bytes().into();
                let done = done_to(&header);
                let targets = batch::publish_copies_subscribers(entry.body);
                owner::copies_here(&mut sink!(self), &frame, targets, done);
            }
            EntryKind::FanoutResolve => {
                self.fanouts
                    .resolve(header.origin_shard as usize, header.token, entry.body);
            }
            EntryKind::FanoutResolved => self.fanouts.answered(header.token, entry.body),
            EntryKind::FanoutDeliver => self.fanout_deliver_here(header, entry.body),
            EntryKind::FanoutReport => {
                self.fanout_reports.push((
                    header.token,
                    header.node,
                    header.flags & FLAG_QUEUED != 0,
                ));
            }
            EntryKind::SyncBatch => {
                sync::apply_batch(
                    &mut sink!(self),
                    &mut self.owner,
                    sender,
                    header.token,
                    header.message_id,
                    entry.body,
                );
            }
            EntryKind::SyncEnd => {
                let scope = sync::decode_scope(entry.body);
                let counts = sync::apply_end(
                    &mut sink!(self),
                    &mut self.owner,
                    sender,
                    header.token,
                    &scope,
                );
                if let Some(counts) = counts {
                    self.sync_done(sender.node, header.token, counts);
                }
            }
            EntryKind::SyncDone => {
                let counts = sync::decode_done(entry.body);
                self.sync_done(header.node, header.token, counts);
            }
            EntryKind::CloseConnection => {
                if let Some(id) = self.conns.with_ticket(header.node, header.token) {
                    let code = fb::ErrorCode(header.message_id as u16);
                    let close = Close::error(
                        code,
                        "a new process of this node connected",
                        fb::LeftReason::Replaced,
                    );
                    sink!(self).close(id, close);
                }
            }
            EntryKind::Done => {
                let kind = CreditKind::from_u8(header.flags);
                sink!(self).apply_done(
                    sender,
                    header.token,
                    header.fanout,
                    header.message_id,
                    kind,
                );
            }
        }
    }

    /// Queues a Fanout's Deliver (coordinated by `origin_shard`) to its
    /// node's connection here, like a Deliver, and reports the outcome.
    fn fanout_deliver_here(&mut self, header: EntryHeader, body: &[u8]) {
        let coordinator = header.origin_shard as usize;
        let mut out = sink!(self);
        let id = out.conns.for_node(header.node, header.epoch);
        let queued = id.is_some_and(|id| out.message_to(id, |buf| buf.extend_from_slice(body)));
        if let Some(id) = id.filter(|_| queued) {
            let conn = out.conns.get_mut(id).expect("queued to it");
            if conn.defers_reports() {
                conn.stream.defer(stream::Deferred::Fanout {
                    coordinator,
                    token: header.token,
                });
                return;
            }
        }
        if !queued {
            out.counters.frames_undeliverable += 1;
        }
        out.report_fanout_deliver(coordinator, header.token, header.node, queued);
    }

    // ----- Sliced work --------------------------------------------------------

    /// Whether sliced work waits ([`ShardCore::step`]).
    pub fn has_work(&self) -> bool {
        self.fanouts.has_work() || self.owner.table.has_dead()
    }

    /// Does one slice of the waiting work (Fanout jobs, purging departed
    /// nodes' sessions): about `FANOUT_CHUNK` recipients or sessions.
    /// Returns whether more is waiting.
    pub fn step(&mut self, now: Time) -> bool {
        self.outboxes.set_now(now);
        let mut finished = Vec::new();
        let done = self.fanouts.step(
            &mut sink!(self),
            &self.owner,
            FANOUT_CHUNK,
            &mut finished,
            now,
        );
        for (sender, recipients) in finished {
            self.fanout_finished(sender, recipients);
        }
        if done < FANOUT_CHUNK {
            self.owner.table.purge_step(FANOUT_CHUNK - done);
        }
        self.finish_operation(now);
        self.has_work()
    }

    fn fanout_finished(&mut self, sender: Sender, recipients: usize) {
        self.conns.give_back(sender, |budget| {
            budget.fanout_recipients = budget.fanout_recipients.saturating_sub(recipients as u64);
            budget.fanouts = budget.fanouts.saturating_sub(1);
        });
    }

    /// Work queued here during an operation for this shard itself, and the
    /// log of connections it closed.
    fn finish_operation(&mut self, _now: Time) {
        loop {
            if let Some((token, answer)) = self.fanout_answers.pop() {
                self.fanouts.answered(token, &answer);
                continue;
            }
            let Some((token, node, queued)) = self.fanout_reports.pop() else {
                break;
            };
            if let Some((sender, recipients)) =
                self.fanouts
                    .delivered(&mut sink!(self), token, node, queued)
            {
                self.fanout_finished(sender, recipients);
            }
        }
        for (id, close) in std::mem::take(&mut self.closed) {
            let Some(conn) = self.conns.get(id) else {
                continue;
            };
            self.log.node_line(
                LogLevel::Info,
                "close",
                &conn.name,
                conn.incarnation,
                Some(close.text.clone()),
                "closing the connection".into(),
            );
            if conn.state == LinkState::Closing {
                self.leave_directory(id);
            }
        }
    }

    // ----- Cross-core output --------------------------------------------------

    /// Takes the batch built for `target` of `class`, to hand it off.
    pub fn take_batch(&mut self, target: usize, class: Class) -> Option<Batch> {
        self.outboxes.take(target, class)
    }

    /// Puts back a batch whose channel was full.
    pub fn untake_batch(&mut self, target: usize, class: Class, batch: Batch) {
        self.outboxes.untake(target, class, batch);
    }

    /// Keeps a handled batch's buffer for reuse.
    pub fn recycle_batch(&mut self, batch: Batch) {
        self.outboxes.recycle(batch);
    }

    /// Whether batches wait to be handed off.
    pub fn has_batches(&self) -> bool {
        !self.outboxes.is_empty()
    }

    /// Connections the driver should look at since the last call.
    pub fn take_wakes(&mut self, into: &mut Vec<ConnId>) {
        self.conns.take_wakes(into);
    }

    /// Whether [`ShardCore::poll_timeout`] may have moved earlier since the
    /// last call (a connection was suspended or given up).
    pub fn take_deadline_changed(&mut self) -> bool {
        std::mem::take(&mut self.conns.deadlines_changed)
    }

    /// Counts a socket closed to make room in the handshake queue.
    pub fn count_handshake_evicted(&mut self) {
        self.counters.handshakes_evicted += 1;
    }

    /// Counts a socket refused at accept (router-wide or per-source limit).
    pub fn count_socket_refused(&mut self) {
        self.counters.sockets_refused += 1;
    }

    /// Counts a connection handed to another shard after its Hello.
    pub fn count_handoff(&mut self) {
        self.counters.connections_handed_off += 1;
    }

    /// Counts a hand-off attempt of the driver.
    pub fn count_flush(&mut self, sent: u64, deferred: u64) {
        self.counters.batches_sent += sent;
        self.counters.batches_deferred += deferred;
    }

    /// Log lines since the last call.
    pub fn take_log(&mut self) -> Vec<LogLine> {
        let mut lines = std::mem::take(&mut self.log.lines);
        if self.log.dropped > 0 {
            lines.push(LogLine {
                level: LogLevel::Warn,
                event: "shard",
                node: None,
                incarnation: None,
                reason: None,
                text: format!("{} log lines dropped", self.log.dropped),
            });
            self.log.dropped = 0;
        }
        lines
    }

    /// A reload: `config` differs from the one in force only in settings
    /// that may change while the router runs (`Config::reloaded`).
    pub fn reconfigure(&mut self, config: Arc<Config>) {
        self.limits.fanout_max = config.fanout_max;
        self.owner.table.set_session_limits(
            config.sessions_per_shard_max(),
            config.sessions_per_user_max as usize,
        );
        self.config = config;
    }

    // ----- Metrics ------------------------------------------------------------

    /// An operation whose input was read at `read_at` begins: the Routes
    /// and session operations it handles are timed from then (or from an
    /// earlier start not settled yet).
    fn begin_timing(&mut self, read_at: Time) {
        if self.timed.routes == 0 && self.timed.session_ops == 0 {
            self.timing_started = read_at;
        } else {
            self.timing_started = self.timing_started.min(read_at);
        }
    }

    /// Whether Routes or session operations wait for `settle_timing`.
    #[inline]
    pub fn timing_pending(&self) -> bool {
        self.timed.routes != 0 || self.timed.session_ops != 0
    }

    /// The operation that handled them ended at `end`: records the time
    /// since their read for each Route and session operation it handled
    /// as owner. For work that came from another shard, "read" is the read
    /// of the first frame in its batch (an upper bound, by at most one
    /// round of the sending shard). The driver reads the clock only when
    /// `timing_pending`.
    pub fn settle_timing(&mut self, end: Time) {
        let nanos = end
            .as_nanos()
            .saturating_sub(self.timing_started.as_nanos());
        if self.timed.routes != 0 {
            self.latencies.route.observe(nanos, self.timed.routes);
        }
        if self.timed.session_ops != 0 {
            self.latencies
                .session_op
                .observe(nanos, self.timed.session_ops);
        }
        self.timed = out::Timed::default();
    }

    /// This shard's latency histograms.
    pub fn latencies(&self) -> Latencies {
        self.latencies
    }

    /// Counters plus the gauges of this moment (the driver adds its own).
    pub fn snapshot(&self) -> ShardMetrics {
        let mut metrics = self.counters;
        metrics.sessions = self.owner.table.session_count() as u64;
        metrics.sessions_dead = self.owner.table.dead_session_count() as u64;
        metrics.users = self.owner.table.user_count() as u64;
        metrics.topics = self.owner.topics.topic_count() as u64;
        metrics.connections_open = self.conns.len() as u64;
        metrics.outbox_forward_bytes = self.outboxes.bytes(Class::Forward) as u64;
        metrics.outbox_response_bytes = self.outboxes.bytes(Class::Response) as u64;
        metrics.outbox_bounce_bytes = self.outboxes.bytes(Class::Bounce) as u64;
        metrics.held_copy_bytes = self.conns.held_bytes() as u64;
        metrics.fanout_jobs = self.fanouts.len() as u64;
        metrics.pool_chunks = self.pool.len() as u64;
        metrics
    }

    /// Sessions and users in this shard's table (for tests and checks).
    pub fn table(&self) -> &crate::table::Table {
        &self.owner.table
    }

    /// The connections of this shard (for checks).
    pub fn conns(&self) -> &Conns {
        &self.conns
    }
}

/// Where the copies of a Broadcast or Publish entry report when they are
/// all queued: its sender (the entry is about the sender's connection),
/// the request's token, its parts and the budget it holds.
fn done_to(header: &EntryHeader) -> DoneTo {
    DoneTo {
        sender: header.sender(),
        token: header.token,
        parts: header.fanout,
        units: header.message_id,
    }
}
