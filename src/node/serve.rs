//! Accepting node connections, the handshake, hand-off to the right shard,
//! and the task that moves one connection's bytes.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::core::conns::ConnId;
use crate::core::{Lost, SocketAction};
use crate::limits::{CLOSE_LINGER, HELLO_BYTES_MAX, HELLO_TIMEOUT};
use crate::shard::signal::Signal;

use super::admission::{Refusal, Ticket};
use crate::shard::link::{Control, Handoff};
use crate::shard::Driver;
use crate::wire::{check, fb, Check, FrameError, Hello, PeerFault};

/// Pause after a failed accept (e.g. out of file descriptors) before trying
/// again, so the failure does not spin.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Bytes read at a time before the Hello (a Hello is small).
const HELLO_READ_BYTES: usize = 1024;

/// How long a refused socket may take to accept its Error frame.
const REFUSE_NOW_WRITE: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes of each read while a closing connection lingers.
const LINGER_READ_BYTES: usize = 4096;

/// A socket waiting for its Hello, in the shard's queue of them (oldest
/// first): the one evicted when the queue is full and another arrives.
#[derive(Default)]
pub struct Waiting {
    /// Its Hello was read (or it ended): not in the count any more.
    done: std::cell::Cell<bool>,
    /// Told to give up its place.
    evicted: Signal,
}

/// Counts a socket in its handshake against `--max-handshakes-per-shard`
/// and keeps its place in the queue.
struct HandshakeSlot {
    driver: Rc<Driver>,
    waiting: Rc<Waiting>,
}

impl HandshakeSlot {
    fn new(driver: &Rc<Driver>) -> Self {
        driver.handshakes.set(driver.handshakes.get() + 1);
        let waiting = Rc::new(Waiting::default());
        let mut queue = driver.handshake_queue.borrow_mut();
        // Entries of finished handshakes are skipped when evicting; drop
        // them now and then, so the queue stays about as long as the count.
        if queue.len() >= 2 * driver.handshakes_max() {
            queue.retain(|waiting| !waiting.done.get());
        }
        queue.push_back(waiting.clone());
        HandshakeSlot {
            driver: driver.clone(),
            waiting,
        }
    }

    /// The Hello was read: the socket no longer waits (nor counts).
    fn finish(&self) {
        if !self.waiting.done.replace(true) {
            self.driver.handshakes.set(self.driver.handshakes.get() - 1);
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Makes room for one more socket in the handshake: the socket that has
/// waited longest for its Hello is closed (silently: it said nothing).
fn evict_oldest_handshake(driver: &Driver) {
    let mut queue = driver.handshake_queue.borrow_mut();
    while let Some(waiting) = queue.pop_front() {
        if !waiting.done.get() {
            waiting.evicted.notify();
            driver.with_core(|core, _| core.count_handshake_evicted());
            return;
        }
    }
}

/// Accepts connections on this shard's duplicate of the router's listening
/// socket (every shard accepts on it; whichever is free takes the next).
pub async fn accept_loop(driver: Rc<Driver>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let source = stream
                    .peer_addr()
                    .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |peer| peer.ip());
                match driver.admission.admit(source) {
                    Ok(ticket) => {
                        glommio::spawn_local(handshake(driver.clone(), stream, ticket)).detach();
                    }
                    Err(refusal) => {
                        driver.with_core(|core, _| core.count_socket_refused());
                        let text = match refusal {
                            Refusal::RouterFull => {
                                "the router has --max-connections sockets open; retry later"
                            }
                            Refusal::SourceFull => {
                                "too many sockets from this address (--max-connections-per-source)"
                            }
                        };
                        glommio::spawn_local(refuse_now(driver.clone(), stream, text)).detach();
                    }
                }
            }
            Err(error) => {
                tracing::warn!(shard = driver.index, "accept failed: {error}");
                glommio::timer::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Reads the Hello, then serves the connection here or hands it to the
/// shard it belongs on.
async fn handshake(driver: Rc<Driver>, mut stream: TcpStream, ticket: Ticket) {
    if driver.handshakes.get() >= driver.handshakes_max() {
        evict_oldest_handshake(&driver);
    }
    let slot = HandshakeSlot::new(&driver);
    if driver.is_shutting_down() {
        let text = "the router is shutting down";
        return refuse(&driver, stream, fb::ErrorCode::ShuttingDown, text).await;
    }
    let _ = stream.set_nodelay(true);
    let timeout = async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        Err(Some(PeerFault::HelloRequired(None)))
    };
    let evicted = async {
        slot.waiting.evicted.wait().await;
        Err(None)
    };
    // A Hello needs about a kilobyte: read it with a cap of its own, so that
    // a socket that has not proved anything cannot make the router hold
    // --max-frame-bytes for it.
    let max = (HELLO_BYTES_MAX as u32).min(driver.core().config().frame_bytes_max);
    let mut input = Vec::new();
    let first = or(
        read_first_frame(&mut stream, &mut input, max),
        or(timeout, evicted),
    )
    .await;
    slot.finish();
    let hello_len = match first {
        Ok(len) => len,
        Err(Some(fault)) => {
            return refuse(&driver, stream, fault.code(), &fault.to_string()).await;
        }
        Err(None) => return,
    };
    let checked = driver.core().hello(&input[..hello_len]);
    let hello = match checked {
        Ok(hello) => hello,
        Err(fault) => return refuse(&driver, stream, fault.code(), &fault.to_string()).await,
    };
    let placed = driver.core().place(&hello);
    let target = match placed {
        Ok(target) => target,
        Err(close) => {
            let code = close.code.unwrap_or(fb::ErrorCode::RouterFull);
            return refuse(&driver, stream, code, &close.text).await;
        }
    };
    let pending = input.split_off(hello_len);
    drop(slot);
    if target == driver.index {
        open(driver, stream, hello, pending, ticket).await;
    } else {
        hand_off(driver, stream, hello, pending, target, ticket).await;
    }
}

/// Reads until the first whole frame; returns its length. `Err(None)`: the
/// node closed or the read failed before it sent anything worth an answer.
async fn read_first_frame(
    stream: &mut TcpStream,
    input: &mut Vec<u8>,
    max: u32,
) -> Result<usize, Option<PeerFault>> {
    // (Read straight into `input`: a buffer in this future would be kept
    // in every connection's task for its whole life.)
    loop {
        match check(input, max) {
            Check::Complete(len) => return Ok(len),
            Check::TooLarge(declared) => {
                return Err(Some(FrameError::TooLarge { declared, max }.into()));
            }
            Check::Incomplete => {}
        }
        let filled = input.len();
        input.resize(filled + HELLO_READ_BYTES, 0);
        let read = stream.read(&mut input[filled..]).await;
        let read = read.map_err(|_| None)?;
        input.truncate(filled + read);
        if read == 0 {
            if input.is_empty() {
                return Err(None);
            }
            let need = crate::wire::frame_need(input);
            return Err(Some(PeerFault::Truncated {
                have: input.len(),
                need,
            }));
        }
    }
}

/// Passes the socket, and the bytes read after its Hello, to `target`.
async fn hand_off(
    driver: Rc<Driver>,
    stream: TcpStream,
    hello: Hello,
    pending: Vec<u8>,
    target: usize,
    ticket: Ticket,
) {
    // SAFETY: the stream's fd is open for the duration of this borrow.
    let duplicate = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    let fd = match duplicate {
        Ok(fd) => fd,
        Err(error) => {
            driver.core().unplace(target);
            let text = format!("could not hand the connection to shard {target}: {error}");
            return refuse(&driver, stream, fb::ErrorCode::RouterFull, &text).await;
        }
    };
    let handoff = Handoff {
        fd,
        hello,
        pending,
        ticket,
    };
    match driver.links[target].try_control(Control::Adopt(Box::new(handoff))) {
        Ok(()) => {
            driver.with_core(|core, _| core.count_handoff());
            // Dropping our stream closes only our descriptor; the target
            // shard owns the duplicate.
        }
        Err(_) => {
            driver.core().unplace(target);
            let text = format!("shard {target} is not taking connections now; retry");
            refuse(&driver, stream, fb::ErrorCode::RouterFull, &text).await;
        }
    }
}

/// Serves a connection whose Hello another shard read.
pub async fn adopt(driver: Rc<Driver>, handoff: Box<Handoff>) {
    // SAFETY: the hand-off transferred ownership of this open socket.
    let stream = unsafe { TcpStream::from_raw_fd(handoff.fd.into_raw_fd()) };
    open(
        driver,
        stream,
        handoff.hello,
        handoff.pending,
        handoff.ticket,
    )
    .await;
}

/// Opens the connection in the core (its place here is reserved) and
/// serves it until it ends.
async fn open(
    driver: Rc<Driver>,
    stream: TcpStream,
    hello: Hello,
    pending: Vec<u8>,
    ticket: Ticket,
) {
    // The socket's place (router-wide and per source) goes with it.
    let _ticket = ticket;
    let peer = stream.peer_addr().ok();
    let opened = driver.with_core(|core, now| core.open(hello, peer, now));
    let id = match opened {
        Ok(id) => id,
        Err(close) => {
            let code = close.code.unwrap_or(fb::ErrorCode::RouterFull);
            return refuse(&driver, stream, code, &close.text).await;
        }
    };
    driver.sockets.set(driver.sockets.get() + 1);
    if !pending.is_empty() {
        driver.with_core(|core, now| core.receive(id, &pending, now));
    }
    serve(&driver, id, stream).await;
    driver.unregister(id);
    driver.with_core(|core, now| core.socket_released(id, now));
    driver.sockets.set(driver.sockets.get() - 1);
    driver.sockets_changed.notify_all();
}

/// Refuses a socket that was not admitted: an Error frame if the socket
/// takes it at once, and a close, without waiting for the node (a flood of
/// them must not pile up lingering tasks).
async fn refuse_now(driver: Rc<Driver>, mut stream: TcpStream, text: &str) {
    let frame = driver.with_core(|core, _| core.refusal(fb::ErrorCode::RouterFull, text));
    let _ = or(
        async {
            let _ = stream.write_all(&frame).await;
        },
        glommio::timer::sleep(REFUSE_NOW_WRITE),
    )
    .await;
}

/// Sends an Error frame on a connection that never became a node
/// connection, and closes it.
async fn refuse(driver: &Driver, mut stream: TcpStream, code: fb::ErrorCode, text: &str) {
    let frame = driver.with_core(|core, _| core.refusal(code, text));
    let goodbye = async {
        if stream.write_all(&frame).await.is_ok() {
            let _ = stream.shutdown(std::net::Shutdown::Write).await;
            let mut sink = vec![0u8; LINGER_READ_BYTES];
            while let Ok(1..) = stream.read(&mut sink).await {}
        }
    };
    or(goodbye, glommio::timer::sleep(CLOSE_LINGER)).await;
}

/// What one turn of serving a connection found.
enum Turn {
    /// Bytes were read and handled: let others run, then go on.
    Read,
    /// The core changed the connection's state.
    Changed,
    /// The socket ended.
    Lost(Lost),
}

/// Moves the connection's bytes until the core says to stop, then does
/// what it says with the socket.
async fn serve(driver: &Rc<Driver>, id: ConnId, mut stream: TcpStream) {
    loop {
        let action = driver.core().socket_action(id);
        match action {
            SocketAction::Serve => {}
            SocketAction::Flush => return flush_and_linger(driver, id, stream).await,
            SocketAction::Drop => {
                // A suspended connection: only its Error frame, if any.
                let _ = or(write_all_writable(driver, id, &mut stream), async {
                    glommio::timer::sleep(CLOSE_LINGER).await;
                    Ok(())
                })
                .await;
                shutdown_write(&stream);
                return;
            }
        }
        match poll_fn(|cx| poll_turn(driver, id, &mut stream, cx)).await {
            // Let the other connections run before reading again: at a
            // steady rate each read then finds more (fewer, larger reads
            // and writes: 38,400 -> 36,300 of each in 5 s at 100k msg/s).
            Turn::Read => glommio::executor().yield_now().await,
            Turn::Changed => {}
            Turn::Lost(lost) => driver.with_core(|core, now| core.socket_lost(id, lost, now)),
        }
    }
}

/// One turn: write what the core has for the socket, then read if the
/// core may take more. The core is borrowed only inside each step, never
/// across a wait, and the read buffer only while a read completes.
fn poll_turn(
    driver: &Rc<Driver>,
    id: ConnId,
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
) -> Poll<Turn> {
    // Writes (until done or the socket is full).
    match poll_write_out(driver, id, stream, cx) {
        Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::WriteZero => {
            return Poll::Ready(Turn::Lost(Lost::Failed("the socket took no bytes".into())));
        }
        Poll::Ready(Err(error)) => {
            return Poll::Ready(Turn::Lost(Lost::Failed(format!("write failed: {error}"))));
        }
        Poll::Ready(Ok(())) | Poll::Pending => {}
    }
    if driver.core().socket_action(id) != SocketAction::Serve {
        return Poll::Ready(Turn::Changed);
    }
    driver.register(id, cx.waker());
    if !driver.core().may_read(id) {
        // Woken when the core lets it read again (its budget came back)
        // or when a flush made room.
        driver.room.register(cx.waker());
        return Poll::Pending;
    }
    if driver.core().has_input(id) {
        // Frames kept when its budget ran out come before new bytes.
        driver.with_core(|core, now| core.receive(id, &[], now));
        return Poll::Ready(Turn::Read);
    }
    let mut buffer = driver.take_read_buffer();
    let read = Pin::new(&mut *stream).poll_read(cx, &mut buffer);
    let turn = match read {
        Poll::Ready(Ok(0)) => Poll::Ready(Turn::Lost(Lost::Closed)),
        Poll::Ready(Ok(n)) => {
            driver.with_core(|core, now| core.receive(id, &buffer[..n], now));
            Poll::Ready(Turn::Read)
        }
        Poll::Ready(Err(error)) => {
            Poll::Ready(Turn::Lost(Lost::Failed(format!("read failed: {error}"))))
        }
        Poll::Pending => Poll::Pending,
    };
    driver.give_read_buffer(buffer);
    turn
}

/// Writes everything the core has for the socket, waiting while it is full.
async fn write_all_writable(
    driver: &Rc<Driver>,
    id: ConnId,
    stream: &mut TcpStream,
) -> io::Result<()> {
    poll_fn(|cx| poll_write_out(driver, id, stream, cx)).await
}

/// Writes what the core has for the socket: `Ready(Ok)` once nothing is
/// left, `Pending` while the socket is full, an error if it fails (a socket
/// that takes no bytes: `WriteZero`).
fn poll_write_out(
    driver: &Rc<Driver>,
    id: ConnId,
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let written = {
            let core = driver.core();
            let bytes = core.writable(id);
            if bytes.is_empty() {
                return Poll::Ready(Ok(()));
            }
            Pin::new(&mut *stream).poll_write(cx, bytes)
        };
        match written {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => driver.with_core(|core, now| core.wrote(id, n, now)),
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// A closing connection: writes what is left (the stream, then the Error
/// frame), shuts the write side, then reads until the node closes (so our
/// close cannot reset the connection before the node has read the Error
/// frame), for at most `CLOSE_LINGER` each. A node that said Goodbye and
/// acknowledges may still send Acks meanwhile; they count.
async fn flush_and_linger(driver: &Rc<Driver>, id: ConnId, mut stream: TcpStream) {
    let flushed = or(
        async { write_all_writable(driver, id, &mut stream).await.is_ok() },
        async {
            glommio::timer::sleep(CLOSE_LINGER).await;
            false
        },
    )
    .await;
    shutdown_write(&stream);
    if !flushed {
        return;
    }
    let linger = async {
        let mut sink = vec![0u8; LINGER_READ_BYTES];
        while let Ok(n @ 1..) = stream.read(&mut sink).await {
            driver.with_core(|core, now| core.receive(id, &sink[..n], now));
        }
    };
    or(linger, glommio::timer::sleep(CLOSE_LINGER)).await;
}

fn shutdown_write(stream: &TcpStream) {
    // SAFETY: `stream` owns the open socket. A failure (the peer already
    // reset the connection) leaves nothing to do.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR);
    }
}
