//! Egress: building frames with one reusable flatbuffers builder.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use super::{direct, fb};
use crate::cluster::map::SlotMap;

/// Fields of a `Hello` frame.
#[derive(Debug, Clone, Copy)]
pub struct HelloFrame<'a> {
    pub protocol_version: u16,
    pub node_name: &'a str,
    pub incarnation: u64,
    pub auth_token: Option<&'a str>,
    /// Shard-direct: the shard that must serve this connection.
    pub shard: Option<u16>,
    /// The node sends Acks (stream resumption without loss).
    pub acks: bool,
    /// On a resume: the stream bytes received so far.
    pub received: u64,
    /// On a resume: the stream to resume (its Welcome's `stream`).
    pub stream: u64,
}

impl<'a> HelloFrame<'a> {
    /// A Hello of this protocol version, nothing else set: no token, any
    /// shard, no acks, a new stream.
    pub fn new(node_name: &'a str, incarnation: u64) -> Self {
        HelloFrame {
            protocol_version: crate::limits::PROTOCOL_VERSION,
            node_name,
            incarnation,
            auth_token: None,
            shard: None,
            acks: false,
            received: 0,
            stream: 0,
        }
    }
}

/// Fields of a `Welcome` frame.
#[derive(Debug, Clone, Copy)]
pub struct WelcomeFrame<'a> {
    pub protocol_version: u16,
    pub router_id: u64,
    pub shard_count: u16,
    pub slot_count: u16,
    pub shard: u16,
    pub heartbeat_ms: u32,
    pub max_frame_bytes: u32,
    /// Live nodes: (name, incarnation).
    pub nodes: &'a [(&'a str, u64)],
    pub senior: Option<&'a str>,
    pub membership_seq: u64,
    pub resumed: bool,
    pub stream_offset: u64,
    pub reconnect_grace_ms: u32,
    /// The node's stream bytes the router processed (a resume).
    pub received: u64,
    /// The stream's identity.
    pub stream: u64,
    /// The warm-up left, in milliseconds.
    pub warmup_ms: u32,
    /// The router's newest slot map (none before a member's first), and
    /// its own id in it.
    pub map: Option<&'a SlotMap>,
    pub member: u64,
}

/// Fields of a `Moved` frame.
#[derive(Debug, Clone, Copy)]
pub struct MovedFrame<'a> {
    /// The refused frame's body type.
    pub request: fb::Body,
    pub id: u64,
    pub key: &'a str,
    pub device: &'a str,
    pub seq: u64,
    pub slot: u16,
    pub epoch: u64,
    pub owner: u64,
    pub reason: fb::Reason,
}

/// Fields of a `Fanout` frame (and of the Delivers it causes).
#[derive(Debug, Clone, Copy)]
pub struct FanoutFrame<'a> {
    pub message_id: u64,
    pub from_user: &'a str,
    pub from_device: &'a str,
    pub to_users: &'a [&'a str],
    pub flags: u32,
    pub payload: &'a [u8],
}

/// Fields of a `Publish` frame.
#[derive(Debug, Clone, Copy)]
pub struct PublishFrame<'a> {
    pub topic: &'a str,
    pub message_id: u64,
    pub from_user: &'a str,
    pub from_device: &'a str,
    pub from_node: &'a str,
    pub flags: u32,
    pub payload: &'a [u8],
}

/// Fields of a `NodeEvent` frame.
#[derive(Debug, Clone, Copy)]
pub struct NodeEventFrame<'a> {
    pub seq: u64,
    pub kind: fb::NodeEventKind,
    pub node: &'a str,
    pub incarnation: u64,
    pub reason: fb::LeftReason,
    pub senior: Option<&'a str>,
}

/// Fields of a `Route` frame.
#[derive(Debug, Clone, Copy)]
pub struct RouteFrame<'a> {
    pub message_id: u64,
    pub from_user: &'a str,
    pub from_device: &'a str,
    pub to_user: &'a str,
    pub to_device: Option<&'a str>,
    pub flags: u32,
    pub payload: &'a [u8],
}

/// Fields of a `Deliver` frame.
#[derive(Debug, Clone, Copy)]
pub struct DeliverFrame<'a> {
    pub message_id: u64,
    pub from_user: &'a str,
    pub from_device: &'a str,
    pub to_user: &'a str,
    /// Device ids as bytes: they come from the location table, which got
    /// them from verified (UTF-8) strings.
    pub devices: &'a [&'a [u8]],
    pub flags: u32,
    pub payload: &'a [u8],
    /// The sending node's incarnation (0: unknown).
    pub origin: u64,
}

/// Builds frames. Each method returns the finished frame, length prefix
/// included, borrowed from the encoder until the next call.
///
/// One encoder is reused for every frame a shard writes: after its buffers
/// have grown to the largest frame, encoding allocates nothing. Route and
/// Deliver, the frames of every message, are written directly
/// (`wire::direct`); the others go through the flatbuffers builder.
pub struct Encoder {
    builder: FlatBufferBuilder<'static>,
    /// The last Route or Deliver written directly.
    direct: Vec<u8>,
    /// Scratch for the string offsets of a vector being built.
    offsets: Vec<WIPOffset<&'static str>>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// Initial builder capacity: a chat message with its envelope.
    const CAPACITY_INITIAL: usize = 1024;

    pub fn new() -> Self {
        Encoder {
            builder: FlatBufferBuilder::with_capacity(Self::CAPACITY_INITIAL),
            direct: Vec::with_capacity(Self::CAPACITY_INITIAL),
            offsets: Vec::new(),
        }
    }

    pub fn hello(&mut self, frame: &HelloFrame<'_>) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let node_name = Some(b.create_string(frame.node_name));
        let auth_token = frame.auth_token.map(|token| b.create_string(token));
        let body = fb::Hello::create(
            b,
            &fb::HelloArgs {
                protocol_version: frame.protocol_version,
                node_name,
                incarnation: frame.incarnation,
                auth_token,
                shard: frame.shard.map_or(-1, |shard| shard as i16),
                acks: frame.acks,
                received: frame.received,
                stream: frame.stream,
            },
        );
        self.finish(fb::Body::Hello, body.as_union_value())
    }

    pub fn welcome(&mut self, frame: &WelcomeFrame) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let infos: Vec<_> = frame
            .nodes
            .iter()
            .map(|&(name, incarnation)| {
                let name = Some(b.create_string(name));
                fb::NodeInfo::create(b, &fb::NodeInfoArgs { name, incarnation })
            })
            .collect();
        let nodes = Some(b.create_vector(&infos));
        let senior = frame.senior.map(|senior| b.create_string(senior));
        let map = frame.map.map(|map| slot_map_table(b, map, &[]));
        let body = fb::Welcome::create(
            b,
            &fb::WelcomeArgs {
                protocol_version: frame.protocol_version,
                router_id: frame.router_id,
                shard_count: frame.shard_count,
                slot_count: frame.slot_count,
                shard: frame.shard,
                heartbeat_ms: frame.heartbeat_ms,
                max_frame_bytes: frame.max_frame_bytes,
                nodes,
                senior,
                membership_seq: frame.membership_seq,
                resumed: frame.resumed,
                stream_offset: frame.stream_offset,
                reconnect_grace_ms: frame.reconnect_grace_ms,
                received: frame.received,
                stream: frame.stream,
                warmup_ms: frame.warmup_ms,
                map,
                member: frame.member,
            },
        );
        self.finish(fb::Body::Welcome, body.as_union_value())
    }

    /// A SlotMap frame: `map`, and the slots (first, last) the sending
    /// router must rebuild from the nodes' scoped resyncs.
    pub fn slot_map(&mut self, map: &SlotMap, resync: &[(u16, u16)]) -> &[u8] {
        self.builder.reset();
        let body = slot_map_table(&mut self.builder, map, resync);
        self.finish(fb::Body::SlotMap, body.as_union_value())
    }

    pub fn moved(&mut self, frame: &MovedFrame<'_>) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let key = Some(b.create_string(frame.key));
        let device = Some(b.create_string(frame.device));
        let body = fb::Moved::create(
            b,
            &fb::MovedArgs {
                request: frame.request.0,
                id: frame.id,
                key,
                device,
                seq: frame.seq,
                slot: frame.slot,
                epoch: frame.epoch,
                owner: frame.owner,
                reason: frame.reason,
            },
        );
        self.finish(fb::Body::Moved, body.as_union_value())
    }

    pub fn node_event(&mut self, frame: &NodeEventFrame) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let node = Some(b.create_string(frame.node));
        let senior = frame.senior.map(|senior| b.create_string(senior));
        let body = fb::NodeEvent::create(
            b,
            &fb::NodeEventArgs {
                seq: frame.seq,
                kind: frame.kind,
                node,
                incarnation: frame.incarnation,
                reason: frame.reason,
                senior,
            },
        );
        self.finish(fb::Body::NodeEvent, body.as_union_value())
    }

    pub fn session_open(&mut self, user: &str, device: &str, platform: fb::Platform) -> &[u8] {
        self.session_open_seq(user, device, platform, 0)
    }

    /// A SessionOpen with the node's session sequence number.
    pub fn session_open_seq(
        &mut self,
        user: &str,
        device: &str,
        platform: fb::Platform,
        seq: u64,
    ) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let user = Some(b.create_string(user));
        let device = Some(b.create_string(device));
        let body = fb::SessionOpen::create(
            b,
            &fb::SessionOpenArgs {
                user,
                device,
                platform,
                seq,
            },
        );
        self.finish(fb::Body::SessionOpen, body.as_union_value())
    }

    pub fn session_close(&mut self, user: &str, device: &str) -> &[u8] {
        self.session_close_seq(user, device, 0)
    }

    /// A SessionClose of the session opened with `seq`.
    pub fn session_close_seq(&mut self, user: &str, device: &str, seq: u64) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let user = Some(b.create_string(user));
        let device = Some(b.create_string(device));
        let body = fb::SessionClose::create(b, &fb::SessionCloseArgs { user, device, seq });
        self.finish(fb::Body::SessionClose, body.as_union_value())
    }

    pub fn route(&mut self, frame: &RouteFrame<'_>) -> &[u8] {
        self.direct.clear();
        direct::route(&mut self.direct, frame);
        &self.direct
    }

    pub fn deliver(&mut self, frame: &DeliverFrame<'_>) -> &[u8] {
        self.direct.clear();
        direct::deliver(&mut self.direct, frame);
        &self.direct
    }

    /// Appends a Deliver frame to `out` (a connection's stream, or a batch
    /// for another shard): the message's one copy on its way out.
    #[inline]
    pub fn write_deliver(out: &mut Vec<u8>, frame: &DeliverFrame<'_>) {
        direct::deliver(out, frame);
    }

    /// Appends a Route frame to `out`.
    #[inline]
    pub fn write_route(out: &mut Vec<u8>, frame: &RouteFrame<'_>) {
        direct::route(out, frame);
    }

    /// A Fanout (what a node sends).
    pub fn fanout(&mut self, frame: &FanoutFrame<'_>) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let users: Vec<_> = frame.to_users.iter().map(|u| b.create_string(u)).collect();
        let to_users = Some(b.create_vector(&users));
        let payload = Some(b.create_vector(frame.payload));
        let from_user = Some(b.create_string(frame.from_user));
        let from_device = Some(b.create_string(frame.from_device));
        let body = fb::Fanout::create(
            b,
            &fb::FanoutArgs {
                message_id: frame.message_id,
                from_user,
                from_device,
                to_users,
                flags: frame.flags,
                payload,
            },
        );
        self.finish(fb::Body::Fanout, body.as_union_value())
    }

    /// A Deliver of a Fanout, its recipients as parallel lists: `users`,
    /// how many of `devices` belong to each (`counts`), and the devices in
    /// that order.
    pub fn fanout_deliver(
        &mut self,
        frame: &FanoutFrame<'_>,
        users: &[&str],
        counts: &[u8],
        devices: &[&str],
        origin: u64,
    ) -> &[u8] {
        debug_assert_eq!(users.len(), counts.len());
        self.builder.reset();
        self.offsets.clear();
        let b = &mut self.builder;
        for user in users {
            self.offsets.push(b.create_string(user));
        }
        let recipients = Some(b.create_vector(&self.offsets));
        self.offsets.clear();
        for device in devices {
            self.offsets.push(b.create_string(device));
        }
        let devices = Some(b.create_vector(&self.offsets));
        let recipient_device_counts = Some(b.create_vector(counts));
        let payload = Some(b.create_vector(frame.payload));
        let from_user = Some(b.create_string(frame.from_user));
        let from_device = Some(b.create_string(frame.from_device));
        let body = fb::Deliver::create(
            b,
            &fb::DeliverArgs {
                message_id: frame.message_id,
                from_user,
                from_device,
                flags: frame.flags,
                payload,
                recipients,
                devices,
                recipient_device_counts,
                origin,
                ..Default::default()
            },
        );
        self.finish(fb::Body::Deliver, body.as_union_value())
    }

    /// A Status listing offline recipients (the verdict of a Fanout).
    pub fn status_offline(
        &mut self,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
        offline: &[&str],
    ) -> &[u8] {
        self.status_fanout(message_id, verdict, reason, offline, &[])
    }

    /// The verdict of a Fanout: its offline recipients, and those whose
    /// slots another router owns.
    pub fn status_fanout(
        &mut self,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
        offline: &[&str],
        moved: &[&str],
    ) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let users: Vec<_> = offline.iter().map(|u| b.create_string(u)).collect();
        let offline_users = Some(b.create_vector(&users));
        let moved_users = (!moved.is_empty()).then(|| {
            let users: Vec<_> = moved.iter().map(|u| b.create_string(u)).collect();
            b.create_vector(&users)
        });
        let body = fb::Status::create(
            b,
            &fb::StatusArgs {
                message_id,
                verdict,
                reason,
                offline_users,
                slot: 0,
                epoch: 0,
                owner: 0,
                moved_users,
            },
        );
        self.finish(fb::Body::Status, body.as_union_value())
    }

    pub fn status(&mut self, message_id: u64, verdict: fb::Verdict, reason: fb::Reason) -> &[u8] {
        self.status_moved(message_id, verdict, reason, 0, 0, 0)
    }

    /// A Status with a slot's owner (verdict Moved).
    pub fn status_moved(
        &mut self,
        message_id: u64,
        verdict: fb::Verdict,
        reason: fb::Reason,
        slot: u16,
        epoch: u64,
        owner: u64,
    ) -> &[u8] {
        self.builder.reset();
        let body = fb::Status::create(
            &mut self.builder,
            &fb::StatusArgs {
                message_id,
                verdict,
                reason,
                offline_users: None,
                slot,
                epoch,
                owner,
                moved_users: None,
            },
        );
        self.finish(fb::Body::Status, body.as_union_value())
    }

    pub fn kick(&mut self, user: &str, device: &str, reason: fb::KickReason) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let user = Some(b.create_string(user));
        let device = Some(b.create_string(device));
        let body = fb::Kick::create(
            b,
            &fb::KickArgs {
                user,
                device,
                reason,
            },
        );
        self.finish(fb::Body::Kick, body.as_union_value())
    }

    pub fn ping(&mut self, nonce: u64) -> &[u8] {
        self.builder.reset();
        let body = fb::Ping::create(&mut self.builder, &fb::PingArgs { nonce });
        self.finish(fb::Body::Ping, body.as_union_value())
    }

    pub fn pong(&mut self, nonce: u64) -> &[u8] {
        self.builder.reset();
        let body = fb::Pong::create(&mut self.builder, &fb::PongArgs { nonce });
        self.finish(fb::Body::Pong, body.as_union_value())
    }

    /// A Draining: the router stops after `window_ms` (router to node).
    pub fn draining(&mut self, window_ms: u32, reason: &str) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let reason = Some(b.create_string(reason));
        let body = fb::Draining::create(b, &fb::DrainingArgs { window_ms, reason });
        self.finish(fb::Body::Draining, body.as_union_value())
    }

    /// An Ack: the node received and processed `received` stream bytes.
    pub fn ack(&mut self, received: u64) -> &[u8] {
        self.builder.reset();
        let body = fb::Ack::create(&mut self.builder, &fb::AckArgs { received });
        self.finish(fb::Body::Ack, body.as_union_value())
    }

    pub fn locate(&mut self, query_id: u64, user: &str) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let user = Some(b.create_string(user));
        let body = fb::Locate::create(b, &fb::LocateArgs { query_id, user });
        self.finish(fb::Body::Locate, body.as_union_value())
    }

    /// A Located answer; `sessions` are (node name, device, platform).
    pub fn located(
        &mut self,
        query_id: u64,
        user: &str,
        sessions: &[(&str, &str, fb::Platform)],
    ) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let infos: Vec<_> = sessions
            .iter()
            .map(|&(node, device, platform)| {
                let node = Some(b.create_string(node));
                let device = Some(b.create_string(device));
                fb::SessionInfo::create(
                    b,
                    &fb::SessionInfoArgs {
                        node,
                        device,
                        platform,
                    },
                )
            })
            .collect();
        let sessions = Some(b.create_vector(&infos));
        let user = Some(b.create_string(user));
        let body = fb::Located::create(
            b,
            &fb::LocatedArgs {
                query_id,
                user,
                sessions,
            },
        );
        self.finish(fb::Body::Located, body.as_union_value())
    }

    pub fn broadcast(&mut self, from_node: &str, payload: &[u8]) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let payload = Some(b.create_vector(payload));
        let from_node = Some(b.create_string(from_node));
        let body = fb::Broadcast::create(b, &fb::BroadcastArgs { from_node, payload });
        self.finish(fb::Body::Broadcast, body.as_union_value())
    }

    /// A SessionSync batch: sessions are (user, device, platform, seq).
    pub fn session_sync(
        &mut self,
        generation: u64,
        sessions: &[(&str, &str, fb::Platform, u64)],
        last: bool,
    ) -> &[u8] {
        self.session_sync_scoped(generation, sessions, last, &[], 0)
    }

    /// A SessionSync batch of a resync scoped to `scope` (slot ranges,
    /// first and last; empty: every slot), answering map `epoch`.
    pub fn session_sync_scoped(
        &mut self,
        generation: u64,
        sessions: &[(&str, &str, fb::Platform, u64)],
        last: bool,
        scope: &[(u16, u16)],
        epoch: u64,
    ) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let users: Vec<_> = sessions.iter().map(|s| b.create_string(s.0)).collect();
        let devices: Vec<_> = sessions.iter().map(|s| b.create_string(s.1)).collect();
        let platforms: Vec<u8> = sessions.iter().map(|s| s.2 .0).collect();
        let seqs: Vec<u64> = sessions.iter().map(|s| s.3).collect();
        let users = Some(b.create_vector(&users));
        let devices = Some(b.create_vector(&devices));
        let platforms = Some(b.create_vector(&platforms));
        let seqs = Some(b.create_vector(&seqs));
        let scope = (!scope.is_empty()).then(|| {
            let flat: Vec<u16> = scope.iter().flat_map(|&(a, z)| [a, z]).collect();
            b.create_vector(&flat)
        });
        let body = fb::SessionSync::create(
            b,
            &fb::SessionSyncArgs {
                generation,
                users,
                devices,
                platforms,
                seqs,
                last,
                scope,
                epoch,
            },
        );
        self.finish(fb::Body::SessionSync, body.as_union_value())
    }

    pub fn session_sync_ack(
        &mut self,
        generation: u64,
        added: u64,
        removed: u64,
        ignored: u64,
    ) -> &[u8] {
        self.builder.reset();
        let body = fb::SessionSyncAck::create(
            &mut self.builder,
            &fb::SessionSyncAckArgs {
                generation,
                added,
                removed,
                ignored,
            },
        );
        self.finish(fb::Body::SessionSyncAck, body.as_union_value())
    }

    pub fn subscribe(&mut self, topic: &str, request_id: u64) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let topic = Some(b.create_string(topic));
        let body = fb::Subscribe::create(b, &fb::SubscribeArgs { topic, request_id });
        self.finish(fb::Body::Subscribe, body.as_union_value())
    }

    pub fn unsubscribe(&mut self, topic: &str) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let topic = Some(b.create_string(topic));
        let body = fb::Unsubscribe::create(b, &fb::UnsubscribeArgs { topic });
        self.finish(fb::Body::Unsubscribe, body.as_union_value())
    }

    /// A Publish; `from_node` is empty when a node sends it.
    pub fn publish(&mut self, frame: &PublishFrame<'_>) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let payload = Some(b.create_vector(frame.payload));
        let topic = Some(b.create_string(frame.topic));
        let from_user = Some(b.create_string(frame.from_user));
        let from_device = Some(b.create_string(frame.from_device));
        let from_node = Some(b.create_string(frame.from_node));
        let body = fb::Publish::create(
            b,
            &fb::PublishArgs {
                topic,
                message_id: frame.message_id,
                from_user,
                from_device,
                from_node,
                flags: frame.flags,
                payload,
            },
        );
        self.finish(fb::Body::Publish, body.as_union_value())
    }

    pub fn goodbye(&mut self, reason: &str) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let reason = Some(b.create_string(reason));
        let body = fb::Goodbye::create(b, &fb::GoodbyeArgs { reason });
        self.finish(fb::Body::Goodbye, body.as_union_value())
    }

    pub fn error(&mut self, code: fb::ErrorCode, text: &str) -> &[u8] {
        self.builder.reset();
        let b = &mut self.builder;
        let text = Some(b.create_string(text));
        let body = fb::Error::create(b, &fb::ErrorArgs { code, text });
        self.finish(fb::Body::Error, body.as_union_value())
    }

    /// Wraps a finished body in an Envelope and size-prefixes it.
    fn finish(&mut self, body_type: fb::Body, body: WIPOffset<UnionWIPOffset>) -> &[u8] {
        let envelope = fb::Envelope::create(
            &mut self.builder,
            &fb::EnvelopeArgs {
                body_type,
                body: Some(body),
            },
        );
        fb::finish_size_prefixed_envelope_buffer(&mut self.builder, envelope);
        self.builder.finished_data()
    }
}

/// A SlotMap table (in a Welcome or a frame of its own).
fn slot_map_table<'b>(
    b: &mut FlatBufferBuilder<'b>,
    map: &SlotMap,
    resync: &[(u16, u16)],
) -> WIPOffset<fb::SlotMap<'b>> {
    let routers: Vec<_> = map
        .routers()
        .iter()
        .map(|router| {
            let name = Some(b.create_string(&router.name));
            let addr = Some(b.create_string(&router.addr));
            fb::RouterEntry::create(
                b,
                &fb::RouterEntryArgs {
                    id: router.id,
                    name,
                    addr,
                    shards: router.shards,
                },
            )
        })
        .collect();
    let routers = Some(b.create_vector(&routers));
    let ranges = map.ranges();
    let index_of = |id| {
        map.routers()
            .iter()
            .position(|router| router.id == id)
            .expect("a range's router is listed") as u16
    };
    let starts: Vec<u16> = ranges.iter().map(|range| range.first).collect();
    let owners: Vec<u16> = ranges.iter().map(|range| index_of(range.router)).collect();
    let shards: Vec<u16> = ranges.iter().map(|range| range.shard).collect();
    let range_starts = Some(b.create_vector(&starts));
    let range_routers = Some(b.create_vector(&owners));
    let range_shards = Some(b.create_vector(&shards));
    let flat: Vec<u16> = resync.iter().flat_map(|&(a, z)| [a, z]).collect();
    let resync = Some(b.create_vector(&flat));
    fb::SlotMap::create(
        b,
        &fb::SlotMapArgs {
            epoch: map.epoch(),
            routers,
            range_starts,
            range_routers,
            range_shards,
            resync,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{check, Check, Verifier};

    fn roundtrip(frame: &[u8]) -> fb::Envelope<'_> {
        assert_eq!(check(frame, 1 << 16), Check::Complete(frame.len()));
        Verifier::new(1 << 16)
            .verify(frame)
            .expect("encoder output verifies")
            .envelope()
    }

    #[test]
    fn route_roundtrips_in_place() {
        let mut encoder = Encoder::new();
        let frame = encoder
            .route(&RouteFrame {
                message_id: 7,
                from_user: "alice",
                from_device: "phone",
                to_user: "bob",
                to_device: Some("desk"),
                flags: 1,
                payload: b"hi bob",
            })
            .to_vec();
        let route = roundtrip(&frame).body_as_route().expect("a Route");
        assert_eq!(route.message_id(), 7);
        assert_eq!(route.from_user(), Some("alice"));
        assert_eq!(route.from_device(), Some("phone"));
        assert_eq!(route.to_user(), "bob");
        assert_eq!(route.to_device(), Some("desk"));
        assert_eq!(route.flags(), 1);
        assert_eq!(route.payload().map(|p| p.bytes()), Some(&b"hi bob"[..]));
    }

    #[test]
    fn deliver_lists_devices() {
        let mut encoder = Encoder::new();
        let frame = encoder
            .deliver(&DeliverFrame {
                message_id: 9,
                from_user: "alice",
                from_device: "phone",
                to_user: "bob",
                devices: &[b"desk", b"tablet"],
                flags: 0,
                payload: &[0xAB; 4096],
                origin: 0x0123_4567_89AB_CDEF,
            })
            .to_vec();
        let deliver = roundtrip(&frame).body_as_deliver().expect("a Deliver");
        assert_eq!(deliver.origin(), 0x0123_4567_89AB_CDEF);
        let devices: Vec<&str> = deliver.devices().unwrap().iter().collect();
        assert_eq!(devices, ["desk", "tablet"]);
        assert_eq!(deliver.payload().unwrap().bytes(), &[0xAB; 4096][..]);
    }

    /// A tiny deterministic generator for the randomized checks.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn text(&mut self, len_max: u64) -> String {
            const PIECES: [&str; 6] = ["a", "Z", "9", "-", "é", "用"];
            (0..self.below(len_max + 1))
                .map(|_| PIECES[self.below(6) as usize])
                .collect()
        }
    }

    /// Route and Deliver are written without the builder (`wire::direct`);
    /// the flatbuffers verifier must accept every such frame, with default
    /// options and with ours, and every field must read back.
    #[test]
    fn direct_frames_verify_and_read_back_for_random_contents() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut encoder = Encoder::new();
        let ours = Verifier::new(16 * 1024 * 1024);
        for round in 0..3_000 {
            let from_user = rng.text(40);
            let from_device = rng.text(10);
            let to_user = rng.text(100);
            let to_device = (rng.below(2) == 0).then(|| rng.text(20));
            let payload: Vec<u8> = (0..rng.below(if round % 50 == 0 { 70_000 } else { 300 }))
                .map(|i| i as u8)
                .collect();
            let message_id = rng.below(u64::MAX) ^ round;
            let flags = rng.below(u64::from(u32::MAX)) as u32;

            let frame = encoder
                .route(&RouteFrame {
                    message_id,
                    from_user: &from_user,
                    from_device: &from_device,
                    to_user: &to_user,
                    to_device: to_device.as_deref(),
                    flags,
                    payload: &payload,
                })
                .to_vec();
            assert_eq!(check(&frame, u32::MAX), Check::Complete(frame.len()));
            fb::size_prefixed_root_as_envelope(&frame).expect("default verifier accepts");
            let route = ours
                .verify(&frame)
                .expect("our verifier accepts")
                .envelope()
                .body_as_route()
                .unwrap();
            assert_eq!(route.message_id(), message_id);
            assert_eq!(route.from_user(), Some(from_user.as_str()));
            assert_eq!(route.from_device(), Some(from_device.as_str()));
            assert_eq!(route.to_user(), to_user);
            assert_eq!(route.to_device(), to_device.as_deref());
            assert_eq!(route.flags(), flags);
            assert_eq!(route.payload().unwrap().bytes(), &payload[..]);

            let devices: Vec<String> = (0..rng.below(70)).map(|_| rng.text(30)).collect();
            let device_bytes: Vec<&[u8]> = devices.iter().map(|d| d.as_bytes()).collect();
            let frame = encoder
                .deliver(&DeliverFrame {
                    message_id,
                    from_user: &from_user,
                    from_device: &from_device,
                    to_user: &to_user,
                    devices: &device_bytes,
                    flags,
                    payload: &payload,
                    origin: message_id ^ 0x5555,
                })
                .to_vec();
            fb::size_prefixed_root_as_envelope(&frame).expect("default verifier accepts");
            let deliver = ours
                .verify(&frame)
                .expect("our verifier accepts")
                .envelope()
                .body_as_deliver()
                .unwrap();
            assert_eq!(deliver.message_id(), message_id);
            assert_eq!(deliver.from_user(), Some(from_user.as_str()));
            assert_eq!(deliver.from_device(), Some(from_device.as_str()));
            assert_eq!(deliver.to_user(), Some(to_user.as_str()));
            let read: Vec<&str> = deliver.devices().unwrap().iter().collect();
            assert_eq!(read, devices);
            assert_eq!(deliver.flags(), flags);
            assert_eq!(deliver.origin(), message_id ^ 0x5555);
            assert_eq!(deliver.payload().unwrap().bytes(), &payload[..]);
        }
    }

    #[test]
    fn every_frame_carries_the_length_prefix_and_identifier() {
        let mut encoder = Encoder::new();
        let frames: Vec<Vec<u8>> = vec![
            encoder
                .hello(&HelloFrame {
                    shard: Some(3),
                    ..HelloFrame::new("n1", 1)
                })
                .to_vec(),
            encoder.session_open("u", "d", fb::Platform::Web).to_vec(),
            encoder.session_close("u", "d").to_vec(),
            encoder
                .status(1, fb::Verdict::Offline, fb::Reason::NoSession)
                .to_vec(),
            encoder
                .kick("u", "d", fb::KickReason::ReplacedElsewhere)
                .to_vec(),
            encoder.ping(5).to_vec(),
            encoder.pong(5).to_vec(),
            encoder.error(fb::ErrorCode::Malformed, "bad").to_vec(),
        ];
        for frame in &frames {
            let declared = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(declared + 4, frame.len());
            assert_eq!(&frame[8..12], b"IMR1");
            roundtrip(frame);
        }
        let hello = roundtrip(&frames[0]).body_as_hello().unwrap();
        assert_eq!(hello.shard(), 3);
        assert_eq!(hello.node_name(), "n1");
    }
}
