//! Cluster semantics over real TCP: where users are (Locate), and login
//! policies.

mod common;

use common::*;
use imrouter::table::LoginPolicy;
use imrouter::wire::fb;

fn session(node: &str, device: &str, platform: fb::Platform) -> (String, String, fb::Platform) {
    (node.to_string(), device.to_string(), platform)
}

/// Locate answers with every session of the user, on every node, whichever
/// shard owns the user and whichever shard the asking connection is on.
#[test]
fn locate_lists_every_session_of_a_user_across_nodes_and_shards() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut east = Node::connect(addr, "east");
    let mut west = Node::connect(addr, "west");
    let mut asking = Node::connect(addr, "asking");
    for shard in 0..2 {
        let user = user_on_shard("mona", shard, 2);
        east.open_as(&user, "phone", fb::Platform::Mobile);
        west.open_as(&user, "desktop", fb::Platform::Desktop);
        east.confirm_open(&user, "phone");
        west.confirm_open(&user, "desktop");
        assert_eq!(
            asking.locate(&user),
            [
                session("east", "phone", fb::Platform::Mobile),
                session("west", "desktop", fb::Platform::Desktop),
            ],
            "user {user} on shard {shard}"
        );
        assert_eq!(asking.locate(&format!("{user}-offline")), []);
    }
}

/// A node that leaves is not listed any more: Locate never reports a ghost
/// session.
#[test]
fn locate_forgets_a_node_that_left() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut staying = Node::connect(addr, "staying");
    let mut leaving = Node::connect(addr, "leaving");
    staying.open_confirmed("nina", "phone");
    leaving.open_confirmed("nina", "tablet");
    assert_eq!(staying.locate("nina").len(), 2);
    let before_close = leaving.goodbye("bye");
    assert!(before_close.is_empty(), "{before_close:?}");
    // The router notices the departure when the socket closes, which this
    // test cannot observe: ask until the answer changes (no sleeping).
    for _ in 0..100_000 {
        let sessions = staying.locate("nina");
        if sessions.len() == 1 {
            assert_eq!(
                sessions,
                [session("staying", "phone", fb::Platform::Mobile)]
            );
            return;
        }
        assert_eq!(sessions.len(), 2);
    }
    panic!("the departed node's session stayed listed");
}

/// A Locate with an empty user id is refused like any invalid field.
#[test]
fn locate_with_an_empty_user_is_refused() {
    let router = start_router(1);
    let mut node = Node::connect(router.local_addr(), "bad");
    let frame = node.encoder.locate(1, "").to_vec();
    node.wire.send(&frame);
    let (code, _) = node.wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::InvalidField);
}

fn router_with_policy(policy: LoginPolicy) -> imrouter::RunningRouter {
    start_router_with(2, |args| args.login_policy = policy)
}

fn expect_kick(node: &mut Node) -> (String, String, fb::KickReason) {
    match node.recv() {
        Frame::Kick {
            user,
            device,
            reason,
        } => (user, device, reason),
        other => panic!("expected a Kick, got {other:?}"),
    }
}

/// same-platform-kick: a second mobile session replaces the first (its node
/// gets a Kick), a desktop session of the same user stays.
#[test]
fn same_platform_kick_replaces_the_session_of_the_same_platform() {
    let router = router_with_policy(LoginPolicy::SamePlatformKick);
    let addr = router.local_addr();
    let mut first = Node::connect(addr, "first");
    let mut second = Node::connect(addr, "second");
    first.open_as("olga", "phone-a", fb::Platform::Mobile);
    first.open_as("olga", "laptop", fb::Platform::Desktop);
    first.confirm_open("olga", "laptop");
    second.open_as("olga", "phone-b", fb::Platform::Mobile);
    assert_eq!(
        expect_kick(&mut first),
        (
            "olga".to_string(),
            "phone-a".to_string(),
            fb::KickReason::SamePlatformElsewhere
        )
    );
    assert_eq!(
        second.locate("olga"),
        [
            session("first", "laptop", fb::Platform::Desktop),
            session("second", "phone-b", fb::Platform::Mobile),
        ]
    );
    assert_eq!(router.metrics().sessions_evicted, 1);
}

/// single-session: a new session anywhere replaces all the others, on
/// every node, each loser getting a Kick.
#[test]
fn single_session_keeps_only_the_newest_session() {
    let router = router_with_policy(LoginPolicy::SingleSession);
    let addr = router.local_addr();
    let mut first = Node::connect(addr, "first");
    let mut second = Node::connect(addr, "second");
    first.open_as("pia", "phone", fb::Platform::Mobile);
    first.confirm_open("pia", "phone");
    second.open_as("pia", "web", fb::Platform::Web);
    assert_eq!(
        expect_kick(&mut first),
        (
            "pia".to_string(),
            "phone".to_string(),
            fb::KickReason::SingleSession
        )
    );
    assert_eq!(
        first.locate("pia"),
        [session("second", "web", fb::Platform::Web)]
    );
}

/// allow-all: the same device id through two nodes is two sessions, both
/// receive, and nobody is kicked.
#[test]
fn allow_all_delivers_to_the_same_device_on_two_nodes() {
    let router = router_with_policy(LoginPolicy::AllowAll);
    let addr = router.local_addr();
    let mut first = Node::connect(addr, "first");
    let mut second = Node::connect(addr, "second");
    let mut sender = Node::connect(addr, "sender");
    first.open_confirmed("quinn", "phone");
    second.open("quinn", "phone");
    // Confirm second's open with its own probe; the probe reaches both.
    let probe = second.route_to(
        "quinn",
        Some("phone"),
        b"probe",
        imrouter::wire::ROUTE_FLAG_ACK,
    );
    let mut seen = 0;
    while seen < 2 {
        match second.recv() {
            Frame::Deliver { message_id, .. } if message_id == probe => seen += 1,
            Frame::Status { message_id, .. } if message_id == probe => seen += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(first.expect_deliver().0, probe);

    let id = sender.route_to("quinn", None, b"to both", imrouter::wire::ROUTE_FLAG_ACK);
    assert_eq!(first.expect_deliver().0, id);
    assert_eq!(second.expect_deliver().0, id);
    assert_eq!(
        sender.expect_status(id),
        (fb::Verdict::Routed, fb::Reason::None)
    );
    assert!(first.ping(1).is_empty(), "no Kick");
    assert_eq!(router.metrics().kicks, 0);
}

fn expect_broadcast(node: &mut Node) -> (String, Vec<u8>) {
    match node.recv() {
        Frame::Broadcast { from_node, payload } => (from_node, payload),
        other => panic!("expected a Broadcast, got {other:?}"),
    }
}

/// A Broadcast reaches every other node exactly once (a shard-direct node
/// with a connection per shard included), and not its sender.
#[test]
fn broadcast_reaches_every_other_node_exactly_once() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut sender = Node::connect(addr, "sender");
    // One connection, served by shard 1.
    let mut on_one = Node::connect_to_shard(addr, "on-one", 1);
    // A connection on each shard.
    let mut direct0 = Node::connect_to_shard(addr, "direct", 0);
    let mut direct1 = Node::connect_to_shard(addr, "direct", 1);

    for payload in [&b"flush caches"[..], b"reload config"] {
        let frame = sender.encoder.broadcast("", payload).to_vec();
        sender.wire.send(&frame);
    }
    for node in [&mut on_one, &mut direct0] {
        assert_eq!(
            expect_broadcast(node),
            ("sender".to_string(), b"flush caches".to_vec())
        );
        assert_eq!(
            expect_broadcast(node),
            ("sender".to_string(), b"reload config".to_vec())
        );
    }
    // Shard 1 wrote both copies for "on-one", so a copy it wrote for the
    // direct node's shard-1 connection would already be queued before this
    // Pong; there is none. Nor does the sender get its own.
    assert!(direct1.ping(1).is_empty());
    assert!(sender.ping(2).is_empty());
    assert_eq!(router.metrics().broadcast_copies_out, 4);
}

use fb::{LeftReason, NodeEventKind};

fn event(
    kind: NodeEventKind,
    node: &str,
    reason: LeftReason,
    senior: &str,
) -> (NodeEventKind, String, LeftReason, String) {
    (kind, node.to_string(), reason, senior.to_string())
}

/// Welcome lists the live nodes and the senior (the longest connected);
/// the nodes already there hear that a new one joined.
#[test]
fn welcome_lists_the_live_nodes_and_others_hear_of_a_join() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut alpha = Node::connect(addr, "alpha");
    assert_eq!(alpha.welcome_nodes, ["alpha"]);
    assert_eq!(alpha.welcome_senior, "alpha");
    let beta = Node::connect(addr, "beta");
    assert_eq!(beta.welcome_nodes, ["alpha", "beta"]);
    assert_eq!(beta.welcome_senior, "alpha");
    assert_eq!(
        alpha.next_event(),
        event(NodeEventKind::Joined, "beta", LeftReason::Closed, "alpha")
    );
    // A second connection of the same node (shard-direct) is not a join.
    let _beta_again = Node::connect_to_shard(addr, "beta", 1 - beta.shard);
    assert!(alpha.ping(1).is_empty());
    assert!(alpha.events.is_empty(), "{:?}", alpha.events);
}

/// When the senior leaves, every node hears it left (with the reason) and
/// who the senior is now.
#[test]
fn the_senior_leaving_makes_the_next_oldest_senior() {
    let router = start_router(2);
    let addr = router.local_addr();
    let alpha = Node::connect(addr, "alpha");
    let mut beta = Node::connect(addr, "beta");
    let mut gamma = Node::connect(addr, "gamma");
    assert_eq!(
        beta.next_event(),
        event(NodeEventKind::Joined, "gamma", LeftReason::Closed, "alpha")
    );
    alpha.goodbye("upgrade");
    for node in [&mut beta, &mut gamma] {
        assert_eq!(
            node.next_event(),
            event(NodeEventKind::Left, "alpha", LeftReason::Goodbye, "beta")
        );
        assert_eq!(
            node.next_event(),
            event(
                NodeEventKind::SeniorChanged,
                "beta",
                LeftReason::Closed,
                "beta"
            )
        );
    }
}

/// A node that goes silent leaves with reason Timeout.
#[test]
fn a_timed_out_node_leaves_with_reason_timeout() {
    let router = start_router_with(1, |args| {
        args.heartbeat_ms = 20;
        args.node_timeout_ms = Some(60);
    });
    let addr = router.local_addr();
    let mut watcher = Node::connect(addr, "watcher");
    let _silent = Node::connect(addr, "silent");
    assert_eq!(
        watcher.next_event(),
        event(
            NodeEventKind::Joined,
            "silent",
            LeftReason::Closed,
            "watcher"
        )
    );
    // `silent` never reads nor answers its Pings; `watcher` answers its own
    // while it waits.
    assert_eq!(
        watcher.next_event(),
        event(
            NodeEventKind::Left,
            "silent",
            LeftReason::Timeout,
            "watcher"
        )
    );
}

/// A new process of a node (new incarnation) replaces the old one: the
/// old one left (Replaced), the new one joined, and it is now the youngest
/// node, so the senior moves on.
#[test]
fn a_new_incarnation_is_a_leave_and_a_join() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut old = Node::connect_with(addr, "alpha", 1, None);
    let mut beta = Node::connect(addr, "beta");
    let _new = Node::connect_with(addr, "alpha", 2, None);
    assert_eq!(
        beta.next_event(),
        event(NodeEventKind::Left, "alpha", LeftReason::Replaced, "beta")
    );
    assert_eq!(
        beta.next_event(),
        event(NodeEventKind::Joined, "alpha", LeftReason::Closed, "beta")
    );
    assert_eq!(
        beta.next_event(),
        event(
            NodeEventKind::SeniorChanged,
            "beta",
            LeftReason::Closed,
            "beta"
        )
    );
    let (code, _) = old.wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::Replaced);
}

/// Carbons: with the CARBON flag, the sender's other devices get a copy
/// (marked CARBON, addressed to the original recipient), the sending
/// device does not, and the verdict is about the recipient.
#[test]
fn carbons_reach_the_senders_other_devices_only() {
    use imrouter::wire::{ROUTE_FLAG_ACK, ROUTE_FLAG_CARBON};
    let router = start_router(2);
    let addr = router.local_addr();
    let mut home = Node::connect(addr, "home"); // alice's phone and tablet
    let mut away = Node::connect(addr, "away"); // alice's laptop
    let mut peer = Node::connect(addr, "peer"); // bob
    home.open_confirmed("alice", "phone");
    home.open_confirmed("alice", "tablet");
    away.open_confirmed("alice", "laptop");
    peer.open_confirmed("bob", "phone");

    let frame = home
        .encoder
        .route(&imrouter::wire::RouteFrame {
            message_id: 900,
            from_user: "alice",
            from_device: "phone",
            to_user: "bob",
            to_device: None,
            flags: ROUTE_FLAG_ACK | ROUTE_FLAG_CARBON,
            payload: b"hi bob",
        })
        .to_vec();
    home.wire.send(&frame);

    let carbon = |node: &mut Node| match node.recv() {
        Frame::Deliver {
            message_id,
            to_user,
            devices,
            flags,
            payload,
            ..
        } => (message_id, to_user, devices, flags, payload),
        other => panic!("expected a carbon Deliver, got {other:?}"),
    };
    assert_eq!(
        carbon(&mut away),
        (
            900,
            "bob".into(),
            vec!["laptop".into()],
            ROUTE_FLAG_CARBON,
            b"hi bob".to_vec()
        )
    );
    assert_eq!(peer.expect_deliver().0, 900);
    // home gets the verdict and the copy for the tablet, in either order.
    let mut got_status = false;
    let mut got_carbon = false;
    while !(got_status && got_carbon) {
        match home.recv() {
            Frame::Status {
                message_id: 900,
                verdict,
                ..
            } => {
                assert_eq!(verdict, fb::Verdict::Routed);
                got_status = true;
            }
            Frame::Deliver {
                message_id: 900,
                devices,
                flags,
                ..
            } => {
                assert_eq!(
                    (devices, flags),
                    (vec!["tablet".to_string()], ROUTE_FLAG_CARBON)
                );
                got_carbon = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(home.ping(1).is_empty(), "no copy for the sending device");
    assert_eq!(router.metrics().carbons_out, 2);

    // Without from_user, CARBON is refused.
    let frame = home
        .encoder
        .route(&imrouter::wire::RouteFrame {
            message_id: 901,
            from_user: "",
            from_device: "",
            to_user: "bob",
            to_device: None,
            flags: ROUTE_FLAG_CARBON,
            payload: b"?",
        })
        .to_vec();
    home.wire.send(&frame);
    assert_eq!(
        home.expect_status(901),
        (fb::Verdict::Rejected, fb::Reason::InvalidSender)
    );
}

fn send_fanout(node: &mut Node, message_id: u64, to_users: &[&str], payload: &[u8]) {
    let frame = node
        .encoder
        .fanout(&imrouter::wire::FanoutFrame {
            message_id,
            from_user: "sender",
            from_device: "d",
            to_users,
            flags: 0,
            payload,
        })
        .to_vec();
    node.wire.send(&frame);
}

type Recipients = Vec<(String, Vec<String>)>;

fn fanout_deliver(node: &mut Node) -> (u64, Recipients, Vec<u8>) {
    match node.recv() {
        Frame::FanoutDeliver {
            message_id,
            recipients,
            payload,
        } => (message_id, recipients, payload),
        other => panic!("expected a Fanout Deliver, got {other:?}"),
    }
}

fn fanout_status(node: &mut Node) -> (u64, fb::Verdict, fb::Reason, Vec<String>) {
    match node.recv() {
        Frame::FanoutStatus {
            message_id,
            verdict,
            reason,
            offline,
        } => (message_id, verdict, reason, offline),
        other => panic!("expected a Fanout Status, got {other:?}"),
    }
}

fn recipient(user: &str, devices: &[&str]) -> (String, Vec<String>) {
    (
        user.to_string(),
        devices.iter().map(|d| d.to_string()).collect(),
    )
}

/// A Fanout gives each destination node exactly one Deliver listing its
/// recipients (with their devices there), and the sender one Status
/// listing the recipients with no session.
#[test]
fn fanout_sends_one_deliver_per_node_and_lists_the_offline() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut east = Node::connect(addr, "east");
    let mut west = Node::connect(addr, "west");
    let mut sender = Node::connect(addr, "sender");
    east.open_confirmed("ann", "phone");
    east.open_confirmed("bea", "phone");
    west.open_confirmed("cal", "phone");
    west.open_confirmed("cal", "web");
    west.open_confirmed("ann", "laptop"); // ann is on both nodes
    send_fanout(
        &mut sender,
        77,
        &["ann", "bea", "cal", "ghost-1", "ghost-2"],
        b"group hello",
    );
    assert_eq!(
        fanout_deliver(&mut east),
        (
            77,
            vec![recipient("ann", &["phone"]), recipient("bea", &["phone"])],
            b"group hello".to_vec()
        )
    );
    assert_eq!(
        fanout_deliver(&mut west),
        (
            77,
            vec![
                recipient("ann", &["laptop"]),
                recipient("cal", &["phone", "web"])
            ],
            b"group hello".to_vec()
        )
    );
    assert_eq!(
        fanout_status(&mut sender),
        (
            77,
            fb::Verdict::Routed,
            fb::Reason::Partial,
            vec!["ghost-1".to_string(), "ghost-2".to_string()]
        )
    );
    // Exactly two Delivers were made, one per node.
    assert_eq!(router.metrics().fanout_delivers_out, 2);

    // Nobody online: Offline, everyone listed.
    send_fanout(&mut sender, 78, &["ghost-3"], b"?");
    assert_eq!(
        fanout_status(&mut sender),
        (
            78,
            fb::Verdict::Offline,
            fb::Reason::NoSession,
            vec!["ghost-3".to_string()]
        )
    );
}

/// More recipients than --fanout-max are refused with a verdict.
#[test]
fn a_fanout_over_the_limit_is_rejected() {
    let router = start_router_with(1, |args| args.fanout_max = 3);
    let mut sender = Node::connect(router.local_addr(), "sender");
    send_fanout(&mut sender, 5, &["a", "b", "c", "d"], b"x");
    assert_eq!(
        sender.expect_status(5),
        (fb::Verdict::Rejected, fb::Reason::TooManyRecipients)
    );
    send_fanout(&mut sender, 6, &["a", ""], b"x");
    assert_eq!(
        sender.expect_status(6),
        (fb::Verdict::Rejected, fb::Reason::InvalidRecipient)
    );
}

/// A large group: 20,000 recipients on two nodes still make one Deliver per
/// node (the resolution is done in slices, yielding between them).
#[test]
fn a_large_fanout_still_makes_one_deliver_per_node() {
    let router = start_router_with(2, |args| {
        args.max_frame_bytes = 1 << 20;
        args.out_buffer_bytes = 8 << 20;
    });
    let addr = router.local_addr();
    let mut nodes = [Node::connect(addr, "left"), Node::connect(addr, "right")];
    let mut sender = Node::connect(addr, "sender");
    let users: Vec<String> = (0..20_000).map(|i| format!("member-{i:05}")).collect();
    for (i, user) in users.iter().enumerate() {
        nodes[i % 2].open(user, "phone");
    }
    // Frames from one connection to one shard are applied in order: one
    // confirmed open per (node, shard) confirms them all.
    for (n, node) in nodes.iter_mut().enumerate() {
        for shard in 0..2 {
            let user = users
                .iter()
                .enumerate()
                .find(|(i, u)| {
                    i % 2 == n && imrouter::placement::shard_for_user(u.as_bytes(), 2) == shard
                })
                .map(|(_, u)| u.clone())
                .unwrap();
            node.confirm_open(&user, "phone");
        }
    }
    let to: Vec<&str> = users.iter().map(String::as_str).collect();
    let index: std::collections::HashMap<&str, usize> =
        to.iter().enumerate().map(|(i, u)| (*u, i)).collect();
    send_fanout(&mut sender, 1, &to, b"big group");
    for (n, node) in nodes.iter_mut().enumerate() {
        let (id, recipients, _) = fanout_deliver(node);
        assert_eq!(id, 1);
        assert_eq!(recipients.len(), 10_000);
        assert!(recipients
            .iter()
            .all(|(user, devices)| index[user.as_str()] % 2 == n
                && devices == &["phone".to_string()]));
    }
    assert_eq!(
        fanout_status(&mut sender),
        (1, fb::Verdict::Routed, fb::Reason::None, vec![])
    );
    assert_eq!(router.metrics().fanout_delivers_out, 2);
}

fn publish(node: &mut Node, topic: &str, payload: &[u8]) {
    let frame = node
        .encoder
        .publish(&imrouter::wire::PublishFrame {
            topic,
            message_id: 1,
            from_user: "u",
            from_device: "d",
            from_node: "",
            flags: 0,
            payload,
        })
        .to_vec();
    node.wire.send(&frame);
}

fn expect_publish(node: &mut Node) -> (String, String, Vec<u8>) {
    match node.recv() {
        Frame::Publish {
            topic,
            from_node,
            payload,
        } => (topic, from_node, payload),
        other => panic!("expected a Publish, got {other:?}"),
    }
}

/// Topics: a Publish reaches each subscribed node exactly once (whatever
/// the number of times it subscribed), not the publisher, not the others;
/// Unsubscribe ends it.
#[test]
fn a_publish_reaches_each_subscribed_node_once() {
    let router = start_router(2);
    let addr = router.local_addr();
    let topic = "room-42";
    let owner = imrouter::placement::shard_for_user(topic.as_bytes(), 2);
    let mut nodes: Vec<Node> = ["one", "two", "three", "publisher"]
        .iter()
        .map(|name| Node::connect(addr, name))
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == 2 {
            continue; // "three" has no member of the room.
        }
        for _ in 0..2 {
            let frame = node.encoder.subscribe(topic, 0).to_vec();
            node.wire.send(&frame);
        }
        node.sync_shard(owner, 2);
    }
    publish(&mut nodes[3], topic, b"hello room");
    for i in [0, 1] {
        assert_eq!(
            expect_publish(&mut nodes[i]),
            (
                topic.to_string(),
                "publisher".to_string(),
                b"hello room".to_vec()
            )
        );
    }
    nodes[3].sync_shard(owner, 2);
    assert_eq!(router.metrics().publish_copies_out, 2);

    let frame = nodes[1].encoder.unsubscribe(topic).to_vec();
    nodes[1].wire.send(&frame);
    nodes[1].sync_shard(owner, 2);
    publish(&mut nodes[3], topic, b"again");
    assert_eq!(expect_publish(&mut nodes[0]).2, b"again".to_vec());
    nodes[3].sync_shard(owner, 2);
    assert_eq!(router.metrics().publish_copies_out, 3);
    for node in &mut nodes {
        assert!(node.ping(9).is_empty(), "{}: an extra frame", node.name);
    }
}

/// A Subscribe to a new topic when the table is full gets a Rejected
/// Status with the request id; existing topics still work.
#[test]
fn a_subscribe_beyond_max_topics_is_rejected() {
    let router = start_router_with(1, |args| args.max_topics = 1);
    let mut node = Node::connect(router.local_addr(), "n");
    let frame = node.encoder.subscribe("first", 1).to_vec();
    node.wire.send(&frame);
    let frame = node.encoder.subscribe("second", 2).to_vec();
    node.wire.send(&frame);
    assert_eq!(
        node.expect_status(2),
        (fb::Verdict::Rejected, fb::Reason::TopicsFull)
    );
    assert_eq!(router.metrics().subscribes_refused, 1);
}

/// Resync: after a SessionSync snapshot (in batches) is acknowledged, the
/// node's sessions are exactly the snapshot's, in every shard.
#[test]
fn a_session_sync_makes_the_nodes_sessions_exactly_the_snapshot() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut node = Node::connect(addr, "gateway");
    let mut sender = Node::connect(addr, "sender");
    let users: Vec<String> = (0..8).map(|i| format!("sync-{i}")).collect();
    for user in &users[..4] {
        node.open_confirmed(user, "phone");
    }
    let m = fb::Platform::Mobile;
    let w = fb::Platform::Web;
    let first = node
        .encoder
        .session_sync(
            7,
            &[(&users[1], "phone", m, 0), (&users[2], "phone", m, 0)],
            false,
        )
        .to_vec();
    node.wire.send(&first);
    // A login while the snapshot is on its way counts as listed.
    node.open(&users[3], "tablet");
    let second = node
        .encoder
        .session_sync(
            7,
            &[(&users[4], "web", w, 0), (&users[5], "web", w, 0)],
            true,
        )
        .to_vec();
    node.wire.send(&second);
    match node.recv() {
        Frame::SessionSyncAck {
            generation,
            added,
            removed,
        } => assert_eq!((generation, added, removed), (7, 2, 2)),
        other => panic!("expected SessionSyncAck, got {other:?}"),
    }
    // Not in the snapshot: users 0 and 3/phone are gone.
    let id = sender.route_to(&users[0], None, b"?", imrouter::wire::ROUTE_FLAG_ACK);
    assert_eq!(
        sender.expect_status(id),
        (fb::Verdict::Offline, fb::Reason::NoSession)
    );
    assert_eq!(
        sender.locate(&users[3]),
        [session("gateway", "tablet", fb::Platform::Mobile)]
    );
    for user in &users[1..3] {
        assert_eq!(sender.locate(user), [session("gateway", "phone", m)]);
    }
    for user in &users[4..6] {
        assert_eq!(sender.locate(user), [session("gateway", "web", w)]);
    }
    assert_eq!(router.metrics().sessions, 5);
}

/// A snapshot with vectors of different lengths is refused.
#[test]
fn a_malformed_session_sync_is_refused() {
    let router = start_router(1);
    let mut node = Node::connect(router.local_addr(), "bad");
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let u = builder.create_string("u");
    let users = Some(builder.create_vector(&[u]));
    let devices = Some(builder.create_vector::<flatbuffers::WIPOffset<&str>>(&[]));
    let sync = fb::SessionSync::create(
        &mut builder,
        &fb::SessionSyncArgs {
            generation: 1,
            users,
            devices,
            last: true,
            ..Default::default()
        },
    );
    let envelope = fb::Envelope::create(
        &mut builder,
        &fb::EnvelopeArgs {
            body_type: fb::Body::SessionSync,
            body: Some(sync.as_union_value()),
        },
    );
    builder.finish_size_prefixed(envelope, Some("IMR1"));
    node.wire.send(builder.finished_data());
    let (code, _) = node.wire.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::InvalidField);
}

/// A snapshot whose sessions all live on one shard still keeps a session
/// the node opened on its connection while the snapshot was in flight,
/// on another shard; and empty platform/seq vectors mean defaults.
#[test]
fn an_open_during_a_snapshot_survives_on_a_shard_the_snapshot_does_not_touch() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut node = Node::connect(addr, "gateway");
    let mut asker = Node::connect(addr, "asker");
    let on0 = user_on_shard("snap", 0, 2);
    let on1 = user_on_shard("late", 1, 2);
    // Batch 1, built by hand with empty `platforms` and `seqs` vectors.
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let u = builder.create_string(&on0);
    let d = builder.create_string("phone");
    let users = Some(builder.create_vector(&[u]));
    let devices = Some(builder.create_vector(&[d]));
    let platforms = Some(builder.create_vector::<u8>(&[]));
    let seqs = Some(builder.create_vector::<u64>(&[]));
    let sync = fb::SessionSync::create(
        &mut builder,
        &fb::SessionSyncArgs {
            generation: 3,
            users,
            devices,
            platforms,
            seqs,
            last: false,
            ..Default::default()
        },
    );
    let envelope = fb::Envelope::create(
        &mut builder,
        &fb::EnvelopeArgs {
            body_type: fb::Body::SessionSync,
            body: Some(sync.as_union_value()),
        },
    );
    builder.finish_size_prefixed(envelope, Some("IMR1"));
    node.wire.send(builder.finished_data());
    // A login while the snapshot is in flight, on a shard it does not touch.
    node.open(&on1, "web");
    let last = node.encoder.session_sync(3, &[], true).to_vec();
    node.wire.send(&last);
    match node.recv() {
        Frame::SessionSyncAck {
            generation,
            added,
            removed,
        } => assert_eq!((generation, added, removed), (3, 1, 0)),
        other => panic!("expected SessionSyncAck, got {other:?}"),
    }
    assert_eq!(
        asker.locate(&on0),
        [session("gateway", "phone", fb::Platform::Other)]
    );
    assert_eq!(
        asker.locate(&on1),
        [session("gateway", "web", fb::Platform::Mobile)]
    );
}

/// While a shard-direct node's lowest-shard connection is closing (the
/// router lingers until the node closes its side), frames sent to every
/// node once go to its other, live connection instead of being lost.
#[test]
fn a_broadcast_reaches_a_node_whose_lowest_connection_is_closing() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut sender = Node::connect(addr, "sender");
    let mut direct0 = Node::connect_to_shard(addr, "direct", 0);
    let mut direct1 = Node::connect_to_shard(addr, "direct", 1);
    let goodbye = direct0.encoder.goodbye("this connection only").to_vec();
    direct0.wire.send(&goodbye);
    // The router flushed and shut its side: the connection is closing, and
    // stays registered while the router waits for ours.
    while direct0.wire.recv().is_some() {}
    let frame = sender.encoder.broadcast("", b"still there?").to_vec();
    sender.wire.send(&frame);
    assert_eq!(
        expect_broadcast(&mut direct1),
        ("sender".to_string(), b"still there?".to_vec())
    );
    drop(direct0);
}

/// A Fanout recipient whose node is going away when its Deliver arrives is
/// reported offline to the sender, not lost: the Status waits for every
/// destination's outcome.
#[test]
fn a_fanout_recipient_on_a_closing_node_is_reported_offline() {
    let router = start_router(2);
    let addr = router.local_addr();
    let mut staying = Node::connect(addr, "staying");
    let mut leaving = Node::connect(addr, "leaving");
    let mut sender = Node::connect(addr, "sender");
    staying.open_confirmed("uma", "phone");
    leaving.open_confirmed("vic", "phone");
    let goodbye = leaving.encoder.goodbye("going").to_vec();
    leaving.wire.send(&goodbye);
    // The router flushed and shut its side; the connection is closing but
    // still registered (its sessions still resolve) while it lingers.
    while leaving.wire.recv().is_some() {}
    send_fanout(&mut sender, 9, &["uma", "vic"], b"to both");
    assert_eq!(fanout_deliver(&mut staying).0, 9);
    assert_eq!(
        fanout_status(&mut sender),
        (
            9,
            fb::Verdict::Routed,
            fb::Reason::Partial,
            vec!["vic".to_string()]
        )
    );
    drop(leaving);
}
