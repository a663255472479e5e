//! The admin port: `/metrics` (Prometheus text format), `/healthz`,
//! `/readyz` and `/nodez`, served by axum on a thread of its own.
//!
//! Nothing here is on the message path: every request is a control
//! message to each shard (answered between two turns of its executor, like
//! SIGUSR1's counters), gathered with a deadline on a blocking thread of
//! the admin's own runtime. A shard that does not answer in time makes
//! `/healthz` fail and leaves its figures out of the others.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use crossbeam_channel::{Receiver, Sender};

use crate::core::report::NodesReport;
use crate::limits::ADMIN_DEADLINE;
use crate::metrics::{render, Sample, ShardReport};
use crate::shard::link::{Control, ShardLink};

/// What the admin port serves from: the shards' links and the router's
/// own state.
#[derive(Clone)]
struct Shared {
    links: Vec<ShardLink>,
    started: Instant,
    /// Set while the router drains or stops: `/readyz` answers 503.
    draining: Arc<AtomicBool>,
    /// Set by `POST /drain`; the main thread drives the drain.
    drain_request: Arc<AtomicBool>,
    /// Requests being answered; beyond `ADMIN_REQUESTS_MAX`, 503.
    requests: Arc<tokio::sync::Semaphore>,
}

/// The running admin port. Dropping it stops it.
pub struct Admin {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Admin {
    /// Binds `addr` and serves it on a new thread.
    pub fn start(
        addr: SocketAddr,
        links: Vec<ShardLink>,
        draining: Arc<AtomicBool>,
        drain_request: Arc<AtomicBool>,
    ) -> std::io::Result<Admin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            links,
            started: Instant::now(),
            draining,
            drain_request,
            requests: Arc::new(tokio::sync::Semaphore::new(
                crate::limits::ADMIN_REQUESTS_MAX,
            )),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(crate::limits::ADMIN_BLOCKING_THREADS)
            .build()?;
        let thread = std::thread::Builder::new()
            .name("imrouter-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!("admin port: {error}");
                            return;
                        }
                    };
                    let app = axum::Router::new()
                        .route("/metrics", get(metrics))
                        .route("/healthz", get(healthz))
                        .route("/readyz", get(readyz))
                        .route("/nodez", get(nodez))
                        .route("/drain", axum::routing::post(drain))
                        .with_state(shared);
                    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
                    let mut graceful = stop_rx.clone();
                    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.changed().await;
                    });
                    tokio::spawn(async move {
                        let _ = stopped.await;
                        let _ = stop_tx.send(true);
                    });
                    // A client that never reads its answer must not hold the
                    // router's exit: the graceful stop gets ADMIN_STOP_GRACE.
                    tokio::select! {
                        served = served => {
                            if let Err(error) = served {
                                tracing::error!("admin port: {error}");
                            }
                        }
                        _ = async {
                            let _ = stop_rx.changed().await;
                            tokio::time::sleep(crate::limits::ADMIN_STOP_GRACE).await;
                        } => {}
                    }
                });
            })?;
        Ok(Admin {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the admin port listens (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks every shard with `ask`; each answer, or `None` for a shard that
/// did not answer within [`ADMIN_DEADLINE`] (or has stopped).
fn gather<T: Send + 'static>(
    links: &[ShardLink],
    ask: impl Fn(Sender<T>) -> Control,
) -> Vec<Option<T>> {
    let deadline = Instant::now() + ADMIN_DEADLINE;
    let replies: Vec<Option<Receiver<T>>> = links
        .iter()
        .map(|link| {
            let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
            // A full control queue means a shard far behind: no answer.
            link.try_control(ask(reply_tx)).ok().map(|()| reply_rx)
        })
        .collect();
    replies
        .into_iter()
        .map(|reply| reply?.recv_deadline(deadline).ok())
        .collect()
}

/// Runs `gather` off the runtime's thread (it blocks up to the deadline);
/// `Err` with a 503 answer when `ADMIN_REQUESTS_MAX` requests are being
/// answered already.
async fn gather_blocking<T: Send + 'static>(
    shared: &Shared,
    ask: fn(Sender<T>) -> Control,
) -> Result<Vec<Option<T>>, Response> {
    let Ok(permit) = shared.requests.clone().try_acquire_owned() else {
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many admin requests at once; try again\n".into(),
        ));
    };
    let links = shared.links.clone();
    let answers = tokio::task::spawn_blocking(move || gather(&links, ask)).await;
    drop(permit);
    answers.map_err(|error| {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the shards could not be asked: {error}\n"),
        )
    })
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let reports = match gather_blocking(&shared, Control::Report).await {
        Ok(reports) => reports,
        Err(busy) => return busy,
    };
    let answered = reports.iter().filter(|report| report.is_some()).count();
    let shards: Vec<Option<ShardReport>> = reports;
    let mut features = Vec::new();
    if cfg!(feature = "cluster") {
        features.push("cluster");
    }
    let extra = [
        Sample {
            name: "imrouter_build_info",
            help: "The router's version and build features (always 1).",
            kind: "gauge",
            labels: vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("features", features.join(",")),
            ],
            value: 1.0,
        },
        Sample {
            name: "imrouter_shards",
            help: "Shards (pinned executor threads) of this router.",
            kind: "gauge",
            labels: Vec::new(),
            value: shards.len() as f64,
        },
        Sample {
            name: "imrouter_shards_answering",
            help: "Shards that answered this scrape in time (the others have no samples in it).",
            kind: "gauge",
            labels: Vec::new(),
            value: answered as f64,
        },
        Sample {
            name: "imrouter_uptime_seconds",
            help: "Seconds since the router started.",
            kind: "gauge",
            labels: Vec::new(),
            value: shared.started.elapsed().as_secs_f64(),
        },
        Sample {
            name: "imrouter_resident_memory_bytes",
            help: "Resident memory of the router process.",
            kind: "gauge",
            labels: Vec::new(),
            value: resident_bytes() as f64,
        },
        Sample {
            name: "imrouter_draining",
            help: "1 while the router drains or stops, else 0.",
            kind: "gauge",
            labels: Vec::new(),
            value: u8::from(shared.draining.load(Ordering::Relaxed)).into(),
        },
    ];
    let mut body = String::with_capacity(64 * 1024);
    render(&mut body, &shards, &extra);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `POST /drain` (`imrouter drain`): the router drains and stops, as on
/// SIGUSR2.
async fn drain(State(shared): State<Shared>) -> Response {
    let already = shared.drain_request.swap(true, Ordering::Relaxed)
        || shared.draining.load(Ordering::Relaxed);
    text(
        StatusCode::ACCEPTED,
        if already {
            "already draining\n".into()
        } else {
            "draining: the router stops accepting, hands its slots away (in a cluster), tells its nodes to leave, then stops\n".into()
        },
    )
}

async fn healthz(State(shared): State<Shared>) -> Response {
    let answers = match gather_blocking(&shared, Control::Health).await {
        Ok(answers) => answers,
        Err(busy) => return busy,
    };
    let silent: Vec<String> = answers
        .iter()
        .enumerate()
        .filter(|(_, answer)| answer.is_none())
        .map(|(shard, _)| shard.to_string())
        .collect();
    if silent.is_empty() {
        text(StatusCode::OK, "ok\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "shards not answering within {} ms: {}\n",
                ADMIN_DEADLINE.as_millis(),
                silent.join(", ")
            ),
        )
    }
}

async fn readyz(State(shared): State<Shared>) -> Response {
    let answers = match gather_blocking(&shared, Control::Health).await {
        Ok(answers) => answers,
        Err(busy) => return busy,
    };
    let mut reasons = Vec::new();
    if shared.draining.load(Ordering::Relaxed) {
        reasons.push("draining".to_string());
    }
    for (shard, answer) in answers.iter().enumerate() {
        match answer {
            None => reasons.push(format!("shard {shard}: not answering")),
            Some(health) => {
                for reason in health.reasons() {
                    reasons.push(format!("shard {shard}: {reason}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        // Every shard gives the same router-wide reasons (warm-up,
        // fence): say each once.
        reasons.dedup_by(|a, b| strip_shard(a) == strip_shard(b));
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", reasons.join("\n")),
        )
    }
}

fn strip_shard(reason: &str) -> &str {
    reason.split_once(": ").map_or(reason, |(_, rest)| rest)
}

/// One node, summed over the shards, for `/nodez`.
#[derive(Debug, Default)]
struct NodeRow {
    incarnation: u64,
    live: bool,
    sessions: u64,
    busy_verdicts: u64,
    slow_disconnects: u64,
    connections: Vec<serde_json::Value>,
    unwritten_bytes: usize,
    held_bytes: usize,
    last_pong_ms: Option<u64>,
}

async fn nodez(State(shared): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let answers = match gather_blocking(&shared, Control::Nodes).await {
        Ok(answers) => answers,
        Err(busy) => return busy,
    };
    let rows = node_rows(answers.into_iter().flatten());
    let as_text = query
        .as_deref()
        .is_some_and(|query| query.split('&').any(|pair| pair == "format=text"));
    if as_text {
        return text(StatusCode::OK, nodes_table(&rows));
    }
    let nodes: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(name, row)| {
            serde_json::json!({
                "node": name,
                "incarnation": row.incarnation,
                "live": row.live,
                "sessions": row.sessions,
                "busy_verdicts": row.busy_verdicts,
                "slow_disconnects": row.slow_disconnects,
                "unwritten_bytes": row.unwritten_bytes,
                "held_bytes": row.held_bytes,
                "last_pong_ms": row.last_pong_ms,
                "connections": row.connections,
            })
        })
        .collect();
    let body =
        serde_json::to_string_pretty(&serde_json::json!({ "nodes": nodes })).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
        .into_response()
}

/// Sums the shards' reports per node, by name (sorted).
fn node_rows(
    reports: impl Iterator<Item = NodesReport>,
) -> std::collections::BTreeMap<String, NodeRow> {
    let mut rows: std::collections::BTreeMap<String, NodeRow> = Default::default();
    for report in reports {
        for node in report.nodes {
            let row = rows.entry(node.node).or_default();
            row.incarnation = node.incarnation;
            row.live |= node.live;
            row.sessions += node.sessions;
            row.busy_verdicts += node.busy_verdicts;
            row.slow_disconnects += node.slow_disconnects;
        }
        for conn in report.conns {
            let row = rows.entry(conn.node.clone()).or_default();
            row.unwritten_bytes += conn.unwritten_bytes;
            row.held_bytes += conn.held_bytes;
            row.last_pong_ms = match (row.last_pong_ms, conn.last_pong_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            row.connections.push(serde_json::json!({
                "shard": conn.shard,
                "incarnation": conn.incarnation,
                "peer": conn.peer.map(|peer| peer.to_string()),
                "state": conn.state,
                "unwritten_bytes": conn.unwritten_bytes,
                "unacked_bytes": conn.unacked_bytes,
                "held_bytes": conn.held_bytes,
                "last_heard_ms": conn.last_heard_ms,
                "last_pong_ms": conn.last_pong_ms,
            }));
        }
    }
    rows
}

/// `/nodez?format=text` (what `imrouter nodes` prints): one line per node.
fn nodes_table(rows: &std::collections::BTreeMap<String, NodeRow>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>18} {:>5} {:>5} {:>9} {:>11} {:>9} {:>5} {:>5} {:>10}",
        "NODE",
        "INCARNATION",
        "LIVE",
        "CONNS",
        "SESSIONS",
        "OUT_BYTES",
        "HELD",
        "BUSY",
        "SLOW",
        "LAST_PONG"
    );
    for (name, row) in rows {
        let _ = writeln!(
            out,
            "{:<24} {:>#18x} {:>5} {:>5} {:>9} {:>11} {:>9} {:>5} {:>5} {:>10}",
            name,
            row.incarnation,
            if row.live { "yes" } else { "no" },
            row.connections.len(),
            row.sessions,
            row.unwritten_bytes,
            row.held_bytes,
            row.busy_verdicts,
            row.slow_disconnects,
            row.last_pong_ms
                .map_or("-".to_string(), |ms| format!("{ms} ms ago")),
        );
    }
    out
}

/// The process's resident memory, from /proc (0 where there is none).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// A GET of `path` on the admin port at `addr` (`imrouter nodes`).
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    request(addr, "GET", path, timeout)
}

/// One HTTP/1.1 request to the admin port at `addr`: (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|error| format!("{addr}: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| format!("{addr}: {error}"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| format!("{addr}: {error}"))?;
    let mut response = Vec::new();
    stream
        .take(crate::limits::ADMIN_RESPONSE_BYTES_MAX)
        .read_to_end(&mut response)
        .map_err(|error| format!("{addr}: {error}"))?;
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = &response[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_vec()
    };
    let body = String::from_utf8_lossy(&body).to_string();
    Ok((status, body))
}

/// The body of a chunked HTTP/1.1 response (bytes: a chunk may end
/// inside a character).
fn unchunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = rest.windows(2).position(|window| window == b"\r\n") {
        let size = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok());
        let after = &rest[end + 2..];
        let Some(size) = size.filter(|&size| size > 0 && after.len() >= size) else {
            break;
        };
        body.extend_from_slice(&after[..size]);
        rest = after[size..]
            .strip_prefix(b"\r\n")
            .unwrap_or(&after[size..]);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::report::ShardHealth;

    #[test]
    fn a_chunked_body_is_put_back_together() {
        assert_eq!(
            unchunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
    }

    #[test]
    fn readiness_reasons_name_what_is_missing() {
        let mut health = ShardHealth::default();
        assert!(health.ready());
        health.warmup_left_ms = 10;
        assert!(!health.ready());
        assert_eq!(health.reasons(), ["warming up (10 ms left)"]);
        let member = ShardHealth {
            member: true,
            has_map: true,
            slots_held: 10,
            slots_not_ready: 3,
            ..ShardHealth::default()
        };
        assert!(!member.ready());
        assert_eq!(
            member.reasons(),
            ["3 of 10 slots waiting for their hand-over or resyncs"]
        );
    }
}
