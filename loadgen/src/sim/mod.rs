//! Simulated IM nodes.
//!
//! Each generator thread (a pinned glommio executor, a [`Worker`]) runs some
//! of the nodes. A [`SimNode`] holds its connections ([`Link`]s), sends
//! session operations and messages, and logs everything for the oracle.
//! What differs between targets (the imrouter protocol through the `wire`
//! module, or NATS's text protocol) is in [`imrouter`] and [`nats`].

pub mod imrouter;
pub mod nats;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ::imrouter::shard::signal::{Broadcast, Signal};
use ::imrouter::wire::Encoder;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;

use crate::config::{Plan, Target};
use crate::oracle::{Observed, ObservedKind, Sent, SessionChange, ALL_DEVICES};
use crate::workload::{self, message_id, Recipients, Rng};

/// Bytes a link may have queued before its sender waits for the writer: a
/// router that stops reading makes the schedule fall behind (and the delay
/// shows in latency, measured from each message's due time), not the
/// generator's memory grow.
pub const LINK_BACKLOG_MAX: usize = 4 * 1024 * 1024;

/// Nanoseconds since the start of the run, the same on every thread.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }

    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter on its own cache line.
#[derive(Default)]
#[repr(align(64))]
pub struct PaddedU64(pub AtomicU64);

/// State shared by every thread of the run.
pub struct Shared {
    pub clock: Clock,
    /// Per node: events (copies and verdicts) its messages should cause.
    pub expected_events: Box<[PaddedU64]>,
    /// Per node: events observed for its messages, by whichever node saw them.
    pub observed_events: Box<[PaddedU64]>,
    /// Nodes that opened and confirmed their sessions.
    pub ready: AtomicU64,
    /// When traffic starts (0 until the coordinator sets it).
    pub start_ns: AtomicU64,
    /// Set after the drain: stop reading and hand in the logs.
    pub finished: AtomicBool,
    /// Set when a node failed; the run is aborted.
    pub failed: AtomicBool,
    pub errors: Mutex<Vec<String>>,
    /// Time of the last observation anywhere, for the drain's quiet test.
    pub last_observed_ns: AtomicU64,
    /// Policy scenario: nodes whose contested opens are confirmed.
    pub policy_confirmed: AtomicU64,
    /// Restart scenario: when the router was killed (0: not yet).
    pub killed_ns: AtomicU64,
    /// Failover and restart: what happened to the connections, for the
    /// summary.
    pub reconnect_log: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(nodes: u32) -> Self {
        let counters = || (0..nodes).map(|_| PaddedU64::default()).collect();
        Shared {
            clock: Clock::new(),
            expected_events: counters(),
            observed_events: counters(),
            ready: AtomicU64::new(0),
            start_ns: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            last_observed_ns: AtomicU64::new(0),
            policy_confirmed: AtomicU64::new(0),
            killed_ns: AtomicU64::new(0),
            reconnect_log: Mutex::new(Vec::new()),
        }
    }

    pub fn fail(&self, error: String) {
        self.errors.lock().expect("errors lock").push(error);
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// Counters of one thread, read by the coordinator for progress lines.
#[derive(Default)]
pub struct WorkerStats {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub offline: AtomicU64,
    pub busy: AtomicU64,
    /// Error frames, unexpected frames, failed connections.
    pub errors: AtomicU64,
    /// Session opens and closes sent, the initial ones included.
    pub session_ops: AtomicU64,
    /// Churn opens and closes sent in the measured window.
    pub session_ops_measured: AtomicU64,
}

impl WorkerStats {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The run's timing, fixed once traffic starts.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start_ns: u64,
    /// Messages due from here on are measured.
    pub measure_from_ns: u64,
    pub end_ns: u64,
}

/// One generator thread's context.
pub struct Worker {
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    pub stats: Arc<WorkerStats>,
    pub recipients: Recipients,
    pub schedule: Cell<Option<Schedule>>,
    /// Rung every `--tick-us` by the thread's pacer: open-loop senders wait
    /// on it, so one timer wakes every node of the thread at once.
    pub tick: Broadcast,
    /// Latency in nanoseconds from due time to receipt, measured messages.
    pub latency: RefCell<Histogram<u64>>,
    /// How late (ns) measured messages left the generator after their due
    /// time: the generator's own share of `latency`.
    pub send_lateness: RefCell<Histogram<u64>>,
    pub observed: RefCell<Vec<Observed>>,
}

impl Worker {
    pub fn new(
        plan: Arc<Plan>,
        shared: Arc<Shared>,
        stats: Arc<WorkerStats>,
        recipients: Recipients,
    ) -> Self {
        Worker {
            plan,
            shared,
            stats,
            recipients,
            schedule: Cell::new(None),
            tick: Broadcast::default(),
            latency: RefCell::new(
                Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
            ),
            send_lateness: RefCell::new(
                Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
            ),
            observed: RefCell::new(Vec::new()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// Records what a node received, and credits the sending node's window.
    pub fn observe(&self, observed: Observed, events: u64) {
        if observed.id & message_id::PROBE == 0 {
            let sender = message_id::node(observed.id) as usize;
            if let Some(counter) = self.shared.observed_events.get(sender) {
                counter.0.fetch_add(events, Ordering::Relaxed);
            }
        }
        self.shared
            .last_observed_ns
            .store(observed.at_ns, Ordering::Relaxed);
        self.observed.borrow_mut().push(observed);
    }

    /// Records a delivery's latency if the message was due in the
    /// measured window.
    pub fn record_latency(&self, due_ns: u64, at_ns: u64) {
        if let Some(schedule) = self.schedule.get() {
            if due_ns >= schedule.measure_from_ns && due_ns < schedule.end_ns {
                let latency = at_ns.saturating_sub(due_ns).max(1);
                let _ = self.latency.borrow_mut().record(latency);
            }
        }
    }
}

/// One TCP connection of a simulated node, with a bounded output buffer
/// flushed by its own writer task (one write per batch).
pub struct Link {
    stream: RefCell<TcpStream>,
    out: RefCell<Vec<u8>>,
    in_flight: Cell<usize>,
    /// Stream bytes pushed since the node core last heard of them.
    stream_written: Cell<u64>,
    wake: Signal,
    pub room: Broadcast,
    closed: Cell<bool>,
    /// imrouter: the connection's node core (frames, Pings, stream offsets
    /// and Acks, resumes), kept across reconnects. `None` for NATS.
    pub core: RefCell<Option<::imrouter::client::NodeCore>>,
    /// The connection is cut or failed and not yet reconnected: nothing is
    /// sent on it.
    down: Cell<bool>,
    /// Frames read from now on are dropped unprocessed (a cut under way).
    pub discard: Cell<bool>,
    /// The connection is expected to end (a deliberate cut).
    pub expect_end: Cell<bool>,
    /// Rung when the reader ends.
    pub ended: Broadcast,
}

impl Link {
    pub fn new(stream: TcpStream, core: Option<::imrouter::client::NodeCore>) -> Rc<Self> {
        let _ = stream.set_nodelay(true);
        Rc::new(Link {
            stream: RefCell::new(stream),
            out: RefCell::new(Vec::with_capacity(64 * 1024)),
            in_flight: Cell::new(0),
            stream_written: Cell::new(0),
            wake: Signal::default(),
            room: Broadcast::default(),
            closed: Cell::new(false),
            core: RefCell::new(core),
            down: Cell::new(false),
            discard: Cell::new(false),
            expect_end: Cell::new(false),
            ended: Broadcast::default(),
        })
    }

    /// Puts a new connection under this link (after a cut or failure):
    /// nothing queued for the old one is sent.
    pub fn reopen(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        *self.stream.borrow_mut() = stream;
        self.out.borrow_mut().clear();
        self.in_flight.set(0);
        self.closed.set(false);
        self.discard.set(false);
        self.expect_end.set(false);
        self.down.set(false);
        self.room.notify_all();
    }

    pub fn is_down(&self) -> bool {
        self.down.get()
    }

    pub fn set_down(&self) {
        self.down.set(true);
    }

    /// Shuts the connection's write side down (the router reads to the end
    /// of what was sent, then sees it closed).
    pub fn shutdown_write(&self) {
        use std::os::fd::AsRawFd;
        let fd = self.stream.borrow().as_raw_fd();
        // SAFETY: `fd` is the open socket `stream` owns.
        unsafe {
            libc::shutdown(fd, libc::SHUT_WR);
        }
    }

    /// Queues frames of the node's stream (everything but Pings, Pongs
    /// and Acks), encoded here rather than by the node core: counted, so
    /// that the core knows where its stream is when it resumes.
    pub fn push(&self, bytes: &[u8]) {
        self.stream_written
            .set(self.stream_written.get() + bytes.len() as u64);
        self.push_control(bytes);
    }

    /// Queues what the node core wrote (Acks and Pongs), or bytes of the
    /// NATS protocol.
    pub fn push_control(&self, bytes: &[u8]) {
        self.out.borrow_mut().extend_from_slice(bytes);
        self.wake.notify();
    }

    /// Stream bytes pushed since the last call (see
    /// `NodeCore::wrote_stream`).
    pub fn take_stream_written(&self) -> u64 {
        self.stream_written.replace(0)
    }

    pub fn backlog(&self) -> usize {
        self.out.borrow().len() + self.in_flight.get()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Waits until the backlog is below `LINK_BACKLOG_MAX`.
    pub async fn wait_for_room(&self) {
        if self.backlog() >= LINK_BACKLOG_MAX {
            self.room
                .wait_until(|| self.backlog() < LINK_BACKLOG_MAX || self.closed.get())
                .await;
        }
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)).await
    }

    /// Reads straight into the link's node core (at most `max` bytes).
    pub async fn read_into_core(&self, max: usize) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut guard = self.core.borrow_mut();
            let core = guard.as_mut().expect("an imrouter link");
            let buffer = core.read_buffer(max);
            let read = Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buffer);
            if let std::task::Poll::Ready(Ok(n)) = read {
                core.filled(n, ::imrouter::time::Time::ZERO);
            }
            read
        })
        .await
    }

    /// Takes the node core out (to reconnect with it).
    pub fn take_core(&self) -> Option<::imrouter::client::NodeCore> {
        self.core.borrow_mut().take()
    }

    pub fn put_core(&self, core: ::imrouter::client::NodeCore) {
        *self.core.borrow_mut() = Some(core);
    }

    /// Writes everything pushed, batch by batch, until the link closes.
    pub async fn run_writer(self: Rc<Self>) {
        let mut spare = Vec::with_capacity(64 * 1024);
        loop {
            while self.out.borrow().is_empty() {
                if self.closed.get() {
                    return;
                }
                self.wake.wait().await;
            }
            std::mem::swap(&mut *self.out.borrow_mut(), &mut spare);
            self.in_flight.set(spare.len());
            let mut written = 0;
            while written < spare.len() {
                let bytes = &spare[written..];
                match poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, bytes))
                    .await
                {
                    Ok(0) | Err(_) => {
                        self.close();
                        return;
                    }
                    Ok(n) => written += n,
                }
            }
            self.in_flight.set(0);
            spare.clear();
            self.room.notify_all();
        }
    }

    pub fn close(&self) {
        self.closed.set(true);
        self.wake.notify();
        self.room.notify_all();
    }
}

/// Churn bookkeeping of one node: which of its sessions are closed, and
/// the probes that confirm each batch of changes.
#[derive(Default)]
pub struct ChurnState {
    pub closed: HashSet<u64>,
    pub changes: Vec<(SessionChange, u64)>,
    /// Probe sequence -> batch.
    pub probe_batch: HashMap<u64, u64>,
    /// Batch -> (probes outstanding, latest confirmation).
    pub batch_pending: HashMap<u64, (u32, u64)>,
    /// Batch -> when every probe of it came back.
    pub batch_confirmed: HashMap<u64, u64>,
    pub next_batch: u64,
}

/// One simulated IM node.
pub struct SimNode {
    pub index: u32,
    pub worker: Rc<Worker>,
    pub links: Vec<Rc<Link>>,
    /// The router's shard count (1 for NATS).
    pub shard_count: usize,
    encoder: RefCell<Encoder>,
    payload: RefCell<Vec<u8>>,
    pub rng: RefCell<Rng>,
    from_user: String,
    pub sent: RefCell<Vec<Sent>>,
    expected_events: Cell<u64>,
    /// One user id per router shard, owned by it and never opened; probes
    /// are Routes to these.
    probe_users: Vec<String>,
    next_probe: Cell<u64>,
    pub probes_outstanding: Cell<u64>,
    pub probes_changed: Broadcast,
    pub churn: RefCell<ChurnState>,
    /// Policy scenario: what this node saw, and a signal for each Located.
    pub policy: RefCell<PolicyLog>,
    pub policy_changed: Broadcast,
    /// When this node's connection went down (cut or failed).
    pub failures: RefCell<Vec<u64>>,
    /// Session changes the router made (a purge after a lost connection)
    /// and resyncs, for the oracle.
    pub extra_changes: RefCell<Vec<SessionChange>>,
    /// The last SessionSync generation acknowledged, and its signal.
    pub sync_acked: Cell<u64>,
    pub sync_changed: Broadcast,
}

/// Policy scenario: the Kicks a node received for contested users, and
/// (node 0) the Located answers.
#[derive(Default)]
pub struct PolicyLog {
    /// (user, device).
    pub kicks: Vec<(u32, u8)>,
    /// user -> [(node, device, platform)].
    pub located: HashMap<u32, Vec<(u32, u8, u8)>>,
}

impl SimNode {
    pub fn new(index: u32, worker: Rc<Worker>, links: Vec<Rc<Link>>, shard_count: usize) -> Self {
        let plan = &worker.plan;
        let probe_users = (0..shard_count)
            .map(|shard| {
                ::imrouter::placement::id_on_shard(&format!("probe-{index}"), shard, shard_count)
            })
            .collect();
        let population = plan.population;
        let hosted = (index..population.users)
            .step_by(population.nodes as usize)
            .next();
        let from_user = match hosted {
            Some(user) => String::from_utf8(workload::user_id(user).to_vec()).expect("ascii"),
            None => format!("node-{index}"),
        };
        SimNode {
            index,
            rng: RefCell::new(Rng::new(plan.seed ^ (u64::from(index) << 32) ^ 0xA5A5)),
            worker,
            links,
            shard_count,
            encoder: RefCell::new(Encoder::new()),
            payload: RefCell::new(Vec::new()),
            from_user,
            sent: RefCell::new(Vec::new()),
            expected_events: Cell::new(0),
            probe_users,
            next_probe: Cell::new(0),
            probes_outstanding: Cell::new(0),
            probes_changed: Broadcast::default(),
            churn: RefCell::new(ChurnState::default()),
            policy: RefCell::new(PolicyLog::default()),
            policy_changed: Broadcast::default(),
            failures: RefCell::new(Vec::new()),
            extra_changes: RefCell::new(Vec::new()),
            sync_acked: Cell::new(0),
            sync_changed: Broadcast::default(),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.worker.plan
    }

    /// The link a frame about `user` goes on: its owner shard's when
    /// shard-direct, else the only one.
    pub fn link_for(&self, user: &[u8]) -> &Rc<Link> {
        if self.links.len() > 1 {
            &self.links[::imrouter::placement::shard_for_user(user, self.shard_count)]
        } else {
            &self.links[0]
        }
    }

    /// Messages in flight, in events (copies and verdicts) still expected.
    pub fn in_flight_events(&self) -> u64 {
        let observed = self.worker.shared.observed_events[self.index as usize]
            .0
            .load(Ordering::Relaxed);
        self.expected_events.get().saturating_sub(observed)
    }

    /// Events (Deliver copies, verdicts) message `sent` should cause when
    /// sessions do not change: one copy per destination node, one verdict
    /// for an offline recipient, plus the Routed verdict with ACK.
    pub fn expected_for(&self, sent: &Sent) -> u64 {
        if sent.offline {
            return 1;
        }
        let population = self.plan().population;
        let mask = if sent.to_device == ALL_DEVICES {
            (1u64 << population.devices_per_user) - 1
        } else {
            1 << sent.to_device
        };
        u64::from(population.node_count(sent.user, mask)) + u64::from(self.plan().ack)
    }

    /// Picks a recipient and sends one message due at `due_ns` (none while
    /// the node's connection is down: it would be a message never sent).
    pub fn send_message(&self, due_ns: u64, measured: bool) {
        if self.links.iter().any(|link| link.is_down()) {
            return;
        }
        let plan = self.plan();
        let population = plan.population;
        let (offline, user, to_device) = {
            let mut rng = self.rng.borrow_mut();
            if plan.offline_ratio > 0.0 && rng.unit() < plan.offline_ratio {
                (
                    true,
                    rng.below(population.offline_users as u64) as u32,
                    ALL_DEVICES,
                )
            } else {
                let mut user = self.worker.recipients.pick(&mut rng);
                // Nodes route only users they do not host themselves.
                for _ in 0..8 {
                    if population.nodes == 1 || population.node_of(user, 0) != self.index {
                        break;
                    }
                    user = self.worker.recipients.pick(&mut rng);
                }
                let to_device = if plan.to_device_ratio > 0.0 && rng.unit() < plan.to_device_ratio {
                    rng.below(population.devices_per_user as u64) as u8
                } else {
                    ALL_DEVICES
                };
                (false, user, to_device)
            }
        };
        let seq = self.sent.borrow().len() as u64;
        let id = message_id::new(self.index, seq);
        let to_user = if offline {
            workload::offline_user_id(user)
        } else {
            workload::user_id(user)
        };
        let mut payload = self.payload.borrow_mut();
        workload::fill_payload(&mut payload, plan.payload_bytes, due_ns, id);
        let link = self.link_for(&to_user);
        match plan.target {
            Target::Imrouter => {
                let device = (to_device != ALL_DEVICES).then(|| workload::device_id(to_device));
                let flags = if plan.ack {
                    ::imrouter::wire::ROUTE_FLAG_ACK
                } else {
                    0
                };
                let mut encoder = self.encoder.borrow_mut();
                let frame = encoder.route(&::imrouter::wire::RouteFrame {
                    message_id: id,
                    from_user: &self.from_user,
                    from_device: "d0",
                    to_user: std::str::from_utf8(&to_user).expect("ascii"),
                    to_device: device.as_deref(),
                    flags,
                    payload: &payload,
                });
                link.push(frame);
            }
            Target::Nats => nats::publish(link, &to_user, &payload),
        }
        let sent = Sent {
            sent_ns: self.worker.now_ns(),
            user,
            offline,
            to_device,
            measured,
            fanout: false,
        };
        let events = self.expected_for(&sent);
        self.log_sent(sent, due_ns, events);
    }

    /// Logs a message just sent: how late it left, the events it should
    /// cause (for the window and the drain), and the message itself.
    fn log_sent(&self, sent: Sent, due_ns: u64, events: u64) {
        if sent.measured {
            let _ = self
                .worker
                .send_lateness
                .borrow_mut()
                .record(sent.sent_ns.saturating_sub(due_ns).max(1));
        }
        self.expected_events
            .set(self.expected_events.get() + events);
        self.worker.shared.expected_events[self.index as usize]
            .0
            .store(self.expected_events.get(), Ordering::Relaxed);
        self.sent.borrow_mut().push(sent);
        WorkerStats::add(&self.worker.stats.sent, 1);
    }

    /// Events Fanout `id` causes: one Deliver per destination node, and the
    /// Status.
    pub fn fanout_events(&self, id: u64) -> u64 {
        let plan = self.plan();
        let group = workload::Group::of(id, &plan.population, plan.group_sizes, plan.offline_ratio);
        let destinations = group.destination_nodes(&plan.population);
        destinations.iter().filter(|&&hit| hit).count() as u64 + 1
    }

    /// Sends a SessionOpen of `user` (any id) for device `device`, waiting
    /// for room on the link first.
    pub async fn send_raw_open(
        &self,
        user: &[u8],
        device: u8,
        platform: ::imrouter::wire::fb::Platform,
        seq: u64,
    ) {
        let link = self.link_for(user).clone();
        if link.backlog() >= LINK_BACKLOG_MAX {
            link.wait_for_room().await;
        }
        let user = std::str::from_utf8(user).expect("ascii ids");
        let device = workload::device_id(device);
        let mut encoder = self.encoder.borrow_mut();
        link.push(encoder.session_open_seq(user, &device, platform, seq));
        WorkerStats::add(&self.worker.stats.session_ops, 1);
    }

    /// Sends Locate(`user`) with `query_id`.
    pub fn send_locate(&self, user: &[u8], query_id: u64) {
        let user_str = std::str::from_utf8(user).expect("ascii ids");
        let mut encoder = self.encoder.borrow_mut();
        self.link_for(user).push(encoder.locate(query_id, user_str));
    }

    /// Sends one Fanout due at `due_ns` to the group its id picks.
    pub fn send_fanout(&self, due_ns: u64, measured: bool) {
        let plan = self.plan();
        let population = plan.population;
        let seq = self.sent.borrow().len() as u64;
        let id = message_id::new(self.index, seq);
        let group = workload::Group::of(id, &population, plan.group_sizes, plan.offline_ratio);
        let ids: Vec<[u8; 16]> = group
            .members(&population)
            .map(workload::user_id)
            .chain(
                group
                    .offline_members(&population)
                    .map(workload::offline_user_id),
            )
            .collect();
        let to_users: Vec<&str> = ids
            .iter()
            .map(|id| std::str::from_utf8(id).expect("ascii"))
            .collect();
        let mut payload = self.payload.borrow_mut();
        workload::fill_payload(&mut payload, plan.payload_bytes, due_ns, id);
        {
            let mut encoder = self.encoder.borrow_mut();
            let frame = encoder.fanout(&::imrouter::wire::FanoutFrame {
                message_id: id,
                from_user: &self.from_user,
                from_device: "d0",
                to_users: &to_users,
                flags: 0,
                payload: &payload,
            });
            self.links[0].push(frame);
        }
        let sent = Sent {
            sent_ns: self.worker.now_ns(),
            user: 0,
            offline: false,
            to_device: ALL_DEVICES,
            measured,
            fanout: true,
        };
        self.log_sent(sent, due_ns, self.fanout_events(id));
    }

    /// Sends SessionOpen (`open`) or SessionClose for device `device` of
    /// `user`.
    pub fn send_session_op(&self, user: u32, device: u8, open: bool) {
        let id = workload::user_id(user);
        let user_str = std::str::from_utf8(&id).expect("ascii");
        let device_str = workload::device_id(device);
        let mut encoder = self.encoder.borrow_mut();
        let frame = if open {
            encoder.session_open(
                user_str,
                &device_str,
                ::imrouter::wire::fb::Platform::Mobile,
            )
        } else {
            encoder.session_close(user_str, &device_str)
        };
        self.link_for(&id).push(frame);
        WorkerStats::add(&self.worker.stats.session_ops, 1);
    }

    /// Sends a probe to `shard` (see docs/PROTOCOL.md, "Confirming an
    /// open"); returns its sequence.
    pub fn send_probe(&self, shard: usize) -> u64 {
        let seq = self.next_probe.get();
        self.next_probe.set(seq + 1);
        let user = &self.probe_users[shard];
        let link = if self.links.len() > 1 {
            &self.links[shard]
        } else {
            &self.links[0]
        };
        let mut encoder = self.encoder.borrow_mut();
        let frame = encoder.route(&::imrouter::wire::RouteFrame {
            message_id: message_id::PROBE | message_id::new(self.index, seq),
            from_user: &self.from_user,
            from_device: "d0",
            to_user: user,
            to_device: None,
            flags: ::imrouter::wire::ROUTE_FLAG_ACK,
            payload: &[],
        });
        link.push(frame);
        self.probes_outstanding
            .set(self.probes_outstanding.get() + 1);
        seq
    }

    /// A probe came back (its Offline verdict).
    pub fn on_probe_verdict(&self, seq: u64, at_ns: u64) {
        self.probes_outstanding
            .set(self.probes_outstanding.get().saturating_sub(1));
        let mut churn = self.churn.borrow_mut();
        if let Some(batch) = churn.probe_batch.remove(&seq) {
            let done = {
                let pending = churn
                    .batch_pending
                    .get_mut(&batch)
                    .expect("batch of a probe");
                pending.0 -= 1;
                pending.1 = pending.1.max(at_ns);
                (pending.0 == 0).then_some(pending.1)
            };
            if let Some(confirmed) = done {
                churn.batch_pending.remove(&batch);
                churn.batch_confirmed.insert(batch, confirmed);
            }
        }
        drop(churn);
        self.probes_changed.notify_all();
    }

    /// Waits until every probe sent so far came back.
    pub async fn wait_for_probes(&self) {
        self.probes_changed
            .wait_until(|| {
                self.probes_outstanding.get() == 0 || self.links.iter().any(|l| l.is_closed())
            })
            .await;
    }

    /// Opens every session this node hosts and waits until the router
    /// applied them (one probe per shard, on every link).
    pub async fn open_sessions(&self) {
        let population = self.plan().population;
        for (user, device) in population.sessions_of(self.index) {
            self.send_session_op(user, device, true);
            let link = self.link_for(&workload::user_id(user));
            if link.backlog() >= LINK_BACKLOG_MAX {
                link.wait_for_room().await;
            }
        }
        self.probe_all_shards();
        self.wait_for_probes().await;
    }

    /// One probe per shard, on the link(s) frames to that shard go on.
    pub fn probe_all_shards(&self) -> Vec<u64> {
        (0..self.shard_count)
            .map(|shard| self.send_probe(shard))
            .collect()
    }

    /// Records a Deliver/message and its latency.
    pub fn observe_delivery(
        &self,
        id: u64,
        due_ns: u64,
        user: Option<u32>,
        devices: u64,
        intact: bool,
    ) {
        let at_ns = self.worker.now_ns();
        self.worker.record_latency(due_ns, at_ns);
        self.worker.observe(
            Observed {
                id,
                at_ns,
                kind: ObservedKind::Deliver {
                    node: self.index,
                    user,
                    devices,
                    intact,
                },
            },
            1,
        );
        WorkerStats::add(&self.worker.stats.delivered, 1);
    }
}
