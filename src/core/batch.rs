//! Batches: the messages shards send each other, as plain bytes.
//!
//! A batch is a `Vec<u8>` of entries, each a fixed [`EntryHeader`]
//! followed by one frame (or a compact encoding of its own, for the
//! multi-shard jobs). A shard appends entries for another shard to an
//! [`Outboxes`] batch while it handles a read or a batch, and the driver
//! hands the whole batch over at the end of the round (`shard::link`), so
//! that one channel operation carries hundreds of messages. Frames are
//! copied into the batch once and read in place on the other side.
//!
//! # Classes, and why backpressure cannot deadlock
//!
//! Work flows in at most three hops, each in its own class of channel:
//!
//! 1. [`Class::Forward`]: from the shard that read a frame to the shard
//!    owning its user or topic (Routes, session operations, Locates, node
//!    purges, Fanout resolutions, snapshot batches).
//! 2. [`Class::Response`]: from the owner to the shard holding the
//!    destination node's connection (Delivers, Statuses, Kicks, answers,
//!    fanned-out copies).
//! 3. [`Class::Bounce`]: from there back to the sender's shard (the outcome
//!    of a Deliver, the completion of a fanned-out copy).
//!
//! A shard takes a batch of class *k* only when its outboxes of class
//! *k+1* have room, and handling a `Bounce` entry sends nothing to another
//! shard except in the rare case that it ends a connection. So the "waits
//! for" relation between classes has no cycle, and a full channel only
//! ever pauses the connection readers that feed it: that is the
//! backpressure, and nothing is dropped.

use crate::limits::{BATCH_POOL_MAX, OUTBOX_BYTES_HIGH};
use crate::table::NodeId;
use crate::time::Time;
use crate::wire::Frame;

/// A batch of entries, see the module docs.
pub type Batch = Vec<u8>;

/// The three classes of cross-core work, in the order they flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Forward = 0,
    Response = 1,
    Bounce = 2,
}

pub const CLASSES: [Class; 3] = [Class::Forward, Class::Response, Class::Bounce];

/// What an entry asks the receiving shard to do. The doc of each says its
/// class, what it carries, and what the header's fields mean for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// Forward: apply the SessionOpen frame of `node`/`epoch`.
    SessionOpen = 1,
    /// Forward: apply the SessionClose frame of `node`/`epoch`.
    SessionClose = 2,
    /// Forward: route the Route frame sent by `node`/`epoch` on
    /// `origin_shard`.
    Route = 3,
    /// Forward: `node`'s sessions older than `epoch` are dead; drop them.
    PurgeNode = 4,
    /// Response: queue this Deliver to `node`'s connection if it is still
    /// at `epoch`, and report the outcome to the sender (`origin_*`,
    /// `token`) when its plan (`fanout`, `flags`) asks for a report.
    Deliver = 5,
    /// Response or Bounce: queue this frame (a Status, Kick, SessionSyncAck)
    /// to `node`'s connection if it is still at `epoch`; otherwise drop it
    /// (nobody is left to tell).
    Frame = 6,
    /// Response or Bounce: one destination's outcome for the message
    /// `token` sent by `node`'s connection at `epoch` (`flags` has
    /// `FLAG_QUEUED` when the Deliver was queued).
    Report = 7,
    /// Forward: answer the Locate frame sent by `node`/`epoch` on
    /// `origin_shard`.
    Locate = 8,
    /// Response: queue this Broadcast frame to every node whose first
    /// connection is on this shard, except `node` (the sender); then report
    /// completion (`Done`) to `origin_shard` for `origin_node`/`origin_epoch`
    /// and `token`, one part of `fanout`, `message_id` credit units.
    Broadcast = 9,
    /// Response: queue this NodeEvent frame to every node whose first
    /// connection is on this shard, except `node` (the one it is about,
    /// when that node already knows).
    NodeEvent = 10,
    /// Forward: send the carbon copies of the Route frame (its sender's
    /// other devices); this shard owns the sender's user.
    Carbon = 11,
    /// Forward: resolve these users of Fanout `token` (coordinated by
    /// `origin_shard`); the entry holds the user ids (see `fanout`).
    FanoutResolve = 12,
    /// Response: the resolution of part of Fanout `token` (see `fanout`).
    FanoutResolved = 13,
    /// Forward: apply the Subscribe or Unsubscribe frame of `node`/`epoch`
    /// (from `origin_shard`); this shard owns the topic.
    TopicOp = 14,
    /// Forward: send the Publish frame of `node`/`epoch` (its `from_node`
    /// filled in) to the topic's other subscribers; this shard owns the
    /// topic. `token` and `message_id` (credit units) are passed on for
    /// the completion report.
    Publish = 15,
    /// Forward: sessions of `node`'s snapshot `token` (the generation)
    /// owned here, to open (see `sync`); `message_id` is their count.
    SyncBatch = 16,
    /// Forward: `node`'s snapshot `token` is complete: drop its sessions
    /// here that the snapshot did not list, and tell `origin_shard`.
    SyncEnd = 17,
    /// Response: one shard's counts for snapshot `token` (see `sync`).
    SyncDone = 18,
    /// Response: a Fanout's Deliver for `node`/`epoch`, queued like a
    /// Deliver; the outcome goes back to `origin_shard` for Fanout `token`.
    FanoutDeliver = 19,
    /// Bounce: whether the Fanout Deliver for `node` was queued (`flags`
    /// has `FLAG_QUEUED`), for the Fanout `token` coordinated here.
    FanoutReport = 20,
    /// Response: the Publish frame, for the subscribers listed after it
    /// (see `publish_copies`), each `(node, epoch)`; completion as for
    /// `Broadcast`.
    PublishCopies = 21,
    /// Response: close `node`'s connection registered under `token` (a
    /// ticket) on this shard with Error `message_id` (an `ErrorCode`): a
    /// newer process of the node replaced it.
    CloseConnection = 22,
    /// Response: a Located answer for `node`/`epoch`: queued like `Frame`,
    /// and it ends one Locate of the connection's budget.
    Located = 23,
    /// Bounce: part of the work of `node`/`epoch`'s request `token` is
    /// done: one of `fanout` parts, returning `message_id` units of the
    /// budget `flags` (a [`CreditKind`]).
    Done = 24,
}

/// `EntryHeader::flags`: the sender asked for an ACK.
pub const FLAG_ACK: u8 = 1;
/// `EntryHeader::flags`: some destination nodes were congested.
pub const FLAG_BUSY_SEEN: u8 = 2;
/// `EntryHeader::flags` of a Report: the Deliver was queued.
pub const FLAG_QUEUED: u8 = 4;

/// The budgets a `Done` entry gives back to (see `core::budget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CreditKind {
    /// Bytes of Broadcast and Publish frames whose copies are not all queued.
    FanOutBytes = 0,
    /// Snapshot sessions not yet applied by their owners.
    SyncSessions = 1,
}

impl CreditKind {
    pub fn from_u8(value: u8) -> CreditKind {
        match value {
            0 => CreditKind::FanOutBytes,
            1 => CreditKind::SyncSessions,
            other => panic!("corrupt batch: credit kind {other}"),
        }
    }
}

impl EntryKind {
    fn from_u8(value: u8) -> EntryKind {
        match value {
            1 => EntryKind::SessionOpen,
            2 => EntryKind::SessionClose,
            3 => EntryKind::Route,
            4 => EntryKind::PurgeNode,
            5 => EntryKind::Deliver,
            6 => EntryKind::Frame,
            7 => EntryKind::Report,
            8 => EntryKind::Locate,
            9 => EntryKind::Broadcast,
            10 => EntryKind::NodeEvent,
            11 => EntryKind::Carbon,
            12 => EntryKind::FanoutResolve,
            13 => EntryKind::FanoutResolved,
            14 => EntryKind::TopicOp,
            15 => EntryKind::Publish,
            16 => EntryKind::SyncBatch,
            17 => EntryKind::SyncEnd,
            18 => EntryKind::SyncDone,
            19 => EntryKind::FanoutDeliver,
            20 => EntryKind::FanoutReport,
            21 => EntryKind::PublishCopies,
            22 => EntryKind::CloseConnection,
            23 => EntryKind::Located,
            24 => EntryKind::Done,
            // Batches are written only by `push_entry` in this process.
            other => panic!("corrupt batch: entry kind {other}"),
        }
    }

    /// Whether the entry's bytes are one frame (verified at ingress or
    /// built by an encoder), as opposed to an encoding of this module's.
    fn carries_frame(self) -> bool {
        matches!(
            self,
            EntryKind::SessionOpen
                | EntryKind::SessionClose
                | EntryKind::Route
                | EntryKind::Deliver
                | EntryKind::Frame
                | EntryKind::Locate
                | EntryKind::Broadcast
                | EntryKind::NodeEvent
                | EntryKind::Carbon
                | EntryKind::TopicOp
                | EntryKind::Publish
                | EntryKind::FanoutDeliver
                | EntryKind::PublishCopies
                | EntryKind::Located
        )
    }
}

/// The fixed header in front of every entry of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: EntryKind,
    /// The shard whose connection the work came from (the sender's shard).
    pub origin_shard: u8,
    /// Deliver and Report: the number of Deliver frames sent for the
    /// message; Done: the number of parts.
    pub fanout: u8,
    /// `FLAG_*` bits, or a `CreditKind`.
    pub flags: u8,
    /// The node the entry is about: the sender for Forward entries and
    /// Reports, the destination for Deliver and Frame entries.
    pub node: NodeId,
    pub epoch: u32,
    /// The sender of a Deliver or copy, where its outcome is reported.
    pub origin_node: NodeId,
    pub origin_epoch: u32,
    /// The stream tag of `node`'s connection the entry is about, where it
    /// matters (a verdict or answer for the sender; 0: any).
    pub stream: u32,
    /// The stream tag of the sender (`origin_*`).
    pub origin_stream: u32,
    pub message_id: u64,
    /// Identifies one request router-wide (the shard that numbered it in
    /// the top byte, its sequence below), so that the reports of one
    /// message meet even if a node reuses message ids.
    pub token: u64,
}

impl EntryHeader {
    pub const BYTES: usize = 48;

    /// A header with only the fields every entry has.
    pub fn new(kind: EntryKind, node: NodeId, epoch: u32) -> Self {
        EntryHeader {
            kind,
            origin_shard: 0,
            fanout: 0,
            flags: 0,
            node,
            epoch,
            origin_node: NodeId(0),
            origin_epoch: 0,
            stream: 0,
            origin_stream: 0,
            message_id: 0,
            token: 0,
        }
    }

    /// A header about `sender`'s connection (its node, epoch and stream).
    pub fn for_sender(kind: EntryKind, sender: crate::route::Sender) -> Self {
        EntryHeader {
            origin_shard: sender.shard as u8,
            stream: sender.stream,
            ..EntryHeader::new(kind, sender.node, sender.epoch)
        }
    }

    /// The sender this entry is about (`node`, `epoch`, `stream`, from
    /// `origin_shard`).
    pub fn sender(&self) -> crate::route::Sender {
        crate::route::Sender {
            shard: self.origin_shard as usize,
            node: self.node,
            epoch: self.epoch,
            stream: self.stream,
        }
    }

    /// The sender of a Deliver (`origin_*`).
    pub fn origin(&self) -> crate::route::Sender {
        crate::route::Sender {
            shard: self.origin_shard as usize,
            node: self.origin_node,
            epoch: self.origin_epoch,
            stream: self.origin_stream,
        }
    }

    fn write(&self, bytes: &mut [u8], body_len: u32) {
        bytes[0] = self.kind as u8;
        bytes[1] = self.origin_shard;
        bytes[2] = self.fanout;
        bytes[3] = self.flags;
        bytes[4..8].copy_from_slice(&body_len.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.node.0.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.epoch.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.origin_node.0.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.origin_epoch.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.message_id.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.token.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.stream.to_le_bytes());
        bytes[44..48].copy_from_slice(&self.origin_stream.to_le_bytes());
    }
}

/// Appends one entry (header, then `body`) to `batch`.
#[inline]
pub fn push_entry(batch: &mut Batch, header: &EntryHeader, body: &[u8]) {
    push_entry_with(batch, header, |out| out.extend_from_slice(body));
}

/// Appends one entry whose body `write` appends to the batch in place
/// (an encoder writing a frame straight into the batch, with no copy in
/// between).
#[inline]
pub fn push_entry_with(batch: &mut Batch, header: &EntryHeader, write: impl FnOnce(&mut Batch)) {
    let start = batch.len();
    batch.resize(start + EntryHeader::BYTES, 0);
    write(batch);
    let body_len = u32::try_from(batch.len() - start - EntryHeader::BYTES)
        .expect("entries are bounded by the frame limit");
    header.write(&mut batch[start..start + EntryHeader::BYTES], body_len);
}

/// One entry of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub header: EntryHeader,
    /// The entry's bytes after the header.
    pub body: &'a [u8],
}

impl<'a> Entry<'a> {
    /// The frame this entry carries.
    pub fn frame(&self) -> Frame<'a> {
        assert!(
            self.header.kind.carries_frame(),
            "{:?} carries no frame",
            self.header.kind
        );
        // SAFETY: entries of these kinds are written only with frames that
        // passed the verifier at ingress (copied byte for byte from the
        // read buffer) or that an encoder built, in this process.
        unsafe { Frame::assume_verified(self.frame_bytes()) }
    }

    fn frame_bytes(&self) -> &'a [u8] {
        match self.header.kind {
            // A PublishCopies' frame is followed by its subscriber list.
            EntryKind::PublishCopies => {
                let (frame, _) = publish_copies_split(self.body);
                frame
            }
            _ => self.body,
        }
    }
}

/// The entries of a batch, in the order they were pushed.
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    pub fn new(batch: &'a [u8]) -> Self {
        Entries { rest: batch }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (bytes, rest) = self.rest.split_at(EntryHeader::BYTES);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let body_len = u32_at(4) as usize;
        let header = EntryHeader {
            kind: EntryKind::from_u8(bytes[0]),
            origin_shard: bytes[1],
            fanout: bytes[2],
            flags: bytes[3],
            node: NodeId(u32_at(8)),
            epoch: u32_at(12),
            origin_node: NodeId(u32_at(16)),
            origin_epoch: u32_at(20),
            message_id: u64_at(24),
            token: u64_at(32),
            stream: u32_at(40),
            origin_stream: u32_at(44),
        };
        let (body, rest) = rest.split_at(body_len);
        self.rest = rest;
        Some(Entry { header, body })
    }
}

/// Writes a PublishCopies body: the frame, then `(node, epoch)` pairs, then
/// the frame's length.
pub fn publish_copies_body(
    out: &mut Batch,
    frame: &[u8],
    subscribers: impl IntoIterator<Item = (NodeId, u32)>,
) {
    out.extend_from_slice(frame);
    for (node, epoch) in subscribers {
        out.extend_from_slice(&node.0.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
    }
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
}

fn publish_copies_split(body: &[u8]) -> (&[u8], &[u8]) {
    let (rest, len) = body.split_at(body.len() - 4);
    let frame_len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    rest.split_at(frame_len)
}

/// The subscribers of a PublishCopies entry.
pub fn publish_copies_subscribers(body: &[u8]) -> impl Iterator<Item = (NodeId, u32)> + '_ {
    let (_, list) = publish_copies_split(body);
    list.chunks_exact(8).map(|pair| {
        let node = u32::from_le_bytes(pair[..4].try_into().expect("4 bytes"));
        let epoch = u32::from_le_bytes(pair[4..].try_into().expect("4 bytes"));
        (NodeId(node), epoch)
    })
}

/// One batch per target shard and class, being filled, plus a pool of
/// empty batches (so that a steady flow allocates nothing).
pub struct Outboxes {
    /// `batches[target][class]`; the entries for the shard itself stay empty.
    batches: Vec<[Batch; 3]>,
    pool: Vec<Batch>,
    /// The time of the operation under way: a batch begun now starts with
    /// it (see [`started`]).
    now: Time,
}

/// Bytes before a handed-off batch's first entry: the time (nanoseconds,
/// little-endian) of the operation that began it, so that the receiving
/// shard can time the work from the read of its first frame.
pub const BATCH_PREFIX_BYTES: usize = 8;

/// When the first entry of a batch `Outboxes` built was pushed.
pub fn started(batch: &[u8]) -> Time {
    Time::from_nanos(u64::from_le_bytes(
        batch[..BATCH_PREFIX_BYTES].try_into().expect("a prefix"),
    ))
}

/// The entries of a batch `Outboxes` built (after its prefix).
pub fn entries(batch: &[u8]) -> Entries<'_> {
    Entries::new(&batch[BATCH_PREFIX_BYTES..])
}

impl Outboxes {
    pub fn new(shard_count: usize) -> Self {
        Outboxes {
            batches: (0..shard_count).map(|_| Default::default()).collect(),
            pool: Vec::new(),
            now: Time::ZERO,
        }
    }

    /// The time of the operation under way (batches begun now carry it).
    #[inline]
    pub fn set_now(&mut self, now: Time) {
        self.now = now;
    }

    #[inline]
    pub fn push(&mut self, target: usize, class: Class, header: &EntryHeader, body: &[u8]) {
        push_entry(self.batch(target, class), header, body);
    }

    /// Appends an entry to the batch of `class` for every shard but
    /// `except` (this one).
    pub fn push_to_others(
        &mut self,
        except: usize,
        class: Class,
        header: &EntryHeader,
        body: &[u8],
    ) {
        for target in 0..self.batches.len() {
            if target != except {
                push_entry(self.batch(target, class), header, body);
            }
        }
    }

    /// The batch being filled for `target`, to write an entry in place.
    #[inline]
    pub fn batch(&mut self, target: usize, class: Class) -> &mut Batch {
        let batch = &mut self.batches[target][class as usize];
        if batch.is_empty() {
            batch.extend_from_slice(&self.now.as_nanos().to_le_bytes());
        }
        batch
    }

    /// Whether every batch of `class` is below the high-water mark.
    pub fn has_room(&self, class: Class) -> bool {
        self.batches
            .iter()
            .all(|batches| batches[class as usize].len() < OUTBOX_BYTES_HIGH)
    }

    /// Whether anything waits to be handed off.
    pub fn is_empty(&self) -> bool {
        self.batches
            .iter()
            .all(|batches| batches.iter().all(Vec::is_empty))
    }

    /// Takes the batch for `target` of `class` to hand it off, leaving an
    /// empty one; `None` when there is nothing to send.
    pub fn take(&mut self, target: usize, class: Class) -> Option<Batch> {
        let slot = &mut self.batches[target][class as usize];
        if slot.is_empty() {
            return None;
        }
        let fresh = self.pool.pop().unwrap_or_default();
        Some(std::mem::replace(slot, fresh))
    }

    /// Puts back a batch `take` returned that could not be handed off (its
    /// channel was full); it is retried later and keeps growing until
    /// then, which `has_room` turns into backpressure.
    pub fn untake(&mut self, target: usize, class: Class, batch: Batch) {
        let slot = &mut self.batches[target][class as usize];
        debug_assert!(slot.is_empty(), "nothing is pushed between take and untake");
        let fresh = std::mem::replace(slot, batch);
        self.recycle(fresh);
    }

    /// Bytes waiting to be handed off in batches of `class`.
    pub fn bytes(&self, class: Class) -> usize {
        self.batches
            .iter()
            .map(|batches| batches[class as usize].len())
            .sum()
    }

    /// Keeps an emptied batch (received from another shard) for reuse.
    pub fn recycle(&mut self, mut batch: Batch) {
        if self.pool.len() < BATCH_POOL_MAX && batch.capacity() <= 4 * OUTBOX_BYTES_HIGH {
            batch.clear();
            self.pool.push(batch);
        }
    }
}

/// Writes an id (a user or device id, at most 65,535 bytes) into an entry
/// body: its length (u16, little-endian), then its bytes.
pub fn put_id(out: &mut Vec<u8>, id: &[u8]) {
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
}

/// Reads what [`put_id`] wrote at `at`, and moves `at` past it.
pub fn take_id<'a>(input: &'a [u8], at: &mut usize) -> &'a str {
    let len = u16::from_le_bytes(input[*at..*at + 2].try_into().expect("2 bytes")) as usize;
    let id = &input[*at + 2..*at + 2 + len];
    *at += 2 + len;
    // Ids come from verified frames (UTF-8 strings) or from the table,
    // which holds ids from verified frames.
    std::str::from_utf8(id).expect("ids are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_in_order() {
        let mut batch = Batch::new();
        let first = EntryHeader {
            kind: EntryKind::Report,
            origin_shard: 3,
            fanout: 2,
            flags: FLAG_ACK | FLAG_BUSY_SEEN,
            node: NodeId(7),
            epoch: 2,
            origin_node: NodeId(9),
            origin_epoch: 4,
            stream: 77,
            origin_stream: 88,
            message_id: u64::MAX - 1,
            token: 0x0300_0000_0000_0042,
        };
        let second = EntryHeader::new(EntryKind::PurgeNode, NodeId(1), 5);
        push_entry(&mut batch, &first, b"frame one");
        push_entry_with(&mut batch, &second, |_| {});
        let entries: Vec<_> = Entries::new(&batch)
            .map(|entry| (entry.header, entry.body.to_vec()))
            .collect();
        assert_eq!(
            entries,
            [(first, b"frame one".to_vec()), (second, Vec::new())]
        );
    }

    #[test]
    fn publish_copies_carry_their_subscribers() {
        let mut body = Vec::new();
        publish_copies_body(&mut body, b"xyz", [(NodeId(1), 2), (NodeId(3), 4)]);
        let (frame, _) = publish_copies_split(&body);
        assert_eq!(frame, b"xyz");
        let subscribers: Vec<_> = publish_copies_subscribers(&body).collect();
        assert_eq!(subscribers, [(NodeId(1), 2), (NodeId(3), 4)]);
    }

    #[test]
    fn outboxes_take_and_untake() {
        let mut outboxes = Outboxes::new(2);
        assert!(outboxes.take(1, Class::Forward).is_none());
        outboxes.set_now(Time::from_nanos(1234));
        outboxes.push(
            1,
            Class::Forward,
            &EntryHeader::new(EntryKind::PurgeNode, NodeId(0), 1),
            b"",
        );
        outboxes.set_now(Time::from_nanos(5678));
        outboxes.push(
            1,
            Class::Forward,
            &EntryHeader::new(EntryKind::PurgeNode, NodeId(1), 1),
            b"",
        );
        let batch = outboxes.take(1, Class::Forward).unwrap();
        assert!(outboxes.is_empty());
        // The batch carries the time of the operation that began it.
        assert_eq!(started(&batch), Time::from_nanos(1234));
        assert_eq!(entries(&batch).count(), 2);
        outboxes.untake(1, Class::Forward, batch);
        assert_eq!(
            outboxes.bytes(Class::Forward),
            BATCH_PREFIX_BYTES + 2 * EntryHeader::BYTES
        );
    }
}
