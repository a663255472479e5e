//! One node connection's state: its socket, its bounded output buffer, and
//! the writer task that flushes it.
//!
//! # Output path
//!
//! Frames for the node are appended to `output` (no write per frame). The
//! writer task swaps `output` with its spare buffer and writes the whole
//! batch with one `write`; frames appended meanwhile wait for the next
//! round. The bytes queued (appended plus being written) are bounded:
//!
//! - above the *soft* limit (`--out-buffer-bytes`) the connection is
//!   congested: its bit in the directory is set, and owner shards answer new
//!   messages for the node with `Busy` instead of sending them here. The bit
//!   is cleared when the queue drains below half the soft limit.
//! - a Deliver that an owner shard already decided to send ([`push_deliver`])
//!   is always queued while the connection is open: its sender may already
//!   have its `Routed` verdict. The soft limit is passed only by what was in
//!   flight when the bit was set, which the bounded cross-core channels
//!   bound.
//! - a Status, Kick or Pong ([`push_control`]) that would take the queue past
//!   the *hard* limit (twice the soft one) closes the connection with
//!   `SlowConsumer`: only a node that keeps sending but never reads gets
//!   there, and it cannot be told anything else.
//!
//! [`push_deliver`]: Connection::push_deliver
//! [`push_control`]: Connection::push_control

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::limits::{OUT_BUFFER_HARD_FACTOR, PENDING_REPORTS_MAX};
use crate::shard::signal::Signal;
use crate::table::NodeId;
use crate::wire::fb;

use super::Directory;

/// An output buffer whose capacity grew past this is given back to the
/// allocator after its batch is written, so a burst does not pin memory.
const SPARE_CAPACITY_KEPT: usize = 1024 * 1024;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing.
    Closed,
    /// A control frame would pass the hard limit; the connection is now
    /// closing with `SlowConsumer`.
    OverHardLimit,
}

/// A node's connection to this shard, after its Hello/Welcome.
pub struct Connection {
    pub node: NodeId,
    /// The epoch of the node's sessions this connection belongs to.
    pub epoch: u32,
    /// Its registration in the directory.
    pub ticket: u64,
    pub node_name: Box<str>,
    pub peer: Option<SocketAddr>,
    shard: usize,
    directory: Arc<Directory>,
    stream: RefCell<TcpStream>,
    /// Frames queued and not yet taken by the writer.
    output: RefCell<Vec<u8>>,
    /// Bytes the writer is writing right now.
    in_flight: Cell<usize>,
    soft_limit: usize,
    hard_limit: usize,
    congested: Cell<bool>,
    closing: Cell<bool>,
    /// The Error frame queued when the hard limit is passed.
    slow_consumer_error: Rc<[u8]>,
    writer_wake: Signal,
    reader_waker: Cell<Option<Waker>>,
    pub(crate) writer_done: Signal,
    /// Reads that returned data, and frames queued: the heartbeat compares
    /// them between checks to tell a quiet connection (no clock per frame).
    reads: Cell<u64>,
    frames_queued: Cell<u64>,
    /// The reader waits for cross-core room (backpressure), not for the
    /// node: the heartbeat does not count that time as silence.
    read_paused: Cell<bool>,
    /// Why the connection is closing, for the NodeEvent if it was the
    /// node's last: the first reason set wins.
    leave_reason: Cell<Option<fb::LeftReason>>,
    /// Messages this connection sent to several nodes whose destinations
    /// have not all reported yet: token -> (reports missing, copies queued).
    pending_reports: RefCell<HashMap<u64, (u8, u8), ahash::RandomState>>,
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node: NodeId,
        epoch: u32,
        ticket: u64,
        node_name: Box<str>,
        shard: usize,
        directory: Arc<Directory>,
        stream: TcpStream,
        soft_limit: usize,
        slow_consumer_error: Rc<[u8]>,
    ) -> Self {
        Connection {
            node,
            epoch,
            ticket,
            node_name,
            peer: stream.peer_addr().ok(),
            shard,
            directory,
            stream: RefCell::new(stream),
            output: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            soft_limit,
            hard_limit: soft_limit * OUT_BUFFER_HARD_FACTOR,
            congested: Cell::new(false),
            closing: Cell::new(false),
            slow_consumer_error,
            writer_wake: Signal::default(),
            reader_waker: Cell::new(None),
            writer_done: Signal::default(),
            reads: Cell::new(0),
            frames_queued: Cell::new(0),
            read_paused: Cell::new(false),
            leave_reason: Cell::new(None),
            pending_reports: RefCell::new(HashMap::default()),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Records why the connection closes, unless a reason was recorded.
    pub fn set_leave_reason(&self, reason: fb::LeftReason) {
        if self.leave_reason.get().is_none() {
            self.leave_reason.set(Some(reason));
        }
    }

    /// Why the connection closed (`Closed` when nothing else was said).
    pub fn leave_reason(&self) -> fb::LeftReason {
        self.leave_reason.get().unwrap_or(fb::LeftReason::Closed)
    }

    pub(crate) fn set_read_paused(&self, paused: bool) {
        self.read_paused.set(paused);
    }

    pub fn read_paused(&self) -> bool {
        self.read_paused.get()
    }

    /// Reads from the node that returned data so far.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    /// Frames queued for the node so far.
    pub fn frames_queued(&self) -> u64 {
        self.frames_queued.get()
    }

    /// Bytes queued for the node: appended plus being written.
    pub fn queued_bytes(&self) -> usize {
        self.output.borrow().len() + self.in_flight.get()
    }

    /// Queues a Deliver decided by an owner shard. Never refused for size
    /// (see the module docs); refused only when the connection is closing.
    pub fn push_deliver(&self, frame: &[u8]) -> Result<(), PushError> {
        if self.closing.get() {
            return Err(PushError::Closed);
        }
        self.append(frame);
        Ok(())
    }

    /// Queues a Status, Kick, Pong or Welcome. Past the hard limit the
    /// connection is closed as a slow consumer instead.
    pub fn push_control(&self, frame: &[u8]) -> Result<(), PushError> {
        if self.closing.get() {
            return Err(PushError::Closed);
        }
        if self.queued_bytes() + frame.len() > self.hard_limit {
            self.set_leave_reason(fb::LeftReason::Slow);
            let error = self.slow_consumer_error.clone();
            self.close(Some(&error));
            return Err(PushError::OverHardLimit);
        }
        self.append(frame);
        Ok(())
    }

    fn append(&self, frame: &[u8]) {
        let queued = self.queued_bytes() + frame.len();
        self.output.borrow_mut().extend_from_slice(frame);
        self.frames_queued.set(self.frames_queued.get() + 1);
        if queued > self.soft_limit && !self.congested.get() {
            self.congested.set(true);
            self.directory.set_congested(self.node, self.shard, true);
        }
        self.writer_wake.notify();
    }

    /// Counts one destination's report on a message sent to `fanout` nodes.
    /// Returns how many copies were queued once all have reported, `None`
    /// before, and `Err` when `PENDING_REPORTS_MAX` messages are pending.
    pub(crate) fn collect_report(
        &self,
        token: u64,
        fanout: u8,
        queued: bool,
    ) -> Result<Option<u8>, ()> {
        let mut pending = self.pending_reports.borrow_mut();
        if !pending.contains_key(&token) && pending.len() >= PENDING_REPORTS_MAX {
            return Err(());
        }
        let (missing, copies) = pending.entry(token).or_insert((fanout, 0));
        *missing -= 1;
        *copies += u8::from(queued);
        if *missing > 0 {
            return Ok(None);
        }
        let copies = *copies;
        pending.remove(&token);
        Ok(Some(copies))
    }

    /// Starts closing: queues `error` (bypassing the limits) as the last
    /// frame, and stops the reader. The writer flushes what is queued and
    /// shuts the socket's write side down. Closing twice does nothing.
    pub fn close(&self, error: Option<&[u8]>) {
        if self.closing.replace(true) {
            return;
        }
        if let Some(error) = error {
            self.output.borrow_mut().extend_from_slice(error);
        }
        if self.congested.replace(false) {
            self.directory.set_congested(self.node, self.shard, false);
        }
        self.directory
            .mark_closing(self.node, self.shard, self.ticket);
        self.writer_wake.notify();
        if let Some(waker) = self.reader_waker.take() {
            waker.wake();
        }
    }

    /// Reads into `buf`. `Ok(None)` means the router is closing the
    /// connection and the reader should stop.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        poll_fn(|cx| {
            if self.closing.get() {
                return Poll::Ready(Ok(None));
            }
            let mut stream = self.stream.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, buf) {
                Poll::Ready(result) => {
                    if let Ok(1..) = result {
                        self.reads.set(self.reads.get() + 1);
                    }
                    Poll::Ready(result.map(Some))
                }
                Poll::Pending => {
                    self.reader_waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Completes when the connection starts closing.
    pub(crate) async fn closed(&self) {
        poll_fn(|cx| {
            if self.closing.get() {
                Poll::Ready(())
            } else {
                self.reader_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Reads and discards until the node closes its side (or fails).
    pub(crate) async fn discard_until_closed(&self) {
        let mut sink = [0u8; 4096];
        loop {
            let read =
                poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, &mut sink))
                    .await;
            if !matches!(read, Ok(1..)) {
                return;
            }
        }
    }

    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let written =
                poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, bytes))
                    .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[written..];
        }
        Ok(())
    }

    fn shutdown_write(&self) {
        let fd = self.stream.borrow().as_raw_fd();
        // SAFETY: `fd` is the open socket `stream` owns. A failure (the peer
        // already reset the connection) leaves nothing to do.
        unsafe {
            libc::shutdown(fd, libc::SHUT_WR);
        }
    }

    /// Flushes `output` until the connection closes; counts bytes written
    /// into `bytes_out`.
    pub(crate) async fn run_writer(self: Rc<Self>, bytes_out: impl Fn(usize)) {
        let mut spare = Vec::new();
        loop {
            while self.output.borrow().is_empty() {
                if self.closing.get() {
                    self.shutdown_write();
                    self.writer_done.notify();
                    return;
                }
                self.writer_wake.wait().await;
            }
            std::mem::swap(&mut *self.output.borrow_mut(), &mut spare);
            self.in_flight.set(spare.len());
            let written = self.write_all(&spare).await;
            bytes_out(spare.len());
            self.in_flight.set(0);
            spare.clear();
            if spare.capacity() > SPARE_CAPACITY_KEPT {
                spare = Vec::new();
            }
            if written.is_err() {
                self.close(None);
                self.writer_done.notify();
                return;
            }
            if self.congested.get() && self.queued_bytes() < self.soft_limit / 2 {
                self.congested.set(false);
                self.directory.set_congested(self.node, self.shard, false);
            }
        }
    }
}
