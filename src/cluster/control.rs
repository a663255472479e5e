//! The control-plane thread of a router in a cluster: it drives the
//! router's [`Member`] with a real etcd client and the real clock, and
//! sends every shard a [`ClusterView`] (through each shard's bounded
//! control queue) whenever one changes. Nothing of it is on the message
//! path: the shards read no lock and wait for nothing it does.
//!
//! The etcd client (etcd-client, over gRPC) is async: the thread runs a
//! current-thread tokio runtime. Each request the member asks for runs as
//! a task and answers through a channel; the member has its own timeouts,
//! and a late answer is ignored. A watch runs until it fails; a newer
//! watch replaces it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use tokio::sync::{mpsc, Notify};

use super::etcd::{Compare, Event, Kv, Op, Request, Response};
use super::member::{Member, MemberConfig, MemberEvent};
use super::view::Views;
use crate::core::directory::Directory;
use crate::core::slots::ClusterView;
use crate::core::MembersUpdate;
use crate::shard::link::{Control, ShardLink};
use crate::time::Clock;

/// A running control plane.
pub struct ControlPlane {
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
    /// This router drains: ask the controller to move its slots away.
    drain: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts the thread. `links` reach the shards.
    pub fn start(
        etcd: Vec<String>,
        config: MemberConfig,
        clock: Clock,
        links: Vec<ShardLink>,
        directory: Arc<Directory>,
    ) -> std::io::Result<ControlPlane> {
        let stop = Arc::new(Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        let flags = Flags {
            stop: stop.clone(),
            stopped: stopped.clone(),
            drain: drain.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("imrouter-control".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                runtime.block_on(run(etcd, config, clock, links, directory, flags));
            })?;
        Ok(ControlPlane {
            stop,
            stopped,
            drain,
            thread: Some(thread),
        })
    }

    /// Revokes the lease (the other routers take this one's slots at
    /// once, not a TTL later) and stops the thread.
    /// Asks the controller to move this router's slots to the others (the
    /// `drain/<id>` key `imrouter cluster drain` writes, here under this
    /// router's lease, so that it goes with the router).
    pub fn drain_self(&self) {
        // The control loop looks at it at least every 100 ms.
        self.drain.store(true, Ordering::SeqCst);
    }

    pub fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the router tells its control-plane thread.
struct Flags {
    /// Stop now (and `stopped` stays set).
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
    /// Ask for this router's slots to be moved away (a drain).
    drain: Arc<AtomicBool>,
}

async fn run(
    etcd: Vec<String>,
    config: MemberConfig,
    clock: Clock,
    links: Vec<ShardLink>,
    directory: Arc<Directory>,
    flags: Flags,
) {
    let Flags {
        stop,
        stopped,
        drain,
    } = flags;
    let timeout = Duration::from_millis(config.request_timeout_ms());
    let prefix = config.prefix();
    // Set while the drain key is written (or being written); a failed
    // write clears it, and the next turn tries again.
    let drain_written = Arc::new(AtomicBool::new(false));
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(1), timeout);
    let client = loop {
        match Client::connect(&etcd, Some(options.clone())).await {
            Ok(client) => break client,
            Err(error) => {
                tracing::warn!("cluster: etcd {}: {error}; retrying", etcd.join(","));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.notified() => return,
                }
            }
        }
    };
    let (tx, mut rx) = mpsc::channel::<(u64, Response)>(256);
    let mut member = Member::new(config, clock.now());
    let mut views = Views::new();
    let mut watch: Option<tokio::task::JoinHandle<()>> = None;
    let mut attached = usize::MAX;
    let mut epoch_logged = 0;
    loop {
        let now = clock.now();
        let nodes = directory.attached().len();
        if nodes != attached {
            attached = nodes;
            member.set_attached_nodes(nodes as u64);
        }
        member.set_local_nodes(directory.live_nodes());
        member.tick(now);
        while let Some((id, request)) = member.poll_request() {
            let is_watch = matches!(request, Request::Watch { .. });
            let task = tokio::spawn(execute(client.clone(), id, request, tx.clone()));
            if is_watch {
                if let Some(old) = watch.replace(task) {
                    old.abort();
                }
            }
        }
        while let Some(event) = member.poll_event() {
            match event {
                MemberEvent::Registered(id) => {
                    tracing::info!(router = format!("{id:016x}"), "cluster: registered")
                }
                MemberEvent::Map(epoch) if epoch > epoch_logged => {
                    epoch_logged = epoch;
                    tracing::info!(epoch, "cluster: new slot map");
                }
                MemberEvent::Map(_) => {}
                MemberEvent::Fenced => {
                    tracing::warn!("cluster: lease not renewed in time: serving nothing")
                }
            }
        }
        if let Some(view) = views.next(&member) {
            publish(&links, view);
        }
        if drain.load(Ordering::SeqCst) && !drain_written.load(Ordering::SeqCst) {
            if let Some(id) = member.id() {
                drain_written.store(true, Ordering::SeqCst);
                let (mut client, key) = (client.clone(), format!("{prefix}drain/{id:016x}"));
                let written = drain_written.clone();
                tokio::spawn(async move {
                    let options = PutOptions::new().with_lease(id as i64);
                    if let Err(error) = client.put(key, "", Some(options)).await {
                        tracing::warn!(
                            "cluster: asking for this router's drain: {error}; retrying"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        written.store(false, Ordering::SeqCst);
                    }
                });
            }
        }
        let events = member.take_node_events();
        if !events.is_empty() {
            publish_members(
                &links,
                MembersUpdate {
                    events,
                    membership: member.node_membership(),
                },
            );
        }
        let wake = member.next_wake(now).min(now + Duration::from_millis(100));
        let sleep = clock.until(wake);
        tokio::select! {
            answer = rx.recv() => {
                if let Some((id, response)) = answer {
                    member.handle(id, response, clock.now());
                }
            }
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.notified() => break,
        }
        if stopped.load(Ordering::SeqCst) {
            break;
        }
    }
    if let Some(watch) = watch {
        watch.abort();
    }
    // Leave at once: without the lease our keys go, and the controller
    // gives our slots to the others now rather than a TTL later. Serving
    // stops first.
    if let Some(id) = member.id() {
        let mut client = client;
        let _ = tokio::time::timeout(timeout, client.lease_revoke(id as i64)).await;
    }
}

/// Sends `view` to every shard (a full queue is retried briefly: views
/// are rare, and the newest one is what counts).
fn publish(links: &[ShardLink], view: ClusterView) {
    let view = Arc::new(view);
    for link in links {
        let mut message = Control::View(view.clone());
        for _ in 0..100 {
            match link.try_control(message) {
                Ok(()) => break,
                Err(returned) => message = returned,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Sends the cluster's node membership events to every shard. Unlike a
/// view, an update is not superseded by the next one (its events would be
/// lost): a full queue is retried for up to a second, then the update is
/// dropped with a log line (the shard's Welcomes catch up at the next one).
fn publish_members(links: &[ShardLink], update: MembersUpdate) {
    let update = Arc::new(update);
    for link in links {
        let mut message = Control::Members(update.clone());
        let mut sent = false;
        for _ in 0..1000 {
            match link.try_control(message) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(returned) => message = returned,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !sent {
            tracing::warn!("cluster: a shard's control queue stayed full: node events dropped");
        }
    }
}

/// Carries out one request; its answers go to `tx`.
async fn execute(mut client: Client, id: u64, request: Request, tx: mpsc::Sender<(u64, Response)>) {
    let response = match request {
        Request::LeaseGrant { ttl_ms } => {
            let ttl = ttl_ms.div_ceil(1000) as i64;
            client
                .lease_grant(ttl, None)
                .await
                .map(|granted| Response::LeaseGranted {
                    lease: granted.id(),
                    ttl_ms: granted.ttl().max(0) as u64 * 1000,
                })
        }
        Request::LeaseKeepAlive { lease } => keep_alive(&mut client, lease).await,
        Request::LeaseRevoke { lease } => {
            client.lease_revoke(lease).await.map(|_| Response::Revoked)
        }
        Request::RangePrefix { prefix } => client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map(|got| Response::Range {
                revision: got.header().map_or(0, |h| h.revision()),
                kvs: got.kvs().iter().map(kv).collect(),
            }),
        Request::Txn { compares, success } => {
            let when: Vec<EtcdCompare> = compares
                .into_iter()
                .map(|compare| match compare {
                    Compare::CreateRevision { key, equals } => {
                        EtcdCompare::create_revision(key, CompareOp::Equal, equals)
                    }
                    Compare::ModRevision { key, equals } => {
                        EtcdCompare::mod_revision(key, CompareOp::Equal, equals)
                    }
                })
                .collect();
            let then: Vec<TxnOp> = success
                .into_iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => {
                        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                        TxnOp::put(key, value, options)
                    }
                    Op::Delete { key } => TxnOp::delete(key, None),
                })
                .collect();
            client
                .txn(Txn::new().when(when).and_then(then))
                .await
                .map(|done| Response::Txn {
                    succeeded: done.succeeded(),
                    revision: done.header().map_or(0, |h| h.revision()),
                })
        }
        Request::Watch {
            prefix,
            start_revision,
        } => return watch(client, id, prefix, start_revision, tx).await,
    };
    let response = response.unwrap_or_else(|error| Response::Failed(error.to_string()));
    let _ = tx.send((id, response)).await;
}

async fn keep_alive(client: &mut Client, lease: i64) -> Result<Response, etcd_client::Error> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    let ttl = match stream.message().await? {
        Some(answer) => answer.ttl().max(0) as u64 * 1000,
        None => 0,
    };
    Ok(Response::KeptAlive { ttl_ms: ttl })
}

async fn watch(
    mut client: Client,
    id: u64,
    prefix: String,
    start_revision: i64,
    tx: mpsc::Sender<(u64, Response)>,
) {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_revision);
    let failed = |text: String| (id, Response::Failed(text));
    let (_watcher, mut stream) = match client.watch(prefix, Some(options)).await {
        Ok(watch) => watch,
        Err(error) => {
            let _ = tx.send(failed(error.to_string())).await;
            return;
        }
    };
    loop {
        let answer = match stream.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                let _ = tx.send(failed("the watch ended".into())).await;
                return;
            }
            Err(error) => {
                let _ = tx.send(failed(error.to_string())).await;
                return;
            }
        };
        if answer.canceled() || answer.compact_revision() != 0 {
            let reason = format!(
                "the watch was canceled ({}; compacted at {})",
                answer.cancel_reason(),
                answer.compact_revision()
            );
            let _ = tx.send(failed(reason)).await;
            return;
        }
        let events: Vec<Event> = answer
            .events()
            .iter()
            .filter_map(|event| {
                let kv_of = event.kv()?;
                Some(match event.event_type() {
                    EventType::Put => Event::Put(kv(kv_of)),
                    EventType::Delete => Event::Delete {
                        key: kv_of.key_str().unwrap_or("").to_owned(),
                        revision: kv_of.mod_revision(),
                    },
                })
            })
            .collect();
        if tx.send((id, Response::Events(events))).await.is_err() {
            return;
        }
    }
}

fn kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key_str().unwrap_or("").to_owned(),
        value: kv.value_str().unwrap_or("").to_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

/// `imrouter cluster status|drain|undrain`: returns what to print.
pub fn admin(
    etcd: &[String],
    cluster: &str,
    action: &crate::config::ClusterAction,
) -> Result<String, String> {
    use super::status::{render, ClusterState};
    use crate::config::ClusterAction;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let timeout = Duration::from_secs(5);
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let mut client = Client::connect(etcd, Some(options))
            .await
            .map_err(|error| format!("etcd {}: {error}", etcd.join(",")))?;
        let prefix = format!("/imrouter/{cluster}/");
        let got = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|error| error.to_string())?;
        let kvs: Vec<Kv> = got.kvs().iter().map(kv).collect();
        let state = ClusterState::from_kvs(&prefix, &kvs);
        match action {
            ClusterAction::Status => {
                let mut leases = std::collections::BTreeMap::new();
                for row in &state.routers {
                    if let Ok(answer) = client.lease_time_to_live(row.id as i64, None).await {
                        leases.insert(row.id, answer.ttl() * 1000);
                    }
                }
                Ok(render(cluster, &state, &leases))
            }
            ClusterAction::Drain { router } | ClusterAction::Undrain { router } => {
                let row = state
                    .find(router)
                    .ok_or_else(|| format!("no router {router} in cluster {cluster}"))?;
                let key = format!("{prefix}drain/{:016x}", row.id);
                if matches!(action, ClusterAction::Drain { .. }) {
                    client
                        .put(key, "", None)
                        .await
                        .map_err(|error| error.to_string())?;
                    Ok(format!(
                        "draining {} ({:016x}): its slots move to the others, a batch per epoch; `imrouter cluster status` shows it drained when it owns none",
                        row.name, row.id
                    ))
                } else {
                    client
                        .delete(key, None)
                        .await
                        .map_err(|error| error.to_string())?;
                    Ok(format!("{} ({:016x}) may receive slots again", row.name, row.id))
                }
            }
        }
    })
}
