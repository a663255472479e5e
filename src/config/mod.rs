//! Command-line flags, and the validated configuration they produce.
//!
//! [`ServeArgs`] is what clap parses; [`Config`] is what the router runs
//! with. Every field of `Config` has been checked against `limits`, so the
//! rest of the code never re-validates.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub mod file;

use crate::logging::LogFormat;
use crate::table::LoginPolicy;
use crate::wire::Auth;

use crate::limits::{
    AUTH_TOKEN_BYTES_MAX, CONNECTIONS_PER_SHARD_MAX_CEILING, CONNECTIONS_PER_SHARD_MAX_DEFAULT,
    FANOUT_MAX_CEILING, FANOUT_MAX_DEFAULT, FRAME_BYTES_MAX_CEILING, FRAME_BYTES_MAX_DEFAULT,
    FRAME_PREFIX_BYTES, HEARTBEAT_MS_DEFAULT, HEARTBEAT_MS_MAX, HEARTBEAT_MS_MIN,
    NODES_MAX_CEILING, NODES_MAX_DEFAULT, NODE_TIMEOUT_HEARTBEATS_DEFAULT,
    OUT_BUFFER_BYTES_DEFAULT, OUT_BUFFER_BYTES_MIN, PARK_BYTES_MAX_DEFAULT, READ_BUFFER_BYTES_MIN,
    RECONNECT_GRACE_MS_DEFAULT, RECONNECT_GRACE_MS_MAX, SESSIONS_MAX_DEFAULT,
    SESSIONS_PER_USER_MAX_CEILING, SESSIONS_PER_USER_MAX_DEFAULT, SHARDS_MAX, TOPICS_MAX_DEFAULT,
};
use crate::limits::{
    CONNECTIONS_MAX_CEILING, CONNECTIONS_MAX_DEFAULT, CONNECTIONS_PER_SOURCE_MAX_DEFAULT,
    HANDSHAKES_PER_SHARD_CEILING, HANDSHAKES_PER_SHARD_MAX,
};
use crate::limits::{
    DRAIN_WINDOW_MS_DEFAULT, DRAIN_WINDOW_MS_MAX, SHUTDOWN_TIMEOUT_MS_DEFAULT,
    SHUTDOWN_TIMEOUT_MS_MAX,
};
use crate::limits::{
    LEASE_TTL_MS_DEFAULT, LEASE_TTL_MS_MAX, LEASE_TTL_MS_MIN, REBALANCE_BATCH_SLOTS,
    REBALANCE_INTERVAL_MS, REBUILD_TIMEOUT_MS_DEFAULT, ROUTER_ADDR_MAX, ROUTER_NAME_MAX,
};

/// imrouter: a thread-per-core message router for clusters of IM servers.
///
/// IM nodes (gateway servers holding client connections) keep one TCP
/// connection to the router, register the sessions of their users, and hand
/// it messages for users on other nodes. See docs/PROTOCOL.md.
#[derive(Debug, Parser)]
#[command(name = "imrouter", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router. Settings come from a TOML file (--config), the
    /// environment (IMROUTER_<FLAG>, e.g. IMROUTER_MAX_FRAME_BYTES) and
    /// flags, each overriding the one before.
    Serve(Box<ServeArgs>),
    /// Check the settings `serve` would run with (file, environment and
    /// flags), print them, and exit: 0 when they are valid, 1 when not.
    CheckConfig(Box<ServeArgs>),
    /// Ask a running router where a user is connected: prints one line per
    /// session (node, device, platform). Exit status 0 when the user has a
    /// session, 1 when not, 2 on an error.
    Locate(LocateArgs),
    /// Print the IM nodes a running router serves (its admin port's
    /// /nodez): connections, sessions, output-buffer bytes, Busy verdicts
    /// given, slow-consumer disconnects and the last Pong, per node.
    Nodes(NodesArgs),
    /// Make a running router drain and stop (as SIGUSR2 does): it stops
    /// accepting, hands its slots to the others (in a cluster), tells its
    /// nodes to leave within --drain-window-ms, then exits. Through its
    /// admin port.
    Drain(DrainArgs),
    /// Look at a cluster of routers, or move a router's slots away before
    /// it stops, through the cluster's etcd (a build with `--features
    /// cluster`).
    Cluster(ClusterArgs),
}

/// Flags of `imrouter cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The cluster's etcd endpoints (comma-separated URLs).
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        required = true
    )]
    pub etcd: Vec<String>,

    /// The cluster's name (`--cluster` of its routers).
    #[arg(long, value_name = "NAME")]
    pub cluster: String,

    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterAction {
    /// Prints the routers (slots, ranges, applied epoch, nodes, lease time
    /// left, health), the map's epoch and the controller.
    Status,
    /// Moves ROUTER's slots to the others, a batch per epoch (its name or
    /// id); then it may stop without a failover.
    Drain { router: String },
    /// Lets a drained ROUTER receive slots again.
    Undrain { router: String },
}

/// Flags of `imrouter nodes`.
#[derive(Debug, Clone, Args)]
pub struct NodesArgs {
    /// The router's admin port (--admin-listen).
    #[arg(long, default_value = "127.0.0.1:7801", value_name = "ADDR")]
    pub router: String,

    /// Print /nodez's JSON (every connection) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// How long to wait for the router, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// Flags of `imrouter drain`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// The router's admin port (--admin-listen).
    #[arg(long, default_value = "127.0.0.1:7801", value_name = "ADDR")]
    pub router: String,

    /// How long to wait for the router's answer, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// Flags of `imrouter locate`.
#[derive(Debug, Clone, Args)]
pub struct LocateArgs {
    /// The router to ask.
    #[arg(long, default_value = "127.0.0.1:7800", value_name = "ADDR")]
    pub router: String,

    /// File holding the token to present, if the router runs with one
    /// (with per-node tokens: the token of `--name`).
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// The node name to connect as. Default: imrouter-locate-<pid>.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// How long to wait for the router, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,

    /// The user id to look up.
    pub user: String,
}

impl LocateArgs {
    /// The router's address.
    pub fn router_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.router
            .to_socket_addrs()
            .map_err(|error| ConfigError::new(format!("--router {}: {error}", self.router)))?
            .next()
            .ok_or_else(|| ConfigError::new(format!("--router {}: no address", self.router)))
    }

    /// The auth token from `--auth-token-file`, if given.
    pub fn auth_token(&self) -> Result<Option<String>, ConfigError> {
        self.auth_token_file.as_ref().map(read_token).transpose()
    }
}

/// Flags of `imrouter serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to accept node connections on (every shard accepts there);
    /// port 0 picks a free port, printed when ready. Starting fails if the
    /// address is in use.
    #[arg(long, default_value = "127.0.0.1:7800", value_name = "ADDR")]
    pub listen: String,

    /// How long nodes get to leave when the router drains (SIGTERM, SIGUSR2,
    /// `imrouter drain`): each is told to go at a random moment within it.
    #[arg(long, default_value_t = DRAIN_WINDOW_MS_DEFAULT, value_name = "MS")]
    pub drain_window_ms: u64,

    /// The longest a drain takes before the router closes the connections
    /// left and exits; a second SIGTERM or SIGINT exits at once.
    #[arg(long, default_value_t = SHUTDOWN_TIMEOUT_MS_DEFAULT, value_name = "MS")]
    pub shutdown_timeout_ms: u64,

    /// A TOML file of settings: each key a flag's long name (`listen =
    /// "0.0.0.0:7800"`, `max-frame-bytes = 65536`). The environment and
    /// flags override it. SIGHUP reads it again (see docs/OPERATIONS.md
    /// for what changes without a restart). Also IMROUTER_CONFIG.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address of the admin port (HTTP: /metrics, /healthz, /readyz,
    /// /nodez), or "off". Default: 127.0.0.1 and the --listen port plus
    /// one (any free port when --listen's is 0). Keep it off public
    /// networks: it has no authentication.
    #[arg(long, value_name = "ADDR|off")]
    pub admin_listen: Option<String>,

    /// What to log: error, warn, info, debug, trace or off, or per module
    /// ("info,imrouter::cluster=debug"). Nothing is logged per message
    /// below trace.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,

    /// How to write log lines to standard error: text, or json (one object
    /// per line: timestamp, level, message and fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// Number of shards (executor threads, each owning a share of the
    /// users). Default: one per CPU this process may run on. More shards
    /// than CPUs is allowed; they then share CPUs.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// CPUs to pin shards to, as a list and/or ranges ("0,2,4" or "0-3").
    /// Shard i runs on the (i mod len)-th CPU. Default: every CPU this
    /// process may run on.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,

    /// Largest frame a node may send, in bytes, length prefix excluded.
    /// A node announcing a larger frame is disconnected with FrameTooLarge.
    #[arg(long, default_value_t = FRAME_BYTES_MAX_DEFAULT, value_name = "N")]
    pub max_frame_bytes: u32,

    /// Soft limit of each connection's output buffer, in bytes. Above it,
    /// new messages for that node get a Busy verdict, and Broadcast copies
    /// wait (their sender is slowed); while twice it waits to be written,
    /// the router stops reading that node. A node whose socket takes
    /// nothing for --node-timeout-ms is closed as a slow consumer.
    #[arg(long, default_value_t = OUT_BUFFER_BYTES_DEFAULT, value_name = "N")]
    pub out_buffer_bytes: usize,

    /// Most distinct IM nodes the router tracks at once.
    #[arg(long, default_value_t = NODES_MAX_DEFAULT, value_name = "N")]
    pub max_nodes: u32,

    /// Most sessions in the whole router (split evenly over shards). A
    /// SessionOpen beyond it is answered with a Kick (RouterFull).
    #[arg(long, default_value_t = SESSIONS_MAX_DEFAULT, value_name = "N")]
    pub max_sessions: u64,

    /// Most sessions (devices) one user may have at once. One more is
    /// answered with a Kick (SessionLimit).
    #[arg(long, default_value_t = SESSIONS_PER_USER_MAX_DEFAULT, value_name = "N")]
    pub max_sessions_per_user: u32,

    /// File of the tokens nodes must present in Hello: one token alone
    /// (shared by every node), or one `NAME TOKEN` line per node (then a
    /// node may connect, resume and act only under its own name; a name
    /// not listed is refused). Blank lines and `#` comments are skipped;
    /// SIGHUP reads it again. Without it any node may connect, so keep the
    /// router on a private network.
    #[arg(long, value_name = "PATH")]
    pub auth_token_file: Option<PathBuf>,

    /// Heartbeat interval in milliseconds, told to nodes in Welcome. Every
    /// interval the router pings each connection on which the node sent
    /// nothing, or the router queued nothing, since the last check.
    #[arg(long, default_value_t = HEARTBEAT_MS_DEFAULT, value_name = "MS")]
    pub heartbeat_ms: u32,

    /// A connection on which the node sent nothing (not even a Pong) for
    /// this long, or (with acks) acknowledged nothing while bytes waited,
    /// is dead: NodeTimeout, and it is suspended for --reconnect-grace-ms
    /// (its sessions go when the grace ends). Also how long a socket may
    /// take no byte before its node is closed as a slow consumer. Checked
    /// once per heartbeat. Default: 3 heartbeats; at least 2. Catches
    /// half-open TCP connections.
    #[arg(long, value_name = "MS")]
    pub node_timeout_ms: Option<u32>,

    /// Which of a user's sessions a new one replaces, each replaced session
    /// getting a Kick: allow-all (none; the same device id may be on
    /// several nodes), same-device-kick (the same device on another node),
    /// same-platform-kick (also the user's sessions of the same platform
    /// class), single-session (all of the user's other sessions).
    #[arg(long, value_enum, default_value_t = LoginPolicy::SameDeviceKick, value_name = "POLICY")]
    pub login_policy: LoginPolicy,

    /// Most recipients one Fanout may list; more is answered Rejected
    /// (TooManyRecipients). A long list also needs --max-frame-bytes room.
    #[arg(long, default_value_t = FANOUT_MAX_DEFAULT, value_name = "N")]
    pub fanout_max: u32,

    /// Most distinct topics (large groups) in the router, split evenly over
    /// the shards. A Subscribe to a new topic beyond it is answered
    /// Rejected (TopicsFull).
    #[arg(long, default_value_t = TOPICS_MAX_DEFAULT, value_name = "N")]
    pub max_topics: u64,

    /// For this long after the router starts, a Route to a user with no
    /// session gets verdict Unknown (retry later) instead of Offline, so
    /// that nodes do not store messages as offline merely because the
    /// router restarted and they have not resynced yet. 0 turns it off.
    /// Default: --reconnect-grace-ms.
    #[arg(long, value_name = "MS")]
    pub warmup_ms: Option<u32>,

    /// A connection lost without a Goodbye (closed, failed, timed out)
    /// leaves its node's sessions suspended this long: messages for them
    /// are parked and delivered in order when the same node process
    /// reconnects; when it does not, each parked message is answered
    /// Offline and the sessions are removed. 0: remove them at once.
    #[arg(long, default_value_t = RECONNECT_GRACE_MS_DEFAULT, value_name = "MS")]
    pub reconnect_grace_ms: u32,

    /// Bytes one suspended connection may park for its node (plus what was
    /// sent but not acknowledged). One more ends its grace at once.
    #[arg(long, default_value_t = PARK_BYTES_MAX_DEFAULT, value_name = "N")]
    pub park_bytes_max: usize,

    /// Node connections one shard serves at once (hand-offs count where
    /// they are served). One more goes to another shard when it may, else
    /// it is refused with RouterFull.
    #[arg(long, default_value_t = CONNECTIONS_PER_SHARD_MAX_DEFAULT, value_name = "N")]
    pub max_connections_per_shard: usize,

    /// Most sockets in the whole router: node connections and sockets that
    /// have not sent their Hello yet. One more is refused (RouterFull) and
    /// closed at once.
    #[arg(long, default_value_t = CONNECTIONS_MAX_DEFAULT, value_name = "N")]
    pub max_connections: usize,

    /// Most sockets from one IP address; one more is refused (RouterFull)
    /// and closed at once.
    #[arg(long, default_value_t = CONNECTIONS_PER_SOURCE_MAX_DEFAULT, value_name = "N")]
    pub max_connections_per_source: usize,

    /// Most sockets one shard lets wait for their Hello (at most 10 s each).
    /// One more evicts the one that has waited longest, so silent sockets
    /// cannot lock out a node that sends its Hello.
    #[arg(long, default_value_t = HANDSHAKES_PER_SHARD_MAX, value_name = "N")]
    pub max_handshakes_per_shard: usize,

    /// Join a cluster of routers coordinated by etcd at these endpoints
    /// (comma-separated URLs, `http://127.0.0.1:2379`). Without it the
    /// router runs alone and owns every slot. Needs --cluster and
    /// --advertise. See docs/CLUSTER.md.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// The cluster's name: its keys live under `/imrouter/NAME/` in etcd.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,

    /// Where nodes reach this router (host:port), as the slot map tells
    /// them.
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,

    /// This router's name, for operators (`imrouter cluster status`).
    /// Default: --advertise.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The etcd lease this router registers under, in milliseconds: a
    /// router that could not renew it for this long (less a fifth) stops
    /// serving, and the cluster gives its slots to the others once etcd
    /// expires it. Failover takes about this long.
    #[arg(long, default_value_t = LEASE_TTL_MS_DEFAULT, value_name = "MS")]
    pub lease_ttl_ms: u64,

    /// How long a slot this router gained waits for the nodes' resyncs
    /// before it is served without them (a node that never resyncs would
    /// otherwise keep it answering Unknown).
    #[arg(long, default_value_t = REBUILD_TIMEOUT_MS_DEFAULT, value_name = "MS")]
    pub rebuild_timeout_ms: u64,

    /// As the controller: slots moved to a new or less loaded router per
    /// map epoch (each batch's resyncs stay small).
    #[arg(long, default_value_t = REBALANCE_BATCH_SLOTS, value_name = "N")]
    pub rebalance_batch_slots: usize,

    /// As the controller: least time between two rebalancing epochs.
    #[arg(long, default_value_t = REBALANCE_INTERVAL_MS, value_name = "MS")]
    pub rebalance_interval_ms: u64,
}

/// The validated configuration of one router.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Where every shard accepts connections.
    pub listen: SocketAddr,
    /// Where the admin port listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// The log's level (checked) and format.
    pub log_level: String,
    pub log_format: LogFormat,
    /// How long nodes get to leave a draining router.
    pub drain_window: Duration,
    /// The longest a drain takes.
    pub shutdown_timeout: Duration,
    /// The CPU of each shard; `cpus.len()` is the shard count, 1 to
    /// `SHARDS_MAX`.
    pub cpus: Vec<usize>,
    /// Largest frame body accepted, `<= FRAME_BYTES_MAX_CEILING`.
    pub frame_bytes_max: u32,
    /// Soft limit of an output buffer, `>= OUT_BUFFER_BYTES_MIN`.
    pub out_buffer_bytes: usize,
    /// Distinct nodes, 1 to `NODES_MAX_CEILING`.
    pub nodes_max: u32,
    /// Sessions in the router, at least one per shard.
    pub sessions_max: u64,
    /// Sessions per user, 1 to `SESSIONS_PER_USER_MAX_CEILING`.
    pub sessions_per_user_max: u32,
    /// The token nodes must present, if any.
    pub auth: Auth,
    /// Heartbeat interval, `HEARTBEAT_MS_MIN` to `HEARTBEAT_MS_MAX` ms.
    pub heartbeat: Duration,
    /// Silence after which a node is dead, at least two heartbeats.
    pub node_timeout: Duration,
    pub login_policy: LoginPolicy,
    /// Recipients per Fanout, 1 to `FANOUT_MAX_CEILING`.
    pub fanout_max: u32,
    /// Topics in the router, at least one per shard.
    pub topics_max: u64,
    /// How long after start "no session" means Unknown.
    pub warmup: Duration,
    /// How long a lost connection stays suspended; zero: no suspension.
    pub reconnect_grace: Duration,
    /// Bytes a suspended connection may hold.
    pub park_bytes_max: usize,
    /// Connections one shard serves, 1 to `CONNECTIONS_PER_SHARD_MAX_CEILING`.
    pub connections_per_shard_max: usize,
    /// Sockets in the router, and from one address (`node::admission`).
    pub connections_max: usize,
    pub connections_per_source_max: usize,
    /// Sockets one shard lets wait for their Hello.
    pub handshakes_per_shard_max: usize,
    /// Set when the router is a member of a cluster.
    pub cluster: Option<ClusterConfig>,
    /// How long a gained slot waits for resyncs.
    pub rebuild_timeout: Duration,
}

/// How a router joins its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub etcd: Vec<String>,
    pub cluster: String,
    pub advertise: String,
    pub name: String,
    pub lease_ttl_ms: u64,
    pub rebalance_batch_slots: usize,
    pub rebalance_interval_ms: u64,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("admin", &self.admin)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("drain_window", &self.drain_window)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("cpus", &self.cpus)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("out_buffer_bytes", &self.out_buffer_bytes)
            .field("nodes_max", &self.nodes_max)
            .field("sessions_max", &self.sessions_max)
            .field("sessions_per_user_max", &self.sessions_per_user_max)
            .field("auth", &self.auth)
            .field("heartbeat", &self.heartbeat)
            .field("node_timeout", &self.node_timeout)
            .field("login_policy", &self.login_policy)
            .field("fanout_max", &self.fanout_max)
            .field("topics_max", &self.topics_max)
            .field("warmup", &self.warmup)
            .field("reconnect_grace", &self.reconnect_grace)
            .field("park_bytes_max", &self.park_bytes_max)
            .field("connections_per_shard_max", &self.connections_per_shard_max)
            .field("connections_max", &self.connections_max)
            .field(
                "connections_per_source_max",
                &self.connections_per_source_max,
            )
            .field("handshakes_per_shard_max", &self.handshakes_per_shard_max)
            .field("cluster", &self.cluster)
            .field("rebuild_timeout", &self.rebuild_timeout)
            .finish()
    }
}

/// What a reload (SIGHUP) changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reload {
    /// Settings now in force.
    pub applied: Vec<&'static str>,
    /// Settings that changed but take a restart (still the old value).
    pub restart_needed: Vec<&'static str>,
}

impl Config {
    /// The configuration after a reload to `new`: the settings that can
    /// change while the router runs (the log level, the auth token, the
    /// reconnect grace, the node timeout, the Fanout limit and the session
    /// limits) from `new`, every other one unchanged, and what changed.
    pub fn reloaded(&self, new: &Config) -> (Config, Reload) {
        let mut reload = Reload::default();
        let mut next = self.clone();
        macro_rules! live {
            ($($field:ident => $name:literal),* $(,)?) => {$(
                if self.$field != new.$field {
                    next.$field = new.$field.clone();
                    reload.applied.push($name);
                }
            )*};
        }
        macro_rules! restart {
            ($($field:ident => $name:literal),* $(,)?) => {$(
                if self.$field != new.$field {
                    reload.restart_needed.push($name);
                }
            )*};
        }
        live! {
            log_level => "log-level",
            drain_window => "drain-window-ms",
            shutdown_timeout => "shutdown-timeout-ms",
            auth => "auth-token-file",
            reconnect_grace => "reconnect-grace-ms",
            node_timeout => "node-timeout-ms",
            fanout_max => "fanout-max",
            sessions_max => "max-sessions",
            sessions_per_user_max => "max-sessions-per-user",
        }
        restart! {
            listen => "listen",
            admin => "admin-listen",
            log_format => "log-format",
            cpus => "shards/cpus",
            frame_bytes_max => "max-frame-bytes",
            out_buffer_bytes => "out-buffer-bytes",
            nodes_max => "max-nodes",
            heartbeat => "heartbeat-ms",
            login_policy => "login-policy",
            topics_max => "max-topics",
            warmup => "warmup-ms",
            park_bytes_max => "park-bytes-max",
            connections_per_shard_max => "max-connections-per-shard",
            connections_max => "max-connections",
            connections_per_source_max => "max-connections-per-source",
            handshakes_per_shard_max => "max-handshakes-per-shard",
            cluster => "cluster settings",
            rebuild_timeout => "rebuild-timeout-ms",
        }
        // A node timeout must stay at least two (unchanged) heartbeats.
        if next.node_timeout < 2 * next.heartbeat {
            next.node_timeout = self.node_timeout;
            reload.applied.retain(|name| *name != "node-timeout-ms");
            reload.restart_needed.push("node-timeout-ms");
        }
        (next, reload)
    }

    /// A configuration for `listen` with every other setting at its
    /// default and `shards` shards on the CPUs this process may use.
    pub fn new(listen: SocketAddr, shards: usize) -> Result<Config, ConfigError> {
        let mut args = ServeArgs::defaults();
        args.listen = listen.to_string();
        args.shards = Some(shards);
        Config::from_args(&args)
    }

    pub fn shard_count(&self) -> usize {
        self.cpus.len()
    }

    /// Bytes of each connection's read buffer: room for two maximum frames.
    pub fn read_buffer_bytes(&self) -> usize {
        READ_BUFFER_BYTES_MIN.max(2 * (self.frame_bytes_max as usize + FRAME_PREFIX_BYTES))
    }

    /// Topics one shard may hold.
    pub fn topics_per_shard_max(&self) -> usize {
        let per_shard = self.topics_max.div_ceil(self.shard_count() as u64);
        usize::try_from(per_shard).unwrap_or(usize::MAX)
    }

    /// Sessions one shard may hold.
    pub fn sessions_per_shard_max(&self) -> usize {
        let per_shard = self.sessions_max.div_ceil(self.shard_count() as u64);
        usize::try_from(per_shard).unwrap_or(usize::MAX)
    }

    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let listen = args
            .listen
            .to_socket_addrs()
            .map_err(|error| ConfigError::new(format!("--listen {}: {error}", args.listen)))?
            .next()
            .ok_or_else(|| ConfigError::new(format!("--listen {}: no address", args.listen)))?;

        let available = available_cpus();
        let cpu_list = match &args.cpus {
            Some(list) => parse_cpu_list(list)?,
            None => available.clone(),
        };
        if cpu_list.is_empty() {
            return Err(ConfigError::new("no CPU to run on".into()));
        }
        if let Some(cpu) = cpu_list.iter().find(|cpu| !available.contains(cpu)) {
            return Err(ConfigError::new(format!(
                "--cpus: CPU {cpu} is not available to this process (available: {})",
                format_cpus(&available)
            )));
        }
        let shards = args.shards.unwrap_or(cpu_list.len().min(SHARDS_MAX));
        if !(1..=SHARDS_MAX).contains(&shards) {
            return Err(ConfigError::new(format!(
                "--shards must be 1 to {SHARDS_MAX}, not {shards}"
            )));
        }
        let cpus: Vec<usize> = (0..shards)
            .map(|shard| cpu_list[shard % cpu_list.len()])
            .collect();

        if args.max_frame_bytes == 0 || args.max_frame_bytes > FRAME_BYTES_MAX_CEILING {
            return Err(ConfigError::new(format!(
                "--max-frame-bytes must be 1 to {FRAME_BYTES_MAX_CEILING}"
            )));
        }
        let out_buffer_min = OUT_BUFFER_BYTES_MIN.max(2 * args.max_frame_bytes as usize);
        if args.out_buffer_bytes < out_buffer_min {
            return Err(ConfigError::new(format!(
                "--out-buffer-bytes must be at least {out_buffer_min} (two maximum frames)"
            )));
        }
        if !(1..=NODES_MAX_CEILING).contains(&args.max_nodes) {
            return Err(ConfigError::new(format!(
                "--max-nodes must be 1 to {NODES_MAX_CEILING}"
            )));
        }
        if args.max_sessions < shards as u64 {
            return Err(ConfigError::new(
                "--max-sessions must be at least one per shard".into(),
            ));
        }
        if !(1..=SESSIONS_PER_USER_MAX_CEILING).contains(&args.max_sessions_per_user) {
            return Err(ConfigError::new(format!(
                "--max-sessions-per-user must be 1 to {SESSIONS_PER_USER_MAX_CEILING}"
            )));
        }
        if !(HEARTBEAT_MS_MIN..=HEARTBEAT_MS_MAX).contains(&args.heartbeat_ms) {
            return Err(ConfigError::new(format!(
                "--heartbeat-ms must be {HEARTBEAT_MS_MIN} to {HEARTBEAT_MS_MAX}"
            )));
        }
        let node_timeout_ms = args
            .node_timeout_ms
            .map(u64::from)
            .unwrap_or(u64::from(args.heartbeat_ms) * u64::from(NODE_TIMEOUT_HEARTBEATS_DEFAULT));
        // At least two intervals: the first check that finds the node quiet
        // pings it, and it needs an interval to answer.
        if node_timeout_ms < 2 * u64::from(args.heartbeat_ms) {
            return Err(ConfigError::new(format!(
                "--node-timeout-ms must be at least twice --heartbeat-ms ({})",
                args.heartbeat_ms
            )));
        }
        if args.max_topics < shards as u64 {
            return Err(ConfigError::new(
                "--max-topics must be at least one per shard".into(),
            ));
        }
        if !(1..=FANOUT_MAX_CEILING).contains(&args.fanout_max) {
            return Err(ConfigError::new(format!(
                "--fanout-max must be 1 to {FANOUT_MAX_CEILING}"
            )));
        }
        if args.reconnect_grace_ms > RECONNECT_GRACE_MS_MAX {
            return Err(ConfigError::new(format!(
                "--reconnect-grace-ms must be at most {RECONNECT_GRACE_MS_MAX}"
            )));
        }
        if args.park_bytes_max < args.max_frame_bytes as usize + 4 {
            return Err(ConfigError::new(
                "--park-bytes-max must hold at least one frame of --max-frame-bytes".to_string(),
            ));
        }
        if !(1..=CONNECTIONS_PER_SHARD_MAX_CEILING).contains(&args.max_connections_per_shard) {
            return Err(ConfigError::new(format!(
                "--max-connections-per-shard must be 1 to {CONNECTIONS_PER_SHARD_MAX_CEILING}"
            )));
        }
        for (flag, value, ceiling) in [
            (
                "--max-connections",
                args.max_connections,
                CONNECTIONS_MAX_CEILING,
            ),
            (
                "--max-connections-per-source",
                args.max_connections_per_source,
                CONNECTIONS_MAX_CEILING,
            ),
            (
                "--max-handshakes-per-shard",
                args.max_handshakes_per_shard,
                HANDSHAKES_PER_SHARD_CEILING,
            ),
        ] {
            if !(1..=ceiling).contains(&value) {
                return Err(ConfigError::new(format!("{flag} must be 1 to {ceiling}")));
            }
        }
        // Sockets waiting for their Hello are evicted per shard, but the
        // router-wide bound is checked first: they alone must not fill it.
        if args.max_connections <= cpus.len() * args.max_handshakes_per_shard {
            return Err(ConfigError::new(format!(
                "--max-connections must be above shards x --max-handshakes-per-shard ({} x {}), \
                 or silent sockets could fill it",
                cpus.len(),
                args.max_handshakes_per_shard
            )));
        }
        let auth = match &args.auth_token_file {
            Some(path) => read_auth(path)?,
            None => Auth::Open,
        };
        let cluster = cluster_config(args)?;
        let admin = admin_addr(args.admin_listen.as_deref(), listen)?;
        if args.drain_window_ms > DRAIN_WINDOW_MS_MAX {
            return Err(ConfigError::new(format!(
                "--drain-window-ms must be at most {DRAIN_WINDOW_MS_MAX}"
            )));
        }
        if args.shutdown_timeout_ms > SHUTDOWN_TIMEOUT_MS_MAX {
            return Err(ConfigError::new(format!(
                "--shutdown-timeout-ms must be at most {SHUTDOWN_TIMEOUT_MS_MAX}"
            )));
        }
        crate::logging::parse_level(&args.log_level)
            .map_err(|error| ConfigError::new(format!("--log-level: {error}")))?;
        Ok(Config {
            listen,
            admin,
            log_level: args.log_level.trim().to_string(),
            log_format: args.log_format,
            drain_window: Duration::from_millis(args.drain_window_ms),
            shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
            cpus,
            frame_bytes_max: args.max_frame_bytes,
            out_buffer_bytes: args.out_buffer_bytes,
            nodes_max: args.max_nodes,
            sessions_max: args.max_sessions,
            sessions_per_user_max: args.max_sessions_per_user,
            auth,
            heartbeat: Duration::from_millis(u64::from(args.heartbeat_ms)),
            node_timeout: Duration::from_millis(node_timeout_ms),
            login_policy: args.login_policy,
            fanout_max: args.fanout_max,
            topics_max: args.max_topics,
            warmup: Duration::from_millis(u64::from(
                args.warmup_ms.unwrap_or(args.reconnect_grace_ms),
            )),
            reconnect_grace: Duration::from_millis(u64::from(args.reconnect_grace_ms)),
            park_bytes_max: args.park_bytes_max,
            connections_per_shard_max: args.max_connections_per_shard,
            connections_max: args.max_connections,
            connections_per_source_max: args.max_connections_per_source,
            handshakes_per_shard_max: args.max_handshakes_per_shard,
            cluster,
            rebuild_timeout: Duration::from_millis(args.rebuild_timeout_ms),
        })
    }
}

/// `--admin-listen`: an address, "off", or by default the loopback
/// address with the node port plus one (0 stays 0).
fn admin_addr(flag: Option<&str>, listen: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
    match flag {
        Some("off") => Ok(None),
        Some(addr) => addr
            .to_socket_addrs()
            .map_err(|error| ConfigError::new(format!("--admin-listen {addr}: {error}")))?
            .next()
            .map(Some)
            .ok_or_else(|| ConfigError::new(format!("--admin-listen {addr}: no address"))),
        None => {
            let port = match listen.port() {
                0 => 0,
                u16::MAX => {
                    return Err(ConfigError::new(
                        "--listen's port is 65535: give --admin-listen".into(),
                    ))
                }
                port => port + 1,
            };
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], port))))
        }
    }
}

/// The cluster flags, checked: all of --etcd, --cluster and --advertise,
/// or none.
fn cluster_config(args: &ServeArgs) -> Result<Option<ClusterConfig>, ConfigError> {
    let word = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
    };
    match (&args.etcd[..], &args.cluster, &args.advertise) {
        ([], None, None) => return Ok(None),
        ([_, ..], Some(_), Some(_)) => {}
        _ => {
            return Err(ConfigError::new(
                "--etcd, --cluster and --advertise go together".into(),
            ))
        }
    }
    let cluster = args.cluster.clone().expect("matched");
    let advertise = args.advertise.clone().expect("matched");
    let name = args.name.clone().unwrap_or_else(|| advertise.clone());
    if !word(&cluster, ROUTER_NAME_MAX) || cluster.contains('/') {
        return Err(ConfigError::new(format!(
            "--cluster must be 1 to {ROUTER_NAME_MAX} printable characters, no space or '/'"
        )));
    }
    if !word(&advertise, ROUTER_ADDR_MAX) {
        return Err(ConfigError::new(format!(
            "--advertise must be 1 to {ROUTER_ADDR_MAX} printable characters without spaces"
        )));
    }
    if !word(&name, ROUTER_NAME_MAX) {
        return Err(ConfigError::new(format!(
            "--name must be 1 to {ROUTER_NAME_MAX} printable characters without spaces"
        )));
    }
    if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&args.lease_ttl_ms) {
        return Err(ConfigError::new(format!(
            "--lease-ttl-ms must be {LEASE_TTL_MS_MIN} to {LEASE_TTL_MS_MAX}"
        )));
    }
    Ok(Some(ClusterConfig {
        etcd: args.etcd.clone(),
        cluster,
        advertise,
        name,
        lease_ttl_ms: args.lease_ttl_ms,
        rebalance_batch_slots: args
            .rebalance_batch_slots
            .clamp(1, crate::limits::SLOT_COUNT as usize),
        rebalance_interval_ms: args.rebalance_interval_ms,
    }))
}

impl ServeArgs {
    /// The flags as they are when none is given.
    pub fn defaults() -> ServeArgs {
        match Cli::parse_from(["imrouter", "serve"]).command {
            Command::Serve(args) => *args,
            _ => unreachable!("parsed `serve`"),
        }
    }
}

/// A flag value that cannot be used, with a message saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: String) -> Self {
        ConfigError(message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// CPUs this process may run on (its affinity mask), in ascending order.
pub fn available_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    cpus.sort_unstable();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Parses "0,2,4-7" into [0, 2, 4, 5, 6, 7], keeping the given order.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = |part: &str| ConfigError::new(format!("--cpus: cannot read {part:?} in {list:?}"));
    let mut cpus = Vec::new();
    for part in list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().map_err(|_| bad(part))?;
                let last: usize = last.trim().parse().map_err(|_| bad(part))?;
                if first > last || last - first >= 4096 {
                    return Err(bad(part));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().map_err(|_| bad(part))?),
        }
    }
    Ok(cpus)
}

fn format_cpus(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `--auth-token-file` of `serve`: one shared token, or `NAME TOKEN` lines.
fn read_auth(path: &PathBuf) -> Result<Auth, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(format!("--auth-token-file {}: {error}", path.display()))
    })?;
    Auth::parse(&text)
        .map_err(|error| ConfigError::new(format!("--auth-token-file {}: {error}", path.display())))
}

fn read_token(path: &PathBuf) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::new(format!("--auth-token-file {}: {error}", path.display()))
    })?;
    let token = text.trim().to_string();
    if token.is_empty() || token.len() > AUTH_TOKEN_BYTES_MAX {
        return Err(ConfigError::new(format!(
            "--auth-token-file {}: the token must be 1 to {AUTH_TOKEN_BYTES_MAX} bytes",
            path.display()
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_ranges() {
        assert_eq!(parse_cpu_list("0,2,4").unwrap(), [0, 2, 4]);
        assert_eq!(parse_cpu_list("0-3, 8").unwrap(), [0, 1, 2, 3, 8]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn more_shards_than_cpus_share_them() {
        let mut args = ServeArgs::defaults();
        args.shards = Some(5);
        args.cpus = Some(available_cpus()[0].to_string());
        let config = Config::from_args(&args).unwrap();
        assert_eq!(config.shard_count(), 5);
        assert!(config.cpus.iter().all(|&cpu| cpu == available_cpus()[0]));
    }

    #[test]
    fn out_of_range_flags_are_refused_with_a_reason() {
        let mut args = ServeArgs::defaults();
        args.shards = Some(0);
        assert!(Config::from_args(&args)
            .unwrap_err()
            .to_string()
            .contains("--shards"));
        let mut args = ServeArgs::defaults();
        args.max_frame_bytes = FRAME_BYTES_MAX_CEILING + 1;
        assert!(Config::from_args(&args).is_err());
        let mut args = ServeArgs::defaults();
        args.out_buffer_bytes = 10;
        assert!(Config::from_args(&args).is_err());
        let mut args = ServeArgs::defaults();
        args.cpus = Some("100000".into());
        assert!(Config::from_args(&args).is_err());
        let mut args = ServeArgs::defaults();
        args.heartbeat_ms = 1000;
        args.node_timeout_ms = Some(999);
        assert!(Config::from_args(&args)
            .unwrap_err()
            .to_string()
            .contains("--node-timeout-ms"));
    }

    #[test]
    fn the_node_timeout_defaults_to_three_heartbeats() {
        let mut args = ServeArgs::defaults();
        args.heartbeat_ms = 250;
        let config = Config::from_args(&args).unwrap();
        assert_eq!(config.heartbeat, Duration::from_millis(250));
        assert_eq!(config.node_timeout, Duration::from_millis(750));
    }

    #[test]
    fn defaults_run_on_a_laptop() {
        let config = Config::from_args(&ServeArgs::defaults()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7800".parse().unwrap());
        assert_eq!(config.admin, Some("127.0.0.1:7801".parse().unwrap()));
        assert_eq!(config.shard_count(), available_cpus().len().min(SHARDS_MAX));
        assert_eq!(config.frame_bytes_max, FRAME_BYTES_MAX_DEFAULT);
    }
}
