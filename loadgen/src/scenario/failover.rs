//! `failover`: chat traffic while one node's connection is cut twice.
//!
//! Node 0 (the victim) runs the chat workload like every node, and twice
//! cuts its connection: it stops sending, acknowledges what it processed,
//! half-closes the socket and drops whatever arrives after that unread
//! (as a crashed network path would), then reconnects as the same process.
//!
//! - Cut 1, at a fifth of the traffic, lasts a quarter of the router's
//!   `--reconnect-grace-ms`: the router must resume the stream. Messages
//!   to the victim's users sent meanwhile are parked and delivered after
//!   the reconnect; frames lost in the cut are sent again. The oracle
//!   must find nothing lost and nothing duplicated.
//! - Cut 2, at half of the traffic, lasts the grace plus one second: the
//!   router gives the stream up. Every message parked for the victim's
//!   users must come back to its sender as Offline (NodeGone), later ones
//!   as Offline (NoSession); the victim reconnects, is told the stream is
//!   new, resyncs its sessions (SessionSync), and traffic to it resumes.
//!
//! The oracle learns of the purge and the resync as session changes (see
//! `sim::imrouter::reconnect`), so a message is judged against the
//! sessions it could have seen.

use std::rc::Rc;
use std::time::Duration;

use super::chat;
use crate::sim::{Schedule, SimNode};

/// The node whose connection is cut.
pub const VICTIM: u32 = 0;

pub async fn run(node: Rc<SimNode>, schedule: Schedule) {
    if node.index == VICTIM {
        glommio::spawn_local(cuts(node.clone(), schedule)).detach();
    }
    chat::drive(node, schedule, SimNode::send_message).await
}

async fn cuts(node: Rc<SimNode>, schedule: Schedule) {
    let span = schedule.end_ns - schedule.start_ns;
    let grace_ns = node.plan().reconnect_grace_ms * 1_000_000;
    let plan = [
        (1, schedule.start_ns + span / 5, grace_ns / 4, true),
        (
            2,
            schedule.start_ns + span / 2,
            grace_ns + 1_000_000_000,
            false,
        ),
    ];
    for (number, at_ns, outage_ns, resume_expected) in plan {
        let now = node.worker.now_ns();
        if at_ns > now {
            glommio::timer::sleep(Duration::from_nanos(at_ns - now)).await;
        }
        match cut(&node, outage_ns).await {
            Ok((resumed, down_ns)) => {
                let line = format!(
                    "cut {number} at {:.2} s for {:.2} s: resumed={resumed} (expected {resume_expected})",
                    (down_ns - schedule.start_ns) as f64 / 1e9,
                    outage_ns as f64 / 1e9
                );
                let shared = &node.worker.shared;
                shared.reconnect_log.lock().expect("log").push(line.clone());
                if resumed != resume_expected {
                    shared.fail(format!("failover: {line}"));
                }
            }
            Err(e) => node
                .worker
                .shared
                .fail(format!("failover cut {number}: {e}")),
        }
    }
}

/// Cuts the victim's connection, waits `outage_ns`, reconnects. Returns
/// whether the router resumed the stream, and when the cut began.
pub async fn cut(node: &Rc<SimNode>, outage_ns: u64) -> Result<(bool, u64), String> {
    let link = node.links[0].clone();
    link.set_down(); // No more messages from this node.
    link.expect_end.set(true);
    // Nothing read from now on is processed, and everything processed so
    // far is acknowledged.
    link.discard.set(true);
    let ack = {
        let mut guard = link.core.borrow_mut();
        let core = guard.as_mut().expect("an imrouter link");
        core.flush_ack();
        core.take_transmit()
    };
    link.push_control(&ack);
    let flushed = async {
        while link.backlog() > 0 && !link.is_closed() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    };
    futures_lite::future::or(flushed, glommio::timer::sleep(Duration::from_secs(5))).await;
    let down_ns = node.worker.now_ns();
    node.failures.borrow_mut().push(down_ns);
    link.shutdown_write();
    // The router reads to our end, suspends the connection and closes it.
    let ended = link.ended.wait_until(|| link.is_closed());
    futures_lite::future::or(ended, glommio::timer::sleep(Duration::from_secs(10))).await;
    if !link.is_closed() {
        return Err("the router did not close the cut connection".into());
    }
    let elapsed = node.worker.now_ns() - down_ns;
    if outage_ns > elapsed {
        glommio::timer::sleep(Duration::from_nanos(outage_ns - elapsed)).await;
    }
    let resumed = crate::sim::imrouter::reconnect(node.clone(), link, down_ns).await?;
    Ok((resumed, down_ns))
}
