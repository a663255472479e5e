//! The NATS target, for the peer comparison: each simulated node
//! subscribes to one subject per user it hosts (`u.<user id>`), and a
//! message to a user is published to that subject. Spoken in NATS's text
//! protocol directly (INFO, CONNECT, SUB, PUB, MSG, PING/PONG).
//!
//! NATS has no verdicts: a message to a subject nobody subscribes to just
//! disappears. So this target runs with every recipient online, one device
//! per user, and counts deliveries only.

use std::io::Write;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{Link, SimNode, Worker, WorkerStats};
use crate::workload;

/// Longest protocol line we accept from the server (INFO can be long).
const LINE_BYTES_MAX: usize = 64 * 1024;

/// Connects node `index` and subscribes to the subjects of its users; the
/// subscriptions are in effect when this returns (a PING after them was
/// answered).
pub async fn connect(worker: &Worker, index: u32) -> Result<Rc<Link>, String> {
    let plan = &worker.plan;
    let name = format!("loadgen-{index}");
    let mut stream = TcpStream::connect(plan.router)
        .await
        .map_err(|e| format!("{name}: connect to {}: {e}", plan.router))?;
    let mut input = Vec::new();
    let info = read_line(&mut stream, &mut input).await?;
    if !info.starts_with("INFO ") {
        return Err(format!(
            "{name}: expected INFO from nats-server, got {info:?}"
        ));
    }
    let mut out = Vec::new();
    // echo: a node may now and then send to a user it hosts itself (the
    // workload only mostly avoids it); as with imrouter, that copy must come
    // back to the node, so the server must not suppress its own messages.
    out.extend_from_slice(
        format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":true,\"name\":\"{name}\"}}\r\n").as_bytes(),
    );
    let population = plan.population;
    for (sid, (user, _device)) in population.sessions_of(index).enumerate() {
        out.extend_from_slice(b"SUB u.");
        out.extend_from_slice(&workload::user_id(user));
        write!(out, " {}\r\n", sid + 1).expect("write to a Vec");
        if out.len() > 1 << 20 {
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("{name}: SUB: {e}"))?;
            out.clear();
        }
    }
    out.extend_from_slice(b"PING\r\n");
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("{name}: SUB: {e}"))?;
    loop {
        let line = read_line(&mut stream, &mut input).await?;
        match line.as_str() {
            "PONG" => break,
            "+OK" => {}
            line if line.starts_with("-ERR") => return Err(format!("{name}: nats-server: {line}")),
            _ => {}
        }
    }
    if !input.is_empty() {
        return Err(format!("{name}: unexpected bytes after PONG"));
    }
    Ok(Link::new(stream, None))
}

async fn read_line(stream: &mut TcpStream, input: &mut Vec<u8>) -> Result<String, String> {
    loop {
        if let Some(end) = input.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&input[..end]).into_owned();
            input.drain(..end + 2);
            return Ok(line);
        }
        if input.len() > LINE_BYTES_MAX {
            return Err("nats-server sent an over-long line".into());
        }
        let mut chunk = [0u8; 4096];
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("nats-server: {e}"))?;
        if read == 0 {
            return Err("nats-server closed the connection".into());
        }
        input.extend_from_slice(&chunk[..read]);
    }
}

/// Queues `PUB u.<user> <len>\r\n<payload>\r\n`.
pub fn publish(link: &Link, user: &[u8], payload: &[u8]) {
    let mut header = [0u8; 48];
    let mut cursor = &mut header[..];
    cursor.write_all(b"PUB u.").expect("fits");
    cursor.write_all(user).expect("fits");
    write!(cursor, " {}\r\n", payload.len()).expect("fits");
    let used = 48 - cursor.len();
    link.push(&header[..used]);
    link.push(payload);
    link.push(b"\r\n");
}

/// Reads MSG frames (and answers PINGs) until the connection closes.
pub async fn run_reader(node: Rc<SimNode>, link: Rc<Link>) {
    let mut buf = vec![0u8; 1 << 20];
    let (mut start, mut end) = (0, 0);
    loop {
        match link.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => {
                link.close();
                if !node
                    .worker
                    .shared
                    .finished
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    error(&node, "nats-server closed the connection".into());
                }
                return;
            }
            Ok(n) => end += n,
        }
        while let Some(used) = parse_one(&node, &link, &buf[start..end]) {
            start += used;
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

fn error(node: &SimNode, text: String) {
    WorkerStats::add(&node.worker.stats.errors, 1);
    node.worker
        .shared
        .fail(format!("node {}: {text}", node.index));
}

/// Handles the first complete protocol message in `input`; returns the
/// bytes it used, or `None` when more input is needed.
fn parse_one(node: &SimNode, link: &Link, input: &[u8]) -> Option<usize> {
    let line_end = input.windows(2).position(|w| w == b"\r\n")?;
    let line = &input[..line_end];
    if let Some(args) = line.strip_prefix(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let args = std::str::from_utf8(args).ok()?;
        let mut words = args.split(' ');
        let subject = words.next()?;
        let len: usize = words.next_back()?.parse().ok()?;
        let payload_start = line_end + 2;
        if input.len() < payload_start + len + 2 {
            return None;
        }
        let payload = &input[payload_start..payload_start + len];
        let user = subject
            .strip_prefix("u.")
            .and_then(|id| workload::parse_user_id(id.as_bytes()));
        let (id, due_ns, intact) = match workload::read_payload(payload) {
            Some((due_ns, id)) => (id, due_ns, true),
            None => (0, 0, false),
        };
        node.observe_delivery(id, due_ns, user, 1, intact);
        return Some(payload_start + len + 2);
    }
    match line {
        b"PING" => link.push(b"PONG\r\n"),
        b"PONG" | b"+OK" => {}
        _ if line.starts_with(b"INFO ") => {}
        _ => error(
            node,
            format!("nats-server: {}", String::from_utf8_lossy(line)),
        ),
    }
    Some(line_end + 2)
}
