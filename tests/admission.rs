//! Admission, tried as an attacker would: silent sockets, an oversized
//! Hello, one address taking every socket, and a node presenting another
//! node's name. Real nodes still connect; impostors do not.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use imrouter::wire::{fb, Encoder, HelloFrame, ROUTE_FLAG_ACK};

/// A Hello, then the router's first answer: `Some(Welcome or Error)`, or
/// `None` when it closed without a word.
fn try_hello(addr: SocketAddr, hello: &[u8]) -> Option<Frame> {
    let mut wire = Wire::connect(addr);
    wire.send(hello);
    wire.recv()
}

/// A socket to `addr` from the local address `from` (127.0.0.x).
fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it moves into the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        local.sin_family = libc::AF_INET as libc::sa_family_t;
        local.sin_addr.s_addr = u32::from_ne_bytes(from);
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, size),
            0
        );
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 only")
        };
        let mut remote: libc::sockaddr_in = std::mem::zeroed();
        remote.sin_family = libc::AF_INET as libc::sa_family_t;
        remote.sin_port = v4.port().to_be();
        remote.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, size),
            0
        );
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn silent_sockets_cannot_lock_a_node_out() {
    let router = start_router_with(2, |args| args.max_handshakes_per_shard = 8);
    let addr = router.local_addr();
    // A flood: sockets that never say Hello, opened as fast as they can
    // be, 400 held at a time (50 times what the shards let wait).
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(socket) = TcpStream::connect(addr) {
                    held.push_back(socket);
                    opened += 1;
                }
                if held.len() > 400 {
                    held.pop_front();
                }
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // A real node sends its Hello at once: it gets its Welcome, again and
    // again, while the flood goes on. (A node retries a connection that
    // closed before its Welcome; the test counts how often it had to.)
    let mut retries = 0;
    for round in 0..20 {
        let name = format!("real-{round}");
        let hello = hello_frame(&name, 1, None);
        let started = Instant::now();
        loop {
            match try_hello(addr, &hello) {
                Some(Frame::Welcome { .. }) => break,
                Some(other) => panic!("refused: {other:?}"),
                None => retries += 1,
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never welcomed");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let opened = flood.join().unwrap();
    let metrics = router.metrics();
    eprintln!(
        "{opened} silent sockets opened, {} evicted; the real node retried {retries} times in 20 connects",
        metrics.handshakes_evicted
    );
    assert!(metrics.handshakes_evicted > 0);
    assert!(
        retries < 20,
        "the real node was evicted more often than not"
    );
}

#[test]
fn an_oversized_hello_is_refused_before_it_is_read() {
    let router = start_router_with(1, |args| {
        args.max_frame_bytes = 16 << 20;
        args.out_buffer_bytes = 32 << 20;
        args.park_bytes_max = 32 << 20;
    });
    let mut wire = Wire::connect(router.local_addr());
    // Announce a 16 MiB frame and send a few bytes of it: the router does
    // not wait for (or hold) the rest.
    let mut bytes = (16u32 << 20).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 64]);
    wire.send(&bytes);
    let started = Instant::now();
    let (code, text) = wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::FrameTooLarge, "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn one_address_cannot_take_every_socket() {
    let router = start_router_with(2, |args| {
        args.max_connections_per_source = 4;
        args.max_connections = 6;
        // (Above shards x handshake places, as the router requires.)
        args.max_handshakes_per_shard = 2;
    });
    let addr = router.local_addr();
    let mut held: Vec<Node> = (0..4)
        .map(|i| Node::connect(addr, &format!("n{i}")))
        .collect();
    // The fifth socket from 127.0.0.1 is refused at once.
    let mut fifth = Wire::connect(addr);
    let (code, text) = fifth.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::RouterFull);
    assert!(text.contains("per-source"), "{text}");
    // Another address still gets in, up to the router-wide bound.
    let mut other = Wire::from_stream(connect_from([127, 0, 0, 2], addr));
    other.send(&hello_frame("elsewhere", 1, None));
    assert!(matches!(other.recv(), Some(Frame::Welcome { .. })));
    let mut sixth = Wire::from_stream(connect_from([127, 0, 0, 3], addr));
    sixth.send(&hello_frame("sixth", 1, None));
    assert!(matches!(sixth.recv(), Some(Frame::Welcome { .. })));
    let mut seventh = Wire::from_stream(connect_from([127, 0, 0, 4], addr));
    let (code, text) = seventh.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::RouterFull);
    assert!(text.contains("--max-connections"), "{text}");
    // Places come back with closed sockets.
    drop(held.pop());
    wait_until("a place freed", || {
        let mut wire = Wire::connect(addr);
        wire.send(&hello_frame("late", 1, None));
        matches!(wire.recv(), Some(Frame::Welcome { .. }))
    });
    assert!(router.metrics().sockets_refused >= 2);
}

#[test]
fn each_node_may_connect_only_under_its_own_name() {
    let dir = std::env::temp_dir().join(format!("imrouter-admission-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "# per-node tokens\nalpha token-a\nbeta token-b\n").unwrap();
    let router = start_router_with(2, |args| args.auth_token_file = Some(tokens.clone()));
    let addr = router.local_addr();
    let hello = |name: &str, token: &str| {
        Encoder::new()
            .hello(&HelloFrame {
                auth_token: Some(token),
                ..HelloFrame::new(name, 1)
            })
            .to_vec()
    };
    let mut alpha = Node::connect_hello(addr, "alpha", &hello("alpha", "token-a"));
    let mut beta = Node::connect_hello(addr, "beta", &hello("beta", "token-b"));
    beta.open_confirmed("bob", "phone");

    // beta's token does not make a node alpha, and a name not listed gets
    // nowhere with any token: neither takes alpha's place.
    for (name, token) in [("alpha", "token-b"), ("gamma", "token-a"), ("alpha", "")] {
        match try_hello(addr, &hello(name, token)) {
            Some(Frame::Error { code, .. }) => assert_eq!(code, fb::ErrorCode::Unauthorized),
            other => panic!("{name} with {token:?}: {other:?}"),
        }
    }
    let id = alpha.route_to("bob", None, b"still me", ROUTE_FLAG_ACK);
    assert_eq!(
        alpha.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    assert_eq!(beta.expect_deliver().0, id);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The name and incarnation of every node are in every Welcome: they
/// must not resume another node's stream (the stream id, keyed by a secret
/// of the router, is sent only to its node). With per-node tokens nobody
/// else can even present the name, while the node itself may replace its
/// own connection (PROTOCOL.md, section 3, "Take-over").
#[test]
fn the_public_incarnation_does_not_resume_a_stream() {
    let router = start_router_with(1, |args| args.reconnect_grace_ms = 30_000);
    let addr = router.local_addr();
    let mut victim = Node::connect_with(addr, "victim", 5, None);
    victim.open_confirmed("vic", "phone");
    // The victim's connection breaks (suspended for the grace, its stream
    // kept): what an impostor would want to resume.
    drop(victim);
    for stream in [1, 2, 3, 0x9e37_79b9_7f4a_7c15] {
        let hello = hello_resuming("victim", 5, None, false, 0, stream);
        let impostor = Node::connect_hello(addr, "victim", &hello);
        assert!(
            !impostor.resumed,
            "stream {stream} resumed another's stream"
        );
    }

    let dir = std::env::temp_dir().join(format!("imrouter-takeover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "victim t-v\n").unwrap();
    let router = start_router_with(1, |args| args.auth_token_file = Some(tokens.clone()));
    let hello = |token: &str| {
        Encoder::new()
            .hello(&HelloFrame {
                auth_token: Some(token),
                ..HelloFrame::new("victim", 5)
            })
            .to_vec()
    };
    let mut old = Node::connect_hello(router.local_addr(), "victim", &hello("t-v"));
    match try_hello(router.local_addr(), &hello("guessed")) {
        Some(Frame::Error { code, .. }) => assert_eq!(code, fb::ErrorCode::Unauthorized),
        other => panic!("{other:?}"),
    }
    let _new = Node::connect_hello(router.local_addr(), "victim", &hello("t-v"));
    let (code, _) = old.wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::Replaced);
    std::fs::remove_dir_all(&dir).unwrap();
}
