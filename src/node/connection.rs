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
//!
//! # The stream, suspension and resumption
//!
//! Everything queued after the Welcome is one byte *stream* per
//! connection, numbered from offset 0 and continued, not restarted, when a
//! connection of the same node process resumes it. The stream outlives its
//! socket:
//!
//! - A node that set `Hello.acks` acknowledges the offset it has processed
//!   (Ack frames). Written bytes are kept in `retained` until acknowledged,
//!   and the verdicts of the messages in them wait for the Ack (`deferred`):
//!   `Routed` then means the node has the message.
//! - When the socket is lost without a Goodbye the connection is
//!   *suspended* ([`suspend`]): no socket, but frames are still queued
//!   (parked) up to `--park-bytes-max`, and their verdicts deferred.
//! - A new connection of the same process on this shard takes the stream
//!   over ([`take_over`]): it first writes the unacknowledged bytes from the
//!   offset the node says it processed, then what was parked, in order.
//! - When nobody takes it over in time (or the park fills up), the shard
//!   answers every deferred message as not delivered.
//!
//! Frames that are not part of the stream: the Welcome (written first) and
//! a closing Error frame (written last).
//!
//! [`push_deliver`]: Connection::push_deliver
//! [`push_control`]: Connection::push_control
//! [`suspend`]: Connection::suspend
//! [`take_over`]: Connection::take_over

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
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
use crate::route::{Plan, Sender};
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

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Reading and writing.
    Open,
    /// The socket is gone; frames are parked for a resuming connection.
    Suspended,
    /// Ending for good: nothing more is queued.
    Closing,
}

/// A message outcome that waits for the node's Ack (or for a suspended
/// connection to be resumed or given up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    /// A Route's Deliver: report to the sender as in `route::verdict`.
    Route {
        sender: Sender,
        message_id: u64,
        token: u64,
        plan: Plan,
    },
    /// A Fanout's Deliver: report to the coordinating shard.
    Fanout { coordinator: usize, token: u64 },
}

/// What a connection taking over a stream must settle at once.
pub struct TakeOver {
    /// Outcomes now known to be delivered (the node says it has them, or
    /// the node does not acknowledge and they are queued again).
    pub delivered: Vec<Deferred>,
    /// The stream offset the new connection starts at.
    pub offset: u64,
    /// Bytes queued again: unacknowledged plus parked.
    pub replayed: usize,
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
    /// The socket; taken (closed) when the connection is suspended.
    stream: RefCell<Option<TcpStream>>,
    /// The node sends Acks (see the module docs).
    acks: bool,
    /// The Welcome, written before the stream.
    preamble: RefCell<Vec<u8>>,
    /// Frames queued and not yet taken by the writer.
    output: RefCell<Vec<u8>>,
    /// Bytes the writer is writing right now.
    in_flight: Cell<usize>,
    /// Stream offset of the first byte of `retained` (with acks), or of
    /// the first byte not yet written (without).
    stream_base: Cell<u64>,
    /// With acks: bytes written and not yet acknowledged.
    retained: RefCell<VecDeque<u8>>,
    /// Outcomes waiting for the stream offset at which their frame ends.
    deferred: RefCell<VecDeque<(u64, Deferred)>>,
    /// The Error frame written after the stream when closing.
    farewell: RefCell<Vec<u8>>,
    soft_limit: usize,
    hard_limit: usize,
    /// Bytes a suspended connection may hold (--park-bytes-max).
    park_limit: usize,
    congested: Cell<bool>,
    state: Cell<LinkState>,
    /// The park filled up while suspended.
    park_overflowed: Cell<bool>,
    /// Wakes the grace task when a suspended connection stops being one.
    state_changed: Signal,
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
    /// The writer's last write failed.
    write_failed: Cell<bool>,
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
        acks: bool,
        soft_limit: usize,
        park_limit: usize,
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
            stream: RefCell::new(Some(stream)),
            acks,
            preamble: RefCell::new(Vec::new()),
            output: RefCell::new(Vec::new()),
            in_flight: Cell::new(0),
            stream_base: Cell::new(0),
            retained: RefCell::new(VecDeque::new()),
            deferred: RefCell::new(VecDeque::new()),
            farewell: RefCell::new(Vec::new()),
            soft_limit,
            hard_limit: soft_limit * OUT_BUFFER_HARD_FACTOR,
            park_limit,
            congested: Cell::new(false),
            state: Cell::new(LinkState::Open),
            park_overflowed: Cell::new(false),
            state_changed: Signal::default(),
            slow_consumer_error,
            writer_wake: Signal::default(),
            reader_waker: Cell::new(None),
            writer_done: Signal::default(),
            reads: Cell::new(0),
            frames_queued: Cell::new(0),
            read_paused: Cell::new(false),
            leave_reason: Cell::new(None),
            pending_reports: RefCell::new(HashMap::default()),
            write_failed: Cell::new(false),
        }
    }

    /// Whether the connection stopped reading and writing (suspended or
    /// closing).
    pub fn is_closing(&self) -> bool {
        self.state.get() != LinkState::Open
    }

    pub fn state(&self) -> LinkState {
        self.state.get()
    }

    /// Whether frames may still be queued (open or suspended).
    pub fn accepts(&self) -> bool {
        self.state.get() != LinkState::Closing
    }

    /// Whether an outcome of a frame queued now must wait (see `defer`).
    pub fn defers_reports(&self) -> bool {
        self.acks || self.state.get() == LinkState::Suspended
    }

    /// The stream offset of the next byte queued.
    pub fn stream_end(&self) -> u64 {
        let unwritten = if self.acks { 0 } else { self.in_flight.get() };
        self.stream_base.get()
            + (self.retained.borrow().len() + unwritten + self.output.borrow().len()) as u64
    }

    /// The stream offset this connection started at (its Welcome's).
    pub fn stream_offset(&self) -> u64 {
        self.stream_base.get()
    }

    /// Sets the Welcome, written before the stream.
    pub fn set_preamble(&self, welcome: &[u8]) {
        *self.preamble.borrow_mut() = welcome.to_vec();
        self.writer_wake.notify();
    }

    /// Makes the outcome of the frame just queued wait until the node
    /// acknowledges it, or the suspended connection is resumed or given up.
    pub fn defer(&self, outcome: Deferred) {
        let end = self.stream_end();
        self.deferred.borrow_mut().push_back((end, outcome));
    }

    /// Takes every deferred outcome (the connection is given up).
    pub fn take_deferred(&self) -> Vec<Deferred> {
        self.deferred
            .borrow_mut()
            .drain(..)
            .map(|(_, outcome)| outcome)
            .collect()
    }

    /// The node acknowledged `received` stream bytes: forgets them and
    /// moves the outcomes they settle into `delivered`.
    pub fn ack(&self, received: u64, delivered: &mut Vec<Deferred>) -> Result<(), String> {
        if !self.acks {
            return Err("Ack on a connection whose Hello did not set acks".into());
        }
        let base = self.stream_base.get();
        let mut retained = self.retained.borrow_mut();
        let written = base + retained.len() as u64;
        if received > written {
            return Err(format!(
                "Ack of stream offset {received}; only {written} bytes were sent"
            ));
        }
        if received <= base {
            return Ok(()); // Nothing new (or an old Ack overtaken).
        }
        retained.drain(..(received - base) as usize);
        drop(retained);
        self.stream_base.set(received);
        let mut deferred = self.deferred.borrow_mut();
        while deferred.front().is_some_and(|&(end, _)| end <= received) {
            let (_, outcome) = deferred.pop_front().expect("front checked");
            delivered.push(outcome);
        }
        drop(deferred);
        self.uncongest_if_drained();
        Ok(())
    }

    fn uncongest_if_drained(&self) {
        if self.congested.get() && self.queued_bytes() < self.soft_limit / 2 {
            self.congested.set(false);
            self.directory.set_congested(self.node, self.shard, false);
        }
    }

    /// Continues the stream of `old`, a connection of the same node process
    /// on this shard (suspended, or open and being replaced); `received` is
    /// what the node says it processed. `old` ends, and must not be queued
    /// to afterwards. Call before anything is queued here.
    pub fn take_over(&self, old: &Connection, received: u64) -> TakeOver {
        let old_base = old.stream_base.get();
        let retained = std::mem::take(&mut *old.retained.borrow_mut());
        let old_written = old_base + retained.len() as u64;
        // Where the new stream starts: what the node processed, when it
        // acknowledges (never before what it acknowledged, never past what
        // was sent); else everything written counts as received.
        let from = if old.acks && self.acks {
            received.clamp(old_base, old_written)
        } else if old.acks {
            old_written
        } else {
            old_base + old.in_flight.get() as u64
        };
        let mut output = self.output.borrow_mut();
        debug_assert!(output.is_empty(), "take_over before anything is queued");
        let skip = (from - old_base) as usize;
        output.extend(retained.iter().skip(skip));
        output.append(&mut old.output.borrow_mut());
        let replayed = output.len();
        drop(output);
        self.stream_base.set(from);

        let mut delivered = Vec::new();
        for (end, outcome) in old.deferred.borrow_mut().drain(..) {
            if end <= from || !self.acks {
                delivered.push(outcome);
            } else {
                self.deferred.borrow_mut().push_back((end, outcome));
            }
        }
        *self.pending_reports.borrow_mut() = std::mem::take(&mut *old.pending_reports.borrow_mut());
        old.in_flight.set(0);
        old.set_leave_reason(fb::LeftReason::Replaced);
        old.end();
        TakeOver {
            delivered,
            offset: from,
            replayed,
        }
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

    /// Bytes queued for the node: appended plus being written, plus (with
    /// acks) written and not acknowledged.
    pub fn queued_bytes(&self) -> usize {
        let sent = if self.acks {
            self.retained.borrow().len()
        } else {
            self.in_flight.get()
        };
        self.output.borrow().len() + sent
    }

    /// With acks: bytes written and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.retained.borrow().len()
    }

    /// Whether the park filled up (the suspension ended early).
    pub fn park_overflowed(&self) -> bool {
        self.park_overflowed.get()
    }

    /// A suspended connection's room: false (and the suspension ends) when
    /// `bytes` more would pass `--park-bytes-max`.
    fn park_room(&self, bytes: usize) -> bool {
        if self.queued_bytes() + bytes <= self.park_limit {
            return true;
        }
        self.park_overflowed.set(true);
        self.end();
        false
    }

    /// Queues a Deliver decided by an owner shard. Never refused for size
    /// (see the module docs) while open; parked while suspended; refused
    /// when closing or when the park is full.
    pub fn push_deliver(&self, frame: &[u8]) -> Result<(), PushError> {
        match self.state.get() {
            LinkState::Closing => return Err(PushError::Closed),
            LinkState::Suspended if !self.park_room(frame.len()) => return Err(PushError::Closed),
            _ => {}
        }
        self.append(frame);
        Ok(())
    }

    /// Queues a Status, Kick, Pong or Welcome. Past the hard limit the
    /// connection is closed as a slow consumer instead.
    pub fn push_control(&self, frame: &[u8]) -> Result<(), PushError> {
        match self.state.get() {
            LinkState::Closing => return Err(PushError::Closed),
            LinkState::Suspended => {
                if !self.park_room(frame.len()) {
                    return Err(PushError::Closed);
                }
                self.append(frame);
                return Ok(());
            }
            LinkState::Open => {}
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
        if self.state.get() == LinkState::Suspended {
            return; // Parked: bounded by the park, not congestion.
        }
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
    /// shuts the socket's write side down. Closing twice does nothing; a
    /// suspended connection just ends.
    pub fn close(&self, error: Option<&[u8]>) {
        match self.state.get() {
            LinkState::Closing => return,
            LinkState::Suspended => return self.end(),
            LinkState::Open => {}
        }
        self.stop(LinkState::Closing, error);
    }

    /// Suspends an open connection whose socket is lost (or is being given
    /// up): the reader and writer stop (the writer after `error`, if any,
    /// which is not part of the stream), and frames queued from now on are
    /// parked. Returns false if the connection was not open.
    pub fn suspend(&self, error: Option<&[u8]>) -> bool {
        if self.state.get() != LinkState::Open {
            return false;
        }
        self.stop(LinkState::Suspended, error);
        true
    }

    fn stop(&self, state: LinkState, error: Option<&[u8]>) {
        self.state.set(state);
        if let Some(error) = error {
            self.farewell.borrow_mut().extend_from_slice(error);
        }
        if self.congested.replace(false) {
            self.directory.set_congested(self.node, self.shard, false);
        }
        self.directory
            .mark_closing(self.node, self.shard, self.ticket);
        self.writer_wake.notify();
        self.state_changed.notify();
        if let Some(waker) = self.reader_waker.take() {
            waker.wake();
        }
    }

    /// Ends a connection for good without writing anything more (a
    /// suspended one given up or taken over, or an open one taken over).
    fn end(&self) {
        match self.state.get() {
            LinkState::Closing => {}
            LinkState::Suspended => {
                self.state.set(LinkState::Closing);
                self.state_changed.notify();
            }
            LinkState::Open => {
                self.output.borrow_mut().clear();
                self.stop(LinkState::Closing, None);
            }
        }
    }

    /// Completes when a suspended connection is no longer suspended.
    pub(crate) async fn until_not_suspended(&self) {
        while self.state.get() == LinkState::Suspended {
            self.state_changed.wait().await;
        }
    }

    /// Closes the socket (of a suspended connection whose writer is done).
    pub(crate) fn drop_socket(&self) {
        self.stream.borrow_mut().take();
    }

    /// Reads into `buf`. `Ok(None)` means the router is closing the
    /// connection and the reader should stop.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        poll_fn(|cx| {
            if self.is_closing() {
                return Poll::Ready(Ok(None));
            }
            if self.write_failed.get() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let mut stream = self.stream.borrow_mut();
            let Some(stream) = stream.as_mut() else {
                return Poll::Ready(Ok(None));
            };
            match Pin::new(stream).poll_read(cx, buf) {
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
            if self.is_closing() {
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
            let read = poll_fn(|cx| match self.stream.borrow_mut().as_mut() {
                Some(stream) => Pin::new(stream).poll_read(cx, &mut sink),
                None => Poll::Ready(Ok(0)),
            })
            .await;
            if !matches!(read, Ok(1..)) {
                return;
            }
        }
    }

    async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let written = poll_fn(|cx| match self.stream.borrow_mut().as_mut() {
                Some(stream) => Pin::new(stream).poll_write(cx, bytes),
                None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[written..];
        }
        Ok(())
    }

    fn shutdown_write(&self) {
        let Some(fd) = self
            .stream
            .borrow()
            .as_ref()
            .map(|stream| stream.as_raw_fd())
        else {
            return;
        };
        // SAFETY: `fd` is the open socket `stream` owns. A failure (the peer
        // already reset the connection) leaves nothing to do.
        unsafe {
            libc::shutdown(fd, libc::SHUT_WR);
        }
    }

    /// Flushes `output` until the connection closes; counts bytes written
    /// into `bytes_out`.
    pub(crate) async fn run_writer(self: Rc<Self>, bytes_out: impl Fn(usize)) {
        let preamble = std::mem::take(&mut *self.preamble.borrow_mut());
        if self.write_all(&preamble).await.is_err() {
            return self.writer_failed();
        }
        let mut spare = Vec::new();
        loop {
            loop {
                let state = self.state.get();
                let empty = self.output.borrow().is_empty();
                // Suspended: what is queued stays for a resuming connection.
                if state == LinkState::Suspended || (empty && state == LinkState::Closing) {
                    let farewell = std::mem::take(&mut *self.farewell.borrow_mut());
                    let _ = self.write_all(&farewell).await;
                    self.shutdown_write();
                    self.writer_done.notify();
                    return;
                }
                if !empty {
                    break;
                }
                self.writer_wake.wait().await;
            }
            std::mem::swap(&mut *self.output.borrow_mut(), &mut spare);
            if self.acks {
                // Kept until acknowledged, from before the write on: a
                // resuming connection replays it whatever became of it.
                self.retained.borrow_mut().extend(spare.iter());
            } else {
                self.in_flight.set(spare.len());
            }
            let written = self.write_all(&spare).await;
            bytes_out(spare.len());
            if !self.acks && self.in_flight.get() != 0 {
                self.stream_base
                    .set(self.stream_base.get() + spare.len() as u64);
                self.in_flight.set(0);
            }
            spare.clear();
            if spare.capacity() > SPARE_CAPACITY_KEPT {
                spare = Vec::new();
            }
            if written.is_err() {
                return self.writer_failed();
            }
            self.uncongest_if_drained();
        }
    }

    /// The socket failed under the writer: the reader finds out and
    /// decides (suspension or close).
    fn writer_failed(&self) {
        if let Some(waker) = self.reader_waker.take() {
            waker.wake();
        }
        self.write_failed.set(true);
        self.writer_done.notify();
    }
}
