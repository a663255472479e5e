//! Tests of one shard's core alone: no socket, no executor, no clock. A
//! test plays the driver (and the network) exactly, which the TCP tests
//! cannot: a node whose socket takes nothing, time that jumps.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ServeArgs};
use crate::core::batch::CLASSES;
use crate::core::conns::{ConnId, LinkState};
use crate::core::directory::Directory;
use crate::core::{ShardCore, SocketAction};
use crate::time::Time;
use crate::wire::{check, fb, Check, Encoder, HelloFrame};

/// One shard and the driver around it.
struct Shard {
    core: ShardCore,
    now: Time,
    encoder: Encoder,
}

impl Shard {
    fn new(configure: impl FnOnce(&mut ServeArgs)) -> Shard {
        let mut args = ServeArgs::defaults();
        args.listen = "127.0.0.1:0".into();
        args.shards = Some(1);
        args.warmup_ms = Some(0);
        configure(&mut args);
        let config = Arc::new(Config::from_args(&args).expect("a valid config"));
        let directory = Arc::new(Directory::new(config.nodes_max as usize, 1));
        let now = Time::from_millis(1);
        Shard {
            core: ShardCore::new(0, config, directory, 1, now),
            now,
            encoder: Encoder::new(),
        }
    }

    /// A node's connection, opened (its Welcome is queued, not written).
    fn connect(&mut self, name: &str) -> ConnId {
        self.connect_with(name, false)
    }

    fn connect_with(&mut self, name: &str, acks: bool) -> ConnId {
        let frame = self
            .encoder
            .hello(&HelloFrame {
                acks,
                ..HelloFrame::new(name, 1)
            })
            .to_vec();
        let hello = self.core.hello(&frame).expect("a valid Hello");
        assert_eq!(self.core.place(&hello).ok(), Some(0), "placed here");
        let Ok(id) = self.core.open(hello, None, self.now) else {
            panic!("refused")
        };
        self.settle();
        id
    }

    fn send(&mut self, id: ConnId, frame: &[u8]) {
        self.core.receive(id, frame, self.now);
        self.settle();
    }

    /// Runs what the shard queued for itself (one shard: its batches come
    /// back to it) and its sliced work, until nothing is left.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for class in CLASSES {
                while let Some(batch) = self.core.take_batch(0, class) {
                    self.core.handle_batch(&batch, self.now);
                    self.core.recycle_batch(batch);
                    any = true;
                }
            }
            while self.core.has_work() {
                self.core.step(self.now);
                any = true;
            }
            if !any {
                break;
            }
        }
        // (The driver takes the connections to wake after every call.)
        let mut woken = Vec::new();
        self.core.take_wakes(&mut woken);
    }

    /// Everything queued for `id`'s socket, as if the socket took it all.
    fn drain(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let bytes = self.core.writable(id);
            if bytes.is_empty() {
                break;
            }
            out.extend_from_slice(bytes);
            let n = bytes.len();
            self.core.wrote(id, n, self.now);
            self.settle();
        }
        out
    }

    /// Drains `id`'s socket; returns the stream bytes among what it wrote
    /// (the Welcome is not part of the stream), what an Ack counts.
    fn drain_stream(&mut self, id: ConnId) -> u64 {
        let bytes = self.drain(id);
        let mut at = 0;
        let mut stream = 0;
        while at < bytes.len() {
            let Check::Complete(len) = check(&bytes[at..], u32::MAX) else {
                panic!("a partial frame");
            };
            let frame = bytes[at..at + len].to_vec();
            let envelope = fb::size_prefixed_root_as_envelope(&frame).expect("an envelope");
            if envelope.body_type() != fb::Body::Welcome {
                stream += len as u64;
            }
            at += len;
        }
        stream
    }

    /// The driver closes a socket it was told to flush or drop.
    fn release(&mut self, id: ConnId) {
        if self.core.socket_action(id) == SocketAction::Flush {
            self.drain(id);
        }
        self.core.socket_released(id, self.now);
        self.settle();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.settle();
    }

    fn state(&self, id: ConnId) -> Option<LinkState> {
        self.core.conns().get(id).map(|conn| conn.state)
    }
}

/// The frames in `bytes`, as (type, Error code if an Error).
fn frames(bytes: &[u8]) -> Vec<(fb::Body, Option<fb::ErrorCode>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Check::Complete(len) = check(&bytes[at..], u32::MAX) else {
            panic!("a partial frame at {at}");
        };
        // (A copy: flatbuffers wants its buffer aligned.)
        let frame = bytes[at..at + len].to_vec();
        let envelope = fb::size_prefixed_root_as_envelope(&frame).expect("an envelope");
        let code = envelope.body_as_error().map(|error| error.code());
        out.push((envelope.body_type(), code));
        at += len;
    }
    out
}

/// A node whose socket takes nothing while others come and go: the
/// NodeEvents held for it stay within its soft limit, and it is closed as
/// a slow consumer once they would pass it (before: they were queued past
/// the hard limit, without end).
#[test]
fn node_events_for_a_node_that_takes_nothing_are_bounded() {
    const OUT: usize = 64 * 1024;
    let mut shard = Shard::new(|args| {
        args.max_frame_bytes = 16 * 1024;
        args.out_buffer_bytes = OUT;
        args.reconnect_grace_ms = 0;
    });
    let deaf = shard.connect("deaf");
    let soft = shard.core.conns().limits.soft;
    let goodbye = shard.encoder.goodbye("churn").to_vec();
    let mut held_max = 0;
    let mut churned = 0;
    while shard.state(deaf) == Some(LinkState::Open) {
        assert!(
            churned < 10_000,
            "the node that takes nothing is never closed"
        );
        let name = format!("{}{churned}", "n".repeat(50));
        let other = shard.connect(&name);
        shard.drain(other);
        shard.send(other, &goodbye);
        shard.release(other);
        churned += 1;
        let conn = shard.core.conns().get(deaf).expect("present");
        held_max = held_max.max(conn.held_event_bytes);
        assert!(
            conn.queued_bytes() <= 2 * OUT,
            "queued {}",
            conn.queued_bytes()
        );
    }
    assert!(held_max > 0, "the events were held");
    assert!(held_max <= soft, "held {held_max} > soft {soft}");
    assert_eq!(shard.state(deaf), Some(LinkState::Closing));
    assert_eq!(shard.core.snapshot().connections_slow, 1);
    // Its socket, once it takes bytes, ends with the Error.
    let written = frames(&shard.drain(deaf));
    assert_eq!(
        written.last(),
        Some(&(fb::Body::Error, Some(fb::ErrorCode::SlowConsumer)))
    );
}

/// A node that stops taking bytes is closed as a slow consumer after
/// --node-timeout-ms of no progress, even while it keeps sending.
#[test]
fn a_socket_that_takes_nothing_is_closed_after_the_timeout() {
    let mut shard = Shard::new(|args| {
        args.heartbeat_ms = 100;
        args.node_timeout_ms = Some(300);
        args.reconnect_grace_ms = 0;
        args.max_frame_bytes = 16 * 1024;
        args.out_buffer_bytes = 64 * 1024;
    });
    let stuck = shard.connect("stuck");
    let pong = shard.encoder.pong(1).to_vec();
    let mut ticks = 0;
    while shard.state(stuck) == Some(LinkState::Open) {
        assert!(ticks < 10, "never closed");
        shard.send(stuck, &pong);
        shard.advance(Duration::from_millis(100));
        ticks += 1;
    }
    assert!((3..=5).contains(&ticks), "closed after {ticks} ticks");
    let metrics = shard.core.snapshot();
    assert_eq!((metrics.write_stalls, metrics.connections_slow), (1, 1));
    let written = frames(&shard.drain(stuck));
    assert_eq!(written.first().map(|f| f.0), Some(fb::Body::Welcome));
    assert_eq!(
        written.last(),
        Some(&(fb::Body::Error, Some(fb::ErrorCode::SlowConsumer)))
    );
}

/// A node that acknowledges and reads everything, with more written and
/// not yet acknowledged than the hard limit: its reader is not paused (its
/// Acks must be read to end the wait), and its Ack is handled (before: the
/// reader paused on bytes that only its unread Ack could free, and the
/// connection was timed out for not acknowledging).
#[test]
fn unacknowledged_bytes_do_not_pause_the_reader_that_brings_the_acks() {
    const OUT: usize = 64 * 1024;
    let mut shard = Shard::new(|args| {
        args.max_frame_bytes = 16 * 1024;
        args.out_buffer_bytes = OUT;
    });
    let bob = shard.connect_with("node-b", true);
    let mut received = shard.drain_stream(bob);
    let alice = shard.connect("node-a");
    shard.drain(alice);
    let payload = vec![7u8; 8 * 1024];
    let hard = shard.core.conns().limits.hard;
    let mut sent = 0;
    while shard.core.conns().get(bob).unwrap().queued_bytes() < hard + OUT {
        sent += 1;
        assert!(
            sent < 1000,
            "the unacknowledged bytes never passed the hard limit"
        );
        // (Broadcast copies: Delivers would be answered Busy past the soft
        // limit.)
        let broadcast = shard.encoder.broadcast("", &payload).to_vec();
        shard.send(alice, &broadcast);
        received += shard.drain_stream(bob);
    }
    assert!(shard.core.can_read(bob), "the reader of the Acks may read");
    assert!(shard.core.may_read(bob));
    let ack = shard.encoder.ack(received).to_vec();
    shard.send(bob, &ack);
    let conn = shard.core.conns().get(bob).unwrap();
    assert_eq!(conn.queued_bytes(), 0, "all acknowledged");
    assert!(conn.is_open());
}

/// A Fanout's budget comes back once its Delivers are queued, before the
/// recipient's node acknowledges them (before: the budget waited for the
/// Acks, which a reader paused for that budget could not read).
#[test]
fn a_fanout_budget_does_not_wait_for_acks() {
    let mut shard = Shard::new(|_| {});
    let bob = shard.connect_with("node-b", true);
    shard.drain(bob);
    for user in ["u1", "u2", "u3"] {
        let open = shard
            .encoder
            .session_open(user, "phone", fb::Platform::Web)
            .to_vec();
        shard.send(bob, &open);
    }
    let fanout = shard
        .encoder
        .fanout(&crate::wire::FanoutFrame {
            message_id: 1,
            from_user: "bob",
            from_device: "phone",
            to_users: &["u1", "u2", "u3"],
            flags: crate::wire::ROUTE_FLAG_ACK,
            payload: b"to the group",
        })
        .to_vec();
    shard.send(bob, &fanout);
    let written = frames(&shard.drain(bob));
    assert!(written.iter().any(|(body, _)| *body == fb::Body::Deliver));
    assert!(
        !written.iter().any(|(body, _)| *body == fb::Body::Status),
        "the Status waits for the Ack"
    );
    let conn = shard.core.conns().get(bob).unwrap();
    assert_eq!(conn.budget.fanout_recipients, 0, "the budget came back");
}
