//! Accepting node connections, the Hello/Welcome handshake, hand-off to the
//! right shard, and the reader loop.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::rc::Rc;

use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::limits::{
    CLOSE_LINGER, CONNECTIONS_PER_SHARD_MAX, DEVICE_ID_BYTES_MAX, HELLO_TIMEOUT,
    NODE_NAME_BYTES_MAX, PROTOCOL_VERSION, SLOT_COUNT, USER_ID_BYTES_MAX,
};
use crate::route::Sender;
use crate::shard::link::{Control, EntryKind};
use crate::shard::Shard;
use crate::wire::{check, fb, Check, FrameError, WelcomeFrame};

use super::directory::Superseded;
use super::{Connection, Handoff, HelloInfo, LinkState};

/// Pause after a failed accept (e.g. out of file descriptors) before trying
/// again, so the failure does not spin.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// How a connection's reading ended.
enum ReadEnd {
    /// The node closed the connection between frames.
    PeerClosed,
    /// The node closed the connection in the middle of a frame.
    Truncated {
        have: usize,
        need: usize,
    },
    /// The node sent something the router refuses; tell it and close.
    Refused(fb::ErrorCode, String),
    /// The node sent an Error frame: it is closing.
    PeerError(String),
    /// The node sent Goodbye: a clean shutdown.
    Goodbye(String),
    /// The router is closing the connection.
    ClosedByRouter,
    Failed(io::Error),
}

/// A connection's read buffer: frames are handled in place between `start`
/// and `end`, and a partial frame is moved to the front before the next
/// read.
pub(crate) struct InputBuffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl InputBuffer {
    fn new(capacity: usize) -> Self {
        InputBuffer {
            bytes: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    fn with_pending(capacity: usize, pending: &[u8]) -> Self {
        let mut input = InputBuffer::new(capacity);
        input.bytes[..pending.len()].copy_from_slice(pending);
        input.end = pending.len();
        input
    }

    fn unread(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.bytes[self.end..]
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// Counts a socket against `CONNECTIONS_PER_SHARD_MAX` while it lives.
struct SocketSlot(Rc<Shard>);

impl SocketSlot {
    fn new(shard: &Rc<Shard>) -> Self {
        shard.sockets.set(shard.sockets.get() + 1);
        SocketSlot(shard.clone())
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.set(self.0.sockets.get() - 1);
    }
}

/// Accepts connections on this shard's duplicate of the router's listening
/// socket (every shard accepts on it; whichever is free takes the next).
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(handshake(shard.clone(), stream)).detach();
            }
            Err(error) => {
                crate::log!("shard {}: accept failed: {error}", shard.index);
                glommio::timer::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Serves a connection whose Hello another shard read.
pub(crate) async fn adopt(shard: Rc<Shard>, handoff: Handoff) {
    let _slot = SocketSlot::new(&shard);
    // SAFETY: the hand-off transferred ownership of this open socket.
    let stream = unsafe { TcpStream::from_raw_fd(handoff.fd.into_raw_fd()) };
    if shard.shutting_down.get() {
        return refuse(
            &shard,
            stream,
            fb::ErrorCode::ShuttingDown,
            "the router is shutting down",
        )
        .await;
    }
    let input = InputBuffer::with_pending(shard.config.read_buffer_bytes(), &handoff.pending);
    serve(shard, stream, handoff.hello, input).await;
}

/// Reads the Hello, then serves the connection here or hands it to the
/// shard it belongs on.
async fn handshake(shard: Rc<Shard>, mut stream: TcpStream) {
    let _slot = SocketSlot::new(&shard);
    if shard.shutting_down.get() {
        return refuse(
            &shard,
            stream,
            fb::ErrorCode::ShuttingDown,
            "the router is shutting down",
        )
        .await;
    }
    if shard.sockets.get() > CONNECTIONS_PER_SHARD_MAX {
        let text = format!(
            "shard {} serves {CONNECTIONS_PER_SHARD_MAX} connections already",
            shard.index
        );
        return refuse(&shard, stream, fb::ErrorCode::RouterFull, &text).await;
    }
    let _ = stream.set_nodelay(true);
    let mut input = InputBuffer::new(shard.config.read_buffer_bytes());
    let timeout = async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        Err(ReadEnd::Refused(
            fb::ErrorCode::HelloRequired,
            "no Hello within 10 s".into(),
        ))
    };
    let first = or(read_first_frame(&shard, &mut stream, &mut input), timeout).await;
    let hello_len = match first {
        Ok(len) => len,
        Err(ReadEnd::Refused(code, text)) => return refuse(&shard, stream, code, &text).await,
        Err(ReadEnd::Truncated { have, need }) => {
            let text = format!("the connection ended {have} bytes into a {need}-byte frame");
            return refuse(&shard, stream, fb::ErrorCode::Truncated, &text).await;
        }
        Err(_) => return,
    };
    let (hello, wanted_shard) = match parse_hello(&shard, &input.bytes[..hello_len]) {
        Ok(parsed) => parsed,
        Err((code, text)) => return refuse(&shard, stream, code, &text).await,
    };
    input.start = hello_len;
    // A plain connection goes where its process's stream is, to resume it.
    let target = wanted_shard
        .or_else(|| {
            shard
                .directory
                .resume_shard(&hello.node_name, hello.incarnation)
        })
        .unwrap_or_else(|| shard.directory.placement(shard.index));
    if target == shard.index {
        serve(shard, stream, hello, input).await;
    } else {
        hand_off(shard, stream, hello, input, target).await;
    }
}

async fn read_first_frame(
    shard: &Shard,
    stream: &mut TcpStream,
    input: &mut InputBuffer,
) -> Result<usize, ReadEnd> {
    let max = shard.config.frame_bytes_max;
    loop {
        match check(input.unread(), max) {
            Check::Complete(len) => return Ok(len),
            Check::TooLarge(declared) => {
                let error = FrameError::TooLarge { declared, max };
                return Err(ReadEnd::Refused(error.code(), error.to_string()));
            }
            Check::Incomplete => {}
        }
        let read = stream.read(input.spare()).await.map_err(ReadEnd::Failed)?;
        if read == 0 {
            return Err(truncated_or_closed(input.unread()));
        }
        input.end += read;
    }
}

fn truncated_or_closed(unread: &[u8]) -> ReadEnd {
    if unread.is_empty() {
        return ReadEnd::PeerClosed;
    }
    let need = match unread.get(..4) {
        Some(prefix) => 4 + u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize,
        None => 4,
    };
    ReadEnd::Truncated {
        have: unread.len(),
        need,
    }
}

/// Checks a Hello: the first frame, a version we speak, the right token, a
/// usable name and an existing shard.
fn parse_hello(
    shard: &Shard,
    frame: &[u8],
) -> Result<(HelloInfo, Option<usize>), (fb::ErrorCode, String)> {
    let envelope = shard
        .verifier
        .verify(frame)
        .map_err(|error| (error.code(), error.to_string()))?;
    let Some(hello) = envelope.body_as_hello() else {
        let text = format!(
            "the first frame must be Hello, not {}",
            body_name(envelope.body_type())
        );
        return Err((fb::ErrorCode::HelloRequired, text));
    };
    if hello.protocol_version() != PROTOCOL_VERSION {
        let text = format!(
            "protocol version {} is not supported; this router speaks version {PROTOCOL_VERSION}",
            hello.protocol_version()
        );
        return Err((fb::ErrorCode::UnsupportedVersion, text));
    }
    if let Some(token) = &shard.config.auth_token {
        let presented = hello.auth_token().unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return Err((
                fb::ErrorCode::Unauthorized,
                "auth token missing or wrong".into(),
            ));
        }
    }
    let name = hello.node_name();
    if !(1..=NODE_NAME_BYTES_MAX).contains(&name.len()) {
        let text = format!(
            "node name must be 1 to {NODE_NAME_BYTES_MAX} bytes, not {}",
            name.len()
        );
        return Err((fb::ErrorCode::InvalidField, text));
    }
    let shard_count = shard.shard_count();
    let wanted = match hello.shard() {
        -1 => None,
        wanted if wanted >= 0 && (wanted as usize) < shard_count => Some(wanted as usize),
        wanted => {
            let text =
                format!("shard {wanted} does not exist; this router runs {shard_count} shards");
            return Err((fb::ErrorCode::NoSuchShard, text));
        }
    };
    let info = HelloInfo {
        node_name: name.into(),
        incarnation: hello.incarnation(),
        acks: hello.acks(),
        received: hello.received(),
    };
    Ok((info, wanted))
}

/// Compares without an early exit, so the time taken does not tell an
/// attacker how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn body_name(body: fb::Body) -> String {
    match body.variant_name() {
        Some(name) if body != fb::Body::NONE => name.to_string(),
        _ if body == fb::Body::NONE => "an envelope without a body".to_string(),
        _ => format!("unknown frame type {}", body.0),
    }
}

/// Passes the socket, and the bytes read after its Hello, to `target`.
async fn hand_off(
    shard: Rc<Shard>,
    stream: TcpStream,
    hello: HelloInfo,
    input: InputBuffer,
    target: usize,
) {
    // SAFETY: the stream's fd is open for the duration of this borrow.
    let duplicate = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    let fd = match duplicate {
        Ok(fd) => fd,
        Err(error) => {
            let text = format!("could not hand the connection to shard {target}: {error}");
            return refuse(&shard, stream, fb::ErrorCode::RouterFull, &text).await;
        }
    };
    let handoff = Handoff {
        fd,
        hello,
        pending: input.unread().to_vec(),
    };
    match shard.links[target].try_control(Control::Adopt(handoff)) {
        Ok(()) => {
            let counter = &shard.counters.connections_handed_off;
            counter.set(counter.get() + 1);
            // Dropping our stream closes only our descriptor; the target
            // shard owns the duplicate.
        }
        Err(_) => {
            let text = format!("shard {target} is not taking connections now; retry");
            refuse(&shard, stream, fb::ErrorCode::RouterFull, &text).await;
        }
    }
}

/// Sends an Error frame on a connection that never became a node
/// connection, and closes it.
async fn refuse(shard: &Shard, mut stream: TcpStream, code: fb::ErrorCode, text: &str) {
    let counter = &shard.counters.connections_refused;
    counter.set(counter.get() + 1);
    // Copied out so that no borrow of the encoder lives across an await.
    let frame = shard.encoder.borrow_mut().error(code, text).to_vec();
    let goodbye = async {
        if stream.write_all(&frame).await.is_ok() {
            let _ = stream.shutdown(std::net::Shutdown::Write).await;
            let mut sink = [0u8; 4096];
            while let Ok(1..) = stream.read(&mut sink).await {}
        }
    };
    or(goodbye, glommio::timer::sleep(CLOSE_LINGER)).await;
}

/// Registers the connection, sends Welcome, and reads until it ends.
async fn serve(shard: Rc<Shard>, stream: TcpStream, hello: HelloInfo, mut input: InputBuffer) {
    let attached = match shard
        .directory
        .attach(&hello.node_name, hello.incarnation, shard.index)
    {
        Ok(attached) => attached,
        Err(_) => {
            let text = format!(
                "the router tracks {} nodes already (--max-nodes)",
                shard.config.nodes_max
            );
            return refuse(&shard, stream, fb::ErrorCode::RouterFull, &text).await;
        }
    };
    // The same process's connection on this shard (suspended, or open and
    // overtaken by this reconnect): this one continues its stream.
    let resumed_from = match attached.superseded {
        Superseded::SameShard { ticket } => shard.connection_with_ticket(attached.node, ticket),
        _ => None,
    };
    if resumed_from.is_none() {
        settle_superseded(&shard, attached.node, attached.epoch, &attached.superseded);
    }
    let connection = Rc::new(Connection::new(
        attached.node,
        attached.epoch,
        attached.ticket,
        hello.node_name,
        shard.index,
        shard.directory.clone(),
        stream,
        hello.acks,
        shard.config.out_buffer_bytes,
        shard.config.park_bytes_max,
        shard.slow_consumer_error.clone(),
    ));
    if let Some(old) = &resumed_from {
        let take_over = connection.take_over(old, hello.received);
        let counters = &shard.counters;
        counters
            .connections_resumed
            .set(counters.connections_resumed.get() + 1);
        counters
            .resume_bytes_replayed
            .set(counters.resume_bytes_replayed.get() + take_over.replayed as u64);
        shard.settle(attached.node, take_over.delivered, true);
        crate::log!(
            "shard {}: node {} resumed its stream at offset {} ({} bytes queued again)",
            shard.index,
            connection.node_name,
            take_over.offset,
            take_over.replayed
        );
    }
    {
        let membership = &attached.membership;
        let nodes: Vec<(&str, u64)> = membership
            .nodes
            .iter()
            .map(|(name, incarnation)| (&**name, *incarnation))
            .collect();
        let mut encoder = shard.encoder.borrow_mut();
        let welcome = encoder.welcome(&WelcomeFrame {
            protocol_version: PROTOCOL_VERSION,
            router_id: shard.router_id,
            shard_count: shard.shard_count() as u16,
            slot_count: SLOT_COUNT,
            shard: shard.index as u16,
            heartbeat_ms: shard.config.heartbeat.as_millis() as u32,
            max_frame_bytes: shard.config.frame_bytes_max,
            nodes: &nodes,
            senior: membership.senior.as_deref(),
            membership_seq: membership.seq,
            resumed: resumed_from.is_some(),
            stream_offset: connection.stream_offset(),
            reconnect_grace_ms: shard.config.reconnect_grace.as_millis() as u32,
        });
        // Written before the stream, whatever its size.
        connection.set_preamble(welcome);
    }
    drop(resumed_from);
    shard.announce(&attached.events, Some(attached.node));
    shard.register_connection(&connection);
    crate::log!(
        "shard {}: node {} connected from {} (incarnation {:#x})",
        shard.index,
        connection.node_name,
        connection.peer.map_or("?".into(), |peer| peer.to_string()),
        hello.incarnation,
    );

    let writer = {
        let shard = shard.clone();
        glommio::spawn_local(connection.clone().run_writer(move |bytes| {
            let counter = &shard.counters.bytes_out;
            counter.set(counter.get() + bytes as u64);
        }))
    };
    let keep_alive = glommio::spawn_local(keep_alive(shard.clone(), connection.clone()));
    let end = read_frames(&shard, &connection, &mut input).await;
    drop(keep_alive);
    let suspended = match &end {
        // Lost without a Goodbye: keep the stream for a reconnect.
        ReadEnd::PeerClosed | ReadEnd::Failed(_) | ReadEnd::PeerError(_) => {
            !shard.config.reconnect_grace.is_zero() && connection.suspend(None)
        }
        // The heartbeat suspended it (NodeTimeout).
        ReadEnd::ClosedByRouter => connection.state() == LinkState::Suspended,
        _ => false,
    };
    if suspended {
        let why = match &end {
            ReadEnd::Failed(error) => format!("read failed: {error}"),
            ReadEnd::PeerError(text) => text.clone(),
            ReadEnd::ClosedByRouter => "timed out".into(),
            _ => "closed by the node".into(),
        };
        or(
            connection.writer_done.wait(),
            glommio::timer::sleep(CLOSE_LINGER),
        )
        .await;
        drop(writer);
        connection.drop_socket();
        let counter = &shard.counters.connections_suspended;
        counter.set(counter.get() + 1);
        crate::log!(
            "shard {}: node {} connection lost ({why}); suspended for {} ms",
            shard.index,
            connection.node_name,
            shard.config.reconnect_grace.as_millis()
        );
        glommio::spawn_local(grace(shard, connection)).detach();
        return;
    }
    let (linger, why) = finish_reading(&shard, &connection, end);
    // Let the writer send what is queued (an Error frame last), then wait
    // for the node to close its side, so our close cannot reset the
    // connection before the node has read the Error frame.
    or(
        connection.writer_done.wait(),
        glommio::timer::sleep(CLOSE_LINGER),
    )
    .await;
    if linger {
        or(
            connection.discard_until_closed(),
            glommio::timer::sleep(CLOSE_LINGER),
        )
        .await;
    }
    drop(writer);
    shard.unregister_connection(&connection);
    crate::log!(
        "shard {}: node {} disconnected: {why}",
        shard.index,
        connection.node_name
    );
}

/// Waits out a suspended connection's grace: when it is neither resumed
/// nor closed by then (or its park filled up), every outcome parked on it
/// is answered not delivered, and it is unregistered (its node's sessions
/// are purged if it was the node's last connection).
async fn grace(shard: Rc<Shard>, connection: Rc<Connection>) {
    or(
        connection.until_not_suspended(),
        glommio::timer::sleep(shard.config.reconnect_grace),
    )
    .await;
    let expired = connection.state() == LinkState::Suspended;
    if expired {
        connection.close(None);
    }
    let counters = &shard.counters;
    if connection.park_overflowed() {
        counters
            .suspensions_park_full
            .set(counters.suspensions_park_full.get() + 1);
    } else if expired {
        counters
            .suspensions_expired
            .set(counters.suspensions_expired.get() + 1);
    }
    let outcomes = connection.take_deferred();
    if expired || connection.park_overflowed() {
        crate::log!(
            "shard {}: node {} did not resume{}; {} parked messages answered offline",
            shard.index,
            connection.node_name,
            if expired {
                " in time"
            } else {
                " before its park filled up"
            },
            outcomes.len()
        );
    }
    shard.settle(connection.node, outcomes, false);
    shard.unregister_connection(&connection);
}

/// The heartbeat of one connection: every `--heartbeat-ms`, a Ping when
/// the node sent nothing or the router queued nothing since the last check
/// (so both ends hear from each other at least once per interval), and a
/// close with `NodeTimeout` once the node has been silent for
/// `--node-timeout-ms`. Silence is counted in whole intervals. Cancelled
/// when the connection's reader ends.
async fn keep_alive(shard: Rc<Shard>, connection: Rc<Connection>) {
    let interval = shard.config.heartbeat;
    let timeout = shard.config.node_timeout;
    let mut reads = connection.reads();
    let mut queued = connection.frames_queued();
    let mut silent = std::time::Duration::ZERO;
    let mut nonce = 0u64;
    loop {
        glommio::timer::sleep(interval).await;
        if connection.is_closing() {
            return;
        }
        if connection.reads() == reads && !connection.read_paused() {
            silent += interval;
        } else {
            silent = std::time::Duration::ZERO;
            reads = connection.reads();
        }
        if silent >= timeout {
            let counter = &shard.counters.connections_timed_out;
            counter.set(counter.get() + 1);
            let text = format!(
                "nothing from the node for {} ms (--node-timeout-ms)",
                silent.as_millis()
            );
            connection.set_leave_reason(fb::LeftReason::Timeout);
            if shard.config.reconnect_grace.is_zero() {
                shard.close_connection(&connection, Some((fb::ErrorCode::NodeTimeout, &text)));
            } else {
                // Maybe only this TCP connection is dead: keep the stream.
                let mut encoder = shard.encoder.borrow_mut();
                connection.suspend(Some(encoder.error(fb::ErrorCode::NodeTimeout, &text)));
            }
            return;
        }
        // Also asks a node that acknowledges for an Ack of what it has.
        let unacked = connection.unacked_bytes() > 0;
        if !silent.is_zero() || connection.frames_queued() == queued || unacked {
            nonce += 1;
            let pushed = connection.push_control(shard.encoder.borrow_mut().ping(nonce));
            match pushed {
                Ok(()) => {
                    let counter = &shard.counters.pings_sent;
                    counter.set(counter.get() + 1);
                }
                Err(super::PushError::OverHardLimit) => shard.count_slow_consumer(),
                Err(super::PushError::Closed) => return,
            }
        }
        queued = connection.frames_queued();
    }
}

/// Closes what a new connection replaced (see `Superseded`).
fn settle_superseded(
    shard: &Shard,
    node: crate::table::NodeId,
    epoch: u32,
    superseded: &Superseded,
) {
    let reason_same = "a newer connection of this node took its place";
    let reason_restart = "a new process of this node connected";
    match superseded {
        Superseded::Nothing => {}
        Superseded::SameShard { ticket } => {
            if let Some(old) = shard.connection_with_ticket(node, *ticket) {
                old.set_leave_reason(fb::LeftReason::Replaced);
                shard.close_connection(&old, Some((fb::ErrorCode::Replaced, reason_same)));
            }
        }
        Superseded::PreviousIncarnation { connections } => {
            for &(old_shard, ticket) in connections {
                if old_shard == shard.index {
                    if let Some(old) = shard.connection_with_ticket(node, ticket) {
                        old.set_leave_reason(fb::LeftReason::Replaced);
                        shard.close_connection(
                            &old,
                            Some((fb::ErrorCode::Replaced, reason_restart)),
                        );
                    }
                } else {
                    // Best effort: the old process's sessions are already dead
                    // by epoch, so a full queue only delays closing its socket.
                    let _ = shard.links[old_shard].try_control(Control::CloseConnection {
                        node,
                        ticket,
                        code: fb::ErrorCode::Replaced,
                        reason: reason_restart,
                    });
                }
            }
            shard.broadcast_purge(node, epoch);
        }
    }
}

/// Reads and handles frames until the connection ends.
async fn read_frames(
    shard: &Rc<Shard>,
    connection: &Connection,
    input: &mut InputBuffer,
) -> ReadEnd {
    let max = shard.config.frame_bytes_max;
    loop {
        loop {
            match check(input.unread(), max) {
                Check::Complete(len) => {
                    let frame = &input.bytes[input.start..input.start + len];
                    if let Err(end) = handle_frame(shard, connection, frame) {
                        return end;
                    }
                    input.start += len;
                }
                Check::Incomplete => break,
                Check::TooLarge(declared) => {
                    let error = FrameError::TooLarge { declared, max };
                    return ReadEnd::Refused(error.code(), error.to_string());
                }
            }
        }
        input.compact();
        shard.request_flush();
        // Let the flusher and the other connections of this shard run.
        glommio::executor().yield_now().await;
        if !shard.has_room_for_reading() {
            // Backpressure: the router, not the node, stops reading, so
            // this time does not count as the node's silence.
            connection.set_read_paused(true);
            let room = shard.room.wait_until(|| shard.has_room_for_reading());
            or(room, connection.closed()).await;
            connection.set_read_paused(false);
        }
        match connection.read(input.spare()).await {
            Ok(None) => return ReadEnd::ClosedByRouter,
            Ok(Some(0)) => return truncated_or_closed(input.unread()),
            Ok(Some(read)) => {
                input.end += read;
                let counter = &shard.counters.bytes_in;
                counter.set(counter.get() + read as u64);
            }
            Err(error) => return ReadEnd::Failed(error),
        }
    }
}

/// Acts on one frame from a node.
fn handle_frame(shard: &Rc<Shard>, connection: &Connection, frame: &[u8]) -> Result<(), ReadEnd> {
    shard
        .counters
        .frames_in
        .set(shard.counters.frames_in.get() + 1);
    let envelope = shard
        .verifier
        .verify(frame)
        .map_err(|error| ReadEnd::Refused(error.code(), error.to_string()))?;
    let sender = Sender {
        shard: shard.index,
        node: connection.node,
        epoch: connection.epoch,
    };
    match envelope.body_type() {
        fb::Body::Route => {
            let route = envelope.body_as_route().expect("body type checked");
            shard.on_route(sender, route, frame);
        }
        fb::Body::SessionOpen => {
            let open = envelope.body_as_session_open().expect("body type checked");
            check_session_ids(open.user(), open.device())?;
            shard.on_session_op(sender, EntryKind::SessionOpen, open.user(), frame);
        }
        fb::Body::SessionClose => {
            let close = envelope.body_as_session_close().expect("body type checked");
            check_session_ids(close.user(), close.device())?;
            shard.on_session_op(sender, EntryKind::SessionClose, close.user(), frame);
        }
        fb::Body::Ping => {
            let nonce = envelope.body_as_ping().expect("body type checked").nonce();
            let mut encoder = shard.encoder.borrow_mut();
            let pushed = connection.push_control(encoder.pong(nonce));
            if pushed == Err(super::PushError::OverHardLimit) {
                shard.count_slow_consumer();
            }
        }
        fb::Body::Pong => {}
        fb::Body::Ack => {
            let received = envelope
                .body_as_ack()
                .expect("body type checked")
                .received();
            shard
                .on_ack(connection, received)
                .map_err(|text| ReadEnd::Refused(fb::ErrorCode::InvalidField, text))?;
        }
        fb::Body::Error => {
            let error = envelope.body_as_error().expect("body type checked");
            let code = error.code().variant_name().unwrap_or("unknown code");
            let text = format!("the node sent Error {code}: {}", error.text().unwrap_or(""));
            return Err(ReadEnd::PeerError(text));
        }
        fb::Body::Locate => {
            let locate = envelope.body_as_locate().expect("body type checked");
            check_user_id(locate.user())?;
            shard.on_locate(sender, locate.user(), frame);
        }
        fb::Body::SessionSync => {
            let sync = envelope.body_as_session_sync().expect("body type checked");
            crate::shard::check_session_sync(sync)
                .map_err(|text| ReadEnd::Refused(fb::ErrorCode::InvalidField, text))?;
            shard.on_session_sync(sender, sync);
        }
        fb::Body::Subscribe => {
            let topic = envelope
                .body_as_subscribe()
                .expect("body type checked")
                .topic();
            check_topic(topic)?;
            shard.on_topic_op(sender, topic, frame);
        }
        fb::Body::Unsubscribe => {
            let topic = envelope
                .body_as_unsubscribe()
                .expect("body type checked")
                .topic();
            check_topic(topic)?;
            shard.on_topic_op(sender, topic, frame);
        }
        fb::Body::Publish => {
            let publish = envelope.body_as_publish().expect("body type checked");
            check_topic(publish.topic())?;
            shard.on_publish(sender, &connection.node_name, publish);
        }
        fb::Body::Fanout => {
            let fanout = envelope.body_as_fanout().expect("body type checked");
            shard.on_fanout(sender, fanout, frame);
        }
        fb::Body::Broadcast => {
            let broadcast = envelope.body_as_broadcast().expect("body type checked");
            let payload = broadcast.payload().map_or(&[][..], |p| p.bytes());
            shard.on_broadcast(sender, &connection.node_name, payload);
        }
        fb::Body::Goodbye => {
            let goodbye = envelope.body_as_goodbye().expect("body type checked");
            return Err(ReadEnd::Goodbye(goodbye.reason().unwrap_or("").to_string()));
        }
        fb::Body::Hello => {
            let text = "Hello is only allowed as the first frame".to_string();
            return Err(ReadEnd::Refused(fb::ErrorCode::UnexpectedFrame, text));
        }
        other => {
            let text = format!("a node may not send {}", body_name(other));
            return Err(ReadEnd::Refused(fb::ErrorCode::UnexpectedFrame, text));
        }
    }
    Ok(())
}

fn check_topic(topic: &str) -> Result<(), ReadEnd> {
    if !(1..=USER_ID_BYTES_MAX).contains(&topic.len()) {
        let text = format!(
            "topic id must be 1 to {USER_ID_BYTES_MAX} bytes, not {}",
            topic.len()
        );
        return Err(ReadEnd::Refused(fb::ErrorCode::InvalidField, text));
    }
    Ok(())
}

fn check_user_id(user: &str) -> Result<(), ReadEnd> {
    if !(1..=USER_ID_BYTES_MAX).contains(&user.len()) {
        let text = format!(
            "user id must be 1 to {USER_ID_BYTES_MAX} bytes, not {}",
            user.len()
        );
        return Err(ReadEnd::Refused(fb::ErrorCode::InvalidField, text));
    }
    Ok(())
}

fn check_session_ids(user: &str, device: &str) -> Result<(), ReadEnd> {
    check_user_id(user)?;
    if !(1..=DEVICE_ID_BYTES_MAX).contains(&device.len()) {
        let text = format!(
            "device id must be 1 to {DEVICE_ID_BYTES_MAX} bytes, not {}",
            device.len()
        );
        return Err(ReadEnd::Refused(fb::ErrorCode::InvalidField, text));
    }
    Ok(())
}

/// Closes the connection as its reading ended; returns whether to linger
/// (the node may still be reading an Error frame) and why it ended.
fn finish_reading(shard: &Shard, connection: &Connection, end: ReadEnd) -> (bool, String) {
    let refused = || {
        let counter = &shard.counters.connections_refused;
        counter.set(counter.get() + 1);
    };
    match end {
        ReadEnd::PeerClosed => {
            shard.close_connection(connection, None);
            (false, "closed by the node".into())
        }
        ReadEnd::Failed(error) => {
            shard.close_connection(connection, None);
            (false, format!("read failed: {error}"))
        }
        ReadEnd::PeerError(text) => {
            shard.close_connection(connection, None);
            (false, text)
        }
        ReadEnd::Goodbye(reason) => {
            connection.set_leave_reason(fb::LeftReason::Goodbye);
            let counter = &shard.counters.connections_goodbye;
            counter.set(counter.get() + 1);
            // Linger: the node reads until the router's close, so it gets
            // everything queued for it before its Goodbye was read.
            shard.close_connection(connection, None);
            (true, format!("goodbye: {reason}"))
        }
        ReadEnd::Truncated { have, need } => {
            connection.set_leave_reason(fb::LeftReason::Refused);
            refused();
            let text = format!("the connection ended {have} bytes into a {need}-byte frame");
            shard.close_connection(connection, Some((fb::ErrorCode::Truncated, &text)));
            (true, text)
        }
        ReadEnd::Refused(code, text) => {
            connection.set_leave_reason(fb::LeftReason::Refused);
            refused();
            shard.close_connection(connection, Some((code, &text)));
            let name = code.variant_name().unwrap_or("Error");
            (true, format!("refused ({name}): {text}"))
        }
        ReadEnd::ClosedByRouter => (true, "closed by the router".into()),
    }
}
