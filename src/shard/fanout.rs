//! Fanout: one payload to many users, with one Deliver per destination node.
//!
//! The shard that reads a Fanout coordinates it (a *job*):
//!
//! 1. it splits the recipients by owner shard and asks each owner to
//!    resolve its share (`FanoutResolve`, Forward class; its own share it
//!    resolves itself);
//! 2. each owner looks its users up and answers with, per live destination
//!    node, the users and their devices there, plus the users with no live
//!    session (`FanoutResolved`, Response class);
//! 3. once every owner has answered, the coordinator merges the answers per
//!    node and sends one Deliver per node listing that node's recipients
//!    (Response class, to the shard of the node's connection);
//! 4. each of those shards reports whether it could queue the Deliver
//!    (`FanoutReport`, Bounce class, which causes no further cross-core
//!    work), and once all have, the coordinator sends the sender one Status
//!    listing the recipients that got nothing, those of a node that went
//!    away in the meantime included.
//!
//! Every step that is proportional to the list runs in a task that yields
//! every `FANOUT_CHUNK` recipients, so a list of 100,000 users never holds a
//! shard for more than about a millisecond at a time. A shard coordinates at
//! most `FANOUT_JOBS_MAX` Fanouts at once.
//!
//! The entries between shards carry user ids in a compact form of their own
//! (this module's `encode_*`/`decode_*`), not flatbuffers: they never leave
//! the process.

use std::collections::HashMap;
use std::rc::Rc;

use crate::limits::{FANOUT_CHUNK, FANOUT_JOBS_MAX, USER_ID_BYTES_MAX};
use crate::route::Sender;
use crate::table::NodeId;
use crate::wire::{envelope_unchecked, fb, FanoutFrame};

use super::link::{Class, EntryHeader, EntryKind, FLAG_QUEUED};
use super::Shard;

/// A Fanout this shard coordinates.
pub(crate) struct Job {
    sender: Sender,
    /// A copy of the Fanout frame (verified at ingress).
    frame: Rc<[u8]>,
    /// Owner answers still expected; `None` while the split is running.
    missing: Option<usize>,
    answers: Vec<Vec<u8>>,
}

/// Users with their devices on one node: (user, [device]).
pub(crate) type NodeUsers = Vec<(String, Vec<String>)>;

/// A Fanout whose Delivers are on their way: the Status waits for every
/// destination's outcome, so that recipients on a node that went away in
/// the meantime are reported offline rather than lost.
pub(crate) struct Delivering {
    sender: Sender,
    message_id: u64,
    /// Destination nodes that have not reported, with their recipients.
    pending: HashMap<NodeId, Vec<String>>,
    delivered: usize,
    offline: Vec<String>,
}

/// One owner's answer, decoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Resolution {
    /// (node, epoch, [(user, [device])]).
    pub nodes: Vec<(NodeId, u32, NodeUsers)>,
    pub offline: Vec<String>,
}

fn put_id(out: &mut Vec<u8>, id: &[u8]) {
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
}

fn take_u32(input: &mut &[u8]) -> u32 {
    let (head, rest) = input.split_at(4);
    *input = rest;
    u32::from_le_bytes(head.try_into().expect("4 bytes"))
}

fn take_id(input: &mut &[u8]) -> String {
    let (head, rest) = input.split_at(2);
    let len = u16::from_le_bytes(head.try_into().expect("2 bytes")) as usize;
    let (id, rest) = rest.split_at(len);
    *input = rest;
    // Ids come from verified frames (UTF-8 strings) or from the table.
    String::from_utf8_lossy(id).into_owned()
}

/// Decodes a `FanoutResolve` entry: the user ids.
pub(crate) fn decode_users(mut input: &[u8]) -> Vec<String> {
    let count = take_u32(&mut input);
    (0..count).map(|_| take_id(&mut input)).collect()
}

pub(crate) fn encode_resolution(resolution: &Resolution) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(resolution.nodes.len() as u32).to_le_bytes());
    for (node, epoch, users) in &resolution.nodes {
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&(users.len() as u32).to_le_bytes());
        for (user, devices) in users {
            put_id(&mut out, user.as_bytes());
            out.extend_from_slice(&(devices.len() as u32).to_le_bytes());
            for device in devices {
                put_id(&mut out, device.as_bytes());
            }
        }
    }
    out.extend_from_slice(&(resolution.offline.len() as u32).to_le_bytes());
    for user in &resolution.offline {
        put_id(&mut out, user.as_bytes());
    }
    out
}

pub(crate) fn decode_resolution(mut input: &[u8]) -> Resolution {
    let mut resolution = Resolution::default();
    for _ in 0..take_u32(&mut input) {
        let node = NodeId(take_u32(&mut input));
        let epoch = take_u32(&mut input);
        let users = (0..take_u32(&mut input))
            .map(|_| {
                let user = take_id(&mut input);
                let devices = (0..take_u32(&mut input))
                    .map(|_| take_id(&mut input))
                    .collect();
                (user, devices)
            })
            .collect();
        resolution.nodes.push((node, epoch, users));
    }
    for _ in 0..take_u32(&mut input) {
        resolution.offline.push(take_id(&mut input));
    }
    resolution
}

async fn yield_now() {
    glommio::executor().yield_if_needed().await;
}

impl Shard {
    /// A verified Fanout from `sender`'s connection on this shard.
    pub(crate) fn on_fanout(self: &Rc<Self>, sender: Sender, fanout: fb::Fanout<'_>, frame: &[u8]) {
        let counter = &self.counters.fanouts_in;
        counter.set(counter.get() + 1);
        let message_id = fanout.message_id();
        let refuse = |verdict, reason| {
            self.send_status(sender, message_id, verdict, reason, Class::Response)
        };
        if fanout.to_users().len() > self.config.fanout_max as usize {
            return refuse(fb::Verdict::Rejected, fb::Reason::TooManyRecipients);
        }
        if fanout
            .from_user()
            .is_some_and(|u| u.len() > USER_ID_BYTES_MAX)
        {
            return refuse(fb::Verdict::Rejected, fb::Reason::InvalidSender);
        }
        // Fanouts being resolved and those waiting for their Delivers'
        // outcomes both count against the bound.
        let in_progress = self.fanout_jobs.borrow().len() + self.fanout_delivering.borrow().len();
        if in_progress >= FANOUT_JOBS_MAX {
            return refuse(fb::Verdict::Busy, fb::Reason::RouterBusy);
        }
        let token = self.next_fanout_token.get();
        self.next_fanout_token.set(token + 1);
        self.fanout_jobs.borrow_mut().insert(
            token,
            Job {
                sender,
                frame: frame.into(),
                missing: None,
                answers: Vec::new(),
            },
        );
        glommio::spawn_local(self.clone().split_fanout(token)).detach();
    }

    /// Step 1: validates the recipients and asks their owners.
    async fn split_fanout(self: Rc<Self>, token: u64) {
        let (sender, frame) = {
            let jobs = self.fanout_jobs.borrow();
            let job = &jobs[&token];
            (job.sender, job.frame.clone())
        };
        // SAFETY: a copy of a frame verified at ingress.
        let envelope = unsafe { envelope_unchecked(&frame) };
        let fanout = envelope.body_as_fanout().expect("a Fanout");
        let users = fanout.to_users();
        let shard_count = self.shard_count();
        let mut requests: Vec<(u32, Vec<u8>)> = vec![(0, Vec::new()); shard_count];
        for (i, user) in users.iter().enumerate() {
            if i % FANOUT_CHUNK == FANOUT_CHUNK - 1 {
                yield_now().await;
            }
            if !(1..=USER_ID_BYTES_MAX).contains(&user.len()) {
                self.fanout_jobs.borrow_mut().remove(&token);
                let (verdict, reason) = (fb::Verdict::Rejected, fb::Reason::InvalidRecipient);
                self.send_status(
                    sender,
                    fanout.message_id(),
                    verdict,
                    reason,
                    Class::Response,
                );
                return;
            }
            let owner = self.owner_of(user);
            requests[owner].0 += 1;
            put_id(&mut requests[owner].1, user.as_bytes());
        }
        let asked: Vec<(usize, Vec<u8>)> = requests
            .into_iter()
            .enumerate()
            .filter(|(_, (count, _))| *count > 0)
            .map(|(owner, (count, ids))| {
                let mut entry = count.to_le_bytes().to_vec();
                entry.extend_from_slice(&ids);
                (owner, entry)
            })
            .collect();
        if let Some(job) = self.fanout_jobs.borrow_mut().get_mut(&token) {
            job.missing = Some(asked.len());
        }
        if asked.is_empty() {
            return self.clone().finish_fanout(token).await;
        }
        for (owner, entry) in asked {
            if owner == self.index {
                glommio::spawn_local(self.clone().resolve_fanout(self.index, token, entry))
                    .detach();
            } else {
                let header = EntryHeader {
                    origin_shard: self.index as u8,
                    token,
                    ..EntryHeader::new(EntryKind::FanoutResolve, sender.node, sender.epoch)
                };
                self.outboxes
                    .borrow_mut()
                    .push(owner, Class::Forward, &header, &entry);
            }
        }
        self.request_flush();
    }

    /// Step 2, on an owner: looks the users up and answers the coordinator.
    pub(crate) async fn resolve_fanout(
        self: Rc<Self>,
        coordinator: usize,
        token: u64,
        entry: Vec<u8>,
    ) {
        let users = decode_users(&entry);
        let mut resolution = Resolution::default();
        let mut by_node: HashMap<NodeId, usize> = HashMap::new();
        for (i, user) in users.into_iter().enumerate() {
            if i % FANOUT_CHUNK == FANOUT_CHUNK - 1 {
                yield_now().await;
            }
            let mut reached = false;
            {
                let table = self.table.borrow();
                let mut devices_by_node: Vec<(NodeId, Vec<String>)> = Vec::new();
                for session in table.sessions(user.as_bytes()) {
                    if self.live_state(session.node).is_none() {
                        continue;
                    }
                    let device = String::from_utf8_lossy(session.device).into_owned();
                    match devices_by_node.iter_mut().find(|(n, _)| *n == session.node) {
                        Some((_, devices)) => devices.push(device),
                        None => devices_by_node.push((session.node, vec![device])),
                    }
                }
                for (node, devices) in devices_by_node {
                    reached = true;
                    let slot = *by_node.entry(node).or_insert_with(|| {
                        let epoch = self.directory.state(node).epoch;
                        resolution.nodes.push((node, epoch, Vec::new()));
                        resolution.nodes.len() - 1
                    });
                    resolution.nodes[slot].2.push((user.clone(), devices));
                }
            }
            if !reached {
                resolution.offline.push(user);
            }
        }
        let answer = encode_resolution(&resolution);
        if coordinator == self.index {
            self.fanout_answered(token, answer);
        } else {
            let header = EntryHeader {
                token,
                ..EntryHeader::new(EntryKind::FanoutResolved, NodeId(0), 0)
            };
            self.outboxes
                .borrow_mut()
                .push(coordinator, Class::Response, &header, &answer);
            self.request_flush();
        }
    }

    /// An owner's answer reached the coordinator.
    pub(crate) fn fanout_answered(self: &Rc<Self>, token: u64, answer: Vec<u8>) {
        let done = {
            let mut jobs = self.fanout_jobs.borrow_mut();
            let Some(job) = jobs.get_mut(&token) else {
                return;
            };
            job.answers.push(answer);
            let missing = job.missing.as_mut().expect("asked before answered");
            *missing -= 1;
            *missing == 0
        };
        if done {
            glommio::spawn_local(self.clone().finish_fanout(token)).detach();
        }
    }

    /// Step 3: one Deliver per node, one Status for the sender.
    async fn finish_fanout(self: Rc<Self>, token: u64) {
        let Some(job) = self.fanout_jobs.borrow_mut().remove(&token) else {
            return;
        };
        // SAFETY: a copy of a frame verified at ingress.
        let envelope = unsafe { envelope_unchecked(&job.frame) };
        let fanout = envelope.body_as_fanout().expect("a Fanout");
        let message = FanoutFrame {
            message_id: fanout.message_id(),
            from_user: fanout.from_user().unwrap_or(""),
            from_device: fanout.from_device().unwrap_or(""),
            to_users: &[],
            flags: fanout.flags(),
            payload: fanout.payload().map_or(&[][..], |p| p.bytes()),
        };
        let mut nodes: Vec<(NodeId, u32, NodeUsers)> = Vec::new();
        let mut offline: Vec<String> = Vec::new();
        for answer in &job.answers {
            let resolution = decode_resolution(answer);
            offline.extend(resolution.offline);
            for (node, epoch, users) in resolution.nodes {
                match nodes.iter_mut().find(|(n, e, _)| *n == node && *e == epoch) {
                    Some((_, _, all)) => all.extend(users),
                    None => nodes.push((node, epoch, users)),
                }
            }
            yield_now().await;
        }
        // Which nodes get a Deliver, decided before any is sent, so that
        // every outcome (some are immediate, on this shard) finds them.
        let mut targets: Vec<(NodeId, u32, usize, NodeUsers)> = Vec::new();
        for (node, epoch, users) in nodes {
            let state = self.directory.state(node);
            let shard = state
                .delivery_shard(self.index)
                .filter(|&shard| state.epoch == epoch && !state.is_congested_on(shard));
            match shard {
                Some(shard) => targets.push((node, epoch, shard, users)),
                // Gone or congested since the lookup: its recipients are
                // told to the sender as offline.
                None => offline.extend(users.into_iter().map(|(user, _)| user)),
            }
        }
        let delivering = Delivering {
            sender: job.sender,
            message_id: message.message_id,
            pending: targets
                .iter()
                .map(|(node, _, _, users)| (*node, users.iter().map(|(u, _)| u.clone()).collect()))
                .collect(),
            delivered: 0,
            offline,
        };
        if delivering.pending.is_empty() {
            return self.finish_status(delivering);
        }
        self.fanout_delivering
            .borrow_mut()
            .insert(token, delivering);
        for (node, epoch, shard, users) in targets {
            let recipients: Vec<(&str, Vec<&str>)> = users
                .iter()
                .map(|(user, devices)| {
                    (user.as_str(), devices.iter().map(String::as_str).collect())
                })
                .collect();
            let queued_here = {
                let mut encoder = self.encoder.borrow_mut();
                let frame = encoder.deliver_recipients(&message, &recipients);
                if shard == self.index {
                    self.write_message_here(node, epoch, frame, self.index, token)
                } else {
                    let header = EntryHeader {
                        origin_shard: self.index as u8,
                        token,
                        ..EntryHeader::new(EntryKind::FanoutDeliver, node, epoch)
                    };
                    self.outboxes
                        .borrow_mut()
                        .push(shard, Class::Response, &header, frame);
                    None
                }
            };
            let counter = &self.counters.fanout_delivers_out;
            counter.set(counter.get() + 1);
            if let Some(queued) = queued_here {
                self.fanout_delivered(token, node, queued);
            }
            self.request_flush();
            yield_now().await;
        }
    }

    /// On the shard that queued (or failed to queue) a Fanout Deliver: the
    /// outcome, to the coordinator.
    pub(crate) fn report_fanout_deliver(
        &self,
        coordinator: usize,
        token: u64,
        node: NodeId,
        queued: bool,
    ) {
        if coordinator == self.index {
            return self.fanout_delivered(token, node, queued);
        }
        let header = EntryHeader {
            token,
            flags: if queued { FLAG_QUEUED } else { 0 },
            ..EntryHeader::new(EntryKind::FanoutReport, node, 0)
        };
        // Bounce: the coordinator's handling causes no cross-core work.
        self.outboxes
            .borrow_mut()
            .push(coordinator, Class::Bounce, &header, &[]);
    }

    /// On the coordinator: one node's outcome; the Status once all are in.
    pub(crate) fn fanout_delivered(&self, token: u64, node: NodeId, queued: bool) {
        let done = {
            let mut all = self.fanout_delivering.borrow_mut();
            let Some(delivering) = all.get_mut(&token) else {
                return;
            };
            let Some(users) = delivering.pending.remove(&node) else {
                return;
            };
            if queued {
                delivering.delivered += 1;
            } else {
                // The node went away before its Deliver was queued.
                delivering.offline.extend(users);
            }
            if !delivering.pending.is_empty() {
                return;
            }
            all.remove(&token)
        };
        if let Some(delivering) = done {
            self.finish_status(delivering);
        }
    }

    /// The Fanout's one Status, to the sender (whose connection is here).
    fn finish_status(&self, delivering: Delivering) {
        let counter = &self.counters.fanout_recipients_offline;
        counter.set(counter.get() + delivering.offline.len() as u64);
        let (verdict, reason) = match (delivering.delivered, delivering.offline.is_empty()) {
            (0, _) => (fb::Verdict::Offline, fb::Reason::NoSession),
            (_, true) => (fb::Verdict::Routed, fb::Reason::None),
            (_, false) => (fb::Verdict::Routed, fb::Reason::Partial),
        };
        let offline: Vec<&str> = delivering.offline.iter().map(String::as_str).collect();
        let sender = delivering.sender;
        let mut encoder = self.encoder.borrow_mut();
        let frame = encoder.status_offline(delivering.message_id, verdict, reason, &offline);
        self.send_to(sender, Class::Bounce, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_round_trip() {
        let resolution = Resolution {
            nodes: vec![
                (
                    NodeId(3),
                    7,
                    vec![("ann".into(), vec!["phone".into(), "web".into()])],
                ),
                (NodeId(9), 1, vec![("bo".into(), vec!["pad".into()])]),
            ],
            offline: vec!["cy".into(), "dé".into()],
        };
        assert_eq!(
            decode_resolution(&encode_resolution(&resolution)),
            resolution
        );
        let mut entry = 2u32.to_le_bytes().to_vec();
        put_id(&mut entry, b"x");
        put_id(&mut entry, b"yz");
        assert_eq!(decode_users(&entry), ["x", "yz"]);
    }
}
