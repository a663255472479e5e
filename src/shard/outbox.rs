//! Batches being built for other shards, before they are handed off.

use crate::limits::{BATCH_POOL_MAX, OUTBOX_BYTES_HIGH};

use super::link::{push_entry, Batch, Class, EntryHeader, ShardLink, CLASSES};

/// One batch per target shard and class, plus a pool of empty batches.
pub(super) struct Outboxes {
    /// `batches[target][class]`; the entries for the shard itself stay empty.
    batches: Vec<[Batch; 3]>,
    pool: Vec<Batch>,
}

/// What one hand-off attempt did.
pub(super) struct Flushed {
    pub sent: u64,
    pub deferred: u64,
}

impl Outboxes {
    pub(super) fn new(shard_count: usize) -> Self {
        Outboxes {
            batches: (0..shard_count).map(|_| Default::default()).collect(),
            pool: Vec::new(),
        }
    }

    #[inline]
    pub(super) fn push(&mut self, target: usize, class: Class, header: &EntryHeader, frame: &[u8]) {
        push_entry(&mut self.batches[target][class as usize], header, frame);
    }

    /// Whether every batch of `class` is below the high-water mark.
    pub(super) fn has_room(&self, class: Class) -> bool {
        self.batches
            .iter()
            .all(|batches| batches[class as usize].len() < OUTBOX_BYTES_HIGH)
    }

    /// Hands every non-empty batch to its channel; a batch whose channel is
    /// full stays here, to be retried (and keeps growing until then, which
    /// `has_room` turns into backpressure).
    pub(super) fn try_flush(&mut self, links: &[ShardLink]) -> Flushed {
        let mut flushed = Flushed {
            sent: 0,
            deferred: 0,
        };
        for (target, batches) in self.batches.iter_mut().enumerate() {
            for class in CLASSES {
                let slot = &mut batches[class as usize];
                if slot.is_empty() {
                    continue;
                }
                let fresh = self.pool.pop().unwrap_or_default();
                let batch = std::mem::replace(slot, fresh);
                match links[target].try_send(class, batch) {
                    Ok(()) => flushed.sent += 1,
                    Err(batch) => {
                        let fresh = std::mem::replace(slot, batch);
                        self.pool.push(fresh);
                        flushed.deferred += 1;
                    }
                }
            }
        }
        flushed
    }

    /// Bytes waiting to be handed off in batches of `class`.
    pub(super) fn bytes(&self, class: Class) -> usize {
        self.batches
            .iter()
            .map(|batches| batches[class as usize].len())
            .sum()
    }

    /// Keeps an emptied batch (received from another shard) for reuse.
    pub(super) fn recycle(&mut self, mut batch: Batch) {
        if self.pool.len() < BATCH_POOL_MAX {
            batch.clear();
            self.pool.push(batch);
        }
    }
}
