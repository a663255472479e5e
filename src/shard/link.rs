//! Cross-core links: how shards hand work to each other.
//!
//! Every shard has an [`Inbox`]: three bounded crossbeam channels of
//! *batches* (one per [`Class`]), a bounded control queue, and a doorbell.
//! Every shard holds a [`ShardLink`] to every other shard, the sending half.
//!
//! # Batches
//!
//! A batch is a `Vec<u8>` of entries, each a fixed [`EntryHeader`] followed by
//! one frame's bytes. Producers append entries to a per-target *outbox* while
//! they process a read or a batch, and hand the whole outbox over at the end
//! of the round, so one channel operation (and at most one wake-up) carries
//! hundreds of messages. Frames are copied into the batch once and read in
//! place on the other side.
//!
//! # Classes, and why backpressure cannot deadlock
//!
//! Work flows in at most three hops, each in its own class of channel:
//!
//! 1. `Forward`: from the shard that read a frame to the shard owning its user
//!    (Routes, session opens and closes, node purges).
//! 2. `Response`: from the owner to the shard holding the destination node's
//!    connection (Delivers, Status, Kick).
//! 3. `Bounce`: from there back to the sender's shard (the outcome of a
//!    Deliver, when the sender's verdict depends on it; see `route`).
//!
//! A shard takes a batch of class *k* only when its outboxes of class *k+1*
//! have room, and a `Bounce` batch produces no cross-core work at all. So the
//! "waits for" relation between classes has no cycle, and a full channel
//! only ever pauses the connection readers that feed it: that is the
//! backpressure, and nothing is dropped.
//!
//! # Wake-ups
//!
//! A receiving shard that runs out of work sets its `parked` flag and sleeps
//! in io_uring on the read end of a socket pair (the doorbell). A sender that
//! has handed over a batch swaps the flag back and, only if it was set, writes
//! one byte. A busy shard is never woken by a syscall and an idle one costs
//! nothing: no spinning, no timers.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::limits::{CONTROL_QUEUE_MAX, LINK_BATCHES_MAX};
use crate::node::Handoff;
use crate::table::NodeId;
use crate::wire::fb;

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

/// What an entry asks the receiving shard to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// Forward: apply the SessionOpen frame for `node`/`epoch`.
    SessionOpen = 1,
    /// Forward: apply the SessionClose frame for `node`/`epoch`.
    SessionClose = 2,
    /// Forward: route the Route frame sent by `node`/`epoch` on `origin_shard`.
    Route = 3,
    /// Forward: `node`'s sessions older than `epoch` are dead; drop them.
    PurgeNode = 4,
    /// Response: write this Deliver to `node`'s connection if it is still at
    /// `epoch`, and report the outcome to the sender (`origin_*`) when its
    /// plan (`fanout`, `flags`) asks for a report.
    Deliver = 5,
    /// Response or Bounce: write this frame to `node`'s connection if it is
    /// still at `epoch`; otherwise drop it (nobody is left to tell).
    Frame = 6,
    /// Response or Bounce: one destination's outcome for the message
    /// `token` sent by `node`'s connection at `epoch` (`flags` has
    /// `FLAG_QUEUED` when the Deliver was queued).
    Report = 7,
    /// Forward: answer the Locate frame sent by `node`/`epoch` on
    /// `origin_shard`.
    Locate = 8,
    /// Response: write this Broadcast frame to every node whose first
    /// connection is on this shard, except `node` (the sender).
    Broadcast = 9,
    /// Response: write this NodeEvent frame to every node whose first
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
    /// Forward: send the Publish frame of `node` to the topic's other
    /// subscribers; this shard owns the topic.
    Publish = 15,
    /// Forward: sessions of `node`'s snapshot `token` (the generation) owned
    /// here, to open (see `sync`).
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
}

/// `EntryHeader::flags`: the sender asked for an ACK.
pub const FLAG_ACK: u8 = 1;
/// `EntryHeader::flags`: some destination nodes were congested.
pub const FLAG_BUSY_SEEN: u8 = 2;
/// `EntryHeader::flags` of a Report: the Deliver was queued.
pub const FLAG_QUEUED: u8 = 4;

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
            // Batches are written only by `push_entry` in this process.
            other => panic!("corrupt batch: entry kind {other}"),
        }
    }
}

/// The fixed header in front of every entry of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: EntryKind,
    /// The shard whose connection the work came from (the sender's shard).
    pub origin_shard: u8,
    /// Deliver and Report: the number of Deliver frames sent for the message.
    pub fanout: u8,
    /// Deliver and Report: `FLAG_*` bits.
    pub flags: u8,
    /// The node the entry is about: the sender for Forward entries and
    /// Reports, the destination for Deliver and Frame entries.
    pub node: NodeId,
    pub epoch: u32,
    /// The sender of a Deliver, where its outcome is reported.
    pub origin_node: NodeId,
    pub origin_epoch: u32,
    pub message_id: u64,
    /// Deliver and Report: identifies one routed message router-wide (the
    /// owner shard in the top byte, its routing sequence below), so the
    /// reports of one message meet even if a node reuses message ids.
    pub token: u64,
}

impl EntryHeader {
    pub const BYTES: usize = 40;

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
            message_id: 0,
            token: 0,
        }
    }
}

/// Appends one entry (header, then `frame`) to `batch`.
#[inline]
pub fn push_entry(batch: &mut Batch, header: &EntryHeader, frame: &[u8]) {
    let frame_len = u32::try_from(frame.len()).expect("frames are bounded by the frame limit");
    let mut bytes = [0u8; EntryHeader::BYTES];
    bytes[0] = header.kind as u8;
    bytes[1] = header.origin_shard;
    bytes[2] = header.fanout;
    bytes[3] = header.flags;
    bytes[4..8].copy_from_slice(&frame_len.to_le_bytes());
    bytes[8..12].copy_from_slice(&header.node.0.to_le_bytes());
    bytes[12..16].copy_from_slice(&header.epoch.to_le_bytes());
    bytes[16..20].copy_from_slice(&header.origin_node.0.to_le_bytes());
    bytes[20..24].copy_from_slice(&header.origin_epoch.to_le_bytes());
    bytes[24..32].copy_from_slice(&header.message_id.to_le_bytes());
    bytes[32..40].copy_from_slice(&header.token.to_le_bytes());
    batch.extend_from_slice(&bytes);
    batch.extend_from_slice(frame);
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
    type Item = (EntryHeader, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (bytes, rest) = self.rest.split_at(EntryHeader::BYTES);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let frame_len = u32_at(4) as usize;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
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
        };
        let (frame, rest) = rest.split_at(frame_len);
        self.rest = rest;
        Some((header, frame))
    }
}

/// Rare, out-of-band requests to one shard.
pub enum Control {
    /// Serve this connection; its Hello was read on another shard.
    Adopt(Handoff),
    /// Close `node`'s connection on this shard if it is the one registered
    /// under `ticket` (a newer process of the node replaced it).
    CloseConnection {
        node: NodeId,
        ticket: u64,
        code: fb::ErrorCode,
        reason: &'static str,
    },
    /// Send this shard's counters.
    Metrics(Sender<crate::metrics::ShardMetrics>),
    /// Close every connection and stop.
    Shutdown,
}

/// Keeps a value on its own cache line, so the flag senders swap does not
/// share a line with data the receiver writes.
#[repr(align(64))]
struct CachePadded<T>(T);

/// The parked flag and the write end of one shard's doorbell.
pub struct Doorbell {
    parked: CachePadded<AtomicBool>,
    ring: UnixStream,
}

impl Doorbell {
    /// Wakes the shard if it parked; a no-op (no syscall) while it is busy.
    /// Call after the item that needs attention is visible in a channel.
    pub fn ring_if_parked(&self) {
        fence(Ordering::SeqCst);
        if self.parked.0.swap(false, Ordering::SeqCst) {
            // Non-blocking; at most one byte per parking is ever unread, so
            // the socket buffer cannot fill. A failure here would mean the
            // shard is gone, and nothing is left to wake.
            let _ = (&self.ring).write(&[1]);
        }
    }

    /// Marks the shard as about to sleep. The caller must re-check its
    /// channels after this and before sleeping.
    pub fn park(&self) {
        self.parked.0.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub fn unpark(&self) {
        self.parked.0.store(false, Ordering::SeqCst);
    }
}

/// The sending half of the link to one shard.
#[derive(Clone)]
pub struct ShardLink {
    batches: [Sender<Batch>; 3],
    control: Sender<Control>,
    doorbell: Arc<Doorbell>,
}

impl ShardLink {
    /// Hands a batch over, or gives it back when the channel is full.
    pub fn try_send(&self, class: Class, batch: Batch) -> Result<(), Batch> {
        match self.batches[class as usize].try_send(batch) {
            Ok(()) => {
                self.doorbell.ring_if_parked();
                Ok(())
            }
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => Err(batch),
        }
    }

    /// Queues a control message, or gives it back when the queue is full or
    /// the shard has stopped.
    pub fn try_control(&self, message: Control) -> Result<(), Control> {
        match self.control.try_send(message) {
            Ok(()) => {
                self.doorbell.ring_if_parked();
                Ok(())
            }
            Err(TrySendError::Full(message) | TrySendError::Disconnected(message)) => Err(message),
        }
    }
}

/// The receiving half of one shard's links.
pub struct Inbox {
    pub batches: [Receiver<Batch>; 3],
    pub control: Receiver<Control>,
    pub doorbell: Arc<Doorbell>,
    /// Read end of the doorbell, turned into a glommio stream by the shard.
    pub bell: UnixStream,
}

impl Inbox {
    /// Whether anything is waiting in a channel this shard may take now.
    pub fn has_work(&self, class_allowed: impl Fn(Class) -> bool) -> bool {
        !self.control.is_empty()
            || CLASSES
                .iter()
                .any(|&class| class_allowed(class) && !self.batches[class as usize].is_empty())
    }
}

/// Creates the links of `shard_count` shards: `links[t]` sends to shard `t`,
/// `inboxes[t]` is shard `t`'s receiving half.
pub fn links(shard_count: usize) -> std::io::Result<(Vec<ShardLink>, Vec<Inbox>)> {
    let mut links = Vec::with_capacity(shard_count);
    let mut inboxes = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (ring, bell) = UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        let doorbell = Arc::new(Doorbell {
            parked: CachePadded(AtomicBool::new(false)),
            ring,
        });
        let (forward_tx, forward_rx) = bounded(LINK_BATCHES_MAX);
        let (response_tx, response_rx) = bounded(LINK_BATCHES_MAX);
        let (bounce_tx, bounce_rx) = bounded(LINK_BATCHES_MAX);
        let (control_tx, control_rx) = bounded(CONTROL_QUEUE_MAX);
        links.push(ShardLink {
            batches: [forward_tx, response_tx, bounce_tx],
            control: control_tx,
            doorbell: doorbell.clone(),
        });
        inboxes.push(Inbox {
            batches: [forward_rx, response_rx, bounce_rx],
            control: control_rx,
            doorbell,
            bell,
        });
    }
    Ok((links, inboxes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_in_order() {
        let mut batch = Batch::new();
        let first = EntryHeader {
            kind: EntryKind::Deliver,
            origin_shard: 3,
            fanout: 2,
            flags: FLAG_ACK | FLAG_BUSY_SEEN,
            node: NodeId(7),
            epoch: 2,
            origin_node: NodeId(9),
            origin_epoch: 4,
            message_id: u64::MAX - 1,
            token: 0x0300_0000_0000_0042,
        };
        let second = EntryHeader::new(EntryKind::PurgeNode, NodeId(1), 5);
        push_entry(&mut batch, &first, b"frame one");
        push_entry(&mut batch, &second, b"");
        let entries: Vec<_> = Entries::new(&batch).collect();
        assert_eq!(entries, [(first, &b"frame one"[..]), (second, &b""[..])]);
    }

    #[test]
    fn ring_writes_only_when_parked() {
        let (links, inboxes) = links(1).unwrap();
        let inbox = &inboxes[0];
        inbox.bell.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        links[0].try_send(Class::Forward, vec![1]).unwrap();
        assert!((&inbox.bell).read(&mut buf).is_err(), "busy shard: no byte");
        inbox.doorbell.park();
        links[0].try_send(Class::Forward, vec![2]).unwrap();
        links[0].try_send(Class::Forward, vec![3]).unwrap();
        assert_eq!(
            (&inbox.bell).read(&mut buf).unwrap(),
            1,
            "one byte per parking"
        );
        assert_eq!(inbox.batches[0].len(), 3);
    }

    use std::io::Read;
}
