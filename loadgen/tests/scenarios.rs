//! Every scenario of the load generator, briefly, against a real router
//! process: the generator is the correctness oracle (no message lost,
//! duplicated or misrouted, every verdict right, resumes where expected),
//! and it exits non-zero when anything is wrong. Small rates: a debug
//! build on a two-core machine, where the generator and the router share
//! the cores. Run one after another (a lock), since the failover
//! scenario's timing must not compete with another router.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The `imrouter` binary of this build (`cargo test --workspace` builds
/// it next to the generator; a test of this package alone builds it).
fn router_binary() -> PathBuf {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_imrouter-loadgen"));
    let router = loadgen.with_file_name("imrouter");
    if !router.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--package", "imrouter", "--bin", "imrouter"]);
        if loadgen.parent().is_some_and(|dir| dir.ends_with("release")) {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the imrouter binary failed");
    }
    router
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `imrouter serve` with `args` on `port` and waits for its
/// "ready" line.
fn start_router(port: u16, args: &[&str]) -> Router {
    let mut child = Command::new(router_binary())
        .args([
            "serve",
            "--shards",
            "2",
            "--admin-listen",
            "127.0.0.1:0",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the router");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("ready: listening") => break,
            Some(Ok(_)) => {}
            _ => panic!("the router ended before it was ready"),
        }
    }
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Router(child)
}

/// Runs the generator; fails the test with its output unless it passed.
fn run_loadgen(port: u16, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_imrouter-loadgen"))
        .arg("--router")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--quiet", "--cpus", "1"])
        .args(args)
        .output()
        .expect("run the load generator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("result          OK"),
        "imrouter-loadgen {args:?} failed:\n{text}"
    );
    text
}

fn scenario(router_args: &[&str], loadgen_args: &[&str]) -> String {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let _router = start_router(port, router_args);
    run_loadgen(port, loadgen_args)
}

#[test]
fn chat() {
    scenario(
        &[],
        &[
            "--scenario",
            "chat",
            "--users",
            "2000",
            "--rate",
            "3000",
            "--warmup",
            "1",
            "--duration",
            "2",
            "--devices-per-user",
            "2",
        ],
    );
}

#[test]
fn churn() {
    scenario(
        &[],
        &[
            "--scenario",
            "churn",
            "--users",
            "2000",
            "--rate",
            "2000",
            "--churn-rate",
            "1000",
            "--warmup",
            "1",
            "--duration",
            "2",
        ],
    );
}

#[test]
fn fanout() {
    scenario(
        &[],
        &[
            "--scenario",
            "fanout",
            "--users",
            "2000",
            "--group-sizes",
            "10,100,1000",
            "--rate",
            "100",
            "--warmup",
            "1",
            "--duration",
            "2",
        ],
    );
}

#[test]
fn policy() {
    for policy in ["same-device-kick", "single-session"] {
        scenario(
            &["--login-policy", policy],
            &[
                "--scenario",
                "policy",
                "--users",
                "2000",
                "--login-policy",
                policy,
            ],
        );
    }
}

/// A cut the router resumes (nothing lost, nothing duplicated) and one
/// longer than the grace (everything parked answered Offline, a resync).
/// The stream the generator's nodes write themselves must resume at the
/// right offset: this failed before `NodeCore::wrote_stream`.
#[test]
fn failover() {
    let text = scenario(
        &["--reconnect-grace-ms", "1000"],
        &[
            "--scenario",
            "failover",
            "--reconnect-grace-ms",
            "1000",
            "--users",
            "2000",
            "--rate",
            "2000",
            "--warmup",
            "1",
            "--duration",
            "6",
        ],
    );
    assert!(text.contains("resumed=true (expected true)"), "{text}");
    assert!(text.contains("resumed=false (expected false)"), "{text}");
}

/// The generator kills the router (SIGKILL) and starts it again.
#[test]
fn restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let port = free_port();
    let command = format!(
        "{} serve --shards 2 --admin-listen 127.0.0.1:0 --listen 127.0.0.1:{port}",
        router_binary().display()
    );
    let text = run_loadgen(
        port,
        &[
            "--scenario",
            "restart",
            "--router-cmd",
            &command,
            "--users",
            "2000",
            "--rate",
            "2000",
            "--warmup",
            "1",
            "--duration",
            "3",
        ],
    );
    assert!(text.contains("resynced=true"), "{text}");
}

/// A cluster scenario (three routers and an etcd the generator starts):
/// passes when the generator exits 0 with the oracle's OK. Skipped, with
/// a message, when the machine has no etcd (scripts/deps.sh installs it);
/// the router binary must be built with `--features cluster`
/// (scripts/test.sh does).
fn cluster_scenario(name: &str) -> Option<String> {
    if imrouter::cluster::local::etcd_binary().is_none() {
        eprintln!("skipped: no etcd binary (apt-get install etcd-server)");
        return None;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_imrouter-loadgen"))
        .args(["--scenario", name, "--quiet", "--cpus", "1"])
        .arg("--router-bin")
        .arg(router_binary())
        .args(["--nodes", "4", "--users", "2000", "--rate", "2000"])
        // A 4 s lease (the faults need 6 TTLs of traffic): with 2 s, a
        // loaded CI machine (debug routers, etcd's fsyncs) once delayed
        // keep-alives past the fence again and again; the routers then
        // answered Unknown for so long that messages outlived the drain.
        .args([
            "--lease-ttl-ms",
            "4000",
            "--warmup",
            "1",
            "--duration",
            "23",
        ])
        .output()
        .expect("run the load generator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("oracle: OK"),
        "imrouter-loadgen --scenario {name} failed (is the imrouter binary built with \
         --features cluster?):\n{text}"
    );
    eprintln!("{text}");
    Some(text)
}

#[test]
fn router_kill() {
    if let Some(text) = cluster_scenario("router-kill") {
        assert!(text.contains("SIGKILL r2"), "{text}");
    }
}

/// A router told to stop (SIGTERM) drains: it hands its slots over, its
/// nodes leave it, it exits; nothing is lost, no failover is needed.
#[test]
fn router_drain() {
    if let Some(text) = cluster_scenario("router-drain") {
        assert!(text.contains("SIGTERM r2 (drain)"), "{text}");
    }
}

#[test]
fn router_pause() {
    if let Some(text) = cluster_scenario("router-pause") {
        assert!(text.contains("SIGSTOP r2 .. SIGCONT r2"), "{text}");
    }
}

#[test]
fn partition() {
    if let Some(text) = cluster_scenario("partition") {
        assert!(
            text.contains("r2 cut from etcd .. r2 back to etcd"),
            "{text}"
        );
        assert!(
            text.contains("node 0 cut from r3 .. node 0 back to r3"),
            "{text}"
        );
    }
}

#[test]
fn rebalance() {
    if let Some(text) = cluster_scenario("rebalance") {
        assert!(text.contains("r1 owns no slot, r4 owns"), "{text}");
    }
}
