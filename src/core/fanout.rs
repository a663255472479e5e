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
//!    (`FanoutReport`, Bounce class), and once all have, the coordinator
//!    sends the sender one Status listing the recipients that got nothing,
//!    those of a node that went away in the meantime included.
//!
//! Every step that is proportional to the list is done in slices
//! ([`Fanouts::step`], at most `FANOUT_CHUNK` recipients per slice), and
//! the driver yields between slices, so a list of 100,000 users never holds
//! a shard for more than about a millisecond at a time. A shard coordinates
//! at most `FANOUT_JOBS_MAX` Fanouts at once, and a sender's recipients in
//! flight count against its budget (`Budget::fanout_recipients`) until
//! their Delivers are queued (not until they are acknowledged: nothing a
//! paused reader waits for may wait for Acks it cannot read).
//!
//! Ids travel between shards in a compact encoding of their own (a `u16`
//! length, then the bytes), never as one `String` per recipient.

use std::collections::{HashMap, VecDeque};

use crate::route::Sender;
use crate::table::NodeId;
use crate::time::Time;
use crate::wire::{fb, FanoutFrame, FrameBuf};

use super::batch::{push_entry_with, put_id, take_id, Class, EntryHeader, EntryKind};
use super::out::Out;
use super::owner::Owner;
use super::slots::Access;

/// Where a Fanout is in its life.
enum Phase {
    /// Splitting the recipients by owner, from `cursor` on.
    Splitting { cursor: usize },
    /// Waiting for `missing` owners' answers.
    Resolving { missing: usize },
    /// Merging the answers: which nodes get a Deliver.
    Merging,
    /// Sending the Deliver of `targets[cursor..]`.
    Sending { cursor: usize },
    /// Waiting for the Delivers' outcomes.
    Delivering,
}

/// One destination node of a Fanout: where its recipients are in the
/// answers.
struct Target {
    node: NodeId,
    epoch: u32,
    shard: usize,
    /// (answer index, byte range of this node's users in it).
    parts: Vec<(usize, usize, usize)>,
    /// Its Deliver was sent and its outcome is awaited.
    pending: bool,
}

/// A Fanout this shard coordinates.
struct Job {
    sender: Sender,
    /// A copy of the Fanout frame.
    frame: FrameBuf,
    recipients: usize,
    phase: Phase,
    /// Per owner shard: (users, encoded ids), while splitting.
    requests: Vec<(u32, Vec<u8>)>,
    /// Owners' answers, encoded (see `Resolution`).
    answers: Vec<Vec<u8>>,
    targets: Vec<Target>,
    /// Deliver outcomes still awaited.
    awaiting: usize,
    /// The sender's budget for it came back (all Delivers queued).
    budget_returned: bool,
    delivered: usize,
    /// Recipients that got nothing, encoded ids.
    offline: Vec<u8>,
    offline_count: usize,
    /// Recipients whose slots this router does not serve now (another
    /// router's, or being rebuilt with no session yet): the sender sends
    /// them again (`Status.moved_users`), never told they are offline.
    moved: Vec<u8>,
    moved_count: usize,
}

/// An owner's share of a Fanout being resolved here.
struct Resolve {
    coordinator: usize,
    token: u64,
    /// The users to resolve: a count, then encoded ids.
    users: Vec<u8>,
    /// Where the next user starts in `users`.
    cursor: usize,
    remaining: u32,
    /// node -> index in `nodes`.
    by_node: HashMap<NodeId, usize, ahash::RandomState>,
    /// (node, epoch, users count, encoded users with their devices).
    nodes: Vec<(NodeId, u32, u32, Vec<u8>)>,
    offline: Vec<u8>,
    offline_count: u32,
    moved: Vec<u8>,
    moved_count: u32,
}

/// The Fanouts of one shard: jobs it coordinates, and shares it resolves.
#[derive(Default)]
pub struct Fanouts {
    jobs: HashMap<u64, Job, ahash::RandomState>,
    /// Jobs with work to do now, in order.
    runnable: VecDeque<u64>,
    resolves: VecDeque<Resolve>,
}

fn take_u32(input: &[u8], at: &mut usize) -> u32 {
    let value = u32::from_le_bytes(input[*at..*at + 4].try_into().expect("4 bytes"));
    *at += 4;
    value
}

impl Fanouts {
    /// Fanouts this shard coordinates.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether a slice of work is waiting.
    pub fn has_work(&self) -> bool {
        !self.runnable.is_empty() || !self.resolves.is_empty()
    }

    /// Starts coordinating a Fanout read from `sender`'s connection here.
    pub fn start(
        &mut self,
        token: u64,
        sender: Sender,
        frame: FrameBuf,
        recipients: usize,
        shard_count: usize,
    ) {
        self.jobs.insert(
            token,
            Job {
                sender,
                frame,
                recipients,
                phase: Phase::Splitting { cursor: 0 },
                requests: vec![(0, Vec::new()); shard_count],
                answers: Vec::new(),
                targets: Vec::new(),
                awaiting: 0,
                budget_returned: false,
                delivered: 0,
                offline: Vec::new(),
                offline_count: 0,
                moved: Vec::new(),
                moved_count: 0,
            },
        );
        self.runnable.push_back(token);
    }

    /// An owner asks this shard to resolve users of Fanout `token`.
    pub fn resolve(&mut self, coordinator: usize, token: u64, users: &[u8]) {
        let mut at = 0;
        let remaining = take_u32(users, &mut at);
        self.resolves.push_back(Resolve {
            coordinator,
            token,
            users: users.to_vec(),
            cursor: at,
            remaining,
            by_node: HashMap::default(),
            nodes: Vec::new(),
            offline: Vec::new(),
            offline_count: 0,
            moved: Vec::new(),
            moved_count: 0,
        });
    }

    /// An owner's answer reached the coordinator.
    pub fn answered(&mut self, token: u64, answer: &[u8]) {
        let Some(job) = self.jobs.get_mut(&token) else {
            return;
        };
        let Phase::Resolving { missing } = &mut job.phase else {
            debug_assert!(false, "an answer while not resolving");
            return;
        };
        job.answers.push(answer.to_vec());
        *missing -= 1;
        if *missing == 0 {
            job.phase = Phase::Merging;
            self.runnable.push_back(token);
        }
    }

    /// One Deliver's outcome reached the coordinator. Returns the finished
    /// job's sender and recipient count when that was the last outcome.
    pub fn delivered(
        &mut self,
        out: &mut Out<'_>,
        token: u64,
        node: NodeId,
        queued: bool,
    ) -> Option<(Sender, usize)> {
        let job = self.jobs.get_mut(&token)?;
        let target = job
            .targets
            .iter_mut()
            .find(|target| target.node == node && target.pending)?;
        target.pending = false;
        job.awaiting -= 1;
        if queued {
            job.delivered += 1;
        } else {
            // The node went away before its Deliver was queued.
            let parts = std::mem::take(&mut target.parts);
            append_users(
                &job.answers,
                &parts,
                &mut job.offline,
                &mut job.offline_count,
            );
        }
        let sending = matches!(job.phase, Phase::Sending { .. });
        if job.awaiting > 0 || sending {
            return None;
        }
        let job = self.jobs.remove(&token).expect("present");
        finish(out, job)
    }

    /// Does up to `budget` recipients' worth of work; returns how much it
    /// did, and the jobs that finished (sender, recipients).
    pub fn step(
        &mut self,
        out: &mut Out<'_>,
        owner: &Owner,
        budget: usize,
        finished: &mut Vec<(Sender, usize)>,
        now: Time,
    ) -> usize {
        let mut done = 0;
        while done < budget {
            if let Some(mut resolve) = self.resolves.pop_front() {
                done += resolve_slice(out, owner, &mut resolve, budget - done, now);
                if resolve.remaining > 0 {
                    self.resolves.push_front(resolve);
                }
                continue;
            }
            let Some(token) = self.runnable.pop_front() else {
                break;
            };
            let Some(mut job) = self.jobs.remove(&token) else {
                continue;
            };
            let (work, again) = job_slice(out, owner, token, &mut job, budget - done, self);
            done += work;
            if matches!(job.phase, Phase::Delivering) && !job.budget_returned {
                // Every Deliver is queued: the sender's budget comes back
                // now, not when the Delivers are acknowledged (its reader
                // may be paused for this budget, and its Acks unread).
                job.budget_returned = true;
                finished.push((job.sender, job.recipients));
            }
            let finished_now = matches!(job.phase, Phase::Delivering) && job.awaiting == 0;
            if finished_now {
                finished.extend(finish(out, job));
                continue;
            }
            self.jobs.insert(token, job);
            if again {
                self.runnable.push_back(token);
            }
        }
        done
    }
}

/// One slice of a job; returns (work done, whether it is runnable again).
fn job_slice(
    out: &mut Out<'_>,
    owner: &Owner,
    token: u64,
    job: &mut Job,
    budget: usize,
    fanouts: &mut Fanouts,
) -> (usize, bool) {
    match job.phase {
        Phase::Splitting { cursor } => {
            let frame = job.frame.frame();
            let users = frame
                .envelope()
                .body_as_fanout()
                .expect("a Fanout")
                .to_users();
            let end = (cursor + budget.max(1)).min(users.len());
            for i in cursor..end {
                let user = users.get(i);
                let request = &mut job.requests[owner.owner_of(user)];
                request.0 += 1;
                put_id(&mut request.1, user.as_bytes());
            }
            if end < users.len() {
                job.phase = Phase::Splitting { cursor: end };
                return (end - cursor, true);
            }
            let requests = std::mem::take(&mut job.requests);
            let mut asked = 0;
            for (shard, (count, ids)) in requests.into_iter().enumerate() {
                if count == 0 {
                    continue;
                }
                asked += 1;
                let mut entry = count.to_le_bytes().to_vec();
                entry.extend_from_slice(&ids);
                if shard == out.index {
                    fanouts.resolve(out.index, token, &entry);
                } else {
                    let header = EntryHeader {
                        origin_shard: out.index as u8,
                        token,
                        ..EntryHeader::new(
                            EntryKind::FanoutResolve,
                            job.sender.node,
                            job.sender.epoch,
                        )
                    };
                    out.outboxes.push(shard, Class::Forward, &header, &entry);
                }
            }
            if asked == 0 {
                job.phase = Phase::Merging;
                return (end - cursor, true);
            }
            job.phase = Phase::Resolving { missing: asked };
            (end - cursor, false)
        }
        Phase::Resolving { .. } | Phase::Delivering => (0, false),
        Phase::Merging => {
            merge(out, job);
            (job.recipients.max(1).min(budget), true)
        }
        Phase::Sending { cursor } => {
            let mut work = 0;
            let mut at = cursor;
            while at < job.targets.len() && work < budget {
                work += send_deliver(out, token, job, at);
                at += 1;
            }
            if at < job.targets.len() {
                job.phase = Phase::Sending { cursor: at };
                return (work.max(1), true);
            }
            job.phase = Phase::Delivering;
            (work.max(1), false)
        }
    }
}

/// Merges the owners' answers: one target per live, uncongested node; the
/// recipients of the others (gone or congested since the lookup) are
/// offline.
fn merge(out: &mut Out<'_>, job: &mut Job) {
    let mut targets: Vec<Target> = Vec::new();
    for (index, answer) in job.answers.iter().enumerate() {
        let mut at = 0;
        let nodes = take_u32(answer, &mut at);
        for _ in 0..nodes {
            let node = NodeId(take_u32(answer, &mut at));
            let epoch = take_u32(answer, &mut at);
            let _users = take_u32(answer, &mut at);
            let len = take_u32(answer, &mut at) as usize;
            let range = (index, at, at + len);
            at += len;
            match targets
                .iter_mut()
                .find(|t| t.node == node && t.epoch == epoch)
            {
                Some(target) => target.parts.push(range),
                None => targets.push(Target {
                    node,
                    epoch,
                    shard: 0,
                    parts: vec![range],
                    pending: false,
                }),
            }
        }
        let offline = take_u32(answer, &mut at) as usize;
        let offline_bytes = take_u32(answer, &mut at) as usize;
        job.offline
            .extend_from_slice(&answer[at..at + offline_bytes]);
        job.offline_count += offline;
        at += offline_bytes;
        let moved = take_u32(answer, &mut at) as usize;
        job.moved.extend_from_slice(&answer[at..]);
        job.moved_count += moved;
    }
    let mut live = Vec::with_capacity(targets.len());
    for mut target in targets {
        let state = out.directory.state(target.node);
        let shard = state
            .delivery_shard(out.index)
            .filter(|&shard| state.epoch == target.epoch && !state.is_congested_on(shard));
        match shard {
            Some(shard) => {
                target.shard = shard;
                live.push(target);
            }
            None => append_users(
                &job.answers,
                &target.parts,
                &mut job.offline,
                &mut job.offline_count,
            ),
        }
    }
    job.targets = live;
    job.phase = Phase::Sending { cursor: 0 };
}

/// Appends the users of `parts` (without their devices) to `offline`.
fn append_users(
    answers: &[Vec<u8>],
    parts: &[(usize, usize, usize)],
    offline: &mut Vec<u8>,
    count: &mut usize,
) {
    for &(index, start, end) in parts {
        let answer = &answers[index];
        let mut at = start;
        while at < end {
            let user = take_id(answer, &mut at);
            put_id(offline, user.as_bytes());
            *count += 1;
            let devices = answer[at] as usize;
            at += 1;
            for _ in 0..devices {
                take_id(answer, &mut at);
            }
        }
    }
}

/// Sends target `at`'s Deliver; returns its recipient count.
fn send_deliver(out: &mut Out<'_>, token: u64, job: &mut Job, at: usize) -> usize {
    let frame = job.frame.frame();
    let fanout = frame.envelope().body_as_fanout().expect("a Fanout");
    let message = FanoutFrame {
        message_id: fanout.message_id(),
        from_user: fanout.from_user().unwrap_or(""),
        from_device: fanout.from_device().unwrap_or(""),
        to_users: &[],
        flags: fanout.flags(),
        payload: fanout.payload().map_or(&[][..], |p| p.bytes()),
    };
    let target = &job.targets[at];
    let mut users: Vec<&str> = Vec::new();
    let mut counts: Vec<u8> = Vec::new();
    let mut devices: Vec<&str> = Vec::new();
    for &(index, start, end) in &target.parts {
        let answer = &job.answers[index];
        let mut pos = start;
        while pos < end {
            users.push(take_id(answer, &mut pos));
            let count = answer[pos];
            pos += 1;
            counts.push(count);
            for _ in 0..count {
                devices.push(take_id(answer, &mut pos));
            }
        }
    }
    let recipients = users.len();
    let (node, epoch, shard) = (target.node, target.epoch, target.shard);
    let coordinator = out.index;
    out.counters.fanout_delivers_out += 1;
    let origin = out.directory.incarnation(job.sender.node, job.sender.epoch);
    let encoded = out
        .encoder
        .fanout_deliver(&message, &users, &counts, &devices, origin);
    if shard == coordinator {
        // What `ShardCore::fanout_deliver_here` does for a Deliver from
        // another shard, written out: `encoded` borrows `out`'s encoder,
        // so this cannot call a method of `out`.
        let id = out.conns.for_node(node, epoch);
        let queued = id.is_some_and(|id| {
            out.conns
                .push(id, out.pool, out.directory, coordinator, |buf| {
                    buf.extend_from_slice(encoded)
                })
                .is_ok()
        });
        job.targets[at].pending = true;
        job.awaiting += 1;
        match id.filter(|_| queued) {
            Some(id) if out.conns.get(id).is_some_and(|c| c.defers_reports()) => {
                let conn = out.conns.get_mut(id).expect("present");
                conn.stream
                    .defer(super::stream::Deferred::Fanout { coordinator, token });
            }
            _ => {
                if !queued {
                    out.counters.frames_undeliverable += 1;
                }
                out.fanout_reports.push((token, node, queued));
            }
        }
    } else {
        let header = EntryHeader {
            origin_shard: coordinator as u8,
            token,
            ..EntryHeader::new(EntryKind::FanoutDeliver, node, epoch)
        };
        push_entry_with(out.outboxes.batch(shard, Class::Response), &header, |buf| {
            buf.extend_from_slice(encoded)
        });
        job.targets[at].pending = true;
        job.awaiting += 1;
    }
    recipients.max(1)
}

/// One slice of resolving users on their owner.
fn resolve_slice(
    out: &mut Out<'_>,
    owner: &Owner,
    resolve: &mut Resolve,
    budget: usize,
    now: Time,
) -> usize {
    let mut done = 0;
    // The user's live sessions, (node, device), in the table's order.
    let mut sessions: Vec<(NodeId, &[u8])> = Vec::new();
    while resolve.remaining > 0 && done < budget.max(1) {
        let user = take_id(&resolve.users, &mut resolve.cursor);
        resolve.remaining -= 1;
        done += 1;
        sessions.clear();
        let access = owner.slots.access(user.as_bytes(), now).0;
        if !matches!(access, Access::Serve | Access::Rebuilding) {
            put_id(&mut resolve.moved, user.as_bytes());
            resolve.moved_count += 1;
            continue;
        }
        sessions.extend(
            owner
                .table
                .sessions(user.as_bytes())
                .filter(|session| owner.live_state(out.directory, session.node).is_some())
                .map(|session| (session.node, session.device)),
        );
        if sessions.is_empty() {
            // Being rebuilt: "no session" is not known to be true.
            let (list, count) = if access == Access::Rebuilding {
                (&mut resolve.moved, &mut resolve.moved_count)
            } else {
                (&mut resolve.offline, &mut resolve.offline_count)
            };
            put_id(list, user.as_bytes());
            *count += 1;
            continue;
        }
        // Per node, in the order the nodes first appear: the user, its
        // device count there, the devices (a user has at most a few
        // sessions: quadratic is fine, and nothing is allocated).
        for (first, &(node, _)) in sessions.iter().enumerate() {
            if sessions[..first].iter().any(|(seen, _)| *seen == node) {
                continue;
            }
            let here = || sessions[first..].iter().filter(|(n, _)| *n == node);
            let slot = *resolve.by_node.entry(node).or_insert_with(|| {
                let epoch = out.directory.state(node).epoch;
                resolve.nodes.push((node, epoch, 0, Vec::new()));
                resolve.nodes.len() - 1
            });
            let entry = &mut resolve.nodes[slot];
            entry.2 += 1;
            put_id(&mut entry.3, user.as_bytes());
            entry.3.push(here().count() as u8);
            for (_, device) in here() {
                put_id(&mut entry.3, device);
            }
        }
    }
    if resolve.remaining == 0 {
        let answer = encode_resolution(resolve);
        if resolve.coordinator == out.index {
            out.fanout_answers.push((resolve.token, answer));
        } else {
            let header = EntryHeader {
                token: resolve.token,
                ..EntryHeader::new(EntryKind::FanoutResolved, NodeId(0), 0)
            };
            out.outboxes
                .push(resolve.coordinator, Class::Response, &header, &answer);
        }
    }
    done
}

/// A resolution: u32 node count; per node u32 node, u32 epoch, u32 user
/// count, u32 byte length, then per user its id, a u8 device count and
/// the device ids; then u32 offline count, u32 byte length and the offline
/// ids; then u32 moved count and the moved ids.
fn encode_resolution(resolve: &Resolve) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(resolve.nodes.len() as u32).to_le_bytes());
    for (node, epoch, users, bytes) in &resolve.nodes {
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&users.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&resolve.offline_count.to_le_bytes());
    out.extend_from_slice(&(resolve.offline.len() as u32).to_le_bytes());
    out.extend_from_slice(&resolve.offline);
    out.extend_from_slice(&resolve.moved_count.to_le_bytes());
    out.extend_from_slice(&resolve.moved);
    out
}

/// The ids of an encoded list.
fn decode_ids(bytes: &[u8]) -> Vec<&str> {
    let mut ids = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        ids.push(take_id(bytes, &mut at));
    }
    ids
}

/// The Fanout's one Status, to the sender (whose connection is here).
fn finish(out: &mut Out<'_>, job: Job) -> Option<(Sender, usize)> {
    out.counters.fanout_recipients_offline += job.offline_count as u64;
    let message_id = job
        .frame
        .frame()
        .envelope()
        .body_as_fanout()
        .expect("a Fanout")
        .message_id();
    let (verdict, reason) = match (job.delivered, job.offline_count, job.moved_count) {
        (0, 0, moved) if moved > 0 => (fb::Verdict::Moved, fb::Reason::NotOwner),
        (0, _, _) => (fb::Verdict::Offline, fb::Reason::NoSession),
        (_, 0, 0) => (fb::Verdict::Routed, fb::Reason::None),
        _ => (fb::Verdict::Routed, fb::Reason::Partial),
    };
    let (offline, moved) = (decode_ids(&job.offline), decode_ids(&job.moved));
    out.counters.fanout_recipients_moved += job.moved_count as u64;
    out.send_to(job.sender, Class::Bounce, |encoder, frame| {
        frame
            .extend_from_slice(encoder.status_fanout(message_id, verdict, reason, &offline, &moved))
    });
    // The sender's budget, unless it came back when the Delivers were
    // queued.
    (!job.budget_returned).then_some((job.sender, job.recipients))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let mut buf = Vec::new();
        put_id(&mut buf, b"ann");
        put_id(&mut buf, "dé".as_bytes());
        let mut at = 0;
        assert_eq!(take_id(&buf, &mut at), "ann");
        assert_eq!(take_id(&buf, &mut at), "dé");
        assert_eq!(at, buf.len());
    }
}
