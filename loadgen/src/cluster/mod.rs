//! Scenarios against a cluster of routers: the generator starts etcd
//! (Debian's etcd-server, on 127.0.0.1 with a temporary data directory)
//! and the routers itself (`imrouter serve` with the cluster flags, each
//! reaching etcd through a proxy that can cut it), runs simulated nodes
//! on the node core's cluster logic (`imrouter::client::cluster`: a link
//! per router, the slot map, resends, duplicate dropping, resyncs) that
//! learn the map from the first router alone, and injects the scenario's
//! faults while traffic flows:
//!
//! | scenario | fault |
//! |---|---|
//! | `cluster` | none: steady traffic, for the router CPU per message |
//! | `router-kill` | SIGKILL of one router at 40% of the traffic |
//! | `router-drain` | SIGTERM of one router at 40%: it hands its slots over, tells its nodes to leave (within 2 s), and exits |
//! | `router-pause` | SIGSTOP of one router at 30% for the lease TTL + 1.5 s, then SIGCONT |
//! | `partition` | one router cut from etcd at 20% for the TTL + 1.5 s; node 0 cut from another router at 60% for 4 s |
//! | `rebalance` | a fourth router started at 15%; the first one drained (`imrouter cluster drain`) at 55% |
//!
//! Every message is judged by [`oracle`]. Each fault reports its
//! failover time: from the fault to the last outcome of the messages sent
//! in the 100 ms after it (they include messages for every slot the fault
//! touched, each resolved only once its slot is served again).

pub mod oracle;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imrouter::client::cluster::net::{Node, Received};
use imrouter::client::cluster::{ClusterConfig, ClusterStats};
use imrouter::client::NodeConfig;
use imrouter::cluster::local::{self, Etcd, Proxy, RouterOptions, RouterProcess};
use imrouter::wire::{fb, RouteFrame};

use crate::config::{Args, ScenarioName};
use crate::workload::{self, message_id, Rng};
use oracle::{Decided, Delivered, Judgement, Sent, To};

/// The cluster's name in etcd.
const CLUSTER: &str = "loadgen";
/// Messages sent this long after a fault measure its failover.
const FAILOVER_PROBE_NS: u64 = 100_000_000;
/// How long the nodes get to see every router own slots, and to open
/// their sessions.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A map unchanged this long is the end of the rebalancing.
const MAP_STABLE_NS: u64 = 1_500_000_000;
/// Probes to users with no session each node sends before the traffic:
/// all must come back Offline (no slot of theirs is still rebuilt).
const OFFLINE_PROBES: usize = 64;
/// How long node 0 stays cut from a router in `partition`: longer than
/// the router's three missed heartbeats (3 s by default), so the router
/// gives the connection up and parks, shorter than its reconnect grace
/// (5 s), so the node resumes and nothing turns Offline.
const NODE_CUT: Duration = Duration::from_secs(4);

/// The validated plan of a cluster run.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    pub scenario: ScenarioName,
    pub routers: usize,
    pub standalone: bool,
    pub router_bin: PathBuf,
    pub etcd_bin: Option<String>,
    pub router_shards: u16,
    pub router_cpus: Option<String>,
    pub lease_ttl_ms: u64,
    pub nodes: u32,
    pub users: u32,
    /// Messages per second; `None`: as many as `window` in flight per
    /// node allow.
    pub rate: Option<f64>,
    pub window: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub payload_bytes: usize,
    pub offline_ratio: f64,
    pub seed: u64,
    pub cpus: Vec<usize>,
    pub quiet: bool,
    pub json: Option<PathBuf>,
}

impl ClusterPlan {
    pub fn from_args(args: &Args) -> Result<ClusterPlan, String> {
        let rate = match args.rate.as_str() {
            "max" => None,
            rate => Some(
                rate.parse()
                    .ok()
                    .filter(|rate: &f64| *rate > 0.0)
                    .ok_or("--rate must be messages per second or `max`")?,
            ),
        };
        if args.window == 0 {
            return Err("--window must be at least 1".into());
        }
        let router_bin = match &args.router_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("finding the imrouter binary: {e}"))?
                .with_file_name("imrouter"),
        };
        if !router_bin.exists() {
            return Err(format!(
                "no imrouter binary at {} (build it with --features cluster, or give --router-bin)",
                router_bin.display()
            ));
        }
        let standalone = args.standalone;
        if standalone && (args.scenario != ScenarioName::Cluster || args.routers != 1) {
            return Err("--standalone is for --scenario cluster --routers 1".into());
        }
        let etcd_bin = match (&args.etcd_bin, standalone) {
            (_, true) => None,
            (Some(path), false) => Some(path.clone()),
            (None, false) => Some(
                local::etcd_binary()
                    .ok_or("no etcd binary (apt-get install etcd-server, or --etcd-bin)")?
                    .to_owned(),
            ),
        };
        let faulty = args.scenario != ScenarioName::Cluster;
        if faulty && args.routers != 3 {
            return Err(format!(
                "--scenario {:?} runs against 3 routers (--routers 3)",
                args.scenario
            ));
        }
        if !(1..=16).contains(&args.routers) {
            return Err("--routers must be 1 to 16".into());
        }
        let traffic_s = args.warmup + args.duration;
        let needed_s = 12.0_f64.max(6.0 * args.lease_ttl_ms as f64 / 1000.0);
        if faulty && traffic_s < needed_s {
            return Err(format!(
                "the faults need at least {needed_s} s of traffic (--warmup + --duration)"
            ));
        }
        if args.nodes == 0 || args.users < args.nodes {
            return Err("--nodes must be at least 1, and --users at least --nodes".into());
        }
        if args.payload_bytes < workload::PAYLOAD_HEADER_BYTES {
            return Err(format!(
                "--payload-bytes must be at least {}",
                workload::PAYLOAD_HEADER_BYTES
            ));
        }
        let available = imrouter::config::available_cpus();
        let cpus = match &args.cpus {
            Some(list) => imrouter::config::parse_cpu_list(list).map_err(|e| e.to_string())?,
            None => vec![*available.last().ok_or("no CPU to run on")?],
        };
        if cpus.is_empty() || cpus.iter().any(|cpu| !available.contains(cpu)) {
            return Err(format!("--cpus must name CPUs among {available:?}"));
        }
        Ok(ClusterPlan {
            scenario: args.scenario,
            routers: args.routers,
            standalone,
            router_bin,
            etcd_bin,
            router_shards: args.router_shards,
            router_cpus: args.router_cpus.clone(),
            lease_ttl_ms: args.lease_ttl_ms,
            nodes: args.nodes,
            users: args.users,
            rate,
            window: args.window,
            warmup_s: args.warmup,
            duration_s: args.duration,
            drain_s: args.drain.max(10.0),
            payload_bytes: args.payload_bytes,
            offline_ratio: args.offline_ratio,
            seed: args.seed,
            cpus,
            quiet: args.quiet,
            json: args.json.clone(),
        })
    }

    fn traffic_ns(&self) -> u64 {
        ((self.warmup_s + self.duration_s) * 1e9) as u64
    }
}

/// Runs a cluster scenario: exit 0 when the oracle found nothing wrong,
/// 1 when it did, 2 when the run itself failed.
pub fn main(args: &Args) -> ExitCode {
    let plan = match ClusterPlan::from_args(args) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("imrouter-loadgen: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&plan) {
        Ok(report) => {
            print!("{}", report.summary(&plan));
            if let Some(path) = &plan.json {
                if let Err(error) = std::fs::write(path, report.json(&plan)) {
                    eprintln!("imrouter-loadgen: writing {}: {error}", path.display());
                    return ExitCode::from(2);
                }
            }
            if report.judgement.ok() && report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("imrouter-loadgen: {error}");
            ExitCode::from(2)
        }
    }
}

// ----- The cluster -------------------------------------------------------------

/// etcd, the routers and their proxies to etcd. Router `i` is `r{i+1}`.
struct Cluster {
    plan: ClusterPlan,
    etcd: Option<Etcd>,
    proxies: Vec<Option<Proxy>>,
    routers: Vec<Option<RouterProcess>>,
    pids: Vec<u32>,
    addrs: Vec<String>,
    /// CPU seconds of each router when the measurement started, and
    /// what a router used before it was killed.
    cpu_from: Vec<f64>,
    cpu_final: Vec<Option<f64>>,
}

impl Cluster {
    fn start(plan: &ClusterPlan) -> Result<Cluster, String> {
        let etcd = match &plan.etcd_bin {
            Some(binary) => Some(Etcd::start(binary).map_err(|e| format!("starting etcd: {e}"))?),
            None => None,
        };
        let mut cluster = Cluster {
            plan: plan.clone(),
            etcd,
            proxies: Vec::new(),
            routers: Vec::new(),
            pids: Vec::new(),
            addrs: Vec::new(),
            cpu_from: Vec::new(),
            cpu_final: Vec::new(),
        };
        for _ in 0..plan.routers {
            cluster.add_router()?;
        }
        Ok(cluster)
    }

    fn add_router(&mut self) -> Result<usize, String> {
        let index = self.routers.len();
        let name = format!("r{}", index + 1);
        let proxy = match &self.etcd {
            Some(etcd) => Some(
                Proxy::start(etcd.url.trim_start_matches("http://"))
                    .map_err(|e| format!("starting the etcd proxy of {name}: {e}"))?,
            ),
            None => None,
        };
        let mut options = RouterOptions::new(
            self.plan.router_bin.clone(),
            &name,
            CLUSTER,
            proxy.as_ref().map(|proxy| format!("http://{}", proxy.addr)),
        );
        options.shards = self.plan.router_shards;
        options.lease_ttl_ms = self.plan.lease_ttl_ms;
        options.cpus = self.plan.router_cpus.clone();
        // A router told to stop (router-drain) gives its nodes 2 s to leave.
        options
            .extra
            .extend(["--drain-window-ms", "2000"].map(String::from));
        let router =
            RouterProcess::start(&options).map_err(|e| format!("starting router {name}: {e}"))?;
        self.pids.push(router.pid());
        self.addrs.push(router.addr.clone());
        self.cpu_from
            .push(local::cpu_seconds(router.pid()).unwrap_or(0.0));
        self.cpu_final.push(None);
        self.routers.push(Some(router));
        self.proxies.push(proxy);
        Ok(index)
    }

    fn router(&self, index: usize) -> &RouterProcess {
        self.routers[index].as_ref().expect("a live router")
    }

    fn kill(&mut self, index: usize) {
        self.cpu_final[index] = local::cpu_seconds(self.pids[index]);
        if let Some(mut router) = self.routers[index].take() {
            router.kill();
        }
    }

    fn start_measuring(&mut self) {
        for (index, pid) in self.pids.iter().enumerate() {
            self.cpu_from[index] = local::cpu_seconds(*pid).unwrap_or(0.0);
        }
    }

    /// CPU seconds each router used since the measurement started.
    fn cpu_used(&self) -> Vec<f64> {
        (0..self.pids.len())
            .map(|i| {
                let now = self.cpu_final[i].or_else(|| local::cpu_seconds(self.pids[i]));
                (now.unwrap_or(0.0) - self.cpu_from[i]).max(0.0)
            })
            .collect()
    }

    fn drain_router(&self, index: usize) -> Result<String, String> {
        let etcd = self.etcd.as_ref().ok_or("no etcd")?;
        local::cluster_command(
            &self.plan.router_bin,
            &etcd.url,
            CLUSTER,
            &["drain", &format!("r{}", index + 1)],
        )
        .map_err(|e| e.to_string())
    }
}

// ----- Shared state ----------------------------------------------------------------

/// Where the run is; every generator thread follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(usize)]
enum Phase {
    /// Connect and wait until the map gives every router slots.
    Connect,
    /// Open the sessions and confirm each with a probe.
    Open,
    /// Traffic from `start_ns` to `end_ns`.
    Traffic,
    /// Stop and hand in the logs.
    Finished,
}

struct Shared {
    base: Instant,
    phase: AtomicUsize,
    /// Routers the map must give slots to before the sessions open.
    routers: usize,
    /// Nodes done with the current phase.
    ready: AtomicUsize,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    sent: AtomicU64,
    decided: AtomicU64,
    delivered: AtomicU64,
    pending: Box<[AtomicU64]>,
    /// Node cuts to apply: (node, router address, cut), with a
    /// generation so that threads look only when it moved.
    cuts: Mutex<Vec<(u32, String, bool)>>,
    cuts_generation: AtomicU64,
    failed: AtomicBool,
    /// What a node that is not ready yet sees, for the error.
    waiting: Mutex<String>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Connect,
            1 => Phase::Open,
            2 => Phase::Traffic,
            _ => Phase::Finished,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.ready.store(0, Relaxed);
        self.phase.store(phase as usize, Relaxed);
    }

    fn cut(&self, node: u32, addr: &str, cut: bool) {
        self.cuts
            .lock()
            .expect("cuts")
            .push((node, addr.to_owned(), cut));
        self.cuts_generation.fetch_add(1, Relaxed);
    }
}

/// What a generator thread hands in.
#[derive(Default)]
struct ThreadLog {
    sent: Vec<Sent>,
    decided: Vec<Decided>,
    delivered: Vec<Delivered>,
    stats: ClusterStats,
    errors: Vec<String>,
    /// Slots each router address owns in the last map of the thread's
    /// first node.
    final_slots: Vec<(String, usize)>,
}

// ----- Nodes ---------------------------------------------------------------------

struct SimNode {
    index: u32,
    node: Node,
    rng: Rng,
    seq: u64,
    next_due_ns: u64,
    interval_ns: u64,
    payload: Vec<u8>,
    /// Probes without their expected verdict: id -> whom, and when to
    /// retry.
    probes: std::collections::HashMap<u64, To>,
    probe_retry: Vec<(u64, To)>,
    probe_seq: u64,
    opened: bool,
    ready: bool,
    /// The epoch of the node's map, and since when it has it.
    map_epoch: (u64, u64),
}

impl SimNode {
    fn new(index: u32, plan: &ClusterPlan, seed_addr: &str) -> SimNode {
        let incarnation = plan.seed.rotate_left(17) ^ (u64::from(index) << 32) ^ 0x1D_EA;
        let mut config = ClusterConfig::new(
            NodeConfig::new(format!("loadgen-{index}"), incarnation),
            vec![seed_addr.to_owned()],
        );
        // Retry an Unknown for about 15 s before it is final.
        config.unknown_retries = 12;
        let rate_per_node = plan.rate.unwrap_or(f64::MAX) / f64::from(plan.nodes);
        SimNode {
            index,
            node: Node::new(config),
            rng: Rng::new(plan.seed ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            seq: 0,
            next_due_ns: 0,
            interval_ns: ((1e9 / rate_per_node) as u64).max(1),
            payload: Vec::with_capacity(plan.payload_bytes),
            probes: Default::default(),
            probe_retry: Vec::new(),
            probe_seq: 0,
            opened: false,
            ready: false,
            map_epoch: (0, 0),
        }
    }

    /// Whether the node's map gives slots to `routers` routers and has
    /// not changed for [`MAP_STABLE_NS`] (the controller's rebalancing,
    /// a batch every 500 ms by default, is done), and it has a live link
    /// to each router.
    fn sees_cluster(&mut self, routers: usize, now_ns: u64) -> bool {
        let Some(map) = self.node.core.map() else {
            return false;
        };
        if map.epoch() != self.map_epoch.0 {
            self.map_epoch = (map.epoch(), now_ns);
        }
        let owning = map.slots_per_router().iter().filter(|&&n| n > 0).count();
        owning == routers
            && now_ns - self.map_epoch.1 >= MAP_STABLE_NS
            && self.node.live_links() >= routers
    }

    fn users<'a>(&self, plan: &'a ClusterPlan) -> impl Iterator<Item = u32> + 'a {
        let (index, nodes) = (self.index, plan.nodes);
        (0..plan.users).filter(move |user| user % nodes == index)
    }

    fn route(&mut self, id: u64, to_user: &[u8], due_ns: u64, payload_bytes: usize) -> bool {
        workload::fill_payload(&mut self.payload, payload_bytes, due_ns, id);
        let now = self.node.now();
        let frame = RouteFrame {
            message_id: id,
            from_user: "loadgen",
            from_device: "d0",
            to_user: std::str::from_utf8(to_user).expect("ascii ids"),
            to_device: None,
            flags: 0,
            payload: &self.payload,
        };
        self.node.core.route(&frame, now).is_ok()
    }

    /// A probe to one of the node's own users (it must come back Routed:
    /// the session is open at its owner) or to a user with no session
    /// (Offline: the owner's slot is rebuilt, not Unknown).
    fn probe(&mut self, to: To, plan: &ClusterPlan) -> bool {
        let id = message_id::PROBE | message_id::new(self.index, self.probe_seq);
        let user_id = match to {
            To::Online(user) => workload::user_id(user),
            To::Nobody => workload::offline_user_id(self.probe_seq as u32),
        };
        if !self.route(id, &user_id, 0, plan.payload_bytes) {
            return false;
        }
        self.probe_seq += 1;
        self.probes.insert(id, to);
        true
    }
}

fn add(sum: &mut ClusterStats, stats: &ClusterStats) {
    sum.resends = sum.resends.wrapping_add(stats.resends);
    sum.moved = sum.moved.wrapping_add(stats.moved);
    sum.unknown_retries = sum.unknown_retries.wrapping_add(stats.unknown_retries);
    sum.duplicates_dropped = sum
        .duplicates_dropped
        .wrapping_add(stats.duplicates_dropped);
    sum.resyncs = sum.resyncs.wrapping_add(stats.resyncs);
    sum.maps = sum.maps.wrapping_add(stats.maps);
}

/// `sum -= stats` (wrapping: a later `add` of larger counters makes up).
fn subtract(sum: &mut ClusterStats, stats: &ClusterStats) {
    sum.resends = sum.resends.wrapping_sub(stats.resends);
    sum.moved = sum.moved.wrapping_sub(stats.moved);
    sum.unknown_retries = sum.unknown_retries.wrapping_sub(stats.unknown_retries);
    sum.duplicates_dropped = sum
        .duplicates_dropped
        .wrapping_sub(stats.duplicates_dropped);
    sum.resyncs = sum.resyncs.wrapping_sub(stats.resyncs);
    sum.maps = sum.maps.wrapping_sub(stats.maps);
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays inside it for any
    // CPU below CPU_SETSIZE; sched_setaffinity(0) is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// A generator thread: drives `nodes` through the phases.
fn generator(plan: &ClusterPlan, shared: &Shared, nodes: Vec<u32>, seed_addr: &str) -> ThreadLog {
    let mut log = ThreadLog::default();
    let mut sims: Vec<SimNode> = nodes
        .iter()
        .map(|&index| SimNode::new(index, plan, seed_addr))
        .collect();
    let mut cuts_seen = 0;
    let mut phase = Phase::Connect;
    loop {
        let now_phase = shared.phase();
        if now_phase == Phase::Finished {
            break;
        }
        if now_phase != phase {
            phase = now_phase;
            for sim in &mut sims {
                sim.ready = false;
            }
            if phase == Phase::Traffic {
                // The counters report the traffic, not the setup.
                for sim in &sims {
                    subtract(&mut log.stats, &sim.node.core.stats);
                }
                let started_ns = shared.start_ns.load(Relaxed);
                let stagger = sims.first().map_or(1, |s| s.interval_ns) / u64::from(plan.nodes);
                for sim in &mut sims {
                    sim.next_due_ns = started_ns + stagger * u64::from(sim.index);
                }
            }
        }
        let generation = shared.cuts_generation.load(Relaxed);
        if generation != cuts_seen {
            cuts_seen = generation;
            for (node, addr, cut) in shared.cuts.lock().expect("cuts").iter() {
                if let Some(sim) = sims.iter_mut().find(|sim| sim.index == *node) {
                    sim.node.cut(addr, *cut);
                }
            }
        }
        let mut busy = false;
        for sim in &mut sims {
            busy |= step(plan, shared, sim, phase, &mut log);
            shared.pending[sim.index as usize].store(sim.node.core.pending() as u64, Relaxed);
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    for sim in &sims {
        add(&mut log.stats, &sim.node.core.stats);
    }
    if let Some(map) = sims.first().and_then(|sim| sim.node.core.map()) {
        log.final_slots = map
            .routers()
            .iter()
            .map(|router| (router.addr.clone(), map.slots_of(router.id).len()))
            .collect();
    }
    log
}

/// One round of one node; whether it did anything.
fn step(
    plan: &ClusterPlan,
    shared: &Shared,
    sim: &mut SimNode,
    phase: Phase,
    log: &mut ThreadLog,
) -> bool {
    let now_ns = shared.now_ns();
    let mut busy = false;
    match phase {
        Phase::Connect => {
            if !sim.ready && sim.sees_cluster(shared.routers, now_ns) {
                sim.ready = true;
                shared.ready.fetch_add(1, Relaxed);
            } else if !sim.ready {
                let map = sim
                    .node
                    .core
                    .map()
                    .map(|map| (map.epoch(), map.slots_per_router()));
                *shared.waiting.lock().expect("waiting") = format!(
                    "node {}: map (epoch, slots per router) {map:?}, {} live links",
                    sim.index,
                    sim.node.live_links()
                );
            }
        }
        Phase::Open => {
            if !sim.opened {
                sim.opened = true;
                let device = workload::device_id(0);
                let users: Vec<u32> = sim.users(plan).collect();
                for &user in &users {
                    let id = workload::user_id(user);
                    sim.node.core.open(
                        std::str::from_utf8(&id).expect("ascii"),
                        &device,
                        fb::Platform::Mobile,
                    );
                }
                sim.probe_retry = users
                    .into_iter()
                    .map(|user| (0, To::Online(user)))
                    .collect();
                sim.probe_retry
                    .extend((0..OFFLINE_PROBES).map(|_| (0, To::Nobody)));
            }
            let mut retry = std::mem::take(&mut sim.probe_retry);
            retry.retain(|&(at_ns, to)| at_ns > now_ns || !sim.probe(to, plan));
            sim.probe_retry = retry;
            if !sim.ready && sim.probes.is_empty() && sim.probe_retry.is_empty() {
                sim.ready = true;
                shared.ready.fetch_add(1, Relaxed);
            }
        }
        Phase::Traffic => {
            let end_ns = shared.end_ns.load(Relaxed);
            // With `--rate max` every message is due now, as many as the
            // window has room for.
            let mut room = match plan.rate {
                Some(_) => usize::MAX,
                None => {
                    sim.next_due_ns = now_ns;
                    (plan.window as usize).saturating_sub(sim.node.core.pending())
                }
            };
            while room > 0 && sim.next_due_ns <= now_ns && sim.next_due_ns < end_ns {
                room -= 1;
                let id = message_id::new(sim.index, sim.seq);
                let offline = sim.rng.unit() < plan.offline_ratio;
                let user = sim.rng.below(u64::from(plan.users)) as u32;
                let (to, user_id) = if offline {
                    (To::Nobody, workload::offline_user_id(user))
                } else {
                    (To::Online(user), workload::user_id(user))
                };
                let due_ns = sim.next_due_ns;
                if !sim.route(id, &user_id, due_ns, plan.payload_bytes) {
                    break; // Too many without an outcome: later.
                }
                log.sent.push(Sent {
                    id,
                    to,
                    sent_ns: now_ns,
                });
                shared.sent.fetch_add(1, Relaxed);
                sim.seq += 1;
                if plan.rate.is_some() {
                    sim.next_due_ns += sim.interval_ns;
                }
                busy = true;
            }
        }
        Phase::Finished => {}
    }
    let (received, outcomes) = sim.node.step();
    busy |= !received.is_empty() || !outcomes.is_empty();
    let at_ns = shared.now_ns();
    for outcome in outcomes {
        if outcome.message_id & message_id::PROBE != 0 {
            if let Some(to) = sim.probes.remove(&outcome.message_id) {
                let expected = match to {
                    To::Online(_) => fb::Verdict::Routed,
                    To::Nobody => fb::Verdict::Offline,
                };
                if outcome.verdict != expected {
                    sim.probe_retry.push((at_ns + 100_000_000, to));
                }
            }
            continue;
        }
        shared.decided.fetch_add(1, Relaxed);
        log.decided.push(Decided {
            id: outcome.message_id,
            verdict: outcome.verdict,
            sends: outcome.sends,
            at_ns,
        });
    }
    for item in received {
        match item {
            Received::Deliver {
                message_id: id,
                to_user,
                payload,
                ..
            } => {
                if id & message_id::PROBE != 0 {
                    continue;
                }
                shared.delivered.fetch_add(1, Relaxed);
                log.delivered.push(Delivered {
                    id,
                    node: sim.index,
                    user: workload::parse_user_id(to_user.as_bytes()),
                    intact: workload::delivered_payload(id, &payload).1,
                });
            }
            Received::Kick { user, device } => {
                log.errors.push(format!(
                    "node {}: unexpected Kick of {user}/{device}",
                    sim.index
                ));
                shared.failed.store(true, Relaxed);
            }
            // Membership concerns real nodes, not the workload.
            Received::NodeEvent { .. } => {}
            Received::RouterError { router, text } => {
                // Not a fault in itself (a router going away may say so);
                // every message is still judged.
                if !plan.quiet {
                    eprintln!("node {}: router {router} closed: {text}", sim.index);
                }
            }
        }
    }
    busy
}

// ----- The run -------------------------------------------------------------------

/// A disruption: from a fault to its end (the same moment for a kill, an
/// addition, a drain).
struct Window {
    what: String,
    from_ns: u64,
    to_ns: u64,
}

pub struct Report {
    judgement: Judgement,
    /// Per disruption: what, from and to (s since the start), and the
    /// longest wait for an outcome of a message sent in it (s).
    faults: Vec<(String, f64, f64, f64)>,
    stats: ClusterStats,
    errors: Vec<String>,
    routers: Vec<(String, f64, usize)>,
    etcd_cpu_s: f64,
    routed_measured: u64,
    measured_s: f64,
    notes: Vec<String>,
}

fn wait_ready(shared: &Shared, nodes: u32, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while shared.ready.load(Relaxed) < nodes as usize {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {nodes} nodes {what} within {SETTLE_TIMEOUT:?}; {}",
                shared.ready.load(Relaxed),
                shared.waiting.lock().expect("waiting")
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn run(plan: &ClusterPlan) -> Result<Report, String> {
    let mut cluster = Cluster::start(plan)?;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        phase: AtomicUsize::new(Phase::Connect as usize),
        routers: plan.routers,
        ready: AtomicUsize::new(0),
        start_ns: AtomicU64::new(0),
        end_ns: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        decided: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        pending: (0..plan.nodes).map(|_| AtomicU64::new(0)).collect(),
        cuts: Mutex::new(Vec::new()),
        cuts_generation: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        waiting: Mutex::new(String::new()),
    });
    let seed_addr = cluster.addrs[0].clone();
    let threads: Vec<_> = plan
        .cpus
        .iter()
        .enumerate()
        .map(|(thread, &cpu)| {
            let nodes: Vec<u32> = (0..plan.nodes)
                .filter(|node| *node as usize % plan.cpus.len() == thread)
                .collect();
            let (plan, shared, seed_addr) = (plan.clone(), shared.clone(), seed_addr.clone());
            std::thread::Builder::new()
                .name(format!("loadgen-{thread}"))
                .spawn(move || {
                    pin(cpu);
                    generator(&plan, &shared, nodes, &seed_addr)
                })
                .expect("a generator thread")
        })
        .collect();
    let result = coordinate(plan, &mut cluster, &shared);
    shared.set_phase(Phase::Finished);
    let logs: Vec<ThreadLog> = threads
        .into_iter()
        .map(|thread| thread.join().expect("a generator thread ran"))
        .collect();
    let (faults, traffic) = result?;
    let mut sent = Vec::new();
    let mut decided = Vec::new();
    let mut delivered = Vec::new();
    let mut stats = ClusterStats::default();
    let mut errors = Vec::new();
    for log in &logs {
        sent.extend_from_slice(&log.sent);
        decided.extend_from_slice(&log.decided);
        delivered.extend_from_slice(&log.delivered);
        add(&mut stats, &log.stats);
        errors.extend(log.errors.iter().cloned());
    }
    // A fault may leave slots unsure until its lease lapses, the map
    // moves and the rebuild is done (at most --rebuild-timeout-ms, 10 s
    // by default): a final Unknown is right in that window.
    let unsure_ns = plan.lease_ttl_ms * 1_000_000 + 10_000_000_000;
    let windows: Vec<(u64, u64)> = faults
        .iter()
        .map(|w| (w.from_ns.saturating_sub(1_000_000_000), w.to_ns + unsure_ns))
        .collect();
    let judgement = oracle::judge(&oracle::Logs {
        nodes: plan.nodes,
        sent: &sent,
        decided: &decided,
        delivered: &delivered,
        windows: &windows,
    });
    let decided_at: std::collections::HashMap<u64, u64> =
        decided.iter().map(|d| (d.id, d.at_ns)).collect();
    // Per window: the longest any message sent in it (or in the 100 ms
    // after an instant fault) waited for its outcome.
    let faults = faults
        .into_iter()
        .map(|window| {
            let to_ns = window.to_ns.max(window.from_ns + FAILOVER_PROBE_NS);
            let longest = sent
                .iter()
                .filter(|s| s.sent_ns >= window.from_ns && s.sent_ns < to_ns)
                .filter_map(|s| {
                    decided_at
                        .get(&s.id)
                        .map(|&at| at.saturating_sub(s.sent_ns))
                })
                .max()
                .unwrap_or(0);
            let since_start = |ns: u64| ns.saturating_sub(traffic.start_ns) as f64 / 1e9;
            (
                window.what,
                since_start(window.from_ns),
                since_start(window.to_ns),
                longest as f64 / 1e9,
            )
        })
        .collect();
    let routed_measured = {
        let routed: std::collections::HashSet<u64> = decided
            .iter()
            .filter(|d| d.verdict == fb::Verdict::Routed)
            .map(|d| d.id)
            .collect();
        sent.iter()
            .filter(|s| s.sent_ns >= traffic.measure_from_ns && routed.contains(&s.id))
            .count() as u64
    };
    let final_slots = logs
        .iter()
        .find(|log| !log.final_slots.is_empty())
        .map(|log| log.final_slots.clone())
        .unwrap_or_default();
    let routers = cluster
        .addrs
        .iter()
        .zip(&traffic.cpu)
        .enumerate()
        .map(|(i, (addr, &cpu))| {
            let slots = final_slots
                .iter()
                .find(|(a, _)| a == addr)
                .map_or(0, |(_, n)| *n);
            (format!("r{}", i + 1), cpu, slots)
        })
        .collect();
    let mut notes = traffic.notes;
    if plan.scenario == ScenarioName::Rebalance {
        let slots_of = |name: &str| {
            let index: usize = name[1..].parse::<usize>().unwrap_or(1) - 1;
            cluster
                .addrs
                .get(index)
                .and_then(|addr| final_slots.iter().find(|(a, _)| a == addr).map(|(_, n)| *n))
        };
        match (slots_of("r1"), slots_of("r4")) {
            (Some(0) | None, Some(n)) if n > 0 => {
                notes.push(format!("after the run: r1 owns no slot, r4 owns {n}"))
            }
            (r1, r4) => errors.push(format!(
                "rebalance did not finish: r1 owns {r1:?} slots, r4 {r4:?}"
            )),
        }
    }
    Ok(Report {
        judgement,
        faults,
        stats,
        errors,
        routers,
        etcd_cpu_s: traffic.etcd_cpu_s,
        routed_measured,
        measured_s: plan.duration_s,
        notes,
    })
}

/// What the coordinator learned about the traffic.
struct Traffic {
    start_ns: u64,
    measure_from_ns: u64,
    cpu: Vec<f64>,
    etcd_cpu_s: f64,
    notes: Vec<String>,
}

fn coordinate(
    plan: &ClusterPlan,
    cluster: &mut Cluster,
    shared: &Shared,
) -> Result<(Vec<Window>, Traffic), String> {
    wait_ready(shared, plan.nodes, "saw every router own slots")?;
    shared.set_phase(Phase::Open);
    wait_ready(shared, plan.nodes, "opened and confirmed their sessions")?;
    let start_ns = shared.now_ns() + 50_000_000;
    let end_ns = start_ns + plan.traffic_ns();
    let measure_from_ns = start_ns + (plan.warmup_s * 1e9) as u64;
    shared.start_ns.store(start_ns, Relaxed);
    shared.end_ns.store(end_ns, Relaxed);
    shared.set_phase(Phase::Traffic);

    // The scenario's faults, as (time from the start, action).
    let traffic_ns = plan.traffic_ns();
    let at = |share: f64| start_ns + (traffic_ns as f64 * share) as u64;
    let ttl_ns = plan.lease_ttl_ms * 1_000_000;
    #[derive(Debug)]
    enum Action {
        Kill(usize),
        Term(usize),
        Stop(usize),
        Continue(usize),
        CutEtcd(usize, bool),
        CutNode(u32, usize, bool),
        AddRouter,
        Drain(usize),
    }
    let mut actions: Vec<(u64, Action)> = match plan.scenario {
        ScenarioName::RouterKill => vec![(at(0.4), Action::Kill(1))],
        ScenarioName::RouterDrain => vec![(at(0.4), Action::Term(1))],
        ScenarioName::RouterPause => vec![
            (at(0.3), Action::Stop(1)),
            (at(0.3) + ttl_ns + 1_500_000_000, Action::Continue(1)),
        ],
        ScenarioName::Partition => vec![
            (at(0.2), Action::CutEtcd(1, true)),
            (at(0.2) + ttl_ns + 1_500_000_000, Action::CutEtcd(1, false)),
            (at(0.6), Action::CutNode(0, 2, true)),
            (
                at(0.6) + NODE_CUT.as_nanos() as u64,
                Action::CutNode(0, 2, false),
            ),
        ],
        ScenarioName::Rebalance => {
            vec![(at(0.15), Action::AddRouter), (at(0.55), Action::Drain(0))]
        }
        _ => Vec::new(),
    };
    actions.sort_by_key(|(at, _)| *at);
    let mut windows = Vec::new();
    let mut open_window: Option<(u64, String)> = None;
    let mut notes = Vec::new();
    let mut measuring = false;
    let mut next_progress = start_ns + 1_000_000_000;
    let mut actions = actions.into_iter().peekable();
    let etcd_cpu_from = cluster
        .etcd
        .as_ref()
        .and_then(|etcd| local::cpu_seconds(etcd.pid()))
        .unwrap_or(0.0);
    let mut cpu = Vec::new();
    let mut etcd_cpu_s = 0.0;
    loop {
        let now = shared.now_ns();
        if !measuring && now >= measure_from_ns {
            measuring = true;
            cluster.start_measuring();
        }
        if cpu.is_empty() && now >= end_ns {
            cpu = cluster.cpu_used();
            etcd_cpu_s = cluster
                .etcd
                .as_ref()
                .and_then(|etcd| local::cpu_seconds(etcd.pid()))
                .map_or(0.0, |s| s - etcd_cpu_from);
        }
        while actions.peek().is_some_and(|(at, _)| *at <= now) {
            let (_, action) = actions.next().expect("peeked");
            let now = shared.now_ns();
            let name = |i: usize| format!("r{}", i + 1);
            // (what, whether it ends a disruption window rather than
            // opening one)
            let (what, closes) = match action {
                Action::Kill(i) => {
                    cluster.kill(i);
                    (format!("SIGKILL {}", name(i)), true)
                }
                Action::Term(i) => {
                    cluster.cpu_final[i] = local::cpu_seconds(cluster.pids[i]);
                    cluster.router(i).signal(libc::SIGTERM);
                    (format!("SIGTERM {} (drain)", name(i)), true)
                }
                Action::Stop(i) => {
                    cluster.router(i).signal(libc::SIGSTOP);
                    (format!("SIGSTOP {}", name(i)), false)
                }
                Action::Continue(i) => {
                    cluster.router(i).signal(libc::SIGCONT);
                    (format!("SIGCONT {}", name(i)), true)
                }
                Action::CutEtcd(i, cut) => {
                    if let Some(proxy) = &cluster.proxies[i] {
                        proxy.cut(cut);
                    }
                    let verb = if cut { "cut from" } else { "back to" };
                    (format!("{} {verb} etcd", name(i)), !cut)
                }
                Action::CutNode(node, i, cut) => {
                    shared.cut(node, &cluster.addrs[i], cut);
                    let verb = if cut { "cut from" } else { "back to" };
                    (format!("node {node} {verb} {}", name(i)), !cut)
                }
                Action::AddRouter => {
                    let i = cluster.add_router()?;
                    (format!("{} started", name(i)), true)
                }
                Action::Drain(i) => {
                    cluster.drain_router(i)?;
                    (format!("imrouter cluster drain {}", name(i)), true)
                }
            };
            // A window opens at a fault and closes at its end (a kill, an
            // addition or a drain is over at once); the oracle adds the
            // lease and the rebuild to it.
            if closes {
                let (from_ns, opened) = open_window.take().unwrap_or((now, String::new()));
                windows.push(Window {
                    what: if opened.is_empty() {
                        what.clone()
                    } else {
                        format!("{opened} .. {what}")
                    },
                    from_ns,
                    to_ns: now,
                });
            } else {
                open_window = Some((now, what.clone()));
            }
            if !plan.quiet {
                eprintln!("{:7.2} s  {what}", (now - start_ns) as f64 / 1e9);
            }
        }
        if !plan.quiet && now >= next_progress {
            next_progress += 1_000_000_000;
            let pending: u64 = shared.pending.iter().map(|p| p.load(Relaxed)).sum();
            eprintln!(
                "{:7.2} s  sent {}  outcomes {}  delivered {}  pending {pending}",
                (now.saturating_sub(start_ns)) as f64 / 1e9,
                shared.sent.load(Relaxed),
                shared.decided.load(Relaxed),
                shared.delivered.load(Relaxed),
            );
        }
        if shared.failed.load(Relaxed) {
            notes.push("a node saw something unexpected".into());
        }
        if now >= end_ns && actions.peek().is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Some((from_ns, what)) = open_window {
        windows.push(Window {
            what,
            from_ns,
            to_ns: end_ns,
        });
    }
    // Drain: every outcome in, then a moment for the last copies.
    let deadline = Instant::now() + Duration::from_secs_f64(plan.drain_s);
    loop {
        let pending: u64 = shared.pending.iter().map(|p| p.load(Relaxed)).sum();
        if pending == 0 || Instant::now() > deadline {
            if pending != 0 {
                notes.push(format!(
                    "{pending} messages still without an outcome after the drain"
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok((
        windows,
        Traffic {
            start_ns,
            measure_from_ns,
            cpu,
            etcd_cpu_s,
            notes,
        },
    ))
}

impl Report {
    fn summary(&self, plan: &ClusterPlan) -> String {
        let mut out = String::new();
        let j = &self.judgement;
        let _ = writeln!(
            out,
            "scenario {:?}: {} router(s) ({} shard(s) each{}), {} nodes, {} users, {} for {:.1} s",
            plan.scenario,
            plan.routers,
            plan.router_shards,
            if plan.standalone {
                ", alone, no etcd".to_owned()
            } else {
                format!(", lease TTL {} ms", plan.lease_ttl_ms)
            },
            plan.nodes,
            plan.users,
            match plan.rate {
                Some(rate) => format!("{rate} msg/s"),
                None => format!("as fast as {} in flight per node allow", plan.window),
            },
            plan.warmup_s + plan.duration_s
        );
        for (what, from_s, to_s, longest_s) in &self.faults {
            let _ = writeln!(
                out,
                "{from_s:6.2} s to {to_s:6.2} s: {what}; the longest wait for an outcome of a message sent in it (or in its first 100 ms): {longest_s:.2} s"
            );
        }
        let _ = writeln!(
            out,
            "sent {}: Routed {}, Offline {} (users with no session), Unknown {} (inside fault windows)",
            j.sent, j.routed, j.offline, j.unknown
        );
        let s = &self.stats;
        let _ = writeln!(
            out,
            "delivered {} to the applications; messages resent {} ({} resends), duplicates dropped {}, Moved {}, Unknown retries {}, resyncs {}, maps {}",
            j.delivered, j.resent_messages, s.resends, s.duplicates_dropped, s.moved, s.unknown_retries, s.resyncs, s.maps
        );
        let cpu: f64 = self.routers.iter().map(|(_, cpu, _)| cpu).sum();
        let routers: Vec<String> = self
            .routers
            .iter()
            .map(|(name, cpu, slots)| format!("{name} {cpu:.2} s CPU, {slots} slots at the end"))
            .collect();
        let _ = writeln!(out, "routers: {}", routers.join("; "));
        if cpu > 0.0 {
            let _ = writeln!(
                out,
                "measured {:.1} s: {} Routed, router CPU {cpu:.2} s: {:.0} routed messages per router CPU second (etcd used {:.2} s CPU)",
                self.measured_s,
                self.routed_measured,
                self.routed_measured as f64 / cpu,
                self.etcd_cpu_s
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        for error in &self.errors {
            let _ = writeln!(out, "ERROR: {error}");
        }
        if j.ok() && self.errors.is_empty() {
            let _ = writeln!(out, "oracle: OK, every message had one right outcome");
        } else {
            let _ = writeln!(out, "oracle: {} FAULT(S)", j.faults);
            for example in &j.examples {
                let _ = writeln!(out, "  {example}");
            }
        }
        out
    }

    fn json(&self, plan: &ClusterPlan) -> String {
        let j = &self.judgement;
        let cpu: f64 = self.routers.iter().map(|(_, cpu, _)| cpu).sum();
        let failovers: Vec<String> = self
            .faults
            .iter()
            .map(|(_, _, _, s)| format!("{s:.3}"))
            .collect();
        format!(
            "{{\"scenario\":\"{:?}\",\"routers\":{},\"ok\":{},\"sent\":{},\"routed\":{},\"offline\":{},\"unknown\":{},\"delivered\":{},\"faults\":{},\"resends\":{},\"duplicates_dropped\":{},\"failover_s\":[{}],\"routed_measured\":{},\"router_cpu_s\":{cpu:.3},\"routed_per_router_cpu_s\":{:.0}}}\n",
            plan.scenario,
            plan.routers,
            j.ok() && self.errors.is_empty(),
            j.sent,
            j.routed,
            j.offline,
            j.unknown,
            j.delivered,
            j.faults,
            self.stats.resends,
            self.stats.duplicates_dropped,
            failovers.join(","),
            self.routed_measured,
            if cpu > 0.0 { self.routed_measured as f64 / cpu } else { 0.0 },
        )
    }
}
