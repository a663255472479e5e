//! Running a plan: generator threads, the start barrier, progress lines,
//! the drain, and the oracle over the collected logs.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

use crate::config::{Plan, RecipientsName, ScenarioName, Target};
use crate::oracle::{self, CheckParams, Observed, Sent, SessionChange, Timelines};
use crate::report::{self, Results};
use crate::scenario;
use crate::sim::{self, Schedule, Shared, SimNode, Worker, WorkerStats};
use crate::workload::Recipients;

/// glommio's locked I/O memory per generator thread (we do no file I/O).
const IO_MEMORY_BYTES: usize = 1024 * 1024;

/// How long every node may take to connect and open its sessions.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

/// The drain ends early once nothing was observed for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// What one generator thread hands back.
struct WorkerResult {
    sent: Vec<(u32, Vec<Sent>)>,
    observed: Vec<Observed>,
    changes: Vec<SessionChange>,
    latency: Histogram<u64>,
    send_lateness: Histogram<u64>,
    shard_count: usize,
    /// Policy scenario: (node, user, device) kicks, and node 0's Located.
    kicks: Vec<(u32, u32, u8)>,
    located: HashMap<u32, Vec<(u32, u8, u8)>>,
    /// (node, times its connection went down).
    failures: Vec<(u32, Vec<u64>)>,
}

/// A failed run, with a message for the user.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

/// Runs the plan and judges every message.
pub fn run(plan: Plan) -> Result<Results, RunError> {
    let plan = Arc::new(plan);
    let nodes = plan.population.nodes;
    let shared = Arc::new(Shared::new(nodes));
    let restarter = match &plan.router_cmd {
        Some(command) => Some(Restarter::start(command, &plan, shared.clone())?),
        None => None,
    };
    let recipients = match plan.recipients {
        RecipientsName::Uniform => Recipients::Uniform {
            users: plan.population.users,
        },
        RecipientsName::Zipf => Recipients::zipf(plan.population.users, plan.zipf_exponent),
    };
    let (snapshots_tx, snapshots_rx) = bounded::<(usize, Histogram<u64>)>(1024);
    let threads = plan.cpus.len();
    let mut stats = Vec::new();
    let mut executors = Vec::new();
    for (thread, &cpu) in plan.cpus.iter().enumerate() {
        let thread_nodes: Vec<u32> = (0..nodes)
            .filter(|node| *node as usize % threads == thread)
            .collect();
        let worker_stats = Arc::new(WorkerStats::default());
        stats.push(worker_stats.clone());
        let (plan, shared, recipients, snapshots) = (
            plan.clone(),
            shared.clone(),
            recipients.clone(),
            snapshots_tx.clone(),
        );
        let executor = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("loadgen-{thread}"))
            .io_memory(IO_MEMORY_BYTES)
            .preempt_timer(imrouter::limits::PREEMPT_TIMER)
            .spawn(move || async move {
                worker_main(
                    thread,
                    plan,
                    shared,
                    worker_stats,
                    recipients,
                    thread_nodes,
                    snapshots,
                )
                .await
            })
            .map_err(|e| RunError(format!("generator thread on CPU {cpu}: {e}")))?;
        executors.push(executor);
    }
    drop(snapshots_tx);

    let outcome = coordinate(&plan, &shared, &stats, &snapshots_rx);
    shared.finished.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for executor in executors {
        match executor.join() {
            Ok(result) => results.push(result),
            Err(e) => shared.fail(format!("a generator thread failed: {e}")),
        }
    }
    if let Some(restarter) = restarter {
        restarter.stop();
    }
    let setup = outcome?;
    let errors = shared.errors.lock().expect("errors lock").clone();
    if shared.failed.load(Ordering::SeqCst) && results.iter().all(|r| r.sent.is_empty()) {
        return Err(RunError(errors.join("; ")));
    }
    judge(&plan, &shared, results, setup, errors, &stats)
}

/// Runs on the main thread: waits for every node's sessions, starts the
/// traffic, prints progress, drains. Returns the sessions opened and the
/// router's RSS if it was asked for.
fn coordinate(
    plan: &Plan,
    shared: &Shared,
    stats: &[Arc<WorkerStats>],
    snapshots: &Receiver<(usize, Histogram<u64>)>,
) -> Result<Setup, RunError> {
    let nodes = u64::from(plan.population.nodes);
    let setup_started = Instant::now();
    let mut last_line = Instant::now();
    while shared.ready.load(Ordering::SeqCst) < nodes {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(RunError(
                shared.errors.lock().expect("errors lock").join("; "),
            ));
        }
        if setup_started.elapsed() > SETUP_TIMEOUT {
            return Err(RunError("nodes did not open their sessions in time".into()));
        }
        if !plan.quiet && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let ops: u64 = stats
                .iter()
                .map(|s| s.session_ops.load(Ordering::Relaxed))
                .sum();
            eprintln!(
                "setup: {}/{} nodes ready, {} session opens sent",
                shared.ready.load(Ordering::SeqCst),
                nodes,
                report::group(ops)
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let sessions = u64::from(plan.population.users) * u64::from(plan.population.devices_per_user);
    let router_rss_bytes = plan.router_pid.and_then(read_rss);
    let mut router_cpu = None;
    let mut router_system_cpu = None;

    let start_ns = shared.clock.now_ns() + 20_000_000;
    let measure_from_ns = start_ns + (plan.warmup_s * 1e9) as u64;
    let end_ns = measure_from_ns + (plan.duration_s * 1e9) as u64;
    shared.start_ns.store(start_ns, Ordering::SeqCst);

    let mut cumulative: Vec<Option<Histogram<u64>>> = vec![None; plan.cpus.len()];
    let total = |pick: fn(&WorkerStats) -> &std::sync::atomic::AtomicU64| -> u64 {
        stats.iter().map(|s| pick(s).load(Ordering::Relaxed)).sum()
    };
    let mut previous = (0u64, 0u64, start_ns);
    let mut next_line_ns = start_ns + 1_000_000_000;
    let mut cpu_at_measure_start = None;
    while shared.clock.now_ns() < end_ns && !shared.failed.load(Ordering::SeqCst) {
        // Wake for the next progress line, the start of the measured window
        // (to sample the router's CPU time there), or the end.
        let now = shared.clock.now_ns();
        let mut wake_ns = next_line_ns.min(end_ns);
        if cpu_at_measure_start.is_none() {
            wake_ns = wake_ns.min(measure_from_ns);
        }
        std::thread::sleep(Duration::from_nanos(wake_ns.saturating_sub(now).max(1)));
        let now = shared.clock.now_ns();
        if cpu_at_measure_start.is_none() && now >= measure_from_ns {
            cpu_at_measure_start = Some(plan.router_pid.and_then(read_cpu_seconds));
        }
        if now >= end_ns {
            let end_cpu = plan.router_pid.and_then(read_cpu_seconds);
            if let (Some(Some(start)), Some(end)) = (cpu_at_measure_start, end_cpu) {
                router_cpu = Some((end.0 + end.1) - (start.0 + start.1));
                router_system_cpu = Some(end.1 - start.1);
            }
        }
        if now < next_line_ns {
            continue;
        }
        next_line_ns += 1_000_000_000;
        while let Ok((thread, histogram)) = snapshots.try_recv() {
            cumulative[thread] = Some(histogram);
        }
        let (sent, delivered) = (total(|s| &s.sent), total(|s| &s.delivered));
        let elapsed_s = (now - previous.2) as f64 / 1e9;
        let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        for histogram in cumulative.iter().flatten() {
            let _ = merged.add(histogram);
        }
        let p99 = if merged.is_empty() {
            0.0
        } else {
            merged.value_at_quantile(0.99) as f64 / 1000.0
        };
        if !plan.quiet {
            eprintln!(
                "{}",
                report::progress_line(
                    (now - start_ns) as f64 / 1e9,
                    ((sent - previous.0) as f64 / elapsed_s) as u64,
                    ((delivered - previous.1) as f64 / elapsed_s) as u64,
                    p99,
                    total(|s| &s.errors)
                )
            );
        }
        previous = (sent, delivered, now);
    }

    // Drain: until every expected event arrived, nothing arrived for a
    // while, or the drain time is up.
    let drain_until = Instant::now() + Duration::from_secs_f64(plan.drain_s);
    let mut quiet_since = Instant::now();
    let mut last_seen = shared.last_observed_ns.load(Ordering::Relaxed);
    while Instant::now() < drain_until && !shared.failed.load(Ordering::SeqCst) {
        let expected: u64 = shared
            .expected_events
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum();
        let observed: u64 = shared
            .observed_events
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum();
        if observed >= expected && plan.scenario == ScenarioName::Chat {
            break;
        }
        let seen = shared.last_observed_ns.load(Ordering::Relaxed);
        if seen != last_seen {
            last_seen = seen;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= DRAIN_QUIET {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Setup {
        sessions,
        router_rss_bytes,
        router_cpu_s: router_cpu,
        router_system_cpu_s: router_system_cpu,
    })
}

/// What the coordinator measured besides the logs.
struct Setup {
    sessions: u64,
    router_rss_bytes: Option<u64>,
    /// CPU seconds the router used in the measured window.
    router_cpu_s: Option<f64>,
    /// The part of it spent in the kernel.
    router_system_cpu_s: Option<f64>,
}

/// CPU time a process used so far, from /proc/PID/stat, as (user, system)
/// seconds; Linux reports it in units of 1/100 s (USER_HZ).
fn read_cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user as f64 / 100.0, system as f64 / 100.0))
}

/// Resident memory of a process, from /proc/PID/status.
fn read_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn judge(
    plan: &Plan,
    shared: &Shared,
    results: Vec<WorkerResult>,
    setup: Setup,
    errors: Vec<String>,
    stats: &[Arc<WorkerStats>],
) -> Result<Results, RunError> {
    let nodes = plan.population.nodes as usize;
    let mut sent_by_node: Vec<Vec<Sent>> = vec![Vec::new(); nodes];
    let mut observed = Vec::new();
    let mut changes = Vec::new();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut send_lateness =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut shards = 1;
    let mut kicks = Vec::new();
    let mut located = HashMap::new();
    let mut failures: Vec<Vec<u64>> = vec![Vec::new(); nodes];
    for result in results {
        kicks.extend(result.kicks);
        located.extend(result.located);
        for (node, times) in result.failures {
            failures[node as usize] = times;
        }
        for (node, log) in result.sent {
            sent_by_node[node as usize] = log;
        }
        observed.extend(result.observed);
        changes.extend(result.changes);
        let _ = latency.add(&result.latency);
        let _ = send_lateness.add(&result.send_lateness);
        shards = shards.max(result.shard_count);
    }
    let params = CheckParams {
        population: plan.population,
        ack: plan.ack,
        group_sizes: plan.group_sizes,
        offline_ratio: plan.offline_ratio,
        end_ns: shared.clock.now_ns(),
    };
    let timelines = Timelines::new(changes);
    let mut tally = oracle::check(&params, &sent_by_node, observed, &timelines, &failures);
    let mut errors = errors;
    let reconnects = shared.reconnect_log.lock().expect("log").clone();
    // The scenario's events must all have happened, or the run proved
    // nothing about them.
    let count = |pattern: &str| reconnects.iter().filter(|l| l.contains(pattern)).count();
    match plan.scenario {
        ScenarioName::Failover if count("cut ") != 2 => {
            errors.push("failover: the two cuts did not both happen".into())
        }
        ScenarioName::Soak if count("cut ") != crate::scenario::soak::cuts(plan) => {
            errors.push(format!(
                "soak: {} of {} cuts happened",
                count("cut "),
                crate::scenario::soak::cuts(plan)
            ))
        }
        ScenarioName::Restart if count("router killed") != 1 || count("reconnected") != nodes => {
            errors.push(format!(
                "restart: {} kill(s), {} of {nodes} nodes reconnected",
                count("router killed"),
                count("reconnected")
            ))
        }
        _ => {}
    }
    if plan.scenario == ScenarioName::Policy {
        let contested = crate::policy::contested_count(plan.population.users);
        let verdict = crate::policy::judge(
            plan.login_policy,
            contested,
            plan.population.nodes,
            &kicks,
            &located,
        );
        tally.policy_violations = verdict.violations;
        tally.contested_users = verdict.users;
        tally.kicks = verdict.kicks;
        errors.extend(verdict.first);
    }
    Ok(Results {
        tally,
        shards,
        latency,
        send_lateness,
        session_ops_measured: stats
            .iter()
            .map(|s| s.session_ops_measured.load(Ordering::Relaxed))
            .sum(),
        router_rss_bytes: setup.router_rss_bytes,
        router_cpu_s: setup.router_cpu_s,
        router_system_cpu_s: setup.router_system_cpu_s,
        sessions: setup.sessions,
        errors,
        reconnects,
    })
}

/// One generator thread: runs its nodes, then hands in their logs.
async fn worker_main(
    thread: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    recipients: Recipients,
    nodes: Vec<u32>,
    snapshots: Sender<(usize, Histogram<u64>)>,
) -> WorkerResult {
    let worker = Rc::new(Worker::new(plan.clone(), shared.clone(), stats, recipients));
    let reporter = glommio::spawn_local({
        let worker = worker.clone();
        async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                let snapshot = worker.latency.borrow().clone();
                let _ = snapshots.try_send((thread, snapshot));
            }
        }
    });
    let pacer = glommio::spawn_local({
        let worker = worker.clone();
        let tick = Duration::from_micros(plan.tick_us);
        async move {
            loop {
                glommio::timer::sleep(tick).await;
                worker.tick.notify_all();
            }
        }
    });
    let tasks: Vec<_> = nodes
        .iter()
        .map(|&index| glommio::spawn_local(run_node(worker.clone(), index)))
        .collect();
    let mut sim_nodes = Vec::new();
    for task in tasks {
        match task.await {
            Ok(node) => sim_nodes.push(node),
            Err(error) => shared.fail(error),
        }
    }
    while !shared.finished.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    drop(reporter);
    drop(pacer);

    let mut sent = Vec::new();
    let mut changes = Vec::new();
    let mut shard_count = 1;
    let mut kicks = Vec::new();
    let mut located = HashMap::new();
    let mut failures = Vec::new();
    for node in &sim_nodes {
        failures.push((node.index, node.failures.borrow().clone()));
        changes.extend(node.extra_changes.borrow().iter().copied());
        let mut policy = node.policy.borrow_mut();
        kicks.extend(
            policy
                .kicks
                .drain(..)
                .map(|(user, device)| (node.index, user, device)),
        );
        located.extend(policy.located.drain());
        drop(policy);
        shard_count = shard_count.max(node.shard_count);
        sent.push((node.index, std::mem::take(&mut *node.sent.borrow_mut())));
        let churn = node.churn.borrow();
        for (change, batch) in &churn.changes {
            let confirmed_ns = churn
                .batch_confirmed
                .get(batch)
                .copied()
                .unwrap_or(u64::MAX);
            changes.push(SessionChange {
                confirmed_ns,
                ..*change
            });
        }
    }
    let observed = std::mem::take(&mut *worker.observed.borrow_mut());
    let latency = worker.latency.borrow().clone();
    let send_lateness = worker.send_lateness.borrow().clone();
    WorkerResult {
        sent,
        observed,
        changes,
        latency,
        send_lateness,
        shard_count,
        kicks,
        located,
        failures,
    }
}

/// Restart scenario: runs the router (`sh -c "exec CMD"`), kills it while
/// traffic flows and starts it again, and stops it at the end.
struct Restarter {
    thread: std::thread::JoinHandle<()>,
    shared: Arc<Shared>,
}

/// How long a (re)started router may take to accept connections.
const ROUTER_START_TIMEOUT: Duration = Duration::from_secs(20);

impl Restarter {
    fn start(command: &str, plan: &Plan, shared: Arc<Shared>) -> Result<Restarter, RunError> {
        let (command, router) = (command.to_string(), plan.router);
        // Started again until it says it is ready: right after a SIGKILL
        // the old process's listening socket can outlive it for a moment
        // (its io_uring is torn down asynchronously), and the new one
        // fails to bind.
        let spawn = move || -> Result<std::process::Child, RunError> {
            use std::io::BufRead;
            let started = Instant::now();
            loop {
                let mut child = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("exec {command}"))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| RunError(format!("--router-cmd: {e}")))?;
                let mut lines = std::io::BufReader::new(child.stderr.take().expect("piped"));
                let mut line = String::new();
                let mut ready = false;
                while lines.read_line(&mut line).unwrap_or(0) > 0 {
                    eprint!("{line}");
                    if line.contains("ready: listening on") {
                        ready = true;
                        break;
                    }
                    line.clear();
                }
                if ready {
                    // Keep draining its log so that it never blocks on it.
                    std::thread::spawn(move || {
                        let mut line = String::new();
                        while lines.read_line(&mut line).unwrap_or(0) > 0 {
                            line.clear();
                        }
                    });
                    return Ok(child);
                }
                let _ = child.wait();
                if started.elapsed() > ROUTER_START_TIMEOUT {
                    return Err(RunError(format!(
                        "--router-cmd: the router did not start listening on {router} within {} s",
                        ROUTER_START_TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let mut child = spawn()?;
        let span_ns = ((plan.warmup_s + plan.duration_s) * 1e9) as u64;
        let thread_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            let shared = thread_shared;
            let finished =
                || shared.finished.load(Ordering::SeqCst) || shared.failed.load(Ordering::SeqCst);
            let mut killed = false;
            while !finished() {
                let start_ns = shared.start_ns.load(Ordering::SeqCst);
                if !killed && start_ns != 0 && shared.clock.now_ns() >= start_ns + span_ns * 2 / 5 {
                    killed = true;
                    shared
                        .killed_ns
                        .store(shared.clock.now_ns(), Ordering::SeqCst);
                    let _ = child.kill();
                    let _ = child.wait();
                    let line = format!(
                        "router killed (SIGKILL) at {:.2} s and started again",
                        (shared.clock.now_ns() - start_ns) as f64 / 1e9
                    );
                    match spawn() {
                        Ok(again) => child = again,
                        Err(e) => {
                            shared.fail(e.0);
                            return;
                        }
                    }
                    shared.reconnect_log.lock().expect("log").push(line);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        Ok(Restarter { thread, shared })
    }

    /// Stops the router (the run is over).
    fn stop(self) {
        self.shared.finished.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// One node: connect, open sessions, wait for the start, run the scenario.
async fn run_node(worker: Rc<Worker>, index: u32) -> Result<Rc<SimNode>, String> {
    let plan = worker.plan.clone();
    let node = match plan.target {
        Target::Imrouter => {
            let (links, shard_count) = sim::imrouter::connect(&worker, index).await?;
            Rc::new(SimNode::new(index, worker.clone(), links, shard_count))
        }
        Target::Nats => {
            let link = sim::nats::connect(&worker, index).await?;
            Rc::new(SimNode::new(index, worker.clone(), vec![link], 1))
        }
    };
    for link in &node.links {
        glommio::spawn_local(link.clone().run_writer()).detach();
        let reader = match plan.target {
            Target::Imrouter => {
                glommio::spawn_local(sim::imrouter::run_reader(node.clone(), link.clone()))
            }
            Target::Nats => glommio::spawn_local(sim::nats::run_reader(node.clone(), link.clone())),
        };
        reader.detach();
    }
    if plan.target == Target::Imrouter {
        node.open_sessions().await;
    }
    worker.shared.ready.fetch_add(1, Ordering::SeqCst);

    let shared = &worker.shared;
    let start_ns = loop {
        let start_ns = shared.start_ns.load(Ordering::SeqCst);
        if start_ns != 0 {
            break start_ns;
        }
        if shared.failed.load(Ordering::SeqCst) || shared.finished.load(Ordering::SeqCst) {
            return Ok(node);
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    };
    let measure_from_ns = start_ns + (plan.warmup_s * 1e9) as u64;
    let schedule = Schedule {
        start_ns,
        measure_from_ns,
        end_ns: measure_from_ns + (plan.duration_s * 1e9) as u64,
    };
    worker.schedule.set(Some(schedule));
    let now = worker.now_ns();
    if start_ns > now {
        glommio::timer::sleep(Duration::from_nanos(start_ns - now)).await;
    }
    scenario::run(node.clone(), schedule).await;
    Ok(node)
}
