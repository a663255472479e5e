//! Lame-duck drain of a router alone (the cluster's is in the load
//! generator's `router-drain` scenario): `imrouter drain`, SIGUSR2 and
//! SIGTERM stop accepting, tell every node (a Draining frame), keep
//! serving until the nodes leave or the window ends, then stop; a second
//! SIGTERM stops at once.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use imrouter::wire::{fb, ROUTE_FLAG_ACK};

fn imrouter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imrouter"))
}

fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

struct Router {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Router {
    fn start(window_ms: u32) -> Router {
        let (addr, admin) = (free_addr(), free_addr());
        let child = imrouter()
            .args(["serve", "--shards", "2", "--warmup-ms", "0"])
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--drain-window-ms", &window_ms.to_string()])
            .args(["--reconnect-grace-ms", "0", "--log-level", "warn"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the router accepts", || TcpStream::connect(addr).is_ok());
        Router { child, addr, admin }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for the process to exit; returns how long that took.
    fn exits_within(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "the router did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn imrouter_drain_stops_accepting_keeps_serving_then_stops() {
    let mut router = Router::start(1_500);
    let mut stayer = Node::connect(router.addr, "stayer");
    let mut leaver = Node::connect(router.addr, "leaver");
    leaver.open_confirmed("bob", "phone");

    let output = imrouter()
        .args(["drain", "--router", &router.admin.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("draining"));
    let told = Instant::now();

    // Every node is told; the router is not ready any more and accepts
    // nobody new (its listening sockets are closed).
    assert_eq!(stayer.recv(), Frame::Draining { window_ms: 1_500 });
    assert_eq!(leaver.recv(), Frame::Draining { window_ms: 1_500 });
    let (status, body) =
        imrouter::admin::fetch(router.admin, "/readyz", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    wait_until("new connections refused", || {
        TcpStream::connect(router.addr).is_err()
    });

    // Until the nodes leave, it still routes.
    let id = stayer.route_to("bob", None, b"still there?", ROUTE_FLAG_ACK);
    assert_eq!(
        stayer.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    assert_eq!(leaver.expect_deliver().0, id);
    leaver.goodbye("the router drains");

    // The node that stays is closed when the window is over, and the
    // router stops.
    let (code, _) = stayer.wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::ShuttingDown);
    router.exits_within(Duration::from_secs(10));
    assert!(
        told.elapsed() >= Duration::from_millis(1_400),
        "{:?}",
        told.elapsed()
    );
}

#[test]
fn sigusr2_drains_and_stops_once_every_node_left() {
    let mut router = Router::start(30_000);
    let mut node = Node::connect(router.addr, "n");
    node.open_confirmed("u", "d");
    router.signal(libc::SIGUSR2);
    assert_eq!(node.recv(), Frame::Draining { window_ms: 30_000 });
    node.goodbye("bye");
    // Long before the 30 s window: every node left.
    let took = router.exits_within(Duration::from_secs(10));
    assert!(took < Duration::from_secs(10));
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let mut router = Router::start(30_000);
    let mut node = Node::connect(router.addr, "n");
    router.signal(libc::SIGTERM);
    assert_eq!(node.recv(), Frame::Draining { window_ms: 30_000 });
    router.signal(libc::SIGTERM);
    let (code, _) = node.wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::ShuttingDown);
    router.exits_within(Duration::from_secs(10));
}
