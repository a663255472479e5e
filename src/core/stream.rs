//! One connection's output: a numbered byte stream that outlives its
//! socket.
//!
//! Everything the router queues for a node after the Welcome is one byte
//! *stream*, numbered from offset 0 and continued, not restarted, when a
//! connection of the same node process resumes it. The stream keeps three
//! offsets:
//!
//! ```text
//!   kept_from          written                 end
//!      |-------------------|----------------------|
//!       written, kept        queued, not written
//!       until acknowledged
//! ```
//!
//! - `end`: frames are appended whole ([`OutputStream::append`]), into
//!   chunks of about [`CHUNK_BYTES`] taken from the shard's
//!   [`BufferPool`], so a long queue is never moved or reallocated.
//! - `written`: the socket writer asks for [`OutputStream::writable`] and
//!   reports what the kernel took ([`OutputStream::wrote`]). The bytes
//!   stay in place while they are written: nothing is copied out.
//! - `kept_from`: with acknowledgements (`Hello.acks`) written bytes are
//!   kept until the node acknowledges them ([`OutputStream::ack`], on a
//!   frame boundary), so that a resuming connection can replay them;
//!   without, a chunk is dropped once it is written whole.
//!
//! A message whose verdict depends on the node having it (`Deferred`)
//! waits for the offset at which its frame ends: for the Ack covering it,
//! or while the connection is suspended for a resume. When the stream
//! ends for good, every outcome still waiting is handed back to be
//! answered as not delivered.
//!
//! The Welcome (before the stream) and a closing Error frame (after it)
//! are written by the same writer but are not part of the stream: they
//! have no offsets and are never replayed.

use std::collections::VecDeque;

use crate::route::{Plan, Sender};
use crate::wire::InvalidField;

/// A stream chunk is closed once it holds this many bytes; a larger frame
/// makes a larger chunk. Large enough that one write syscall carries
/// hundreds of frames, small enough that an acknowledged prefix is given
/// back soon.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Free chunks a shard keeps for reuse (about 4 MiB): enough for the
/// connections that are busy at one moment; an idle connection holds none.
pub const POOL_CHUNKS_MAX: usize = 64;

/// Free chunks `BufferPool::trim` always leaves (512 KiB): a steady flow
/// reuses them instead of freeing and allocating them again every time.
pub const POOL_CHUNKS_KEPT: usize = 8;

/// Empty chunks for the streams of one shard.
#[derive(Default)]
pub struct BufferPool {
    free: Vec<Vec<u8>>,
    /// The fewest chunks the pool held since the last `trim`: that many
    /// were not needed.
    low_water: usize,
}

impl BufferPool {
    pub fn take(&mut self) -> Vec<u8> {
        let chunk = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES));
        self.low_water = self.low_water.min(self.free.len());
        chunk
    }

    /// Frees the chunks no connection needed since the last call (a burst
    /// is over), but `POOL_CHUNKS_KEPT`: the pool follows the shard's need,
    /// not its peak. Returns how many were freed.
    pub fn trim(&mut self) -> usize {
        let unused = self
            .low_water
            .min(self.free.len().saturating_sub(POOL_CHUNKS_KEPT));
        self.free.truncate(self.free.len() - unused);
        if self.free.is_empty() {
            self.free = Vec::new();
        }
        self.low_water = self.free.len();
        unused
    }

    /// Keeps an emptied chunk for reuse, unless the pool is full or the
    /// chunk grew for an unusually large frame (that memory goes back).
    pub fn give(&mut self, mut chunk: Vec<u8>) {
        if self.free.len() < POOL_CHUNKS_MAX && chunk.capacity() <= 2 * CHUNK_BYTES {
            chunk.clear();
            self.free.push(chunk);
        }
    }

    /// Chunks kept for reuse.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
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

/// See the module docs.
pub struct OutputStream {
    /// Its identity, told in the Welcome and presented by a resume.
    id: u64,
    /// The node acknowledges the stream.
    acks: bool,
    chunks: VecDeque<Vec<u8>>,
    /// Bytes at the front of `chunks[0]` no longer kept.
    front_skip: usize,
    /// Stream offset of the first byte kept; always a frame boundary.
    kept_from: u64,
    /// Stream offset up to which bytes went to a socket.
    written: u64,
    /// Stream offset of the next byte queued.
    end: u64,
    /// Outcomes waiting for the stream to pass the offset at which their
    /// frame ends, in offset order.
    deferred: VecDeque<(u64, Deferred)>,
    /// The Welcome, written before the stream.
    preamble: Vec<u8>,
    preamble_written: usize,
    /// The Error frame written after the stream, when closing.
    farewell: Vec<u8>,
    farewell_written: usize,
    /// Frames queued so far (the heartbeat compares it between checks).
    frames_queued: u64,
    /// Bytes written so far, stream and not (a write stall shows as no
    /// change).
    bytes_written_total: u64,
    /// The node's own stream, the other direction: bytes of its frames
    /// (Hellos, Pings, Pongs and Acks excluded) this router processed, and
    /// how many of them it has acknowledged (see `Welcome.received`).
    pub peer_received: u64,
    pub peer_acked: u64,
}

impl OutputStream {
    /// A new stream starting at offset 0.
    pub fn new(id: u64, acks: bool) -> OutputStream {
        OutputStream {
            id,
            acks,
            chunks: VecDeque::new(),
            front_skip: 0,
            kept_from: 0,
            written: 0,
            end: 0,
            deferred: VecDeque::new(),
            preamble: Vec::new(),
            preamble_written: 0,
            farewell: Vec::new(),
            farewell_written: 0,
            frames_queued: 0,
            bytes_written_total: 0,
            peer_received: 0,
            peer_acked: 0,
        }
    }

    pub fn acks(&self) -> bool {
        self.acks
    }

    /// The stream's identity.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A short form of the identity, carried with every request of the
    /// stream between shards so that its verdict reaches this stream and
    /// no other (never 0, which means "any stream").
    pub fn tag(&self) -> u32 {
        ((self.id ^ (self.id >> 32)) as u32) | 1
    }

    /// The offset of the next byte queued.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The offset the socket writer has reached.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The first offset still kept (with acks: the last one acknowledged).
    pub fn kept_from(&self) -> u64 {
        self.kept_from
    }

    /// Bytes the stream holds for the node: queued, and with acks, written
    /// and not acknowledged. What the output limits bound.
    pub fn queued_bytes(&self) -> usize {
        (self.end - self.kept_from) as usize
    }

    /// Queued and not written yet: what the socket has still to take.
    /// (Unlike `queued_bytes`, it does not wait for the node's Acks: what
    /// pauses a reader or holds a copy must not, or a reader paused for it
    /// could never read the Acks that end the pause.)
    pub fn unwritten_bytes(&self) -> usize {
        (self.end - self.written) as usize + (self.preamble.len() - self.preamble_written)
    }

    /// Written and not acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        if self.acks {
            (self.written - self.kept_from) as usize
        } else {
            0
        }
    }

    pub fn frames_queued(&self) -> u64 {
        self.frames_queued
    }

    pub fn bytes_written_total(&self) -> u64 {
        self.bytes_written_total
    }

    /// Whether anything is left to write, stream or preamble.
    pub fn has_unwritten(&self) -> bool {
        self.preamble_written < self.preamble.len() || self.written < self.end
    }

    pub fn deferred_count(&self) -> usize {
        self.deferred.len()
    }

    /// Sets the Welcome, written before the stream, whatever its size.
    pub fn set_preamble(&mut self, welcome: &[u8]) {
        self.preamble.clear();
        self.preamble.extend_from_slice(welcome);
        self.preamble_written = 0;
    }

    /// Sets the Error frame written after the stream.
    pub fn set_farewell(&mut self, error: &[u8]) {
        if self.farewell.is_empty() {
            self.farewell.extend_from_slice(error);
        }
    }

    /// Appends one frame.
    #[inline]
    pub fn append(&mut self, pool: &mut BufferPool, frame: &[u8]) {
        self.append_with(pool, |out| out.extend_from_slice(frame));
    }

    /// Appends one frame that `write` encodes in place.
    #[inline]
    pub fn append_with(&mut self, pool: &mut BufferPool, write: impl FnOnce(&mut Vec<u8>)) {
        let full = self
            .chunks
            .back()
            .is_none_or(|tail| tail.len() >= CHUNK_BYTES);
        if full {
            self.chunks.push_back(pool.take());
        }
        let tail = self.chunks.back_mut().expect("a tail chunk");
        let before = tail.len();
        write(tail);
        let len = tail.len() - before;
        debug_assert!(len >= 4, "frames carry a length prefix");
        self.end += len as u64;
        self.frames_queued += 1;
    }

    /// Makes `outcome` wait for the frame just appended.
    pub fn defer(&mut self, outcome: Deferred) {
        self.deferred.push_back((self.end, outcome));
    }

    /// The next bytes for the socket: the rest of the preamble, else the
    /// stream from `written` to the end of its chunk, else (when
    /// `with_farewell`) the rest of the farewell. Empty: nothing to write.
    pub fn writable(&self, with_farewell: bool) -> &[u8] {
        if self.preamble_written < self.preamble.len() {
            return &self.preamble[self.preamble_written..];
        }
        if self.written < self.end {
            let (index, at) = self.position(self.written);
            return &self.chunks[index][at..];
        }
        if with_farewell {
            return &self.farewell[self.farewell_written..];
        }
        &[]
    }

    /// `n` bytes of what [`Self::writable`] returned were written.
    pub fn wrote(&mut self, pool: &mut BufferPool, n: usize) {
        self.bytes_written_total += n as u64;
        if self.preamble_written < self.preamble.len() {
            self.preamble_written += n;
            debug_assert!(self.preamble_written <= self.preamble.len());
            if self.preamble_written == self.preamble.len() {
                self.preamble = Vec::new();
                self.preamble_written = 0;
            }
            return;
        }
        if self.written < self.end {
            self.written += n as u64;
            debug_assert!(self.written <= self.end);
            if !self.acks {
                self.drop_written_chunks(pool);
            }
            return;
        }
        self.farewell_written += n;
        debug_assert!(self.farewell_written <= self.farewell.len());
    }

    /// Whether the farewell (if any) has been written whole.
    pub fn farewell_done(&self) -> bool {
        self.farewell_written == self.farewell.len()
    }

    /// Without acks: drops the chunks written whole. The last chunk is
    /// dropped only when nothing follows it, so `kept_from` stays on a
    /// frame boundary.
    fn drop_written_chunks(&mut self, pool: &mut BufferPool) {
        while let Some(front) = self.chunks.front() {
            let front_end = self.kept_from + (front.len() - self.front_skip) as u64;
            if front_end > self.written {
                break;
            }
            let chunk = self.chunks.pop_front().expect("front checked");
            pool.give(chunk);
            self.front_skip = 0;
            self.kept_from = front_end;
        }
    }

    /// The chunk and position of stream offset `offset` (kept, not past
    /// `end`).
    fn position(&self, offset: u64) -> (usize, usize) {
        debug_assert!(offset >= self.kept_from && offset <= self.end);
        let mut rest = (offset - self.kept_from) as usize + self.front_skip;
        for (index, chunk) in self.chunks.iter().enumerate() {
            if rest < chunk.len() {
                return (index, rest);
            }
            rest -= chunk.len();
        }
        (self.chunks.len(), 0)
    }

    /// The first frame boundary at or after `offset` (kept bytes only).
    fn boundary_at_or_after(&self, offset: u64) -> u64 {
        let mut at = self.kept_from;
        let mut skip = self.front_skip;
        for chunk in &self.chunks {
            let mut pos = skip;
            while pos < chunk.len() {
                if at >= offset {
                    return at;
                }
                let prefix = chunk[pos..pos + 4].try_into().expect("a whole prefix");
                let len = 4 + u32::from_le_bytes(prefix) as usize;
                pos += len;
                at += len as u64;
            }
            skip = 0;
        }
        at
    }

    /// Checks an offset a node says it processed (an Ack, or
    /// `Hello.received` on a resume): within what was sent and kept, and
    /// on a frame boundary.
    pub fn check_received(&self, received: u64) -> Result<(), InvalidField> {
        if received > self.written {
            return Err(InvalidField::PastEnd {
                received,
                sent: self.written,
            });
        }
        if received < self.kept_from {
            return Err(InvalidField::Backwards {
                received,
                acked: self.kept_from,
            });
        }
        if self.boundary_at_or_after(received) != received {
            return Err(InvalidField::InsideFrame { received });
        }
        Ok(())
    }

    /// The node acknowledged `received` stream bytes: they are dropped, and
    /// the outcomes they settle are appended to `delivered`.
    pub fn ack(
        &mut self,
        pool: &mut BufferPool,
        received: u64,
        delivered: &mut Vec<Deferred>,
    ) -> Result<(), InvalidField> {
        if !self.acks {
            return Err(InvalidField::AckWithoutAcks);
        }
        self.check_received(received)?;
        self.drop_before(pool, received);
        self.settle_before(received, delivered);
        Ok(())
    }

    /// Drops the kept bytes before `offset` (a frame boundary).
    fn drop_before(&mut self, pool: &mut BufferPool, offset: u64) {
        while self.kept_from < offset {
            let front = self.chunks.front().expect("kept bytes are in chunks");
            let in_front = (front.len() - self.front_skip) as u64;
            if self.kept_from + in_front <= offset {
                self.kept_from += in_front;
                let chunk = self.chunks.pop_front().expect("front checked");
                pool.give(chunk);
                self.front_skip = 0;
            } else {
                self.front_skip += (offset - self.kept_from) as usize;
                self.kept_from = offset;
            }
        }
    }

    fn settle_before(&mut self, offset: u64, delivered: &mut Vec<Deferred>) {
        while self.deferred.front().is_some_and(|&(end, _)| end <= offset) {
            let (_, outcome) = self.deferred.pop_front().expect("front checked");
            delivered.push(outcome);
        }
    }

    /// Continues this stream on a new connection of the same node process
    /// (`acks` as its Hello says; `received` what it says it processed).
    /// Returns the stream offset the new connection starts at and appends
    /// the outcomes now known to be delivered. Call
    /// [`Self::check_resume`] first.
    pub fn resume(
        &mut self,
        pool: &mut BufferPool,
        acks: bool,
        received: u64,
        delivered: &mut Vec<Deferred>,
    ) -> u64 {
        // Where the new connection starts: what the node processed, when
        // both connections acknowledge; else what was written counts as
        // received, up to the next whole frame (a frame cut in half by the
        // failed socket is lost with it, as without acks anything written
        // into a broken socket is).
        let from = if self.acks && acks {
            received
        } else {
            self.boundary_at_or_after(self.written)
        };
        self.drop_before(pool, from);
        self.written = from;
        if acks {
            self.settle_before(from, delivered);
        } else {
            // Queued again, and the node does not acknowledge: as good as
            // delivered, as on any connection without acks.
            delivered.extend(self.deferred.drain(..).map(|(_, outcome)| outcome));
        }
        self.acks = acks;
        self.preamble = Vec::new();
        self.preamble_written = 0;
        self.farewell = Vec::new();
        self.farewell_written = 0;
        from
    }

    /// Checks a resume's `received` (only used when both sides acknowledge).
    pub fn check_resume(&self, acks: bool, received: u64) -> Result<(), InvalidField> {
        if self.acks && acks {
            self.check_received(received)
        } else {
            Ok(())
        }
    }

    /// Takes every outcome still waiting (the stream ends for good).
    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        self.deferred
            .drain(..)
            .map(|(_, outcome)| outcome)
            .collect()
    }

    /// Gives every chunk back (the stream ends for good).
    pub fn release(&mut self, pool: &mut BufferPool) {
        for chunk in self.chunks.drain(..) {
            pool.give(chunk);
        }
        self.front_skip = 0;
        self.kept_from = self.end;
        self.written = self.end;
        self.preamble = Vec::new();
        self.farewell = Vec::new();
        self.deferred = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::NodeId;

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut frame = ((len - 4) as u32).to_le_bytes().to_vec();
        frame.resize(len, fill);
        frame
    }

    fn outcome(id: u64) -> Deferred {
        Deferred::Fanout {
            coordinator: 0,
            token: id,
        }
    }

    /// Writes everything writable, `step` bytes at a time; returns it.
    fn drain(stream: &mut OutputStream, pool: &mut BufferPool, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let bytes = stream.writable(true);
            if bytes.is_empty() {
                return out;
            }
            let n = bytes.len().min(step);
            out.extend_from_slice(&bytes[..n]);
            stream.wrote(pool, n);
        }
    }

    #[test]
    fn preamble_stream_farewell_in_order() {
        let mut pool = BufferPool::default();
        let mut stream = OutputStream::new(1, false);
        stream.set_preamble(b"WELCOME!");
        stream.append(&mut pool, &frame(10, 1));
        stream.append(&mut pool, &frame(6, 2));
        stream.set_farewell(&frame(5, 9));
        let out = drain(&mut stream, &mut pool, 3);
        let mut expected = b"WELCOME!".to_vec();
        expected.extend(frame(10, 1));
        expected.extend(frame(6, 2));
        expected.extend(frame(5, 9));
        assert_eq!(out, expected);
        assert_eq!(
            stream.queued_bytes(),
            0,
            "written chunks dropped without acks"
        );
        assert!(stream.farewell_done());
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn acks_keep_bytes_until_acknowledged_on_a_boundary() {
        let mut pool = BufferPool::default();
        let mut stream = OutputStream::new(1, true);
        stream.append(&mut pool, &frame(10, 1));
        stream.defer(outcome(1));
        stream.append(&mut pool, &frame(20, 2));
        stream.defer(outcome(2));
        drain(&mut stream, &mut pool, 1000);
        assert_eq!(stream.queued_bytes(), 30);
        assert_eq!(stream.unacked_bytes(), 30);
        let mut delivered = Vec::new();
        assert_eq!(
            stream.ack(&mut pool, 5, &mut delivered),
            Err(InvalidField::InsideFrame { received: 5 })
        );
        assert_eq!(
            stream.ack(&mut pool, 31, &mut delivered),
            Err(InvalidField::PastEnd {
                received: 31,
                sent: 30
            })
        );
        stream.ack(&mut pool, 10, &mut delivered).unwrap();
        assert_eq!(delivered, [outcome(1)]);
        assert_eq!(
            stream.ack(&mut pool, 0, &mut delivered),
            Err(InvalidField::Backwards {
                received: 0,
                acked: 10
            })
        );
        stream.ack(&mut pool, 10, &mut delivered).unwrap();
        stream.ack(&mut pool, 30, &mut delivered).unwrap();
        assert_eq!(delivered, [outcome(1), outcome(2)]);
        assert_eq!(stream.queued_bytes(), 0);
    }

    #[test]
    fn resume_replays_from_what_the_node_processed() {
        let mut pool = BufferPool::default();
        let mut stream = OutputStream::new(1, true);
        for i in 0..3 {
            stream.append(&mut pool, &frame(8, i));
            stream.defer(outcome(u64::from(i)));
        }
        drain(&mut stream, &mut pool, 1000);
        // Lost; one more frame parked while suspended.
        stream.append(&mut pool, &frame(8, 3));
        stream.defer(outcome(3));
        assert!(stream.check_resume(true, 12).is_err());
        assert!(
            stream.check_resume(true, 32).is_err(),
            "past what was written"
        );
        stream.check_resume(true, 8).unwrap();
        let mut delivered = Vec::new();
        let from = stream.resume(&mut pool, true, 8, &mut delivered);
        assert_eq!(from, 8);
        assert_eq!(delivered, [outcome(0)]);
        stream.set_preamble(b"W");
        let out = drain(&mut stream, &mut pool, 5);
        let mut expected = b"W".to_vec();
        for i in 1..4 {
            expected.extend(frame(8, i));
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn resume_without_acks_skips_a_half_written_frame() {
        let mut pool = BufferPool::default();
        let mut stream = OutputStream::new(1, false);
        stream.append(&mut pool, &frame(8, 1));
        stream.append(&mut pool, &frame(8, 2));
        let first = stream.writable(false).len();
        assert_eq!(first, 16);
        stream.wrote(&mut pool, 12);
        stream.append(&mut pool, &frame(8, 3));
        stream.defer(outcome(7));
        let mut delivered = Vec::new();
        let from = stream.resume(&mut pool, false, 0, &mut delivered);
        assert_eq!(from, 16);
        assert_eq!(delivered, [outcome(7)]);
        assert_eq!(drain(&mut stream, &mut pool, 100), frame(8, 3));
    }

    #[test]
    fn chunks_rotate_and_return_to_the_pool() {
        let mut pool = BufferPool::default();
        let mut stream = OutputStream::new(1, true);
        let big = frame(CHUNK_BYTES / 2 + 1, 7);
        for _ in 0..5 {
            stream.append(&mut pool, &big);
        }
        assert_eq!(stream.chunks.len(), 3);
        drain(&mut stream, &mut pool, usize::MAX);
        let mut delivered = Vec::new();
        stream
            .ack(&mut pool, 3 * big.len() as u64, &mut delivered)
            .unwrap();
        assert_eq!(pool.len(), 1, "one whole chunk acknowledged");
        stream.release(&mut pool);
        assert_eq!(pool.len(), 3);
        let _ = NodeId(0);
    }
}
