//! Starting and stopping a router: one pinned glommio executor per shard.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::admin::Admin;
use crate::config::Config;
use crate::core::directory::Directory;
use crate::core::ShardCore;
use crate::limits::{BIND_RETRY_FOR, DRAIN_CLOSE_MARGIN, IO_MEMORY_BYTES, PREEMPT_TIMER};
use crate::metrics::ShardMetrics;
use crate::shard::link::{self, Control, ShardLink};
use crate::shard::Driver;
use crate::time::Clock;

/// How long `metrics` waits for each shard's answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts routers.
pub struct Router;

/// A router that failed to start.
#[derive(Debug)]
pub struct StartError(String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl Router {
    /// Starts every shard and returns once all of them accept connections.
    pub fn start(config: Config) -> Result<RunningRouter, StartError> {
        let config = Arc::new(config);
        let shard_count = config.shard_count();
        let (links, inboxes) = link::links(shard_count)
            .map_err(|error| StartError(format!("cross-core links: {error}")))?;
        let directory = Arc::new(Directory::new(config.nodes_max as usize, shard_count));
        let admission = crate::node::admission::Admission::new(
            config.connections_max,
            config.connections_per_source_max,
        );
        let router_id = random_u64();
        // Never sent: a stream id (the secret that resumes a stream) must
        // not be computable from what nodes see (the router id, tickets).
        let stream_key = (random_u64(), random_u64());
        // One clock for every shard and the control plane: the fence the
        // control plane computes is compared with the shards' time.
        let clock = Clock::new();
        let mut running = RunningRouter {
            config: config.clone(),
            local_addr: config.listen,
            cpus: config.cpus.clone(),
            router_id,
            links: links.clone(),
            executors: Vec::new(),
            control: None,
            admin: None,
            draining: Arc::new(AtomicBool::new(false)),
            drain_request: Arc::new(AtomicBool::new(false)),
        };

        // One listening socket, bound here without SO_REUSEPORT, so that a
        // second router on the same address fails to start instead of
        // silently sharing the port (glommio's own bind sets SO_REUSEPORT,
        // which lets another process take half of our connections). Every
        // shard accepts on a duplicate of it. It must stay non-blocking:
        // glommio's accept flips O_NONBLOCK around a direct accept call, and
        // duplicates share that flag.
        let listener = bind(config.listen)?;
        listener
            .set_nonblocking(true)
            .map_err(|error| StartError(format!("listener: {error}")))?;
        running.local_addr = listener
            .local_addr()
            .map_err(|error| StartError(format!("listener: {error}")))?;
        for (index, inbox) in inboxes.into_iter().enumerate() {
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let listener_fd: OwnedFd = listener
                .try_clone()
                .map_err(|error| StartError(format!("listener for shard {index}: {error}")))?
                .into();
            let (config, directory, links) = (config.clone(), directory.clone(), links.clone());
            let admission = admission.clone();
            let executor = LocalExecutorBuilder::new(Placement::Fixed(config.cpus[index]))
                .name(&format!("imrouter-shard-{index}"))
                .io_memory(IO_MEMORY_BYTES)
                .preempt_timer(PREEMPT_TIMER)
                .spawn(move || async move {
                    // SAFETY: ownership of the duplicated, listening socket
                    // moves into the glommio listener.
                    let listener = unsafe {
                        glommio::net::TcpListener::from_raw_fd(listener_fd.into_raw_fd())
                    };
                    let mut inbox = inbox;
                    let bell_fd = std::mem::replace(
                        &mut inbox.bell,
                        std::os::unix::net::UnixStream::pair()
                            .expect("socket pair")
                            .0,
                    );
                    // SAFETY: ownership of the doorbell's read end moves into
                    // the glommio stream.
                    let bell =
                        unsafe { glommio::net::UnixStream::from_raw_fd(bell_fd.into_raw_fd()) };
                    let mut core = ShardCore::new(index, config, directory, router_id, clock.now());
                    core.set_stream_key(stream_key);
                    let driver = Rc::new(Driver::new(core, clock, links, inbox, admission));
                    driver.set_acceptor(glommio::spawn_local(crate::node::accept_loop(
                        driver.clone(),
                        listener,
                    )));
                    let _ = ready_tx.send(());
                    driver.run(bell).await;
                })
                .map_err(|error| StartError(format!("shard {index}: {error}")))?;
            running.executors.push(executor);
            if ready_rx.recv().is_err() {
                return Err(StartError(format!("shard {index} stopped while starting")));
            }
        }
        running.control = start_control(&config, clock, &links, &directory)?;
        if let Some(addr) = config.admin {
            let admin = Admin::start(
                addr,
                links.clone(),
                running.draining.clone(),
                running.drain_request.clone(),
            )
            .map_err(|error| StartError(format!("admin port {addr}: {error}")))?;
            running.admin = Some(admin);
        }
        Ok(running)
    }
}

/// A lame-duck drain in progress ([`RunningRouter::begin_drain`]).
#[derive(Debug)]
pub struct Drain {
    phase: DrainPhase,
    window: Duration,
    deadline: Instant,
    hand_over_until: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainPhase {
    /// In a cluster: waiting for the controller to move our slots away.
    HandOver,
    /// The nodes were told; waiting for them to leave.
    Told {
        close_at: Instant,
    },
    Done,
}

/// A started router. Dropping it shuts it down.
pub struct RunningRouter {
    /// The configuration in force (changed by `reconfigure`).
    config: Arc<Config>,
    local_addr: SocketAddr,
    cpus: Vec<usize>,
    router_id: u64,
    links: Vec<ShardLink>,
    executors: Vec<ExecutorJoinHandle<()>>,
    /// The cluster's control-plane thread (a member of a cluster only).
    control: Option<ControlPlane>,
    /// The admin port, unless `--admin-listen off`.
    admin: Option<Admin>,
    /// Set when the router begins to stop (`/readyz` says 503).
    draining: Arc<AtomicBool>,
    /// Set by the admin port's `POST /drain`.
    drain_request: Arc<AtomicBool>,
}

#[cfg(feature = "cluster")]
type ControlPlane = crate::cluster::control::ControlPlane;
#[cfg(not(feature = "cluster"))]
type ControlPlane = std::convert::Infallible;

/// Starts the control plane of a member of a cluster.
#[cfg(feature = "cluster")]
fn start_control(
    config: &Config,
    clock: Clock,
    links: &[ShardLink],
    directory: &Arc<Directory>,
) -> Result<Option<ControlPlane>, StartError> {
    let Some((etcd, member)) = crate::cluster::member_config(config) else {
        return Ok(None);
    };
    ControlPlane::start(etcd, member, clock, links.to_vec(), directory.clone())
        .map(Some)
        .map_err(|error| StartError(format!("control plane: {error}")))
}

#[cfg(not(feature = "cluster"))]
fn start_control(
    config: &Config,
    _clock: Clock,
    _links: &[ShardLink],
    _directory: &Arc<Directory>,
) -> Result<Option<ControlPlane>, StartError> {
    match config.cluster {
        None => Ok(None),
        Some(_) => Err(StartError(
            "this imrouter was built without cluster support: build it with `--features cluster` \
             (needs protoc: apt-get install protobuf-compiler)"
                .into(),
        )),
    }
}

impl RunningRouter {
    /// Where the router accepts connections (the real port when the
    /// configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shard_count(&self) -> usize {
        self.links.len()
    }

    /// The CPU each shard is pinned to.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    pub fn router_id(&self) -> u64 {
        self.router_id
    }

    /// Applies a reloaded configuration: the settings that may change
    /// while the router runs take effect on every shard (and the log
    /// level here); the others are reported as needing a restart.
    pub fn reconfigure(&mut self, new: &Config) -> crate::config::Reload {
        let (next, reload) = self.config.reloaded(new);
        if reload.applied.is_empty() {
            return reload;
        }
        if next.log_level != self.config.log_level && crate::logging::is_installed() {
            if let Err(error) = crate::logging::set_level(&next.log_level) {
                tracing::warn!("reload: {error}");
            }
        }
        let next = Arc::new(next);
        for (shard, link) in self.links.iter().enumerate() {
            if !send_control(link, Control::Reconfigure(next.clone())) {
                // (Its control queue stayed full for a second: a shard that
                // far behind is reported by /healthz too.)
                tracing::error!(
                    shard,
                    "reload: the shard did not take the new settings; it runs with the old ones"
                );
            }
        }
        // A round trip through every shard's control queue (first in,
        // first out): when it returns, each shard runs with the new
        // settings, so that "reloaded" in the log means in force.
        let _ = self.health();
        self.config = next;
        reload
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the admin port listens, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
    }

    /// Every shard's counters, by shard.
    pub fn shard_metrics(&self) -> Vec<ShardMetrics> {
        let mut replies = Vec::with_capacity(self.links.len());
        for link in &self.links {
            let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
            if send_control(link, Control::Metrics(reply_tx)) {
                replies.push(reply_rx);
            }
        }
        replies
            .into_iter()
            .map(|reply| reply.recv_timeout(METRICS_TIMEOUT).unwrap_or_default())
            .collect()
    }

    /// The sum of every shard's counters.
    pub fn metrics(&self) -> ShardMetrics {
        self.shard_metrics()
            .iter()
            .fold(ShardMetrics::default(), |mut total, shard| {
                total.add(shard);
                total
            })
    }

    /// Closes every connection (nodes get an Error frame, ShuttingDown) and
    /// stops the shards.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Whether a drain was asked for on the admin port (`imrouter drain`);
    /// the caller drives it (`begin_drain`, `drain_step`).
    pub fn drain_requested(&self) -> bool {
        self.drain_request.load(Ordering::Relaxed)
    }

    /// Begins a lame-duck drain (see [`Drain`]): `/readyz` says 503 from
    /// now; in a cluster the router asks for its slots to be moved to the
    /// others first. `window` is how long nodes get to leave once told;
    /// `timeout` bounds the whole drain.
    pub fn begin_drain(&mut self, window: Duration, timeout: Duration) -> Drain {
        self.draining.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let deadline = now + timeout;
        // No new connection from now on (the listening sockets close).
        for link in &self.links {
            send_control(link, Control::StopAccepting);
        }
        #[cfg(feature = "cluster")]
        if let Some(control) = &self.control {
            control.drain_self();
            tracing::info!("draining: handing this router's slots to the others");
            return Drain {
                phase: DrainPhase::HandOver,
                window,
                deadline,
                // Half the time for the hand-over, the rest for the nodes.
                hand_over_until: now + timeout / 2,
            };
        }
        let mut drain = Drain {
            phase: DrainPhase::HandOver,
            window,
            deadline,
            hand_over_until: now,
        };
        self.tell_nodes(&mut drain, now);
        drain
    }

    /// Advances a drain; true once it is over (every node left, or the
    /// window or the timeout ran out): then call `shutdown`.
    pub fn drain_step(&mut self, drain: &mut Drain) -> bool {
        let now = Instant::now();
        if now >= drain.deadline {
            if drain.phase != DrainPhase::Done {
                tracing::warn!("draining: --shutdown-timeout-ms passed; closing what is left");
            }
            drain.phase = DrainPhase::Done;
        }
        match drain.phase {
            DrainPhase::HandOver => {
                let health = self.health();
                let held: usize = health.iter().flatten().map(|shard| shard.slots_held).sum();
                let answered = health.iter().all(Option::is_some);
                if answered && held == 0 {
                    tracing::info!("draining: every slot handed over");
                    self.tell_nodes(drain, now);
                } else if now >= drain.hand_over_until {
                    tracing::warn!(
                        "draining: {held} slots not handed over in time; telling the nodes anyway"
                    );
                    self.tell_nodes(drain, now);
                }
            }
            DrainPhase::Told { close_at } => {
                let health = self.health();
                let open: usize = health.iter().flatten().map(|shard| shard.connections).sum();
                if open == 0 && health.iter().all(Option::is_some) {
                    tracing::info!("draining: every node left");
                    drain.phase = DrainPhase::Done;
                } else if now >= close_at {
                    tracing::info!("draining: the window is over; closing {open} connections");
                    drain.phase = DrainPhase::Done;
                }
            }
            DrainPhase::Done => {}
        }
        drain.phase == DrainPhase::Done
    }

    fn tell_nodes(&self, drain: &mut Drain, now: Instant) {
        let reason: Arc<str> = Arc::from("the router is stopping (lame-duck drain)");
        for link in &self.links {
            send_control(
                link,
                Control::Drain {
                    window: drain.window,
                    reason: reason.clone(),
                },
            );
        }
        let close_at = (now + drain.window + DRAIN_CLOSE_MARGIN).min(drain.deadline);
        drain.phase = DrainPhase::Told { close_at };
    }

    /// Every shard's readiness (`None`: it did not answer in time).
    pub fn health(&self) -> Vec<Option<crate::core::report::ShardHealth>> {
        let replies: Vec<_> = self
            .links
            .iter()
            .map(|link| {
                let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
                send_control(link, Control::Health(reply_tx)).then_some(reply_rx)
            })
            .collect();
        replies
            .into_iter()
            .map(|reply| reply?.recv_timeout(crate::limits::ADMIN_DEADLINE).ok())
            .collect()
    }

    fn stop(&mut self) {
        self.draining.store(true, Ordering::Relaxed);
        // Leave the cluster first: the lease is revoked and the other
        // routers take this one's slots while its nodes are told it stops.
        #[cfg(feature = "cluster")]
        if let Some(mut control) = self.control.take() {
            control.stop();
        }
        for link in &self.links {
            send_control(link, Control::Shutdown);
        }
        for executor in self.executors.drain(..) {
            let _ = executor.join();
        }
        if let Some(mut admin) = self.admin.take() {
            admin.stop();
        }
    }
}

impl Drop for RunningRouter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds the router's listening socket. Right after another router on
/// the same address was killed, its socket can stay bound for a few
/// milliseconds (its io_uring is torn down asynchronously): "address in
/// use" is retried for `BIND_RETRY_FOR`, and said so in the log.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let started = std::time::Instant::now();
    let mut logged = false;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < BIND_RETRY_FOR =>
            {
                if !logged {
                    tracing::warn!(
                        "{addr} is in use; retrying for up to {} ms (a router that just stopped may still hold it)",
                        BIND_RETRY_FOR.as_millis()
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(StartError(format!("bind {addr}: {error}"))),
        }
    }
}

/// Sends a control message from outside the shards, waiting while the
/// queue is full. Returns false when the shard has stopped.
fn send_control(link: &ShardLink, mut message: Control) -> bool {
    for _ in 0..1000 {
        match link.try_control(message) {
            Ok(()) => return true,
            Err(returned) => message = returned,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// A random id from the standard library's randomly seeded hasher (the
/// router id only has to differ between router processes).
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
