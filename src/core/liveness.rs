//! Liveness as a function of time: heartbeats, timeouts, the reconnect
//! grace.
//!
//! Once per `--heartbeat-ms` the shard checks every open connection
//! ([`ShardCore::handle_timeout`] runs the check when [`ShardCore::poll_timeout`]
//! says it is due):
//!
//! - a node silent for `--node-timeout-ms` (no frame at all, Pongs
//!   included; time the router itself was not reading does not count) is
//!   dead: `Error(NodeTimeout)`, and the connection is suspended (or
//!   closed, without a grace);
//! - a node that acknowledges and has not acknowledged anything for
//!   `--node-timeout-ms` while the router holds unacknowledged bytes is
//!   treated the same way: its senders' verdicts cannot wait forever;
//! - a connection whose socket took no byte for `--node-timeout-ms` while
//!   bytes wait is a node that does not read: `Error(SlowConsumer)`, closed;
//! - a connection on which the node sent nothing, or the router queued
//!   nothing, since the last check, or that holds unacknowledged bytes, is
//!   sent a Ping (so both ends hear from each other once per interval, and
//!   an acknowledging node is asked for an Ack).
//!
//! Suspended connections end when their grace runs out.

use crate::time::Time;
use crate::wire::fb;

use super::conns::LinkState;
use super::out::Close;
use super::stream::CHUNK_BYTES;
use super::{sink, ShardCore};
use crate::limits::{
    CONNECTIONS_ENDED_FOR_RELEASE, MEMORY_RELEASE_BYTES_MIN, MEMORY_RELEASE_INTERVAL,
    SHRINK_USERS_MAX,
};

impl ShardCore {
    /// When the shard next needs [`ShardCore::handle_timeout`].
    pub fn poll_timeout(&self) -> Time {
        let mut next = self.next_tick.min(self.next_release);
        for (_, conn) in self.conns.iter() {
            if let LinkState::Suspended { until } = conn.state {
                if !conn.has_socket {
                    next = next.min(until);
                }
            }
        }
        next
    }

    /// Runs what is due at `now`: ended suspensions, the liveness check.
    pub fn handle_timeout(&mut self, now: Time) {
        self.outboxes.set_now(now);
        self.expire_suspensions(now);
        if now >= self.next_release {
            self.give_memory_back();
            self.next_release = now + MEMORY_RELEASE_INTERVAL;
        }
        if now >= self.next_tick {
            self.tick(now);
            self.tick_slots(now);
            let heartbeat = self.config.heartbeat;
            self.next_tick += heartbeat;
            if self.next_tick <= now {
                self.next_tick = now + heartbeat;
            }
        }
        self.finish_operation(now);
    }

    /// Once per `MEMORY_RELEASE_INTERVAL`: frees what a burst left behind
    /// (stream chunks no connection needed since the last time, a table or topic map
    /// mostly empty) and tells the driver when memory was given back, or
    /// many connections ended (`take_memory_released`), so it can return
    /// the allocator's free pages to the system.
    fn give_memory_back(&mut self) {
        // (A few chunks freed are not worth returning pages to the system:
        // a steady flow would fault them in again.)
        let mut released = self.pool.trim() * CHUNK_BYTES >= MEMORY_RELEASE_BYTES_MIN;
        let table = &mut self.owner.table;
        if !table.has_dead() && table.wants_shrink() && table.user_count() <= SHRINK_USERS_MAX {
            table.shrink();
            released = true;
        }
        if self.owner.topics.wants_shrink() {
            self.owner.topics.shrink();
            released = true;
        }
        let open = self.conns.len();
        if self.conns_at_release >= open + CONNECTIONS_ENDED_FOR_RELEASE {
            released = true;
        }
        if released {
            self.conns_at_release = open;
            self.memory_released = true;
        } else {
            self.conns_at_release = self.conns_at_release.max(open);
        }
    }

    /// Whether memory was given back since the last call: the driver may
    /// return the allocator's free pages to the system (`malloc_trim`).
    pub fn take_memory_released(&mut self) -> bool {
        std::mem::take(&mut self.memory_released)
    }

    /// The liveness check of every open connection (see the module docs).
    fn tick(&mut self, now: Time) {
        let timeout = self.config.node_timeout;
        let grace = self.config.reconnect_grace;
        for index in 0..self.conns.slot_count() {
            let Some(id) = self.conns.id_at(index) else {
                continue;
            };
            let conn = self.conns.get_mut(id).expect("present");
            if !conn.is_open() || !conn.has_socket {
                continue;
            }
            if conn.read_paused {
                // The router is not reading: the node cannot be silent.
                conn.last_heard = now;
            }
            let silent = now.since(conn.last_heard);
            let stream = &conn.stream;
            // Writes: bytes wait and the socket took none since the last check.
            let progress = stream.bytes_written_total() != conn.written_at_tick;
            let stalled = if stream.has_unwritten() && !progress && conn.queued_at_tick != u64::MAX
            {
                *conn.stalled_since.get_or_insert(now)
            } else {
                conn.stalled_since = None;
                now
            };
            // Acks: bytes wait for an Ack and none came since the last check.
            let acked = stream.kept_from() != conn.acked_at_tick;
            let unacked = stream.unacked_bytes() > 0;
            // (While the router does not read, the node's Acks wait unread:
            // that time does not count, as for silence.)
            let unacked_since =
                if unacked && !acked && !conn.read_paused && conn.queued_at_tick != u64::MAX {
                    *conn.unacked_since.get_or_insert(now)
                } else {
                    conn.unacked_since = None;
                    now
                };
            let ping =
                !conn.heard_since_tick || stream.frames_queued() == conn.queued_at_tick || unacked;
            conn.heard_since_tick = false;
            conn.queued_at_tick = stream.frames_queued();
            conn.written_at_tick = stream.bytes_written_total();
            conn.acked_at_tick = stream.kept_from();

            let timed_out = if silent >= timeout {
                Some(format!(
                    "nothing from the node for {} ms (--node-timeout-ms)",
                    silent.as_millis()
                ))
            } else if now.since(unacked_since) >= timeout {
                self.counters.ack_timeouts += 1;
                Some(format!(
                    "no Ack for {} ms while {} bytes wait for one (--node-timeout-ms)",
                    now.since(unacked_since).as_millis(),
                    conn.stream.unacked_bytes()
                ))
            } else {
                None
            };
            if let Some(text) = timed_out {
                self.counters.connections_timed_out += 1;
                conn.set_leave_reason(fb::LeftReason::Timeout);
                self.log
                    .line(format!("shard {}: node {}: {text}", self.index, conn.name));
                let mut out = sink!(self);
                if grace.is_zero() || self.shutting_down {
                    let close =
                        Close::error(fb::ErrorCode::NodeTimeout, text, fb::LeftReason::Timeout);
                    out.close(id, close);
                } else {
                    // Maybe only this TCP connection is dead: keep the stream.
                    out.suspend(id, now + grace, Some((fb::ErrorCode::NodeTimeout, &text)));
                }
                continue;
            }
            if now.since(stalled) >= timeout {
                self.counters.write_stalls += 1;
                let text = format!(
                    "the node read nothing for {} ms while {} bytes wait (--node-timeout-ms)",
                    now.since(stalled).as_millis(),
                    conn.stream.end() - conn.stream.written()
                );
                let close = Close::error(fb::ErrorCode::SlowConsumer, text, fb::LeftReason::Slow);
                sink!(self).close(id, close);
                continue;
            }
            self.ack_peer(id, true);
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if ping {
                conn.ping_nonce += 1;
                let nonce = conn.ping_nonce;
                self.counters.pings_sent += 1;
                sink!(self).control_to(id, |encoder, out| {
                    out.extend_from_slice(encoder.ping(nonce))
                });
            }
        }
    }
}
