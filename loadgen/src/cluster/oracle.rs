//! Judges a cluster run from its logs: every message one final outcome
//! its sender saw, the right one, and each message the router called
//! Routed seen once by the application of the node hosting its recipient.
//!
//! | the recipient | final outcome | the application saw | judged |
//! |---|---|---|---|
//! | online | Routed | it once, on the recipient's node, intact | right |
//! | online | Unknown, sent inside a disruption window | it at most once | right (counted) |
//! | online | Offline | anything | false Offline |
//! | no session | Offline | nothing | right |
//! | no session | Unknown inside a window | nothing | right (counted) |
//! | any | none at all | | lost |
//! | any | two | | two outcomes |
//! | any | Busy, Rejected, Moved, Unknown outside the windows | | wrong verdict |
//!
//! A copy the application saw twice is a duplicate (the node core drops
//! them; the count of dropped copies is reported apart), one on another
//! node or user misrouted, one with a damaged payload corrupted.

use std::collections::HashMap;

use imrouter::wire::fb;

/// Who a message was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// Online user `u` (its one session is on node `u % nodes`).
    Online(u32),
    /// A user with no session.
    Nobody,
}

#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub id: u64,
    pub to: To,
    pub sent_ns: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Decided {
    pub id: u64,
    pub verdict: fb::Verdict,
    pub sends: u32,
    pub at_ns: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    pub id: u64,
    /// The node that received it and the online user it named (`None`:
    /// not an online user's id).
    pub node: u32,
    pub user: Option<u32>,
    pub intact: bool,
}

/// What the oracle counted.
#[derive(Debug, Default, Clone)]
pub struct Judgement {
    pub sent: u64,
    pub routed: u64,
    pub offline: u64,
    /// Final Unknowns inside disruption windows (allowed, reported).
    pub unknown: u64,
    pub delivered: u64,
    /// Messages sent more than once by their node (any cause).
    pub resent_messages: u64,
    pub faults: u64,
    /// The first faults, described.
    pub examples: Vec<String>,
}

impl Judgement {
    pub fn ok(&self) -> bool {
        self.faults == 0
    }

    fn fault(&mut self, text: String) {
        self.faults += 1;
        if self.examples.len() < 12 {
            self.examples.push(text);
        }
    }
}

/// The logs of a run, and what it knew.
pub struct Logs<'a> {
    pub nodes: u32,
    pub sent: &'a [Sent],
    pub decided: &'a [Decided],
    pub delivered: &'a [Delivered],
    /// `[from, to)` in ns: the times a fault may have made a slot's owner
    /// unsure (a final Unknown is right for a message sent inside one).
    pub windows: &'a [(u64, u64)],
}

pub fn judge(logs: &Logs<'_>) -> Judgement {
    let mut judgement = Judgement {
        sent: logs.sent.len() as u64,
        ..Judgement::default()
    };
    let mut outcome: HashMap<u64, Decided> = HashMap::with_capacity(logs.sent.len());
    for decided in logs.decided {
        if outcome.insert(decided.id, *decided).is_some() {
            judgement.fault(format!("message {:#x}: two outcomes", decided.id));
        }
    }
    let mut seen: HashMap<u64, Vec<Delivered>> = HashMap::new();
    for delivered in logs.delivered {
        seen.entry(delivered.id).or_default().push(*delivered);
        judgement.delivered += 1;
    }
    let in_window = |ns: u64| logs.windows.iter().any(|&(from, to)| from <= ns && ns < to);
    for sent in logs.sent {
        let copies = seen.remove(&sent.id).unwrap_or_default();
        let Some(decided) = outcome.remove(&sent.id) else {
            judgement.fault(format!(
                "message {:#x} to {:?} sent at {:.3} s: no outcome",
                sent.id,
                sent.to,
                sent.sent_ns as f64 / 1e9
            ));
            continue;
        };
        if decided.sends > 1 {
            judgement.resent_messages += 1;
        }
        let describe = || {
            format!(
                "message {:#x} to {:?} sent at {:.3} s, {:?} at {:.3} s after {} send(s), seen {} time(s)",
                sent.id,
                sent.to,
                sent.sent_ns as f64 / 1e9,
                decided.verdict,
                decided.at_ns as f64 / 1e9,
                decided.sends,
                copies.len()
            )
        };
        for copy in &copies {
            let right = match sent.to {
                To::Online(user) => copy.user == Some(user) && copy.node == user % logs.nodes,
                To::Nobody => false,
            };
            if !right {
                judgement.fault(format!("{}: misrouted to node {}", describe(), copy.node));
            } else if !copy.intact {
                judgement.fault(format!("{}: corrupted", describe()));
            }
        }
        if copies.len() > 1 {
            judgement.fault(format!("{}: duplicated", describe()));
        }
        match (sent.to, decided.verdict) {
            (To::Online(_), fb::Verdict::Routed) => {
                judgement.routed += 1;
                if copies.is_empty() {
                    judgement.fault(format!("{}: lost", describe()));
                }
            }
            (To::Online(_), fb::Verdict::Offline) => {
                judgement.fault(format!("{}: false Offline", describe()));
            }
            (To::Nobody, fb::Verdict::Offline) => judgement.offline += 1,
            (_, fb::Verdict::Unknown) if in_window(sent.sent_ns) => judgement.unknown += 1,
            _ => judgement.fault(format!("{}: wrong verdict", describe())),
        }
    }
    for (id, copies) in seen {
        judgement.fault(format!(
            "message {id:#x}: seen {} time(s), never sent",
            copies.len()
        ));
    }
    for (id, decided) in outcome {
        judgement.fault(format!(
            "message {id:#x}: {:?} but never sent",
            decided.verdict
        ));
    }
    judgement
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: u32 = 4;

    fn sent(id: u64, to: To) -> Sent {
        Sent {
            id,
            to,
            sent_ns: id * 1_000_000,
        }
    }

    fn decided(id: u64, verdict: fb::Verdict) -> Decided {
        Decided {
            id,
            verdict,
            sends: 1,
            at_ns: id * 1_000_000 + 1,
        }
    }

    fn copy(id: u64, user: u32) -> Delivered {
        Delivered {
            id,
            node: user % NODES,
            user: Some(user),
            intact: true,
        }
    }

    fn judge_of(
        sent: &[Sent],
        decided: &[Decided],
        delivered: &[Delivered],
        windows: &[(u64, u64)],
    ) -> Judgement {
        judge(&Logs {
            nodes: NODES,
            sent,
            decided,
            delivered,
            windows,
        })
    }

    #[test]
    fn a_right_run_is_ok() {
        let judgement = judge_of(
            &[sent(1, To::Online(5)), sent(2, To::Nobody)],
            &[
                decided(1, fb::Verdict::Routed),
                decided(2, fb::Verdict::Offline),
            ],
            &[copy(1, 5)],
            &[],
        );
        assert!(judgement.ok(), "{:?}", judgement.examples);
        assert_eq!((judgement.routed, judgement.offline), (1, 1));
    }

    /// Logs, and the fault they must show.
    type Case<'a> = (&'a [Sent], &'a [Decided], &'a [Delivered], &'a str);

    #[test]
    fn lost_duplicated_misrouted_and_false_offline_are_faults() {
        let cases: [Case; 6] = [
            (&[sent(1, To::Online(5))], &[], &[], "no outcome"),
            (
                &[sent(1, To::Online(5))],
                &[decided(1, fb::Verdict::Routed)],
                &[],
                "lost",
            ),
            (
                &[sent(1, To::Online(5))],
                &[decided(1, fb::Verdict::Routed)],
                &[copy(1, 5), copy(1, 5)],
                "duplicated",
            ),
            (
                &[sent(1, To::Online(5))],
                &[decided(1, fb::Verdict::Routed)],
                &[copy(1, 6)],
                "misrouted",
            ),
            (
                &[sent(1, To::Online(5))],
                &[decided(1, fb::Verdict::Offline)],
                &[],
                "false Offline",
            ),
            (
                &[sent(1, To::Online(5))],
                &[
                    decided(1, fb::Verdict::Routed),
                    decided(1, fb::Verdict::Routed),
                ],
                &[copy(1, 5)],
                "two outcomes",
            ),
        ];
        for (sent, decided, delivered, fault) in cases {
            let judgement = judge_of(sent, decided, delivered, &[]);
            assert!(!judgement.ok(), "{fault}: judged right");
            assert!(
                judgement.examples.iter().any(|e| e.contains(fault)),
                "{fault}: {:?}",
                judgement.examples
            );
        }
    }

    #[test]
    fn unknown_is_right_only_inside_a_window() {
        let run = |windows: &[(u64, u64)]| {
            judge_of(
                &[sent(3, To::Online(1))],
                &[decided(3, fb::Verdict::Unknown)],
                &[],
                windows,
            )
        };
        assert!(run(&[(2_000_000, 4_000_000)]).ok());
        assert!(!run(&[(4_000_000, 9_000_000)]).ok());
        assert!(!run(&[]).ok());
    }
}
