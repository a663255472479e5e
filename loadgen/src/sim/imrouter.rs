//! The imrouter target: the protocol, spoken through the router's own
//! node core (`imrouter::client::NodeCore`: framing, handshake, Pings,
//! stream offsets and Acks, resumes) and `wire` codec.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use imrouter::client::{Incoming, NodeConfig, NodeCore, Welcome};
use imrouter::time::Time;
use imrouter::wire::{fb, Encoder};

use super::{Link, SimNode, Worker, WorkerStats};
use crate::oracle::{Observed, ObservedKind, SessionChange};
use crate::workload::{self, message_id};

/// Bytes asked of the socket per read.
const READ_BYTES: usize = 256 * 1024;

/// Connects node `index`: one connection, or one per router shard when
/// shard-direct. Returns the links and the router's shard count.
pub async fn connect(worker: &Worker, index: u32) -> Result<(Vec<Rc<Link>>, usize), String> {
    let plan = &worker.plan;
    let incarnation = plan.seed ^ worker.now_ns() ^ (u64::from(index) << 40);
    let name = format!("loadgen-{index}");
    let config = |shard| {
        let mut config = NodeConfig::new(name.clone(), incarnation);
        config.shard = shard;
        config.acks = plan.acks;
        config
    };
    let wanted = plan.shard_direct.then_some(0);
    let mut core = NodeCore::new(config(wanted));
    let (first, welcome) = handshake(plan.router, &mut core).await?;
    let shard_count = welcome.shard_count as usize;
    let mut links = vec![Link::new(first, Some(core))];
    if plan.shard_direct {
        for shard in 1..shard_count as u16 {
            let mut core = NodeCore::new(config(Some(shard)));
            let (stream, welcome) = handshake(plan.router, &mut core).await?;
            if welcome.shard != shard {
                return Err(format!(
                    "{name}: asked for shard {shard}, served by {}",
                    welcome.shard
                ));
            }
            links.push(Link::new(stream, Some(core)));
        }
    }
    Ok((links, shard_count))
}

/// Connects and completes the handshake of `core` (a resume, when `core`
/// had a stream).
async fn handshake(
    router: std::net::SocketAddr,
    core: &mut NodeCore,
) -> Result<(TcpStream, Welcome), String> {
    let name = core.config().name.clone();
    let mut stream = TcpStream::connect(router)
        .await
        .map_err(|e| format!("{name}: connect to {router}: {e}"))?;
    core.connection_lost();
    core.connect(Time::ZERO);
    stream
        .write_all(&core.take_transmit())
        .await
        .map_err(|e| format!("{name}: send Hello: {e}"))?;
    loop {
        match core.poll_incoming() {
            Some(Ok(Incoming::Welcome { .. })) => break,
            Some(Ok(Incoming::Error { code, text })) => {
                return Err(format!("{name}: refused: {code:?} {text}"));
            }
            Some(Ok(other)) => return Err(format!("{name}: expected Welcome, got {other:?}")),
            // Not a failed attempt: the router broke the protocol.
            Some(Err(e)) => return Err(format!("{name}: {FATAL}{e}")),
            None => {}
        }
        let buffer = core.read_buffer(4096);
        let read = stream
            .read(buffer)
            .await
            .map_err(|e| format!("{name}: read Welcome: {e}"))?;
        if read == 0 {
            return Err(format!("{name}: the router closed before its Welcome"));
        }
        core.filled(read, Time::ZERO);
    }
    let welcome = core.welcome().cloned().expect("a Welcome was handed out");
    Ok((stream, welcome))
}

/// Marks a handshake error that another attempt cannot cure.
const FATAL: &str = "the router broke the protocol: ";

/// How long a node keeps trying to reconnect (the restart scenario waits
/// for a router process to come back).
const RECONNECT_FOR: Duration = Duration::from_secs(30);
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnects `node`'s single link (the same process: same incarnation,
/// acknowledging what it processed), starts its reader and writer, and
/// resyncs the node's sessions when the router did not resume the stream.
/// `down_ns`: when the sessions may have started to vanish. Returns
/// whether the stream was resumed.
pub async fn reconnect(node: Rc<SimNode>, link: Rc<Link>, down_ns: u64) -> Result<bool, String> {
    let plan = node.plan().clone();
    let mut core = link.take_core().expect("an imrouter link");
    core.wrote_stream(link.take_stream_written());
    let started = std::time::Instant::now();
    let connected = loop {
        // A Welcome that does not come is a failed attempt too (a socket
        // of a killed router can accept for a moment without answering).
        let attempt = futures_lite::future::or(handshake(plan.router, &mut core), async {
            glommio::timer::sleep(WELCOME_TIMEOUT).await;
            Err(format!(
                "loadgen-{}: no Welcome within {} s",
                node.index,
                WELCOME_TIMEOUT.as_secs()
            ))
        });
        match attempt.await {
            Ok(connected) => break Ok(connected),
            Err(e)
                if !e.contains(FATAL)
                    && started.elapsed() < RECONNECT_FOR
                    && !node.worker.shared.finished.load(Relaxed) =>
            {
                glommio::timer::sleep(RECONNECT_PAUSE).await;
            }
            Err(e) => break Err(format!("reconnecting: {e}")),
        }
    };
    link.put_core(core);
    let (stream, welcome) = connected?;
    let welcome_ns = node.worker.now_ns();
    // (A resume elsewhere than where this node is was refused by its core:
    // `NodeError::ResumedElsewhere`, a fatal handshake error.)
    link.reopen(stream);
    glommio::spawn_local(link.clone().run_writer()).detach();
    glommio::spawn_local(run_reader(node.clone(), link.clone())).detach();
    if !welcome.resumed {
        // The router dropped this node's sessions somewhere in
        // [down_ns, welcome_ns]; the node puts them back.
        let population = plan.population;
        let closes: Vec<SessionChange> = population
            .sessions_of(node.index)
            .map(|(user, device)| SessionChange {
                session: population.session_index(user, device),
                open: false,
                sent_ns: down_ns,
                confirmed_ns: welcome_ns,
            })
            .collect();
        node.extra_changes.borrow_mut().extend(closes);
        resync(&node, &link).await?;
    }
    Ok(welcome.resumed)
}

/// Sends the node's whole session list (SessionSync) and waits for its
/// SessionSyncAck; logs the re-opens for the oracle.
async fn resync(node: &SimNode, link: &Link) -> Result<(), String> {
    const BATCH: usize = 1000;
    let population = node.plan().population;
    let sessions: Vec<(u32, u8)> = population.sessions_of(node.index).collect();
    let generation = node.sync_acked.get() + 1;
    let sent_ns = node.worker.now_ns();
    let ids: Vec<([u8; 16], String)> = sessions
        .iter()
        .map(|&(user, device)| (workload::user_id(user), workload::device_id(device)))
        .collect();
    let chunks: Vec<_> = ids.chunks(BATCH).collect();
    let mut encoder = Encoder::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let batch: Vec<(&str, &str, fb::Platform, u64)> = chunk
            .iter()
            .map(|(user, device)| {
                (
                    std::str::from_utf8(user).expect("ascii"),
                    device.as_str(),
                    fb::Platform::Mobile,
                    0,
                )
            })
            .collect();
        let last = i + 1 == chunks.len();
        link.push(encoder.session_sync(generation, &batch, last));
        link.wait_for_room().await;
    }
    if chunks.is_empty() {
        link.push(encoder.session_sync(generation, &[], true));
    }
    let acked = node
        .sync_changed
        .wait_until(|| node.sync_acked.get() >= generation || link.is_closed());
    futures_lite::future::or(
        async {
            acked.await;
            Ok(())
        },
        async {
            glommio::timer::sleep(RECONNECT_FOR).await;
            Err(format!("node {}: no SessionSyncAck", node.index))
        },
    )
    .await?;
    if node.sync_acked.get() < generation {
        return Err(format!(
            "node {}: the connection ended during its resync",
            node.index
        ));
    }
    let confirmed_ns = node.worker.now_ns();
    node.extra_changes
        .borrow_mut()
        .extend(sessions.iter().map(|&(user, device)| SessionChange {
            session: population.session_index(user, device),
            open: true,
            sent_ns,
            confirmed_ns,
        }));
    Ok(())
}

/// Reads and handles frames until the connection closes: bytes go
/// straight into the link's node core, which cuts and verifies frames,
/// answers Pings and acknowledges; the workload's checks see them typed.
pub async fn run_reader(node: Rc<SimNode>, link: Rc<Link>) {
    loop {
        let read = link.read_into_core(READ_BYTES).await;
        match read {
            Ok(0) | Err(_) => {
                link.close();
                link.set_down();
                let shared = &node.worker.shared;
                if link.expect_end.get() || shared.finished.load(Relaxed) {
                    // A cut, or the end of the run.
                } else if node.plan().scenario == crate::config::ScenarioName::Restart {
                    // The router died: reconnect (to the restarted one).
                    let down_ns = node.worker.now_ns();
                    node.failures.borrow_mut().push(down_ns);
                    let killed_ns = shared.killed_ns.load(Relaxed);
                    let since = if killed_ns != 0 {
                        killed_ns.min(down_ns)
                    } else {
                        down_ns
                    };
                    let (node, link) = (node.clone(), link.clone());
                    glommio::spawn_local(async move {
                        match reconnect(node.clone(), link, since).await {
                            Ok(resumed) => node.worker.shared.reconnect_log.lock().expect("log").push(format!(
                                "node {}: reconnected after {:.2} s, resumed={resumed}, resynced={}",
                                node.index,
                                (node.worker.now_ns() - down_ns) as f64 / 1e9,
                                !resumed
                            )),
                            Err(e) => error(&node, e),
                        }
                    })
                    .detach();
                } else {
                    error(&node, "the router closed the connection".into());
                }
                link.ended.notify_all();
                return;
            }
            Ok(_) => {}
        }
        if link.discard.get() {
            continue; // A cut under way: nothing read is processed.
        }
        let out = {
            let mut guard = link.core.borrow_mut();
            let core = guard.as_mut().expect("an imrouter link");
            while let Some(incoming) = core.poll_incoming() {
                match incoming {
                    Ok(incoming) => handle(&node, incoming),
                    Err(e) => {
                        error(&node, format!("the router sent a bad frame: {e}"));
                        break;
                    }
                }
            }
            core.take_transmit()
        };
        if !out.is_empty() {
            link.push_control(&out);
        }
    }
}

fn error(node: &SimNode, text: String) {
    WorkerStats::add(&node.worker.stats.errors, 1);
    node.worker
        .shared
        .fail(format!("node {}: {text}", node.index));
}

fn handle(node: &SimNode, incoming: Incoming<'_>) {
    match incoming {
        Incoming::FanoutDeliver(deliver) => fanout_deliver(node, deliver),
        Incoming::FanoutStatus(status) => fanout_status(node, status),
        Incoming::Deliver(deliver) => {
            let id = deliver.message_id();
            let payload = deliver.payload().map(|p| p.bytes()).unwrap_or(&[]);
            let (due_ns, intact) = workload::delivered_payload(id, payload);
            let user = deliver
                .to_user()
                .and_then(|user| workload::parse_user_id(user.as_bytes()));
            let devices = deliver.devices().map_or(0, |devices| {
                devices
                    .iter()
                    .fold(0u64, |mask, device| mask | workload::device_bit(device))
            });
            node.observe_delivery(id, due_ns, user, devices, intact);
        }
        Incoming::Status { status, .. } => {
            let id = status.message_id();
            let at_ns = node.worker.now_ns();
            if id & message_id::PROBE != 0 {
                if matches!(
                    status.verdict(),
                    fb::Verdict::Offline | fb::Verdict::Unknown
                ) {
                    node.on_probe_verdict(message_id::seq(id), at_ns);
                } else {
                    error(node, format!("a probe got {:?}", status.verdict()));
                }
                return;
            }
            let verdict = status.verdict();
            // A verdict other than Routed stands for every event the
            // message was expected to cause (no copy will come).
            let events = if verdict == fb::Verdict::Routed {
                1
            } else {
                let sent = node.sent.borrow();
                match sent.get(message_id::seq(id) as usize) {
                    Some(message) if message_id::node(id) == node.index && message.fanout => {
                        node.fanout_events(id)
                    }
                    Some(message) if message_id::node(id) == node.index => {
                        node.expected_for(message)
                    }
                    _ => 1,
                }
            };
            let stats = &node.worker.stats;
            match verdict {
                fb::Verdict::Offline => WorkerStats::add(&stats.offline, 1),
                fb::Verdict::Busy => WorkerStats::add(&stats.busy, 1),
                fb::Verdict::Rejected => WorkerStats::add(&stats.errors, 1),
                _ => {}
            }
            node.worker.observe(
                Observed {
                    id,
                    at_ns,
                    kind: ObservedKind::Verdict {
                        verdict: verdict.0,
                        reason: status.reason().0,
                    },
                },
                events,
            );
        }
        // Until the load generator speaks to a cluster (one router owns
        // every slot), nothing is moved.
        Incoming::SlotMap(_) => {}
        Incoming::Moved(moved) => error(
            node,
            format!("the router moved a {:?}", fb::Body(moved.request())),
        ),
        // Membership and broadcasts concern real nodes, not the workload.
        // A router alone that drains keeps serving until it closes the
        // connection; the node reconnects as after any close.
        Incoming::Draining { .. }
        | Incoming::Ping { .. }
        | Incoming::Ack { .. }
        | Incoming::Pong { .. }
        | Incoming::NodeEvent(_)
        | Incoming::Broadcast(_)
        | Incoming::Publish(_)
        | Incoming::Welcome { .. } => {}
        Incoming::SessionSyncAck(ack) => {
            node.sync_acked
                .set(node.sync_acked.get().max(ack.generation()));
            node.sync_changed.notify_all();
        }
        Incoming::Error { code, text } => error(node, format!("Error {code:?}: {text}")),
        Incoming::Kick(kick)
            if node.plan().scenario == crate::config::ScenarioName::Policy
                && kick
                    .user()
                    .and_then(|u| crate::policy::parse_contested_id(u.as_bytes()))
                    .is_some() =>
        {
            let user = crate::policy::parse_contested_id(kick.user().unwrap_or("").as_bytes());
            let device = kick.device().and_then(workload::parse_device_id);
            match (user, device) {
                (Some(user), Some(device)) => node.policy.borrow_mut().kicks.push((user, device)),
                _ => error(node, "a Kick of an unknown contested session".into()),
            }
            node.worker
                .shared
                .last_observed_ns
                .store(node.worker.now_ns(), std::sync::atomic::Ordering::Relaxed);
        }
        Incoming::Located(located) => {
            let user = crate::policy::parse_contested_id(located.user().unwrap_or("").as_bytes());
            let Some(user) = user else {
                return error(node, "a Located for an unknown user".into());
            };
            let sessions = located
                .sessions()
                .into_iter()
                .flatten()
                .map(|s| {
                    let node_index = s
                        .node()
                        .and_then(|n| n.strip_prefix("loadgen-"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(u32::MAX);
                    let device = s
                        .device()
                        .and_then(workload::parse_device_id)
                        .unwrap_or(u8::MAX);
                    (node_index, device, s.platform().0)
                })
                .collect();
            node.policy.borrow_mut().located.insert(user, sessions);
            node.policy_changed.notify_all();
        }
        Incoming::Kick(kick) => {
            error(
                node,
                format!(
                    "unexpected Kick of {}/{} ({:?})",
                    kick.user().unwrap_or(""),
                    kick.device().unwrap_or(""),
                    kick.reason()
                ),
            );
        }
    }
}

/// The Fanout this node sent or received `id` of: its group.
fn group_of(node: &SimNode, id: u64) -> workload::Group {
    let plan = node.plan();
    workload::Group::of(id, &plan.population, plan.group_sizes, plan.offline_ratio)
}

/// A Fanout's Deliver: it must list exactly the group members this node
/// hosts, each with exactly the devices it hosts.
fn fanout_deliver(node: &SimNode, deliver: fb::Deliver<'_>) {
    let id = deliver.message_id();
    let payload = deliver.payload().map(|p| p.bytes()).unwrap_or(&[]);
    let (due_ns, intact) = workload::delivered_payload(id, payload);
    let population = node.plan().population;
    let expected = group_of(node, id).hosted_on(&population, node.index);
    let mut devices = deliver.devices().into_iter().flatten();
    let counts = deliver.recipient_device_counts();
    let mut listed: Vec<(u32, u64)> = Vec::new();
    let mut ok = counts.is_some_and(|c| c.len() == deliver.recipients().map_or(0, |r| r.len()));
    for (i, user) in deliver.recipients().into_iter().flatten().enumerate() {
        let count = counts.map_or(0, |c| if i < c.len() { c.get(i) } else { 0 });
        let mask = (0..count).fold(0u64, |mask, _| {
            // (A device missing from the list is wrong too: bit 63.)
            mask | devices.next().map_or(1 << 63, workload::device_bit)
        });
        match workload::parse_user_id(user.as_bytes()) {
            Some(user) => listed.push((user, mask)),
            None => ok = false,
        }
    }
    listed.sort_unstable();
    ok &= listed == expected;
    let at_ns = node.worker.now_ns();
    node.worker.record_latency(due_ns, at_ns);
    WorkerStats::add(&node.worker.stats.delivered, 1);
    node.worker.observe(
        Observed {
            id,
            at_ns,
            kind: ObservedKind::FanoutDeliver {
                node: node.index,
                ok,
                intact,
            },
        },
        1,
    );
}

/// A Fanout's Status: Routed (Partial when the group has offline members)
/// or Offline when it has no online member, listing exactly the offline
/// members.
fn fanout_status(node: &SimNode, status: fb::Status<'_>) {
    let id = status.message_id();
    let population = node.plan().population;
    let group = group_of(node, id);
    let (verdict, reason) = match (group.size, group.offline) {
        (0, _) => (fb::Verdict::Offline, fb::Reason::NoSession),
        (_, 0) => (fb::Verdict::Routed, fb::Reason::None),
        _ => (fb::Verdict::Routed, fb::Reason::Partial),
    };
    let mut expected: Vec<[u8; 16]> = group
        .offline_members(&population)
        .map(workload::offline_user_id)
        .collect();
    expected.sort_unstable();
    let mut listed: Vec<&[u8]> = status
        .offline_users()
        .into_iter()
        .flatten()
        .map(str::as_bytes)
        .collect();
    listed.sort_unstable();
    let ok = status.verdict() == verdict
        && status.reason() == reason
        && listed.len() == expected.len()
        && listed.iter().zip(&expected).all(|(a, b)| *a == &b[..]);
    node.worker.observe(
        Observed {
            id,
            at_ns: node.worker.now_ns(),
            kind: ObservedKind::FanoutVerdict { ok },
        },
        1,
    );
}
