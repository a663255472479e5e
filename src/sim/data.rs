//! The cluster's data plane in the simulation: each router process of the
//! control-plane simulation ([`super::control`]) gets a real [`ShardCore`]
//! (one shard) fed by its [`Member`] through [`Views`], exactly as the
//! control-plane thread feeds the shards, and nodes running the real
//! [`ClusterNode`] open sessions and route messages to each other across
//! router crashes, pauses past the lease, etcd partitions and outages,
//! joins, drains, and cut node-router connections.
//!
//! Checked after every step: at most one router serves each slot (from
//! what the shards themselves would answer, not from the members). At
//! every outcome: never a false Offline (a recipient's sessions are opened
//! at the start on nodes that never die; Offline is allowed only when the
//! recipient's node lost a connection recently enough that a router may
//! have judged it gone, the promise of docs/CLUSTER.md). At every
//! delivery: the application sees each message once. At the end, once
//! faults stop and everything settles: every Route has exactly one
//! outcome, and every Routed message was delivered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::Rng;
use crate::client::cluster::{ClusterConfig, ClusterNode, LinkId, Polled};
use crate::client::{Incoming, NodeConfig};
use crate::cluster::map::SlotSet;
use crate::cluster::member::Member;
use crate::cluster::view::Views;
use crate::config::{Config, ServeArgs};
use crate::core::batch::CLASSES;
use crate::core::conns::ConnId;
use crate::core::directory::Directory;
use crate::core::{Lost, ShardCore};
use crate::time::Time;
use crate::wire::{check, fb, Check, RouteFrame};

/// Users each node holds.
const USERS_PER_NODE: usize = 12;

/// The data plane's shape, from the seed.
#[derive(Debug, Clone)]
pub struct DataConfig {
    pub nodes: usize,
    /// One Route every this long (from a random node to a random user).
    pub route_every_ms: u64,
    pub reconnect_grace_ms: u32,
}

impl DataConfig {
    pub fn from_seed(rng: &mut Rng) -> DataConfig {
        DataConfig {
            nodes: rng.range(2..=4) as usize,
            route_every_ms: rng.range(5..=50),
            reconnect_grace_ms: [2_000, 5_000][rng.index(2)],
        }
    }
}

/// What the data plane did.
#[derive(Debug, Default, Clone)]
pub struct DataStats {
    pub routes: u64,
    pub routed: u64,
    pub offline_allowed: u64,
    pub unknown_final: u64,
    pub resends: u64,
    pub duplicates_dropped: u64,
    pub unknown_retries: u64,
    pub node_cuts: u64,
    pub resyncs: u64,
}

struct RouterData {
    core: ShardCore,
    views: Views,
    addr: String,
}

struct NodeData {
    core: ClusterNode,
    users: Vec<String>,
    delivered: HashSet<u64>,
    /// When one of its connections last broke (or failed to open).
    last_trouble: Option<Time>,
    /// Links cut from their router until then.
    cut_until: HashMap<LinkId, Time>,
}

struct Wire {
    client: usize,
    conn: Option<ConnId>,
    /// Bytes a paused router has not read yet.
    to_router: Vec<u8>,
}

/// See the module docs.
pub struct DataPlane {
    config: DataConfig,
    rng: Rng,
    routers: HashMap<usize, RouterData>,
    nodes: Vec<NodeData>,
    wires: HashMap<(usize, LinkId), Wire>,
    next_route: Time,
    next_message: u64,
    /// Routes without an outcome: message id -> (sender, recipient node).
    open_routes: HashMap<u64, (usize, usize)>,
    /// Routed messages, to be delivered by the end.
    routed: HashMap<u64, usize>,
    pub stats: DataStats,
    faults_until: Time,
    /// Lines for the run's trace (taken by the control simulation).
    pub lines: Vec<String>,
}

impl DataPlane {
    pub fn new(mut rng: Rng, seeds: Vec<String>, faults_until: Time) -> DataPlane {
        let config = DataConfig::from_seed(&mut rng);
        let nodes = (0..config.nodes)
            .map(|n| {
                let mut node = NodeConfig::new(format!("node{n}"), 1000 + n as u64);
                node.acks = true;
                let mut cluster = ClusterConfig::new(node, seeds.clone());
                cluster.unknown_retries = 40;
                cluster.retry_delay = Duration::from_millis(50);
                // Resyncs of several batches, interleaved between links
                // (a shared generation counter once cut one short).
                cluster.resync_batch = 4;
                let users = (0..USERS_PER_NODE)
                    .map(|u| format!("n{n}-user{u}"))
                    .collect();
                NodeData {
                    core: ClusterNode::new(cluster),
                    users,
                    delivered: HashSet::new(),
                    last_trouble: None,
                    cut_until: HashMap::new(),
                }
            })
            .collect();
        let mut plane = DataPlane {
            config,
            rng,
            routers: HashMap::new(),
            nodes,
            wires: HashMap::new(),
            next_route: Time::from_millis(3_000),
            next_message: 1,
            open_routes: HashMap::new(),
            routed: HashMap::new(),
            stats: DataStats::default(),
            faults_until,
            lines: Vec::new(),
        };
        for n in 0..plane.nodes.len() {
            let users = plane.nodes[n].users.clone();
            for user in &users {
                plane.nodes[n]
                    .core
                    .open(user, "phone", fb::Platform::Mobile);
            }
        }
        plane
    }

    pub fn config(&self) -> &DataConfig {
        &self.config
    }

    /// A router process starts (client number `client`, at `addr`).
    pub fn start_router(&mut self, client: usize, addr: String, now: Time) {
        let mut args = ServeArgs::defaults();
        args.listen = "127.0.0.1:0".into();
        args.shards = Some(1);
        // The default warm-up (--reconnect-grace-ms): a router that just
        // started cannot know which nodes are out there; gained slots
        // answer Unknown for "no session" meanwhile.
        args.reconnect_grace_ms = self.config.reconnect_grace_ms;
        args.etcd = vec!["http://etcd".into()];
        args.cluster = Some("sim".into());
        args.advertise = Some(addr.clone());
        let config = Arc::new(Config::from_args(&args).expect("a valid config"));
        let directory = Arc::new(Directory::new(config.nodes_max as usize, 1));
        let core = ShardCore::new(0, config, directory, client as u64, now);
        self.routers.insert(
            client,
            RouterData {
                core,
                views: Views::new(),
                addr,
            },
        );
    }

    /// A router process dies: its connections break.
    pub fn crash_router(&mut self, client: usize, now: Time) {
        self.routers.remove(&client);
        let broken: Vec<(usize, LinkId)> = self
            .wires
            .iter()
            .filter(|(_, wire)| wire.client == client)
            .map(|(&key, _)| key)
            .collect();
        for (node, link) in broken {
            self.wires.remove(&(node, link));
            self.nodes[node].core.disconnected(link, now);
            self.nodes[node].last_trouble = Some(now);
        }
    }

    /// A fault of the data plane: one node's connection to one router is
    /// cut (both ends see it end; reconnects fail until the cut heals).
    pub fn fault(&mut self, now: Time) {
        if self.wires.is_empty() {
            return;
        }
        let mut keys: Vec<(usize, LinkId)> = self.wires.keys().copied().collect();
        keys.sort_unstable();
        let (node, link) = keys[self.rng.index(keys.len())];
        let cut = Duration::from_millis(self.rng.range(100..=1_500));
        self.break_wire(node, link, now);
        self.nodes[node].cut_until.insert(link, now + cut);
        self.stats.node_cuts += 1;
    }

    fn break_wire(&mut self, node: usize, link: LinkId, now: Time) {
        if let Some(wire) = self.wires.remove(&(node, link)) {
            if let (Some(conn), Some(router)) = (wire.conn, self.routers.get_mut(&wire.client)) {
                if router.core.socket_action(conn) == crate::core::SocketAction::Serve {
                    router.core.socket_lost(conn, Lost::Closed, now);
                }
                router.core.socket_released(conn, now);
                settle(&mut router.core, now);
            }
        }
        self.nodes[node].core.disconnected(link, now);
        self.nodes[node].last_trouble = Some(now);
        self.lines.push(format!("node {node} link {link} broken"));
    }

    /// The next time something is due here.
    pub fn next_wake(&self, now: Time) -> Time {
        let mut next = self.next_route;
        for router in self.routers.values() {
            next = next.min(router.core.poll_timeout());
        }
        for node in &self.nodes {
            next = next.min(node.core.poll_timeout());
        }
        next.max(now)
    }

    /// One step: views to the shards, sockets, the workload, timers.
    /// `members` lists the live router processes: (client, member,
    /// paused).
    pub fn step(&mut self, now: Time, members: &[(usize, &Member, bool)]) -> Result<(), String> {
        for &(client, member, paused) in members {
            if paused {
                continue;
            }
            let Some(router) = self.routers.get_mut(&client) else {
                continue;
            };
            if let Some(view) = router.views.next(member) {
                let epoch = view.map.as_ref().map(|m| m.epoch());
                let changed = router.core.slots_epoch() != epoch.unwrap_or(0)
                    || view.me != router.core.slots_me();
                if changed && epoch.is_some() {
                    self.lines.push(format!(
                        "router {client} applies map {epoch:?} as {:x}: {} released, {} gained, fence {:?}",
                        view.me,
                        view.released.len(),
                        view.gained.len(),
                        view.fence
                    ));
                }
                router.core.apply_view(&view, now);
            }
            if router.core.poll_timeout() <= now {
                router.core.handle_timeout(now);
            }
        }
        let paused: HashSet<usize> = members
            .iter()
            .filter(|(_, _, paused)| *paused)
            .map(|(client, _, _)| *client)
            .collect();
        self.connect(now);
        self.workload(now)?;
        for _ in 0..64 {
            if !self.pump(now, &paused)? {
                break;
            }
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].core.poll_timeout() <= now {
                self.nodes[n].core.handle_timeout(now);
            }
        }
        Ok(())
    }

    fn connect(&mut self, now: Time) {
        for n in 0..self.nodes.len() {
            for (link, addr) in self.nodes[n].core.connect_due(now) {
                let cut = self.nodes[n]
                    .cut_until
                    .get(&link)
                    .is_some_and(|&until| now < until);
                let router = self
                    .routers
                    .iter()
                    .find(|(_, router)| router.addr == addr)
                    .map(|(&client, _)| client);
                match router.filter(|_| !cut) {
                    Some(client) => {
                        self.nodes[n].core.connected(link, now);
                        self.wires.insert(
                            (n, link),
                            Wire {
                                client,
                                conn: None,
                                to_router: Vec::new(),
                            },
                        );
                    }
                    None => {
                        self.nodes[n].core.connect_failed(link, now);
                        self.nodes[n].last_trouble = Some(now);
                    }
                }
            }
        }
        // Links a node dropped close their sockets.
        let dropped: Vec<(usize, LinkId)> = self
            .wires
            .keys()
            .copied()
            .filter(|&(n, link)| self.nodes[n].core.link_mut(link).is_none())
            .collect();
        for (n, link) in dropped {
            if let Some(wire) = self.wires.remove(&(n, link)) {
                if let (Some(conn), Some(router)) = (wire.conn, self.routers.get_mut(&wire.client))
                {
                    router.core.socket_lost(conn, Lost::Closed, now);
                    router.core.socket_released(conn, now);
                }
            }
        }
    }

    fn workload(&mut self, now: Time) -> Result<(), String> {
        if now >= self.faults_until {
            // The workload stops with the faults; what is open settles.
            self.next_route = Time::NEVER;
            return Ok(());
        }
        if now < self.next_route {
            return Ok(());
        }
        self.next_route = now + Duration::from_millis(self.config.route_every_ms);
        let sender = self.rng.index(self.nodes.len());
        let mut holder = self.rng.index(self.nodes.len());
        if holder == sender {
            holder = (holder + 1) % self.nodes.len();
        }
        let user = self.nodes[holder].users[self.rng.index(USERS_PER_NODE)].clone();
        let id = self.next_message;
        self.next_message += 1;
        let frame = RouteFrame {
            message_id: id,
            from_user: "sim",
            from_device: "d",
            to_user: &user,
            to_device: None,
            flags: 0,
            payload: b"m",
        };
        if self.nodes[sender].core.route(&frame, now).is_ok() {
            self.open_routes.insert(id, (sender, holder));
            self.stats.routes += 1;
            let slot = crate::placement::slot_for_user(user.as_bytes());
            self.lines.push(format!(
                "node {sender} routes {id} to {user} (slot {slot}, node {holder})"
            ));
        }
        Ok(())
    }

    /// Moves every socket's bytes once; whether anything moved.
    fn pump(&mut self, now: Time, paused: &HashSet<usize>) -> Result<bool, String> {
        let mut moved = false;
        let mut keys: Vec<(usize, LinkId)> = self.wires.keys().copied().collect();
        keys.sort_unstable();
        for (n, link) in keys {
            // Node to router.
            let bytes = match self.nodes[n].core.link_mut(link) {
                Some(link) => link.core.take_transmit(),
                None => continue,
            };
            let Some(wire) = self.wires.get_mut(&(n, link)) else {
                continue;
            };
            wire.to_router.extend_from_slice(&bytes);
            let client = wire.client;
            if paused.contains(&client) {
                continue;
            }
            let Some(router) = self.routers.get_mut(&client) else {
                continue;
            };
            if !wire.to_router.is_empty() {
                moved = true;
                let input = std::mem::take(&mut wire.to_router);
                let mut rest = &input[..];
                if wire.conn.is_none() {
                    let Check::Complete(len) = check(rest, u32::MAX) else {
                        wire.to_router = input;
                        continue;
                    };
                    let hello = router
                        .core
                        .hello(&rest[..len])
                        .map_err(|fault| format!("node {n}'s Hello refused: {fault}"))?;
                    match router.core.place(&hello) {
                        Ok(_) => {}
                        Err(_) => {
                            self.break_wire(n, link, now);
                            continue;
                        }
                    }
                    match router.core.open(hello, None, now) {
                        Ok(conn) => wire.conn = Some(conn),
                        Err(_) => {
                            self.break_wire(n, link, now);
                            continue;
                        }
                    }
                    rest = &rest[len..];
                }
                if !rest.is_empty() {
                    router.core.receive(wire.conn.expect("opened"), rest, now);
                }
            }
            settle(&mut router.core, now);
            // Router to node.
            let Some(conn) = wire.conn else { continue };
            let mut out = Vec::new();
            loop {
                let bytes = router.core.writable(conn);
                if bytes.is_empty() {
                    break;
                }
                let len = bytes.len();
                out.extend_from_slice(bytes);
                router.core.wrote(conn, len, now);
            }
            let closing = router.core.socket_action(conn) != crate::core::SocketAction::Serve;
            if !out.is_empty() {
                moved = true;
                if let Some(node_link) = self.nodes[n].core.link_mut(link) {
                    node_link.core.receive(&out, now);
                    self.poll_node(n, link, now)?;
                }
            }
            if closing && self.wires.contains_key(&(n, link)) {
                // The router closed the connection (its bytes are out).
                self.break_wire(n, link, now);
                moved = true;
            }
        }
        Ok(moved)
    }

    fn poll_node(&mut self, n: usize, link: LinkId, now: Time) -> Result<(), String> {
        let mut broken = false;
        let mut delivered = Vec::new();
        while let Some(polled) = self.nodes[n].core.poll_link(link, now) {
            match polled {
                Err(error) => {
                    return Err(format!("node {n}: the router broke the protocol: {error}"))
                }
                Ok(Polled::Frame(Incoming::Deliver(deliver))) => {
                    delivered.push(deliver.message_id());
                }
                Ok(Polled::Frame(Incoming::Error { code, text })) => {
                    if !matches!(code, fb::ErrorCode::NodeTimeout | fb::ErrorCode::Replaced) {
                        return Err(format!("node {n} got Error {code:?}: {text}"));
                    }
                    broken = true;
                    break;
                }
                Ok(_) => {}
            }
        }
        for id in delivered {
            if !self.nodes[n].delivered.insert(id) {
                return Err(format!("node {n}'s application saw message {id} twice"));
            }
        }
        if broken {
            self.break_wire(n, link, now);
        }
        while let Some(outcome) = self.nodes[n].core.poll_outcome() {
            self.lines.push(format!("node {n}: outcome {outcome:?}"));
            let Some((_, holder)) = self.open_routes.remove(&outcome.message_id) else {
                return Err(format!(
                    "node {n} got a second outcome for message {}",
                    outcome.message_id
                ));
            };
            match outcome.verdict {
                fb::Verdict::Routed => {
                    self.stats.routed += 1;
                    self.routed.insert(outcome.message_id, holder);
                }
                fb::Verdict::Offline => {
                    // Allowed only if the holder lost a connection lately:
                    // a router may have judged it gone (grace), or rebuilt
                    // a slot without its resync.
                    let window =
                        Duration::from_millis(u64::from(self.config.reconnect_grace_ms) + 12_000);
                    let trouble = self.nodes[holder]
                        .last_trouble
                        .is_some_and(|at| now.since(at) <= window);
                    if !trouble {
                        return Err(format!(
                            "false Offline: message {} to a user of node {holder}, whose connections were all fine ({:?})",
                            outcome.message_id, outcome
                        ));
                    }
                    self.stats.offline_allowed += 1;
                }
                fb::Verdict::Unknown => self.stats.unknown_final += 1,
                other => {
                    return Err(format!(
                        "message {} got {other:?} ({:?})",
                        outcome.message_id, outcome.reason
                    ))
                }
            }
        }
        Ok(())
    }

    /// Nodes attached to router `client` (what its control plane reads
    /// from the directory).
    pub fn attached_nodes(&self, client: usize) -> Option<u64> {
        let router = self.routers.get(&client)?;
        Some(router.core.directory().attached().len() as u64)
    }

    /// What router `client`'s shard serves may have changed since the
    /// last time this key was the same (None: no such router).
    pub fn serving_key(&self, client: usize, now: Time) -> Option<(u64, bool)> {
        self.routers
            .get(&client)
            .map(|router| router.core.serving_key(now))
    }

    /// [`DataPlane::serving`] into `set`; false (and `set` untouched)
    /// when there is no such router.
    pub fn serving_into(&self, client: usize, now: Time, set: &mut SlotSet) -> bool {
        match self.routers.get(&client) {
            Some(router) => {
                router.core.serving_slots_into(now, set);
                true
            }
            None => false,
        }
    }

    /// The slots router `client`'s shard would serve at `now`.
    pub fn serving(&self, client: usize, now: Time) -> Option<SlotSet> {
        self.routers
            .get(&client)
            .map(|router| router.core.serving_slots(now))
    }

    /// After the faults, once settled: every Route has its outcome, and
    /// every Routed message was delivered.
    pub fn check_end(&mut self) -> Result<(), String> {
        if let Some((id, (sender, holder))) = self.open_routes.iter().next() {
            let pending: Vec<usize> = self.nodes.iter().map(|n| n.core.pending()).collect();
            return Err(format!(
                "{} Routes have no outcome at the end (message {id} from node {sender} to node {holder}; pending per node {pending:?}): {}",
                self.open_routes.len(),
                self.nodes[*sender].core.describe_pending(*id)
            ));
        }
        for (&id, &holder) in &self.routed {
            if !self.nodes[holder].delivered.contains(&id) {
                return Err(format!(
                    "message {id} was Routed but node {holder} never delivered it"
                ));
            }
        }
        for node in &self.nodes {
            let stats = node.core.stats;
            self.stats.resends += stats.resends;
            self.stats.duplicates_dropped += stats.duplicates_dropped;
            self.stats.unknown_retries += stats.unknown_retries;
            self.stats.resyncs += stats.resyncs;
        }
        Ok(())
    }

    /// Whether Routes still wait for outcomes.
    pub fn busy(&self) -> bool {
        !self.open_routes.is_empty()
    }
}

/// Runs a one-shard router's own batches and sliced work.
fn settle(core: &mut ShardCore, now: Time) {
    loop {
        let mut any = false;
        for class in CLASSES {
            while let Some(batch) = core.take_batch(0, class) {
                core.handle_batch(&batch, now);
                core.recycle_batch(batch);
                any = true;
            }
        }
        while core.has_work() {
            core.step(now);
            any = true;
        }
        if !any {
            break;
        }
    }
    let mut woken = Vec::new();
    core.take_wakes(&mut woken);
}
