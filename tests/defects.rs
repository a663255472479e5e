//! Regression tests for the defects found by review and by hostile peers
//! (issue 9): each failed before its fix. Over real TCP, with real nodes.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use imrouter::wire::{fb, Encoder, ROUTE_FLAG_ACK};

const GONE: (fb::Verdict, fb::Reason) = (fb::Verdict::Offline, fb::Reason::NodeGone);
const ROUTED: (fb::Verdict, fb::Reason) = (fb::Verdict::Routed, fb::Reason::None);

/// A node that acknowledges its stream, with `user`'s phone open (the open
/// confirmed by a Route to itself, acknowledged).
fn acking_node(addr: std::net::SocketAddr, name: &str, incarnation: u64, user: &str) -> Node {
    let hello = hello_resuming(name, incarnation, None, true, 0, 0);
    let mut node = Node::connect_hello(addr, name, &hello);
    node.open(user, "phone");
    let probe = node.route_to(user, Some("phone"), b"probe", ROUTE_FLAG_ACK);
    assert_eq!(node.expect_deliver().0, probe);
    node.ack();
    assert_eq!(node.expect_status(probe), ROUTED);
    node
}

/// Sends an Ack of exactly `received` stream bytes.
fn ack_at(node: &mut Node, received: u64) {
    let frame = Encoder::new().ack(received).to_vec();
    node.wire.send(&frame);
}

// ----- Verdicts lost when an acking node ends for good ---------------------

/// A router of `shards` shards with a long grace; node-a, and node-b
/// (incarnation 7, acknowledging its stream) hosting bob.
fn alice_and_acking_bob(shards: usize) -> (imrouter::RunningRouter, Node, Node) {
    let router = start_router_with(shards, |args| args.reconnect_grace_ms = 30_000);
    let addr = router.local_addr();
    let alice = Node::connect(addr, "node-a");
    let bob = acking_node(addr, "node-b", 7, "bob");
    (router, alice, bob)
}

/// `n` Routes with ACK from alice to bob, each delivered to bob (read, not
/// acknowledged); their ids.
fn routed_and_delivered(alice: &mut Node, bob: &mut Node, n: usize) -> Vec<u64> {
    let ids: Vec<u64> = (0..n)
        .map(|_| alice.route_to("bob", None, b"m", ROUTE_FLAG_ACK))
        .collect();
    for &id in &ids {
        assert_eq!(bob.expect_deliver().0, id);
    }
    ids
}

/// Delivers written to a node that acknowledges, and not acknowledged when
/// its connection ends by a refused frame, are answered Offline/NodeGone
/// (before: no verdict at all).
#[test]
fn an_acking_node_closed_for_a_bad_frame_leaves_no_verdict_behind() {
    let (router, mut alice, mut bob) = alice_and_acking_bob(1);
    let ids = routed_and_delivered(&mut alice, &mut bob, 2);
    // Read, never acknowledged; then a frame the router refuses.
    bob.wire.send(&[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        bob.wire.error_then_close().map(|(code, _)| code),
        Some(fb::ErrorCode::FrameTooLarge)
    );
    assert_eq!(alice.expect_statuses(&ids), vec![GONE; 2]);
    router.shutdown();
}

/// The same when a new process of the node connects (a crash and restart).
#[test]
fn an_acking_node_replaced_by_a_new_process_leaves_no_verdict_behind() {
    let (router, mut alice, mut bob) = alice_and_acking_bob(2);
    let ids = routed_and_delivered(&mut alice, &mut bob, 2);
    let _restarted = Node::connect_with(router.local_addr(), "node-b", 8, None);
    assert_eq!(alice.expect_statuses(&ids), vec![GONE; 2]);
    drop(bob);
    router.shutdown();
}

/// After its Goodbye a node still acknowledges until the router closes:
/// what it acknowledged is Routed, what it did not is NodeGone.
#[test]
fn an_acking_node_that_says_goodbye_gets_its_verdicts_settled() {
    let (router, mut alice, mut bob) = alice_and_acking_bob(1);
    let ids: Vec<u64> = (0..3)
        .map(|_| alice.route_to("bob", None, b"m", ROUTE_FLAG_ACK))
        .collect();
    let mut after = Vec::new();
    for &id in &ids {
        assert_eq!(bob.expect_deliver().0, id);
        after.push(bob.wire.bytes_in());
    }
    ack_at(&mut bob, after[0]);
    assert_eq!(alice.expect_status(ids[0]), ROUTED);
    let goodbye = Encoder::new().goodbye("deploy").to_vec();
    bob.wire.send(&goodbye);
    ack_at(&mut bob, after[1]);
    // The router closes after its linger; node-b reads to the end.
    while bob.wire.recv().is_some() {}
    assert_eq!(alice.expect_statuses(&ids[1..]), vec![ROUTED, GONE]);
    router.shutdown();
}

/// A node that reads but never acknowledges cannot hold its senders'
/// verdicts forever: after --node-timeout-ms without an Ack the
/// connection is timed out (suspended), and after the grace the messages
/// are answered NodeGone.
#[test]
fn a_node_that_reads_but_never_acknowledges_is_timed_out() {
    let router = start_router_with(1, |args| {
        args.heartbeat_ms = 50;
        args.node_timeout_ms = Some(150);
        args.reconnect_grace_ms = 100;
    });
    let addr = router.local_addr();
    let hello = hello_resuming("node-b", 7, None, true, 0, 0);
    let mut bob = Node::connect_hello(addr, "node-b", &hello);
    bob.open("bob", "phone");
    bob.sync_shard(0, 1);
    // node-b reads (and answers Pings) on its own thread, but never acks.
    let reader = std::thread::spawn(move || {
        let mut delivers = 0;
        while let Some(frame) = bob.wire.recv() {
            match frame {
                Frame::Ping { nonce } => {
                    let pong = bob.encoder.pong(nonce).to_vec();
                    if bob.wire.stream.write_all(&pong).is_err() {
                        break;
                    }
                }
                Frame::Deliver { .. } => delivers += 1,
                _ => {}
            }
        }
        delivers
    });
    // (node-a connects now: a test node answers Pings only while it reads,
    // and it reads while it waits for its verdict.)
    let mut alice = Node::connect(addr, "node-a");
    let id = alice.route_to("bob", None, b"m", ROUTE_FLAG_ACK);
    assert_eq!(alice.expect_status(id), GONE);
    assert_eq!(reader.join().unwrap(), 1, "node-b read the message");
    assert_eq!(router.metrics().ack_timeouts, 1);
    router.shutdown();
}

// ----- NodeEvents bypass the output bound -----------------------------------
//
// Tested on the shard core alone (src/core/tests.rs), where a socket that
// takes nothing is exact: over TCP the kernel's buffers absorb megabytes
// first.

// ----- Connection bounds ----------------------------------------------------

/// The per-shard bound counts connections where they are served, hand-offs
/// included, and a plain connection goes to a shard with room (before: a
/// shard served more than its bound, and a node was refused while another
/// shard had room).
#[test]
fn connections_are_counted_on_the_shard_that_serves_them() {
    let router = start_router_with(2, |args| args.max_connections_per_shard = 1);
    let addr = router.local_addr();
    let first = Node::connect_to_shard(addr, "direct-1", 1);
    assert_eq!(first.shard, 1);
    let mut refused = Wire::connect(addr);
    refused.send(&hello_frame("direct-2", 1, Some(1)));
    assert_eq!(
        refused.error_then_close().map(|(code, _)| code),
        Some(fb::ErrorCode::RouterFull),
        "shard 1 is full"
    );
    // A plain connection (whichever shard accepts it) goes to shard 0.
    let plain = Node::connect(addr, "plain-1");
    assert_eq!(plain.shard, 0);
    let mut refused = Wire::connect(addr);
    refused.send(&hello_frame("plain-2", 1, None));
    assert_eq!(
        refused.error_then_close().map(|(code, _)| code),
        Some(fb::ErrorCode::RouterFull),
        "every shard is full"
    );
    drop((first, plain));
    router.shutdown();
}

// ----- Stream offsets -------------------------------------------------------

fn refused_with(node: &mut Node) -> Option<fb::ErrorCode> {
    node.wire.error_then_close().map(|(code, _)| code)
}

/// An Ack inside a frame, and an Ack that goes back, are refused with
/// InvalidField (before: accepted, and a resume then replayed from the
/// middle of a frame).
#[test]
fn acks_must_fall_on_frame_boundaries_and_never_go_back() {
    let router = start_router_with(1, |args| args.reconnect_grace_ms = 30_000);
    let addr = router.local_addr();
    let mut alice = Node::connect(addr, "node-a");

    let mut bob = acking_node(addr, "node-b", 7, "bob");
    alice.route_to("bob", None, b"a message", 0);
    bob.expect_deliver();
    let inside = bob.wire.bytes_in() - 3;
    ack_at(&mut bob, inside);
    assert_eq!(refused_with(&mut bob), Some(fb::ErrorCode::InvalidField));

    let mut carol = acking_node(addr, "node-c", 7, "carol");
    alice.route_to("carol", None, b"a message", 0);
    carol.expect_deliver();
    carol.ack();
    ack_at(&mut carol, 0);
    assert_eq!(refused_with(&mut carol), Some(fb::ErrorCode::InvalidField));
    router.shutdown();
}

/// A resume whose `Hello.received` is inside a frame is refused with
/// InvalidField; the stream stays suspended, and a resume from a frame
/// boundary then continues it.
#[test]
fn a_resume_must_start_on_a_frame_boundary() {
    let router = start_router_with(1, |args| args.reconnect_grace_ms = 30_000);
    let addr = router.local_addr();
    let mut alice = Node::connect(addr, "node-a");
    let mut bob = acking_node(addr, "node-b", 7, "bob");
    let id = alice.route_to("bob", None, b"not processed", ROUTE_FLAG_ACK);
    let before = bob.wire.bytes_in();
    assert_eq!(bob.expect_deliver().0, id);
    let stream = bob.stream;
    drop(bob);
    wait_until("node-b is suspended", || {
        router.metrics().connections_suspended == 1
    });
    let mut wrong = Wire::connect(addr);
    wrong.send(&hello_resuming("node-b", 7, None, true, before + 5, stream));
    assert_eq!(
        wrong.error_then_close().map(|(code, _)| code),
        Some(fb::ErrorCode::InvalidField)
    );
    let hello = hello_resuming("node-b", 7, None, true, before, stream);
    let mut bob = Node::connect_hello(addr, "node-b", &hello);
    assert!(bob.resumed);
    assert_eq!(bob.expect_deliver().0, id, "sent again, whole");
    bob.ack();
    assert_eq!(alice.expect_status(id), ROUTED);
    router.shutdown();
}

// ----- Restart after a crash ------------------------------------------------

/// Right after a router is killed its listening socket can stay bound for
/// a few milliseconds: starting retries the bind for a bounded time
/// (before: "Address already in use" 4 times in 10).
#[test]
fn starting_retries_an_address_freed_a_moment_later() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
    });
    let router = start_router_with(1, |args| args.listen = addr.to_string());
    assert_eq!(router.local_addr(), addr);
    releaser.join().unwrap();
    router.shutdown();
}

// ----- One sender's burst ---------------------------------------------------

/// A Broadcast storm from one node: a node that reads (slowly) is never
/// disconnected and gets every copy, once; the storm's sender is slowed
/// instead (before: healthy nodes were disconnected as slow consumers).
#[test]
fn a_broadcast_storm_slows_its_sender_not_the_nodes_that_read() {
    let router = start_router_with(2, |args| {
        args.max_frame_bytes = 16 * 1024;
        args.out_buffer_bytes = 64 * 1024;
    });
    let addr = router.local_addr();
    let mut reader = Node::connect(addr, "reader");
    let mut storm = Node::connect(addr, "storm");
    const COUNT: usize = 1000;
    let payload = vec![0xB5; 4096];
    let frame = Encoder::new().broadcast("", &payload).to_vec();
    let writer = std::thread::spawn(move || {
        for _ in 0..COUNT {
            storm.wire.send(&frame);
        }
        storm
    });
    let mut got = 0;
    while got < COUNT {
        match reader.recv() {
            Frame::Broadcast { from_node, payload } => {
                assert_eq!(from_node, "storm");
                assert_eq!(payload.len(), 4096);
                got += 1;
                if got % 50 == 0 {
                    // Read slower than the storm is sent.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut storm = writer.join().unwrap();
    assert!(storm.ping(1).is_empty(), "the sender is still connected");
    assert!(reader.ping(2).is_empty(), "no copy twice");
    let metrics = router.metrics();
    assert_eq!(metrics.connections_slow, 0);
    assert!(
        metrics.copies_held > 0 || metrics.reads_paused > 0,
        "the storm was held back: {metrics:?}"
    );
    router.shutdown();
}

/// A Locate storm: the locator's reader pauses at its budget of
/// unanswered Locates (they are asked of another shard), every Locate is
/// answered, and others route meanwhile.
#[test]
fn a_locate_storm_is_paced_by_its_answers() {
    let router = start_router_with(2, |_| {});
    let addr = router.local_addr();
    let mut bob = Node::connect(addr, "node-b");
    bob.open_confirmed("bob", "phone");
    let mut alice = Node::connect(addr, "node-a");
    let elsewhere = 1 - imrouter::placement::shard_for_user(b"bob", 2) as u16;
    let mut locator = Node::connect_to_shard(addr, "locator", elsewhere);
    const COUNT: u64 = 20_000;
    let mut frames = Vec::new();
    let mut encoder = Encoder::new();
    for query in 0..COUNT {
        frames.extend_from_slice(encoder.locate(query, "bob"));
    }
    let mut stream = locator.wire.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || stream.write_all(&frames).unwrap());
    // Others are served while the locator's queries are in flight.
    for _ in 0..10 {
        let id = alice.route_to("bob", None, b"hi", ROUTE_FLAG_ACK);
        assert_eq!(alice.expect_status(id), ROUTED);
        bob.expect_deliver();
    }
    let mut answered = 0;
    while answered < COUNT {
        match locator.recv() {
            Frame::Located { sessions, .. } => {
                assert_eq!(sessions.len(), 1);
                answered += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    writer.join().unwrap();
    assert!(router.metrics().reads_paused > 0, "the locator was paused");
    router.shutdown();
}

/// A Fanout storm: 150 Fanouts of 1,000 recipients each, more recipients
/// than a sender may have in flight. The storm's reader pauses at its
/// budget, every Fanout gets its Deliver and its Status, and others route
/// meanwhile (before: 64 maximal Fanouts held others' p99 at 594 ms).
#[test]
fn a_fanout_storm_is_paced_by_its_budget() {
    let router = start_router_with(2, |args| args.max_frame_bytes = 256 * 1024);
    let addr = router.local_addr();
    let mut bob = Node::connect(addr, "node-b");
    let users: Vec<String> = (0..1_000).map(|i| format!("u{i}")).collect();
    for user in &users {
        bob.open(user, "phone");
    }
    bob.confirm_open(users.last().unwrap(), "phone");
    bob.open_confirmed("bob", "desk");
    let mut alice = Node::connect(addr, "node-a");
    let mut storm = Node::connect(addr, "storm");
    const FANOUTS: u64 = 150;
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut frames = Vec::new();
    for id in 0..FANOUTS {
        frames.extend_from_slice(storm.encoder.fanout(&imrouter::wire::FanoutFrame {
            message_id: 1_000 + id,
            from_user: "storm",
            from_device: "d",
            to_users: &refs,
            flags: 0,
            payload: b"to everyone",
        }));
    }
    let mut stream = storm.wire.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || stream.write_all(&frames).unwrap());
    // node-b reads everything on its own thread.
    let reader = std::thread::spawn(move || {
        let (mut fanouts, mut routes) = (0, 0);
        while fanouts < FANOUTS || routes < 10 {
            match bob.recv() {
                Frame::FanoutDeliver { recipients, .. } => {
                    assert_eq!(recipients.len(), 1_000);
                    fanouts += 1;
                }
                Frame::Deliver { .. } => routes += 1,
                other => panic!("node-b: unexpected {other:?}"),
            }
        }
        bob
    });
    for _ in 0..10 {
        let id = alice.route_to("bob", None, b"hi", ROUTE_FLAG_ACK);
        assert_eq!(alice.expect_status(id), ROUTED);
    }
    let mut statuses = 0;
    while statuses < FANOUTS {
        match storm.recv() {
            Frame::FanoutStatus {
                verdict, offline, ..
            } => {
                assert_eq!((verdict, offline.len()), (fb::Verdict::Routed, 0));
                statuses += 1;
            }
            other => panic!("storm: unexpected {other:?}"),
        }
    }
    writer.join().unwrap();
    drop(reader.join().unwrap());
    assert!(router.metrics().reads_paused > 0, "the storm was paused");
    router.shutdown();
}

/// A snapshot of 100,000 sessions is applied in slices: others are served
/// while it is applied, and its acknowledgement counts every session.
#[test]
fn a_large_session_sync_does_not_stall_the_router() {
    let router = start_router_with(2, |args| args.max_frame_bytes = 256 * 1024);
    let addr = router.local_addr();
    let mut bob = Node::connect(addr, "node-b");
    bob.open_confirmed("bob", "phone");
    let mut alice = Node::connect(addr, "node-a");
    let mut syncing = Node::connect(addr, "big");
    const SESSIONS: usize = 100_000;
    let users: Vec<String> = (0..SESSIONS).map(|i| format!("user-{i}")).collect();
    let mut encoder = Encoder::new();
    let mut frames = Vec::new();
    for (i, chunk) in users.chunks(5_000).enumerate() {
        let batch: Vec<_> = chunk
            .iter()
            .map(|user| (user.as_str(), "d", fb::Platform::Web, 0))
            .collect();
        let last = (i + 1) * 5_000 >= SESSIONS;
        frames.extend_from_slice(encoder.session_sync(1, &batch, last));
    }
    syncing.wire.send(&frames);
    for _ in 0..10 {
        let id = alice.route_to("bob", None, b"hi", ROUTE_FLAG_ACK);
        assert_eq!(alice.expect_status(id), ROUTED);
        bob.expect_deliver();
    }
    match syncing.recv() {
        Frame::SessionSyncAck {
            generation, added, ..
        } => {
            assert_eq!((generation, added), (1, SESSIONS as u64));
        }
        other => panic!("expected the SessionSyncAck, got {other:?}"),
    }
    assert_eq!(router.metrics().sessions, SESSIONS as u64 + 1);
    router.shutdown();
}
