//! The simulated network: TCP connections as pairs of byte pipes with a
//! bounded buffer and a delivery delay, and the cross-shard channels.

use std::collections::VecDeque;

use crate::core::batch::Batch;
use crate::time::Time;

/// One direction of a simulated TCP connection: bytes in order, each
/// write arriving after its delay (never before an earlier write), within
/// a bounded buffer (a full buffer takes no more: the writer waits, as on
/// a real socket).
#[derive(Debug, Default)]
pub struct Pipe {
    chunks: VecDeque<(Time, Vec<u8>)>,
    bytes: usize,
    capacity: usize,
    /// The writer shut its side down: after the bytes, end of file.
    pub fin: bool,
    /// The connection is broken: nothing more is delivered.
    pub broken: bool,
}

impl Pipe {
    pub fn new(capacity: usize) -> Self {
        Pipe {
            capacity,
            ..Pipe::default()
        }
    }

    /// Room for more bytes.
    pub fn room(&self) -> usize {
        if self.broken || self.fin {
            0
        } else {
            self.capacity - self.bytes
        }
    }

    /// Writes what fits of `bytes`, arriving at `at` (not before what is
    /// already on its way); returns how much.
    pub fn write(&mut self, bytes: &[u8], at: Time) -> usize {
        let n = bytes.len().min(self.room());
        if n == 0 {
            return 0;
        }
        let at = self.chunks.back().map_or(at, |(last, _)| at.max(*last));
        self.chunks.push_back((at, bytes[..n].to_vec()));
        self.bytes += n;
        n
    }

    /// When the next bytes arrive.
    pub fn next_arrival(&self) -> Option<Time> {
        if self.broken {
            return None;
        }
        self.chunks.front().map(|(at, _)| *at)
    }

    /// Whether bytes have arrived by `now`.
    pub fn readable(&self, now: Time) -> bool {
        !self.broken && self.chunks.front().is_some_and(|(at, _)| *at <= now)
    }

    /// Whether the reader sees the end: broken, or shut down and drained.
    pub fn at_end(&self) -> bool {
        self.broken || (self.fin && self.chunks.is_empty())
    }

    /// Takes up to `max` bytes that have arrived by `now`.
    pub fn read(&mut self, now: Time, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((at, chunk)) = self.chunks.front_mut() else {
                break;
            };
            if *at > now || self.broken {
                break;
            }
            let take = (max - out.len()).min(chunk.len());
            out.extend_from_slice(&chunk[..take]);
            chunk.drain(..take);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.bytes -= out.len();
        out
    }

    /// Breaks the pipe: what is on its way is lost.
    pub fn break_(&mut self) {
        self.broken = true;
        self.chunks.clear();
        self.bytes = 0;
    }
}

/// A bounded cross-shard channel (`LINK_BATCHES_MAX` batches), first in
/// first out, like a crossbeam channel.
#[derive(Debug, Default)]
pub struct Channel {
    pub batches: VecDeque<Batch>,
}
