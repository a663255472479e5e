//! The admin port: `/metrics` in Prometheus' text format (checked by
//! `promtool check metrics`, from Debian's prometheus package, which
//! scripts/deps.sh installs), `/healthz`, `/readyz` through the warm-up,
//! and `/nodez` (and `imrouter nodes`) naming the node that is slow.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use imrouter::wire::{fb, ROUTE_FLAG_ACK};

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    imrouter::admin::fetch(addr, path, Duration::from_secs(10)).expect("admin port answers")
}

/// The sum over every sample of `name` (all label sets).
fn sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_count_what_the_router_did() {
    let router = start_router(2);
    let admin = router
        .admin_addr()
        .expect("the admin port is on by default");
    let addr = router.local_addr();
    let mut alice = Node::connect(addr, "alice-node");
    let mut bob = Node::connect(addr, "bob-node");
    for user in 0..10 {
        bob.open_confirmed(&format!("bob-{user}"), "phone");
    }
    // (`open_confirmed` routes a message to the user to see the open.)
    let (_, before) = get(admin, "/metrics");
    let ids: Vec<u64> = (0..100)
        .map(|i| alice.route_to(&format!("bob-{}", i % 10), None, b"hi", ROUTE_FLAG_ACK))
        .collect();
    for verdict in alice.expect_statuses(&ids) {
        assert_eq!(verdict, (fb::Verdict::Routed, fb::Reason::None));
    }
    for _ in 0..100 {
        bob.expect_deliver();
    }

    let (status, metrics) = get(admin, "/metrics");
    assert_eq!(status, 200);
    promtool_check(&metrics);
    let grew = |name: &str| sum(&metrics, name) - sum(&before, name);
    assert_eq!(grew("imrouter_routes_in_total"), 100.0);
    assert_eq!(grew("imrouter_routes_routed_total"), 100.0);
    assert_eq!(sum(&metrics, "imrouter_sessions"), 10.0);
    assert_eq!(sum(&metrics, "imrouter_connections_open"), 2.0);
    // Every Route and SessionOpen was timed, once, by its owner shard.
    assert_eq!(grew("imrouter_route_duration_seconds_count"), 100.0);
    assert_eq!(
        sum(&metrics, "imrouter_route_duration_seconds_count"),
        sum(&metrics, "imrouter_routes_in_total")
    );
    assert_eq!(
        sum(
            &metrics,
            "imrouter_session_operation_duration_seconds_count"
        ),
        10.0
    );
    assert!(sum(&metrics, "imrouter_route_duration_seconds_sum") > 0.0);
    assert!(
        metrics.contains("imrouter_build_info{version=\""),
        "{metrics}"
    );
    assert!(metrics.contains("imrouter_routes_in_total{shard=\"1\"}"));
    assert_eq!(sum(&metrics, "imrouter_shards_answering"), 2.0);
    assert!(sum(&metrics, "imrouter_resident_memory_bytes") > 1e6);
    // `metric_names` (what dashboards and alerts are checked against)
    // lists exactly the series of a scrape.
    let mut scraped: Vec<String> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    scraped.sort();
    scraped.dedup();
    let mut names = imrouter::metrics::metric_names();
    names.sort();
    assert_eq!(scraped, names);
}

#[test]
fn readiness_waits_for_the_warm_up_and_health_does_not() {
    let started = Instant::now();
    let router = start_router_with(2, |args| args.warmup_ms = Some(1_500));
    let admin = router.admin_addr().unwrap();
    let (status, body) = get(admin, "/readyz");
    if started.elapsed() < Duration::from_millis(1_400) {
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("warming up"), "{body}");
    }
    assert_eq!(get(admin, "/healthz"), (200, "ok\n".to_string()));
    wait_until("ready after the warm-up", || get(admin, "/readyz").0 == 200);
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    let (status, _) = get(admin, "/no-such-page");
    assert_eq!(status, 404);
}

#[test]
fn nodez_and_imrouter_nodes_show_the_node_that_is_slow() {
    let router = start_router_with(2, |args| {
        args.max_frame_bytes = 16 * 1024;
        args.out_buffer_bytes = 64 * 1024;
        // Pings often (for a Pong to show), but a node silent for a while
        // is not dead.
        args.heartbeat_ms = 20;
        args.node_timeout_ms = Some(30_000);
    });
    let admin = router.admin_addr().unwrap();
    let addr = router.local_addr();
    let mut sender = Node::connect(addr, "sender");
    let mut slow = Node::connect(addr, "slow");
    slow.open_confirmed("slow-user", "phone");
    slow.open_confirmed("slow-user-2", "phone");
    // Answer a heartbeat Ping or two, so that the router has seen a Pong.
    std::thread::sleep(Duration::from_millis(100));
    slow.ping(1);
    sender.ping(2);

    // The slow node reads nothing from here on, until the router answers
    // Busy (as in tests/backpressure.rs).
    let payload = vec![0x5A; 8 * 1024];
    let mut busy = 0;
    for _ in 0..2_000 {
        let ids: Vec<u64> = (0..16)
            .map(|_| sender.route_to("slow-user", None, &payload, ROUTE_FLAG_ACK))
            .collect();
        for verdict in sender.expect_statuses(&ids) {
            if verdict == (fb::Verdict::Busy, fb::Reason::DestinationBusy) {
                busy += 1;
            }
        }
        if busy > 0 {
            break;
        }
    }
    assert!(busy > 0, "the router never reported the slow node as busy");

    let (status, body) = get(admin, "/nodez");
    assert_eq!(status, 200);
    let nodez: serde_json::Value = serde_json::from_str(&body).unwrap();
    let node = |name: &str| {
        nodez["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["node"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {body}"))
            .clone()
    };
    let slow_row = node("slow");
    assert_eq!(slow_row["busy_verdicts"], busy, "{body}");
    assert_eq!(slow_row["sessions"], 2, "{body}");
    assert_eq!(slow_row["live"], true);
    assert_eq!(slow_row["connections"].as_array().unwrap().len(), 1);
    // (Its unwritten bytes may be 0 by now: the kernel's socket buffers
    // take what the router held once it stopped sending.)
    assert!(slow_row["unwritten_bytes"].is_u64(), "{body}");
    assert!(slow_row["last_pong_ms"].is_u64(), "{body}");
    let sender_row = node("sender");
    assert_eq!(sender_row["busy_verdicts"], 0);
    assert_eq!(sender_row["sessions"], 0);

    let output = Command::new(env!("CARGO_BIN_EXE_imrouter"))
        .args(["nodes", "--router", &admin.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE "), "{table}");
    let slow_line = lines
        .iter()
        .find(|line| line.starts_with("slow "))
        .unwrap_or_else(|| panic!("{table}"));
    let columns: Vec<&str> = slow_line.split_whitespace().collect();
    // NODE INCARNATION LIVE CONNS SESSIONS OUT_BYTES HELD BUSY SLOW ...
    assert_eq!(columns[2], "yes");
    assert_eq!(columns[4], "2");
    assert_eq!(columns[7], busy.to_string());

    // A router that is not there: exit status 2 and a message.
    let output = Command::new(env!("CARGO_BIN_EXE_imrouter"))
        .args(["nodes", "--router", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
