//! `imrouter-loadgen`: simulated IM nodes that drive an imrouter (or a
//! nats-server) and check every message's outcome.
//!
//! # Layout
//!
//! - `config`: flags to a validated `Plan`.
//! - `workload`: users, devices, placement, recipients, payloads.
//! - `sim`: simulated nodes and their connections, per target (`imrouter`
//!   through the router's own `wire` code, `nats` in its text protocol).
//! - `scenario`: what nodes do, one module per scenario.
//! - `oracle`: judges every message after the run, from the logs.
//! - `report`: progress lines, summary, JSON, .hgrm.
//! - `run`: generator threads, start barrier, drain.
//! - `cluster`: the scenarios against a cluster of routers the generator
//!   starts with etcd, on the node core's cluster logic, and their oracle.
//!
//! Exit status: 0 when every message had a right outcome, 1 when the
//! oracle found a fault (lost, duplicated, misrouted, wrong verdict,
//! corrupted), 2 when the run itself failed.

mod cluster;
mod config;
mod oracle;
mod policy;
mod report;
mod run;
mod scenario;
mod sim;
mod workload;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = config::Args::parse();
    if args.scenario.is_cluster() {
        return cluster::main(&args);
    }
    let plan = match config::Plan::from_args(args) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("imrouter-loadgen: {error}");
            return ExitCode::from(2);
        }
    };
    let results = match run::run(plan.clone()) {
        Ok(results) => results,
        Err(error) => {
            eprintln!("imrouter-loadgen: {error}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report::summary(&plan, &results));
    let written = [
        plan.json
            .as_ref()
            .map(|path| (path, report::json(&plan, &results))),
        plan.histogram
            .as_ref()
            .map(|path| (path, report::hgrm(&results.latency))),
    ];
    for (path, contents) in written.into_iter().flatten() {
        if let Err(error) = report::write_file(path, &contents) {
            eprintln!("imrouter-loadgen: writing {}: {error}", path.display());
            return ExitCode::from(2);
        }
    }
    if results.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
