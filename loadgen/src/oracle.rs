//! The correctness oracle: given what every simulated node sent, what every
//! node observed, and where every session was at every moment, decide per
//! message whether it was delivered exactly once to the right node and
//! devices, or got the right verdict.
//!
//! The generator only appends to logs while it runs; this module reads them
//! once, after the drain. It has no I/O and is tested on its own.
//!
//! # Session timelines
//!
//! A session changes when its node sends SessionOpen or SessionClose, and
//! the change takes effect at the owner shard some time later. The
//! generator confirms changes with probes (docs/PROTOCOL.md, "Confirming an
//! open"), so each change is known to have taken effect within
//! `[sent_ns, confirmed_ns]`. A message processed somewhere in `[from, to]`
//! may have seen any state whose changes were sent before `to`, and must
//! have seen every change confirmed before `from`. A session is then
//! certainly present, certainly absent, or either, for that message.

use std::collections::HashMap;

use crate::workload::{message_id, Population};

/// Wire verdict values (`fb::Verdict`), kept as numbers in the logs.
pub mod verdict {
    pub const ROUTED: u8 = 0;
    pub const OFFLINE: u8 = 1;
    pub const BUSY: u8 = 3;
    /// "No session" during the router's warm-up (--warmup-ms).
    pub const UNKNOWN: u8 = 4;
}

/// Wire reason values (`fb::Reason`).
pub mod reason {
    pub const NONE: u16 = 0;
    pub const NO_SESSION: u16 = 1;
    pub const NO_SUCH_DEVICE: u16 = 2;
    pub const DESTINATION_BUSY: u16 = 4;
    pub const PARTIAL: u16 = 5;
    /// Every destination node's connection was gone (or given up after
    /// its reconnect grace) before the Deliver reached it.
    pub const NODE_GONE: u16 = 3;
    /// A Fanout while the router coordinates too many.
    pub const ROUTER_BUSY: u16 = 9;
}

/// No `to_device`.
pub const ALL_DEVICES: u8 = u8::MAX;

/// One message a node sent; its index in the node's log is its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub sent_ns: u64,
    /// An online user index, or an offline one when `offline`.
    pub user: u32,
    pub offline: bool,
    /// A device index, or `ALL_DEVICES`.
    pub to_device: u8,
    /// Sent after the warm-up: counted in throughput.
    pub measured: bool,
    /// A Fanout (its recipients are `workload::Group::of` its id).
    pub fanout: bool,
}

/// One thing a node received about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub id: u64,
    pub at_ns: u64,
    pub kind: ObservedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedKind {
    /// A Deliver (or, for NATS, a message) received by `node`.
    Deliver {
        node: u32,
        /// The recipient it named; `None` when not an online user's id.
        user: Option<u32>,
        /// The devices it listed, as a bit mask; bit 63 is set for a device
        /// id the generator never uses.
        devices: u64,
        /// The payload's filler matched its message id.
        intact: bool,
    },
    /// A Status received by the sender.
    Verdict { verdict: u8, reason: u16 },
    /// A Fanout's Deliver received by `node`; `ok` when it listed exactly
    /// the members (and devices) that node hosts.
    FanoutDeliver { node: u32, ok: bool, intact: bool },
    /// A Fanout's Status; `ok` when its verdict and offline list were right.
    FanoutVerdict { ok: bool },
}

/// A session change, as logged by the node that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionChange {
    pub session: u64,
    pub open: bool,
    pub sent_ns: u64,
    /// When a probe proved it applied; `u64::MAX` if never proved.
    pub confirmed_ns: u64,
}

/// Whether a session existed for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Present,
    Absent,
    Either,
}

/// Every session's history. Sessions with no change were present all along.
#[derive(Debug, Default)]
pub struct Timelines {
    changes: HashMap<u64, Vec<SessionChange>>,
}

impl Timelines {
    /// Builds the timelines from the nodes' change logs; each session's
    /// changes come from one node and are in order.
    pub fn new(changes: impl IntoIterator<Item = SessionChange>) -> Self {
        let mut timelines = Timelines::default();
        for change in changes {
            timelines
                .changes
                .entry(change.session)
                .or_default()
                .push(change);
        }
        for list in timelines.changes.values_mut() {
            list.sort_by_key(|change| change.sent_ns);
        }
        timelines
    }

    /// Whether `session` existed at the moment a message processed between
    /// `from_ns` and `to_ns` was routed.
    pub fn presence(&self, session: u64, from_ns: u64, to_ns: u64) -> Presence {
        let Some(changes) = self.changes.get(&session) else {
            return Presence::Present;
        };
        let state_after = |applied: usize| applied == 0 || changes[applied - 1].open;
        let surely_applied = changes
            .iter()
            .take_while(|c| c.confirmed_ns <= from_ns)
            .count();
        let maybe_applied = changes.iter().take_while(|c| c.sent_ns < to_ns).count();
        let first = state_after(surely_applied);
        if (surely_applied..=maybe_applied.max(surely_applied)).all(|k| state_after(k) == first) {
            if first {
                Presence::Present
            } else {
                Presence::Absent
            }
        } else {
            Presence::Either
        }
    }
}

/// The oracle's counters. A message counts once in `delivered`, `offline`
/// or `busy` when its outcome was right, and once in each fault category it
/// shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    /// Delivered exactly once to every node and device it had to reach.
    pub delivered: u64,
    /// Answered with the right Offline verdict.
    pub offline: u64,
    /// Answered Busy (legitimate when the router is overloaded).
    pub busy: u64,
    /// Neither delivered nor answered (or a copy it had to reach missing).
    pub lost: u64,
    /// Delivered twice to a node or device, or answered twice.
    pub duplicated: u64,
    /// Delivered to a node, user or device it was not for.
    pub misrouted: u64,
    /// Answered with a verdict that contradicts what happened.
    pub wrong_verdict: u64,
    /// Delivered with a payload that was not the one sent.
    pub corrupted: u64,
    /// Observations for messages nobody sent.
    pub unknown: u64,
    /// Measured (post warm-up) messages with a right outcome.
    pub measured_ok: u64,
    /// Policy scenario: contested users, Kicks received, and users whose
    /// final sessions or Kicks contradict the opens or the login policy.
    pub contested_users: u64,
    pub kicks: u64,
    pub policy_violations: u64,
    /// Neither delivered nor answered, but the sender's own connection
    /// failed within `LINK_FAILURE_WINDOW_NS` after sending it: the sender
    /// sees that failure as the outcome (failover, restart).
    pub link_failed: u64,
}

impl Tally {
    /// Whether any fault was seen.
    pub fn has_faults(&self) -> bool {
        self.lost
            + self.duplicated
            + self.misrouted
            + self.wrong_verdict
            + self.corrupted
            + self.unknown
            + self.policy_violations
            > 0
    }
}

/// What the check needs besides the logs.
#[derive(Debug, Clone, Copy)]
pub struct CheckParams {
    pub population: Population,
    /// Every Route asked for a verdict.
    pub ack: bool,
    /// Fanout group sizes and offline share (see `workload::Group`).
    pub group_sizes: &'static [u32],
    pub offline_ratio: f64,
    /// The end of the drain: messages not resolved by then are lost.
    pub end_ns: u64,
}

/// A message without any outcome counts as `link_failed`, not `lost`, when
/// its sender's connection went down at most this long after it was sent.
pub const LINK_FAILURE_WINDOW_NS: u64 = 2_000_000_000;

/// Checks every message. `sent[node]` is that node's log (index = seq);
/// `failures[node]`, when given, the times its connection went down.
pub fn check(
    params: &CheckParams,
    sent: &[Vec<Sent>],
    mut observed: Vec<Observed>,
    timelines: &Timelines,
    failures: &[Vec<u64>],
) -> Tally {
    observed.retain(|o| o.id & message_id::PROBE == 0);
    observed.sort_by_key(|o| (o.id, o.at_ns));
    let mut tally = Tally::default();
    let mut cursor = 0;
    for (node, log) in sent.iter().enumerate() {
        for (seq, message) in log.iter().enumerate() {
            let id = message_id::new(node as u32, seq as u64);
            while cursor < observed.len() && observed[cursor].id < id {
                tally.unknown += 1;
                cursor += 1;
            }
            let start = cursor;
            while cursor < observed.len() && observed[cursor].id == id {
                cursor += 1;
            }
            tally.sent += 1;
            if start == cursor
                && failures.get(node).is_some_and(|times| {
                    times.iter().any(|&down| {
                        down >= message.sent_ns && down - message.sent_ns <= LINK_FAILURE_WINDOW_NS
                    })
                })
            {
                tally.link_failed += 1;
                continue;
            }
            if message.fanout {
                judge_fanout(params, id, message, &observed[start..cursor], &mut tally);
                continue;
            }
            judge(
                params,
                message,
                &observed[start..cursor],
                timelines,
                &mut tally,
            );
        }
    }
    tally.unknown += (observed.len() - cursor) as u64;
    tally
}

fn judge(
    params: &CheckParams,
    message: &Sent,
    observed: &[Observed],
    timelines: &Timelines,
    tally: &mut Tally,
) {
    let population = &params.population;
    let presence = |device: u8, to_ns: u64| -> Presence {
        if message.offline {
            Presence::Absent
        } else {
            let session = population.session_index(message.user, device);
            timelines.presence(session, message.sent_ns, to_ns)
        }
    };
    let candidates = || {
        (0..population.devices_per_user)
            .filter(move |&device| message.to_device == ALL_DEVICES || message.to_device == device)
    };

    let mut misrouted = false;
    let mut duplicated = false;
    let mut corrupted = false;
    let mut nodes_seen: Vec<u32> = Vec::new();
    let mut devices_seen = 0u64;
    let mut verdicts = observed.iter().filter_map(|o| match o.kind {
        ObservedKind::Verdict { verdict, reason } => Some((verdict, reason, o.at_ns)),
        _ => None,
    });
    let first_verdict = verdicts.next();
    duplicated |= verdicts.next().is_some();

    for copy in observed {
        let ObservedKind::Deliver {
            node,
            user,
            devices,
            intact,
        } = copy.kind
        else {
            continue;
        };
        corrupted |= !intact;
        if nodes_seen.contains(&node) || devices & devices_seen != 0 {
            duplicated = true;
        }
        nodes_seen.push(node);
        devices_seen |= devices;
        if message.offline || user != Some(message.user) || devices == 0 {
            misrouted = true;
            continue;
        }
        for device in 0..64u8 {
            if devices & (1 << device) == 0 {
                continue;
            }
            let wrong_device = device >= population.devices_per_user
                || population.node_of(message.user, device) != node
                || (message.to_device != ALL_DEVICES && message.to_device != device)
                || presence(device, copy.at_ns) == Presence::Absent;
            misrouted |= wrong_device;
        }
    }

    let delivered = !nodes_seen.is_empty();
    let mut wrong_verdict = false;
    let mut excused = false; // Missing copies explained by the verdict.
    let mut outcome_offline = false;
    let mut outcome_busy = false;
    match first_verdict {
        Some((
            verdict::OFFLINE | verdict::UNKNOWN,
            reason::NO_SESSION | reason::NO_SUCH_DEVICE,
            at_ns,
        )) => {
            let contradicted =
                candidates().any(|device| presence(device, at_ns) == Presence::Present);
            wrong_verdict |= delivered || contradicted;
            outcome_offline = true;
            excused = true;
        }
        // Parked for a node that did not come back in time: right only if
        // none of the recipient's sessions was surely there when answered.
        Some((verdict::OFFLINE, reason::NODE_GONE, at_ns)) => {
            let contradicted =
                candidates().any(|device| presence(device, at_ns) == Presence::Present);
            wrong_verdict |= delivered || contradicted;
            outcome_offline = true;
            excused = true;
        }
        Some((verdict::BUSY, reason::DESTINATION_BUSY, _)) => {
            wrong_verdict |= delivered;
            outcome_busy = true;
            excused = true;
        }
        Some((verdict::ROUTED, reason::NONE, _)) => wrong_verdict |= !params.ack || !delivered,
        Some((verdict::ROUTED, reason::PARTIAL, _)) => {
            wrong_verdict |= !params.ack || !delivered;
            excused = true;
        }
        Some(_) => {
            wrong_verdict = true;
            excused = true;
        }
        None => {}
    }

    // A copy that had to arrive and did not (nor was excused) is lost; so is
    // a message with no outcome at all, or no verdict when one was asked.
    let missing_copy = !excused
        && candidates().any(|device| {
            devices_seen & (1 << device) == 0
                && presence(device, params.end_ns) == Presence::Present
        });
    let lost = missing_copy || (first_verdict.is_none() && (params.ack || !delivered));

    tally.lost += u64::from(lost);
    tally.duplicated += u64::from(duplicated);
    tally.misrouted += u64::from(misrouted);
    tally.wrong_verdict += u64::from(wrong_verdict);
    tally.corrupted += u64::from(corrupted);
    let faulty = lost || duplicated || misrouted || wrong_verdict || corrupted;
    if !faulty {
        if delivered {
            tally.delivered += 1;
        } else if outcome_offline {
            tally.offline += 1;
        } else if outcome_busy {
            tally.busy += 1;
        }
        tally.measured_ok += u64::from(message.measured);
    }
}

/// A Fanout: one Deliver, right, at every node hosting a member; none
/// elsewhere; one right Status.
fn judge_fanout(
    params: &CheckParams,
    id: u64,
    message: &Sent,
    observed: &[Observed],
    tally: &mut Tally,
) {
    let population = &params.population;
    let group =
        crate::workload::Group::of(id, population, params.group_sizes, params.offline_ratio);
    let expected = group.destination_nodes(population);
    let mut copies = vec![0u32; population.nodes as usize];
    let (mut misrouted, mut corrupted, mut verdicts, mut wrong_verdict) = (false, false, 0, false);
    let mut busy = false;
    for o in observed {
        match o.kind {
            ObservedKind::FanoutDeliver { node, ok, intact } => {
                match copies.get_mut(node as usize) {
                    Some(count) => *count += 1,
                    None => misrouted = true,
                }
                misrouted |= !ok || !expected.get(node as usize).copied().unwrap_or(false);
                corrupted |= !intact;
            }
            ObservedKind::FanoutVerdict { ok } => {
                verdicts += 1;
                wrong_verdict |= !ok;
            }
            // Too many Fanouts in progress at the router: nothing delivered.
            ObservedKind::Verdict {
                verdict: verdict::BUSY,
                reason: reason::ROUTER_BUSY,
            } => {
                verdicts += 1;
                busy = true;
            }
            ObservedKind::Verdict { .. } => {
                verdicts += 1;
                wrong_verdict = true;
            }
            ObservedKind::Deliver { .. } => misrouted = true,
        }
    }
    let delivered_any = copies.iter().any(|&c| c > 0);
    wrong_verdict |= busy && delivered_any;
    let duplicated = copies.iter().any(|&c| c > 1) || verdicts > 1;
    let lost = verdicts == 0 || (!busy && expected.iter().zip(&copies).any(|(&e, &c)| e && c == 0));
    tally.lost += u64::from(lost);
    tally.duplicated += u64::from(duplicated);
    tally.misrouted += u64::from(misrouted);
    tally.wrong_verdict += u64::from(wrong_verdict);
    tally.corrupted += u64::from(corrupted);
    if !(lost || duplicated || misrouted || wrong_verdict || corrupted) {
        if busy {
            tally.busy += 1;
        } else if group.size > 0 {
            tally.delivered += 1;
        } else {
            tally.offline += 1;
        }
        tally.measured_ok += u64::from(message.measured);
    }
}

#[cfg(test)]
mod tests;
