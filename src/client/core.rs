//! The node side of one connection, sans-IO.
//!
//! [`NodeCore`] is the protocol state a node keeps for one connection to a
//! router: the bytes to send, the frames received and not handled yet, the
//! handshake, the stream offset and its acknowledgements, what a resume
//! must present, and the Routes that wait for their verdicts. It never
//! touches a socket or a clock: the caller writes what
//! [`NodeCore::transmit`] returns, hands it what it reads
//! ([`NodeCore::receive`]), and takes the router's frames one at a time
//! ([`NodeCore::poll_incoming`]), typed, read in place.
//!
//! It does on its own what every node must do: it answers Pings, counts
//! the stream bytes of the frames it hands out (the Welcome and a closing
//! Error are not part of the stream), acknowledges them once they are
//! handled (with `acks`), and presents the count in the Hello of a resume.
//! The caller decides what to send and what to do with what arrives; a
//! reconnect is [`NodeCore::connection_lost`] then [`NodeCore::connect`].
//!
//! Used by `imrouter locate` (`client::blocking`), the integration tests,
//! the load generator's simulated nodes and the deterministic simulation.

use std::collections::HashMap;

use crate::cluster::map::{MapError, SlotMap};
use crate::limits::{FRAME_BYTES_MAX_CEILING, PROTOCOL_VERSION};
use crate::time::Time;
use crate::wire::{
    check, fb, frame_need, Check, Encoder, FanoutFrame, Frame, FrameError, HelloFrame,
    PublishFrame, RouteFrame, Verifier, ROUTE_FLAG_ACK,
};

/// Routes waiting for a verdict a node tracks at most; more are sent but
/// not tracked (their verdicts come back unmatched).
pub const PENDING_VERDICTS_MAX: usize = 1 << 20;

/// Who the node is and how it connects.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// Random per process start.
    pub incarnation: u64,
    pub auth_token: Option<String>,
    /// Shard-direct: the shard this connection asks for.
    pub shard: Option<u16>,
    /// Acknowledge the stream (no loss across a broken connection).
    pub acks: bool,
    /// The largest frame accepted from the router.
    pub frame_bytes_max: u32,
    /// Answer Pings (a node must; tests of a dead node turn it off).
    pub answer_pings: bool,
}

impl NodeConfig {
    pub fn new(name: impl Into<String>, incarnation: u64) -> Self {
        NodeConfig {
            name: name.into(),
            incarnation,
            auth_token: None,
            shard: None,
            acks: false,
            frame_bytes_max: FRAME_BYTES_MAX_CEILING,
            answer_pings: true,
        }
    }
}

/// What the router said in its Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub router_id: u64,
    pub shard_count: u16,
    pub slot_count: u16,
    pub shard: u16,
    pub heartbeat_ms: u32,
    pub max_frame_bytes: u32,
    /// The stream continues where it was (nothing lost); else the node's
    /// sessions may be gone: resync them.
    pub resumed: bool,
    pub stream_offset: u64,
    pub reconnect_grace_ms: u32,
    /// The node's stream bytes the router processed (a resume).
    pub received: u64,
    /// The stream's identity (what a resume presents).
    pub stream: u64,
    /// The router's warm-up left (ms) when the Welcome was sent: until
    /// then a user with no session is Unknown, not Offline.
    pub warmup_ms: u32,
    /// The live nodes (name, incarnation), sorted by name.
    pub nodes: Vec<(String, u64)>,
    pub senior: String,
    pub membership_seq: u64,
    /// The router's slot map (none from a member of a cluster that has not
    /// registered yet), and the router's id in it.
    pub map: Option<std::sync::Arc<SlotMap>>,
    pub member: u64,
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection.
    Idle,
    /// The Hello is sent (or queued); no Welcome yet.
    Handshaking,
    /// Welcome received.
    Live,
    /// The router sent an Error, or broke the protocol: reconnect.
    Failed,
}

/// A frame from the router, typed and read in place.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    /// The handshake completed ([`NodeCore::welcome`] has the details).
    Welcome {
        resumed: bool,
    },
    /// A one-to-one message (or a carbon copy), for `to_user`'s `devices`.
    Deliver(fb::Deliver<'a>),
    /// A Fanout's Deliver: several recipients with their devices.
    FanoutDeliver(fb::Deliver<'a>),
    /// The verdict on a Route (`tracked`: this node was waiting for it).
    Status {
        status: fb::Status<'a>,
        tracked: bool,
    },
    /// The verdict on a Fanout, with its offline recipients.
    FanoutStatus(fb::Status<'a>),
    Kick(fb::Kick<'a>),
    NodeEvent(fb::NodeEvent<'a>),
    Located(fb::Located<'a>),
    Broadcast(fb::Broadcast<'a>),
    Publish(fb::Publish<'a>),
    SessionSyncAck(fb::SessionSyncAck<'a>),
    /// The cluster's slot map changed (and the slots this router asks
    /// the node to resync).
    SlotMap(fb::SlotMap<'a>),
    /// A request other than a Route that this router did not serve.
    Moved(fb::Moved<'a>),
    /// A Ping (already answered, unless `answer_pings` is off).
    Ping {
        nonce: u64,
    },
    /// The router processed the node's stream up to `received` (with
    /// acks; handled by the core).
    Ack {
        received: u64,
    },
    Pong {
        nonce: u64,
    },
    /// The router refuses or closes the connection: the last frame.
    Error {
        code: fb::ErrorCode,
        text: &'a str,
    },
    /// The router is about to stop (lame-duck drain): leave it within
    /// `window_ms` (docs/PROTOCOL.md, "Draining").
    Draining {
        window_ms: u32,
        reason: &'a str,
    },
}

/// Something the router sent that no router may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    Frame(FrameError),
    /// A frame before the Welcome that is not a Welcome or an Error.
    WelcomeRequired(fb::Body),
    /// A frame only a node sends.
    Unexpected(fb::Body),
    /// A slot map that does not cover every slot once.
    Map(MapError),
    /// A resumed Welcome that does not continue where this node is.
    ResumedElsewhere {
        stream_offset: u64,
        received: u64,
    },
    /// A resumed Welcome from which this node cannot continue its own
    /// stream: the router processed `router_received` bytes of it, and this
    /// node keeps bytes `kept_from..kept_to` (or the offset is not between
    /// two frames).
    CannotContinue {
        router_received: u64,
        kept_from: u64,
        kept_to: u64,
    },
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Frame(error) => write!(f, "the router sent a bad frame: {error}"),
            NodeError::WelcomeRequired(body) => {
                write!(f, "the router answered the Hello with {:?}", body)
            }
            NodeError::Unexpected(body) => write!(f, "the router sent {:?}", body),
            NodeError::Map(error) => write!(f, "the router sent a bad {error}"),
            NodeError::ResumedElsewhere {
                stream_offset,
                received,
            } => write!(
                f,
                "the router resumed the stream at {stream_offset}, not at the {received} bytes this node processed"
            ),
            NodeError::CannotContinue {
                router_received,
                kept_from,
                kept_to,
            } => write!(
                f,
                "the router resumed after {router_received} bytes of this node's stream; this node keeps bytes {kept_from}..{kept_to} of it"
            ),
        }
    }
}

impl std::error::Error for NodeError {}

/// A Route waiting for its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub sent_at: Time,
    /// A Fanout (its Status lists the offline recipients), not a Route.
    pub fanout: bool,
}

/// One connection's node-side protocol state. See the module docs.
pub struct NodeCore {
    config: NodeConfig,
    state: State,
    verifier: Verifier,
    encoder: Encoder,
    /// What the node sends.
    out: Outgoing,
    /// Bytes read are `input[start..end]`: frames from `start` on are not
    /// handed out yet; `input[end..]` is room for the next read.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// The frame handed out last, counted once the next one is asked for
    /// (or more bytes arrive).
    handed: usize,
    handed_counts: bool,
    /// Stream bytes of the frames handled, from the first Welcome's
    /// `stream_offset` on (what an Ack and a resume's Hello say).
    received: u64,
    welcome: Option<Welcome>,
    last_heard: Time,
    /// Routes with ACK whose verdict has not come, by message id.
    pending: HashMap<u64, Pending, ahash::RandomState>,
    next_message_id: u64,
    next_seq: u64,
}

impl NodeCore {
    pub fn new(config: NodeConfig) -> Self {
        let acks = config.acks;
        NodeCore {
            verifier: Verifier::new(config.frame_bytes_max),
            config,
            state: State::Idle,
            encoder: Encoder::new(),
            out: Outgoing::new(acks),
            input: Vec::new(),
            start: 0,
            end: 0,
            handed: 0,
            handed_counts: false,
            received: 0,
            welcome: None,
            last_heard: Time::ZERO,
            pending: HashMap::default(),
            next_message_id: 1,
            next_seq: 1,
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The last Welcome.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// Stream bytes of the frames handed out so far (what an Ack or the
    /// next resume presents).
    pub fn received(&self) -> u64 {
        self.received
            + if self.handed_counts {
                self.handed as u64
            } else {
                0
            }
    }

    /// Starts a connection: queues the Hello (a resume when this node
    /// process had a stream: the router continues it if it still can).
    /// Frames queued from now on are sent once the Welcome says where the
    /// stream goes on.
    pub fn connect(&mut self, now: Time) {
        self.count_handed();
        self.start = 0;
        self.end = 0;
        self.handed = 0;
        self.handed_counts = false;
        self.state = State::Handshaking;
        self.last_heard = now;
        self.out.connecting();
        let hello = self.encoder.hello(&HelloFrame {
            protocol_version: PROTOCOL_VERSION,
            node_name: &self.config.name,
            incarnation: self.config.incarnation,
            auth_token: self.config.auth_token.as_deref(),
            shard: self.config.shard,
            acks: self.config.acks,
            received: self.received,
            stream: self.welcome.as_ref().map_or(0, |welcome| welcome.stream),
        });
        self.out.control.extend_from_slice(hello);
    }

    /// The socket ended. Frames not acknowledged (with acks) wait for the
    /// next connection; Routes waiting for verdicts stay waiting (a resume
    /// brings them).
    pub fn connection_lost(&mut self) {
        self.count_handed();
        self.state = State::Idle;
        self.out.control.clear();
    }

    /// Bytes to write (empty: nothing now). A frame is never split by
    /// another.
    pub fn transmit(&self) -> &[u8] {
        self.out.transmit(self.state == State::Live)
    }

    /// `n` bytes of what [`NodeCore::transmit`] returned were written.
    pub fn transmitted(&mut self, n: usize) {
        self.out.transmitted(n);
    }

    /// Takes everything there is to write at once.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let bytes = self.transmit();
            if bytes.is_empty() {
                return out;
            }
            let n = bytes.len();
            out.extend_from_slice(bytes);
            self.transmitted(n);
        }
    }

    /// `n` bytes of stream frames (not Pings, Pongs or Acks) that the
    /// application encoded and wrote to the socket itself, after everything
    /// this core queued: for a sender that encodes its own frames (the load
    /// generator). They count in the stream's offsets but are not kept, so a
    /// resume that would need them again fails with
    /// [`NodeError::CannotContinue`] instead of skipping them. Call it
    /// between connections (before [`NodeCore::connect`]); anything of this
    /// core's stream still unacknowledged is given up the same way, since
    /// it cannot be sent again ahead of bytes written after it.
    pub fn wrote_stream(&mut self, n: u64) {
        self.out.wrote_elsewhere(n);
    }

    /// Bytes read from the socket.
    pub fn receive(&mut self, bytes: &[u8], now: Time) {
        let room = self.read_buffer(bytes.len());
        room[..bytes.len()].copy_from_slice(bytes);
        self.filled(bytes.len(), now);
    }

    /// Room for the next read, at least `min` bytes: read into it, then
    /// say how much with [`NodeCore::filled`] (no copy in between).
    pub fn read_buffer(&mut self, min: usize) -> &mut [u8] {
        self.count_handed();
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.input.len() - self.end < min && self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.input.len() - self.end < min {
            self.input.resize(self.end + min, 0);
        }
        &mut self.input[self.end..]
    }

    /// `n` bytes were read into [`NodeCore::read_buffer`].
    pub fn filled(&mut self, n: usize, now: Time) {
        self.end += n;
        debug_assert!(self.end <= self.input.len());
        if n > 0 {
            self.last_heard = now;
        }
    }

    /// When the router was last heard from.
    pub fn last_heard(&self) -> Time {
        self.last_heard
    }

    /// Whether the router has been silent for three heartbeats (it is
    /// dead, or the connection is: reconnect).
    pub fn router_silent(&self, now: Time) -> bool {
        let Some(welcome) = &self.welcome else {
            return false;
        };
        self.state == State::Live
            && now.since(self.last_heard).as_millis() >= 3 * u128::from(welcome.heartbeat_ms)
    }

    /// Counts the frame handed out last as handled.
    fn count_handed(&mut self) {
        if self.handed > 0 {
            if self.handed_counts {
                self.received += self.handed as u64;
            }
            self.start += self.handed;
            self.handed = 0;
        }
    }

    /// The next frame from the router, or `None` when no whole frame is
    /// buffered (then, with acks, an Ack of what was handled is queued).
    /// A Ping is answered (after an Ack of what was handled before it)
    /// when it is handed out, unless `NodeConfig::answer_pings` is off.
    pub fn poll_incoming(&mut self) -> Option<Result<Incoming<'_>, NodeError>> {
        self.count_handed();
        let start = self.start;
        let len = match check(&self.input[start..self.end], self.config.frame_bytes_max) {
            Check::Complete(len) => len,
            Check::Incomplete => {
                self.queue_ack();
                return None;
            }
            Check::TooLarge(declared) => {
                self.state = State::Failed;
                let max = self.config.frame_bytes_max;
                return Some(Err(NodeError::Frame(FrameError::TooLarge {
                    declared,
                    max,
                })));
            }
        };
        // From here on `self.input` is borrowed by what is returned: only
        // other fields change.
        let frame = match self.verifier.verify(&self.input[start..start + len]) {
            Ok(frame) => frame,
            Err(error) => {
                self.state = State::Failed;
                return Some(Err(NodeError::Frame(error)));
            }
        };
        let body = frame.body_type();
        if self.state == State::Handshaking && !matches!(body, fb::Body::Welcome | fb::Body::Error)
        {
            self.state = State::Failed;
            return Some(Err(NodeError::WelcomeRequired(body)));
        }
        self.handed = len;
        // The Welcome and an Error frame are not part of the stream.
        self.handed_counts = !matches!(body, fb::Body::Welcome | fb::Body::Error);
        match body {
            fb::Body::Ping => {
                let nonce = frame.envelope().body_as_ping().expect("body type").nonce();
                if self.config.answer_pings {
                    // Counted now: the Ack sent with the Pong covers it.
                    self.received += len as u64;
                    self.start += len;
                    self.handed = 0;
                    let live = self.state == State::Live;
                    self.out.queue_ack(&mut self.encoder, self.received, live);
                    self.out.control.extend_from_slice(self.encoder.pong(nonce));
                }
                Some(Ok(Incoming::Ping { nonce }))
            }
            fb::Body::Welcome => {
                let welcome = match welcome_of(frame) {
                    Ok(welcome) => welcome,
                    Err(error) => {
                        self.state = State::Failed;
                        return Some(Err(NodeError::Map(error)));
                    }
                };
                let resumed = welcome.resumed;
                if welcome.resumed && self.config.acks && welcome.stream_offset != self.received {
                    self.state = State::Failed;
                    return Some(Err(NodeError::ResumedElsewhere {
                        stream_offset: welcome.stream_offset,
                        received: self.received,
                    }));
                }
                if let Err(error) = self.out.continue_stream(resumed, welcome.received) {
                    self.state = State::Failed;
                    return Some(Err(error));
                }
                self.received = welcome.stream_offset;
                self.out.acked = welcome.stream_offset;
                self.state = State::Live;
                self.welcome = Some(welcome);
                Some(Ok(Incoming::Welcome { resumed }))
            }
            fb::Body::Ack => {
                let received = frame
                    .envelope()
                    .body_as_ack()
                    .expect("body type")
                    .received();
                self.out.router_acked(received);
                Some(Ok(Incoming::Ack { received }))
            }
            _ => Some(incoming(frame, &mut self.pending, &mut self.state)),
        }
    }

    /// With acks: queues an Ack of every frame handed out so far (those
    /// not handed out are not acknowledged: a node that stops here gets
    /// them again on a resume).
    pub fn flush_ack(&mut self) {
        self.count_handed();
        self.queue_ack();
    }

    /// With acks: queues an Ack of what was handled, if anything new was.
    fn queue_ack(&mut self) {
        let live = self.state == State::Live;
        self.out.queue_ack(&mut self.encoder, self.received, live);
    }

    // ----- Requests -----------------------------------------------------------

    fn queue(&mut self, frame: &[u8]) {
        self.out.stream.extend_from_slice(frame);
    }

    /// A message id no other message of this node has.
    pub fn next_message_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    /// Sends a Route (its `message_id` is the caller's); with ACK, its
    /// verdict is tracked.
    pub fn route(&mut self, route: &RouteFrame<'_>, now: Time) {
        if route.flags & ROUTE_FLAG_ACK != 0 {
            self.track(route.message_id, false, now);
        }
        Encoder::write_route(&mut self.out.stream, route);
    }

    /// Waits for the verdict of message `id` (unless too many are waited
    /// for: then it comes back untracked).
    fn track(&mut self, id: u64, fanout: bool, now: Time) {
        if self.pending.len() < PENDING_VERDICTS_MAX {
            let pending = Pending {
                sent_at: now,
                fanout,
            };
            self.pending.insert(id, pending);
        }
    }

    /// Sends a Route already encoded (`frame`, with ACK) as message `id`,
    /// tracking its verdict: for a sender that keeps its Routes to send
    /// them again elsewhere (`client::cluster`).
    pub fn route_encoded(&mut self, id: u64, frame: &[u8], now: Time) {
        self.track(id, false, now);
        self.queue(frame);
    }

    /// The frame [`NodeCore::poll_incoming`] handed out last, typed again
    /// (for a caller that looked at it before deciding to hand it on). A
    /// Status is typed as untracked: its pending entry went the first
    /// time.
    pub fn repeat_incoming(&mut self) -> Option<Result<Incoming<'_>, NodeError>> {
        if self.handed == 0 {
            return None;
        }
        let frame = match self
            .verifier
            .verify(&self.input[self.start..self.start + self.handed])
        {
            Ok(frame) => frame,
            Err(error) => return Some(Err(NodeError::Frame(error))),
        };
        let mut state = self.state;
        let mut none = HashMap::default();
        Some(incoming(frame, &mut none, &mut state))
    }

    /// Routes with ACK and Fanouts whose verdict has not come.
    pub fn pending_verdicts(&self) -> usize {
        self.pending.len()
    }

    /// Forgets the Routes and Fanouts waiting for verdicts (after a
    /// reconnect that did not resume: their verdicts are lost with the old
    /// stream) and returns their ids.
    pub fn take_pending(&mut self) -> Vec<u64> {
        self.pending.drain().map(|(id, _)| id).collect()
    }

    /// Opens a session; returns its `seq`.
    pub fn open(&mut self, user: &str, device: &str, platform: fb::Platform) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.open_with_seq(user, device, platform, seq);
        seq
    }

    /// Opens a session with the caller's `seq` (a caller that keeps its
    /// sessions itself).
    pub fn open_with_seq(&mut self, user: &str, device: &str, platform: fb::Platform, seq: u64) {
        self.out
            .stream
            .extend_from_slice(self.encoder.session_open_seq(user, device, platform, seq));
    }

    /// One SessionSync batch of a resync scoped to `scope` (slot ranges;
    /// empty: every slot) answering map `epoch`.
    pub fn sync_batch(
        &mut self,
        generation: u64,
        sessions: &[(&str, &str, fb::Platform, u64)],
        last: bool,
        scope: &[(u16, u16)],
        epoch: u64,
    ) {
        self.out.stream.extend_from_slice(
            self.encoder
                .session_sync_scoped(generation, sessions, last, scope, epoch),
        );
    }

    /// Closes the session opened with `seq` (0: whichever).
    pub fn close(&mut self, user: &str, device: &str, seq: u64) {
        self.out
            .stream
            .extend_from_slice(self.encoder.session_close_seq(user, device, seq));
    }

    /// Sends a snapshot of the node's sessions (user, device, platform,
    /// seq) as SessionSync batches of `batch` sessions.
    pub fn sync(
        &mut self,
        generation: u64,
        sessions: &[(&str, &str, fb::Platform, u64)],
        batch: usize,
    ) {
        let batch = batch.max(1);
        let chunks: Vec<_> = sessions.chunks(batch).collect();
        if chunks.is_empty() {
            return self.sync_batch(generation, &[], true, &[], 0);
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.sync_batch(generation, chunk, last, &[], 0);
        }
    }

    pub fn locate(&mut self, query_id: u64, user: &str) {
        self.out
            .stream
            .extend_from_slice(self.encoder.locate(query_id, user));
    }

    pub fn subscribe(&mut self, topic: &str, request_id: u64) {
        self.out
            .stream
            .extend_from_slice(self.encoder.subscribe(topic, request_id));
    }

    pub fn unsubscribe(&mut self, topic: &str) {
        self.out
            .stream
            .extend_from_slice(self.encoder.unsubscribe(topic));
    }

    pub fn publish(&mut self, publish: &PublishFrame<'_>) {
        self.out
            .stream
            .extend_from_slice(self.encoder.publish(publish));
    }

    /// Sends a Fanout; its Status (which always comes) is tracked, so that
    /// a refusal, which lists no offline users, is told from a Route's.
    pub fn fanout(&mut self, fanout: &FanoutFrame<'_>, now: Time) {
        self.track(fanout.message_id, true, now);
        self.out
            .stream
            .extend_from_slice(self.encoder.fanout(fanout));
    }

    pub fn broadcast(&mut self, payload: &[u8]) {
        self.out
            .stream
            .extend_from_slice(self.encoder.broadcast("", payload));
    }

    pub fn ping(&mut self, nonce: u64) {
        let frame = self.encoder.ping(nonce);
        self.out.control.extend_from_slice(frame);
    }

    /// Says Goodbye: a clean close (the caller then reads until the router
    /// closes).
    pub fn goodbye(&mut self, reason: &str) {
        self.queue_ack();
        self.out
            .stream
            .extend_from_slice(self.encoder.goodbye(reason));
    }
}

fn welcome_of(frame: Frame<'_>) -> Result<Welcome, MapError> {
    let welcome = frame.envelope().body_as_welcome().expect("body type");
    let map = match welcome.map() {
        Some(map) => Some(std::sync::Arc::new(SlotMap::from_wire(map)?.0)),
        None => None,
    };
    Ok(Welcome {
        router_id: welcome.router_id(),
        shard_count: welcome.shard_count(),
        slot_count: welcome.slot_count(),
        shard: welcome.shard(),
        heartbeat_ms: welcome.heartbeat_ms(),
        max_frame_bytes: welcome.max_frame_bytes(),
        resumed: welcome.resumed(),
        stream_offset: welcome.stream_offset(),
        reconnect_grace_ms: welcome.reconnect_grace_ms(),
        received: welcome.received(),
        stream: welcome.stream(),
        warmup_ms: welcome.warmup_ms(),
        nodes: welcome
            .nodes()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| (n.name().unwrap_or("").to_string(), n.incarnation()))
                    .collect()
            })
            .unwrap_or_default(),
        senior: welcome.senior().unwrap_or("").to_string(),
        membership_seq: welcome.membership_seq(),
        map,
        member: welcome.member(),
    })
}

/// What a node sends: control frames, and its stream (see
/// `Welcome.received`).
struct Outgoing {
    acks: bool,
    /// With acks: the router's stream bytes this node acknowledged last.
    acked: u64,
    /// Frames that are not part of the node's stream (the Hello, Pings,
    /// Pongs, Acks): written before the next stream frame, never again.
    control: Vec<u8>,
    /// The node's stream: its other frames, from offset `base` on.
    /// `stream[..sent]` went to the socket (and, with acks, waits for the
    /// router's Ack); the frame being written ends at `frame_end`;
    /// `stream[..connect_mark]` was queued before the current connection
    /// began (its Welcome decides what of it is sent again).
    stream: Vec<u8>,
    base: u64,
    sent: usize,
    /// Where the frame being written (or the last one written) starts.
    frame_start: usize,
    frame_end: usize,
    connect_mark: usize,
}

impl Outgoing {
    fn new(acks: bool) -> Self {
        Outgoing {
            acks,
            acked: 0,
            control: Vec::new(),
            stream: Vec::new(),
            base: 0,
            sent: 0,
            frame_start: 0,
            frame_end: 0,
            connect_mark: 0,
        }
    }

    /// With acks, on a live connection: queues an Ack of `received`, the
    /// router's stream bytes handled, if it says anything new.
    fn queue_ack(&mut self, encoder: &mut Encoder, received: u64, live: bool) {
        if self.acks && live && received > self.acked {
            self.acked = received;
            self.control.extend_from_slice(encoder.ack(received));
        }
    }

    /// A connection begins: nothing of the stream goes out before its
    /// Welcome.
    fn connecting(&mut self) {
        self.control.clear();
        self.sent = 0;
        self.frame_start = 0;
        self.frame_end = 0;
        self.connect_mark = self.stream.len();
    }

    fn transmit(&self, live: bool) -> &[u8] {
        if self.sent < self.frame_end {
            return &self.stream[self.sent..self.frame_end];
        }
        if !self.control.is_empty() {
            return &self.control;
        }
        if live {
            return &self.stream[self.sent..];
        }
        &[]
    }

    fn transmitted(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.sent >= self.frame_end && !self.control.is_empty() {
            self.control.drain(..n);
            return;
        }
        self.sent += n;
        debug_assert!(self.sent <= self.stream.len());
        // Where the frame being written ends, so that control frames wait.
        while self.frame_end < self.sent {
            self.frame_start = self.frame_end;
            // (The stream holds whole frames.)
            self.frame_end += frame_need(&self.stream[self.frame_end..]);
        }
        if !self.acks {
            // Nothing is sent again without acks: forget the whole frames
            // that went out.
            let done = if self.frame_end == self.sent {
                self.sent
            } else {
                self.frame_start
            };
            self.forget(done);
        }
    }

    /// Drops the first `n` bytes of the stream (whole frames, sent).
    fn forget(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        debug_assert!(n <= self.sent);
        self.stream.drain(..n);
        self.base += n as u64;
        self.sent -= n;
        self.frame_start = self.frame_start.saturating_sub(n);
        self.frame_end -= n;
        self.connect_mark = self.connect_mark.saturating_sub(n);
    }

    /// See [`NodeCore::wrote_stream`].
    fn wrote_elsewhere(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.base += self.stream.len() as u64 + n;
        self.stream.clear();
        self.sent = 0;
        self.frame_start = 0;
        self.frame_end = 0;
        self.connect_mark = 0;
    }

    /// The router processed the node's stream up to `received`: forget it.
    fn router_acked(&mut self, received: u64) {
        if !self.acks || received <= self.base {
            return;
        }
        let sent_to = self.base + self.sent as u64;
        let upto = received.min(sent_to);
        let n = (upto - self.base) as usize;
        // The router acknowledges whole frames it processed, so `n` is a
        // frame boundary among what was sent.
        self.forget(n);
    }

    /// Where the node's stream goes on after a Welcome: from what the
    /// router processed (`received`) on a resume with acks, else a new
    /// stream (what was queued for the old connection is not sent).
    fn continue_stream(&mut self, resumed: bool, received: u64) -> Result<(), NodeError> {
        let skip = if resumed && self.acks {
            let old_end = self.base + self.connect_mark as u64;
            if received < self.base || received > old_end || !self.is_boundary(received) {
                return Err(NodeError::CannotContinue {
                    router_received: received,
                    kept_from: self.base,
                    kept_to: old_end,
                });
            }
            (received - self.base) as usize
        } else {
            self.connect_mark
        };
        self.stream.drain(..skip);
        self.connect_mark -= skip;
        self.base = if resumed && self.acks { received } else { 0 };
        self.sent = 0;
        self.frame_start = 0;
        self.frame_end = 0;
        Ok(())
    }

    /// Whether stream offset `offset` starts a frame (or ends the stream).
    fn is_boundary(&self, offset: u64) -> bool {
        let target = (offset - self.base) as usize;
        let mut at = 0;
        while at < target {
            at += frame_need(&self.stream[at..]);
        }
        at == target
    }
}

/// Types a verified router frame; matches a Route's Status to its pending
/// entry.
fn incoming<'a>(
    frame: Frame<'a>,
    pending: &mut HashMap<u64, Pending, ahash::RandomState>,
    state: &mut State,
) -> Result<Incoming<'a>, NodeError> {
    let envelope = frame.envelope();
    let body = envelope.body_type();
    Ok(match body {
        fb::Body::Welcome => Incoming::Welcome {
            resumed: envelope.body_as_welcome().expect("body type").resumed(),
        },
        fb::Body::Deliver => {
            let deliver = envelope.body_as_deliver().expect("body type");
            if deliver.recipients().is_some() {
                Incoming::FanoutDeliver(deliver)
            } else {
                Incoming::Deliver(deliver)
            }
        }
        fb::Body::Status => {
            let status = envelope.body_as_status().expect("body type");
            match pending.remove(&status.message_id()) {
                Some(Pending { fanout: true, .. }) => Incoming::FanoutStatus(status),
                Some(_) => Incoming::Status {
                    status,
                    tracked: true,
                },
                // Not tracked (more were waiting than the node tracks).
                None if status.offline_users().is_some() => Incoming::FanoutStatus(status),
                None => Incoming::Status {
                    status,
                    tracked: false,
                },
            }
        }
        fb::Body::Kick => Incoming::Kick(envelope.body_as_kick().expect("body type")),
        fb::Body::SlotMap => Incoming::SlotMap(envelope.body_as_slot_map().expect("body type")),
        fb::Body::Moved => Incoming::Moved(envelope.body_as_moved().expect("body type")),
        fb::Body::NodeEvent => {
            Incoming::NodeEvent(envelope.body_as_node_event().expect("body type"))
        }
        fb::Body::Located => Incoming::Located(envelope.body_as_located().expect("body type")),
        fb::Body::Broadcast => {
            Incoming::Broadcast(envelope.body_as_broadcast().expect("body type"))
        }
        fb::Body::Publish => Incoming::Publish(envelope.body_as_publish().expect("body type")),
        fb::Body::SessionSyncAck => {
            Incoming::SessionSyncAck(envelope.body_as_session_sync_ack().expect("body type"))
        }
        fb::Body::Pong => Incoming::Pong {
            nonce: envelope.body_as_pong().expect("body type").nonce(),
        },
        fb::Body::Draining => {
            let draining = envelope.body_as_draining().expect("body type");
            Incoming::Draining {
                window_ms: draining.window_ms(),
                reason: draining.reason().unwrap_or(""),
            }
        }
        fb::Body::Error => {
            *state = State::Failed;
            let error = envelope.body_as_error().expect("body type");
            Incoming::Error {
                code: error.code(),
                text: error.text().unwrap_or(""),
            }
        }
        other => {
            *state = State::Failed;
            return Err(NodeError::Unexpected(other));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WelcomeFrame;

    fn welcome(resumed: bool, stream_offset: u64) -> Vec<u8> {
        welcome_after(resumed, stream_offset, 0)
    }

    /// A node past its handshake: a new stream, with or without acks.
    fn live_node(acks: bool) -> NodeCore {
        let mut config = NodeConfig::new("n", 1);
        config.acks = acks;
        let mut node = NodeCore::new(config);
        node.connect(Time::ZERO);
        node.receive(&welcome(false, 0), Time::ZERO);
        assert!(matches!(
            node.poll_incoming(),
            Some(Ok(Incoming::Welcome { resumed: false }))
        ));
        node
    }

    /// A Welcome that says the router processed `received` bytes of the
    /// node's stream.
    fn welcome_after(resumed: bool, stream_offset: u64, received: u64) -> Vec<u8> {
        Encoder::new()
            .welcome(&WelcomeFrame {
                protocol_version: 1,
                router_id: 9,
                shard_count: 2,
                slot_count: 16384,
                shard: 1,
                heartbeat_ms: 1000,
                max_frame_bytes: 65536,
                nodes: &[("n", 1)],
                senior: Some("n"),
                membership_seq: 3,
                resumed,
                stream_offset,
                reconnect_grace_ms: 5000,
                received,
                stream: 7,
                warmup_ms: 0,
                map: None,
                member: 0,
            })
            .to_vec()
    }

    fn drain(node: &mut NodeCore) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(incoming) = node.poll_incoming() {
            seen.push(format!(
                "{:?}",
                incoming.map(|i| std::mem::discriminant(&i))
            ));
        }
        seen
    }

    #[test]
    fn handshake_pings_and_acks() {
        let mut config = NodeConfig::new("n", 1);
        config.acks = true;
        let mut node = NodeCore::new(config);
        node.connect(Time::ZERO);
        assert_eq!(node.state(), State::Handshaking);
        let hello = node.take_transmit();
        assert!(!hello.is_empty());
        let mut bytes = welcome(false, 0);
        let ping = Encoder::new().ping(7).to_vec();
        let status = Encoder::new()
            .status(1, fb::Verdict::Routed, fb::Reason::None)
            .to_vec();
        bytes.extend_from_slice(&ping);
        bytes.extend_from_slice(&status);
        // Split at an awkward place.
        node.receive(&bytes[..5], Time::ZERO);
        assert!(node.poll_incoming().is_none());
        node.receive(&bytes[5..], Time::ZERO);
        node.route(
            &RouteFrame {
                message_id: 1,
                from_user: "a",
                from_device: "d",
                to_user: "b",
                to_device: None,
                flags: ROUTE_FLAG_ACK,
                payload: b"",
            },
            Time::ZERO,
        );
        node.take_transmit();
        match node.poll_incoming() {
            Some(Ok(Incoming::Welcome { resumed: false })) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            node.poll_incoming(),
            Some(Ok(Incoming::Ping { nonce: 7 }))
        ));
        match node.poll_incoming() {
            Some(Ok(Incoming::Status { tracked: true, .. })) => {}
            other => panic!("{other:?}"),
        }
        assert!(node.poll_incoming().is_none());
        assert_eq!(node.received(), (ping.len() + status.len()) as u64);
        // The Ack of the Ping before its Pong, the Ack of all, then the
        // Route: queued while connecting, sent once the Welcome came.
        let out = node.take_transmit();
        let mut kinds = Vec::new();
        let verifier = Verifier::new(1 << 20);
        let mut rest = &out[..];
        while let Check::Complete(len) = check(rest, 1 << 20) {
            let frame = verifier.verify(&rest[..len]).unwrap();
            kinds.push(frame.body_type());
            if let Some(ack) = frame.envelope().body_as_ack() {
                kinds.push(fb::Body(ack.received() as u8));
            }
            rest = &rest[len..];
        }
        assert_eq!(
            kinds,
            [
                fb::Body::Ack,
                fb::Body(ping.len() as u8),
                fb::Body::Pong,
                fb::Body::Ack,
                fb::Body((ping.len() + status.len()) as u8),
                fb::Body::Route,
            ]
        );
        assert_eq!(node.pending_verdicts(), 0);
        drain(&mut node);
    }

    /// A refused Fanout's Status lists no offline users: it is still told
    /// from a Route's by its id (before: it came out as an untracked Route
    /// Status).
    #[test]
    fn a_refused_fanout_is_a_fanout_status() {
        let mut node = live_node(false);
        let fanout = FanoutFrame {
            message_id: 9,
            from_user: "a",
            from_device: "d",
            to_users: &["b", "c"],
            flags: 0,
            payload: b"x",
        };
        node.fanout(&fanout, Time::ZERO);
        assert_eq!(node.pending_verdicts(), 1);
        let refused = Encoder::new()
            .status(9, fb::Verdict::Busy, fb::Reason::RouterBusy)
            .to_vec();
        node.receive(&refused, Time::ZERO);
        match node.poll_incoming() {
            Some(Ok(Incoming::FanoutStatus(status))) => {
                assert_eq!(status.verdict(), fb::Verdict::Busy);
            }
            _ => panic!("expected the Fanout's Status"),
        }
        assert_eq!(node.pending_verdicts(), 0);
    }

    #[test]
    fn a_resume_that_does_not_continue_the_stream_is_an_error() {
        let mut node = live_node(true);
        node.receive(Encoder::new().pong(1), Time::ZERO);
        assert!(matches!(
            node.poll_incoming(),
            Some(Ok(Incoming::Pong { nonce: 1 }))
        ));
        assert!(node.poll_incoming().is_none());
        let received = node.received();
        node.connection_lost();
        node.connect(Time::ZERO);
        node.receive(&welcome(true, received + 4), Time::ZERO);
        assert!(matches!(
            node.poll_incoming(),
            Some(Err(NodeError::ResumedElsewhere { .. }))
        ));
        assert_eq!(node.state(), State::Failed);
    }

    /// Stream frames the application wrote itself count in the offsets: a
    /// resume after them goes on from there, one that needs them again is
    /// an error (the core does not have them).
    #[test]
    fn stream_written_elsewhere_counts_in_the_offsets() {
        let route = |id| {
            Encoder::new()
                .route(&RouteFrame {
                    message_id: id,
                    from_user: "a",
                    from_device: "d",
                    to_user: "b",
                    to_device: None,
                    flags: 0,
                    payload: b"x",
                })
                .to_vec()
        };
        let (first, second) = (route(1), route(2));
        let written = (first.len() + second.len()) as u64;
        let resume = |router_received| {
            let mut node = live_node(true);
            node.take_transmit(); // the Hello
            node.wrote_stream(written);
            node.connection_lost();
            node.connect(Time::ZERO);
            node.take_transmit(); // the Hello
            node.route(
                &RouteFrame {
                    message_id: 3,
                    from_user: "a",
                    from_device: "d",
                    to_user: "b",
                    to_device: None,
                    flags: 0,
                    payload: b"y",
                },
                Time::ZERO,
            );
            node.receive(&welcome_after(true, 0, router_received), Time::ZERO);
            let welcomed = matches!(node.poll_incoming(), Some(Ok(Incoming::Welcome { .. })));
            (welcomed, node)
        };
        // The router processed both: the Route queued since is sent.
        let (welcomed, mut node) = resume(written);
        assert!(welcomed);
        let sent = node.take_transmit();
        let third = route(3);
        assert_eq!(sent.len(), third.len(), "only the new Route goes out");
        // The router processed only the first: the second cannot be sent
        // again.
        let (welcomed, node) = resume(first.len() as u64);
        assert!(!welcomed);
        assert_eq!(node.state(), State::Failed);
    }
}
