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
        .args(["--drain-window-ms", "300"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    // "<time>  INFO ready: listening on 127.0.0.1:PORT, 2 shards on cpus
    // [..], admin port 127.0.0.1:PORT"
    assert!(line.contains(" INFO ready: listening on "), "{line}");
    assert!(line.contains(", 2 shards on cpus ["), "{line}");
    let addr = line
        .split("ready: listening on ")
        .nth(1)
        .unwrap()
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
        if line.contains(" INFO shard ") && line.contains("sessions=") {
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
    // SIGTERM drains: the node is told, and (as it stays) closed when the
    // window is over.
    assert_eq!(node.recv(), Frame::Draining { window_ms: 300 });
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
        rest.iter().any(|l| l.contains(" INFO stopped: ")),
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

/// `--log-format json`: one JSON object per line; a node's connect and
/// disconnect each one line with its name, incarnation and reason;
/// `--log-level warn` leaves them out.
#[test]
fn json_logs_name_the_node_its_incarnation_and_the_reason() {
    let start = |level: &str| {
        // (At level warn there is no ready line to read the port from.)
        let addr: std::net::SocketAddr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let mut child = imrouter()
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                "off",
            ])
            .args([
                "--shards",
                "1",
                "--log-format",
                "json",
                "--log-level",
                level,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        wait_until("the router accepts", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        (child, stderr, addr)
    };
    let (mut child, stderr, addr) = start("info");
    let mut node = Node::connect(addr, "json-node");
    node.open_confirmed("u", "d");
    node.goodbye("bye");
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).expect("every line is JSON"))
        .collect();
    let find = |event: &str| {
        lines
            .iter()
            .find(|line| line["event"] == event && line["node"] == "json-node")
            .unwrap_or_else(|| panic!("no {event} line in {lines:?}"))
            .clone()
    };
    let ready = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("ready: listening on")
        })
        .unwrap_or_else(|| panic!("no ready line in {lines:?}"));
    assert_eq!(ready["level"], "INFO");
    let connect = find("connect");
    assert_eq!(connect["level"], "INFO");
    assert_eq!(connect["incarnation"], "0x1");
    assert!(connect["timestamp"].is_string());
    assert_eq!(connect["shard"], 0);
    let disconnect = find("disconnect");
    assert_eq!(disconnect["reason"], "Goodbye");
    assert_eq!(disconnect["incarnation"], connect["incarnation"]);

    let (mut child, stderr, addr) = start("warn");
    let node = Node::connect(addr, "quiet-node");
    node.goodbye("bye");
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = stderr.lines().map(Result::unwrap).collect();
    assert!(
        rest.iter().all(|line| !line.contains("quiet-node")),
        "{rest:?}"
    );

    let output = imrouter()
        .args(["serve", "--log-level", "loud"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--log-level"));
}

fn hello_with_token(name: &str, token: &str) -> Vec<u8> {
    imrouter::wire::Encoder::new()
        .hello(&imrouter::wire::HelloFrame {
            auth_token: Some(token),
            ..imrouter::wire::HelloFrame::new(name, 1)
        })
        .to_vec()
}

/// Settings come from the file, then `IMROUTER_*`, then flags;
/// `check-config` says what `serve` would run with; SIGHUP applies a
/// changed auth token and log level without a restart, says which changes
/// need one, and a broken file changes nothing.
#[test]
fn settings_come_from_file_env_and_flags_and_sighup_reloads_what_it_can() {
    let dir = std::env::temp_dir().join(format!("imrouter-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, token) = (dir.join("imrouter.toml"), dir.join("token"));
    let addr: std::net::SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let write_config = |level: &str, frame: u32| {
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\nshards = 1\nadmin-listen = \"off\"\nlog_level = \"{level}\"\n\
                 drain-window-ms = 300\n\
                 max-frame-bytes = {frame}\nauth-token-file = \"{}\"\n",
                token.display()
            ),
        )
        .unwrap();
    };
    write_config("warn", 65536);
    std::fs::write(&token, "first-token\n").unwrap();
    let config_arg = config.to_str().unwrap();

    let check = |env: Option<&str>, flag: Option<&str>| {
        let mut command = imrouter();
        command.args(["check-config", "--config", config_arg]);
        if let Some(value) = env {
            command.env("IMROUTER_MAX_FRAME_BYTES", value);
        }
        if let Some(value) = flag {
            command.args(["--max-frame-bytes", value]);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(stdout.contains("configuration OK"), "{stdout}");
        assert!(stdout.contains(&addr.to_string()), "{stdout}");
        stdout
    };
    assert!(check(None, None).contains("frame_bytes_max: 65536,"));
    assert!(check(Some("70000"), None).contains("frame_bytes_max: 70000,"));
    assert!(check(Some("70000"), Some("80000")).contains("frame_bytes_max: 80000,"));
    let output = imrouter()
        .args([
            "check-config",
            "--config",
            config_arg,
            "--heartbeat-ms",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--heartbeat-ms"));

    let mut child = imrouter()
        .args(["serve", "--config", config_arg])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    wait_until("the router accepts", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let first = Node::connect_hello(addr, "first", &hello_with_token("first", "first-token"));

    // New token, level info, a frame limit that takes a restart; SIGHUP.
    std::fs::write(&token, "second-token\n").unwrap();
    write_config("info", 32768);
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|line: &String| line.contains("restart needed"))
    {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen:?}");
        seen.push(line);
    }
    let restart = seen
        .iter()
        .find(|line| line.contains("restart needed"))
        .unwrap();
    assert!(restart.contains("max-frame-bytes"), "{restart}");
    assert!(!restart.contains("log-level"), "{restart}");
    let reloaded = seen
        .iter()
        .find(|line| line.contains("settings reloaded"))
        .unwrap();
    assert!(reloaded.contains("auth-token-file"), "{reloaded}");
    assert!(reloaded.contains("log-level"), "{reloaded}");

    // The old token is refused now, the new one accepted; the node that
    // connected before stays.
    let mut refused = Wire::connect(addr);
    refused.send(&hello_with_token("late", "first-token"));
    let (code, _) = refused.error_then_close().expect("an Error frame");
    assert_eq!(code, fb::ErrorCode::Unauthorized);
    let mut second =
        Node::connect_hello(addr, "second", &hello_with_token("second", "second-token"));
    second.open_confirmed("u", "d");
    drop(first);

    // A broken file: nothing changes, the router keeps running.
    std::fs::write(&config, "listen = [\n").unwrap();
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0);
        if line.contains("were not reloaded") {
            break;
        }
    }
    second.open_confirmed("u", "d2");

    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
