//! The deterministic simulation (src/sim): many seeds, each a whole
//! router (every shard) and several nodes with faults, checked by the
//! oracle after every step and at the end. `scripts/simulate.sh --seeds N`
//! runs as many as asked; a seed that ever failed is kept below, with what
//! it found, and replays exactly.

use imrouter::sim;

fn check(seed: u64) {
    let report = sim::run_seed(seed);
    if !report.ok() {
        for line in &report.trace {
            eprintln!("{line}");
        }
        panic!(
            "seed {seed} failed ({:?}):\n{:#?}\nreplay: target/release/imrouter-sim --seed {seed} --trace",
            report.config, report.violations
        );
    }
}

/// Seeds run by every `cargo test` (`IMROUTER_SIM_SEEDS` and
/// `IMROUTER_SIM_FIRST` choose others), on every core.
#[test]
fn seeds() {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (first, count) = (
        env("IMROUTER_SIM_FIRST", 0),
        env("IMROUTER_SIM_SEEDS", 3000),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut seed = first + t;
                while seed < first + count {
                    check(seed);
                    seed += threads;
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Regression seeds: each failed once, for the reason given; they run
/// with the code of today and must stay clean.
#[test]
fn seeds_that_found_bugs() {
    // A node's Route and Deliver with the CARBON flag: the recipient's own
    // Deliver carried CARBON too, so no node could tell it from a carbon
    // copy (now CARBON marks carbon copies only).
    check(5);
    // Frames a node had sent but the router had not read when it timed
    // the connection out were lost on resume: the node's own stream is
    // now resumable (Welcome.received, router Acks, NodeCore resends).
    check(10);
    // A Goodbye and a quick reconnect of the same process: the verdicts of
    // the old connection reached the new one (a connection that ends for
    // good now leaves the directory at once; the new one has a new epoch).
    check(719);
    // A node whose Welcome was lost in a cut was resumed on a stream it
    // never saw, and sent old frames into it again (streams now have an
    // identity a resume must present).
    check(6763);
    // A node reading as fast as its network allowed was closed as a slow
    // consumer because others' messages filled its buffer (now its own
    // reader pauses at the hard limit; only a node that reads nothing
    // for --node-timeout-ms is closed).
    check(304);
    // The node core's frame bookkeeping without acks cut a frame in half
    // (a panic).
    check(248);
    // A suspension whose park had filled up was still resumed, without the
    // verdict it had no room for (a given-up suspension is not resumable
    // now); and the verdicts of a node's old stream reached its new stream
    // of the same process (verdicts now go to their stream, by its tag).
    check(137_769);
    // The simulator's own mistake: a write to a node delayed longer than
    // --node-timeout-ms (a network stall) made the router close it as a
    // slow consumer, rightly, and the oracle called that a bug (it now
    // counts such a stall as the node not reading).
    check(281_796);
    // The simulator's again: long network detours went on while the run
    // settled, so a node resending a large backlog was timed out again
    // and again and its messages never settled (detours now stop with
    // the other faults).
    check(209_296);
}

/// The whole cluster (routers' control planes, a fake etcd, a shard core
/// per router, nodes running the cluster logic), under crashes, pauses,
/// etcd partitions and outages, joins, drains and cut node connections.
/// `imrouter-sim --cluster --seeds N` runs more. Each seed listed failed
/// once:
/// - 1: a Welcome from a router with no id yet (0) renamed the node's
///   link, so the router's slots had no link and its Routes waited;
/// - 9: a router that gained a dead router's slots rebuilt them without a
///   node that had not connected to it yet (false Offline): the rebuild
///   now also waits for as many nodes as any router has (etcd);
/// - 0: a map of the same epoch listing a router that joined was ignored,
///   so nodes connected to it only once it owned slots;
/// - 13, 20: two routers' listings of one epoch differed and nodes flipped
///   between them, dropping and adding links without end (listings only
///   grow within an epoch now);
/// - 29: a cluster of one live router was taken for a router alone;
/// - 33: every router a node knew registered again under new ids, and the
///   node, having dropped their links, heard of the cluster no more (links
///   to addresses the map forgot stay, as probes);
/// - 181: a router that had just started served "no session" for slots it
///   gained before every node had connected (the warm-up applies, as in
///   production);
/// - 191: every router a node knew died, and the node knew no other host
///   (nodes are given every router host as seeds, as docs/CLUSTER.md
///   says).
#[test]
fn cluster_seeds() {
    use imrouter::sim::control::run_cluster_seed;
    let seeds: Vec<u64> = [1, 9, 0, 13, 20, 29, 33, 181, 191]
        .into_iter()
        .chain(2..6)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
            std::thread::spawn(move || {
                for seed in mine {
                    if let Err((config, error, trace)) = run_cluster_seed(seed) {
                        let tail: Vec<&String> = trace.iter().rev().take(40).rev().collect();
                        panic!(
                            "cluster seed {seed}: {error}\n{config:?}\n{tail:#?}\nreplay: target/release/imrouter-sim --cluster --seed {seed} --trace"
                        );
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }
}
