//! What the simulation checks: every promise the router makes to nodes,
//! from what the nodes saw.
//!
//! Each request a node sends is recorded with the *stream* it was sent on
//! (a node process's connection to one shard, continued across resumes).
//! A verdict can only come back on that stream; when the stream ends (the
//! node crashed, or reconnected without a resume, or the router
//! restarted), the node sees that failure, and its requests' outcomes are
//! no longer owed.
//!
//! - Every Route gets at most one Status; one with ACK whose stream
//!   lives gets exactly one; one without ACK whose stream lives and that
//!   got no Status was delivered (silence means delivered).
//! - `Routed` means some node processed the message.
//! - No node process processes the same message twice (a resume replays
//!   exactly what was not processed).
//! - Messages from one sender stream to one user arrive in the order sent,
//!   on a recipient stream.
//! - Every Fanout gets at most one Status, exactly one while its stream
//!   lives, and each recipient is delivered or listed offline.
//! - A node that reads is never disconnected as a slow consumer.

use std::collections::HashMap;

use crate::wire::fb;

/// A node process's stream: (node, incarnation number, stream number).
pub type StreamId = (usize, u32, u32);

/// What the oracle knows of one Route.
#[derive(Debug, Clone)]
pub struct RouteRecord {
    pub stream: StreamId,
    pub to_user: String,
    pub wants_ack: bool,
    /// Its place among the Routes of its stream to `to_user`.
    pub order: u64,
    pub statuses: Vec<(fb::Verdict, fb::Reason)>,
    /// (recipient stream) that processed it.
    pub delivered: Vec<StreamId>,
}

/// What the oracle knows of one Fanout.
#[derive(Debug, Clone)]
pub struct FanoutRecord {
    pub stream: StreamId,
    pub to_users: Vec<String>,
    pub statuses: Vec<(fb::Verdict, Vec<String>)>,
    pub delivered: Vec<String>,
}

/// A broken promise, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

#[derive(Default)]
pub struct Oracle {
    /// Nodes acknowledge their streams: `Routed` then means processed
    /// before the Status was sent; without, it means queued, and the
    /// node processes it later.
    pub acks: bool,
    pub routes: HashMap<u64, RouteRecord>,
    pub fanouts: HashMap<u64, FanoutRecord>,
    /// Streams that ended (their outcomes are not owed any more).
    ended: std::collections::HashSet<StreamId>,
    /// (recipient stream, sender stream, user) -> last order delivered.
    order_seen: HashMap<(StreamId, StreamId, String), u64>,
    /// (sender stream, user) -> Routes sent so far.
    order_next: HashMap<(StreamId, String), u64>,
    /// (recipient node, incarnation, message id): processed.
    processed: std::collections::HashSet<(usize, u32, u64)>,
    pub violations: Vec<Violation>,
    /// Delivers seen, for the report.
    pub delivers: u64,
}

impl Oracle {
    pub fn new(acks: bool) -> Self {
        Oracle {
            acks,
            ..Oracle::default()
        }
    }

    fn violation(&mut self, text: String) {
        self.violations.push(Violation(text));
    }

    pub fn stream_ended(&mut self, stream: StreamId) {
        self.ended.insert(stream);
    }

    pub fn route_sent(&mut self, id: u64, stream: StreamId, to_user: &str, wants_ack: bool) {
        let next = self
            .order_next
            .entry((stream, to_user.to_string()))
            .or_insert(0);
        *next += 1;
        self.routes.insert(
            id,
            RouteRecord {
                stream,
                to_user: to_user.to_string(),
                wants_ack,
                order: *next,
                statuses: Vec::new(),
                delivered: Vec::new(),
            },
        );
    }

    pub fn fanout_sent(&mut self, id: u64, stream: StreamId, to_users: Vec<String>) {
        self.fanouts.insert(
            id,
            FanoutRecord {
                stream,
                to_users,
                statuses: Vec::new(),
                delivered: Vec::new(),
            },
        );
    }

    /// A Status for Route `id` arrived on `stream`.
    pub fn route_status(
        &mut self,
        id: u64,
        stream: StreamId,
        verdict: fb::Verdict,
        reason: fb::Reason,
    ) {
        let Some(record) = self.routes.get_mut(&id) else {
            return self.violation(format!("a Status for Route {id:#x}, never sent"));
        };
        record.statuses.push((verdict, reason));
        let (count, delivered, from) = (
            record.statuses.len(),
            !record.delivered.is_empty(),
            record.stream,
        );
        if from != stream {
            self.violation(format!(
                "Route {id:#x} sent on stream {from:?} got its Status on {stream:?}"
            ));
        }
        if count > 1 {
            self.violation(format!("Route {id:#x} got {count} Statuses"));
        }
        if verdict == fb::Verdict::Routed && !delivered && self.acks {
            self.violation(format!("Route {id:#x} is Routed but no node processed it"));
        }
    }

    /// Node process `recipient` processed a Deliver of Route `id`.
    pub fn route_delivered(&mut self, id: u64, recipient: StreamId, carbon: bool) {
        self.delivers += 1;
        if carbon {
            return; // Carbons are best effort and carry the Route's id.
        }
        let (node, incarnation, _) = recipient;
        if !self.processed.insert((node, incarnation, id)) {
            self.violation(format!(
                "node {node} (incarnation {incarnation}) processed Route {id:#x} twice"
            ));
        }
        let Some(record) = self.routes.get_mut(&id) else {
            return self.violation(format!("a Deliver of Route {id:#x}, never sent"));
        };
        record.delivered.push(recipient);
        let key = (recipient, record.stream, record.to_user.clone());
        let order = record.order;
        let last = self.order_seen.entry(key).or_insert(0);
        if order <= *last {
            let last = *last;
            self.violation(format!(
                "Route {id:#x} (number {order} of its sender to its user) processed after number {last}"
            ));
        } else {
            *last = order;
        }
    }

    pub fn fanout_status(
        &mut self,
        id: u64,
        stream: StreamId,
        verdict: fb::Verdict,
        offline: Vec<String>,
    ) {
        let Some(record) = self.fanouts.get_mut(&id) else {
            return self.violation(format!("a Status for Fanout {id:#x}, never sent"));
        };
        record.statuses.push((verdict, offline));
        let (count, from) = (record.statuses.len(), record.stream);
        if count > 1 {
            self.violation(format!("Fanout {id:#x} got {count} Statuses"));
        }
        if from != stream {
            self.violation(format!("Fanout {id:#x} got its Status on another stream"));
        }
    }

    pub fn fanout_delivered(&mut self, id: u64, users: Vec<String>) {
        match self.fanouts.get_mut(&id) {
            Some(record) => record.delivered.extend(users),
            None => self.violation(format!("a Deliver of Fanout {id:#x}, never sent")),
        }
    }

    /// The end-of-run checks, once everything has settled.
    pub fn finish(&mut self) {
        let mut found = Vec::new();
        for (id, record) in &self.routes {
            if self.ended.contains(&record.stream) {
                continue;
            }
            let statuses = record.statuses.len();
            let routed = record
                .statuses
                .iter()
                .any(|(verdict, _)| *verdict == fb::Verdict::Routed);
            if routed && record.delivered.is_empty() {
                found.push(format!("Route {id:#x} is Routed but no node processed it"));
            }
            if record.wants_ack && statuses == 0 {
                found.push(format!(
                    "Route {id:#x} with ACK to {} never got a Status (stream {:?} alive)",
                    record.to_user, record.stream
                ));
            }
            if !record.wants_ack && statuses == 0 && record.delivered.is_empty() {
                found.push(format!(
                    "Route {id:#x} to {} without ACK got neither a Status nor a delivery",
                    record.to_user
                ));
            }
        }
        for (id, record) in &self.fanouts {
            if self.ended.contains(&record.stream) {
                continue;
            }
            let Some((verdict, offline)) = record.statuses.first() else {
                found.push(format!("Fanout {id:#x} never got a Status"));
                continue;
            };
            if matches!(verdict, &fb::Verdict::Busy | &fb::Verdict::Rejected) {
                // Refused as a whole: the sender knows nobody got it.
                if !record.delivered.is_empty() {
                    found.push(format!(
                        "Fanout {id:#x} refused ({verdict:?}) but delivered"
                    ));
                }
                continue;
            }
            for user in &record.to_users {
                if !offline.contains(user) && !record.delivered.contains(user) {
                    found.push(format!(
                        "Fanout {id:#x}: {user} neither delivered nor listed offline"
                    ));
                }
            }
        }
        found.sort();
        for text in found {
            self.violation(text);
        }
    }
}
