//! The cluster's control plane in the simulation: several routers'
//! [`Member`]s and a [`FakeEtcd`] on virtual time, with a seeded network
//! between them and faults: router crashes and restarts (a new lease, a
//! new id), pauses past the lease TTL (SIGSTOP, SIGCONT), partitions
//! between a router and etcd, etcd wholly unavailable, routers added and
//! drained. After every step it checks that at most one router serves
//! each slot; at the end, once the faults are over, that every slot is
//! served by exactly one live router and the map names live routers only.
//!
//! With a data plane ([`ControlSim::with_data`], `imrouter-sim --cluster`)
//! each router process also runs a real shard core fed by its member, and
//! nodes route messages across all of it ([`super::data`]): the
//! simulation of the whole cluster.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use super::data::{DataPlane, DataStats};
use super::etcd::FakeEtcd;
use super::Rng;
use crate::cluster::etcd::{Request, Response};
use crate::cluster::map::SlotSet;
use crate::cluster::member::{Member, MemberConfig};
use crate::limits::SLOT_COUNT;
use crate::time::Time;

/// Routers live at once, at most (joins stop there).
const ROUTERS_MAX: usize = 6;

/// One simulated run's shape, drawn from its seed.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub routers: usize,
    pub lease_ttl_ms: u64,
    pub rebalance_batch: usize,
    /// Faults happen in `[0, faults_until)`; then the cluster must settle.
    pub faults_until: Time,
    pub end: Time,
    /// Most one-way delay between a router and etcd.
    pub max_delay_ms: u64,
}

impl ControlConfig {
    pub fn from_seed(rng: &mut Rng) -> ControlConfig {
        let lease_ttl_ms = [1000, 2000, 3000][rng.index(3)];
        let faults_ms = rng.range(5_000..=30_000);
        ControlConfig {
            routers: rng.range(1..=5) as usize,
            lease_ttl_ms,
            rebalance_batch: [256, 1024, 4096][rng.index(3)],
            faults_until: Time::from_millis(faults_ms),
            // Long enough to notice the last death, move its slots and
            // rebalance onto routers that joined late.
            end: Time::from_millis(faults_ms + 4 * lease_ttl_ms + 20_000),
            max_delay_ms: rng.range(1..=(lease_ttl_ms / 20)),
        }
    }
}

struct Router {
    member: Member,
    /// The member's client number at the fake etcd (new per process).
    client: usize,
    paused_until: Option<Time>,
    /// Cut from etcd until then (its messages are lost both ways).
    cut_until: Time,
    draining: bool,
    /// `serving` as of `member.version()`, while its lease is alive.
    cache: Option<(u64, SlotSet)>,
}

#[derive(Debug)]
enum Message {
    ToEtcd {
        client: usize,
        id: u64,
        request: Request,
    },
    ToRouter {
        client: usize,
        id: u64,
        response: Response,
    },
    /// A watch stream broke (the router's side learns it locally).
    Broken { client: usize, id: u64 },
}

/// A message on its way, ordered by delivery time, then by sending order.
struct Queued(Time, u64, Message);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct ControlStats {
    pub steps: u64,
    pub crashes: u64,
    pub pauses: u64,
    pub cuts: u64,
    pub etcd_outages: u64,
    pub joins: u64,
    pub drains: u64,
    pub epochs: u64,
    /// Longest time a slot went unserved after a crash, in ms.
    pub worst_gap_ms: u64,
}

/// What one router's serving sets depend on: (client, member version,
/// paused, lease alive, the shard's `serving_key`).
type ServingKey = (usize, u64, bool, bool, Option<(u64, bool)>);

pub struct ControlSim {
    rng: Rng,
    config: ControlConfig,
    now: Time,
    etcd: FakeEtcd,
    etcd_down_until: Time,
    routers: Vec<Router>,
    next_client: usize,
    network: BinaryHeap<Reverse<Queued>>,
    sent: u64,
    next_fault: Time,
    pub stats: ControlStats,
    /// Since when each slot has had no server (for the gap figure), and
    /// how many have none.
    unserved_since: Vec<Option<Time>>,
    unserved: SlotSet,
    /// Sets the per-step checks reuse.
    scratch: Vec<SlotSet>,
    /// The serving keys at the last check.
    checked_keys: Vec<ServingKey>,
    trace: Vec<String>,
    /// When the last events sent on each watch arrive (a watch is one
    /// stream: its events arrive in order).
    watch_due: HashMap<(usize, u64), Time>,
    /// Shards and nodes, in the simulation of the whole cluster.
    data: Option<DataPlane>,
}

impl ControlSim {
    pub fn new(seed: u64) -> ControlSim {
        ControlSim::build(seed, false)
    }

    /// The whole cluster: the same seed's control plane, with a shard core
    /// in every router process and nodes routing messages through them.
    pub fn with_data(seed: u64) -> ControlSim {
        ControlSim::build(seed, true)
    }

    fn build(seed: u64, with_data: bool) -> ControlSim {
        let mut rng = Rng::new(seed ^ 0xc0_47_01);
        let config = ControlConfig::from_seed(&mut rng);
        let data = with_data.then(|| {
            // Every host a router may run on (at most six live at once).
            let seeds = (1..=ROUTERS_MAX)
                .map(|host| format!("10.0.0.{host}:7800"))
                .collect();
            DataPlane::new(rng.fork(), seeds, config.faults_until)
        });
        let mut sim = ControlSim {
            rng,
            config: config.clone(),
            now: Time::ZERO,
            etcd: FakeEtcd::new(),
            etcd_down_until: Time::ZERO,
            routers: Vec::new(),
            next_client: 0,
            network: BinaryHeap::new(),
            sent: 0,
            next_fault: Time::from_millis(2_000),
            stats: ControlStats::default(),
            unserved_since: vec![None; SLOT_COUNT as usize],
            unserved: SlotSet::empty(),
            scratch: (0..4).map(|_| SlotSet::empty()).collect(),
            checked_keys: Vec::new(),
            trace: Vec::new(),
            watch_due: HashMap::new(),
            data,
        };
        for _ in 0..config.routers {
            sim.start_router();
        }
        sim
    }

    fn log(&mut self, text: String) {
        self.trace.push(format!("{:?} {text}", self.now));
    }

    /// A router process's settings. Its address is the lowest of the
    /// cluster's host addresses no live router has (a replacement takes a
    /// dead router's host, as it would in a deployment whose nodes are
    /// told every router host).
    fn member_config(&self, number: usize) -> MemberConfig {
        let taken: Vec<&str> = self
            .routers
            .iter()
            .map(|router| router.member.config().addr.as_str())
            .collect();
        let addr = (1..)
            .map(|host| format!("10.0.0.{host}:7800"))
            .find(|addr| !taken.contains(&addr.as_str()))
            .expect("a free host");
        MemberConfig {
            cluster: "sim".into(),
            name: format!("router{number}"),
            addr,
            // (One shard per router with a data plane: its shard core is
            // driven alone.)
            shards: if self.data.is_some() {
                1
            } else {
                1 + (number % 3) as u16
            },
            lease_ttl_ms: self.config.lease_ttl_ms,
            rebalance_batch: self.config.rebalance_batch,
            rebalance_interval_ms: 200,
        }
    }

    fn start_router(&mut self) {
        let client = self.next_client;
        self.next_client += 1;
        let member = Member::new(self.member_config(client), self.now);
        if let Some(data) = &mut self.data {
            data.start_router(client, member.config().addr.clone(), self.now);
        }
        self.routers.push(Router {
            member,
            client,
            paused_until: None,
            cut_until: Time::ZERO,
            draining: false,
            cache: None,
        });
        self.log(format!("router {client} starts"));
    }

    fn delay(&mut self) -> Duration {
        Duration::from_micros(self.rng.range(100..=self.config.max_delay_ms * 1000))
    }

    fn post(&mut self, at: Time, message: Message) {
        self.sent += 1;
        self.network.push(Reverse(Queued(at, self.sent, message)));
    }

    /// Runs to the end; `Err` with what broke.
    pub fn run(&mut self) -> Result<(), String> {
        // With a data plane, the end waits (a while) for the last Routes'
        // outcomes.
        let last = self.config.end + Duration::from_secs(60);
        while self.now < self.config.end
            || (self.now < last && self.data.as_ref().is_some_and(DataPlane::busy))
        {
            self.step()?;
            if self.stats.steps % 200_000 == 0
                && std::env::var_os("IMROUTER_SIM_PROGRESS").is_some()
            {
                eprintln!("step {} at {:?}", self.stats.steps, self.now);
            }
        }
        self.check_settled()?;
        match &mut self.data {
            Some(data) => data.check_end(),
            None => Ok(()),
        }
    }

    /// What the data plane did (a run with one).
    pub fn data_stats(&self) -> Option<DataStats> {
        self.data.as_ref().map(|data| data.stats.clone())
    }

    fn next_time(&self) -> Time {
        let mut next = self.config.end;
        if let Some(Reverse(Queued(at, _, _))) = self.network.peek() {
            next = next.min(*at);
        }
        for router in &self.routers {
            match router.paused_until {
                Some(until) => next = next.min(until),
                None => next = next.min(router.member.next_wake(self.now)),
            }
        }
        if let Some(expiry) = self.etcd.next_expiry() {
            next = next.min(expiry);
        }
        if let Some(data) = &self.data {
            next = next.min(data.next_wake(self.now));
        }
        if self.now < self.config.faults_until {
            next = next.min(self.next_fault);
        }
        next.max(self.now + Duration::from_micros(50))
    }

    fn step(&mut self) -> Result<(), String> {
        self.stats.steps += 1;
        self.now = self.next_time();
        let now = self.now;
        if now < self.config.faults_until && now >= self.next_fault {
            self.fault();
            self.next_fault = now + Duration::from_millis(self.rng.range(300..=3_000));
        }
        // Resumed routers.
        for router in &mut self.routers {
            if router.paused_until.is_some_and(|until| now >= until) {
                router.paused_until = None;
            }
        }
        // etcd: expiries and watches.
        self.etcd.expire(now);
        let events = self.etcd.watch_events();
        for ((client, id), events) in events {
            let at = now + self.delay();
            let due = self.watch_due.entry((client, id)).or_insert(at);
            let at = at.max(*due);
            *due = at;
            self.post(
                at,
                Message::ToRouter {
                    client,
                    id,
                    response: Response::Events(events),
                },
            );
        }
        // Due messages.
        while let Some(Reverse(Queued(at, _, _))) = self.network.peek() {
            if *at > now {
                break;
            }
            let Reverse(Queued(_, _, message)) = self.network.pop().expect("peeked");
            self.deliver(message);
        }
        // Routers' timers and requests.
        for at in 0..self.routers.len() {
            if self.routers[at].paused_until.is_some() {
                continue;
            }
            let client = self.routers[at].client;
            if let Some(nodes) = self.data.as_ref().and_then(|d| d.attached_nodes(client)) {
                self.routers[at].member.set_attached_nodes(nodes);
            }
            self.routers[at].member.tick(now);
            self.flush(at);
        }
        if let Some(data) = &mut self.data {
            let members: Vec<(usize, &Member, bool)> = self
                .routers
                .iter()
                .map(|r| (r.client, &r.member, r.paused_until.is_some()))
                .collect();
            let result = data.step(now, &members);
            let lines = std::mem::take(&mut data.lines);
            for line in lines {
                self.log(line);
            }
            result?;
        }
        // The two checks read only what the keys cover: while no key
        // moved, their sets (and verdicts) are those of the last step.
        let keys = self.serving_keys();
        if keys != self.checked_keys {
            self.check_one_owner()?;
            self.check_shards_one_owner()?;
            self.checked_keys = keys;
        }
        Ok(())
    }

    /// Per router: what its member's and its shard's serving sets depend
    /// on (the member's version and lease, the shard's views and fence).
    fn serving_keys(&self) -> Vec<ServingKey> {
        self.routers
            .iter()
            .map(|router| {
                (
                    router.client,
                    router.member.version(),
                    router.paused_until.is_some(),
                    router.member.lease_alive(self.now),
                    self.data
                        .as_ref()
                        .and_then(|data| data.serving_key(router.client, self.now)),
                )
            })
            .collect()
    }

    /// At most one router's shard serves each slot (what the shards would
    /// answer, which lags the members by the views).
    fn check_shards_one_owner(&mut self) -> Result<(), String> {
        let Some(data) = &self.data else {
            return Ok(());
        };
        // (Scratch sets: this runs at every step.)
        let [seen, set, ..] = &mut self.scratch[..] else {
            unreachable!("four scratch sets")
        };
        seen.clear();
        for router in &self.routers {
            if !data.serving_into(router.client, self.now, set) {
                continue;
            }
            if set.intersects(seen) {
                let mut both = set.clone();
                both.intersect_with(seen);
                return Err(format!(
                    "at {:?}: slots {:?} served by two routers' shards (one is router {})",
                    self.now,
                    both.spans().into_iter().take(4).collect::<Vec<_>>(),
                    router.client
                ));
            }
            seen.union_with(set);
        }
        Ok(())
    }

    fn router_at(&self, client: usize) -> Option<usize> {
        self.routers
            .iter()
            .position(|router| router.client == client)
    }

    fn reachable(&self, at: usize) -> bool {
        self.now >= self.etcd_down_until && self.now >= self.routers[at].cut_until
    }

    fn deliver(&mut self, message: Message) {
        match message {
            Message::ToEtcd {
                client,
                id,
                request,
            } => {
                let Some(at) = self.router_at(client) else {
                    return; // crashed since
                };
                if !self.reachable(at) {
                    return; // lost; the member times it out
                }
                let response = self.etcd.request((client, id), request, self.now);
                let delay = self.delay();
                self.post(
                    self.now + delay,
                    Message::ToRouter {
                        client,
                        id,
                        response,
                    },
                );
            }
            Message::Broken { client, id } => {
                let Some(at) = self.router_at(client) else {
                    return;
                };
                if let Some(until) = self.routers[at].paused_until {
                    self.post(until, Message::Broken { client, id });
                    return;
                }
                let failed = Response::Failed("watch stream broken".into());
                self.routers[at].member.handle(id, failed, self.now);
                self.flush(at);
            }
            Message::ToRouter {
                client,
                id,
                response,
            } => {
                let Some(at) = self.router_at(client) else {
                    return;
                };
                if !self.reachable(at) {
                    if matches!(response, Response::Events(_)) {
                        // The watch stream broke (its cut already ended
                        // the watch at etcd).
                        self.routers[at].member.handle(
                            id,
                            Response::Failed("watch broken".into()),
                            self.now,
                        );
                    }
                    return;
                }
                if let Some(until) = self.routers[at].paused_until {
                    // A stopped process reads its socket when continued.
                    self.post(
                        until,
                        Message::ToRouter {
                            client,
                            id,
                            response,
                        },
                    );
                    return;
                }
                self.routers[at].member.handle(id, response, self.now);
                self.flush(at);
            }
        }
    }

    fn flush(&mut self, at: usize) {
        let client = self.routers[at].client;
        while let Some((id, request)) = self.routers[at].member.poll_request() {
            let delay = self.delay();
            self.post(
                self.now + delay,
                Message::ToEtcd {
                    client,
                    id,
                    request,
                },
            );
        }
        while self.routers[at].member.poll_event().is_some() {}
    }

    fn fault(&mut self) {
        let live = self.routers.len();
        match self.rng.below(7) {
            0 if live > 1 => {
                let at = self.rng.index(live);
                let client = self.routers[at].client;
                self.routers.remove(at);
                self.etcd.take_watches(Some(client));
                if let Some(data) = &mut self.data {
                    data.crash_router(client, self.now);
                }
                self.stats.crashes += 1;
                self.log(format!("router {client} crashes"));
                if self.rng.chance(0.7) {
                    self.start_router();
                }
            }
            1 => {
                let at = self.rng.index(live);
                let ttl = self.config.lease_ttl_ms;
                let pause = self.rng.range(ttl / 2..=ttl * 2);
                self.routers[at].paused_until = Some(self.now + Duration::from_millis(pause));
                self.stats.pauses += 1;
                let client = self.routers[at].client;
                self.log(format!("router {client} paused for {pause} ms"));
            }
            2 => {
                let at = self.rng.index(live);
                let ttl = self.config.lease_ttl_ms;
                let cut = self.rng.range(ttl / 4..=ttl * 2);
                self.routers[at].cut_until = self.now + Duration::from_millis(cut);
                let client = self.routers[at].client;
                self.break_watches(Some(client));
                self.stats.cuts += 1;
                self.log(format!("router {client} cut from etcd for {cut} ms"));
            }
            3 => {
                let ttl = self.config.lease_ttl_ms;
                let down = self.rng.range(ttl / 4..=ttl * 2);
                self.etcd_down_until = self.now + Duration::from_millis(down);
                self.break_watches(None);
                self.stats.etcd_outages += 1;
                self.log(format!("etcd down for {down} ms"));
            }
            4 if live < ROUTERS_MAX => {
                self.start_router();
                self.stats.joins += 1;
            }
            5 if live > 1 => {
                let at = self.rng.index(live);
                if !self.routers[at].draining {
                    self.drain(at);
                }
            }
            6 => {
                if let Some(data) = &mut self.data {
                    data.fault(self.now);
                    let lines = std::mem::take(&mut data.lines);
                    for line in lines {
                        self.log(line);
                    }
                }
            }
            _ => {}
        }
    }

    /// The watch streams of `client` (or everyone's) break: etcd forgets
    /// them and each router hears of it (its client library reports the
    /// broken stream) after a delay.
    fn break_watches(&mut self, client: Option<usize>) {
        let broken = self.etcd.take_watches(client);
        for (client, id) in broken {
            let at = self.now + self.delay();
            self.post(at, Message::Broken { client, id });
        }
    }

    /// `imrouter cluster drain`: a key the controller reads.
    fn drain(&mut self, at: usize) {
        let Some(id) = self.routers[at].member.id() else {
            return;
        };
        self.routers[at].draining = true;
        self.stats.drains += 1;
        let key = format!(
            "{}drain/{id:016x}",
            self.routers[at].member.config().prefix()
        );
        let request = Request::Txn {
            compares: vec![],
            success: vec![crate::cluster::etcd::Op::Put {
                key,
                value: String::new(),
                lease: 0,
            }],
        };
        if self.now >= self.etcd_down_until {
            let _ = self.etcd.request((usize::MAX, 0), request, self.now);
        }
        let client = self.routers[at].client;
        self.log(format!("router {client} drained"));
    }

    fn serving(&mut self, at: usize) -> Option<&SlotSet> {
        let now = self.now;
        let router = &mut self.routers[at];
        if router.paused_until.is_some() || !router.member.lease_alive(now) {
            return None;
        }
        let version = router.member.version();
        if router.cache.as_ref().is_none_or(|(v, _)| *v != version) {
            router.cache = Some((version, router.member.serving(now)));
        }
        router.cache.as_ref().map(|(_, set)| set)
    }

    /// At most one router serves each slot.
    fn check_one_owner(&mut self) -> Result<(), String> {
        // (Scratch sets: this runs at every step.)
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.check_one_owner_with(&mut scratch);
        self.scratch = scratch;
        result
    }

    fn check_one_owner_with(&mut self, scratch: &mut [SlotSet]) -> Result<(), String> {
        let [seen, now_unserved, changed, ..] = scratch else {
            unreachable!("four scratch sets")
        };
        seen.clear();
        for at in 0..self.routers.len() {
            let Some(set) = self.serving(at) else {
                continue;
            };
            if set.intersects(seen) {
                let mut both = set.clone();
                both.intersect_with(seen);
                let views: Vec<String> = self
                    .routers
                    .iter()
                    .map(|r| format!("router {}: {}", r.client, r.member.describe()))
                    .collect();
                return Err(format!(
                    "at {:?}: slots {:?} served by two routers (one is router {}); {views:#?}",
                    self.now,
                    both.spans().into_iter().take(4).collect::<Vec<_>>(),
                    self.routers[at].client
                ));
            }
            seen.union_with(set);
        }
        // Only the slots whose state changed since the last step.
        now_unserved.fill_all();
        now_unserved.subtract(seen);
        if *now_unserved == self.unserved {
            return Ok(());
        }
        changed.copy_from(now_unserved);
        changed.subtract(&self.unserved);
        for slot in changed.iter() {
            self.unserved_since[slot as usize] = Some(self.now);
        }
        changed.copy_from(&self.unserved);
        changed.subtract(now_unserved);
        for slot in changed.iter() {
            if let Some(start) = self.unserved_since[slot as usize].take() {
                let gap = self.now.since(start).as_millis() as u64;
                self.stats.worst_gap_ms = self.stats.worst_gap_ms.max(gap);
            }
        }
        self.unserved.copy_from(now_unserved);
        Ok(())
    }

    /// After the faults: every slot served by one live router, the map
    /// naming live routers only, none of them draining.
    fn check_settled(&mut self) -> Result<(), String> {
        let mut seen = SlotSet::empty();
        for at in 0..self.routers.len() {
            if let Some(set) = self.serving(at) {
                seen.union_with(set);
            }
        }
        if seen.len() != SLOT_COUNT as usize {
            let mut missing = SlotSet::full();
            missing.subtract(&seen);
            return Err(format!(
                "at the end, slots {:?} are served by nobody",
                missing.spans().into_iter().take(4).collect::<Vec<_>>()
            ));
        }
        let ids: Vec<u64> = self.routers.iter().filter_map(|r| r.member.id()).collect();
        for router in &self.routers {
            let Some(map) = router.member.map() else {
                return Err(format!(
                    "router {} has no map: {}",
                    router.client,
                    router.member.describe()
                ));
            };
            for listed in map.routers() {
                if !ids.contains(&listed.id) {
                    let stored = self
                        .etcd
                        .get("/imrouter/sim/map")
                        .and_then(|kv| crate::cluster::map::SlotMap::decode(&kv.value).ok())
                        .map(|map| map.epoch());
                    let views: Vec<String> = self
                        .routers
                        .iter()
                        .map(|r| {
                            format!(
                                "router {} id {:x?} epoch {:?} controller {}",
                                r.client,
                                r.member.id(),
                                r.member.map().map(|m| m.epoch()),
                                r.member.is_controller()
                            )
                        })
                        .collect();
                    return Err(format!(
                        "router {}'s map (epoch {}) names router {:x}, which is gone (etcd has epoch {stored:?}; {views:?})",
                        router.client,
                        map.epoch(),
                        listed.id
                    ));
                }
            }
        }
        if let Some(map) = self.routers.iter().find_map(|r| r.member.map()) {
            self.stats.epochs = map.epoch();
        }
        Ok(())
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64) -> Result<ControlStats, (ControlConfig, String, Vec<String>)> {
    let mut sim = ControlSim::new(seed);
    match sim.run() {
        Ok(()) => Ok(sim.stats.clone()),
        Err(error) => Err((sim.config.clone(), error, sim.trace.clone())),
    }
}

/// Runs one seed of the whole cluster (control plane, shards, nodes).
#[allow(clippy::type_complexity)]
pub fn run_cluster_seed(
    seed: u64,
) -> Result<(ControlStats, DataStats), (ControlConfig, String, Vec<String>)> {
    let mut sim = ControlSim::with_data(seed);
    match sim.run() {
        Ok(()) => Ok((sim.stats.clone(), sim.data_stats().unwrap_or_default())),
        Err(error) => Err((sim.config.clone(), error, sim.trace.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds that failed once: 1115, a watch whose request was lost in a
    /// partition was never retried (a watch now times out until etcd
    /// answers it), so the router kept an old map; 2753, a registration
    /// whose answer was lost was retried forever against its own key (the
    /// key is now recognised as ours); 4986, two routers served the same
    /// slots: a chain of failovers handed slots on from gone routers that
    /// had never served them while their first owner, live but behind,
    /// still did (a slot from a gone router now waits for every live
    /// router); 4067, the simulation's own mistake: events of one watch
    /// arrived out of order, which etcd never does.
    #[test]
    fn control_plane_seeds() {
        for seed in [1115, 2753, 4986, 4067].into_iter().chain(0..6) {
            if let Err((config, error, trace)) = run_seed(seed) {
                let tail: Vec<&String> = trace.iter().rev().take(30).rev().collect();
                panic!("seed {seed}: {error}\n{config:?}\n{tail:#?}");
            }
        }
    }
}
