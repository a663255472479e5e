//! The node SDK for imrouter, on tokio.
//!
//! An IM server (a *node*) connects to a router, or to every router of a
//! cluster through any one of them, tells it which users it hosts, and
//! hands it messages for users elsewhere. This crate does the protocol:
//! framing, the handshake, Pings, stream Acks and resumes, the slot map,
//! sending each request to the router that owns it, resending what a
//! failed router never answered, dropping the copies that resending
//! makes, resyncing the node's sessions after a router lost them, and
//! reconnecting with backoff and jitter. The application sees sessions,
//! messages with one final outcome each, and an inbox.
//!
//! ```no_run
//! use imrouter_client::{ConnectOptions, Event, Message, Platform};
//!
//! # async fn example() -> Result<(), imrouter_client::Error> {
//! let (client, mut inbox) = ConnectOptions::new("gateway-1")
//!     .seed("127.0.0.1:7800")
//!     .connect()
//!     .await?;
//! client.open("alice", "phone", Platform::Mobile).await?;
//! let outcome = client
//!     .route(Message::new("alice", "phone", "bob", b"hello".to_vec()))
//!     .await?;
//! println!("to bob: {:?}", outcome.verdict);
//! while let Some(event) = inbox.recv().await {
//!     if let Event::Deliver(delivery) = event {
//!         println!("for {}: {:?}", delivery.to_user, delivery.payload);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! [`ConnectOptions::connect`] starts one task (on the current tokio
//! runtime) that owns the node's state, `imrouter::client::ClusterNode`,
//! the sans-IO node core that the router's own tests and simulation
//! drive, and a reader and a writer task per router connection. A
//! [`Client`] (cheap to clone) sends it commands over a bounded channel;
//! what the routers send for the application arrives in the [`Inbox`].
//!
//! # Bounds
//!
//! - Commands: [`ConnectOptions::command_capacity`] queued; a caller waits
//!   for room (tokio's bounded channel).
//! - Messages without an outcome: [`ConnectOptions::pending_max`]; more
//!   wait, in the order they came, until outcomes make room.
//! - The inbox: [`ConnectOptions::inbox_capacity`] events. When the
//!   application does not read it, the node's task waits for room: it
//!   stops reading its routers (TCP pushes back; a router holds the
//!   node's messages up to its `--out-buffer-bytes`), and nothing is
//!   dropped by this crate (`tests/router.rs`: 3,000 messages to an inbox
//!   of 8 not read for 2 s, all delivered once). While it waits it does
//!   not answer Pings either: a stall longer than the router's node
//!   timeout (three heartbeats, 3 s by default) makes the router suspend
//!   the node and hold its messages for its reconnect grace (5 s); the
//!   node resumes when the application reads again. A stall longer than
//!   both loses the node's sessions at that router (its users' messages
//!   are then Offline) until the node resyncs them.

#![warn(missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use imrouter::client::cluster::{LinkId, RouteError};
use imrouter::client::{ClusterConfig, ClusterNode, Incoming, NodeConfig, Polled};
use imrouter::time::{Clock, Time};
use imrouter::wire::{FanoutFrame, PublishFrame, RouteFrame, ROUTE_FLAG_CARBON};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use imrouter::client::Outcome;
pub use imrouter::wire::fb::{NodeEventKind, Platform, Reason, Verdict};

/// How a node connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    name: String,
    token: Option<String>,
    seeds: Vec<String>,
    incarnation: Option<u64>,
    connect_timeout: Duration,
    command_capacity: usize,
    inbox_capacity: usize,
    pending_max: usize,
    unknown_retries: u32,
    reconnect: Option<(Duration, Duration)>,
}

impl ConnectOptions {
    /// A node called `name` (unique in the cluster).
    pub fn new(name: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            name: name.into(),
            token: None,
            seeds: Vec::new(),
            incarnation: None,
            connect_timeout: Duration::from_secs(10),
            command_capacity: 1024,
            inbox_capacity: 4096,
            pending_max: imrouter::limits::NODE_PENDING_ROUTES_DEFAULT,
            unknown_retries: 8,
            reconnect: None,
        }
    }

    /// How reconnects back off: the first after about `min`, each next
    /// one after twice as long, at most `max`, with jitter (by default
    /// 50 ms to 2 s). The stream is resumed when the router still has it
    /// (stream Acks are always on: they are what makes a reconnect lose
    /// nothing).
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> ConnectOptions {
        self.reconnect = Some((min, max.max(min)));
        self
    }

    /// The router's `--auth-token`.
    pub fn token(mut self, token: impl Into<String>) -> ConnectOptions {
        self.token = Some(token.into());
        self
    }

    /// A router to learn the cluster from (`host:port`); give several
    /// (or all), so that the node finds the cluster when some are down.
    pub fn seed(mut self, addr: impl Into<String>) -> ConnectOptions {
        self.seeds.push(addr.into());
        self
    }

    /// This process's incarnation (default: random). A restarted process
    /// must use a new one; the routers then drop the old one's sessions.
    pub fn incarnation(mut self, incarnation: u64) -> ConnectOptions {
        self.incarnation = Some(incarnation);
        self
    }

    /// How long [`ConnectOptions::connect`] waits for a first router.
    pub fn connect_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Commands queued from [`Client`]s to the node's task (default 1024).
    pub fn command_capacity(mut self, capacity: usize) -> ConnectOptions {
        self.command_capacity = capacity.max(1);
        self
    }

    /// Events the inbox holds before the node stops reading its routers
    /// (default 4096).
    pub fn inbox_capacity(mut self, capacity: usize) -> ConnectOptions {
        self.inbox_capacity = capacity.max(1);
        self
    }

    /// Messages waiting for their outcome at most (more wait to be sent).
    pub fn pending_max(mut self, max: usize) -> ConnectOptions {
        self.pending_max = max.max(1);
        self
    }

    /// Times an `Unknown` verdict is retried (with growing delays, from
    /// 100 ms) before it is the message's outcome.
    pub fn unknown_retries(mut self, retries: u32) -> ConnectOptions {
        self.unknown_retries = retries;
        self
    }

    /// Connects: starts the node's task on the current tokio runtime and
    /// waits until a router has welcomed it. The task runs until every
    /// [`Client`] is dropped or [`Client::close`] is called.
    pub async fn connect(self) -> Result<(Client, Inbox), Error> {
        if self.seeds.is_empty() {
            return Err(Error::NoSeed);
        }
        let incarnation = self.incarnation.unwrap_or_else(random_incarnation);
        let mut node = NodeConfig::new(self.name.clone(), incarnation);
        node.auth_token = self.token.clone();
        let mut config = ClusterConfig::new(node, self.seeds.clone());
        config.pending_max = self.pending_max;
        config.unknown_retries = self.unknown_retries;
        if let Some((min, max)) = self.reconnect {
            config.reconnect_min = min;
            config.reconnect_max = max;
        }
        let (commands, command_rx) = mpsc::channel(self.command_capacity);
        let (inbox_tx, inbox_rx) = mpsc::channel(self.inbox_capacity);
        let (live_tx, mut live_rx) = watch::channel(Live::Connecting);
        let driver = Driver::new(ClusterNode::new(config), command_rx, inbox_tx, live_tx);
        tokio::spawn(driver.run());
        let welcomed = async {
            loop {
                match &*live_rx.borrow_and_update() {
                    Live::Up => return Ok(()),
                    Live::Refused(text) => return Err(Error::Refused(text.clone())),
                    Live::Connecting => {}
                }
                if live_rx.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, welcomed).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(Error::Timeout),
        }
        let client = Client {
            commands,
            next_id: Arc::new(AtomicU64::new(1)),
        };
        Ok((client, Inbox { rx: inbox_rx }))
    }
}

fn random_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    mixed | 1
}

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// [`ConnectOptions::connect`] was given no router.
    NoSeed,
    /// No router welcomed the node within the connect timeout.
    Timeout,
    /// A router refused the node (its Error frame's text).
    Refused(String),
    /// The node's task has stopped.
    Closed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSeed => write!(f, "no router to connect to"),
            Error::Timeout => write!(f, "no router welcomed the node in time"),
            Error::Refused(text) => write!(f, "refused by the router: {text}"),
            Error::Closed => write!(f, "the node's connection task has stopped"),
        }
    }
}

impl std::error::Error for Error {}

/// A message for one user (all of its devices, or one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender (a user of this node) and its device.
    pub from_user: String,
    /// The sender's device.
    pub from_device: String,
    /// The recipient.
    pub to_user: String,
    /// One device of `to_user` only.
    pub to_device: Option<String>,
    /// The message itself, opaque to the router.
    pub payload: Vec<u8>,
    /// A carbon: a copy for the sender's own other devices.
    pub carbon: bool,
}

impl Message {
    /// A message from `from_user` on `from_device` to every device of
    /// `to_user`.
    pub fn new(
        from_user: impl Into<String>,
        from_device: impl Into<String>,
        to_user: impl Into<String>,
        payload: Vec<u8>,
    ) -> Message {
        Message {
            from_user: from_user.into(),
            from_device: from_device.into(),
            to_user: to_user.into(),
            to_device: None,
            payload,
            carbon: false,
        }
    }

    /// For `device` of the recipient only.
    pub fn to_device(mut self, device: impl Into<String>) -> Message {
        self.to_device = Some(device.into());
        self
    }
}

/// A handle on the node: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| Error::Closed)
    }

    fn message_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a session: `user`'s `device` is connected to this node. The
    /// node keeps it (and puts it back wherever a router lost it) until
    /// [`Client::close`].
    pub async fn open(&self, user: &str, device: &str, platform: Platform) -> Result<(), Error> {
        self.send(Command::Open {
            user: user.to_owned(),
            device: device.to_owned(),
            platform,
        })
        .await
    }

    /// Closes a session.
    pub async fn close_session(&self, user: &str, device: &str) -> Result<(), Error> {
        self.send(Command::Close {
            user: user.to_owned(),
            device: device.to_owned(),
        })
        .await
    }

    /// Sends a message and waits for its final outcome: `Routed` (handed
    /// to every node holding a session of the recipient), `Offline` (no
    /// session: keep it for later), `Busy`, `Rejected`, or `Unknown` after
    /// the retries (the cluster could not tell: keep it as offline).
    /// Sent again when a router fails before answering; the recipient's
    /// node drops the copy, so each message is delivered once.
    pub async fn route(&self, message: Message) -> Result<Outcome, Error> {
        let (reply, outcome) = oneshot::channel();
        let id = self.message_id();
        self.send(Command::Route { id, message, reply }).await?;
        outcome.await.map_err(|_| Error::Closed)
    }

    /// Sends one message to several users; one outcome for all (`Routed`,
    /// reason `Partial` when some have no session: `offline_users`).
    pub async fn fanout(
        &self,
        from_user: &str,
        from_device: &str,
        to_users: Vec<String>,
        payload: Vec<u8>,
    ) -> Result<Outcome, Error> {
        let (reply, outcome) = oneshot::channel();
        let id = self.message_id();
        self.send(Command::Fanout {
            id,
            from_user: from_user.to_owned(),
            from_device: from_device.to_owned(),
            to_users,
            payload,
            reply,
        })
        .await?;
        outcome.await.map_err(|_| Error::Closed)
    }

    /// Where `user`'s sessions are: (node, device, platform) each. Waits
    /// at most `timeout` (a router that failed meanwhile may never answer).
    pub async fn locate(&self, user: &str, timeout: Duration) -> Result<Vec<Session>, Error> {
        let (reply, answer) = oneshot::channel();
        let id = self.message_id();
        self.send(Command::Locate {
            id,
            user: user.to_owned(),
            reply,
        })
        .await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(sessions)) => Ok(sessions),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The address of the router that owns `user`'s slot in the newest map
    /// the node has (where its messages go now), if the node has a map.
    pub async fn owner_of(&self, user: &str) -> Result<Option<String>, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Owner {
            user: user.to_owned(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// Receives what is published to `topic` (kept across reconnects).
    pub async fn subscribe(&self, topic: &str) -> Result<(), Error> {
        self.send(Command::Subscribe(topic.to_owned(), true)).await
    }

    /// Stops receiving what is published to `topic`.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), Error> {
        self.send(Command::Subscribe(topic.to_owned(), false)).await
    }

    /// Publishes to a topic's subscribers (at most once).
    pub async fn publish(
        &self,
        topic: &str,
        from_user: &str,
        from_device: &str,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        let id = self.message_id();
        self.send(Command::Publish {
            id,
            topic: topic.to_owned(),
            from_user: from_user.to_owned(),
            from_device: from_device.to_owned(),
            payload,
        })
        .await
    }

    /// Sends `payload` to every node of the cluster (at most once).
    pub async fn broadcast(&self, payload: Vec<u8>) -> Result<(), Error> {
        self.send(Command::Broadcast(payload)).await
    }

    /// Waits until everything asked so far has been handed to the
    /// routers' sockets (or waits for a router to send it to).
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Flush(reply)).await?;
        done.await.map_err(|_| Error::Closed)
    }

    /// Says Goodbye to the routers (they drop this node's sessions at
    /// once) and stops the node's task. Messages still waiting for an
    /// outcome get none ([`Error::Closed`]).
    pub async fn close(&self) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Close_(reply)).await?;
        done.await.map_err(|_| Error::Closed)
    }
}

/// What the routers sent for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message for a user of this node (each once).
    Deliver(Delivery),
    /// A Fanout's copy: the recipients of this node (each once) and the
    /// devices of each.
    FanoutDeliver {
        /// The Fanout's id (at the sending node).
        message_id: u64,
        /// The sender and its device.
        from_user: String,
        /// The sender's device.
        from_device: String,
        /// (user, its devices on this node), each user once.
        recipients: Vec<(String, Vec<String>)>,
        /// The message.
        payload: Vec<u8>,
    },
    /// A session of this node was ended by the router (another login of
    /// the user, by the login policy).
    Kick {
        /// The user whose session ended.
        user: String,
        /// Its device.
        device: String,
    },
    /// The cluster's membership changed (each event once, in order).
    NodeEvent {
        /// The cluster-wide sequence number (increasing).
        seq: u64,
        /// Joined, Left or SeniorChanged.
        kind: NodeEventKind,
        /// The node it is about.
        node: String,
        /// That node's process.
        incarnation: u64,
        /// The senior node after the event.
        senior: String,
    },
    /// A message published to a subscribed topic.
    Publish {
        /// The topic.
        topic: String,
        /// The publisher's message id.
        message_id: u64,
        /// The publishing user.
        from_user: String,
        /// The publishing node.
        from_node: String,
        /// The message.
        payload: Vec<u8>,
    },
    /// A message sent to every node.
    Broadcast {
        /// The node that sent it.
        from_node: String,
        /// The message.
        payload: Vec<u8>,
    },
    /// The connection to a router came up (a Welcome) or went down; the
    /// node reconnects by itself and nothing is lost meanwhile: for
    /// monitoring.
    Router {
        /// The router's address.
        addr: String,
        /// Up (true) or down.
        up: bool,
    },
}

/// A session [`Client::locate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The node holding it.
    pub node: String,
    /// The device.
    pub device: String,
    /// The device's platform.
    pub platform: Platform,
}

/// One message for one user of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message's id at the sending node.
    pub message_id: u64,
    /// The sending node's incarnation.
    pub origin: u64,
    /// The sender.
    pub from_user: String,
    /// The sender's device.
    pub from_device: String,
    /// The recipient, a user of this node.
    pub to_user: String,
    /// The recipient's devices on this node it is for.
    pub devices: Vec<String>,
    /// The message.
    pub payload: Vec<u8>,
    /// A carbon (a copy of the user's own message, for its other devices).
    pub carbon: bool,
}

/// What the routers send for the application, in order. Read it: when it
/// is full the node stops reading its routers (see the crate docs).
pub struct Inbox {
    rx: mpsc::Receiver<Event>,
}

impl Inbox {
    /// The next event; `None` once the node's task has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is there.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures_core::Stream for Inbox {
    type Item = Event;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

// ----- The node's task --------------------------------------------------------

enum Command {
    Open {
        user: String,
        device: String,
        platform: Platform,
    },
    Close {
        user: String,
        device: String,
    },
    Route {
        id: u64,
        message: Message,
        reply: oneshot::Sender<Outcome>,
    },
    Fanout {
        id: u64,
        from_user: String,
        from_device: String,
        to_users: Vec<String>,
        payload: Vec<u8>,
        reply: oneshot::Sender<Outcome>,
    },
    Subscribe(String, bool),
    Publish {
        id: u64,
        topic: String,
        from_user: String,
        from_device: String,
        payload: Vec<u8>,
    },
    Broadcast(Vec<u8>),
    Locate {
        id: u64,
        user: String,
        reply: oneshot::Sender<Vec<Session>>,
    },
    Owner {
        user: String,
        reply: oneshot::Sender<Option<String>>,
    },
    Flush(oneshot::Sender<()>),
    #[allow(non_camel_case_types)]
    Close_(oneshot::Sender<()>),
}

/// A message waiting for room among those without an outcome.
enum Waiting {
    Route(u64, Message),
    Fanout(u64, String, String, Vec<String>, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Live {
    Connecting,
    Up,
    Refused(String),
}

/// What the socket tasks report; `generation` tells a link's sockets
/// apart (a report about a closed one is ignored).
enum Io {
    Connected(LinkId, u64, TcpStream),
    ConnectFailed(LinkId, u64),
    Data(LinkId, u64, Vec<u8>),
    Written(LinkId, u64),
    Ended(LinkId, u64),
}

struct Socket {
    generation: u64,
    writer: mpsc::Sender<Vec<u8>>,
    writing: bool,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Socket {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Bytes asked of a socket per read.
const READ_BYTES: usize = 64 * 1024;
/// How often silent routers are looked for.
const SILENCE_CHECK: Duration = Duration::from_millis(250);

struct Driver {
    node: ClusterNode,
    clock: Clock,
    commands: mpsc::Receiver<Command>,
    inbox: mpsc::Sender<Event>,
    live: watch::Sender<Live>,
    io_tx: mpsc::Sender<Io>,
    io_rx: mpsc::Receiver<Io>,
    sockets: HashMap<LinkId, Socket>,
    /// Connection attempts in progress: link -> generation.
    connecting: HashMap<LinkId, u64>,
    next_generation: u64,
    replies: HashMap<u64, oneshot::Sender<Outcome>>,
    locates: HashMap<u64, oneshot::Sender<Vec<Session>>>,
    waiting: VecDeque<Waiting>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Driver {
    fn new(
        node: ClusterNode,
        commands: mpsc::Receiver<Command>,
        inbox: mpsc::Sender<Event>,
        live: watch::Sender<Live>,
    ) -> Driver {
        let (io_tx, io_rx) = mpsc::channel(256);
        Driver {
            node,
            clock: Clock::new(),
            commands,
            inbox,
            live,
            io_tx,
            io_rx,
            sockets: HashMap::new(),
            connecting: HashMap::new(),
            next_generation: 1,
            replies: HashMap::new(),
            locates: HashMap::new(),
            waiting: VecDeque::new(),
            flushes: Vec::new(),
        }
    }

    async fn run(mut self) {
        let mut silence = tokio::time::interval(SILENCE_CHECK);
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = self.clock.now();
            self.connect_due(now);
            self.write();
            let wake = self.node.poll_timeout();
            let sleep = if wake == Time::NEVER {
                Duration::from_secs(3600)
            } else {
                self.clock.until(wake)
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => break, // every Client is gone
                    Some(Command::Close_(done)) => {
                        self.goodbye().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(command) => self.command(command),
                },
                Some(io) = self.io_rx.recv() => {
                    if !self.io(io).await {
                        break; // the application dropped its inbox
                    }
                }
                _ = tokio::time::sleep(sleep) => {
                    self.node.handle_timeout(self.clock.now());
                }
                _ = silence.tick() => self.check_silence(),
            }
            self.outcomes();
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.clock.now();
        match command {
            Command::Open {
                user,
                device,
                platform,
            } => {
                self.node.open(&user, &device, platform);
            }
            Command::Close { user, device } => self.node.close(&user, &device),
            Command::Route { id, message, reply } => {
                self.replies.insert(id, reply);
                self.waiting.push_back(Waiting::Route(id, message));
            }
            Command::Fanout {
                id,
                from_user,
                from_device,
                to_users,
                payload,
                reply,
            } => {
                self.replies.insert(id, reply);
                self.waiting.push_back(Waiting::Fanout(
                    id,
                    from_user,
                    from_device,
                    to_users,
                    payload,
                ));
            }
            Command::Subscribe(topic, true) => self.node.subscribe(&topic),
            Command::Subscribe(topic, false) => self.node.unsubscribe(&topic),
            Command::Publish {
                id,
                topic,
                from_user,
                from_device,
                payload,
            } => {
                // (The router fills in `from_node`.)
                self.node.publish(&PublishFrame {
                    topic: &topic,
                    message_id: id,
                    from_user: &from_user,
                    from_device: &from_device,
                    from_node: "",
                    flags: 0,
                    payload: &payload,
                });
            }
            Command::Broadcast(payload) => {
                self.node.broadcast(&payload);
            }
            Command::Locate { id, user, reply } => {
                // (Answers to callers that gave up are dropped.)
                self.locates.retain(|_, reply| !reply.is_closed());
                self.locates.insert(id, reply);
                self.node.locate(id, &user);
            }
            Command::Owner { user, reply } => {
                let slot = imrouter::placement::slot_for_user(user.as_bytes());
                let owner = self.node.map().map(|map| map.owner(slot).0.addr.clone());
                let _ = reply.send(owner);
            }
            Command::Flush(done) => self.flushes.push(done),
            Command::Close_(_) => unreachable!("handled by run"),
        }
        self.send_waiting(now);
    }

    /// Sends what waits for room, in order.
    fn send_waiting(&mut self, now: Time) {
        while let Some(next) = self.waiting.pop_front() {
            let result = match &next {
                Waiting::Route(id, message) => {
                    let frame = RouteFrame {
                        message_id: *id,
                        from_user: &message.from_user,
                        from_device: &message.from_device,
                        to_user: &message.to_user,
                        to_device: message.to_device.as_deref(),
                        flags: if message.carbon { ROUTE_FLAG_CARBON } else { 0 },
                        payload: &message.payload,
                    };
                    self.node.route(&frame, now)
                }
                Waiting::Fanout(id, from_user, from_device, to_users, payload) => {
                    let to: Vec<&str> = to_users.iter().map(String::as_str).collect();
                    let frame = FanoutFrame {
                        message_id: *id,
                        from_user,
                        from_device,
                        to_users: &to,
                        flags: 0,
                        payload,
                    };
                    self.node.fanout(&frame, now)
                }
            };
            match result {
                Ok(()) => {}
                Err(RouteError::Full) => {
                    self.waiting.push_front(next);
                    return;
                }
                Err(RouteError::Duplicate) => {
                    // Ids come from one counter: cannot happen; the
                    // caller's future ends without an outcome.
                    let id = match next {
                        Waiting::Route(id, _) | Waiting::Fanout(id, ..) => id,
                    };
                    self.replies.remove(&id);
                }
            }
        }
    }

    fn outcomes(&mut self) {
        let mut any = false;
        while let Some(outcome) = self.node.poll_outcome() {
            any = true;
            if let Some(reply) = self.replies.remove(&outcome.message_id) {
                let _ = reply.send(outcome);
            }
        }
        if any {
            self.send_waiting(self.clock.now());
        }
    }

    // ----- Sockets ------------------------------------------------------------

    fn connect_due(&mut self, now: Time) {
        for (link, addr) in self.node.connect_due(now) {
            let generation = self.next_generation;
            self.next_generation += 1;
            self.connecting.insert(link, generation);
            let io = self.io_tx.clone();
            tokio::spawn(async move {
                let attempt =
                    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await;
                let report = match attempt {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        Io::Connected(link, generation, stream)
                    }
                    _ => Io::ConnectFailed(link, generation),
                };
                let _ = io.send(report).await;
            });
        }
    }

    /// Hands each idle writer what its link has to send.
    fn write(&mut self) {
        // Sockets of links the node dropped go.
        let node = &mut self.node;
        self.sockets
            .retain(|&link, _| node.link_mut(link).is_some());
        for (&link, socket) in self.sockets.iter_mut() {
            if socket.writing {
                continue;
            }
            let Some(state) = self.node.link_mut(link) else {
                continue;
            };
            let bytes = state.core.transmit();
            if bytes.is_empty() {
                continue;
            }
            let chunk = bytes.to_vec();
            let len = chunk.len();
            if socket.writer.try_send(chunk).is_ok() {
                state.core.transmitted(len);
                socket.writing = true;
            }
        }
        if !self.flushes.is_empty() && self.sockets.values().all(|socket| !socket.writing) {
            let all_sent = self
                .node
                .links()
                .all(|(_, link)| !link.is_live() || link.core.transmit().is_empty());
            if all_sent {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }

    fn open_socket(&mut self, link: LinkId, generation: u64, stream: TcpStream) {
        let (mut read, mut write) = stream.into_split();
        let (writer, mut chunks) = mpsc::channel::<Vec<u8>>(1);
        let io = self.io_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0; READ_BYTES];
            loop {
                match read.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io
                            .send(Io::Data(link, generation, buffer[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = io.send(Io::Ended(link, generation)).await;
        });
        let io = self.io_tx.clone();
        let writer_task = tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                if write.write_all(&chunk).await.is_err() {
                    let _ = io.send(Io::Ended(link, generation)).await;
                    return;
                }
                if io.send(Io::Written(link, generation)).await.is_err() {
                    return;
                }
            }
        });
        self.sockets.insert(
            link,
            Socket {
                generation,
                writer,
                writing: false,
                tasks: [reader, writer_task],
            },
        );
    }

    fn socket_ended(&mut self, link: LinkId) {
        if self.sockets.remove(&link).is_some() {
            let was_live = self.node.link_mut(link).is_some_and(|l| l.is_live());
            self.node.disconnected(link, self.clock.now());
            if was_live {
                let addr = self.node.link_mut(link).map(|l| l.addr.clone());
                // (An inbox full at this moment misses it: monitoring only.)
                let _ = self.inbox.try_send(Event::Router {
                    addr: addr.unwrap_or_default(),
                    up: false,
                });
            }
        }
    }

    fn check_silence(&mut self) {
        let now = self.clock.now();
        let silent: Vec<LinkId> = self
            .sockets
            .keys()
            .copied()
            .filter(|&link| {
                self.node
                    .link_mut(link)
                    .is_some_and(|link| link.core.router_silent(now))
            })
            .collect();
        for link in silent {
            self.socket_ended(link);
        }
    }

    /// Handles a socket task's report; false when the inbox is gone.
    async fn io(&mut self, io: Io) -> bool {
        let now = self.clock.now();
        match io {
            Io::Connected(link, generation, stream) => {
                if self.connecting.get(&link) != Some(&generation) {
                    return true;
                }
                self.connecting.remove(&link);
                if self.node.link_mut(link).is_none() {
                    return true;
                }
                self.node.connected(link, now);
                self.open_socket(link, generation, stream);
            }
            Io::ConnectFailed(link, generation) => {
                if self.connecting.get(&link) == Some(&generation) {
                    self.connecting.remove(&link);
                    if self.node.link_mut(link).is_some() {
                        self.node.connect_failed(link, now);
                    }
                }
            }
            Io::Written(link, generation) => {
                if let Some(socket) = self.sockets.get_mut(&link) {
                    if socket.generation == generation {
                        socket.writing = false;
                    }
                }
            }
            Io::Ended(link, generation) => {
                if self
                    .sockets
                    .get(&link)
                    .is_some_and(|s| s.generation == generation)
                {
                    self.socket_ended(link);
                }
            }
            Io::Data(link, generation, bytes) => {
                if self
                    .sockets
                    .get(&link)
                    .is_none_or(|s| s.generation != generation)
                {
                    return true; // from a socket since closed
                }
                let Some(state) = self.node.link_mut(link) else {
                    return true;
                };
                let was_live = state.is_live();
                state.core.receive(&bytes, now);
                let mut events = Vec::new();
                let mut failed = None;
                while let Some(polled) = self.node.poll_link(link, now) {
                    match polled {
                        Err(error) => {
                            failed = Some(error.to_string());
                            break;
                        }
                        Ok(Polled::Frame(Incoming::Located(located))) => {
                            if let Some(reply) = self.locates.remove(&located.query_id()) {
                                let sessions = located
                                    .sessions()
                                    .into_iter()
                                    .flatten()
                                    .map(|s| Session {
                                        node: s.node().unwrap_or("").to_owned(),
                                        device: s.device().unwrap_or("").to_owned(),
                                        platform: s.platform(),
                                    })
                                    .collect();
                                let _ = reply.send(sessions);
                            }
                        }
                        Ok(polled) => match event(polled) {
                            Some(Ok(event)) => events.push(event),
                            Some(Err(refusal)) => {
                                failed = Some(refusal);
                                break;
                            }
                            None => {}
                        },
                    }
                }
                let welcomed = self.node.link_mut(link).is_some_and(|l| l.is_live());
                if welcomed && *self.live.borrow() != Live::Up {
                    let _ = self.live.send(Live::Up);
                }
                if welcomed && !was_live {
                    let addr = self.node.link_mut(link).map(|l| l.addr.clone());
                    events.insert(
                        0,
                        Event::Router {
                            addr: addr.unwrap_or_default(),
                            up: true,
                        },
                    );
                }
                if let Some(text) = failed {
                    if *self.live.borrow() == Live::Connecting {
                        let _ = self.live.send(Live::Refused(text));
                    }
                    self.socket_ended(link);
                }
                for event in events {
                    if self.inbox.send(event).await.is_err() {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Goodbye on every live link, written before the task ends.
    async fn goodbye(&mut self) {
        let links: Vec<LinkId> = self.sockets.keys().copied().collect();
        for link in links {
            if let Some(state) = self.node.link_mut(link) {
                if state.is_live() {
                    state.core.goodbye("closing");
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            self.write();
            let pending = self.sockets.iter().any(|(&link, socket)| {
                socket.writing
                    || self
                        .node
                        .link_mut(link)
                        .is_some_and(|l| !l.core.transmit().is_empty())
            });
            if !pending {
                break;
            }
            match tokio::time::timeout_at(deadline, self.io_rx.recv()).await {
                Ok(Some(Io::Written(link, generation))) => {
                    if let Some(socket) = self.sockets.get_mut(&link) {
                        if socket.generation == generation {
                            socket.writing = false;
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// The application's part of what a link received (None: nothing for
/// it), or a refusal (an Error frame).
fn event(polled: Polled<'_>) -> Option<Result<Event, String>> {
    let owned = |s: Option<&str>| s.unwrap_or("").to_owned();
    let event = match polled {
        Polled::Handled => return None,
        Polled::FanoutDeliver(deliver, fresh) => {
            let mut devices = deliver.devices().into_iter().flatten();
            let counts = deliver.recipient_device_counts();
            let mut recipients = Vec::new();
            for (i, user) in deliver.recipients().into_iter().flatten().enumerate() {
                let count = counts.map_or(0, |c| if i < c.len() { c.get(i) } else { 0 });
                let mine: Vec<String> = (0..count)
                    .filter_map(|_| devices.next().map(str::to_owned))
                    .collect();
                if fresh.get(i).copied().unwrap_or(true) {
                    recipients.push((user.to_owned(), mine));
                }
            }
            Event::FanoutDeliver {
                message_id: deliver.message_id(),
                from_user: owned(deliver.from_user()),
                from_device: owned(deliver.from_device()),
                recipients,
                payload: deliver
                    .payload()
                    .map(|p| p.bytes().to_vec())
                    .unwrap_or_default(),
            }
        }
        Polled::Frame(Incoming::Deliver(deliver)) => Event::Deliver(Delivery {
            message_id: deliver.message_id(),
            origin: deliver.origin(),
            from_user: owned(deliver.from_user()),
            from_device: owned(deliver.from_device()),
            to_user: owned(deliver.to_user()),
            devices: deliver
                .devices()
                .map(|d| d.iter().map(str::to_owned).collect())
                .unwrap_or_default(),
            payload: deliver
                .payload()
                .map(|p| p.bytes().to_vec())
                .unwrap_or_default(),
            carbon: deliver.flags() & ROUTE_FLAG_CARBON != 0,
        }),
        Polled::Frame(Incoming::Kick(kick)) => Event::Kick {
            user: owned(kick.user()),
            device: owned(kick.device()),
        },
        Polled::Frame(Incoming::NodeEvent(e)) => Event::NodeEvent {
            seq: e.seq(),
            kind: e.kind(),
            node: owned(e.node()),
            incarnation: e.incarnation(),
            senior: owned(e.senior()),
        },
        Polled::Frame(Incoming::Publish(p)) => Event::Publish {
            topic: p.topic().to_owned(),
            message_id: p.message_id(),
            from_user: owned(p.from_user()),
            from_node: owned(p.from_node()),
            payload: p.payload().map(|b| b.bytes().to_vec()).unwrap_or_default(),
        },
        Polled::Frame(Incoming::Broadcast(b)) => Event::Broadcast {
            from_node: owned(b.from_node()),
            payload: b.payload().map(|p| p.bytes().to_vec()).unwrap_or_default(),
        },
        Polled::Frame(Incoming::Error { code, text }) => {
            return Some(Err(format!("{code:?}: {text}")));
        }
        Polled::Frame(_) => return None,
    };
    Some(Ok(event))
}
