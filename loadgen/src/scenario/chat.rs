//! `chat`: one-to-one messages from every node to users of the others.
//!
//! With `--rate R` each node sends R/nodes messages per second on a fixed
//! schedule. Each message carries the time it was due and latency is
//! measured from then, so a router that stalls delays the due messages and
//! the stall shows in the latency instead of being hidden (no coordinated
//! omission). Senders wake on their thread's pacer tick (`--tick-us`) and
//! send everything due by then: a message leaves at most one tick after it
//! was due, and that delay counts in its latency (reported separately as
//! "sent late"). With `--rate max` each node keeps `--window` messages (in
//! expected events) in flight and sends as fast as they complete.

use std::rc::Rc;

use crate::config::Rate;
use crate::sim::{Schedule, SimNode};

/// Most messages one node sends before it lets its readers run.
const BURST_MAX: u64 = 256;

pub async fn run(node: Rc<SimNode>, schedule: Schedule) {
    drive(node, schedule, SimNode::send_message).await
}

/// Sends with `send` (a message due at a time, measured or not) on the
/// plan's schedule: open loop at `--rate`, or closed loop with `--window`.
pub(super) async fn drive(node: Rc<SimNode>, schedule: Schedule, send: fn(&SimNode, u64, bool)) {
    match node.plan().rate {
        Rate::PerSecond(rate) => {
            open_loop(
                &node,
                schedule,
                rate / node.plan().population.nodes as f64,
                send,
            )
            .await
        }
        Rate::Max => closed_loop(&node, schedule, send).await,
    }
}

async fn open_loop(
    node: &SimNode,
    schedule: Schedule,
    rate_per_node: f64,
    send: fn(&SimNode, u64, bool),
) {
    let interval_ns = 1e9 / rate_per_node;
    let due = |k: u64| schedule.start_ns + (k as f64 * interval_ns) as u64;
    let mut k = 0u64;
    loop {
        let now = node.worker.now_ns();
        if due(k) >= schedule.end_ns || now >= schedule.end_ns {
            return;
        }
        let mut burst = 0;
        while due(k) <= now && due(k) < schedule.end_ns && burst < BURST_MAX {
            send(node, due(k), due(k) >= schedule.measure_from_ns);
            k += 1;
            burst += 1;
        }
        for link in &node.links {
            link.wait_for_room().await;
        }
        if due(k) > node.worker.now_ns() {
            // The thread's pacer rings every tick; waiting for it instead of
            // a timer per message keeps the generator's own wake-ups (and
            // the router's) from growing with the rate.
            node.worker.tick.notified().await;
        } else {
            glommio::executor().yield_now().await;
        }
    }
}

async fn closed_loop(node: &SimNode, schedule: Schedule, send: fn(&SimNode, u64, bool)) {
    let window = u64::from(node.plan().window);
    loop {
        let now = node.worker.now_ns();
        if now >= schedule.end_ns {
            return;
        }
        let mut burst = 0;
        while node.in_flight_events() < window && burst < BURST_MAX {
            send(node, now, now >= schedule.measure_from_ns);
            burst += 1;
        }
        for link in &node.links {
            link.wait_for_room().await;
        }
        glommio::executor().yield_now().await;
    }
}
