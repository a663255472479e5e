//! Three router processes and a real etcd (Debian's etcd-server, started
//! here on 127.0.0.1 with a temporary data directory): the routers form
//! one service, nodes learn the map from any of them, and a router killed
//! with SIGKILL loses no message: every Route has one outcome, none a
//! false Offline, and each is seen once by the application.
//!
//! Needs the `cluster` feature and the `etcd` binary (scripts/test.sh
//! installs it); skipped with a message when etcd is missing.
#![cfg(feature = "cluster")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imrouter::client::cluster::net::{Node, Received};
use imrouter::client::cluster::ClusterConfig;
use imrouter::client::NodeConfig;
use imrouter::cluster::local::{self, Etcd, RouterOptions, RouterProcess};
use imrouter::wire::{fb, RouteFrame};

/// One cluster at a time: they share the machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn start_router(etcd: &Etcd, cluster: &str, name: &str) -> RouterProcess {
    RouterProcess::start(&RouterOptions {
        binary: env!("CARGO_BIN_EXE_imrouter").into(),
        name: name.to_owned(),
        cluster: cluster.to_owned(),
        etcd: Some(etcd.url.clone()),
        shards: 1,
        lease_ttl_ms: 2000,
        extra: [
            "--rebalance-batch-slots",
            "8192",
            "--rebalance-interval-ms",
            "100",
        ]
        .map(String::from)
        .to_vec(),
        cpus: None,
        netns: None,
        listen: None,
    })
    .expect("the router starts")
}

fn node(name: &str, incarnation: u64, seed: &str) -> Node {
    let mut config = ClusterConfig::new(NodeConfig::new(name, incarnation), vec![seed.to_owned()]);
    config.unknown_retries = 12;
    Node::new(config)
}

/// Steps both nodes until `done`, or panics after `timeout`.
fn run(
    nodes: &mut [&mut Node],
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[&mut Node]) -> bool,
) -> Vec<Vec<Received>> {
    let mut received = vec![Vec::new(); nodes.len()];
    let deadline = Instant::now() + timeout;
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            let (got, outcomes) = node.step();
            received[i].extend(got);
            OUTCOMES.with(|all| {
                all.borrow_mut()
                    .extend(outcomes.into_iter().map(|o| (i, o)))
            });
        }
        if done(nodes) {
            return received;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

thread_local! {
    static OUTCOMES: std::cell::RefCell<Vec<(usize, imrouter::client::Outcome)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn take_outcomes() -> Vec<(usize, imrouter::client::Outcome)> {
    OUTCOMES.with(|all| std::mem::take(&mut *all.borrow_mut()))
}

/// Whether every router of the node's map owns slots (the rebalancing
/// after the three joined is done).
fn balanced(node: &Node, routers: usize) -> bool {
    node.core.map().is_some_and(|map| {
        let per = map.slots_per_router();
        per.len() == routers && per.iter().all(|&n| n > 0) && node.live_links() == routers
    })
}

/// etcd and three routers of cluster `cluster` (None, and a message, when
/// the machine has no etcd), and two nodes seeded with routers `seeds`,
/// once the three routers share the slots.
fn three_routers(
    cluster: &str,
    names: [&str; 3],
    nodes: [(&str, u64, usize); 2],
) -> Option<(Etcd, Vec<RouterProcess>, Node, Node)> {
    let Some(binary) = local::etcd_binary() else {
        eprintln!("skipped: no etcd binary (apt-get install etcd-server)");
        return None;
    };
    let etcd = Etcd::start(binary).expect("etcd starts");
    let routers: Vec<RouterProcess> = names
        .iter()
        .map(|name| start_router(&etcd, cluster, name))
        .collect();
    let [(a, a_incarnation, a_seed), (b, b_incarnation, b_seed)] = nodes;
    let mut holder = node(a, a_incarnation, &routers[a_seed].addr);
    let mut sender = node(b, b_incarnation, &routers[b_seed].addr);
    run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(30),
        "the three routers to share the slots",
        |nodes| nodes.iter().all(|node| balanced(node, 3)),
    );
    Some((etcd, routers, holder, sender))
}

/// Opens a session of each user on `holder`, and lets them arrive.
fn open_all(holder: &mut Node, sender: &mut Node, users: &[String]) {
    for user in users {
        holder.core.open(user, "phone", fb::Platform::Mobile);
    }
    let opened = Instant::now();
    run(
        &mut [holder, sender],
        Duration::from_secs(5),
        "the sessions to arrive",
        |_| opened.elapsed() > Duration::from_millis(500),
    );
}

/// Outcomes by verdict.
fn verdicts(outcomes: &[(usize, imrouter::client::Outcome)]) -> BTreeMap<String, usize> {
    let mut verdicts = BTreeMap::new();
    for (_, outcome) in outcomes {
        *verdicts
            .entry(format!("{:?}", outcome.verdict))
            .or_default() += 1;
    }
    verdicts
}

/// The message ids the application received, each once (a second copy
/// fails the test).
fn delivered_once(received: &[Received]) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    for item in received {
        if let Received::Deliver { message_id, .. } = item {
            assert!(seen.insert(*message_id), "{message_id} seen twice");
        }
    }
    seen
}

fn route_all(sender: &mut Node, users: &[String], first_id: u64) {
    for (i, user) in users.iter().enumerate() {
        let now = sender.now();
        sender
            .core
            .route(
                &RouteFrame {
                    message_id: first_id + i as u64,
                    from_user: "sender",
                    from_device: "phone",
                    to_user: user,
                    to_device: None,
                    flags: 0,
                    payload: b"hello",
                },
                now,
            )
            .expect("room for the Route");
    }
}

#[test]
fn three_routers_lose_nothing_when_one_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_etcd, mut routers, mut holder, mut sender)) = three_routers(
        "kill-test",
        ["r1", "r2", "r3"],
        [("holder", 11, 0), ("sender", 22, 2)],
    ) else {
        return;
    };

    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    for user in &users {
        holder.core.open(user, "phone", fb::Platform::Mobile);
    }
    route_all(&mut sender, &users, 1);
    let received = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(30),
        "the first 300 outcomes",
        |_| OUTCOMES.with(|all| all.borrow().len() >= 300),
    );
    let verdicts_before = verdicts(&take_outcomes());
    assert_eq!(
        verdicts_before.get("Routed"),
        Some(&300),
        "{verdicts_before:?}"
    );
    assert_eq!(delivered_once(&received[0]).len(), 300);

    // SIGKILL the router the sender was told first; route meanwhile.
    let killed_at = Instant::now();
    routers[1].kill();
    route_all(&mut sender, &users, 1001);
    let received = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(60),
        "the 300 outcomes after the kill",
        |_| OUTCOMES.with(|all| all.borrow().len() >= 300),
    );
    let failover = killed_at.elapsed();
    let verdicts_after = verdicts(&take_outcomes());
    assert_eq!(
        verdicts_after.get("Routed"),
        Some(&300),
        "{verdicts_after:?}"
    );
    assert_eq!(
        delivered_once(&received[0]),
        (1001..1301).collect(),
        "every message seen once"
    );
    let resends: u64 = sender.core.stats.resends;
    eprintln!(
        "failover: all 300 outcomes {:.2} s after the kill; {resends} resends, {} duplicates dropped, maps {}",
        failover.as_secs_f64(),
        holder.core.stats.duplicates_dropped,
        sender.core.stats.maps,
    );
    assert!(balanced(&sender, 2), "the survivors own every slot");
}

/// A router stopped with SIGSTOP for longer than its lease, then
/// continued, never delivers from its old table: the others took its
/// slots, the Routes a node had written to its socket meanwhile are
/// answered Unknown (fenced) when it wakes, and every message is still
/// seen once, through the new owners.
#[test]
fn a_router_paused_past_its_lease_never_delivers_from_its_old_table() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_etcd, routers, mut holder, mut sender)) = three_routers(
        "pause-test",
        ["p1", "p2", "p3"],
        [("holder", 33, 0), ("sender", 44, 0)],
    ) else {
        return;
    };
    let paused_id = {
        let map = sender.core.map().expect("a map");
        map.routers()
            .iter()
            .find(|router| router.addr == routers[1].addr)
            .expect("p2 is in the map")
            .id
    };
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    open_all(&mut holder, &mut sender, &users);

    routers[1].signal(libc::SIGSTOP);
    route_all(&mut sender, &users, 1);
    // Past the lease (2 s): the others take p2's slots.
    let paused_for = Instant::now();
    let mut received = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(60),
        "p2's slots to move",
        |nodes| {
            paused_for.elapsed() > Duration::from_millis(3500)
                && nodes.iter().all(|n| {
                    n.core.map().is_some_and(|m| {
                        m.router(paused_id).is_none() || m.slots_of(paused_id).is_empty()
                    })
                })
        },
    );
    routers[1].signal(libc::SIGCONT);
    let continued_at = Instant::now();
    let later = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(60),
        "the 300 outcomes",
        |_| OUTCOMES.with(|all| all.borrow().len() >= 300),
    );
    received[0].extend(later[0].iter().cloned());
    // A little longer: whatever p2 might still send arrives.
    let tail = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(5),
        "p2 to have had time to send",
        |_| continued_at.elapsed() > Duration::from_millis(1500),
    );
    received[0].extend(tail[0].iter().cloned());
    let routed = verdicts(&take_outcomes());
    assert_eq!(routed.get("Routed"), Some(&300), "{routed:?}");
    for item in &received[0] {
        if let Received::Deliver {
            router, message_id, ..
        } = item
        {
            assert_ne!(
                *router,
                Some(paused_id),
                "p2 delivered {message_id} from its old table"
            );
        }
    }
    assert_eq!(delivered_once(&received[0]), (1..301).collect());
}

fn cluster_command(etcd: &Etcd, cluster: &str, args: &[&str]) -> String {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_imrouter"));
    local::cluster_command(binary, &etcd.url, cluster, args).expect("imrouter cluster runs")
}

/// `imrouter cluster drain` moves a router's slots to the others while
/// messages flow (each Routed, seen once), and `imrouter cluster status`
/// shows the routers, the controller and the drained router.
#[test]
fn a_drained_router_hands_its_slots_over_without_loss() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some((etcd, routers, mut holder, mut sender)) = three_routers(
        "drain-test",
        ["d1", "d2", "d3"],
        [("holder", 55, 0), ("sender", 66, 1)],
    ) else {
        return;
    };
    let status = cluster_command(&etcd, "drain-test", &["status"]);
    assert!(
        status.starts_with("cluster drain-test: 3 routers"),
        "{status}"
    );
    assert!(status.contains("controller"), "{status}");
    for name in ["d1", "d2", "d3"] {
        assert!(status.contains(name), "{status}");
    }
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    open_all(&mut holder, &mut sender, &users);
    cluster_command(&etcd, "drain-test", &["drain", "d3"]);
    route_all(&mut sender, &users, 1);
    let drained_id = |node: &Node| {
        node.core.map().and_then(|map| {
            map.routers()
                .iter()
                .find(|router| router.addr == routers[2].addr)
                .map(|router| map.slots_of(router.id).len())
        })
    };
    let received = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(60),
        "d3 to own nothing and every outcome",
        |nodes| {
            OUTCOMES.with(|all| all.borrow().len() >= 300)
                && nodes.iter().all(|node| drained_id(node).unwrap_or(0) == 0)
        },
    );
    let routed = verdicts(&take_outcomes());
    assert_eq!(routed.get("Routed"), Some(&300), "{routed:?}");
    assert_eq!(delivered_once(&received[0]), (1..301).collect());
    let status = cluster_command(&etcd, "drain-test", &["status"]);
    assert!(status.contains("drained"), "{status}");
    eprintln!("{status}");
}

/// The time for nodes to resync the sessions of a dead router: one node
/// holds `IMROUTER_RESYNC_SESSIONS` sessions (default 1,000,000) spread
/// over three routers; one router is killed; 1,000 probes to users of its
/// slots are routed at once. Prints the time from the kill to the new map
/// at the holder, and from the new map to the last probe's outcome (the
/// resync of the dead router's share, about a third, plus retries).
/// A benchmark (BENCHMARKS.md): `cargo test --release --features cluster
/// --test cluster_etcd resync -- --ignored --nocapture`.
#[test]
#[ignore]
fn resync_of_a_dead_routers_sessions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sessions: usize = std::env::var("IMROUTER_RESYNC_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let (_etcd, mut routers, mut holder, mut sender) = three_routers(
        "resync-bench",
        ["s1", "s2", "s3"],
        [("holder", 77, 0), ("sender", 88, 0)],
    )
    .expect("etcd");
    let started = Instant::now();
    let users: Vec<String> = (0..sessions).map(|i| format!("u{i}")).collect();
    for user in &users {
        holder.core.open(user, "phone", fb::Platform::Mobile);
    }
    // Until the routers took them all (their queues drained).
    let idle_since = std::cell::Cell::new(Instant::now());
    run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(600),
        "the sessions to be opened",
        |nodes| {
            let busy = nodes[0]
                .core
                .links()
                .any(|(_, l)| !l.core.transmit().is_empty());
            if busy {
                idle_since.set(Instant::now());
            }
            idle_since.get().elapsed() > Duration::from_secs(2)
        },
    );
    eprintln!(
        "{sessions} sessions opened in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let map = holder.core.map().expect("a map").clone();
    let victim = map
        .routers()
        .iter()
        .find(|router| router.addr == routers[1].addr)
        .expect("s2")
        .id;
    let probes: Vec<String> = users
        .iter()
        .filter(|user| map.owner_id(imrouter::placement::slot_for_user(user.as_bytes())) == victim)
        .take(1000)
        .cloned()
        .collect();
    let epoch = map.epoch();
    let killed = Instant::now();
    routers[1].kill();
    route_all(&mut sender, &probes, 1);
    let remapped = std::cell::Cell::new(None);
    run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(300),
        "the probes' outcomes",
        |nodes| {
            if remapped.get().is_none() && nodes[0].core.map().is_some_and(|m| m.epoch() > epoch) {
                remapped.set(Some(killed.elapsed()));
            }
            OUTCOMES.with(|all| all.borrow().len() >= probes.len())
        },
    );
    let done = killed.elapsed();
    let outcomes = take_outcomes();
    let routed = outcomes
        .iter()
        .filter(|(_, o)| o.verdict == fb::Verdict::Routed)
        .count();
    let remapped = remapped.get().unwrap_or(done);
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, outcome) in &outcomes {
        *verdicts
            .entry(format!("{:?}/{:?}", outcome.verdict, outcome.reason))
            .or_default() += 1;
    }
    eprintln!("verdicts: {verdicts:?}");
    let final_map = holder.core.map().expect("a map");
    for (_, outcome) in outcomes
        .iter()
        .filter(|(_, o)| o.verdict != fb::Verdict::Routed)
        .take(5)
    {
        let user = &probes[outcome.message_id as usize - 1];
        let slot = imrouter::placement::slot_for_user(user.as_bytes());
        eprintln!(
            "{outcome:?}: slot {slot}, owner now {:x}, map epoch {} (was {epoch})",
            final_map.owner_id(slot),
            final_map.epoch()
        );
    }
    eprintln!(
        "resync: {sessions} sessions, {} probes Routed of {}; kill to new map {:.2} s, new map to last probe {:.2} s (total {:.2} s)",
        routed,
        probes.len(),
        remapped.as_secs_f64(),
        (done - remapped).as_secs_f64(),
        done.as_secs_f64()
    );
    assert_eq!(routed, probes.len());
}

/// The NodeEvents a node received, as (kind, node, seq).
fn node_events(received: &[Received]) -> Vec<(fb::NodeEventKind, String, u64)> {
    received
        .iter()
        .filter_map(|item| match item {
            Received::NodeEvent {
                kind, node, seq, ..
            } => Some((*kind, node.clone(), *seq)),
            _ => None,
        })
        .collect()
}

/// The IM nodes' membership is the cluster's, not each router's: a node
/// connected to three routers hears another join once (each router sends
/// the event, numbered alike by etcd's revision, and the node core drops
/// the copies), does not hear it leave when one of its routers dies, and
/// hears it leave once when it goes.
#[test]
fn node_events_are_cluster_wide_and_seen_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(binary) = local::etcd_binary() else {
        eprintln!("skipped: no etcd binary (apt-get install etcd-server)");
        return;
    };
    let etcd = Etcd::start(binary).expect("etcd starts");
    let mut routers: Vec<RouterProcess> = ["m1", "m2", "m3"]
        .iter()
        .map(|name| start_router(&etcd, "members-test", name))
        .collect();
    let mut beta = node("beta", 77, &routers[0].addr);
    let mut seen = run(
        &mut [&mut beta],
        Duration::from_secs(30),
        "beta to see three routers",
        |nodes| balanced(nodes[0], 3),
    )
    .remove(0);
    let mut alpha = node("alpha", 88, &routers[2].addr);
    let more = run(
        &mut [&mut beta, &mut alpha],
        Duration::from_secs(30),
        "beta to hear alpha join",
        |nodes| balanced(nodes[1], 3),
    );
    seen.extend(more[0].iter().cloned());
    // A moment for every router's copy of the event to arrive.
    let settle = Instant::now();
    let more = run(
        &mut [&mut beta, &mut alpha],
        Duration::from_secs(10),
        "the copies",
        |_| settle.elapsed() > Duration::from_secs(1),
    );
    seen.extend(more[0].iter().cloned());
    let joined: Vec<_> = node_events(&seen)
        .into_iter()
        .filter(|(kind, node, _)| *kind == fb::NodeEventKind::Joined && node == "alpha")
        .collect();
    assert_eq!(
        joined.len(),
        1,
        "alpha joined once: {:?}",
        node_events(&seen)
    );

    // A router of theirs dies: both are still attached to the others.
    routers[1].kill();
    let killed = Instant::now();
    let more = run(
        &mut [&mut beta, &mut alpha],
        Duration::from_secs(60),
        "the survivors to own every slot",
        |nodes| killed.elapsed() > Duration::from_secs(4) && balanced(nodes[0], 2),
    );
    seen.extend(more[0].iter().cloned());
    assert!(
        !node_events(&seen)
            .iter()
            .any(|(kind, _, _)| *kind == fb::NodeEventKind::Left),
        "nobody left: {:?}",
        node_events(&seen)
    );

    // alpha goes (its sockets close): it leaves once the routers' grace
    // for its reconnection (5 s) is over.
    drop(alpha);
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = |seen: &[Received]| {
        node_events(seen)
            .into_iter()
            .filter(|(kind, node, _)| *kind == fb::NodeEventKind::Left && node == "alpha")
            .count()
    };
    while left(&seen) == 0 {
        assert!(
            Instant::now() < deadline,
            "alpha never left: {:?}",
            node_events(&seen)
        );
        seen.extend(beta.step().0);
        std::thread::sleep(Duration::from_millis(1));
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        seen.extend(beta.step().0);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(left(&seen), 1, "alpha left once: {:?}", node_events(&seen));
    let seqs: Vec<u64> = node_events(&seen).iter().map(|(_, _, seq)| *seq).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "one increasing sequence: {:?}",
        node_events(&seen)
    );
    eprintln!("beta heard: {:?}", node_events(&seen));
}

/// Three routers on three "hosts" (network namespaces joined by veth
/// pairs; needs root and iproute2, skipped otherwise), partitioned by
/// blackhole routes as between machines: a router cut from etcd past its
/// lease fences itself and its slots move; a router cut from everything
/// (etcd and the nodes) is a dead router to the others. Routes sent
/// meanwhile are each Routed once, none delivered from a fenced table.
#[test]
fn partitions_between_hosts_lose_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(binary) = local::etcd_binary() else {
        eprintln!("skipped: no etcd binary (apt-get install etcd-server)");
        return;
    };
    let hosts = match local::Hosts::create(3) {
        Ok(hosts) => hosts,
        Err(error) => {
            eprintln!("skipped: network namespaces unavailable ({error})");
            return;
        }
    };
    let etcd_ips: Vec<String> = (0..3).map(|i| hosts.etcd_ip(i)).collect();
    let also: Vec<&str> = etcd_ips.iter().map(String::as_str).collect();
    let etcd = Etcd::start_on(binary, &also).expect("etcd starts");
    let routers: Vec<RouterProcess> = (0..3)
        .map(|i| {
            RouterProcess::start(&RouterOptions {
                binary: env!("CARGO_BIN_EXE_imrouter").into(),
                name: format!("h{}", i + 1),
                cluster: "netns-test".into(),
                etcd: Some(format!("http://{}:{}", hosts.etcd_ip(i), etcd.port())),
                shards: 1,
                lease_ttl_ms: 2000,
                extra: [
                    "--rebalance-batch-slots",
                    "8192",
                    "--rebalance-interval-ms",
                    "100",
                ]
                .map(String::from)
                .to_vec(),
                cpus: None,
                netns: Some(hosts.netns(i).to_owned()),
                listen: Some(format!("{}:7800", hosts.router_ip(i))),
            })
            .expect("the router starts in its namespace")
        })
        .collect();
    let mut holder = node("holder", 101, &routers[0].addr);
    let mut sender = node("sender", 102, &routers[2].addr);
    run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(30),
        "the three routers to share the slots",
        |nodes| nodes.iter().all(|node| balanced(node, 3)),
    );
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    open_all(&mut holder, &mut sender, &users);
    let id_of = |node: &Node, addr: &str| {
        node.core
            .map()
            .and_then(|map| map.routers().iter().find(|r| r.addr == addr).map(|r| r.id))
    };

    // h2 cut from etcd: it fences itself before its lease can expire, and
    // its slots move to h1 and h3.
    let cut_id = id_of(&sender, &routers[1].addr).expect("h2 in the map");
    hosts.cut_from_etcd(1, true).expect("blackhole route");
    let cut_at = Instant::now();
    route_all(&mut sender, &users, 1);
    let received = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(60),
        "h2's slots to move and every outcome",
        |nodes| {
            OUTCOMES.with(|all| all.borrow().len() >= 300)
                && nodes.iter().all(|n| {
                    n.core.map().is_some_and(|m| {
                        m.router(cut_id).is_none() || m.slots_of(cut_id).is_empty()
                    })
                })
        },
    );
    eprintln!(
        "h2 cut from etcd: its slots moved {:?} later",
        cut_at.elapsed()
    );
    hosts.cut_from_etcd(1, false).expect("route back");
    let routed = verdicts(&take_outcomes());
    assert_eq!(routed.get("Routed"), Some(&300), "{routed:?}");
    // (h2 serves, legitimately, until its fence: some of these went
    // through it. Had it served past its fence while h1 or h3 served its
    // slots, a message would have been delivered twice.)
    assert_eq!(delivered_once(&received[0]), (1..301).collect());

    // h3 cut from everything: to the nodes it is a router that went
    // silent, to etcd one whose lease lapsed.
    let isolated_id = id_of(&sender, &routers[2].addr).expect("h3 in the map");
    hosts.isolate(2, true).expect("blackhole routes");
    let cut_at = Instant::now();
    route_all(&mut sender, &users, 1001);
    let received = run(
        &mut [&mut holder, &mut sender],
        Duration::from_secs(60),
        "h3's slots to move and every outcome",
        |nodes| {
            OUTCOMES.with(|all| all.borrow().len() >= 300)
                && nodes.iter().all(|n| {
                    n.core.map().is_some_and(|m| {
                        m.router(isolated_id).is_none() || m.slots_of(isolated_id).is_empty()
                    })
                })
        },
    );
    eprintln!("h3 isolated: its slots moved {:?} later", cut_at.elapsed());
    hosts.isolate(2, false).expect("routes back");
    let routed = verdicts(&take_outcomes());
    assert_eq!(routed.get("Routed"), Some(&300), "{routed:?}");
    assert_eq!(delivered_once(&received[0]), (1001..1301).collect());
    eprintln!(
        "netns partitions: sender resent {}, holder dropped {} duplicates",
        sender.core.stats.resends, holder.core.stats.duplicates_dropped
    );
    drop(routers);
    drop(etcd);
}
