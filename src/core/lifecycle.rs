//! A connection's life: Hello, resume, suspension, close, and what its end
//! means for the node (its registration in the directory, its sessions,
//! the membership events every other node hears).

use std::net::SocketAddr;

use std::time::Duration;

use super::directory::{Detached, MembershipEvent, Superseded};
use crate::limits::{PROTOCOL_VERSION, SLOT_COUNT};
use crate::table::NodeId;
use crate::time::Time;
use crate::wire::{fb, Hello, NodeEventFrame, PeerFault, WelcomeFrame};

use super::batch::{Class, EntryHeader, EntryKind};
use super::conns::{new_conn, Conn, ConnId, LinkState};
use super::out::Close;
use super::stream::OutputStream;
use super::{sink, LogLevel, Lost, ShardCore, SocketAction};

impl ShardCore {
    /// Checks a connection's first frame (length prefix included): a Hello
    /// this router accepts.
    pub fn hello(&self, frame: &[u8]) -> Result<Hello, PeerFault> {
        let frame = self.verifier.verify(frame)?;
        Hello::parse(frame, &self.config.auth, self.shard_count)
    }

    /// Picks the shard that serves a connection whose Hello was read here,
    /// and reserves its place there (`--max-connections-per-shard`): the
    /// shard the Hello names (shard-direct), else the shard where the same
    /// node process has a connection (to resume it), else the shard with
    /// the fewest connections that has room.
    pub fn place(&self, hello: &Hello) -> Result<usize, Close> {
        if self.shutting_down || self.draining {
            return Err(shutting_down());
        }
        let wanted = hello.shard.or_else(|| {
            self.directory
                .resume_shard(&hello.node_name, hello.incarnation)
        });
        let max = self.config.connections_per_shard_max;
        self.directory
            .reserve_slot(wanted, self.index, max)
            .ok_or_else(|| {
                let text = match wanted {
                    Some(shard) => format!(
                        "shard {shard} serves {max} connections already (--max-connections-per-shard)"
                    ),
                    None => format!(
                        "every shard serves {max} connections already (--max-connections-per-shard)"
                    ),
                };
                Close::error(fb::ErrorCode::RouterFull, text, fb::LeftReason::Refused)
            })
    }

    /// Gives back the place [`ShardCore::place`] reserved on `shard` for a
    /// connection that will not open there after all.
    pub fn unplace(&self, shard: usize) {
        self.directory.release_slot(shard);
    }

    /// An Error frame refusing a connection before it opened.
    pub fn refusal(&mut self, code: fb::ErrorCode, text: &str) -> Vec<u8> {
        self.counters.connections_refused += 1;
        self.encoder.error(code, text).to_vec()
    }

    /// Opens a connection whose Hello was checked and whose place on this
    /// shard is reserved: registers it, continues the stream of the same
    /// node process's connection here if there is one (a resume), and
    /// queues the Welcome. On `Err` the place is given back and the driver
    /// refuses the socket with the Error frame.
    pub fn open(
        &mut self,
        hello: Hello,
        peer: Option<SocketAddr>,
        now: Time,
    ) -> Result<ConnId, Close> {
        self.outboxes.set_now(now);
        let refuse = |core: &mut ShardCore, close: Close| {
            core.directory.release_slot(core.index);
            core.counters.connections_refused += 1;
            Err(close)
        };
        if self.shutting_down || self.draining {
            return refuse(self, shutting_down());
        }
        // The same process's connection on this shard (suspended, or open
        // and overtaken by this reconnect): this one continues its stream,
        // from where the node says it is, which must be a place the stream
        // can continue from.
        let candidate = self
            .directory
            .lookup(&hello.node_name)
            .filter(|&(_, incarnation)| incarnation == hello.incarnation)
            .and_then(|(node, _)| self.conns.of_node(node))
            .filter(|&id| {
                self.conns.get(id).is_some_and(|conn| {
                    conn.incarnation == hello.incarnation
                        && conn.state != LinkState::Closing
                        && !conn.given_up
                        && hello.stream != 0
                        && conn.stream.id() == hello.stream
                })
            });
        if let Some(old) = candidate {
            let stream = &self.conns.get(old).expect("found").stream;
            if let Err(field) = stream.check_resume(hello.acks, hello.received) {
                let text = format!("Hello.received: {field}");
                let close =
                    Close::error(fb::ErrorCode::InvalidField, text, fb::LeftReason::Refused);
                return refuse(self, close);
            }
        }
        let attached = match self
            .directory
            .attach(&hello.node_name, hello.incarnation, self.index)
        {
            Ok(attached) => attached,
            Err(_) => {
                let text = format!(
                    "the router tracks {} nodes already (--max-nodes)",
                    self.config.nodes_max
                );
                let close = Close::error(fb::ErrorCode::RouterFull, text, fb::LeftReason::Refused);
                return refuse(self, close);
            }
        };
        let node = attached.node;
        let resumed_from = match attached.superseded {
            Superseded::SameShard { ticket } => self
                .conns
                .with_ticket(node, ticket)
                .filter(|&id| Some(id) == candidate),
            _ => None,
        };
        if resumed_from.is_none() {
            self.settle_superseded(node, attached.epoch, &attached.superseded);
        }
        let mut stream = OutputStream::new(stream_id(self.stream_key, attached.ticket), hello.acks);
        let mut delivered = Vec::new();
        let mut stream_offset = 0;
        let mut carried = None;
        if let Some(old_id) = resumed_from {
            let old = self.conns.get_mut(old_id).expect("found");
            std::mem::swap(&mut stream, &mut old.stream);
            stream_offset =
                stream.resume(&mut self.pool, hello.acks, hello.received, &mut delivered);
            let replayed = stream.end() - stream_offset;
            carried = Some((std::mem::take(&mut old.pending_reports), old.budget));
            old.set_leave_reason(fb::LeftReason::Replaced);
            self.counters.connections_resumed += 1;
            self.counters.resume_bytes_replayed += replayed;
            self.log.node_line(
                LogLevel::Info,
                "resume",
                &hello.node_name,
                hello.incarnation,
                None,
                format!(
                    "resumed its stream at offset {stream_offset} ({replayed} bytes queued again)"
                ),
            );
            self.end_replaced(old_id);
        }
        // In a cluster, the cluster's nodes (this router's directory knows
        // only its own).
        let membership = self.cluster_nodes.as_ref().unwrap_or(&attached.membership);
        let nodes: Vec<(&str, u64)> = membership
            .nodes
            .iter()
            .map(|(name, incarnation)| (&**name, *incarnation))
            .collect();
        let welcome = self.encoder.welcome(&WelcomeFrame {
            protocol_version: PROTOCOL_VERSION,
            router_id: self.router_id,
            shard_count: self.shard_count as u16,
            slot_count: SLOT_COUNT,
            shard: self.index as u16,
            heartbeat_ms: self.config.heartbeat.as_millis() as u32,
            max_frame_bytes: self.config.frame_bytes_max,
            nodes: &nodes,
            senior: membership.senior.as_deref(),
            membership_seq: membership.seq,
            resumed: resumed_from.is_some(),
            stream_offset,
            reconnect_grace_ms: self.config.reconnect_grace.as_millis() as u32,
            received: stream.peer_received,
            stream: stream.id(),
            warmup_ms: self
                .owner
                .warm_until()
                .since(now)
                .as_millis()
                .min(u32::MAX.into()) as u32,
            map: self.owner.slots.map().map(|map| &**map),
            member: self.owner.slots.me(),
        });
        stream.set_preamble(welcome);
        let mut conn = new_conn(
            node,
            attached.epoch,
            attached.ticket,
            hello.node_name.clone(),
            hello.incarnation,
            peer,
            stream,
            now,
        );
        if let Some((pending_reports, budget)) = carried {
            conn.pending_reports = pending_reports;
            conn.budget = budget;
        }
        let id = self.conns.insert(conn);
        self.conns.wake(id);
        if !delivered.is_empty() {
            sink!(self).settle(node, delivered, true);
        }
        self.announce(&attached.events, Some(node));
        self.counters.connections_opened += 1;
        self.log.node_line(
            LogLevel::Info,
            "connect",
            &hello.node_name,
            hello.incarnation,
            None,
            format!(
                "connected from {} (acks {})",
                peer.map_or("?".into(), |peer| peer.to_string()),
                hello.acks,
            ),
        );
        self.finish_operation(now);
        Ok(id)
    }

    /// Ends a connection whose stream a resuming one took over: it writes
    /// nothing more (no Error: the node is the same process, on a newer
    /// connection), and its registration is already replaced.
    fn end_replaced(&mut self, id: ConnId) {
        let mut out = sink!(self);
        out.drop_held(id);
        let conn = out.conns.get_mut(id).expect("present");
        if conn.has_socket {
            conn.state = LinkState::Closing;
            out.conns.wake(id);
        } else {
            let mut conn = out.conns.remove(id);
            conn.stream.release(out.pool);
        }
    }

    /// Closes what a new connection replaced (see `Superseded`).
    fn settle_superseded(&mut self, node: NodeId, epoch: u32, superseded: &Superseded) {
        if let Superseded::SameShard { ticket } = superseded {
            // The same process, on a new stream (it did not ask to resume
            // this one, or could not): the old connection ends.
            if let Some(old) = self.conns.with_ticket(node, *ticket) {
                let close = Close::error(
                    fb::ErrorCode::Replaced,
                    "a newer connection of this node took its place",
                    fb::LeftReason::Replaced,
                );
                sink!(self).close(old, close);
            }
            return;
        }
        let Superseded::PreviousIncarnation { connections } = superseded else {
            return;
        };
        for &(shard, ticket) in connections {
            if shard == self.index {
                if let Some(old) = self.conns.with_ticket(node, ticket) {
                    let close = Close::error(
                        fb::ErrorCode::Replaced,
                        "a new process of this node connected",
                        fb::LeftReason::Replaced,
                    );
                    sink!(self).close(old, close);
                }
            } else {
                let header = EntryHeader {
                    token: ticket,
                    message_id: u64::from(fb::ErrorCode::Replaced.0),
                    ..EntryHeader::new(EntryKind::CloseConnection, node, epoch)
                };
                self.outboxes.push(shard, Class::Response, &header, &[]);
            }
        }
        self.broadcast_purge(node, epoch);
    }

    /// Tells every shard that `node`'s sessions before `epoch` are dead.
    fn broadcast_purge(&mut self, node: NodeId, epoch: u32) {
        let header = EntryHeader::new(EntryKind::PurgeNode, node, epoch);
        self.outboxes
            .push_to_others(self.index, Class::Forward, &header, &[]);
        self.owner.observe_epoch(&mut sink!(self), node, epoch);
    }

    /// Logs a membership event and encodes its NodeEvent frame.
    pub(super) fn membership_event_frame(&mut self, event: &MembershipEvent) -> Vec<u8> {
        self.log.line(format!(
            "membership event {}: {:?} {} ({:?}), senior {}",
            event.seq,
            event.kind,
            event.node,
            event.reason,
            event.senior.as_deref().unwrap_or("none")
        ));
        self.encoder
            .node_event(&NodeEventFrame {
                seq: event.seq,
                kind: event.kind,
                node: &event.node,
                incarnation: event.incarnation,
                reason: event.reason,
                senior: event.senior.as_deref(),
            })
            .to_vec()
    }

    /// Sends membership events to every node, except `except` (a node that
    /// learns them from its Welcome).
    fn announce(&mut self, events: &[MembershipEvent], except: Option<NodeId>) {
        if self.cluster_nodes.is_some() {
            // In a cluster every router announces the cluster's events
            // ([`ShardCore::apply_members`]), not its own.
            return;
        }
        for event in events {
            let frame = self.membership_event_frame(event);
            let except = except.unwrap_or(NodeId(u32::MAX));
            let header = EntryHeader::new(EntryKind::NodeEvent, except, 0);
            self.outboxes
                .push_to_others(self.index, Class::Response, &header, &frame);
            self.node_event_here(&frame, except);
        }
    }

    // ----- Ends ---------------------------------------------------------------

    /// The node sent something the router refuses: it is told, and the
    /// connection closes.
    pub(super) fn fault(&mut self, id: ConnId, fault: PeerFault, _now: Time) {
        self.counters.connections_refused += 1;
        let name = fault.code().variant_name().unwrap_or("Error");
        let close = Close::error(fault.code(), fault.to_string(), fb::LeftReason::Refused);
        let (node, incarnation) = self
            .conns
            .get(id)
            .map_or(("?", 0), |conn| (&*conn.name, conn.incarnation));
        self.log.node_line(
            LogLevel::Warn,
            "refuse",
            node,
            incarnation,
            Some(name.to_string()),
            format!("refused: {}", close.text),
        );
        sink!(self).close(id, close);
    }

    /// The node said Goodbye: a clean close, its sessions gone with its
    /// last connection. A node that acknowledges keeps doing so until the
    /// router closes, so that what it reads still counts as delivered.
    pub(super) fn goodbye(&mut self, id: ConnId, reason: &str) {
        self.counters.connections_goodbye += 1;
        if let Some(conn) = self.conns.get_mut(id) {
            conn.after_goodbye = conn.stream.acks();
        }
        let close = Close::silent(format!("goodbye: {reason}"), fb::LeftReason::Goodbye);
        sink!(self).close(id, close);
    }

    /// The connection was lost without a Goodbye: suspended for the
    /// reconnect grace, or closed when there is none.
    pub(super) fn lose(&mut self, id: ConnId, lost: Lost, now: Time) {
        let why = match lost {
            Lost::Closed => "closed by the node".to_string(),
            Lost::Failed(text) => text,
        };
        let grace = self.config.reconnect_grace;
        if grace.is_zero() || self.shutting_down {
            let close = Close::silent(why, fb::LeftReason::Closed);
            return sink!(self).close(id, close);
        }
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if !conn.is_open() {
            return;
        }
        self.log.node_line(
            LogLevel::Info,
            "suspend",
            &conn.name,
            conn.incarnation,
            Some(why.to_string()),
            format!("connection lost; suspended for {} ms", grace.as_millis()),
        );
        sink!(self).suspend(id, now + grace, None);
    }

    /// The socket of `id` ended (end of file, or an error). A frame cut in
    /// half is a protocol error; otherwise the connection is lost.
    pub fn socket_lost(&mut self, id: ConnId, lost: Lost, now: Time) {
        self.outboxes.set_now(now);
        let Some(conn) = self.conns.get(id) else {
            return;
        };
        if conn.is_open() {
            if !conn.carry.is_empty() && matches!(lost, Lost::Closed) {
                let have = conn.carry.len();
                let need = crate::wire::frame_need(&conn.carry);
                self.fault(id, PeerFault::Truncated { have, need }, now);
            } else {
                self.lose(id, lost, now);
            }
        }
        self.finish_operation(now);
    }

    /// What the driver should do with `id`'s socket now.
    pub fn socket_action(&self, id: ConnId) -> SocketAction {
        match self.conns.get(id).map(|conn| conn.state) {
            Some(LinkState::Open) => SocketAction::Serve,
            Some(LinkState::Closing) => SocketAction::Flush,
            Some(LinkState::Suspended { .. }) | None => SocketAction::Drop,
        }
    }

    /// Whether `id`'s reader may read now: the connection is open, the
    /// outboxes its frames feed have room, and its budget is not spent.
    /// A `false` marks the reader paused (the node's silence does not
    /// count meanwhile); the connection is woken when it may read again
    /// (for the budget) or the driver retries after a flush (for room).
    pub fn may_read(&mut self, id: ConnId) -> bool {
        let room = self.outboxes_have_room();
        let hard = self.conns.limits.hard;
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let may = reader_may_read(conn, room, hard);
        if conn.is_open() {
            if !may && !conn.read_paused {
                self.counters.reads_paused += 1;
            }
            conn.read_paused = !may;
        }
        may
    }

    /// Whether [`ShardCore::may_read`] would say yes, without marking
    /// anything (for a driver deciding what it can do).
    pub fn can_read(&self, id: ConnId) -> bool {
        let (room, hard) = (self.outboxes_have_room(), self.conns.limits.hard);
        self.conns
            .get(id)
            .is_some_and(|conn| reader_may_read(conn, room, hard))
    }

    /// The outboxes a connection's frames feed have room.
    fn outboxes_have_room(&self) -> bool {
        self.outboxes.has_room(Class::Forward) && self.outboxes.has_room(Class::Response)
    }

    /// The next bytes to write to `id`'s socket (empty: nothing now).
    pub fn writable(&self, id: ConnId) -> &[u8] {
        let Some(conn) = self.conns.get(id) else {
            return &[];
        };
        match conn.state {
            LinkState::Open => conn.stream.writable(false),
            LinkState::Closing => conn.stream.writable(true),
            // Only the Error frame of a timed-out connection: the stream
            // waits for a resume.
            LinkState::Suspended { .. } => {
                let bytes = conn.stream.writable(true);
                if conn.stream.has_unwritten() {
                    &[]
                } else {
                    bytes
                }
            }
        }
    }

    /// `n` bytes of what [`ShardCore::writable`] returned were written.
    pub fn wrote(&mut self, id: ConnId, n: usize, now: Time) {
        self.outboxes.set_now(now);
        let hard = self.conns.limits.hard;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let over_hard = conn.stream.unwritten_bytes() >= hard;
        conn.stream.wrote(&mut self.pool, n);
        if over_hard && conn.stream.unwritten_bytes() < hard && conn.read_paused {
            // Its reader waited for this.
            self.conns.wake(id);
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        self.counters.bytes_out += n as u64;
        if conn.is_open() {
            let mut out = sink!(self);
            out.conns
                .uncongest_if_drained(id, out.directory, self.index);
            out.release_held(id);
        }
        self.finish_operation(now);
    }

    /// The driver is done with `id`'s socket (closed it). A closing
    /// connection ends; a suspended one waits for its resume.
    pub fn socket_released(&mut self, id: ConnId, now: Time) {
        self.outboxes.set_now(now);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !conn.has_socket {
            return;
        }
        conn.has_socket = false;
        self.directory.release_slot(self.index);
        match conn.state {
            LinkState::Closing => self.unregister(id),
            LinkState::Suspended { .. } => {}
            LinkState::Open => {
                // The driver gave up on the socket without a cause.
                self.lose(id, Lost::Failed("socket released".into()), now);
                if self
                    .conns
                    .get(id)
                    .is_some_and(|conn| conn.state == LinkState::Closing)
                {
                    self.unregister(id);
                }
            }
        }
        self.finish_operation(now);
    }

    /// Forgets a connection that ended for good: every outcome still
    /// waiting on it is answered as not delivered, and it leaves the
    /// directory (with the node's sessions and a `Left` event, when it was
    /// the node's last connection).
    pub(super) fn unregister(&mut self, id: ConnId) {
        self.leave_directory(id);
        let mut out = sink!(self);
        out.drop_held(id);
        let mut conn = out.conns.remove(id);
        let outcomes = conn.stream.take_deferred();
        let node = conn.node;
        out.settle(node, outcomes, false);
        conn.stream.release(out.pool);
        self.counters.connections_closed += 1;
        self.log.node_line(
            LogLevel::Info,
            "disconnect",
            &conn.name,
            conn.incarnation,
            Some(format!("{:?}", conn.leave_reason())),
            "disconnected".into(),
        );
    }

    /// Takes a connection that ends for good out of the directory, once:
    /// when it was the node's last, the node's sessions die everywhere
    /// and every node hears it left. Done as soon as the connection starts
    /// closing (its socket may linger a second more), so that a new
    /// connection of the node is a new registration, with a new epoch,
    /// that no verdict of the old one can reach.
    pub(super) fn leave_directory(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.detached {
            return;
        }
        conn.detached = true;
        let (node, ticket, reason) = (conn.node, conn.ticket, conn.leave_reason());
        let (detached, events) = self.directory.detach_for(node, self.index, ticket, reason);
        if let Detached::Gone { epoch } = detached {
            self.broadcast_purge(node, epoch);
        }
        self.announce(&events, None);
    }

    /// Ends suspensions whose grace ran out (or whose park filled up):
    /// every outcome parked on them is answered not delivered.
    pub(super) fn expire_suspensions(&mut self, now: Time) {
        for index in 0..self.conns.slot_count() {
            let Some(id) = self.conns.id_at(index) else {
                continue;
            };
            let conn = self.conns.get(id).expect("present");
            let LinkState::Suspended { until } = conn.state else {
                continue;
            };
            if until > now || conn.has_socket {
                continue;
            }
            let parked = conn.stream.deferred_count();
            if conn.park_overflowed {
                self.counters.suspensions_park_full += 1;
            } else {
                self.counters.suspensions_expired += 1;
            }
            let (name, incarnation) = (conn.name.clone(), conn.incarnation);
            let reason = if conn.park_overflowed {
                "park full"
            } else {
                "grace over"
            };
            self.log.node_line(
                LogLevel::Warn,
                "give_up",
                &name,
                incarnation,
                Some(reason.into()),
                format!(
                    "did not resume {}; {parked} parked messages answered offline",
                    if reason == "park full" {
                        "before its park filled up"
                    } else {
                        "in time"
                    }
                ),
            );
            self.unregister(id);
        }
    }

    /// Closes every connection (nodes get `Error(ShuttingDown)`) and
    /// refuses new ones.
    pub fn shutdown(&mut self, now: Time) {
        self.outboxes.set_now(now);
        self.shutting_down = true;
        for index in 0..self.conns.slot_count() {
            let Some(id) = self.conns.id_at(index) else {
                continue;
            };
            sink!(self).close(id, shutting_down());
        }
        self.finish_operation(now);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The router begins to stop (lame duck): every open connection is
    /// told with a Draining frame to leave within `window`; new Hellos are
    /// refused (ShuttingDown). Connections that stay are closed by
    /// `shutdown` at the end. Draining twice tells nobody twice.
    pub fn drain(&mut self, window: Duration, reason: &str, now: Time) {
        self.outboxes.set_now(now);
        if self.drain_told || self.shutting_down {
            return;
        }
        self.draining = true;
        self.drain_told = true;
        let window_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
        let mut told = 0;
        for index in 0..self.conns.slot_count() {
            let Some(id) = self.conns.id_at(index) else {
                continue;
            };
            if !self.conns.get(id).is_some_and(|conn| conn.is_open()) {
                continue;
            }
            sink!(self).control_to(id, |encoder, out| {
                out.extend_from_slice(encoder.draining(window_ms, reason))
            });
            told += 1;
        }
        self.counters.drain_notices += told;
        self.log.line(format!(
            "draining: {told} connections told to leave within {window_ms} ms"
        ));
        self.finish_operation(now);
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The router begins to drain but has not told its nodes yet (a
    /// cluster's hand-over comes first): new Hellos are refused from now.
    pub fn refuse_new_connections(&mut self) {
        self.draining = true;
    }
}

/// A stream's identity, and the secret that resumes it: SipHash of the
/// router's 128-bit stream key (random per router process, never sent)
/// and the registration's ticket. Unlike an invertible mix, nothing a node
/// sees (its own stream ids, the router id, the tickets' order) reveals
/// the key, so only the node whose Welcome carried a stream can resume it.
fn stream_id(stream_key: (u64, u64), ticket: u64) -> u64 {
    use std::hash::Hasher;
    // SipHash-1-3 (std's DefaultHasher: fixed keys, the same in every
    // process, which the simulation needs) over key, ticket, key: the
    // secret is in the input.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write_u64(stream_key.0);
    hasher.write_u64(ticket);
    hasher.write_u64(stream_key.1);
    hasher.finish().max(1)
}

fn shutting_down() -> Close {
    Close::error(
        fb::ErrorCode::ShuttingDown,
        "the router is shutting down",
        fb::LeftReason::Closed,
    )
}

/// The rule of [`ShardCore::may_read`]: open, room in the outboxes, budget
/// left, and less than the hard limit of output still to write.
fn reader_may_read(conn: &Conn, room: bool, hard: usize) -> bool {
    conn.is_open() && room && !conn.budget.exhausted() && conn.stream.unwritten_bytes() < hard
}
