//! Several routers as one service: the slot map (which router and shard
//! owns each slot), the controller's plans for it, and each router's
//! membership in the cluster (its lease, fencing, the election, the map's
//! watch), as sans-IO state machines. etcd holds the cluster's state; a
//! router talks to it through [`member::Member`]'s requests and
//! responses, which the real etcd client (a control-plane thread) and the
//! simulation's fake etcd both carry out. docs/CLUSTER.md describes the
//! design.

#[cfg(feature = "cluster")]
pub mod control;
pub mod etcd;
pub mod local;
pub mod map;
pub mod member;
pub mod nodes;
pub mod plan;
pub mod status;
pub mod view;

use member::MemberConfig;

/// The member's settings from the router's configuration.
pub fn member_config(config: &crate::config::Config) -> Option<(Vec<String>, MemberConfig)> {
    let cluster = config.cluster.as_ref()?;
    Some((
        cluster.etcd.clone(),
        MemberConfig {
            cluster: cluster.cluster.clone(),
            name: cluster.name.clone(),
            addr: cluster.advertise.clone(),
            shards: config.shard_count() as u16,
            lease_ttl_ms: cluster.lease_ttl_ms,
            rebalance_batch: cluster.rebalance_batch_slots,
            rebalance_interval_ms: cluster.rebalance_interval_ms,
        },
    ))
}
