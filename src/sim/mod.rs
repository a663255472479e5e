//! Deterministic simulation: a whole router (every shard) and many nodes
//! in one thread, on virtual time, with a seeded scheduler and injected
//! faults (TigerBeetle's VOPR, FoundationDB's simulation testing).
//!
//! The router's shards are the real [`ShardCore`]s and the nodes run the
//! real [`NodeCore`]; only the world around them is simulated:
//!
//! - TCP connections are pairs of [`net::Pipe`]s: bounded buffers whose
//!   writes arrive after a random delay, that a fault can break;
//! - the cross-shard channels are bounded queues, delivered in order per
//!   channel, in any order between channels;
//! - the socket layer and the shard driver are re-enacted step by step
//!   (read, write, flush, linger, hand-off, timers, sliced work).
//!
//! At each step the scheduler picks one of the actions that can happen now
//! (a socket read or write, a batch delivery, a timer, a node's request,
//! a fault) at random from the seed, and time advances by a little; when
//! nothing can happen, time jumps to the next deadline. After every step
//! the bounds are checked ([`World::check_bounds`]); at the end every
//! fault stops, everything settles, and the oracle ([`oracle`]) checks
//! that every promise to the nodes held. The same seed replays exactly: a
//! failing seed becomes a regression test (tests/simulation.rs), and
//! `scripts/simulate.sh --seeds N` runs as many as asked.

pub mod control;
pub mod data;
pub mod etcd;
mod net;
mod node;
pub mod oracle;
mod rng;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ServeArgs};
use crate::core::batch::{Class, CLASSES};
use crate::core::conns::{ConnId, LinkState};
use crate::core::directory::Directory;
use crate::core::{Lost, ShardCore, SocketAction};
use crate::limits::{
    BATCH_BYTES_TARGET, CLOSE_LINGER, FANOUTS_IN_FLIGHT_MAX, FANOUT_BYTES_IN_FLIGHT_MAX,
    FANOUT_JOBS_MAX, FANOUT_RECIPIENTS_IN_FLIGHT_MAX, LINK_BATCHES_MAX, LOCATES_IN_FLIGHT_MAX,
    OUTBOX_BYTES_HIGH, SYNC_SESSIONS_IN_FLIGHT_MAX,
};
use crate::table::LoginPolicy;
use crate::time::Time;
use crate::wire::{check, Check, Hello};

use net::{Channel, Pipe};
use node::SimNode;
use oracle::{Oracle, Violation};
pub use rng::Rng;

/// Bytes a simulated socket buffers in each direction.
const PIPE_BYTES: usize = 32 * 1024;

/// Bytes one simulated read takes at most.
const READ_BYTES: usize = 16 * 1024;

/// What one run simulates; derived from its seed ([`SimConfig::from_seed`]).
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub shards: usize,
    pub nodes: usize,
    pub users: usize,
    /// Steps with workload and faults, before everything settles.
    pub steps: usize,
    pub reconnect_grace_ms: u32,
    pub heartbeat_ms: u32,
    pub login_policy: LoginPolicy,
    /// Nodes acknowledge their streams (without, only faults that lose
    /// nothing in flight are injected).
    pub acks: bool,
    /// Probability per step of each fault.
    pub cut: f64,
    pub crash: f64,
    pub goodbye: f64,
    pub stop_reading: f64,
    pub router_restart: f64,
    /// Probability that a socket write takes a long detour.
    pub delay_spike: f64,
    /// Probability per step that some node sends a request.
    pub work: f64,
    /// Largest Route payload, and most requests one node sends at once:
    /// heavy runs congest connections (Busy verdicts, held copies, slow
    /// consumers, full parks).
    pub payload_max: usize,
    pub burst_max: u64,
    /// Probability that a node's request is a storm of them instead.
    pub storm: f64,
    /// `--max-connections-per-shard` (small in some runs: placement and
    /// refusals).
    pub connections_per_shard: usize,
}

impl SimConfig {
    /// A run's parameters, all from its seed.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x05EE_D0F1_A0E5);
        let acks = !rng.chance(0.15);
        let faults = if acks { 1.0 } else { 0.0 };
        let policies = [
            LoginPolicy::AllowAll,
            LoginPolicy::SameDeviceKick,
            LoginPolicy::SamePlatformKick,
            LoginPolicy::SingleSession,
        ];
        SimConfig {
            seed,
            shards: rng.range(1..=3) as usize,
            nodes: rng.range(2..=5) as usize,
            users: rng.range(3..=12) as usize,
            steps: rng.range(300..=900) as usize,
            reconnect_grace_ms: if rng.chance(0.2) {
                0
            } else {
                rng.range(200..=1500) as u32
            },
            heartbeat_ms: rng.range(50..=200) as u32,
            login_policy: policies[rng.index(policies.len())],
            acks,
            cut: faults * rng.range(0..=4) as f64 / 1000.0,
            crash: faults * rng.range(0..=2) as f64 / 1000.0,
            goodbye: rng.range(0..=2) as f64 / 1000.0,
            stop_reading: faults * rng.range(0..=3) as f64 / 1000.0,
            router_restart: if rng.chance(0.1) {
                faults * 0.0005
            } else {
                0.0
            },
            delay_spike: rng.range(0..=20) as f64 / 1000.0,
            work: rng.range(20..=60) as f64 / 100.0,
            payload_max: if rng.chance(0.3) { 4096 } else { 64 },
            burst_max: if rng.chance(0.3) { 16 } else { 1 },
            storm: {
                let mut own = Rng::new(seed ^ 0x0005_7073);
                if own.chance(0.3) {
                    own.range(1..=10) as f64 / 1000.0
                } else {
                    0.0
                }
            },
            connections_per_shard: {
                // From a generator of its own, so that adding a parameter
                // does not change the runs of existing seeds.
                let mut own = Rng::new(seed ^ 0xC0_4E_C7);
                if own.chance(0.2) {
                    own.range(1..=3) as usize
                } else {
                    4096
                }
            },
        }
    }

    fn router_config(&self) -> Config {
        let mut args = ServeArgs::defaults();
        args.listen = "127.0.0.1:0".into();
        args.shards = Some(self.shards);
        args.max_frame_bytes = 16 * 1024;
        args.out_buffer_bytes = 64 * 1024;
        args.park_bytes_max = 64 * 1024;
        args.heartbeat_ms = self.heartbeat_ms;
        args.reconnect_grace_ms = self.reconnect_grace_ms;
        args.warmup_ms = Some(0);
        args.login_policy = self.login_policy;
        args.max_sessions_per_user = 4;
        args.fanout_max = 64;
        args.max_topics = 8;
        args.max_connections_per_shard = self.connections_per_shard;
        Config::from_args(&args).expect("a valid simulated router")
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub config: SimConfig,
    pub steps: u64,
    pub virtual_time: Time,
    pub violations: Vec<Violation>,
    /// The last lines of the run's trace (for a failing seed).
    pub trace: Vec<String>,
    pub faults: FaultCounts,
    pub routes: usize,
    pub delivers: u64,
    /// The router's counters at the end (of its last process), summed
    /// over shards: which paths the run went through.
    pub metrics: crate::metrics::ShardMetrics,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Faults injected in a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultCounts {
    pub cuts: u64,
    pub crashes: u64,
    pub goodbyes: u64,
    pub stops: u64,
    pub restarts: u64,
    pub spikes: u64,
}

/// Where the router's end of a socket is.
#[derive(Debug, Clone)]
enum Phase {
    /// Accepted on `shard`, reading the Hello.
    Handshake {
        shard: usize,
        input: Vec<u8>,
    },
    /// Handed to `target`'s control queue.
    HandingOff,
    /// Served by `shard` as connection `conn`.
    Serve {
        shard: usize,
        conn: ConnId,
    },
    /// Closing: writing what is left, then lingering until `until`.
    Flush {
        shard: usize,
        conn: ConnId,
        linger_until: Option<Time>,
    },
    /// Refused before it opened: the Error frame, then closed.
    Refuse {
        frame: Vec<u8>,
    },
    Done,
}

/// One simulated TCP connection.
struct Socket {
    to_router: Pipe,
    to_node: Pipe,
    /// The router process it belongs to.
    router_generation: u32,
    phase: Phase,
}

/// A connection on its way to the shard that serves it.
struct Adopt {
    socket: usize,
    hello: Hello,
    pending: Vec<u8>,
}

/// The simulated router process.
struct Router {
    generation: u32,
    config: Arc<Config>,
    cores: Vec<ShardCore>,
    /// `channels[from][to][class]`.
    channels: Vec<Vec<[Channel; 3]>>,
    adopts: Vec<VecDeque<Adopt>>,
}

impl Router {
    fn start(config: Arc<Config>, generation: u32, now: Time) -> Router {
        let shards = config.shard_count();
        let directory = Arc::new(Directory::new(config.nodes_max as usize, shards));
        let cores = (0..shards)
            .map(|index| {
                ShardCore::new(
                    index,
                    config.clone(),
                    directory.clone(),
                    u64::from(generation) + 1,
                    now,
                )
            })
            .collect();
        Router {
            generation,
            cores,
            channels: (0..shards)
                .map(|_| (0..shards).map(|_| Default::default()).collect())
                .collect(),
            adopts: (0..shards).map(|_| VecDeque::new()).collect(),
            config,
        }
    }
}

/// One thing that can happen now.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// The router reads from, or writes to, a socket, or learns it ended.
    RouterIo(usize),
    Adopt(usize),
    Flush(usize),
    Deliver {
        from: usize,
        to: usize,
        class: Class,
    },
    Timeout(usize),
    Jobs(usize),
    NodeIo(usize),
    NodeReconnect(usize),
    NodeWork(usize),
}

/// The simulated world. See the module docs.
pub struct World {
    config: SimConfig,
    rng: Rng,
    now: Time,
    router: Router,
    sockets: Vec<Socket>,
    nodes: Vec<SimNode>,
    oracle: Oracle,
    trace: VecDeque<String>,
    faults: FaultCounts,
    /// Faults and new requests stop (the run settles).
    settling: bool,
    steps: u64,
    violations: Vec<Violation>,
    trace_limit: usize,
}

/// Lines of trace kept for a failing seed (`IMROUTER_SIM_TRACE` lines,
/// when set).
fn trace_lines() -> usize {
    std::env::var("IMROUTER_SIM_TRACE")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200)
}

impl World {
    pub fn new(config: SimConfig) -> World {
        let mut rng = Rng::new(config.seed);
        let router_config = Arc::new(config.router_config());
        let now = Time::from_millis(1);
        let router = Router::start(router_config, 0, now);
        let nodes = (0..config.nodes)
            .map(|index| SimNode::new(index, &config, &mut rng))
            .collect();
        World {
            rng,
            now,
            router,
            sockets: Vec::new(),
            nodes,
            oracle: Oracle::new(config.acks),
            trace: VecDeque::new(),
            faults: FaultCounts::default(),
            settling: false,
            steps: 0,
            violations: Vec::new(),
            trace_limit: trace_lines(),
            config,
        }
    }

    fn trace(&mut self, line: String) {
        if self.trace.len() >= self.trace_limit {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:?} {line}", self.now));
    }

    /// Runs the workload and faults, lets everything settle, and checks.
    pub fn run(mut self) -> Report {
        for _ in 0..self.config.steps {
            self.step();
            if !self.violations.is_empty() {
                return self.report();
            }
        }
        self.settle();
        self.check_settled();
        // A node not connected at the end knows its stream is gone (it is
        // refused, or still reconnecting): its outcomes are not owed.
        for node in &self.nodes {
            if !node.quiet() {
                self.oracle.stream_ended(node.stream_id());
            }
        }
        self.oracle.finish();
        self.check_tables();
        self.report()
    }

    /// The state of every socket and connection, for a failing seed.
    fn dump(&mut self) {
        let now = self.now;
        let mut lines = Vec::new();
        for (index, socket) in self.sockets.iter().enumerate() {
            if matches!(socket.phase, Phase::Done) {
                continue;
            }
            lines.push(format!(
                "socket {index}: {:?}, to_router {} bytes (readable {}, end {}), to_node {} bytes free",
                socket.phase,
                PIPE_BYTES - socket.to_router.room().min(PIPE_BYTES),
                socket.to_router.readable(now),
                socket.to_router.at_end(),
                socket.to_node.room()
            ));
        }
        for (shard, core) in self.router.cores.iter().enumerate() {
            for (id, conn) in core.conns().iter() {
                lines.push(format!(
                    "shard {shard} {id:?} {}: {:?} socket {} queued {} budget {:?} paused {} can_read {}",
                    conn.name,
                    conn.state,
                    conn.has_socket,
                    conn.queued_bytes(),
                    conn.budget,
                    conn.read_paused,
                    core.can_read(id)
                ));
            }
        }
        for line in lines {
            self.trace(line);
        }
    }

    fn report(mut self) -> Report {
        let mut metrics = crate::metrics::ShardMetrics::default();
        for core in &self.router.cores {
            metrics.add(&core.snapshot());
        }
        self.violations.append(&mut self.oracle.violations);
        if !self.violations.is_empty() {
            self.dump();
        }
        Report {
            seed: self.config.seed,
            steps: self.steps,
            virtual_time: self.now,
            violations: self.violations,
            trace: self.trace.into_iter().collect(),
            faults: self.faults,
            routes: self.oracle.routes.len(),
            delivers: self.oracle.delivers,
            metrics,
            config: self.config,
        }
    }

    /// Stops faults and requests, brings every node back and runs until
    /// every grace and timeout has passed.
    fn settle(&mut self) {
        self.settling = true;
        for node in &mut self.nodes {
            node.settle(self.now);
        }
        let grace = u64::from(self.config.reconnect_grace_ms);
        let heartbeat = u64::from(self.config.heartbeat_ms);
        let until = self.now + Duration::from_millis(2 * grace + 10 * heartbeat + 3000);
        while self.now < until && self.violations.is_empty() {
            self.step();
        }
        // Then until nothing is in flight (a node that reconnected late may
        // still be resyncing), for at most ten more seconds.
        let limit = self.now + Duration::from_secs(10);
        while !self.quiet() && self.now < limit && self.violations.is_empty() {
            self.step();
        }
    }

    /// Whether nothing is on its way: no batch, no sliced work, no byte in
    /// any pipe, every node connected with nothing to send.
    fn quiet(&self) -> bool {
        let router = self
            .router
            .cores
            .iter()
            .all(|core| !core.has_batches() && !core.has_work())
            && self
                .router
                .channels
                .iter()
                .flatten()
                .flatten()
                .all(|channel| channel.batches.is_empty());
        let sockets = self.sockets.iter().all(|socket| {
            matches!(socket.phase, Phase::Done)
                || (socket.to_router.next_arrival().is_none()
                    && socket.to_node.next_arrival().is_none())
        });
        // With fewer connection places than nodes, some are refused for
        // good: they are not waited for.
        let oversubscribed =
            self.config.connections_per_shard * self.config.shards < self.nodes.len();
        router && sockets && (oversubscribed || self.nodes.iter().all(SimNode::quiet))
    }

    /// One step: one action chosen from the seed, or a jump in time.
    pub fn step(&mut self) {
        self.steps += 1;
        if !self.settling {
            self.faults();
        }
        let actions = self.actions();
        if actions.is_empty() {
            let next = self.next_event();
            self.now = if next == Time::NEVER || next <= self.now {
                self.now + Duration::from_millis(1)
            } else {
                next
            };
        } else {
            let action = actions[self.rng.index(actions.len())];
            self.act(action);
            self.now += Duration::from_micros(self.rng.range(0..=40));
        }
        self.check_bounds();
    }

    fn actions(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let now = self.now;
        for (index, socket) in self.sockets.iter().enumerate() {
            if socket.router_generation == self.router.generation
                && !matches!(socket.phase, Phase::Done | Phase::HandingOff)
                && self.router_io_ready(socket)
            {
                actions.push(Action::RouterIo(index));
            }
        }
        for (shard, core) in self.router.cores.iter().enumerate() {
            if !self.router.adopts[shard].is_empty() {
                actions.push(Action::Adopt(shard));
            }
            if core.has_batches() {
                actions.push(Action::Flush(shard));
            }
            if now >= core.poll_timeout() {
                actions.push(Action::Timeout(shard));
            }
            if core.has_work() {
                actions.push(Action::Jobs(shard));
            }
            for from in 0..self.router.cores.len() {
                for class in CLASSES {
                    if !self.router.channels[from][shard][class as usize]
                        .batches
                        .is_empty()
                        && core.may_take(class)
                    {
                        actions.push(Action::Deliver {
                            from,
                            to: shard,
                            class,
                        });
                    }
                }
            }
        }
        for (index, node) in self.nodes.iter().enumerate() {
            if node.io_ready(&self.sockets, now) {
                actions.push(Action::NodeIo(index));
            }
            if node.reconnect_due(now) {
                actions.push(Action::NodeReconnect(index));
            }
            if !self.settling && node.can_work() {
                actions.push(Action::NodeWork(index));
            }
        }
        actions
    }

    /// Whether the router's end of `socket` has something to do now.
    fn router_io_ready(&self, socket: &Socket) -> bool {
        let now = self.now;
        match &socket.phase {
            Phase::Handshake { .. } => socket.to_router.readable(now) || socket.to_router.at_end(),
            Phase::Serve { shard, conn } => {
                let core = &self.router.cores[*shard];
                let can_read = core.can_read(*conn);
                (!core.writable(*conn).is_empty() && socket.to_node.room() > 0)
                    || socket.to_node.broken
                    || core.socket_action(*conn) != SocketAction::Serve
                    || (can_read
                        && (socket.to_router.readable(now)
                            || core.has_input(*conn)
                            || socket.to_router.at_end()))
                    // (To be marked paused, as the driver does.)
                    || (!can_read
                        && core
                            .conns()
                            .get(*conn)
                            .is_some_and(|c| c.is_open() && !c.read_paused))
            }
            Phase::Flush { linger_until, .. } => match linger_until {
                None => true,
                Some(until) => {
                    now >= *until || socket.to_router.readable(now) || socket.to_router.at_end()
                }
            },
            Phase::Refuse { .. } => true,
            Phase::HandingOff | Phase::Done => false,
        }
    }

    /// The next time something is due (a delivery, a timer, a node).
    fn next_event(&self) -> Time {
        let mut next = Time::NEVER;
        for socket in &self.sockets {
            for pipe in [&socket.to_router, &socket.to_node] {
                if let Some(at) = pipe.next_arrival() {
                    next = next.min(at);
                }
            }
            if let Phase::Flush {
                linger_until: Some(until),
                ..
            } = socket.phase
            {
                next = next.min(until);
            }
        }
        for core in &self.router.cores {
            next = next.min(core.poll_timeout());
        }
        for node in &self.nodes {
            next = next.min(node.next_event(self.now));
        }
        next
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::RouterIo(socket) => self.router_io(socket),
            Action::Adopt(shard) => self.adopt(shard),
            Action::Flush(shard) => self.flush(shard),
            Action::Deliver { from, to, class } => {
                let batch = self.router.channels[from][to][class as usize]
                    .batches
                    .pop_front()
                    .expect("non-empty");
                let now = self.now;
                let core = &mut self.router.cores[to];
                core.handle_batch(&batch, now);
                core.recycle_batch(batch);
            }
            Action::Timeout(shard) => {
                let now = self.now;
                self.router.cores[shard].handle_timeout(now);
            }
            Action::Jobs(shard) => {
                let now = self.now;
                self.router.cores[shard].step(now);
            }
            Action::NodeIo(index) => self.node_io(index),
            Action::NodeReconnect(index) => self.reconnect(index),
            Action::NodeWork(index) => {
                let now = self.now;
                let burst = self.rng.range(1..=self.config.burst_max);
                for _ in 0..burst {
                    let line =
                        self.nodes[index].work(&mut self.rng, &mut self.oracle, now, &self.config);
                    if let Some(line) = line {
                        self.trace(format!("node {index}: {line}"));
                    }
                }
            }
        }
        for shard in 0..self.router.cores.len() {
            for line in self.router.cores[shard].take_log() {
                self.trace(format!("shard {shard}: {line}"));
            }
        }
    }

    fn flush(&mut self, shard: usize) {
        let shards = self.router.cores.len();
        for target in 0..shards {
            for class in CLASSES {
                let Some(batch) = self.router.cores[shard].take_batch(target, class) else {
                    continue;
                };
                let channel = &mut self.router.channels[shard][target][class as usize];
                if channel.batches.len() < LINK_BATCHES_MAX {
                    channel.batches.push_back(batch);
                } else {
                    self.router.cores[shard].untake_batch(target, class, batch);
                }
            }
        }
    }

    fn adopt(&mut self, shard: usize) {
        let adopt = self.router.adopts[shard].pop_front().expect("non-empty");
        let now = self.now;
        let opened = self.router.cores[shard].open(adopt.hello, None, now);
        self.opened(adopt.socket, shard, opened, adopt.pending);
    }

    /// A connection was opened on `shard` (or refused).
    fn opened(
        &mut self,
        socket: usize,
        shard: usize,
        opened: Result<ConnId, crate::core::out::Close>,
        pending: Vec<u8>,
    ) {
        let now = self.now;
        match opened {
            Ok(conn) => {
                self.trace(format!(
                    "socket {socket}: opened on shard {shard} as {conn:?}"
                ));
                self.sockets[socket].phase = Phase::Serve { shard, conn };
                if !pending.is_empty() {
                    self.router.cores[shard].receive(conn, &pending, now);
                }
            }
            Err(close) => {
                self.trace(format!("socket {socket}: refused: {}", close.text));
                let code = close.code.unwrap_or(crate::wire::fb::ErrorCode::RouterFull);
                let frame = self.router.cores[shard].refusal(code, &close.text);
                self.sockets[socket].phase = Phase::Refuse { frame };
            }
        }
    }

    /// The router's end of a socket: what the node layer does.
    fn router_io(&mut self, index: usize) {
        let now = self.now;
        let delay = self.delay();
        if delay.as_millis() >= u128::from(self.config.heartbeat_ms) {
            // A network stall of about --node-timeout-ms on the way to a
            // node looks to the router like a node that does not read:
            // closing it as a slow consumer is then right.
            if let Some(node) = self.nodes.iter_mut().find(|n| n.socket == Some(index)) {
                node.network_stalled();
            }
        }
        let phase = self.sockets[index].phase.clone();
        match phase {
            Phase::Handshake { shard, mut input } => {
                let socket = &mut self.sockets[index];
                if socket.to_router.at_end() {
                    socket.phase = Phase::Done;
                    return;
                }
                input.extend(socket.to_router.read(now, READ_BYTES));
                let max = self.router.config.frame_bytes_max;
                let len = match check(&input, max) {
                    Check::Complete(len) => len,
                    Check::Incomplete => {
                        socket.phase = Phase::Handshake { shard, input };
                        return;
                    }
                    Check::TooLarge(_) => {
                        let frame = self.router.cores[shard]
                            .refusal(crate::wire::fb::ErrorCode::FrameTooLarge, "too large");
                        self.sockets[index].phase = Phase::Refuse { frame };
                        return;
                    }
                };
                let core = &mut self.router.cores[shard];
                let hello = match core.hello(&input[..len]) {
                    Ok(hello) => hello,
                    Err(fault) => {
                        let frame = core.refusal(fault.code(), &fault.to_string());
                        self.sockets[index].phase = Phase::Refuse { frame };
                        return;
                    }
                };
                let pending = input[len..].to_vec();
                match core.place(&hello) {
                    Ok(target) if target == shard => {
                        let opened = self.router.cores[shard].open(hello, None, now);
                        self.opened(index, shard, opened, pending);
                    }
                    Ok(target) => {
                        self.router.cores[shard].count_handoff();
                        self.trace(format!(
                            "socket {index}: handed from shard {shard} to {target}"
                        ));
                        self.sockets[index].phase = Phase::HandingOff;
                        self.router.adopts[target].push_back(Adopt {
                            socket: index,
                            hello,
                            pending,
                        });
                    }
                    Err(close) => {
                        let code = close.code.unwrap_or(crate::wire::fb::ErrorCode::RouterFull);
                        let frame = core.refusal(code, &close.text);
                        self.sockets[index].phase = Phase::Refuse { frame };
                    }
                }
            }
            Phase::Serve { shard, conn } => self.serve(index, shard, conn, delay),
            Phase::Flush {
                shard,
                conn,
                linger_until,
            } => {
                let core = &mut self.router.cores[shard];
                let socket = &mut self.sockets[index];
                match linger_until {
                    None => {
                        let bytes = core.writable(conn);
                        if !bytes.is_empty() && !socket.to_node.broken {
                            let n = socket.to_node.write(bytes, now + delay);
                            if n > 0 {
                                core.wrote(conn, n, now);
                            }
                            return;
                        }
                        socket.to_node.fin = true;
                        let until = now + CLOSE_LINGER;
                        socket.phase = Phase::Flush {
                            shard,
                            conn,
                            linger_until: Some(until),
                        };
                    }
                    Some(until) => {
                        if socket.to_router.readable(now) {
                            let bytes = socket.to_router.read(now, READ_BYTES);
                            core.receive(conn, &bytes, now);
                            return;
                        }
                        if socket.to_router.at_end() || now >= until {
                            core.socket_released(conn, now);
                            socket.to_router.break_();
                            socket.phase = Phase::Done;
                        }
                    }
                }
            }
            Phase::Refuse { frame } => {
                let socket = &mut self.sockets[index];
                socket.to_node.write(&frame, now + delay);
                socket.to_node.fin = true;
                socket.to_router.break_();
                socket.phase = Phase::Done;
            }
            Phase::HandingOff | Phase::Done => {}
        }
    }

    /// A served socket: write, read, or learn it ended; then follow what
    /// the core says to do with it.
    fn serve(&mut self, index: usize, shard: usize, conn: ConnId, delay: Duration) {
        let now = self.now;
        let core = &mut self.router.cores[shard];
        let socket = &mut self.sockets[index];
        let action = core.socket_action(conn);
        match action {
            SocketAction::Serve => {}
            SocketAction::Flush => {
                socket.phase = Phase::Flush {
                    shard,
                    conn,
                    linger_until: None,
                };
                return;
            }
            SocketAction::Drop => {
                // Only the Error frame of a timed-out connection, then gone.
                let bytes = core.writable(conn).to_vec();
                if !bytes.is_empty() && !socket.to_node.broken {
                    let n = socket.to_node.write(&bytes, now + delay);
                    core.wrote(conn, n, now);
                }
                socket.to_node.fin = true;
                socket.to_router.break_();
                core.socket_released(conn, now);
                socket.phase = Phase::Done;
                return;
            }
        }
        if socket.to_node.broken {
            core.socket_lost(conn, Lost::Failed("write failed: broken pipe".into()), now);
            return;
        }
        let bytes = core.writable(conn);
        if !bytes.is_empty() && socket.to_node.room() > 0 {
            let n = socket.to_node.write(bytes, now + delay);
            core.wrote(conn, n, now);
            return;
        }
        // As the driver: a reader that may not read is marked paused, and
        // neither reads nor learns that the socket ended.
        if !core.may_read(conn) {
            return;
        }
        if core.has_input(conn) {
            // Frames kept when its budget ran out come before new bytes.
            core.receive(conn, &[], now);
            return;
        }
        if socket.to_router.readable(now) {
            let bytes = socket.to_router.read(now, READ_BYTES);
            core.receive(conn, &bytes, now);
            return;
        }
        if socket.to_router.at_end() {
            let lost = if socket.to_router.broken {
                Lost::Failed("read failed: connection reset".into())
            } else {
                Lost::Closed
            };
            core.socket_lost(conn, lost, now);
        }
    }

    /// A delay for a socket write: usually short, sometimes long.
    fn delay(&mut self) -> Duration {
        if self.rng.chance(self.config.delay_spike) {
            self.faults.spikes += 1;
            // Without acks a connection must not time out (what is in a
            // broken connection is lost then, as documented): spikes stay
            // below a heartbeat.
            let max = if self.config.acks {
                300
            } else {
                u64::from(self.config.heartbeat_ms) / 2
            };
            let long = Duration::from_millis(self.rng.range(1..=max));
            if self.settling {
                // Faults stop while everything settles, long detours too
                // (a detour past --node-timeout-ms times the node out, and
                // it could go on for ever).
                return Duration::from_micros(500);
            }
            long
        } else {
            Duration::from_micros(self.rng.range(5..=500))
        }
    }

    fn node_io(&mut self, index: usize) {
        let now = self.now;
        let delay = self.delay();
        let line = self.nodes[index].io(
            &mut self.sockets,
            &mut self.oracle,
            now,
            delay,
            &mut self.violations,
        );
        if let Some(line) = line {
            self.trace(format!("node {index}: {line}"));
        }
    }

    fn reconnect(&mut self, index: usize) {
        let now = self.now;
        let delay = self.delay();
        let shards = self.router.cores.len();
        let accepting = self.rng.index(shards);
        let socket = self.sockets.len();
        self.sockets.push(Socket {
            to_router: Pipe::new(PIPE_BYTES),
            to_node: Pipe::new(PIPE_BYTES),
            router_generation: self.router.generation,
            phase: Phase::Handshake {
                shard: accepting,
                input: Vec::new(),
            },
        });
        let line = self.nodes[index].connect(socket, &mut self.sockets, now, delay);
        self.trace(format!(
            "node {index}: {line} (socket {socket}, accepted on shard {accepting})"
        ));
    }

    /// Faults of this step, each with its probability.
    fn faults(&mut self) {
        let config = self.config.clone();
        let node = self.rng.index(self.nodes.len());
        if self.rng.chance(config.cut) {
            if let Some(socket) = self.nodes[node].socket {
                self.faults.cuts += 1;
                let socket = &mut self.sockets[socket];
                socket.to_router.break_();
                socket.to_node.break_();
                self.trace(format!("fault: cut node {node}'s connection"));
            }
        }
        if self.rng.chance(config.crash)
            && self.nodes[node].crash(&mut self.sockets, &mut self.oracle, self.now, &mut self.rng)
        {
            self.faults.crashes += 1;
            self.trace(format!("fault: node {node} crashed"));
        }
        if self.rng.chance(config.goodbye) && self.nodes[node].goodbye(&mut self.sockets, self.now)
        {
            self.faults.goodbyes += 1;
            self.trace(format!("fault: node {node} says Goodbye"));
        }
        if self.rng.chance(config.stop_reading) {
            let millis = self.rng.range(10..=8 * u64::from(config.heartbeat_ms));
            if self.nodes[node].stop_reading(self.now + Duration::from_millis(millis)) {
                self.faults.stops += 1;
                self.trace(format!("fault: node {node} stops reading for {millis} ms"));
            }
        }
        if self.rng.chance(config.router_restart) {
            self.restart_router();
        }
    }

    /// Kills the router process (every socket breaks) and starts a new one.
    fn restart_router(&mut self) {
        self.faults.restarts += 1;
        self.trace("fault: the router restarts".into());
        for socket in &mut self.sockets {
            if socket.router_generation == self.router.generation {
                socket.to_router.break_();
                socket.to_node.break_();
                socket.phase = Phase::Done;
            }
        }
        let generation = self.router.generation + 1;
        self.router = Router::start(self.router.config.clone(), generation, self.now);
    }

    /// Every bound the router states, after every step.
    pub fn check_bounds(&mut self) {
        let config = &self.router.config;
        let soft = config.out_buffer_bytes;
        let hard = 2 * soft;
        let frame_max = config.frame_bytes_max as usize + 4;
        let shards = self.router.cores.len();
        // What may be on its way to one connection when it becomes
        // congested: every batch of every channel and outbox towards it.
        let in_flight =
            shards * (LINK_BATCHES_MAX + 1) * (BATCH_BYTES_TARGET + frame_max) + OUTBOX_BYTES_HIGH;
        let mut found = Vec::new();
        for (shard, core) in self.router.cores.iter().enumerate() {
            let directory = core.directory();
            if directory.slots_taken(shard) > config.connections_per_shard_max {
                found.push(format!(
                    "shard {shard}: {} connections",
                    directory.slots_taken(shard)
                ));
            }
            let metrics = core.snapshot();
            if metrics.fanout_jobs as usize > FANOUT_JOBS_MAX {
                found.push(format!("shard {shard}: {} Fanouts", metrics.fanout_jobs));
            }
            for class in CLASSES {
                let bytes = match class {
                    Class::Forward => metrics.outbox_forward_bytes,
                    Class::Response => metrics.outbox_response_bytes,
                    Class::Bounce => metrics.outbox_bounce_bytes,
                } as usize;
                // A read (or a batch) in progress may pass the mark once.
                let bound =
                    shards * (OUTBOX_BYTES_HIGH + config.read_buffer_bytes() + 64 * frame_max);
                if bytes > bound {
                    found.push(format!(
                        "shard {shard}: {class:?} outboxes hold {bytes} bytes"
                    ));
                }
            }
            for (id, conn) in core.conns().iter() {
                let queued = conn.queued_bytes();
                // A suspended connection parks up to the park (what it held
                // when it was suspended may be more: nothing is added then).
                let open_bound = hard.max(soft + in_flight) + frame_max;
                let bound = match conn.state {
                    LinkState::Suspended { .. } => {
                        open_bound.max(config.park_bytes_max + frame_max)
                    }
                    _ => open_bound,
                };
                if queued > bound {
                    found.push(format!(
                        "shard {shard}: connection {id:?} of {} holds {queued} bytes ({:?})",
                        conn.name, conn.state
                    ));
                }
                if conn.held_event_bytes > soft {
                    found.push(format!(
                        "shard {shard}: {} NodeEvent bytes held",
                        conn.held_event_bytes
                    ));
                }
                let budget = conn.budget;
                // (A reader stops at the frame after the one that spent
                // its budget: one frame's worth over.)
                if budget.locates > LOCATES_IN_FLIGHT_MAX
                    || budget.fanouts > FANOUTS_IN_FLIGHT_MAX
                    || budget.fanout_recipients
                        > FANOUT_RECIPIENTS_IN_FLIGHT_MAX + u64::from(config.fanout_max)
                    || budget.fan_out_bytes > FANOUT_BYTES_IN_FLIGHT_MAX + frame_max as u64
                    || budget.sync_sessions > SYNC_SESSIONS_IN_FLIGHT_MAX + frame_max as u64
                {
                    found.push(format!("shard {shard}: budget past its bound: {budget:?}"));
                }
                if conn.pending_reports.len() > crate::limits::PENDING_REPORTS_MAX {
                    found.push(format!(
                        "shard {shard}: {} pending reports",
                        conn.pending_reports.len()
                    ));
                }
            }
        }
        for channels in &self.router.channels {
            for to in channels {
                for channel in to {
                    assert!(channel.batches.len() <= LINK_BATCHES_MAX);
                }
            }
        }
        for text in found {
            self.violations.push(Violation(format!("bound: {text}")));
        }
    }

    /// After settling, nothing may be left in flight: every batch handed
    /// over and handled, every job done, every node connected.
    fn check_settled(&mut self) {
        let mut found = Vec::new();
        for (shard, core) in self.router.cores.iter().enumerate() {
            if core.has_batches() {
                found.push(format!("shard {shard} still holds batches"));
            }
            if core.has_work() {
                found.push(format!("shard {shard} still has sliced work"));
            }
            for (to, classes) in self.router.channels[shard].iter().enumerate() {
                for (class, channel) in classes.iter().enumerate() {
                    if !channel.batches.is_empty() {
                        found.push(format!(
                            "channel {shard} -> {to} class {class}: {} batches never taken",
                            channel.batches.len()
                        ));
                    }
                }
            }
        }
        for text in found {
            self.violations.push(Violation(format!("settled: {text}")));
        }
    }

    /// At the end: every session belongs to a live node, and the login
    /// policy holds for every user.
    fn check_tables(&mut self) {
        let users = node::all_users(self.config.users);
        let mut found = Vec::new();
        for (shard, core) in self.router.cores.iter().enumerate() {
            let directory = core.directory();
            for user in &users {
                let sessions: Vec<_> = core.table().sessions(user.as_bytes()).collect();
                for session in &sessions {
                    let state = directory.state(session.node);
                    if state.connections == 0 {
                        found.push(format!(
                            "shard {shard}: {user}/{} of node {:?} outlived its node",
                            String::from_utf8_lossy(session.device),
                            session.node
                        ));
                    }
                }
                let violated = match self.config.login_policy {
                    LoginPolicy::AllowAll => false,
                    LoginPolicy::SameDeviceKick => {
                        let mut devices: Vec<_> = sessions.iter().map(|s| s.device).collect();
                        devices.sort();
                        devices.windows(2).any(|w| w[0] == w[1])
                    }
                    LoginPolicy::SamePlatformKick => {
                        let mut platforms: Vec<_> = sessions.iter().map(|s| s.platform).collect();
                        platforms.sort();
                        let mut devices: Vec<_> = sessions.iter().map(|s| s.device).collect();
                        devices.sort();
                        platforms.windows(2).any(|w| w[0] == w[1])
                            || devices.windows(2).any(|w| w[0] == w[1])
                    }
                    LoginPolicy::SingleSession => sessions.len() > 1,
                };
                if violated {
                    found.push(format!(
                        "shard {shard}: {user}'s sessions break {:?}: {sessions:?}",
                        self.config.login_policy
                    ));
                }
            }
        }
        for text in found {
            self.violations.push(Violation(text));
        }
    }
}

/// Runs one seed. A panic (of the router, a node or the simulation) is a
/// failure of the seed like a broken promise.
pub fn run_seed(seed: u64) -> Report {
    let config = SimConfig::from_seed(seed);
    let run = std::panic::catch_unwind(|| World::new(config.clone()).run());
    run.unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        Report {
            seed,
            config,
            steps: 0,
            virtual_time: Time::ZERO,
            violations: vec![Violation(format!("panicked: {text}"))],
            trace: Vec::new(),
            faults: FaultCounts::default(),
            routes: 0,
            delivers: 0,
            metrics: Default::default(),
        }
    })
}

/// Runs one configuration.
pub fn run(config: SimConfig) -> Report {
    World::new(config).run()
}
