//! A simulated IM node: a real `NodeCore` behind a simulated socket, a
//! random workload, and the faults that happen to nodes (crashes,
//! Goodbyes, stopping to read).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::{Incoming, NodeConfig, NodeCore};
use crate::time::Time;
use crate::wire::{fb, FanoutFrame, PublishFrame, RouteFrame, ROUTE_FLAG_ACK, ROUTE_FLAG_CARBON};

use super::oracle::{Oracle, StreamId, Violation};
use super::{Rng, SimConfig, Socket};

/// Message ids of Fanouts carry this bit; of Subscribes, the next one.
const FANOUT_ID: u64 = 1 << 62;
const REQUEST_ID: u64 = 1 << 61;

const DEVICES: [&str; 4] = ["phone", "desk", "web", "pad"];
const TOPICS: [&str; 3] = ["topic-a", "topic-b", "topic-c"];

/// The user ids of a run.
pub fn all_users(users: usize) -> Vec<String> {
    (0..users).map(|i| format!("user-{i}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection; reconnects at `reconnect_at`.
    Down,
    /// Hello sent.
    Connecting,
    Live,
    /// Goodbye sent: reading until the router closes.
    Leaving,
}

pub struct SimNode {
    index: usize,
    /// This process of the node (a crash starts the next).
    incarnation: u32,
    /// Streams of this process so far (a Welcome that does not resume
    /// starts the next).
    stream: u32,
    core: NodeCore,
    acks: bool,
    pub socket: Option<usize>,
    state: State,
    reconnect_at: Time,
    /// The node reads nothing until then.
    reading_from: Time,
    /// It stopped reading on this stream (so it may be closed as slow).
    stopped_this_stream: bool,
    /// Its view of its sessions: (user, device) -> (seq, platform).
    sessions: BTreeMap<(String, String), (u64, u8)>,
    next_message: u64,
    sync_generation: u64,
    users: usize,
    grace_ms: u64,
    /// Decides and shapes storms, apart from the world's generator (so
    /// that runs without storms are the runs they were before storms).
    storm_rng: Rng,
}

fn protocol_incarnation(index: usize, incarnation: u32) -> u64 {
    ((index as u64 + 1) << 32) | u64::from(incarnation)
}

impl SimNode {
    pub fn new(index: usize, config: &SimConfig, rng: &mut Rng) -> SimNode {
        SimNode {
            index,
            incarnation: 1,
            stream: 0,
            core: NodeCore::new(node_config(index, 1, config.acks)),
            acks: config.acks,
            socket: None,
            state: State::Down,
            reconnect_at: Time::from_millis(rng.range(1..=5)),
            reading_from: Time::ZERO,
            stopped_this_stream: false,
            sessions: BTreeMap::new(),
            next_message: 1,
            sync_generation: 0,
            users: config.users,
            grace_ms: u64::from(config.reconnect_grace_ms),
            storm_rng: Rng::new(config.seed ^ 0x5707_3000 ^ index as u64),
        }
    }

    pub fn stream_id(&self) -> StreamId {
        (self.index, self.incarnation, self.stream)
    }

    fn message_id(&mut self) -> u64 {
        let id = (self.index as u64) << 48 | u64::from(self.incarnation) << 32 | self.next_message;
        self.next_message += 1;
        id
    }

    fn reading(&self, now: Time) -> bool {
        now >= self.reading_from
    }

    pub fn reconnect_due(&self, now: Time) -> bool {
        self.state == State::Down && now >= self.reconnect_at
    }

    pub fn can_work(&self) -> bool {
        self.state == State::Live && self.socket.is_some()
    }

    /// The next time this node does something on its own, after `now`.
    pub fn next_event(&self, now: Time) -> Time {
        let mut next = Time::NEVER;
        if self.state == State::Down {
            next = next.min(self.reconnect_at);
        }
        if self.socket.is_some() && self.reading_from > now {
            next = next.min(self.reading_from);
        }
        next
    }

    /// Whether the node has something to do with its socket now.
    pub fn io_ready(&self, sockets: &[Socket], now: Time) -> bool {
        let Some(socket) = self.socket else {
            return false;
        };
        let socket = &sockets[socket];
        let reading = self.reading(now);
        (reading && (socket.to_node.readable(now) || socket.to_node.at_end()))
            || (!self.core.transmit().is_empty() && socket.to_router.room() > 0)
    }

    /// Opens a new connection on `socket`.
    pub fn connect(
        &mut self,
        socket: usize,
        sockets: &mut [Socket],
        now: Time,
        delay: Duration,
    ) -> String {
        self.core.connection_lost();
        self.core.connect(now);
        self.socket = Some(socket);
        self.state = State::Connecting;
        self.write(sockets, now, delay);
        format!(
            "connects (incarnation {}, received {})",
            self.incarnation,
            self.core.received()
        )
    }

    fn write(&mut self, sockets: &mut [Socket], now: Time, delay: Duration) {
        let Some(socket) = self.socket else {
            return;
        };
        let bytes = self.core.transmit();
        if bytes.is_empty() {
            return;
        }
        let n = sockets[socket].to_router.write(bytes, now + delay);
        self.core.transmitted(n);
    }

    /// Reads (or learns the connection ended) and writes.
    pub fn io(
        &mut self,
        sockets: &mut [Socket],
        oracle: &mut Oracle,
        now: Time,
        delay: Duration,
        violations: &mut Vec<Violation>,
    ) -> Option<String> {
        let index = self.socket?;
        let reading = self.reading(now);
        let mut line = None;
        if reading && sockets[index].to_node.readable(now) {
            let bytes = sockets[index].to_node.read(now, super::READ_BYTES);
            self.core.receive(&bytes, now);
            line = self.handle(oracle, violations);
        } else if reading && sockets[index].to_node.at_end() {
            // Whatever is buffered was handled; the node closes its side
            // (what it wrote still arrives).
            self.core.connection_lost();
            sockets[index].to_router.fin = true;
            self.socket = None;
            let after_goodbye = self.state == State::Leaving;
            self.state = State::Down;
            let wait = if after_goodbye {
                1 + self.next_message % 50
            } else {
                // Some inside the grace, some outside.
                1 + (self.next_message * 37) % (self.grace_ms * 3 / 2 + 100)
            };
            self.reconnect_at = now + Duration::from_millis(wait);
            return Some(format!("connection ended; reconnects in {wait} ms"));
        }
        self.write(sockets, now, delay);
        line
    }

    fn handle(&mut self, oracle: &mut Oracle, violations: &mut Vec<Violation>) -> Option<String> {
        let mut lines: Vec<String> = Vec::new();
        loop {
            let stream = (self.index, self.incarnation, self.stream);
            let Some(incoming) = self.core.poll_incoming() else {
                break;
            };
            let incoming = match incoming {
                Ok(incoming) => incoming,
                Err(error) => {
                    violations.push(Violation(format!("node {}: {error}", self.index)));
                    break;
                }
            };
            let mut welcome = None;
            match incoming {
                Incoming::Welcome { resumed } => welcome = Some(resumed),
                Incoming::Deliver(deliver) => {
                    let carbon = deliver.flags() & ROUTE_FLAG_CARBON != 0;
                    oracle.route_delivered(deliver.message_id(), stream, carbon);
                    lines.push(format!(
                        "processed Deliver {:#x} (carbon {carbon})",
                        deliver.message_id()
                    ));
                }
                Incoming::FanoutDeliver(deliver) => {
                    let users = deliver
                        .recipients()
                        .map(|r| r.iter().map(str::to_string).collect())
                        .unwrap_or_default();
                    oracle.fanout_delivered(deliver.message_id(), users);
                }
                Incoming::Status { status, .. } => {
                    let id = status.message_id();
                    if id & REQUEST_ID != 0 {
                        // A refused Subscribe.
                    } else if id & FANOUT_ID != 0 {
                        oracle.fanout_status(id, stream, status.verdict(), Vec::new());
                    } else {
                        oracle.route_status(id, stream, status.verdict(), status.reason());
                        lines.push(format!(
                            "Status {id:#x}: {:?} {:?}",
                            status.verdict(),
                            status.reason()
                        ));
                    }
                }
                Incoming::FanoutStatus(status) => {
                    let offline = status
                        .offline_users()
                        .map(|o| o.iter().map(str::to_string).collect())
                        .unwrap_or_default();
                    oracle.fanout_status(status.message_id(), stream, status.verdict(), offline);
                }
                Incoming::Kick(kick) => {
                    let key = (
                        kick.user().unwrap_or("").to_string(),
                        kick.device().unwrap_or("").to_string(),
                    );
                    self.sessions.remove(&key);
                }
                Incoming::Error { code, text } => {
                    if code == fb::ErrorCode::SlowConsumer && !self.stopped_this_stream {
                        violations.push(Violation(format!(
                            "node {} reads all it is sent but was closed as a slow consumer: {text}",
                            self.index
                        )));
                    }
                    lines.push(format!("got Error {code:?}: {text}"));
                }
                Incoming::SlotMap(_) | Incoming::Moved(_) => violations.push(Violation(format!(
                    "node {}: a router alone sent a cluster frame",
                    self.index
                ))),
                Incoming::Broadcast(_)
                | Incoming::Draining { .. }
                | Incoming::Ping { .. }
                | Incoming::Ack { .. }
                | Incoming::Pong { .. }
                | Incoming::NodeEvent(_)
                | Incoming::Located(_)
                | Incoming::Publish(_)
                | Incoming::SessionSyncAck(_) => {}
            }
            if let Some(resumed) = welcome {
                let line = self.welcomed(resumed, oracle);
                lines.push(line);
            }
        }
        (!lines.is_empty()).then(|| lines.join("; "))
    }

    /// The handshake completed: on a new stream, the node's earlier
    /// requests' outcomes are lost with the old one, and it resyncs.
    fn welcomed(&mut self, resumed: bool, oracle: &mut Oracle) -> String {
        self.state = State::Live;
        if resumed {
            return "resumed".into();
        }
        // Whatever was sent on the stream before is lost with it.
        oracle.stream_ended(self.stream_id());
        self.stream += 1;
        self.stopped_this_stream = false;
        self.core.take_pending();
        let count = self.resync(8);
        format!("new stream {}: resyncs {count} sessions", self.stream)
    }

    /// Sends the node's whole session list (a new SessionSync generation)
    /// in batches of `batch`; returns how many sessions it lists.
    fn resync(&mut self, batch: usize) -> usize {
        self.sync_generation += 1;
        let sessions: Vec<(&str, &str, fb::Platform, u64)> = self
            .sessions
            .iter()
            .map(|((user, device), (seq, platform))| {
                (
                    user.as_str(),
                    device.as_str(),
                    fb::Platform(*platform),
                    *seq,
                )
            })
            .collect();
        self.core.sync(self.sync_generation, &sessions, batch);
        sessions.len()
    }

    /// One request from the workload.
    pub fn work(
        &mut self,
        rng: &mut Rng,
        oracle: &mut Oracle,
        now: Time,
        config: &SimConfig,
    ) -> Option<String> {
        if !rng.chance(config.work) {
            return None;
        }
        if config.storm > 0.0 && self.storm_rng.chance(config.storm) {
            return Some(self.storm(oracle, now));
        }
        let user = format!("user-{}", rng.index(self.users));
        let stream = self.stream_id();
        match rng.below(100) {
            0..=44 => {
                let id = self.message_id();
                let ack = rng.chance(0.7);
                let carbon = rng.chance(0.05);
                let from_user = format!("user-{}", rng.index(self.users));
                let to_device = rng.chance(0.1).then(|| DEVICES[rng.index(DEVICES.len())]);
                let flags = if ack { ROUTE_FLAG_ACK } else { 0 }
                    | if carbon { ROUTE_FLAG_CARBON } else { 0 };
                let payload = vec![0x5a; rng.index(config.payload_max)];
                self.core.route(
                    &RouteFrame {
                        message_id: id,
                        from_user: &from_user,
                        from_device: DEVICES[0],
                        to_user: &user,
                        to_device,
                        flags,
                        payload: &payload,
                    },
                    now,
                );
                oracle.route_sent(id, stream, &user, ack);
                Some(format!("route {id:#x} to {user} (ack {ack})"))
            }
            45..=64 => {
                let device = DEVICES[rng.index(DEVICES.len())];
                let platform = rng.range(1..=4) as u8;
                let seq = self.core.open(&user, device, fb::Platform(platform));
                self.sessions
                    .insert((user.clone(), device.to_string()), (seq, platform));
                Some(format!("open {user}/{device}"))
            }
            65..=76 => {
                if self.sessions.is_empty() {
                    return None;
                }
                let at = rng.index(self.sessions.len());
                let (key, (seq, _)) = self
                    .sessions
                    .iter()
                    .nth(at)
                    .map(|(k, v)| (k.clone(), *v))
                    .expect("in range");
                self.core.close(&key.0, &key.1, seq);
                self.sessions.remove(&key);
                Some(format!("close {}/{}", key.0, key.1))
            }
            77..=81 => {
                let id = self.message_id();
                self.core.locate(id, &user);
                None
            }
            82..=88 => {
                let id = self.message_id() | FANOUT_ID;
                let mut to_users: Vec<String> = (0..rng.range(1..=5))
                    .map(|_| format!("user-{}", rng.index(self.users)))
                    .collect();
                to_users.sort();
                to_users.dedup();
                let refs: Vec<&str> = to_users.iter().map(String::as_str).collect();
                self.core.fanout(
                    &FanoutFrame {
                        message_id: id,
                        from_user: "sim",
                        from_device: "sim",
                        to_users: &refs,
                        flags: 0,
                        payload: b"group",
                    },
                    now,
                );
                oracle.fanout_sent(id, stream, to_users);
                Some(format!("fanout {id:#x}"))
            }
            89..=91 => {
                self.core.broadcast(&[1; 32]);
                Some("broadcast".into())
            }
            92..=95 => {
                let topic = TOPICS[rng.index(TOPICS.len())];
                let id = self.message_id() | REQUEST_ID;
                self.core.subscribe(topic, id);
                None
            }
            96..=98 => {
                let topic = TOPICS[rng.index(TOPICS.len())];
                let id = self.message_id();
                self.core.publish(&PublishFrame {
                    topic,
                    message_id: id,
                    from_user: "sim",
                    from_device: "sim",
                    from_node: "",
                    flags: 0,
                    payload: b"news",
                });
                None
            }
            _ => {
                // A resync of the node's view, unprompted.
                self.resync(3);
                Some("resync".into())
            }
        }
    }

    /// Many requests at once, as a misbehaving or bursting node sends
    /// them: more Locates or Fanouts than a node may have in flight,
    /// Broadcasts larger than other nodes' buffers, or Routes that fill a
    /// recipient's. Its own reader must pause, the nodes that read must
    /// not be dropped, and every promise must still hold.
    fn storm(&mut self, oracle: &mut Oracle, now: Time) -> String {
        match self.storm_rng.below(4) {
            0 => {
                let count = self.storm_rng.range(65..=300);
                for _ in 0..count {
                    let user = format!("user-{}", self.storm_rng.index(self.users));
                    let id = self.message_id();
                    self.core.locate(id, &user);
                }
                format!("storm: {count} Locates")
            }
            1 => {
                let count = self.storm_rng.range(8..=40);
                let size = self.storm_rng.range(2_048..=12_288) as usize;
                for _ in 0..count {
                    self.core.broadcast(&vec![2; size]);
                }
                format!("storm: {count} Broadcasts of {size} bytes")
            }
            2 => {
                let count = self.storm_rng.range(9..=40);
                let stream = self.stream_id();
                for _ in 0..count {
                    let id = self.message_id() | FANOUT_ID;
                    let mut to_users: Vec<String> = (0..self.storm_rng.range(1..=64))
                        .map(|_| format!("user-{}", self.storm_rng.index(self.users)))
                        .collect();
                    to_users.sort();
                    to_users.dedup();
                    let refs: Vec<&str> = to_users.iter().map(String::as_str).collect();
                    self.core.fanout(
                        &FanoutFrame {
                            message_id: id,
                            from_user: "storm",
                            from_device: "storm",
                            to_users: &refs,
                            flags: 0,
                            payload: b"storm",
                        },
                        now,
                    );
                    oracle.fanout_sent(id, stream, to_users);
                }
                format!("storm: {count} Fanouts")
            }
            _ => {
                let count = self.storm_rng.range(20..=120);
                let user = format!("user-{}", self.storm_rng.index(self.users));
                let payload = vec![0x5b; self.storm_rng.range(1_024..=8_192) as usize];
                let stream = self.stream_id();
                for _ in 0..count {
                    let id = self.message_id();
                    self.core.route(
                        &RouteFrame {
                            message_id: id,
                            from_user: "storm",
                            from_device: DEVICES[0],
                            to_user: &user,
                            to_device: None,
                            flags: ROUTE_FLAG_ACK,
                            payload: &payload,
                        },
                        now,
                    );
                    oracle.route_sent(id, stream, &user, true);
                }
                format!("storm: {count} Routes of {} bytes to {user}", payload.len())
            }
        }
    }

    /// The process dies: its socket closes, its stream ends; a new
    /// process (the next incarnation) connects later, with no sessions.
    pub fn crash(
        &mut self,
        sockets: &mut [Socket],
        oracle: &mut Oracle,
        now: Time,
        rng: &mut Rng,
    ) -> bool {
        if self.state == State::Down {
            return false;
        }
        if let Some(socket) = self.socket.take() {
            let socket = &mut sockets[socket];
            socket.to_node.break_();
            socket.to_router.fin = true;
        }
        oracle.stream_ended(self.stream_id());
        self.incarnation += 1;
        self.stream = 0;
        self.core = NodeCore::new(node_config(self.index, self.incarnation, self.acks));
        self.sessions.clear();
        self.state = State::Down;
        self.reading_from = Time::ZERO;
        self.stopped_this_stream = false;
        self.reconnect_at = now + Duration::from_millis(rng.range(1..=self.grace_ms * 2 + 50));
        true
    }

    /// A planned stop of this connection: Goodbye, then read to the end.
    pub fn goodbye(&mut self, sockets: &mut [Socket], now: Time) -> bool {
        if self.state != State::Live {
            return false;
        }
        self.core.goodbye("simulated stop");
        self.state = State::Leaving;
        self.write(sockets, now, Duration::ZERO);
        true
    }

    /// The node stops reading until `until` (a GC pause, a stuck thread).
    pub fn stop_reading(&mut self, until: Time) -> bool {
        if self.socket.is_none() {
            return false;
        }
        self.reading_from = self.reading_from.max(until);
        self.stopped_this_stream = true;
        true
    }

    /// A write to this node took a long detour: it may be taken for a
    /// node that does not read.
    pub fn network_stalled(&mut self) {
        self.stopped_this_stream = true;
    }

    /// Connected, reading, with nothing to send.
    pub fn quiet(&self) -> bool {
        self.state == State::Live && self.core.transmit().is_empty()
    }

    /// The run settles: the node reads again and reconnects soon.
    pub fn settle(&mut self, now: Time) {
        self.reading_from = self.reading_from.min(now);
        if self.state == State::Down {
            self.reconnect_at = self.reconnect_at.min(now + Duration::from_millis(1));
        }
    }
}

fn node_config(index: usize, incarnation: u32, acks: bool) -> NodeConfig {
    let mut config = NodeConfig::new(
        format!("sim-{index}"),
        protocol_incarnation(index, incarnation),
    );
    config.acks = acks;
    config
}
