//! Test harness: a router on 127.0.0.1:0 and blocking test nodes that speak
//! the protocol over real TCP, with the same `wire` codec the router uses.
//!
//! Nothing here sleeps to synchronise: tests wait for frames. Reads carry a
//! generous timeout only so that a broken router fails a test instead of
//! hanging it.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use imrouter::client::{Incoming, NodeConfig, NodeCore, Welcome};
use imrouter::config::{Config, ServeArgs};
use imrouter::time::Time;
use imrouter::wire::{self, fb, Encoder, HelloFrame, RouteFrame};
use imrouter::{Router, RunningRouter};

/// How long a test waits for a frame before failing.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn start_router(shards: usize) -> RunningRouter {
    start_router_with(shards, |_| {})
}

pub fn start_router_with(shards: usize, adjust: impl FnOnce(&mut ServeArgs)) -> RunningRouter {
    imrouter::logging::init_for_tests();
    let mut args = ServeArgs::defaults();
    args.listen = "127.0.0.1:0".into();
    args.shards = Some(shards);
    // Test nodes that wait for one frame must not get a heartbeat Ping
    // instead; the liveness tests set their own interval.
    args.heartbeat_ms = imrouter::limits::HEARTBEAT_MS_MAX;
    // Tests expect Offline from the start, and a lost connection's sessions
    // gone at once; the warm-up and the reconnect grace have their own
    // tests.
    args.warmup_ms = Some(0);
    args.reconnect_grace_ms = 0;
    adjust(&mut args);
    Router::start(Config::from_args(&args).expect("valid test config")).expect("router starts")
}

/// A frame as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Welcome {
        shard: u16,
        shard_count: u16,
        slot_count: u16,
        heartbeat_ms: u32,
        /// Live node names, sorted.
        nodes: Vec<String>,
        senior: String,
        membership_seq: u64,
        resumed: bool,
        stream_offset: u64,
        /// The stream's identity (what a resume presents).
        stream: u64,
        /// The router's warm-up left.
        warmup_ms: u32,
    },
    NodeEvent {
        seq: u64,
        kind: fb::NodeEventKind,
        node: String,
        reason: fb::LeftReason,
        senior: String,
    },
    Deliver {
        message_id: u64,
        from_user: String,
        to_user: String,
        devices: Vec<String>,
        flags: u32,
        payload: Vec<u8>,
    },
    Status {
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
    },
    Kick {
        user: String,
        device: String,
        reason: fb::KickReason,
    },
    Pong {
        nonce: u64,
    },
    Ping {
        nonce: u64,
    },
    /// The router acknowledges the node's stream (nodes with acks).
    Ack {
        received: u64,
    },
    Error {
        code: fb::ErrorCode,
        text: String,
    },
    Draining {
        window_ms: u32,
    },
    Broadcast {
        from_node: String,
        payload: Vec<u8>,
    },
    SessionSyncAck {
        generation: u64,
        added: u64,
        removed: u64,
    },
    Publish {
        topic: String,
        from_node: String,
        payload: Vec<u8>,
    },
    /// A Deliver of a Fanout: (user, sorted devices), sorted by user.
    FanoutDeliver {
        message_id: u64,
        recipients: Vec<(String, Vec<String>)>,
        payload: Vec<u8>,
    },
    /// The Status of a Fanout, offline users sorted.
    FanoutStatus {
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
        offline: Vec<String>,
    },
    Located {
        query_id: u64,
        user: String,
        /// (node, device, platform), sorted.
        sessions: Vec<(String, String, fb::Platform)>,
    },
    Other(fb::Body),
}

impl Frame {
    /// An owned copy of what the node core handed out (`welcome` is the
    /// core's, for a Welcome).
    fn from_incoming(incoming: Incoming<'_>, welcome: Option<&Welcome>) -> Frame {
        match incoming {
            Incoming::Welcome { .. } => {
                let w = welcome.expect("the core keeps the Welcome");
                Frame::Welcome {
                    shard: w.shard,
                    shard_count: w.shard_count,
                    slot_count: w.slot_count,
                    heartbeat_ms: w.heartbeat_ms,
                    nodes: w.nodes.iter().map(|(name, _)| name.clone()).collect(),
                    senior: w.senior.clone(),
                    membership_seq: w.membership_seq,
                    resumed: w.resumed,
                    stream_offset: w.stream_offset,
                    stream: w.stream,
                    warmup_ms: w.warmup_ms,
                }
            }
            Incoming::NodeEvent(e) => Frame::NodeEvent {
                seq: e.seq(),
                kind: e.kind(),
                node: e.node().unwrap_or("").to_string(),
                reason: e.reason(),
                senior: e.senior().unwrap_or("").to_string(),
            },
            Incoming::FanoutDeliver(d) => {
                let mut all_devices = d.devices().unwrap().iter();
                let counts = d.recipient_device_counts().unwrap();
                let mut recipients: Vec<(String, Vec<String>)> = d
                    .recipients()
                    .unwrap()
                    .iter()
                    .zip(counts.iter())
                    .map(|(user, count)| {
                        let mut devices: Vec<String> = (0..count)
                            .map(|_| all_devices.next().unwrap().to_string())
                            .collect();
                        devices.sort();
                        (user.to_string(), devices)
                    })
                    .collect();
                recipients.sort();
                Frame::FanoutDeliver {
                    message_id: d.message_id(),
                    recipients,
                    payload: d.payload().map(|p| p.bytes().to_vec()).unwrap_or_default(),
                }
            }
            Incoming::FanoutStatus(s) => {
                let mut offline: Vec<String> = s
                    .offline_users()
                    .unwrap()
                    .iter()
                    .map(str::to_string)
                    .collect();
                offline.sort();
                Frame::FanoutStatus {
                    message_id: s.message_id(),
                    verdict: s.verdict(),
                    reason: s.reason(),
                    offline,
                }
            }
            Incoming::Deliver(d) => Frame::Deliver {
                message_id: d.message_id(),
                from_user: d.from_user().unwrap_or("").to_string(),
                to_user: d.to_user().unwrap_or("").to_string(),
                devices: d
                    .devices()
                    .map(|v| v.iter().map(str::to_string).collect())
                    .unwrap_or_default(),
                flags: d.flags(),
                payload: d.payload().map(|p| p.bytes().to_vec()).unwrap_or_default(),
            },
            Incoming::Status { status: s, .. } => Frame::Status {
                message_id: s.message_id(),
                verdict: s.verdict(),
                reason: s.reason(),
            },
            Incoming::Kick(k) => Frame::Kick {
                user: k.user().unwrap_or("").to_string(),
                device: k.device().unwrap_or("").to_string(),
                reason: k.reason(),
            },
            Incoming::Pong { nonce } => Frame::Pong { nonce },
            Incoming::SlotMap(_) => Frame::Other(fb::Body::SlotMap),
            Incoming::Moved(_) => Frame::Other(fb::Body::Moved),
            Incoming::Ping { nonce } => Frame::Ping { nonce },
            Incoming::Ack { received } => Frame::Ack { received },
            Incoming::Error { code, text } => Frame::Error {
                code,
                text: text.to_string(),
            },
            Incoming::Draining { window_ms, .. } => Frame::Draining { window_ms },
            Incoming::SessionSyncAck(a) => Frame::SessionSyncAck {
                generation: a.generation(),
                added: a.added(),
                removed: a.removed(),
            },
            Incoming::Publish(p) => Frame::Publish {
                topic: p.topic().to_string(),
                from_node: p.from_node().unwrap_or("").to_string(),
                payload: p.payload().map(|b| b.bytes().to_vec()).unwrap_or_default(),
            },
            Incoming::Broadcast(b) => Frame::Broadcast {
                from_node: b.from_node().unwrap_or("").to_string(),
                payload: b.payload().map(|p| p.bytes().to_vec()).unwrap_or_default(),
            },
            Incoming::Located(l) => {
                let mut sessions: Vec<_> = l
                    .sessions()
                    .map(|v| {
                        v.iter()
                            .map(|s| {
                                (
                                    s.node().unwrap_or("").to_string(),
                                    s.device().unwrap_or("").to_string(),
                                    s.platform(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                sessions.sort();
                Frame::Located {
                    query_id: l.query_id(),
                    user: l.user().unwrap_or("").to_string(),
                    sessions,
                }
            }
        }
    }
}

/// A raw connection: frames are cut, verified and counted by a node core
/// (the same code every node uses), which does not answer Pings on its
/// own here: a test sees every frame.
pub struct Wire {
    pub stream: TcpStream,
    pub core: NodeCore,
    closed: bool,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        Wire::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A Wire over a socket connected some other way.
    pub fn from_stream(stream: TcpStream) -> Wire {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut config = NodeConfig::new("test", 0);
        config.answer_pings = false;
        Wire {
            stream,
            core: NodeCore::new(config),
            closed: false,
        }
    }

    /// Stream bytes of the frames returned so far, from the Welcome's
    /// `stream_offset` on (what an Ack says).
    pub fn bytes_in(&self) -> u64 {
        self.core.received()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next frame, or `None` when the router closed the connection.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            let frame = match self.core.poll_incoming() {
                None => None,
                Some(Ok(Incoming::Welcome { .. })) => Some(None),
                Some(Ok(incoming)) => Some(Some(Frame::from_incoming(incoming, None))),
                Some(Err(error)) => panic!("the router sent something wrong: {error}"),
            };
            match frame {
                Some(Some(frame)) => return Some(frame),
                Some(None) => {
                    let welcome = Incoming::Welcome { resumed: false };
                    return Some(Frame::from_incoming(welcome, self.core.welcome()));
                }
                None => {}
            }
            if self.closed {
                return None;
            }
            match self.stream.read(self.core.read_buffer(64 * 1024)) {
                Ok(0) => {
                    self.closed = true;
                    assert!(
                        self.core.poll_incoming().is_none(),
                        "connection ended inside a frame"
                    );
                    return None;
                }
                Ok(read) => self.core.filled(read, Time::ZERO),
                Err(error) if error.kind() == ErrorKind::ConnectionReset => return None,
                Err(error) => {
                    panic!("read failed (timeout means the router never answered): {error}")
                }
            }
        }
    }

    /// Reads until the router closes the connection; returns the Error frame
    /// it sent last, if any.
    pub fn error_then_close(&mut self) -> Option<(fb::ErrorCode, String)> {
        let mut last_error = None;
        while let Some(frame) = self.recv() {
            if let Frame::Error { code, text } = frame {
                last_error = Some((code, text));
            }
        }
        last_error
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

/// A test IM node.
pub struct Node {
    pub name: String,
    pub wire: Wire,
    /// NodeEvents `recv` stepped over, oldest first.
    pub events: std::collections::VecDeque<Frame>,
    /// From Welcome.
    pub welcome_nodes: Vec<String>,
    pub welcome_senior: String,
    pub welcome_membership_seq: u64,
    pub encoder: Encoder,
    pub shard: u16,
    pub shard_count: u16,
    /// Welcome said this connection resumed a lost one's stream.
    pub resumed: bool,
    /// The stream's identity, from Welcome.
    pub stream: u64,
    next_message_id: u64,
}

pub fn hello_frame(name: &str, incarnation: u64, shard: Option<u16>) -> Vec<u8> {
    hello_resuming(name, incarnation, shard, false, 0, 0)
}

/// A Hello that sets `acks` and, on a reconnect, the bytes received and
/// the stream to resume.
pub fn hello_resuming(
    name: &str,
    incarnation: u64,
    shard: Option<u16>,
    acks: bool,
    received: u64,
    stream: u64,
) -> Vec<u8> {
    Encoder::new()
        .hello(&HelloFrame {
            shard,
            acks,
            received,
            stream,
            ..HelloFrame::new(name, incarnation)
        })
        .to_vec()
}

impl Node {
    pub fn connect(addr: SocketAddr, name: &str) -> Node {
        Node::connect_with(addr, name, 1, None)
    }

    /// Connects asking to be served by `shard` (shard-direct).
    pub fn connect_to_shard(addr: SocketAddr, name: &str, shard: u16) -> Node {
        Node::connect_with(addr, name, 1, Some(shard))
    }

    pub fn connect_with(
        addr: SocketAddr,
        name: &str,
        incarnation: u64,
        shard: Option<u16>,
    ) -> Node {
        Node::connect_hello(addr, name, &hello_frame(name, incarnation, shard))
    }

    /// Connects with `hello`; `wire.bytes_in()` then counts the stream offset.
    pub fn connect_hello(addr: SocketAddr, name: &str, hello: &[u8]) -> Node {
        let mut wire = Wire::connect(addr);
        wire.send(hello);
        match wire.recv() {
            Some(Frame::Welcome {
                shard,
                shard_count,
                slot_count,
                nodes,
                senior,
                membership_seq,
                resumed,
                stream,
                ..
            }) => {
                assert_eq!(slot_count, 16384);

                Node {
                    resumed,
                    stream,
                    name: name.to_string(),
                    wire,
                    events: Default::default(),
                    welcome_nodes: nodes,
                    welcome_senior: senior,
                    welcome_membership_seq: membership_seq,
                    encoder: Encoder::new(),
                    shard,
                    shard_count,
                    next_message_id: 1,
                }
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub fn open(&mut self, user: &str, device: &str) {
        let frame = self
            .encoder
            .session_open(user, device, fb::Platform::Mobile)
            .to_vec();
        self.wire.send(&frame);
    }

    pub fn close_session(&mut self, user: &str, device: &str) {
        let frame = self.encoder.session_close(user, device).to_vec();
        self.wire.send(&frame);
    }

    /// Opens a session and waits until its owner shard applied it: frames
    /// from one connection about one user are applied in order, so a Route
    /// to the new device that comes back as a Deliver proves the open.
    pub fn open_confirmed(&mut self, user: &str, device: &str) {
        self.open(user, device);
        self.confirm_open(user, device);
    }

    /// Waits until an open of `user`/`device` sent earlier on this
    /// connection took effect (see `open_confirmed`).
    pub fn confirm_open(&mut self, user: &str, device: &str) {
        let id = self.route_to(user, Some(device), b"sync", wire::ROUTE_FLAG_ACK);
        let mut delivered = false;
        let mut routed = false;
        while !(delivered && routed) {
            match self.recv() {
                Frame::Deliver { message_id, .. } if message_id == id => delivered = true,
                Frame::Status {
                    message_id,
                    verdict: fb::Verdict::Routed,
                    ..
                } if message_id == id => routed = true,
                other => panic!("while confirming {user}/{device}: unexpected {other:?}"),
            }
        }
    }

    /// Sends a Route; returns its message id.
    pub fn route_to(
        &mut self,
        to_user: &str,
        to_device: Option<&str>,
        payload: &[u8],
        flags: u32,
    ) -> u64 {
        let message_id = self.next_message_id;
        self.next_message_id += 1;
        let frame = self
            .encoder
            .route(&RouteFrame {
                message_id,
                from_user: &self.name,
                from_device: "test",
                to_user,
                to_device,
                flags,
                payload,
            })
            .to_vec();
        self.wire.send(&frame);
        message_id
    }

    /// The next frame; Pings are answered on the way, as a node must, and
    /// NodeEvents are kept in `events` (see `next_event`).
    pub fn recv(&mut self) -> Frame {
        loop {
            match self.wire.recv().expect("connection open") {
                Frame::Ping { nonce } => {
                    let pong = self.encoder.pong(nonce).to_vec();
                    self.wire.send(&pong);
                }
                event @ Frame::NodeEvent { .. } => self.events.push_back(event),
                Frame::Ack { .. } => {}
                frame => return frame,
            }
        }
    }

    /// The next NodeEvent newer than the Welcome (older ones are already
    /// in it, PROTOCOL.md "Membership"): (kind, node, reason, senior).
    pub fn next_event(&mut self) -> (fb::NodeEventKind, String, fb::LeftReason, String) {
        loop {
            if let Some(Frame::NodeEvent {
                seq,
                kind,
                node,
                reason,
                senior,
            }) = self.events.pop_front()
            {
                if seq > self.welcome_membership_seq {
                    return (kind, node, reason, senior);
                }
                continue;
            }
            match self.wire.recv().expect("connection open") {
                Frame::Ping { nonce } => {
                    let pong = self.encoder.pong(nonce).to_vec();
                    self.wire.send(&pong);
                }
                event @ Frame::NodeEvent { .. } => self.events.push_back(event),
                other => panic!("expected a NodeEvent, got {other:?}"),
            }
        }
    }

    /// Waits until every frame this connection sent earlier for a user or
    /// topic owned by `shard` (of `shard_count`) has been applied: a Route
    /// with ACK to a user of that shard nobody opened comes back Offline.
    pub fn sync_shard(&mut self, shard: usize, shard_count: usize) {
        let probe = user_on_shard("never-opened", shard, shard_count);
        let id = self.route_to(&probe, None, b"sync", wire::ROUTE_FLAG_ACK);
        assert_eq!(
            self.expect_status(id),
            (fb::Verdict::Offline, fb::Reason::NoSession)
        );
    }

    /// Sends Locate(`user`) and returns the sessions of the answer.
    pub fn locate(&mut self, user: &str) -> Vec<(String, String, fb::Platform)> {
        let query_id = self.next_message_id;
        self.next_message_id += 1;
        let frame = self.encoder.locate(query_id, user).to_vec();
        self.wire.send(&frame);
        match self.recv() {
            Frame::Located {
                query_id: got,
                user: got_user,
                sessions,
            } if got == query_id => {
                assert_eq!(got_user, user);
                sessions
            }
            other => panic!("expected Located for {query_id}, got {other:?}"),
        }
    }

    /// Opens a session of `platform`.
    pub fn open_as(&mut self, user: &str, device: &str, platform: fb::Platform) {
        let frame = self.encoder.session_open(user, device, platform).to_vec();
        self.wire.send(&frame);
    }

    /// Says Goodbye and reads until the router closes; returns the frames
    /// that came before the close.
    pub fn goodbye(mut self, reason: &str) -> Vec<Frame> {
        let frame = self.encoder.goodbye(reason).to_vec();
        self.wire.send(&frame);
        std::iter::from_fn(|| self.wire.recv()).collect()
    }

    /// Acknowledges every frame read so far (a node that set `acks`).
    pub fn ack(&mut self) {
        let frame = self.encoder.ack(self.wire.bytes_in()).to_vec();
        self.wire.send(&frame);
    }

    /// Sends a Ping and returns every frame that arrived before its Pong.
    pub fn ping(&mut self, nonce: u64) -> Vec<Frame> {
        let frame = self.encoder.ping(nonce).to_vec();
        self.wire.send(&frame);
        let mut before = Vec::new();
        loop {
            match self.recv() {
                Frame::Pong { nonce: got } if got == nonce => return before,
                other => before.push(other),
            }
        }
    }

    pub fn expect_status(&mut self, message_id: u64) -> (fb::Verdict, fb::Reason) {
        match self.recv() {
            Frame::Status {
                message_id: got,
                verdict,
                reason,
            } if got == message_id => (verdict, reason),
            other => panic!("expected Status for {message_id}, got {other:?}"),
        }
    }

    /// Reads one Status for each of `ids`, in whatever order they come
    /// (verdicts of different Routes are not ordered); returns them in the
    /// order of `ids`. A second Status for an id fails the test.
    pub fn expect_statuses(&mut self, ids: &[u64]) -> Vec<(fb::Verdict, fb::Reason)> {
        let mut got = std::collections::HashMap::new();
        while got.len() < ids.len() {
            match self.recv() {
                Frame::Status {
                    message_id,
                    verdict,
                    reason,
                } if ids.contains(&message_id) => {
                    assert!(
                        got.insert(message_id, (verdict, reason)).is_none(),
                        "two verdicts for {message_id}"
                    );
                }
                other => panic!("expected a Status for one of {ids:?}, got {other:?}"),
            }
        }
        ids.iter().map(|id| got[id]).collect()
    }

    pub fn expect_deliver(&mut self) -> (u64, String, Vec<String>, Vec<u8>) {
        match self.recv() {
            Frame::Deliver {
                message_id,
                to_user,
                mut devices,
                payload,
                ..
            } => {
                devices.sort();
                (message_id, to_user, devices, payload)
            }
            other => panic!("expected Deliver, got {other:?}"),
        }
    }
}

/// A user id owned by `shard` when the router runs `shard_count` shards.
pub fn user_on_shard(prefix: &str, shard: usize, shard_count: usize) -> String {
    imrouter::placement::id_on_shard(prefix, shard, shard_count)
}

/// Routes to `user` until the verdict is Offline. Node departure is noticed
/// by the router when the socket closes, which the test cannot observe, so
/// it polls with round trips (never sleeps). Each Route gets exactly one
/// verdict: Routed, or Offline/NodeGone when its Deliver raced the
/// disconnect, or Offline/NoSession once the sessions are gone.
pub fn route_until_offline(sender: &mut Node, user: &str) {
    for _ in 0..100_000 {
        let id = sender.route_to(user, None, b"still there?", wire::ROUTE_FLAG_ACK);
        match sender.expect_status(id) {
            (fb::Verdict::Offline, fb::Reason::NoSession) => {
                assert!(sender.ping(id).is_empty(), "one verdict per Route");
                return;
            }
            (fb::Verdict::Routed, fb::Reason::None)
            | (fb::Verdict::Offline, fb::Reason::NodeGone) => {}
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    panic!("{user} never went offline");
}

/// Polls `condition` until it holds (10 s at most).
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
