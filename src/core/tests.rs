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

// ----- A member of a cluster ---------------------------------------------------

mod member {
    use super::*;
    use crate::cluster::map::{RouterId, RouterInfo, SlotMap, SlotRange, SlotSet};
    use crate::core::slots::ClusterView;
    use crate::placement::slot_for_user;
    use crate::wire::RouteFrame;

    const ME: RouterId = 7;
    const OTHER: RouterId = 9;

    fn router(id: RouterId) -> RouterInfo {
        RouterInfo {
            id,
            name: format!("r{id}"),
            addr: format!("10.0.0.{id}:7800"),
            shards: 1,
        }
    }

    /// A map where `ME` owns `mine` (one range) and `OTHER` the rest.
    fn map(epoch: u64, mine: (u16, u16)) -> Arc<SlotMap> {
        let mut ranges = vec![SlotRange {
            first: mine.0,
            last: mine.1,
            router: ME,
            shard: 0,
        }];
        if mine.0 > 0 {
            ranges.push(SlotRange {
                first: 0,
                last: mine.0 - 1,
                router: OTHER,
                shard: 0,
            });
        }
        if mine.1 < 16383 {
            ranges.push(SlotRange {
                first: mine.1 + 1,
                last: 16383,
                router: OTHER,
                shard: 0,
            });
        }
        Arc::new(SlotMap::from_ranges(epoch, vec![router(ME), router(OTHER)], &ranges).unwrap())
    }

    fn view(map: &Arc<SlotMap>, gained: SlotSet, fence: Time) -> ClusterView {
        ClusterView {
            map: Some(map.clone()),
            me: ME,
            released: Arc::new(map.slots_of(ME)),
            gained: Arc::new(gained),
            fence,
            expected_nodes: 0,
        }
    }

    fn member() -> Shard {
        Shard::new(|args| {
            args.etcd = vec!["http://127.0.0.1:2379".into()];
            args.cluster = Some("test".into());
            args.advertise = Some("10.0.0.7:7800".into());
        })
    }

    /// A user id whose slot `pick` accepts.
    fn user_where(prefix: &str, pick: impl Fn(u16) -> bool) -> String {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|user| pick(slot_for_user(user.as_bytes())))
            .expect("some id lands there")
    }

    /// What a node reads: one line per frame, with the fields that matter
    /// here.
    fn read(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let Check::Complete(len) = check(&bytes[at..], u32::MAX) else {
                panic!("a partial frame");
            };
            let frame = bytes[at..at + len].to_vec();
            at += len;
            let envelope = fb::size_prefixed_root_as_envelope(&frame).expect("an envelope");
            let line = match envelope.body_type() {
                fb::Body::Status => {
                    let s = envelope.body_as_status().unwrap();
                    format!(
                        "Status {} {:?} {:?} slot={} epoch={} owner={}",
                        s.message_id(),
                        s.verdict(),
                        s.reason(),
                        s.slot(),
                        s.epoch(),
                        s.owner()
                    )
                }
                fb::Body::Moved => {
                    let m = envelope.body_as_moved().unwrap();
                    format!(
                        "Moved {:?} {} {:?} epoch={} owner={}",
                        fb::Body(m.request()),
                        m.key().unwrap_or(""),
                        m.reason(),
                        m.epoch(),
                        m.owner()
                    )
                }
                fb::Body::SlotMap => {
                    let m = envelope.body_as_slot_map().unwrap();
                    let (map, resync) = SlotMap::from_wire(m).expect("a valid map");
                    format!("SlotMap epoch={} resync={resync:?}", map.epoch())
                }
                fb::Body::Deliver => {
                    let d = envelope.body_as_deliver().unwrap();
                    format!(
                        "Deliver {} to={} origin={}",
                        d.message_id(),
                        d.to_user().unwrap_or(""),
                        d.origin()
                    )
                }
                fb::Body::Welcome => {
                    let w = envelope.body_as_welcome().unwrap();
                    let epoch = w.map().map(|m| m.epoch());
                    format!("Welcome map={epoch:?} member={}", w.member())
                }
                other => format!("{other:?}"),
            };
            out.push(line);
        }
        out
    }

    fn route(shard: &mut Shard, from: ConnId, id: u64, to: &str) {
        let frame = shard
            .encoder
            .route(&RouteFrame {
                message_id: id,
                from_user: "sender",
                from_device: "phone",
                to_user: to,
                to_device: None,
                flags: 0,
                payload: b"hi",
            })
            .to_vec();
        shard.send(from, &frame);
    }

    fn open(shard: &mut Shard, on: ConnId, user: &str) {
        let frame = shard
            .encoder
            .session_open(user, "phone", fb::Platform::Mobile)
            .to_vec();
        shard.send(on, &frame);
    }

    const FAR: Time = Time::from_millis(1_000_000);

    /// Slots of another router are answered Moved (a verdict for a Route,
    /// a frame for the rest), never served; its own are served, and its
    /// Welcome carries the map.
    #[test]
    fn other_routers_slots_are_answered_moved_and_its_own_served() {
        let mut shard = member();
        let map = map(3, (0, 8191));
        shard
            .core
            .apply_view(&view(&map, SlotSet::empty(), FAR), shard.now);
        let holder = shard.connect("holder");
        assert_eq!(read(&shard.drain(holder)), ["Welcome map=Some(3) member=7"]);
        let sender = shard.connect("sender");
        shard.drain(holder);
        shard.drain(sender);
        let mine = user_where("mine", |slot| slot <= 8191);
        let theirs = user_where("theirs", |slot| slot > 8191);
        open(&mut shard, holder, &mine);
        open(&mut shard, holder, &theirs);
        assert_eq!(
            read(&shard.drain(holder)),
            [format!(
                "Moved SessionOpen {theirs} NotOwner epoch=3 owner=9"
            )]
        );
        route(&mut shard, sender, 1, &mine);
        route(&mut shard, sender, 2, &theirs);
        let slot = slot_for_user(theirs.as_bytes());
        assert_eq!(
            read(&shard.drain(sender)),
            [format!(
                "Status 2 Moved NotOwner slot={slot} epoch=3 owner=9"
            )]
        );
        // The Deliver names the sender's incarnation (1 in these tests).
        assert_eq!(
            read(&shard.drain(holder)),
            [format!("Deliver 1 to={mine} origin=1")]
        );
        let locate = shard.encoder.locate(5, &theirs).to_vec();
        shard.send(sender, &locate);
        assert_eq!(
            read(&shard.drain(sender)),
            [format!("Moved Locate {theirs} NotOwner epoch=3 owner=9")]
        );
        assert_eq!(shard.core.table().session_count(), 1);
    }

    /// Past its fence a member serves nothing: Unknown to Routes, session
    /// operations refused. When the lease is renewed, what was refused is
    /// rebuilt from the refused node's resync: no false Offline meanwhile.
    #[test]
    fn a_fenced_member_serves_nothing_and_rebuilds_what_it_refused() {
        let mut shard = member();
        let map = map(3, (0, 16383));
        let fence = Time::from_millis(501);
        shard
            .core
            .apply_view(&view(&map, SlotSet::empty(), fence), shard.now);
        let holder = shard.connect("holder");
        let sender = shard.connect("sender");
        shard.drain(holder);
        shard.drain(sender);
        let user = user_where("u", |_| true);
        open(&mut shard, holder, &user);
        shard.advance(Duration::from_millis(500));
        route(&mut shard, sender, 1, &user);
        assert_eq!(
            read(&shard.drain(sender)),
            [format!(
                "Status 1 Unknown Fenced slot={} epoch=3 owner=7",
                slot_for_user(user.as_bytes())
            )]
        );
        let close = shard.encoder.session_close(&user, "phone").to_vec();
        shard.send(holder, &close);
        assert_eq!(
            read(&shard.drain(holder)),
            [format!("Moved SessionClose {user} Fenced epoch=3 owner=7")]
        );
        // The lease is renewed: the refused close is not applied, so the
        // slot waits for the holder's resync; "no session" is Unknown.
        let later = shard.now + Duration::from_secs(10);
        shard
            .core
            .apply_view(&view(&map, SlotSet::empty(), later), shard.now);
        let absent = user_where("absent", |_| true);
        route(&mut shard, sender, 2, &absent);
        assert!(read(&shard.drain(sender))[0].starts_with("Status 2 Unknown NoSession"));
        let sync = shard
            .encoder
            .session_sync_scoped(1, &[], true, &[(0, 16383)], 3)
            .to_vec();
        shard.send(holder, &sync);
        assert_eq!(read(&shard.drain(holder)), ["SessionSyncAck"]);
        route(&mut shard, sender, 3, &absent);
        route(&mut shard, sender, 4, &user);
        let lines = read(&shard.drain(sender));
        assert!(
            lines[0].starts_with("Status 3 Offline NoSession"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("Status 4 Offline NoSession"),
            "{lines:?}"
        );
    }

    /// A new map: the slots that went to the other router are dropped (and
    /// answered Moved), the nodes get the map with the slots to resync, and
    /// a gained slot answers Unknown for "no session" until every node
    /// attached has resynced it; a scoped resync replaces sessions inside
    /// its scope only.
    #[test]
    fn a_new_map_drops_lost_slots_and_rebuilds_gained_ones_from_scoped_resyncs() {
        let mut shard = member();
        let first = map(3, (0, 8191));
        shard
            .core
            .apply_view(&view(&first, SlotSet::empty(), FAR), shard.now);
        let holder = shard.connect("holder");
        let sender = shard.connect("sender");
        shard.drain(holder);
        shard.drain(sender);
        let leaving = user_where("leaving", |slot| slot < 4096);
        let staying = user_where("staying", |slot| (4096..8192).contains(&slot));
        let stale = user_where("stale", |slot| (4096..8192).contains(&slot));
        open(&mut shard, holder, &leaving);
        open(&mut shard, holder, &staying);
        open(&mut shard, holder, &stale);
        assert_eq!(shard.core.table().session_count(), 3);

        let second = map(4, (4096, 12287));
        let gained = SlotSet::from_spans(&[(8192, 12287)]);
        shard
            .core
            .apply_view(&view(&second, gained, FAR), shard.now);
        assert_eq!(shard.core.table().session_count(), 2, "leaving is dropped");
        assert_eq!(
            read(&shard.drain(holder)),
            ["SlotMap epoch=4 resync=[(8192, 12287)]"]
        );
        let arriving = user_where("arriving", |slot| (8192..12288).contains(&slot));
        route(&mut shard, sender, 1, &leaving);
        route(&mut shard, sender, 2, &arriving);
        let lines = read(&shard.drain(sender));
        assert!(lines[0].starts_with("SlotMap epoch=4"), "{lines:?}");
        assert!(lines[1].starts_with("Status 1 Moved NotOwner"), "{lines:?}");
        assert!(
            lines[2].starts_with("Status 2 Unknown NoSession"),
            "{lines:?}"
        );

        // The holder resyncs the gained range (the sender has nothing
        // there, and says so).
        let sync = shard
            .encoder
            .session_sync_scoped(
                1,
                &[(&arriving, "phone", fb::Platform::Web, 0)],
                true,
                &[(8192, 12287)],
                4,
            )
            .to_vec();
        shard.send(holder, &sync);
        route(
            &mut shard,
            sender,
            3,
            &user_where("nobody", |s| (8192..12288).contains(&s)),
        );
        assert!(read(&shard.drain(sender))[0].starts_with("Status 3 Unknown"));
        let empty = shard
            .encoder
            .session_sync_scoped(1, &[], true, &[(8192, 12287)], 4)
            .to_vec();
        shard.send(sender, &empty);
        shard.drain(sender);
        route(
            &mut shard,
            sender,
            4,
            &user_where("nobody", |s| (8192..12288).contains(&s)),
        );
        route(&mut shard, sender, 5, &arriving);
        let lines = read(&shard.drain(sender));
        assert!(
            lines[0].starts_with("Status 4 Offline NoSession"),
            "{lines:?}"
        );
        assert_eq!(
            read(&shard.drain(holder)),
            [
                "SessionSyncAck".to_string(),
                format!("Deliver 5 to={arriving} origin=1")
            ]
        );

        // A resync scoped to 4096-8191 listing only `staying` removes
        // `stale` and leaves `arriving` (outside the scope) alone.
        let sync = shard
            .encoder
            .session_sync_scoped(
                2,
                &[(&staying, "phone", fb::Platform::Web, 0)],
                true,
                &[(4096, 8191)],
                4,
            )
            .to_vec();
        shard.send(holder, &sync);
        shard.drain(holder);
        let who: Vec<bool> = [&staying, &stale, &arriving]
            .iter()
            .map(|user| {
                shard
                    .core
                    .table()
                    .sessions(user.as_bytes())
                    .next()
                    .is_some()
            })
            .collect();
        assert_eq!(who, [true, false, true]);
    }

    /// A Fanout's recipients in another router's slots are not offline:
    /// the sender is told to send them to their owner (`moved_users`).
    #[test]
    fn a_fanouts_recipients_of_other_routers_are_moved_not_offline() {
        let mut shard = member();
        let map = map(3, (0, 8191));
        shard
            .core
            .apply_view(&view(&map, SlotSet::empty(), FAR), shard.now);
        let holder = shard.connect("holder");
        let sender = shard.connect("sender");
        shard.drain(holder);
        shard.drain(sender);
        let mine = user_where("mine", |slot| slot <= 8191);
        let absent = user_where("absent", |slot| slot <= 8191);
        let theirs = user_where("theirs", |slot| slot > 8191);
        open(&mut shard, holder, &mine);
        let to_users = [mine.as_str(), absent.as_str(), theirs.as_str()];
        let frame = shard
            .encoder
            .fanout(&crate::wire::FanoutFrame {
                message_id: 9,
                from_user: "sender",
                from_device: "phone",
                to_users: &to_users,
                flags: 0,
                payload: b"group",
            })
            .to_vec();
        shard.send(sender, &frame);
        let bytes = shard.drain(sender);
        let envelope = fb::size_prefixed_root_as_envelope(&bytes).expect("a Status");
        let status = envelope.body_as_status().expect("a Status");
        assert_eq!(
            (status.verdict(), status.reason()),
            (fb::Verdict::Routed, fb::Reason::Partial)
        );
        let list = |v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<&str>>>| {
            v.map(|v| v.iter().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(list(status.offline_users()), [absent]);
        assert_eq!(list(status.moved_users()), [theirs]);
    }
}
