//! Flags, and the validated plan of a run.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use imrouter::table::LoginPolicy;

use crate::workload::{Population, PAYLOAD_HEADER_BYTES};

/// imrouter-loadgen: simulated IM nodes that drive an imrouter (or a
/// nats-server, for comparison) and check every message's outcome.
#[derive(Debug, Clone, Parser)]
#[command(name = "imrouter-loadgen", version, about, long_about = None)]
pub struct Args {
    /// The router (or nats-server) to drive.
    #[arg(long, default_value = "127.0.0.1:7800", value_name = "ADDR")]
    pub router: String,

    /// What `--router` points at.
    #[arg(long, value_enum, default_value_t = Target::Imrouter)]
    pub target: Target,

    /// The workload.
    #[arg(long, value_enum, default_value_t = ScenarioName::Chat)]
    pub scenario: ScenarioName,

    /// Simulated IM nodes.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub nodes: u32,

    /// Online users (each with `--devices-per-user` sessions).
    #[arg(long, default_value_t = 10_000, value_name = "U")]
    pub users: u32,

    /// Sessions per user; device d of user u sits on node (u + d) mod nodes.
    #[arg(long, default_value_t = 1, value_name = "D")]
    pub devices_per_user: u8,

    /// Open one connection per router shard and send each frame on the
    /// connection of its user's owner shard.
    #[arg(long)]
    pub shard_direct: bool,

    /// Messages per second across all nodes on a fixed schedule, or `max`
    /// for the most the router takes with `--window` messages in flight per
    /// node.
    #[arg(long, default_value = "100000", value_name = "R|max")]
    pub rate: String,

    /// Period of each generator thread's pacer, in microseconds: with a
    /// fixed --rate, nodes send what is due on every tick (a message leaves
    /// at most one tick late, and that counts in its latency; the summary
    /// reports how late messages actually left). Each tick is a timer
    /// wake-up, which costs tens of microseconds of CPU on a VM.
    #[arg(long, default_value_t = 100, value_name = "US")]
    pub tick_us: u64,

    /// Messages in flight per node with `--rate max`.
    #[arg(long, default_value_t = 256, value_name = "W")]
    pub window: u32,

    /// Seconds of measured traffic.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub duration: f64,

    /// Seconds of traffic before the measurement (checked, not measured).
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    pub warmup: f64,

    /// Most seconds to wait after the traffic for outstanding outcomes.
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    pub drain: f64,

    /// Bytes of each message's payload (at least 16: due time and id).
    #[arg(long, default_value_t = 64, value_name = "B")]
    pub payload_bytes: usize,

    /// How recipients are drawn from the online users.
    #[arg(long, value_enum, default_value_t = RecipientsName::Uniform)]
    pub recipients: RecipientsName,

    /// Exponent of the zipf distribution.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    pub zipf_exponent: f64,

    /// Share of messages sent to users with no session (they must come
    /// back Offline). Must be 0 with `--target nats`.
    #[arg(long, default_value_t = 0.05, value_name = "F")]
    pub offline_ratio: f64,

    /// Share of messages addressed to one device. Must be 0 with
    /// `--target nats`.
    #[arg(long, default_value_t = 0.1, value_name = "F")]
    pub to_device_ratio: f64,

    /// Churn: session opens and closes per second across all nodes, or
    /// `max` for as many as the router confirms.
    #[arg(long, default_value = "10000", value_name = "OPS|max")]
    pub churn_rate: String,

    /// Ask for a Routed verdict on every message (ACK flag).
    #[arg(long)]
    pub ack: bool,

    /// Fanout scenario: group sizes, one picked per message. Each group
    /// also lists --offline-ratio as many offline users. Big groups need
    /// the router's --max-frame-bytes to fit them (about 20 bytes per
    /// member: 524288 for 10,000).
    #[arg(long, default_value = "10,100,1000,10000", value_name = "LIST")]
    pub group_sizes: String,

    /// Policy scenario: the router's --login-policy, which the final
    /// sessions are checked against.
    #[arg(long, value_enum, default_value_t = LoginPolicy::SameDeviceKick)]
    pub login_policy: LoginPolicy,

    /// CPUs for the generator's threads, one thread each ("1" or "2,3").
    /// Default: every CPU this process may run on.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,

    /// Write the results as JSON (fields in the README).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Write the latency distribution in HdrHistogram's .hgrm text format.
    #[arg(long, value_name = "PATH")]
    pub histogram: Option<PathBuf>,

    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// The router's (or nats-server's) process id: report its resident
    /// memory once all sessions are open, and the CPU time it used in the
    /// measured window (from /proc), for per-core figures.
    #[arg(long, value_name = "PID")]
    pub router_pid: Option<u32>,

    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,

    /// The router's --reconnect-grace-ms. The failover scenario's first
    /// cut lasts a quarter of it, its second one second longer than it.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub reconnect_grace_ms: u64,

    /// Restart scenario: the shell command that starts the router
    /// (`sh -c CMD`, listening on --router). The generator starts it,
    /// kills it (SIGKILL) while traffic flows, starts it again, and stops
    /// it at the end.
    #[arg(long, value_name = "CMD")]
    pub router_cmd: Option<String>,

    /// Cluster scenarios: routers to start (3 for the fault scenarios).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub routers: usize,

    /// Cluster scenarios: the imrouter binary (built with `--features
    /// cluster`). Default: `imrouter` next to this generator.
    #[arg(long, value_name = "PATH")]
    pub router_bin: Option<PathBuf>,

    /// Cluster scenarios: the etcd binary. Default: /usr/bin/etcd.
    #[arg(long, value_name = "PATH")]
    pub etcd_bin: Option<String>,

    /// Cluster scenarios: each router's --shards.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub router_shards: u16,

    /// Cluster scenarios: run the routers under `taskset -c LIST`.
    #[arg(long, value_name = "LIST")]
    pub router_cpus: Option<String>,

    /// Cluster scenarios: the routers' --lease-ttl-ms.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub lease_ttl_ms: u64,

    /// Scenario `cluster` with `--routers 1`: start the router alone,
    /// without etcd and the cluster flags (to compare a cluster's cost per
    /// message with a router alone's, through the same node logic).
    #[arg(long)]
    pub standalone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Imrouter,
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    Chat,
    Churn,
    Fanout,
    Policy,
    Failover,
    /// Chat and churn for a long run, with node 0's connection cut every
    /// minute (alternately resumed and given up): scripts/soak.sh.
    Soak,
    Restart,
    /// Steady traffic through the node core's cluster logic to routers
    /// the generator starts (see `cluster`).
    Cluster,
    RouterKill,
    /// SIGTERM of one router: it drains (hands its slots over, tells the
    /// nodes, waits for them to leave) and exits.
    RouterDrain,
    RouterPause,
    Partition,
    Rebalance,
}

impl ScenarioName {
    /// Whether the scenario runs against routers the generator starts,
    /// in `cluster::main`.
    pub fn is_cluster(self) -> bool {
        matches!(
            self,
            ScenarioName::Cluster
                | ScenarioName::RouterKill
                | ScenarioName::RouterDrain
                | ScenarioName::RouterPause
                | ScenarioName::Partition
                | ScenarioName::Rebalance
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecipientsName {
    Uniform,
    Zipf,
}

/// Messages per second, or as fast as a window allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

/// The validated plan of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub router: SocketAddr,
    pub target: Target,
    pub scenario: ScenarioName,
    pub population: Population,
    pub shard_direct: bool,
    pub rate: Rate,
    pub window: u32,
    pub tick_us: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub drain_s: f64,
    pub payload_bytes: usize,
    pub recipients: RecipientsName,
    pub zipf_exponent: f64,
    pub offline_ratio: f64,
    pub to_device_ratio: f64,
    pub churn_rate: Rate,
    pub ack: bool,
    /// Fanout group sizes (leaked once: the oracle's parameters are Copy).
    pub group_sizes: &'static [u32],
    pub login_policy: LoginPolicy,
    /// One generator thread per CPU.
    pub cpus: Vec<usize>,
    pub json: Option<PathBuf>,
    pub histogram: Option<PathBuf>,
    pub seed: u64,
    pub router_pid: Option<u32>,
    pub quiet: bool,
    /// Nodes acknowledge what they receive (Hello.acks): failover, restart.
    pub acks: bool,
    pub reconnect_grace_ms: u64,
    pub router_cmd: Option<String>,
}

#[derive(Debug)]
pub struct PlanError(pub String);

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlanError {}

fn parse_rate(flag: &str, value: &str) -> Result<Rate, PlanError> {
    if value == "max" {
        return Ok(Rate::Max);
    }
    match value.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(Rate::PerSecond(rate)),
        _ => Err(PlanError(format!(
            "{flag} must be a positive number or max, not {value:?}"
        ))),
    }
}

impl Plan {
    pub fn from_args(args: Args) -> Result<Plan, PlanError> {
        let err = |message: String| Err(PlanError(message));
        let router = args
            .router
            .to_socket_addrs()
            .map_err(|e| PlanError(format!("--router {}: {e}", args.router)))?
            .next()
            .ok_or_else(|| PlanError(format!("--router {}: no address", args.router)))?;
        if args.nodes == 0 || args.nodes >= 1 << 23 {
            return err("--nodes must be 1 to 8388607".into());
        }
        if args.users == 0 {
            return err("--users must be at least 1".into());
        }
        if !(1..=63).contains(&args.devices_per_user) {
            return err("--devices-per-user must be 1 to 63".into());
        }
        if args.payload_bytes < PAYLOAD_HEADER_BYTES || args.payload_bytes > 60 * 1024 {
            return err(format!(
                "--payload-bytes must be {PAYLOAD_HEADER_BYTES} to 61440"
            ));
        }
        for (flag, value) in [
            ("--offline-ratio", args.offline_ratio),
            ("--to-device-ratio", args.to_device_ratio),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return err(format!("{flag} must be between 0 and 1"));
            }
        }
        if args.duration < 0.0 || args.warmup < 0.0 || args.drain < 0.0 {
            return err("--duration, --warmup and --drain must not be negative".into());
        }
        if args.window == 0 {
            return err("--window must be at least 1".into());
        }
        if !(1..=100_000).contains(&args.tick_us) {
            return err("--tick-us must be 1 to 100000".into());
        }
        if args.scenario.is_cluster() {
            return err("the cluster scenarios have their own plan (cluster::ClusterPlan)".into());
        }
        let rate = parse_rate("--rate", &args.rate)?;
        let churn_rate = parse_rate("--churn-rate", &args.churn_rate)?;
        if args.target == Target::Nats {
            if args.offline_ratio != 0.0
                || args.to_device_ratio != 0.0
                || args.devices_per_user != 1
            {
                return err(
                    "--target nats has no offline verdicts and no devices: use --offline-ratio 0 \
                     --to-device-ratio 0 --devices-per-user 1"
                        .into(),
                );
            }
            if args.scenario != ScenarioName::Chat || args.shard_direct || args.ack {
                return err(
                    "--target nats runs the chat scenario only, without --shard-direct or --ack"
                        .into(),
                );
            }
        }
        if matches!(args.scenario, ScenarioName::Churn | ScenarioName::Soak) && rate == Rate::Max {
            return err(
                "--scenario churn needs a fixed --rate (the oracle must know the schedule)".into(),
            );
        }
        let reconnects = matches!(
            args.scenario,
            ScenarioName::Failover | ScenarioName::Restart | ScenarioName::Soak
        );
        if reconnects && (args.shard_direct || !matches!(rate, Rate::PerSecond(_))) {
            return err(
                "--scenario failover and restart need a fixed --rate and no --shard-direct".into(),
            );
        }
        if args.scenario == ScenarioName::Failover
            && args.duration + args.warmup < 2.5 * (args.reconnect_grace_ms as f64 / 1e3 + 1.5)
        {
            return err(format!(
                "--scenario failover needs --warmup plus --duration of at least {:.1} s with \
                 --reconnect-grace-ms {} (room for both cuts)",
                2.5 * (args.reconnect_grace_ms as f64 / 1e3 + 1.5),
                args.reconnect_grace_ms
            ));
        }
        if args.scenario == ScenarioName::Restart && args.router_cmd.is_none() {
            return err("--scenario restart needs --router-cmd".into());
        }
        let group_sizes: Vec<u32> = args
            .group_sizes
            .split(',')
            .map(|size| size.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|sizes: &Vec<u32>| !sizes.is_empty() && sizes.iter().all(|&s| s > 0))
            .ok_or_else(|| {
                PlanError(format!(
                    "--group-sizes must be positive numbers separated by commas, not {:?}",
                    args.group_sizes
                ))
            })?;
        let group_sizes: &'static [u32] = group_sizes.leak();
        let available = imrouter::config::available_cpus();
        let cpus = match &args.cpus {
            Some(list) => {
                imrouter::config::parse_cpu_list(list).map_err(|e| PlanError(e.to_string()))?
            }
            None => available.clone(),
        };
        if cpus.is_empty() || cpus.iter().any(|cpu| !available.contains(cpu)) {
            return err(format!("--cpus must name CPUs among {available:?}"));
        }
        Ok(Plan {
            router,
            target: args.target,
            scenario: args.scenario,
            population: Population {
                users: args.users,
                devices_per_user: args.devices_per_user,
                nodes: args.nodes,
                offline_users: (args.users / 10).max(1000),
            },
            shard_direct: args.shard_direct,
            rate,
            window: args.window,
            tick_us: args.tick_us,
            duration_s: args.duration,
            warmup_s: args.warmup,
            drain_s: args.drain,
            payload_bytes: args.payload_bytes,
            recipients: args.recipients,
            zipf_exponent: args.zipf_exponent,
            offline_ratio: args.offline_ratio,
            to_device_ratio: args.to_device_ratio,
            churn_rate,
            ack: args.ack,
            cpus,
            json: args.json,
            histogram: args.histogram,
            seed: args.seed,
            router_pid: args.router_pid,
            quiet: args.quiet,
            group_sizes,
            login_policy: args.login_policy,
            acks: reconnects,
            reconnect_grace_ms: args.reconnect_grace_ms,
            router_cmd: args.router_cmd,
        })
    }

    pub fn target_name(&self) -> &'static str {
        match self.target {
            Target::Imrouter => "imrouter",
            Target::Nats => "nats",
        }
    }

    pub fn scenario_name(&self) -> &'static str {
        match self.scenario {
            ScenarioName::Chat => "chat",
            ScenarioName::Churn => "churn",
            ScenarioName::Fanout => "fanout",
            ScenarioName::Policy => "policy",
            ScenarioName::Failover => "failover",
            ScenarioName::Soak => "soak",
            ScenarioName::Restart => "restart",
            ScenarioName::Cluster => "cluster",
            ScenarioName::RouterKill => "router-kill",
            ScenarioName::RouterDrain => "router-drain",
            ScenarioName::RouterPause => "router-pause",
            ScenarioName::Partition => "partition",
            ScenarioName::Rebalance => "rebalance",
        }
    }
}
