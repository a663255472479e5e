//! `policy`: concurrent logins of the same users on every node.
//!
//! At the start every node opens one session of each contested user
//! (`policy::contested_count` of them), with a device and platform that
//! follow from (user, node), and confirms its opens with probes. When every
//! node has, node 0 asks the router where each contested user is (Locate).
//! After the drain, `policy::judge` checks that every open ended either in
//! the final table or kicked on its node, and that the final table obeys
//! `--login-policy` (which must be the router's).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use imrouter::wire::fb;

use crate::policy;
use crate::sim::{Schedule, SimNode};

/// Locate queries node 0 keeps in flight.
const LOCATES_IN_FLIGHT: usize = 256;

pub async fn run(node: Rc<SimNode>, _schedule: Schedule) {
    let population = node.plan().population;
    let contested = policy::contested_count(population.users);
    for user in 0..contested {
        let (device, platform) = policy::open_of(user, node.index);
        let id = policy::contested_id(user);
        node.send_raw_open(&id, device, fb::Platform(platform), 1)
            .await;
    }
    node.probe_all_shards();
    node.wait_for_probes().await;
    let shared = &node.worker.shared;
    shared.policy_confirmed.fetch_add(1, Ordering::SeqCst);
    if node.index != 0 {
        return;
    }
    while shared.policy_confirmed.load(Ordering::SeqCst) < u64::from(population.nodes) {
        if shared.failed.load(Ordering::SeqCst) {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let mut asked = 0;
    while asked < contested {
        let answered = node.policy.borrow().located.len();
        if (asked as usize) < answered + LOCATES_IN_FLIGHT {
            node.send_locate(&policy::contested_id(asked), u64::from(asked));
            asked += 1;
            continue;
        }
        node.policy_changed.notified().await;
    }
}
