//! Several routers as one service: the slot map (which router and shard
//! owns each slot), the controller's plans for it, and each router's
//! membership in the cluster (its lease, fencing, the election, the map's
//! watch), as sans-IO state machines. etcd holds the cluster's state; a
//! router talks to it through [`member::Member`]'s requests and
//! responses, which the real etcd client (a control-plane thread) and the
//! simulation's fake etcd both carry out. docs/CLUSTER.md describes the
//! design.

pub mod etcd;
pub mod map;
pub mod member;
pub mod plan;
