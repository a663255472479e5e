//! Scenarios: what the simulated nodes do once their sessions are open.
//! Each is one module with a `run` that drives one node until the end of
//! the schedule; the oracle judges the logs afterwards.

pub mod chat;
pub mod churn;
pub mod failover;
pub mod fanout;
pub mod policy;
pub mod restart;
pub mod soak;

use std::rc::Rc;

use crate::config::ScenarioName;
use crate::sim::{Schedule, SimNode};

/// Runs the plan's scenario on one node.
pub async fn run(node: Rc<SimNode>, schedule: Schedule) {
    match node.plan().scenario {
        ScenarioName::Chat => chat::run(node, schedule).await,
        ScenarioName::Churn => churn::run(node, schedule).await,
        ScenarioName::Fanout => fanout::run(node, schedule).await,
        ScenarioName::Policy => policy::run(node, schedule).await,
        ScenarioName::Failover => failover::run(node, schedule).await,
        ScenarioName::Soak => soak::run(node, schedule).await,
        ScenarioName::Restart => restart::run(node, schedule).await,
        // Refused by `Plan::from_args`: they run in `cluster::main`.
        ScenarioName::Cluster
        | ScenarioName::RouterKill
        | ScenarioName::RouterDrain
        | ScenarioName::RouterPause
        | ScenarioName::Partition
        | ScenarioName::Rebalance => unreachable!("a cluster scenario in the glommio generator"),
    }
}
