//! Cross-core links: the channels that carry batches between shards.
//!
//! Every shard has an [`Inbox`]: three bounded crossbeam channels of
//! batches (one per [`Class`], see `core::batch` for what they carry and
//! why backpressure between them cannot deadlock), a bounded control
//! queue, and a doorbell. Every shard holds a [`ShardLink`] to every shard
//! (itself included), the sending half.
//!
//! # Wake-ups
//!
//! A receiving shard that runs out of work sets its `parked` flag and sleeps
//! in io_uring on the read end of a socket pair (the doorbell). A sender that
//! has handed over a batch swaps the flag back and, only if it was set, writes
//! one byte. A busy shard is never woken by a syscall and an idle one costs
//! nothing: no spinning, no timers.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::core::batch::{Batch, Class, CLASSES};
use crate::limits::{CONTROL_QUEUE_MAX, LINK_BATCHES_MAX};
use crate::wire::Hello;

/// A connection on its way from the shard that read its Hello to the shard
/// that will serve it (whose place `ShardCore::place` reserved).
pub struct Handoff {
    /// The socket (a duplicate; the accepting shard closed its own).
    pub fd: OwnedFd,
    pub hello: Hello,
    /// Bytes the node sent after its Hello, already read.
    pub pending: Vec<u8>,
    /// Its place among the router's sockets.
    pub ticket: crate::node::admission::Ticket,
}

/// Rare, out-of-band requests to one shard.
pub enum Control {
    /// Serve this connection; its Hello was read on another shard.
    Adopt(Box<Handoff>),
    /// Send this shard's counters.
    Metrics(Sender<crate::metrics::ShardMetrics>),
    /// Send this shard's counters and latency histograms (`/metrics`).
    Report(Sender<crate::metrics::ShardReport>),
    /// Send this shard's readiness (`/healthz`, `/readyz`).
    Health(Sender<crate::core::report::ShardHealth>),
    /// Send this shard's connections and per-node figures (`/nodez`).
    Nodes(Sender<crate::core::report::NodesReport>),
    /// Close every connection and stop.
    Shutdown,
    /// A drain begins: stop accepting connections and refuse new Hellos
    /// (the nodes are told later, with `Drain`).
    StopAccepting,
    /// Lame duck: stop accepting connections, tell every node to leave
    /// within the window (a Draining frame with the reason).
    Drain {
        window: std::time::Duration,
        reason: Arc<str>,
    },
    /// A reload: run with this configuration (see `Config::reloaded`).
    Reconfigure(Arc<crate::config::Config>),
    /// The cluster's control plane: what this router may serve now.
    View(Arc<crate::core::slots::ClusterView>),
    /// The cluster's control plane: the IM nodes' membership changed.
    Members(Arc<crate::core::MembersUpdate>),
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
