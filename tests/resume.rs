//! Reconnect grace (issue 4, item 3): a connection lost without a Goodbye
//! leaves its node's sessions suspended for --reconnect-grace-ms; messages
//! for them are parked and delivered in order when the same process
//! reconnects, or answered Offline when it does not. With acks, what the
//! node had not acknowledged is sent again on the resumed connection.

mod common;

use common::{hello_resuming, start_router_with, wait_until, Frame, Node};
use imrouter::wire::{fb, ROUTE_FLAG_ACK};

const GONE: (fb::Verdict, fb::Reason) = (fb::Verdict::Offline, fb::Reason::NodeGone);
const ROUTED: (fb::Verdict, fb::Reason) = (fb::Verdict::Routed, fb::Reason::None);

fn suspended(router: &imrouter::RunningRouter) -> u64 {
    router.metrics().connections_suspended
}

/// Connects node-a, and node-b (process 7) with bob's phone, whose
/// connection is then lost; returns node-a once the router suspended
/// node-b, and node-b's stream.
fn alice_and_lost_bob(router: &imrouter::RunningRouter) -> (Node, u64) {
    let addr = router.local_addr();
    let alice = Node::connect(addr, "node-a");
    let mut bob_node = Node::connect_with(addr, "node-b", 7, None);
    bob_node.open_confirmed("bob", "phone");
    let stream = bob_node.stream;
    drop(bob_node); // The TCP connection is lost; no Goodbye.
    wait_until("the router suspends node-b", || suspended(router) == 1);
    (alice, stream)
}

/// Reconnects `name` (process `incarnation`), asking to resume `stream`,
/// acknowledging `received`.
fn reconnect(
    addr: std::net::SocketAddr,
    name: &str,
    incarnation: u64,
    acks: bool,
    received: u64,
    stream: u64,
) -> Node {
    Node::connect_hello(
        addr,
        name,
        &hello_resuming(name, incarnation, None, acks, received, stream),
    )
}

#[test]
fn a_lost_connection_resumes_within_the_grace_and_gets_what_was_parked() {
    let router = start_router_with(2, |args| args.reconnect_grace_ms = 30_000);
    let addr = router.local_addr();
    let (mut alice, stream) = alice_and_lost_bob(&router);

    let ids: Vec<u64> = (0..3)
        .map(|i| alice.route_to("bob", None, format!("m{i}").as_bytes(), ROUTE_FLAG_ACK))
        .collect();
    // Parked: no verdict until node-b is back (a Ping round trip shows
    // nothing was answered meanwhile).
    assert!(alice.ping(99).is_empty(), "no verdict while parked");

    let mut bob_node = reconnect(addr, "node-b", 7, false, 0, stream);
    assert!(bob_node.resumed, "the same process resumes its stream");
    for (i, &id) in ids.iter().enumerate() {
        let (message_id, user, devices, payload) = bob_node.expect_deliver();
        assert_eq!((message_id, user.as_str()), (id, "bob"));
        assert_eq!(devices, ["phone"]);
        assert_eq!(payload, format!("m{i}").as_bytes(), "in order");
    }
    assert_eq!(alice.expect_statuses(&ids), vec![ROUTED; 3]);
    // The session survived: routing goes on as before.
    let id = alice.route_to("bob", None, b"after", ROUTE_FLAG_ACK);
    assert_eq!(bob_node.expect_deliver().0, id);
    assert_eq!(alice.expect_status(id), ROUTED);
    // A resume is no membership change.
    let left = |e: &Frame| {
        matches!(
            e,
            Frame::NodeEvent {
                kind: fb::NodeEventKind::Left,
                ..
            }
        )
    };
    assert!(!alice.events.iter().any(left), "{:?}", alice.events);
    let metrics = router.metrics();
    assert_eq!(metrics.connections_resumed, 1);
    assert_eq!(metrics.suspensions_expired, 0);
    router.shutdown();
}

#[test]
fn when_the_grace_runs_out_parked_messages_are_answered_offline() {
    let router = start_router_with(2, |args| args.reconnect_grace_ms = 300);
    let addr = router.local_addr();
    let (mut alice, stream) = alice_and_lost_bob(&router);
    let parked: Vec<u64> = (0..2)
        .map(|_| alice.route_to("bob", None, b"parked", 0))
        .collect();
    // Without ACK a delivered message has no verdict; a parked one that
    // never reaches its node gets Offline when the grace ends.
    assert_eq!(alice.expect_statuses(&parked), vec![GONE; 2]);
    // node-b left when its grace ran out (after its Joined).
    while alice.next_event().0 != fb::NodeEventKind::Left {}
    let id = alice.route_to("bob", None, b"later", ROUTE_FLAG_ACK);
    assert_eq!(
        alice.expect_status(id),
        (fb::Verdict::Offline, fb::Reason::NoSession),
        "the sessions are purged"
    );
    // Too late to resume: a new stream, and the node must resync.
    let bob_node = reconnect(addr, "node-b", 7, false, 0, stream);
    assert!(!bob_node.resumed);
    let metrics = router.metrics();
    assert_eq!(metrics.suspensions_expired, 1);
    assert_eq!(metrics.parked_messages_failed, 2);
    router.shutdown();
}

#[test]
fn goodbye_purges_at_once_whatever_the_grace() {
    let router = start_router_with(2, |args| args.reconnect_grace_ms = 60_000);
    let addr = router.local_addr();
    let mut alice = Node::connect(addr, "node-a");
    let mut bob_node = Node::connect(addr, "node-b");
    bob_node.open_confirmed("bob", "phone");
    bob_node.goodbye("deploy");
    common::route_until_offline(&mut alice, "bob");
    assert_eq!(suspended(&router), 0);
    router.shutdown();
}

#[test]
fn a_node_that_acks_gets_again_what_it_had_not_processed() {
    let router = start_router_with(2, |args| args.reconnect_grace_ms = 30_000);
    let addr = router.local_addr();
    let mut alice = Node::connect(addr, "node-a");
    let hello = hello_resuming("node-b", 7, None, true, 0, 0);
    let mut bob_node = Node::connect_hello(addr, "node-b", &hello);
    assert!(!bob_node.resumed);
    bob_node.open("bob", "phone");
    // Confirm the open (a Route to itself); its Routed waits for the Ack.
    let sync = bob_node.route_to("bob", Some("phone"), b"sync", ROUTE_FLAG_ACK);
    assert_eq!(bob_node.expect_deliver().0, sync);
    assert!(
        bob_node.ping(1).is_empty(),
        "Routed only once node-b has it"
    );
    bob_node.ack();
    assert_eq!(bob_node.expect_status(sync), ROUTED);
    let first = alice.route_to("bob", None, b"m1", ROUTE_FLAG_ACK);
    assert_eq!(bob_node.expect_deliver().0, first);
    bob_node.ack();
    assert_eq!(alice.expect_status(first), ROUTED);

    // m2 reaches node-b, which reads it but crashes before processing it.
    let second = alice.route_to("bob", None, b"m2", ROUTE_FLAG_ACK);
    let processed = bob_node.wire.bytes_in();
    let stream = bob_node.stream;
    assert_eq!(bob_node.expect_deliver().0, second);
    drop(bob_node);
    wait_until("the router suspends node-b", || suspended(&router) == 1);
    let third = alice.route_to("bob", None, b"m3", ROUTE_FLAG_ACK);

    let mut bob_node = reconnect(addr, "node-b", 7, true, processed, stream);
    assert!(bob_node.resumed);
    assert_eq!(
        bob_node.wire.bytes_in(),
        processed,
        "the stream goes on where node-b was"
    );
    assert_eq!(
        bob_node.expect_deliver().3,
        b"m2",
        "m2 again: never processed"
    );
    assert_eq!(bob_node.expect_deliver().3, b"m3", "then what was parked");
    assert!(alice.ping(2).is_empty(), "still no verdict before the Ack");
    bob_node.ack();
    assert_eq!(alice.expect_statuses(&[second, third]), vec![ROUTED; 2]);
    assert!(alice.ping(3).is_empty(), "one verdict each");
    router.shutdown();
}

#[test]
fn a_full_park_ends_the_grace_early() {
    let router = start_router_with(1, |args| {
        args.reconnect_grace_ms = 60_000;
        args.max_frame_bytes = 4096;
        args.park_bytes_max = 8192;
    });
    let (mut alice, _) = alice_and_lost_bob(&router);
    let payload = [7u8; 1000];
    let ids: Vec<u64> = (0..12)
        .map(|_| alice.route_to("bob", None, &payload, ROUTE_FLAG_ACK))
        .collect();
    let verdicts = alice.expect_statuses(&ids);
    // About 8 KB parked, then the park is full: every message is answered,
    // the parked ones NodeGone, the later ones NoSession (purged).
    assert!(
        verdicts.iter().all(|v| v.0 == fb::Verdict::Offline),
        "{verdicts:?}"
    );
    assert!(verdicts.contains(&GONE), "{verdicts:?}");
    assert!(alice.ping(1).is_empty(), "one verdict each");
    assert_eq!(router.metrics().suspensions_park_full, 1);
    router.shutdown();
}

#[test]
fn a_timed_out_connection_is_suspended_not_purged() {
    let router = start_router_with(2, |args| {
        args.reconnect_grace_ms = 30_000;
        args.heartbeat_ms = 50;
        args.node_timeout_ms = Some(150);
    });
    let addr = router.local_addr();
    let mut bob_node = Node::connect_with(addr, "node-b", 7, None);
    bob_node.open_confirmed("bob", "phone");
    let stream = bob_node.stream;
    // node-b goes silent (half-open: it neither reads nor answers Pings).
    wait_until("the router suspends node-b", || suspended(&router) == 1);
    assert_eq!(router.metrics().connections_timed_out, 1);
    // (Connected only now: a test node answers Pings only while it reads.)
    let mut alice = Node::connect(addr, "node-a");
    let id = alice.route_to("bob", None, b"parked", ROUTE_FLAG_ACK);
    let mut again = reconnect(addr, "node-b", 7, false, 0, stream);
    assert!(again.resumed);
    assert_eq!(again.expect_deliver().0, id);
    assert_eq!(alice.expect_status(id), ROUTED);
    drop(bob_node);
    router.shutdown();
}

#[test]
fn a_new_process_during_the_grace_fails_what_was_parked_at_once() {
    let router = start_router_with(2, |args| args.reconnect_grace_ms = 60_000);
    let addr = router.local_addr();
    let (mut alice, stream) = alice_and_lost_bob(&router);
    let id = alice.route_to("bob", None, b"parked", ROUTE_FLAG_ACK);
    assert!(alice.ping(1).is_empty());
    // node-b restarted: its old sessions and parked messages are dead.
    let restarted = reconnect(addr, "node-b", 8, false, 0, stream);
    assert!(!restarted.resumed);
    assert_eq!(alice.expect_status(id), GONE);
    let id = alice.route_to("bob", None, b"now", ROUTE_FLAG_ACK);
    assert_eq!(
        alice.expect_status(id),
        (fb::Verdict::Offline, fb::Reason::NoSession)
    );
    router.shutdown();
}
