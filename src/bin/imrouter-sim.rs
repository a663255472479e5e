//! Runs the deterministic simulation over many seeds (see `imrouter::sim`).
//!
//! ```text
//! imrouter-sim --seeds 100000 [--first 0] [--threads 2]   # many seeds
//! imrouter-sim --seed 1234 [--trace]                        # one, replayed
//! imrouter-sim --control --seeds 10000                      # the cluster's control plane
//! imrouter-sim --cluster --seeds 10000                      # the whole cluster: control
//!                                                           # plane, shards and nodes
//! ```
//!
//! Prints a line per 10,000 seeds, and for the first failing seed its
//! configuration, violations and the end of its trace; exits 1 then.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use imrouter::sim::{self, Report};

struct Args {
    first: u64,
    seeds: u64,
    threads: usize,
    trace: bool,
    control: bool,
    cluster: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        first: 0,
        seeds: 1000,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        trace: false,
        control: false,
        cluster: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--seeds" => args.seeds = value()?,
            "--first" => args.first = value()?,
            "--threads" => args.threads = value()?.max(1) as usize,
            "--seed" => {
                args.first = value()?;
                args.seeds = 1;
            }
            "--trace" => args.trace = true,
            "--control" => args.control = true,
            "--cluster" => {
                args.control = true;
                args.cluster = true;
            }
            "--help" | "-h" => return Err(
                "usage: imrouter-sim [--control | --cluster] [--seeds N] [--first S] [--threads T] | --seed S [--trace]"
                    .into(),
            ),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn print_failure(report: &Report) {
    eprintln!("seed {} FAILED", report.seed);
    eprintln!("  config: {:?}", report.config);
    eprintln!(
        "  after {} steps, {:?} of virtual time; faults {:?}",
        report.steps, report.virtual_time, report.faults
    );
    for violation in &report.violations {
        eprintln!("  violation: {}", violation.0);
    }
    eprintln!("  trace (last {} lines):", report.trace.len());
    for line in &report.trace {
        eprintln!("    {line}");
    }
    eprintln!("replay: imrouter-sim --seed {} --trace", report.seed);
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(text) => {
            eprintln!("{text}");
            return ExitCode::from(2);
        }
    };
    if args.control {
        return run_control(&args);
    }
    if args.trace {
        // SAFETY (not unsafe): the simulation reads this to keep a longer trace.
        std::env::set_var("IMROUTER_SIM_TRACE", "1000000");
    }
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.first));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let first_failure: Arc<Mutex<Option<Report>>> = Arc::new(Mutex::new(None));
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0u64, 0usize, 0u64)));
    let metrics = Arc::new(Mutex::new(imrouter::metrics::ShardMetrics::default()));
    let end = args.first + args.seeds;
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (next, done, failed, first_failure, totals, metrics) = (
                next.clone(),
                done.clone(),
                failed.clone(),
                first_failure.clone(),
                totals.clone(),
                metrics.clone(),
            );
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end || failed.load(Ordering::Relaxed) {
                    return;
                }
                let report = sim::run_seed(seed);
                {
                    let mut totals = totals.lock().expect("totals");
                    totals.0 += report.steps;
                    totals.1 += report.faults.cuts + report.faults.crashes + report.faults.restarts;
                    totals.2 += report.faults.goodbyes + report.faults.stops;
                    totals.3 += report.routes;
                    totals.4 += report.virtual_time.as_nanos() / 1_000_000;
                    metrics.lock().expect("metrics").add(&report.metrics);
                }
                if !report.ok() {
                    failed.store(true, Ordering::Relaxed);
                    let mut slot = first_failure.lock().expect("failure");
                    if slot.as_ref().is_none_or(|r| r.seed > seed) {
                        *slot = Some(report);
                    }
                    return;
                }
                let count = done.fetch_add(1, Ordering::Relaxed) + 1;
                if count % 10_000 == 0 {
                    eprintln!(
                        "{count} seeds clean, {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    if let Some(report) = first_failure.lock().expect("failure").take() {
        print_failure(&report);
        return ExitCode::FAILURE;
    }
    let (steps, hard_faults, soft_faults, routes, virtual_ms) = *totals.lock().expect("totals");
    println!(
        "{} seeds clean (from {}) in {:.1} s: {steps} steps, {routes} Routes, {hard_faults} cuts/crashes/restarts, {soft_faults} goodbyes/stalls, {:.0} s of virtual time",
        done.load(Ordering::Relaxed),
        args.first,
        started.elapsed().as_secs_f64(),
        virtual_ms as f64 / 1000.0
    );
    let m = *metrics.lock().expect("metrics");
    println!(
        "paths (the routers' counters at the end of each run, summed): resumed {}, suspensions expired {}, park full {}, parked messages failed {}, \
         timed out {}, ack timeouts {}, write stalls {}, slow consumers {}, refused {}, copies held {}, copies dropped {}, reads paused {}, \
         Busy {}, Offline {}, kicks {}, evictions {}, syncs {}, sessions removed by sync {}, fanouts {}, broadcasts {}, publishes {}, locates {}, hand-offs {}",
        m.connections_resumed,
        m.suspensions_expired,
        m.suspensions_park_full,
        m.parked_messages_failed,
        m.connections_timed_out,
        m.ack_timeouts,
        m.write_stalls,
        m.connections_slow,
        m.connections_refused,
        m.copies_held,
        m.copies_dropped,
        m.reads_paused,
        m.routes_busy,
        m.routes_offline,
        m.kicks,
        m.sessions_evicted,
        m.syncs_committed,
        m.sessions_removed_by_sync,
        m.fanouts_in,
        m.broadcasts_in,
        m.publishes,
        m.locates,
        m.connections_handed_off
    );
    ExitCode::SUCCESS
}

/// The cluster's control plane alone (`imrouter::sim::control`): routers'
/// memberships and a fake etcd, with crashes, pauses, partitions, etcd
/// outages, joins and drains.
fn run_control(args: &Args) -> ExitCode {
    use imrouter::sim::control::{self, ControlStats};
    use imrouter::sim::data::DataStats;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.first));
    let failed = Arc::new(Mutex::new(None::<(u64, String)>));
    let totals = Arc::new(Mutex::new((
        0u64,
        ControlStats::default(),
        DataStats::default(),
    )));
    let end = args.first + args.seeds;
    let verbose = args.trace;
    let cluster = args.cluster;
    let mode = if cluster { "--cluster" } else { "--control" };
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (next, failed, totals) = (next.clone(), failed.clone(), totals.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end || failed.lock().expect("failed").is_some() {
                    return;
                }
                let result = if cluster {
                    control::run_cluster_seed(seed)
                } else {
                    control::run_seed(seed).map(|stats| (stats, DataStats::default()))
                };
                match result {
                    Ok((stats, data)) => {
                        let mut totals = totals.lock().expect("totals");
                        totals.0 += 1;
                        let d = &mut totals.2;
                        d.routes += data.routes;
                        d.routed += data.routed;
                        d.offline_allowed += data.offline_allowed;
                        d.unknown_final += data.unknown_final;
                        d.resends += data.resends;
                        d.duplicates_dropped += data.duplicates_dropped;
                        d.unknown_retries += data.unknown_retries;
                        d.node_cuts += data.node_cuts;
                        d.resyncs += data.resyncs;
                        let t = &mut totals.1;
                        t.steps += stats.steps;
                        t.crashes += stats.crashes;
                        t.pauses += stats.pauses;
                        t.cuts += stats.cuts;
                        t.etcd_outages += stats.etcd_outages;
                        t.joins += stats.joins;
                        t.drains += stats.drains;
                        t.epochs += stats.epochs;
                        t.worst_gap_ms = t.worst_gap_ms.max(stats.worst_gap_ms);
                        if totals.0 % 10_000 == 0 {
                            eprintln!(
                                "{} seeds clean, {:.0} s",
                                totals.0,
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err((config, error, trace)) => {
                        let mut text =
                            format!("seed {seed} FAILED: {error}\n  config: {config:?}\n");
                        let keep = if verbose { trace.len() } else { 40 };
                        for line in trace.iter().skip(trace.len().saturating_sub(keep)) {
                            text.push_str(&format!("    {line}\n"));
                        }
                        text.push_str(&format!(
                            "replay: imrouter-sim {mode} --seed {seed} --trace\n"
                        ));
                        let mut slot = failed.lock().expect("failed");
                        if slot.as_ref().is_none_or(|(s, _)| *s > seed) {
                            *slot = Some((seed, text));
                        }
                        return;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    if let Some((_, text)) = failed.lock().expect("failed").take() {
        eprint!("{text}");
        return ExitCode::FAILURE;
    }
    let (count, t, d) = totals.lock().expect("totals").clone();
    if cluster {
        println!(
            "cluster data plane: {} Routes, {} Routed, {} Offline while the recipient's node had just lost a connection, {} Unknown after every retry; {} resends, {} duplicates dropped, {} Unknown retries, {} resyncs, {} node-router cuts",
            d.routes, d.routed, d.offline_allowed, d.unknown_final, d.resends, d.duplicates_dropped, d.unknown_retries, d.resyncs, d.node_cuts
        );
    }
    println!(
        "{count} {} seeds clean (from {}) in {:.1} s: {} steps, {} crashes, {} pauses, {} router-etcd cuts, {} etcd outages, {} joins, {} drains, {} epochs written; longest a slot went unserved: {} ms",
        if cluster { "cluster" } else { "control-plane" },
        args.first,
        started.elapsed().as_secs_f64(),
        t.steps, t.crashes, t.pauses, t.cuts, t.etcd_outages, t.joins, t.drains, t.epochs, t.worst_gap_ms
    );
    ExitCode::SUCCESS
}
