//! `churn`: a login/logout storm while messages flow.
//!
//! Besides the chat traffic, every node toggles random sessions it hosts
//! (SessionClose, later SessionOpen again) at `--churn-rate`/nodes per
//! second, in batches of one millisecond. After each batch it sends one
//! probe per router shard the batch touched; when the probes come back the
//! batch is known to be applied. The oracle uses those windows to decide,
//! per message, which sessions it may or must have reached: a user that
//! logged out must get Offline, one that logged in must receive.
//!
//! With `--churn-rate max` a node sends batches of `BATCH_MAX` changes as
//! fast as the router confirms them, with `BATCHES_IN_FLIGHT` batches
//! outstanding: the figure for session operations per second.

use std::rc::Rc;
use std::time::Duration;

use crate::config::Rate;
use crate::oracle::SessionChange;
use crate::sim::{Schedule, SimNode, WorkerStats};
use crate::workload;

use super::chat;

const TICK: Duration = Duration::from_millis(1);
const BATCH_MAX: u64 = 512;
const BATCHES_IN_FLIGHT: usize = 8;

pub async fn run(node: Rc<SimNode>, schedule: Schedule) {
    let churner = glommio::spawn_local(churn(node.clone(), schedule));
    chat::run(node.clone(), schedule).await;
    churner.await;
    // Let the last batches be confirmed, so their windows are closed.
    node.wait_for_probes().await;
}

async fn churn(node: Rc<SimNode>, schedule: Schedule) {
    let nodes = node.plan().population.nodes as f64;
    let rate = node.plan().churn_rate;
    let mut done = 0u64;
    loop {
        let now = node.worker.now_ns();
        if now >= schedule.end_ns {
            return;
        }
        let count = match rate {
            Rate::PerSecond(rate) => {
                let due = ((now - schedule.start_ns) as f64 * rate / nodes / 1e9) as u64;
                due.saturating_sub(done).min(BATCH_MAX * 16)
            }
            Rate::Max => {
                if node.churn.borrow().batch_pending.len() < BATCHES_IN_FLIGHT {
                    BATCH_MAX
                } else {
                    0
                }
            }
        };
        if count > 0 {
            send_batch(&node, count, now >= schedule.measure_from_ns);
            done += count;
        }
        for link in &node.links {
            link.wait_for_room().await;
        }
        match rate {
            Rate::PerSecond(_) => glommio::timer::sleep(TICK).await,
            Rate::Max if count == 0 => {
                let pending = || node.churn.borrow().batch_pending.len() < BATCHES_IN_FLIGHT;
                node.probes_changed.wait_until(pending).await;
            }
            Rate::Max => glommio::executor().yield_now().await,
        }
    }
}

/// Toggles `count` random sessions of this node, then probes the shards
/// they belong to.
fn send_batch(node: &SimNode, count: u64, measured: bool) {
    let population = node.plan().population;
    let nodes = population.nodes;
    let mut touched = vec![false; node.shard_count];
    let batch = {
        let mut churn = node.churn.borrow_mut();
        churn.next_batch += 1;
        churn.next_batch
    };
    for _ in 0..count {
        let (user, device) = {
            let mut rng = node.rng.borrow_mut();
            let device = rng.below(population.devices_per_user as u64) as u8;
            let first = (node.index + nodes - u32::from(device) % nodes) % nodes;
            if first >= population.users {
                continue;
            }
            let hosted = (population.users - 1 - first) / nodes + 1;
            (first + nodes * rng.below(hosted as u64) as u32, device)
        };
        let session = population.session_index(user, device);
        let open = {
            let mut churn = node.churn.borrow_mut();
            // A closed session is opened again; an open one is closed.
            let open = churn.closed.remove(&session);
            if !open {
                churn.closed.insert(session);
            }
            let change = SessionChange {
                session,
                open,
                sent_ns: node.worker.now_ns(),
                confirmed_ns: u64::MAX,
            };
            churn.changes.push((change, batch));
            open
        };
        node.send_session_op(user, device, open);
        let shard = imrouter::placement::shard_for_user(&workload::user_id(user), node.shard_count);
        touched[shard] = true;
    }
    let probes: Vec<u64> = touched
        .iter()
        .enumerate()
        .filter(|(_, &touched)| touched)
        .map(|(shard, _)| node.send_probe(shard))
        .collect();
    let mut churn = node.churn.borrow_mut();
    for &probe in &probes {
        churn.probe_batch.insert(probe, batch);
    }
    churn.batch_pending.insert(batch, (probes.len() as u32, 0));
    if measured {
        WorkerStats::add(&node.worker.stats.session_ops_measured, count);
    }
}
