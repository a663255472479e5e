//! `soak`: a long run (scripts/soak.sh) of chat traffic and session churn
//! (as `churn`, on every node but node 0) with node 0's connection cut
//! every minute, alternately for
//! a quarter of the reconnect grace (the router must resume the stream)
//! and for the grace plus a second (it must give the stream up, answer
//! what was parked Offline, and take the node's resync). The oracle judges
//! every message of the whole run.

use std::rc::Rc;
use std::time::Duration;

use super::{chat, churn, failover};
use crate::config::Plan;
use crate::sim::{Schedule, SimNode};

/// Time between two cuts.
pub const CUT_EVERY: Duration = Duration::from_secs(60);

/// How many cuts a run of `plan` makes: one per minute of traffic, the
/// last one ending before the traffic does.
pub fn cuts(plan: &Plan) -> usize {
    let span = Duration::from_secs_f64(plan.duration_s + plan.warmup_s);
    let long = Duration::from_millis(plan.reconnect_grace_ms) + Duration::from_secs(3);
    (1..).take_while(|&n| CUT_EVERY * n + long < span).count()
}

pub async fn run(node: Rc<SimNode>, schedule: Schedule) {
    if node.index == failover::VICTIM {
        // The node that is cut only chats: a churn batch's probes do not
        // survive a stream that is given up.
        glommio::spawn_local(cut_every_minute(node.clone(), schedule)).detach();
        return chat::run(node, schedule).await;
    }
    churn::run(node, schedule).await
}

async fn cut_every_minute(node: Rc<SimNode>, schedule: Schedule) {
    let grace_ns = node.plan().reconnect_grace_ms * 1_000_000;
    for number in 1..=cuts(node.plan()) {
        let at_ns = schedule.start_ns + CUT_EVERY.as_nanos() as u64 * number as u64;
        let now = node.worker.now_ns();
        if at_ns > now {
            glommio::timer::sleep(Duration::from_nanos(at_ns - now)).await;
        }
        let resume_expected = number % 2 == 1;
        let outage_ns = if resume_expected {
            grace_ns / 4
        } else {
            grace_ns + 1_000_000_000
        };
        let shared = &node.worker.shared;
        match failover::cut(&node, outage_ns).await {
            Ok((resumed, down_ns)) => {
                let line = format!(
                    "cut {number} at {:.2} s for {:.2} s: resumed={resumed} (expected {resume_expected})",
                    (down_ns - schedule.start_ns) as f64 / 1e9,
                    outage_ns as f64 / 1e9
                );
                shared.reconnect_log.lock().expect("log").push(line.clone());
                if resumed != resume_expected {
                    shared.fail(format!("soak: {line}"));
                }
            }
            Err(e) => shared.fail(format!("soak cut {number}: {e}")),
        }
    }
}
