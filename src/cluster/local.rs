//! A cluster on one machine, for tests and the load generator: an etcd
//! process on 127.0.0.1 with a temporary data directory, router
//! processes that join it, and TCP proxies that can cut a path (a
//! router's way to etcd) as a partition would: bytes stop moving, no
//! connection is closed, and they move again when the cut heals.
//!
//! Everything started here listens on 127.0.0.1 and stops when dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where Debian's etcd-server puts the binary, and where a manual install
/// does.
pub const ETCD_BINARIES: [&str; 2] = ["/usr/bin/etcd", "/usr/local/bin/etcd"];

/// How long etcd and a router get to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it
/// soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding 127.0.0.1:0")
}

/// The installed etcd binary, if any.
pub fn etcd_binary() -> Option<&'static str> {
    ETCD_BINARIES
        .into_iter()
        .find(|path| Path::new(path).exists())
}

fn wait_listening(addr: &str, what: &str) -> io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not listen on {addr} within {START_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An etcd server of one member.
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    /// Its client URL (`http://127.0.0.1:PORT`).
    pub url: String,
}

impl Etcd {
    /// Starts `binary` and waits until it listens (on 127.0.0.1).
    pub fn start(binary: &str) -> io::Result<Etcd> {
        Etcd::start_on(binary, &[])
    }

    /// Starts `binary` listening on 127.0.0.1 and on each of `also` (local
    /// addresses, such as the host ends of veth pairs), on one port.
    pub fn start_on(binary: &str, also: &[&str]) -> io::Result<Etcd> {
        let (client, peer) = (free_port(), free_port());
        let dir =
            std::env::temp_dir().join(format!("imrouter-etcd-{}-{client}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let listen = std::iter::once(url.clone())
            .chain(also.iter().map(|host| format!("http://{host}:{client}")))
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &listen])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let etcd = Etcd { child, dir, url };
        wait_listening(&format!("127.0.0.1:{client}"), "etcd")?;
        Ok(etcd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How to start a router of a cluster.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// The imrouter binary.
    pub binary: PathBuf,
    /// Name of the router (`--name`).
    pub name: String,
    pub cluster: String,
    /// etcd's URL as this router sees it (a [`Proxy`]'s, to cut it);
    /// `None`: a router alone, without the cluster flags.
    pub etcd: Option<String>,
    pub shards: u16,
    pub lease_ttl_ms: u64,
    /// More `serve` flags.
    pub extra: Vec<String>,
    /// Run under `taskset -c CPUS` when set.
    pub cpus: Option<String>,
    /// Run inside this network namespace (`ip netns exec`) when set.
    pub netns: Option<String>,
    /// The address to listen on and advertise (default: 127.0.0.1 and a
    /// free port).
    pub listen: Option<String>,
}

impl RouterOptions {
    /// Router `name` of `cluster`, reaching etcd at `etcd`: one shard, a
    /// 2 s lease, no extra flags, no pinning, on 127.0.0.1.
    pub fn new(
        binary: impl Into<PathBuf>,
        name: &str,
        cluster: &str,
        etcd: Option<String>,
    ) -> Self {
        RouterOptions {
            binary: binary.into(),
            name: name.to_owned(),
            cluster: cluster.to_owned(),
            etcd,
            shards: 1,
            lease_ttl_ms: 2000,
            extra: Vec::new(),
            cpus: None,
            netns: None,
            listen: None,
        }
    }

    /// Rebalances in one batch every 100 ms (tests: the routers share
    /// the slots at once).
    pub fn fast_rebalance(mut self) -> Self {
        self.extra.extend(
            [
                "--rebalance-batch-slots",
                "8192",
                "--rebalance-interval-ms",
                "100",
            ]
            .map(String::from),
        );
        self
    }
}

/// A router process (`imrouter serve` with the cluster flags), killed
/// when dropped.
pub struct RouterProcess {
    child: Child,
    /// The address it listens on and advertises.
    pub addr: String,
    pub name: String,
}

impl RouterProcess {
    /// Starts the router and waits until it listens.
    pub fn start(options: &RouterOptions) -> io::Result<RouterProcess> {
        let addr = options
            .listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        // `ip netns exec` and `taskset` exec the router: it keeps their pid.
        let mut prefix: Vec<String> = Vec::new();
        if let Some(netns) = &options.netns {
            prefix.extend(["ip", "netns", "exec", netns].map(String::from));
        }
        if let Some(cpus) = &options.cpus {
            prefix.extend(["taskset", "-c", cpus].map(String::from));
        }
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&options.binary);
                command
            }
            None => Command::new(&options.binary),
        };
        command
            .args(["serve", "--listen", &addr])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--shards", &options.shards.to_string()]);
        if let Some(etcd) = &options.etcd {
            command
                .args(["--etcd", etcd, "--cluster", &options.cluster])
                .args(["--advertise", &addr, "--name", &options.name])
                .args(["--lease-ttl-ms", &options.lease_ttl_ms.to_string()]);
        }
        command
            .args(&options.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn()?;
        let router = RouterProcess {
            child,
            addr,
            name: options.name.clone(),
        };
        wait_listening(&router.addr, &format!("router {}", options.name))?;
        Ok(router)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `imrouter cluster --etcd URL --cluster NAME ARGS...` and returns
/// its standard output.
pub fn cluster_command(
    binary: &Path,
    etcd: &str,
    cluster: &str,
    args: &[&str],
) -> io::Result<String> {
    let output = Command::new(binary)
        .args(["cluster", "--etcd", etcd, "--cluster", cluster])
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "imrouter cluster {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The user and system CPU time a process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parens.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second.max(1) as f64)
}

/// A TCP proxy on 127.0.0.1 to `target` that can be cut: while cut, no
/// byte moves in either direction (what is read is held, the sockets stay
/// open, new connections are accepted and wait), as behind a blackhole
/// route; when healed, everything held moves on. Threads, one per
/// direction of each connection; stopped when dropped.
pub struct Proxy {
    /// The address to connect to instead of `target`.
    pub addr: String,
    state: Arc<ProxyState>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

struct ProxyState {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Every socket, to shut down when the proxy stops.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    pub fn start(target: &str) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let state = Arc::new(ProxyState {
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let target = target.to_owned();
        let acceptor = {
            let state = state.clone();
            std::thread::Builder::new()
                .name("imrouter-proxy".into())
                .spawn(move || accept(listener, &target, &state))?
        };
        Ok(Proxy {
            addr,
            state,
            acceptor: Some(acceptor),
        })
    }

    /// Stops (true) or lets again (false) every byte through.
    pub fn cut(&self, cut: bool) {
        self.state.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.cut.store(false, Ordering::SeqCst);
        for socket in self.state.sockets.lock().expect("proxy sockets").drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, target: &str, state: &Arc<ProxyState>) {
    while !state.stop.load(Ordering::SeqCst) {
        let (client, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => return,
        };
        let Ok(server) = TcpStream::connect(target) else {
            continue; // The client sees its connection closed.
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let mut sockets = state.sockets.lock().expect("proxy sockets");
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let state = state.clone();
            let _ = std::thread::Builder::new()
                .name("imrouter-proxy-pipe".into())
                .spawn(move || pipe(from, to, &state));
        }
        sockets.push(client);
        sockets.push(server);
    }
}

/// Moves bytes from `from` to `to` until either ends; holds them while
/// the proxy is cut.
fn pipe(mut from: TcpStream, mut to: TcpStream, state: &ProxyState) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        while state.cut.load(Ordering::SeqCst) && !state.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Router "hosts" on one machine: a network namespace each, joined to
/// this one by a veth pair, so that a path can be cut by a blackhole
/// route as between machines (needs root and iproute2). Host `i` has
/// address [`Hosts::router_ip`] inside its namespace; this namespace
/// reaches it from [`Hosts::host_ip`] (where nodes here connect from) and
/// offers etcd to it at [`Hosts::etcd_ip`] (a second address, so that
/// etcd can be cut without the nodes). Everything is deleted on drop.
pub struct Hosts {
    /// 10.<base>.x.y
    base: u8,
    names: Vec<String>,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip").args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

impl Hosts {
    /// Creates `count` hosts (at most 50); an error when the machine does
    /// not allow it.
    pub fn create(count: usize) -> io::Result<Hosts> {
        let pid = std::process::id();
        let mut hosts = Hosts {
            base: 200 + (pid % 50) as u8,
            names: Vec::new(),
        };
        for i in 0..count.min(50) {
            let name = format!("imr{}h{}", pid % 100_000, i + 1);
            ip(&["netns", "add", &name])?;
            hosts.names.push(name.clone());
            let (outside, inside) = (name.clone(), format!("imr{}n{}", pid % 100_000, i + 1));
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/24", hosts.host_ip(i)),
                "dev",
                &outside,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/32", hosts.etcd_ip(i)),
                "dev",
                &outside,
            ])?;
            ip(&["link", "set", &outside, "up"])?;
            let router = format!("{}/24", hosts.router_ip(i));
            for args in [
                vec!["addr", "add", &router, "dev", &inside],
                vec!["link", "set", &inside, "up"],
                vec!["link", "set", "lo", "up"],
                vec!["route", "add", &hosts.etcd_ip(i), "dev", &inside],
            ] {
                let mut all = vec!["netns", "exec", &name, "ip"];
                all.extend(args);
                ip(&all)?;
            }
        }
        Ok(hosts)
    }

    /// Host `i`'s network namespace.
    pub fn netns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Host `i`'s address (inside its namespace).
    pub fn router_ip(&self, i: usize) -> String {
        format!("10.{}.{}.2", self.base, i + 1)
    }

    /// This namespace's address on host `i`'s link.
    pub fn host_ip(&self, i: usize) -> String {
        format!("10.{}.{}.1", self.base, i + 1)
    }

    /// etcd's address for host `i` (in this namespace).
    pub fn etcd_ip(&self, i: usize) -> String {
        format!("10.{}.{}.1", self.base, 101 + i)
    }

    fn route_in(&self, i: usize, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["netns", "exec", &self.names[i], "ip", "route"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cuts host `i` from etcd (true: a blackhole route in its namespace)
    /// or heals it.
    pub fn cut_from_etcd(&self, i: usize, cut: bool) -> io::Result<()> {
        let etcd = self.etcd_ip(i);
        if cut {
            self.route_in(i, &["replace", "blackhole", &etcd])
        } else {
            let inside = format!("imr{}n{}", std::process::id() % 100_000, i + 1);
            self.route_in(i, &["replace", &etcd, "dev", &inside])
        }
    }

    /// Cuts host `i` from everything here, etcd and the nodes (true), or
    /// heals it.
    pub fn isolate(&self, i: usize, cut: bool) -> io::Result<()> {
        self.cut_from_etcd(i, cut)?;
        let host = format!("{}/32", self.host_ip(i));
        if cut {
            self.route_in(i, &["replace", "blackhole", &host])
        } else {
            self.route_in(i, &["del", "blackhole", &host])
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            // The veth pair goes with its namespace end.
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", name]);
        }
    }
}
