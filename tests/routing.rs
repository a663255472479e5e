//! One-to-one routing over real TCP: sessions, verdicts, kicks, node
//! departure, and the cross-shard and shard-direct paths.

mod common;

use common::*;
use imrouter::wire::{fb, ROUTE_FLAG_ACK};

#[test]
fn route_across_two_nodes() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut alice_node = Node::connect(addr, "node-a");
    let mut bob_node = Node::connect(addr, "node-b");
    bob_node.open_confirmed("bob", "phone");

    let id = alice_node.route_to("bob", None, b"hi bob", ROUTE_FLAG_ACK);
    assert_eq!(
        alice_node.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    let (message_id, to_user, devices, payload) = bob_node.expect_deliver();
    assert_eq!(
        (message_id, to_user.as_str(), payload.as_slice()),
        (id, "bob", &b"hi bob"[..])
    );
    assert_eq!(devices, ["phone"]);
}

#[test]
fn offline_verdict_comes_back_even_without_ack() {
    let router = start_router(2);
    let mut node = Node::connect(router.local_addr(), "node-a");
    let id = node.route_to("nobody", None, b"are you there", 0);
    assert_eq!(
        node.expect_status(id),
        (fb::Verdict::Offline, fb::Reason::NoSession)
    );
    // A session on another device does not make a device-addressed message
    // deliverable.
    node.open_confirmed("carol", "phone");
    let id = node.route_to("carol", Some("watch"), b"x", 0);
    assert_eq!(
        node.expect_status(id),
        (fb::Verdict::Offline, fb::Reason::NoSuchDevice)
    );
}

#[test]
fn all_devices_get_one_deliver_per_node_and_to_device_gets_one() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut sender = Node::connect(addr, "sender");
    let mut node_1 = Node::connect(addr, "node-1");
    let mut node_2 = Node::connect(addr, "node-2");
    node_1.open_confirmed("dave", "phone");
    node_2.open_confirmed("dave", "desktop");
    node_2.open_confirmed("dave", "web");

    let id = sender.route_to("dave", None, b"to all", ROUTE_FLAG_ACK);
    // Two destination nodes, one verdict.
    assert_eq!(
        sender.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    assert!(sender.ping(9).is_empty(), "exactly one verdict");
    assert_eq!(
        node_1.expect_deliver(),
        (id, "dave".into(), vec!["phone".into()], b"to all".to_vec())
    );
    assert_eq!(
        node_2.expect_deliver(),
        (
            id,
            "dave".into(),
            vec!["desktop".into(), "web".into()],
            b"to all".to_vec()
        )
    );

    let id = sender.route_to("dave", Some("web"), b"just web", ROUTE_FLAG_ACK);
    assert_eq!(sender.expect_status(id).0, fb::Verdict::Routed);
    assert_eq!(
        node_2.expect_deliver(),
        (id, "dave".into(), vec!["web".into()], b"just web".to_vec())
    );
    // node-1 got nothing more: its next frame is the Pong.
    assert!(node_1.ping(1).is_empty());
}

#[test]
fn same_device_on_another_node_kicks_the_first() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut first = Node::connect(addr, "node-1");
    let mut second = Node::connect(addr, "node-2");
    first.open_confirmed("erin", "phone");
    second.open_confirmed("erin", "phone");
    match first.recv() {
        Frame::Kick {
            user,
            device,
            reason,
        } => {
            assert_eq!((user.as_str(), device.as_str()), ("erin", "phone"));
            assert_eq!(reason, fb::KickReason::ReplacedElsewhere);
        }
        other => panic!("expected a Kick, got {other:?}"),
    }
    // Messages now reach the second node only, and the first node's late
    // close does not remove the second node's session.
    first.close_session("erin", "phone");
    let mut sender = Node::connect(addr, "sender");
    let id = sender.route_to("erin", None, b"where are you", ROUTE_FLAG_ACK);
    assert_eq!(sender.expect_status(id).0, fb::Verdict::Routed);
    assert_eq!(second.expect_deliver().0, id);
    assert!(first.ping(2).is_empty());
}

#[test]
fn session_close_makes_the_user_offline() {
    let router = start_router(1);
    let mut node = Node::connect(router.local_addr(), "node-1");
    node.open_confirmed("frank", "phone");
    node.close_session("frank", "phone");
    let id = node.route_to("frank", None, b"x", 0);
    assert_eq!(
        node.expect_status(id),
        (fb::Verdict::Offline, fb::Reason::NoSession)
    );
}

#[test]
fn too_many_devices_gets_the_new_session_kicked() {
    let router = start_router_with(1, |args| args.max_sessions_per_user = 2);
    let mut node = Node::connect(router.local_addr(), "node-1");
    node.open_confirmed("gina", "a");
    node.open_confirmed("gina", "b");
    node.open("gina", "c");
    match node.recv() {
        Frame::Kick { device, reason, .. } => {
            assert_eq!(
                (device.as_str(), reason),
                ("c", fb::KickReason::SessionLimit)
            );
        }
        other => panic!("expected a Kick, got {other:?}"),
    }
}

#[test]
fn node_disconnect_purges_its_sessions_in_every_shard() {
    let router = start_router(4);
    let addr = router.local_addr();
    let mut sender = Node::connect(addr, "sender");
    let mut leaving = Node::connect(addr, "leaving");
    let users: Vec<String> = (0..4)
        .map(|shard| user_on_shard("hank", shard, 4))
        .collect();
    for user in &users {
        leaving.open_confirmed(user, "phone");
    }
    assert_eq!(router.metrics().sessions, 4);
    drop(leaving);
    for user in &users {
        route_until_offline(&mut sender, user);
    }
    assert_eq!(router.metrics().sessions, 0, "no ghost sessions left");
}

/// Places the sender's connection, the recipient's owner shard and the
/// recipient's connection on three different shards, so each message takes
/// both cross-core hops, and checks order and exactly-once delivery.
fn cross_shard_routing(shard_count: usize) {
    let router = start_router(shard_count);
    let addr = router.local_addr();
    let last = (shard_count - 1) as u16;
    let mut sender = Node::connect_to_shard(addr, "sender", 0);
    let mut receiver = Node::connect_to_shard(addr, "receiver", last);
    assert_eq!((sender.shard, receiver.shard), (0, last));
    let owner = shard_count / 2; // 1 of 2, 2 of 4: never the sender's shard
    let user = user_on_shard("ivy", owner, shard_count);
    receiver.open_confirmed(&user, "phone");
    let before = router.metrics().batches_sent;

    let count = 2000;
    let ids: Vec<u64> = (0..count)
        .map(|i| sender.route_to(&user, None, format!("message {i}").as_bytes(), 0))
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        let (message_id, _, devices, payload) = receiver.expect_deliver();
        assert_eq!(
            message_id, id,
            "messages arrive in the order they were sent"
        );
        assert_eq!(devices, ["phone"]);
        assert_eq!(payload, format!("message {i}").as_bytes());
    }
    assert!(
        sender.ping(7).is_empty(),
        "no verdict for routed messages without ACK"
    );
    assert!(
        receiver.ping(8).is_empty(),
        "each message delivered exactly once"
    );
    let metrics = router.metrics();
    assert!(metrics.batches_sent > before, "messages crossed cores");
    assert_eq!(metrics.delivers_out, count as u64 + 1);
}

#[test]
fn cross_shard_routing_with_two_shards() {
    cross_shard_routing(2);
}

#[test]
fn cross_shard_routing_with_four_shards() {
    cross_shard_routing(4);
}

#[test]
fn shard_direct_nodes_route_without_a_cross_core_hop() {
    let shard_count = 4;
    let router = start_router(shard_count);
    let addr = router.local_addr();
    // Each node opens one connection per shard, as shard-direct nodes do.
    let mut sender: Vec<Node> = (0..shard_count as u16)
        .map(|shard| Node::connect_to_shard(addr, "direct-a", shard))
        .collect();
    let mut receiver: Vec<Node> = (0..shard_count as u16)
        .map(|shard| Node::connect_to_shard(addr, "direct-b", shard))
        .collect();
    for (shard, node) in receiver.iter().enumerate() {
        assert_eq!(node.shard as usize, shard);
    }
    let users: Vec<String> = (0..shard_count)
        .map(|shard| user_on_shard("jill", shard, shard_count))
        .collect();
    for (shard, user) in users.iter().enumerate() {
        receiver[shard].open_confirmed(user, "phone");
    }
    let before = router.metrics();

    for (shard, user) in users.iter().enumerate() {
        let id = sender[shard].route_to(user, None, b"direct", ROUTE_FLAG_ACK);
        assert_eq!(sender[shard].expect_status(id).0, fb::Verdict::Routed);
        // Delivered on the receiver's connection of the same shard.
        assert_eq!(receiver[shard].expect_deliver().0, id);
    }
    let after = router.metrics();
    assert_eq!(
        after.batches_sent, before.batches_sent,
        "no cross-core hand-off at all"
    );
    assert_eq!(
        after.routes_routed - before.routes_routed,
        shard_count as u64
    );
}

#[test]
fn a_plain_node_with_one_connection_reaches_users_of_every_shard() {
    let shard_count = 4;
    let router = start_router(shard_count);
    let addr = router.local_addr();
    let mut plain = Node::connect(addr, "plain");
    let mut other = Node::connect(addr, "other");
    for shard in 0..shard_count {
        let user = user_on_shard("kim", shard, shard_count);
        other.open_confirmed(&user, "phone");
        let id = plain.route_to(&user, None, b"hello", ROUTE_FLAG_ACK);
        assert_eq!(plain.expect_status(id).0, fb::Verdict::Routed);
        assert_eq!(other.expect_deliver().0, id);
    }
}

#[test]
fn rejected_route_gets_a_verdict_and_keeps_the_connection() {
    let router = start_router(1);
    let mut node = Node::connect(router.local_addr(), "node-1");
    let too_long = "u".repeat(300);
    let id = node.route_to(&too_long, None, b"x", 0);
    assert_eq!(
        node.expect_status(id),
        (fb::Verdict::Rejected, fb::Reason::InvalidRecipient)
    );
    let id = node.route_to("", None, b"x", 0);
    assert_eq!(
        node.expect_status(id),
        (fb::Verdict::Rejected, fb::Reason::InvalidRecipient)
    );
    assert!(node.ping(3).is_empty());
}

/// A SessionClose naming an older open (by `seq`) does not remove the
/// session the node opened again since, even when it comes in on another
/// connection and is applied after the newer open.
#[test]
fn a_late_session_close_never_removes_a_newer_open() {
    let router = start_router(2);
    let addr = router.local_addr();
    let user = user_on_shard("ruth", 0, 2);
    // One node, a connection on each shard (as after a reconnect).
    let mut first = Node::connect_to_shard(addr, "gateway", 0);
    let mut second = Node::connect_to_shard(addr, "gateway", 1);
    let open = first
        .encoder
        .session_open_seq(&user, "phone", fb::Platform::Mobile, 1)
        .to_vec();
    first.wire.send(&open);
    first.confirm_open(&user, "phone");
    let reopen = second
        .encoder
        .session_open_seq(&user, "phone", fb::Platform::Mobile, 2)
        .to_vec();
    second.wire.send(&reopen);
    // Confirm the reopen: its verdict comes back on `second`; the copy goes
    // to the node's connection on the owner's shard, `first`.
    let id = second.route_to(&user, Some("phone"), b"sync", ROUTE_FLAG_ACK);
    assert_eq!(
        second.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    assert_eq!(first.expect_deliver().0, id);
    // The close of the first open arrives late.
    let late = first.encoder.session_close_seq(&user, "phone", 1).to_vec();
    first.wire.send(&late);
    let mut sender = Node::connect(addr, "sender");
    // Order the check after the close: the close and this probe travel
    // the same connection to the same owner shard.
    let probe = first.route_to(&user, None, b"after the late close", ROUTE_FLAG_ACK);
    let mut verdict = None;
    let mut delivered = false;
    while verdict.is_none() || !delivered {
        match first.recv() {
            Frame::Status {
                message_id,
                verdict: got,
                ..
            } if message_id == probe => verdict = Some(got),
            Frame::Deliver { message_id, .. } if message_id == probe => delivered = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        verdict,
        Some(fb::Verdict::Routed),
        "the newer session survived"
    );
    assert_eq!(router.metrics().session_closes_stale, 1);
    // Closing with the current seq removes it.
    let close = second.encoder.session_close_seq(&user, "phone", 2).to_vec();
    second.wire.send(&close);
    route_until_offline(&mut sender, &user);
}

/// Right after a start, "no session" may only mean the nodes have not
/// resynced yet: for --warmup-ms the verdict is Unknown, not Offline.
#[test]
fn during_the_warm_up_no_session_is_unknown_not_offline() {
    let router = start_router_with(1, |args| args.warmup_ms = Some(600_000));
    let mut wire = Wire::connect(router.local_addr());
    wire.send(&hello_frame("early", 1, None));
    match wire.recv() {
        Some(Frame::Welcome { warmup_ms, .. }) => {
            assert!(
                (590_000..=600_000).contains(&warmup_ms),
                "Welcome tells the warm-up left: {warmup_ms}"
            );
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    drop(wire);
    let mut node = Node::connect(router.local_addr(), "early-2");
    let id = node.route_to("nobody-yet", None, b"?", 0);
    assert_eq!(
        node.expect_status(id),
        (fb::Verdict::Unknown, fb::Reason::NoSession)
    );
}

/// After the warm-up, Welcome says it is over.
#[test]
fn welcome_says_when_the_warm_up_is_over() {
    let router = start_router_with(1, |args| args.warmup_ms = Some(0));
    let mut wire = Wire::connect(router.local_addr());
    wire.send(&hello_frame("late", 1, None));
    match wire.recv() {
        Some(Frame::Welcome { warmup_ms, .. }) => assert_eq!(warmup_ms, 0),
        other => panic!("expected Welcome, got {other:?}"),
    }
}
