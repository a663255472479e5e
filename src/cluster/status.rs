//! `imrouter cluster status`: the cluster as etcd holds it, for people.
//! Sans-IO: [`render`] turns the keys under the cluster's prefix (and each
//! router's lease time left) into the report; the command fetches them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::etcd::Kv;
use super::map::{RouterId, SlotMap};

/// One registered router, as the keys say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterRow {
    pub id: RouterId,
    pub name: String,
    pub addr: String,
    pub shards: u16,
    pub registered_at: i64,
    pub applied: Option<u64>,
    pub nodes: Option<u64>,
    pub draining: bool,
}

/// What the keys under `prefix` say.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub routers: Vec<RouterRow>,
    pub map: Option<SlotMap>,
    /// Drain keys of routers that are not registered.
    pub stale_drains: Vec<RouterId>,
}

fn id_after(key: &str, prefix: &str, what: &str) -> Option<RouterId> {
    let hex = key.strip_prefix(prefix)?.strip_prefix(what)?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

impl ClusterState {
    pub fn from_kvs(prefix: &str, kvs: &[Kv]) -> ClusterState {
        let mut routers: BTreeMap<RouterId, RouterRow> = BTreeMap::new();
        let mut applied = BTreeMap::new();
        let mut drains = Vec::new();
        let mut map = None;
        for kv in kvs {
            if let Some(id) = id_after(&kv.key, prefix, "routers/") {
                let mut words = kv.value.split(' ');
                let name = words.next().unwrap_or("").to_owned();
                let addr = words.next().unwrap_or("").to_owned();
                let shards = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                routers.insert(
                    id,
                    RouterRow {
                        id,
                        name,
                        addr,
                        shards,
                        registered_at: kv.create_revision,
                        applied: None,
                        nodes: None,
                        draining: false,
                    },
                );
            } else if let Some(id) = id_after(&kv.key, prefix, "applied/") {
                let mut words = kv.value.split(' ');
                let epoch = words.next().and_then(|w| w.parse::<u64>().ok());
                let nodes = words.next().and_then(|w| w.parse::<u64>().ok());
                applied.insert(id, (epoch, nodes));
            } else if let Some(id) = id_after(&kv.key, prefix, "drain/") {
                drains.push(id);
            } else if kv.key.strip_prefix(prefix) == Some("map") {
                map = SlotMap::decode(&kv.value).ok();
            }
        }
        for (id, (epoch, nodes)) in applied {
            if let Some(row) = routers.get_mut(&id) {
                row.applied = epoch;
                row.nodes = nodes;
            }
        }
        let mut stale_drains = Vec::new();
        for id in drains {
            match routers.get_mut(&id) {
                Some(row) => row.draining = true,
                None => stale_drains.push(id),
            }
        }
        ClusterState {
            routers: routers.into_values().collect(),
            map,
            stale_drains,
        }
    }

    /// The controller: the registration with the lowest create revision.
    pub fn controller(&self) -> Option<&RouterRow> {
        self.routers.iter().min_by_key(|row| row.registered_at)
    }

    /// The router named `who` (its name, or its id in hex).
    pub fn find(&self, who: &str) -> Option<&RouterRow> {
        let id = u64::from_str_radix(who, 16).ok();
        self.routers
            .iter()
            .find(|row| row.name == who || Some(row.id) == id)
    }
}

/// The report: one line for the cluster, one per router, then anything
/// that needs an operator's eye. `lease_left_ms` is each router's lease
/// time left, as etcd said.
pub fn render(
    cluster: &str,
    state: &ClusterState,
    lease_left_ms: &BTreeMap<RouterId, i64>,
) -> String {
    let mut out = String::new();
    let epoch = state.map.as_ref().map(|map| map.epoch());
    let controller = state.controller();
    let _ = writeln!(
        out,
        "cluster {cluster}: {} routers, map epoch {}, controller {}",
        state.routers.len(),
        epoch.map_or("none".to_string(), |e| e.to_string()),
        controller.map_or("none".to_string(), |c| format!(
            "{} ({:016x})",
            c.name, c.id
        )),
    );
    let _ = writeln!(
        out,
        "{:<16}  {:<12} {:<21} {:>6} {:>6} {:>6} {:>8} {:>5} {:>10}  state",
        "router", "name", "addr", "shards", "slots", "ranges", "applied", "nodes", "lease left"
    );
    let mut owned_by_gone = 0;
    if let Some(map) = &state.map {
        for (router, count) in map.routers().iter().zip(map.slots_per_router()) {
            if !state.routers.iter().any(|row| row.id == router.id) {
                owned_by_gone += count;
            }
        }
    }
    for row in &state.routers {
        let (slots, ranges) = match &state.map {
            Some(map) => (
                map.slots_of(row.id).len(),
                map.ranges().iter().filter(|r| r.router == row.id).count(),
            ),
            None => (0, 0),
        };
        let mut health = Vec::new();
        if controller.is_some_and(|c| c.id == row.id) {
            health.push("controller".to_string());
        }
        match (row.applied, epoch) {
            (Some(applied), Some(epoch)) if applied >= epoch => health.push("in sync".into()),
            (Some(applied), Some(_)) => health.push(format!("behind (applied {applied})")),
            (None, Some(_)) => health.push("has applied no map".into()),
            _ => {}
        }
        if row.draining {
            health.push(if slots == 0 { "drained" } else { "draining" }.into());
        }
        let lease = lease_left_ms.get(&row.id).map_or("?".to_string(), |ms| {
            format!("{:.1} s", *ms as f64 / 1000.0)
        });
        let _ = writeln!(
            out,
            "{:016x}  {:<12} {:<21} {:>6} {:>6} {:>6} {:>8} {:>5} {:>10}  {}",
            row.id,
            row.name,
            row.addr,
            row.shards,
            slots,
            ranges,
            row.applied.map_or("-".into(), |a| a.to_string()),
            row.nodes.map_or("-".into(), |n| n.to_string()),
            lease,
            health.join(", ")
        );
    }
    if owned_by_gone > 0 {
        let _ = writeln!(
            out,
            "{owned_by_gone} slots are owned by routers no longer registered (the controller moves them)"
        );
    }
    for id in &state.stale_drains {
        let _ = writeln!(out, "drain key of a router not registered: {id:016x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: create,
            lease: 0,
        }
    }

    #[test]
    fn the_report_names_the_controller_each_routers_slots_and_health() {
        let p = "/imrouter/demo/";
        let map = crate::cluster::plan::initial(&[
            crate::cluster::map::RouterInfo {
                id: 0xa,
                name: "r1".into(),
                addr: "10.0.0.1:7800".into(),
                shards: 1,
            },
            crate::cluster::map::RouterInfo {
                id: 0xb,
                name: "r2".into(),
                addr: "10.0.0.2:7800".into(),
                shards: 1,
            },
        ]);
        let kvs = vec![
            kv(&format!("{p}routers/{:016x}", 0xa), "r1 10.0.0.1:7800 1", 5),
            kv(&format!("{p}routers/{:016x}", 0xb), "r2 10.0.0.2:7800 1", 7),
            kv(&format!("{p}applied/{:016x}", 0xa), "1 3", 9),
            kv(&format!("{p}applied/{:016x}", 0xb), "0 3", 9),
            kv(&format!("{p}drain/{:016x}", 0xb), "", 10),
            kv(&format!("{p}map"), &map.encode(), 8),
        ];
        let state = ClusterState::from_kvs(p, &kvs);
        assert_eq!(state.controller().map(|c| c.name.as_str()), Some("r1"));
        assert_eq!(state.find("r2").map(|r| r.id), Some(0xb));
        assert_eq!(state.find("000000000000000a").map(|r| r.id), Some(0xa));
        let leases = BTreeMap::from([(0xa, 1500), (0xb, 900)]);
        let report = render("demo", &state, &leases);
        assert!(report.starts_with("cluster demo: 2 routers, map epoch 1, controller r1"));
        assert!(report.contains("controller, in sync"), "{report}");
        assert!(report.contains("behind (applied 0), draining"), "{report}");
        assert!(report.contains("1.5 s"), "{report}");
    }
}
