//! The `imrouter` binary: help text, the ready line, and a clean stop.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use imrouter::wire::fb;

fn imrouter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imrouter"))
}

#[test]
fn help_documents_every_flag() {
    let top = imrouter().arg("--help").output().unwrap();
    assert!(top.status.success());
    let top = String::from_utf8(top.stdout).unwrap();
    assert!(top.contains("serve"), "{top}");

    let serve = imrouter().args(["serve", "--help"]).output().unwrap();
    assert!(serve.status.success());
    let serve = String::from_utf8(serve.stdout).unwrap();
    for flag in [
        "--listen",
        "--shards",
        "--cpus",
        "--max-frame-bytes",
        "--out-buffer-bytes",
        "--max-nodes",
        "--max-sessions",
        "--max-sessions-per-user",
        "--auth-token-file",
        "--heartbeat-ms",
        "--node-timeout-ms",
        "--login-policy",
        "--fanout-max",
        "--max-topics",
        "--warmup-ms",
    ] {
        assert!(serve.contains(flag), "{flag} missing from:\n{serve}");
    }
}

#[test]
fn bad_flags_exit_with_a_message() {
    let output = imrouter()
        .args(["serve", "--shards", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--shards"), "{stderr}");
}

#[test]
fn serves_nodes_after_the_ready_line_and_stops_on_sigterm() {
    let mut child = imrouter()
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    // "imrouter: ready: listening on 127.0.0.1:PORT, 2 shards on cpus [..]"
    assert!(line.starts_with("imrouter: ready: listening on "), "{line}");
    assert!(line.contains(", 2 shards on cpus ["), "{line}");
    let addr = line["imrouter: ready: listening on ".len()..]
        .split(',')
        .next()
        .unwrap();
    let addr = addr.parse().unwrap();

    let mut node = Node::connect(addr, "cli-node");
    node.open_confirmed("u", "d");

    // SIGUSR1 prints every shard's counters and the router keeps serving.
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let mut dumped = Vec::new();
    while dumped.len() < 2 {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        if line.starts_with("imrouter: shard ") && line.contains("sessions=") {
            dumped.push(line);
        }
    }
    assert!(
        dumped.iter().any(|l| l.contains(" sessions=1 ")),
        "{dumped:?}"
    );
    node.open_confirmed("u", "d2");

    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let (code, _) = node
        .wire
        .error_then_close()
        .expect("an Error frame before the close");
    assert_eq!(code, fb::ErrorCode::ShuttingDown);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let rest: Vec<String> = stderr.lines().map(Result::unwrap).collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.starts_with("imrouter: stopped: ")),
        "{rest:?}"
    );
}

#[test]
fn a_second_router_on_the_same_address_refuses_to_start() {
    let first = start_router(1);
    let addr = first.local_addr().to_string();
    let output = imrouter()
        .args(["serve", "--listen", &addr, "--shards", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("bind {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
    // The first router still has every connection.
    let mut node = Node::connect(first.local_addr(), "still-here");
    node.open_confirmed("u", "d");
}

/// `imrouter locate` prints a user's sessions, one per line, and exits 0;
/// for a user with none it exits 1.
#[test]
fn locate_prints_the_sessions_of_a_user() {
    let router = start_router(2);
    let addr = router.local_addr().to_string();
    let mut node = Node::connect(router.local_addr(), "gateway-7");
    node.open_confirmed("lena", "phone");
    node.open_confirmed("lena", "laptop");

    let found = imrouter()
        .args(["locate", "--router", &addr, "lena"])
        .output()
        .unwrap();
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    let mut lines: Vec<String> = String::from_utf8(found.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["gateway-7\tlaptop\tMobile", "gateway-7\tphone\tMobile"]
    );

    let missing = imrouter()
        .args(["locate", "--router", &addr, "nobody"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(missing.stdout.is_empty());
}
