//! One typed request per frame.
//!
//! A verified [`Frame`] from a node is turned once into a [`Request`], or
//! refused with a [`PeerFault`]: every id length and field check of the
//! protocol is here, and nowhere else (mini-redis's `Command::from_frame`,
//! rustls's `PeerMisbehaved`). The router's handlers match on the value.
//!
//! Two kinds of "no" are kept apart on purpose. A [`PeerFault`] is a
//! protocol error: the node is told with an Error frame and its connection
//! closes. A request whose *content* is refused (a Route to an empty user
//! id, a Fanout over the recipient limit) is a valid request with a
//! `Rejected` verdict: the connection carries on.

use std::fmt;

use super::{fb, Frame, FrameError, RouteFrame, ROUTE_FLAG_CARBON};
use crate::limits::{
    AUTH_TOKEN_BYTES_MAX, DEVICE_ID_BYTES_MAX, NODE_NAME_BYTES_MAX, PROTOCOL_VERSION,
    USER_ID_BYTES_MAX,
};

/// A Route's fields, read in place from the frame.
pub type Message<'a> = RouteFrame<'a>;

/// What a node asks of the router, decoded from one frame.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// A one-to-one message whose ids are in range.
    Route(Message<'a>),
    /// A Route or Fanout whose content is refused: answered `Rejected`.
    Rejected {
        message_id: u64,
        reason: fb::Reason,
    },
    SessionOpen(SessionOpen<'a>),
    SessionClose(SessionClose<'a>),
    /// One batch of a session snapshot, its vectors checked.
    SessionSync(SessionSync<'a>),
    Locate {
        query_id: u64,
        user: &'a str,
    },
    Subscribe {
        topic: &'a str,
        request_id: u64,
    },
    Unsubscribe {
        topic: &'a str,
    },
    Publish(fb::Publish<'a>),
    /// A group message; the recipient count and every id are in range.
    Fanout(fb::Fanout<'a>),
    Broadcast {
        payload: &'a [u8],
    },
    Ping {
        nonce: u64,
    },
    Pong,
    /// The node processed `received` stream bytes.
    Ack {
        received: u64,
    },
    /// The node closes the connection cleanly.
    Goodbye {
        reason: &'a str,
    },
    /// The node reports an error and closes.
    Error {
        code: fb::ErrorCode,
        text: &'a str,
    },
}

/// A SessionOpen whose ids are in range.
#[derive(Debug, Clone, Copy)]
pub struct SessionOpen<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub platform: u8,
    pub seq: u64,
}

/// A SessionClose whose ids are in range.
#[derive(Debug, Clone, Copy)]
pub struct SessionClose<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub seq: u64,
}

/// A SessionSync batch whose parallel vectors agree and whose ids are in
/// range.
#[derive(Debug, Clone, Copy)]
pub struct SessionSync<'a> {
    pub generation: u64,
    pub last: bool,
    /// The map epoch a scoped resync answers (0: none).
    pub epoch: u64,
    sync: fb::SessionSync<'a>,
}

impl<'a> SessionSync<'a> {
    /// The slot ranges (first, last) a scoped resync covers; empty: every
    /// slot. Checked by `parse`: pairs, in range, first <= last.
    pub fn scope(&self) -> Vec<(u16, u16)> {
        let flat = self.sync.scope().map(|v| v.iter().collect::<Vec<u16>>());
        flat.unwrap_or_default()
            .chunks_exact(2)
            .map(|pair| (pair[0], pair[1]))
            .collect()
    }

    /// Sessions in this batch.
    pub fn len(&self) -> usize {
        self.sync.users().map_or(0, |users| users.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Session `i`: (user, device, platform, seq).
    pub fn session(&self, i: usize) -> (&'a str, &'a str, u8, u64) {
        let sync = self.sync;
        let user = sync.users().expect("checked").get(i);
        let device = sync.devices().expect("checked").get(i);
        // `parse` made every non-empty vector as long as `users`; an empty
        // one means "all default".
        let platform = sync
            .platforms()
            .filter(|v| !v.is_empty())
            .map_or(0, |v| v.get(i));
        let seq = sync
            .seqs()
            .filter(|v| !v.is_empty())
            .map_or(0, |v| v.get(i));
        (user, device, platform, seq)
    }
}

/// A field the router refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidField {
    /// A user id (or topic id, `what` = "topic") not 1 to 255 bytes.
    Id { what: &'static str, len: usize },
    /// A node name not 1 to 64 bytes.
    NodeName { len: usize },
    /// The vectors of a SessionSync differ in length.
    SyncVectors {
        users: usize,
        devices: usize,
        platforms: usize,
        seqs: usize,
    },
    /// A SessionSync scope that is not pairs of slots (first <= last).
    SyncScope,
    /// An Ack on a connection whose Hello did not set `acks`.
    AckWithoutAcks,
    /// An Ack (or `Hello.received`) of more than the router sent.
    PastEnd { received: u64, sent: u64 },
    /// An Ack below the last one (or a `Hello.received` below it).
    Backwards { received: u64, acked: u64 },
    /// An Ack (or `Hello.received`) that is not on a frame boundary.
    InsideFrame { received: u64 },
}

/// A protocol error by a node: it is told (an Error frame with
/// [`PeerFault::code`] and this value's text) and its connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFault {
    /// The length prefix, the identifier or the flatbuffer is bad.
    Frame(FrameError),
    /// The connection ended `have` bytes into a `need`-byte frame.
    Truncated {
        have: usize,
        need: usize,
    },
    /// The first frame was not a Hello (`None`: none came in time).
    HelloRequired(Option<fb::Body>),
    UnsupportedVersion(u16),
    Unauthorized,
    NoSuchShard {
        wanted: i16,
        shard_count: usize,
    },
    /// A frame a node may not send, or a second Hello.
    UnexpectedFrame(fb::Body),
    InvalidField(InvalidField),
}

impl PeerFault {
    /// The code of the Error frame the node is told.
    pub fn code(&self) -> fb::ErrorCode {
        match self {
            PeerFault::Frame(error) => error.code(),
            PeerFault::Truncated { .. } => fb::ErrorCode::Truncated,
            PeerFault::HelloRequired(_) => fb::ErrorCode::HelloRequired,
            PeerFault::UnsupportedVersion(_) => fb::ErrorCode::UnsupportedVersion,
            PeerFault::Unauthorized => fb::ErrorCode::Unauthorized,
            PeerFault::NoSuchShard { .. } => fb::ErrorCode::NoSuchShard,
            PeerFault::UnexpectedFrame(_) => fb::ErrorCode::UnexpectedFrame,
            PeerFault::InvalidField(_) => fb::ErrorCode::InvalidField,
        }
    }
}

impl From<FrameError> for PeerFault {
    fn from(error: FrameError) -> Self {
        PeerFault::Frame(error)
    }
}

impl From<InvalidField> for PeerFault {
    fn from(field: InvalidField) -> Self {
        PeerFault::InvalidField(field)
    }
}

/// The name of a body type, for messages.
pub fn body_name(body: fb::Body) -> String {
    match body.variant_name() {
        Some(name) if body != fb::Body::NONE => name.to_string(),
        _ if body == fb::Body::NONE => "an envelope without a body".to_string(),
        _ => format!("unknown frame type {}", body.0),
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidField::Id { what, len } => {
                let max = if *what == "device" {
                    DEVICE_ID_BYTES_MAX
                } else {
                    USER_ID_BYTES_MAX
                };
                write!(f, "{what} id must be 1 to {max} bytes, not {len}")
            }
            InvalidField::NodeName { len } => write!(
                f,
                "node name must be 1 to {NODE_NAME_BYTES_MAX} bytes, not {len}"
            ),
            InvalidField::SyncVectors {
                users,
                devices,
                platforms,
                seqs,
            } => write!(
                f,
                "SessionSync vectors differ in length: {users} users, {devices} devices, \
                 {platforms} platforms, {seqs} seqs"
            ),
            InvalidField::SyncScope => f.write_str(
                "SessionSync scope must be pairs of slots (first, last), first <= last < 16384",
            ),
            InvalidField::AckWithoutAcks => {
                f.write_str("Ack on a connection whose Hello did not set acks")
            }
            InvalidField::PastEnd { received, sent } => write!(
                f,
                "stream offset {received} acknowledged; only {sent} bytes were sent"
            ),
            InvalidField::Backwards { received, acked } => write!(
                f,
                "stream offset {received} acknowledged after {acked} was: acknowledgements never go back"
            ),
            InvalidField::InsideFrame { received } => write!(
                f,
                "stream offset {received} is inside a frame: acknowledge whole frames"
            ),
        }
    }
}

impl fmt::Display for PeerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerFault::Frame(error) => error.fmt(f),
            PeerFault::Truncated { have, need } => write!(
                f,
                "the connection ended {have} bytes into a {need}-byte frame"
            ),
            PeerFault::HelloRequired(Some(body)) => {
                write!(f, "the first frame must be Hello, not {}", body_name(*body))
            }
            PeerFault::HelloRequired(None) => write!(
                f,
                "no Hello within {} s",
                crate::limits::HELLO_TIMEOUT.as_secs()
            ),
            PeerFault::UnsupportedVersion(version) => write!(
                f,
                "protocol version {version} is not supported; this router speaks version \
                 {PROTOCOL_VERSION}"
            ),
            PeerFault::Unauthorized => f.write_str("auth token missing or wrong"),
            PeerFault::NoSuchShard {
                wanted,
                shard_count,
            } => write!(
                f,
                "shard {wanted} does not exist; this router runs {shard_count} shards"
            ),
            PeerFault::UnexpectedFrame(fb::Body::Hello) => {
                f.write_str("Hello is only allowed as the first frame")
            }
            PeerFault::UnexpectedFrame(body) => {
                write!(f, "a node may not send {}", body_name(*body))
            }
            PeerFault::InvalidField(field) => field.fmt(f),
        }
    }
}

fn check_id(what: &'static str, id: &str, max: usize) -> Result<(), InvalidField> {
    if (1..=max).contains(&id.len()) {
        Ok(())
    } else {
        Err(InvalidField::Id {
            what,
            len: id.len(),
        })
    }
}

fn check_user(user: &str) -> Result<(), InvalidField> {
    check_id("user", user, USER_ID_BYTES_MAX)
}

fn check_device(device: &str) -> Result<(), InvalidField> {
    check_id("device", device, DEVICE_ID_BYTES_MAX)
}

fn check_topic(topic: &str) -> Result<(), InvalidField> {
    check_id("topic", topic, USER_ID_BYTES_MAX)
}

/// The limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Recipients one Fanout may list (`--fanout-max`).
    pub fanout_max: u32,
}

impl<'a> Request<'a> {
    /// Decodes and checks one frame a node sent after its Hello.
    pub fn parse(frame: Frame<'a>, limits: &RequestLimits) -> Result<Request<'a>, PeerFault> {
        let envelope = frame.envelope();
        // The verifier checked that the body matches its type, so each
        // `body_as_*` below is `Some` for its own type.
        let body = envelope.body_type();
        let request = match body {
            fb::Body::Route => route(envelope.body_as_route().expect("body type")),
            fb::Body::SessionOpen => {
                let open = envelope.body_as_session_open().expect("body type");
                check_user(open.user())?;
                check_device(open.device())?;
                Request::SessionOpen(SessionOpen {
                    user: open.user(),
                    device: open.device(),
                    platform: open.platform().0,
                    seq: open.seq(),
                })
            }
            fb::Body::SessionClose => {
                let close = envelope.body_as_session_close().expect("body type");
                check_user(close.user())?;
                check_device(close.device())?;
                Request::SessionClose(SessionClose {
                    user: close.user(),
                    device: close.device(),
                    seq: close.seq(),
                })
            }
            fb::Body::SessionSync => Request::SessionSync(session_sync(
                envelope.body_as_session_sync().expect("body type"),
            )?),
            fb::Body::Locate => {
                let locate = envelope.body_as_locate().expect("body type");
                check_user(locate.user())?;
                Request::Locate {
                    query_id: locate.query_id(),
                    user: locate.user(),
                }
            }
            fb::Body::Subscribe => {
                let subscribe = envelope.body_as_subscribe().expect("body type");
                check_topic(subscribe.topic())?;
                Request::Subscribe {
                    topic: subscribe.topic(),
                    request_id: subscribe.request_id(),
                }
            }
            fb::Body::Unsubscribe => {
                let unsubscribe = envelope.body_as_unsubscribe().expect("body type");
                check_topic(unsubscribe.topic())?;
                Request::Unsubscribe {
                    topic: unsubscribe.topic(),
                }
            }
            fb::Body::Publish => {
                let publish = envelope.body_as_publish().expect("body type");
                check_topic(publish.topic())?;
                if sender_too_long(
                    publish.from_user().unwrap_or(""),
                    publish.from_device().unwrap_or(""),
                ) {
                    // As for a Route or a Fanout (before: copied as sent).
                    return Ok(Request::Rejected {
                        message_id: publish.message_id(),
                        reason: fb::Reason::InvalidSender,
                    });
                }
                Request::Publish(publish)
            }
            fb::Body::Fanout => fanout(envelope.body_as_fanout().expect("body type"), limits),
            fb::Body::Broadcast => {
                let broadcast = envelope.body_as_broadcast().expect("body type");
                Request::Broadcast {
                    payload: broadcast.payload().map_or(&[][..], |p| p.bytes()),
                }
            }
            fb::Body::Ping => Request::Ping {
                nonce: envelope.body_as_ping().expect("body type").nonce(),
            },
            fb::Body::Pong => Request::Pong,
            fb::Body::Ack => Request::Ack {
                received: envelope.body_as_ack().expect("body type").received(),
            },
            fb::Body::Goodbye => Request::Goodbye {
                reason: envelope
                    .body_as_goodbye()
                    .expect("body type")
                    .reason()
                    .unwrap_or(""),
            },
            fb::Body::Error => {
                let error = envelope.body_as_error().expect("body type");
                Request::Error {
                    code: error.code(),
                    text: error.text().unwrap_or(""),
                }
            }
            other => return Err(PeerFault::UnexpectedFrame(other)),
        };
        Ok(request)
    }
}

fn route(route: fb::Route<'_>) -> Request<'_> {
    let message = Message {
        message_id: route.message_id(),
        from_user: route.from_user().unwrap_or(""),
        from_device: route.from_device().unwrap_or(""),
        to_user: route.to_user(),
        to_device: route.to_device(),
        flags: route.flags(),
        payload: route.payload().map_or(&[][..], |payload| payload.bytes()),
    };
    let rejected = |reason| Request::Rejected {
        message_id: message.message_id,
        reason,
    };
    let to_device_ok = message
        .to_device
        .is_none_or(|device| (1..=DEVICE_ID_BYTES_MAX).contains(&device.len()));
    if !(1..=USER_ID_BYTES_MAX).contains(&message.to_user.len()) || !to_device_ok {
        return rejected(fb::Reason::InvalidRecipient);
    }
    if sender_too_long(message.from_user, message.from_device)
        || (message.flags & ROUTE_FLAG_CARBON != 0 && message.from_user.is_empty())
    {
        return rejected(fb::Reason::InvalidSender);
    }
    Request::Route(message)
}

/// A sender's user or device id longer than any id may be (an absent or
/// empty one is not checked here).
fn sender_too_long(user: &str, device: &str) -> bool {
    user.len() > USER_ID_BYTES_MAX || device.len() > DEVICE_ID_BYTES_MAX
}

fn fanout<'a>(fanout: fb::Fanout<'a>, limits: &RequestLimits) -> Request<'a> {
    let rejected = |reason| Request::Rejected {
        message_id: fanout.message_id(),
        reason,
    };
    let users = fanout.to_users();
    if users.len() > limits.fanout_max as usize {
        return rejected(fb::Reason::TooManyRecipients);
    }
    if sender_too_long(
        fanout.from_user().unwrap_or(""),
        fanout.from_device().unwrap_or(""),
    ) {
        return rejected(fb::Reason::InvalidSender);
    }
    // One pass over the lengths (no UTF-8 work: the verifier did that), at
    // most `--fanout-max` of them.
    if users
        .iter()
        .any(|user| !(1..=USER_ID_BYTES_MAX).contains(&user.len()))
    {
        return rejected(fb::Reason::InvalidRecipient);
    }
    Request::Fanout(fanout)
}

fn session_sync(sync: fb::SessionSync<'_>) -> Result<SessionSync<'_>, InvalidField> {
    let users = sync.users().map_or(0, |v| v.len());
    let devices = sync.devices().map_or(0, |v| v.len());
    let platforms = sync.platforms().map_or(0, |v| v.len());
    let seqs = sync.seqs().map_or(0, |v| v.len());
    if devices != users || (platforms != 0 && platforms != users) || (seqs != 0 && seqs != users) {
        return Err(InvalidField::SyncVectors {
            users,
            devices,
            platforms,
            seqs,
        });
    }
    let ids = sync
        .users()
        .into_iter()
        .flatten()
        .zip(sync.devices().into_iter().flatten());
    for (user, device) in ids {
        check_user(user)?;
        check_device(device)?;
    }
    if let Some(scope) = sync.scope() {
        let pairs = scope.len() % 2 == 0;
        let valid = (0..scope.len() / 2).all(|i| {
            let (first, last) = (scope.get(2 * i), scope.get(2 * i + 1));
            first <= last && last < crate::limits::SLOT_COUNT
        });
        if !pairs || !valid {
            return Err(InvalidField::SyncScope);
        }
    }
    Ok(SessionSync {
        generation: sync.generation(),
        last: sync.last(),
        epoch: sync.epoch(),
        sync,
    })
}

/// What a node's Hello says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node_name: Box<str>,
    pub incarnation: u64,
    /// Shard-direct: the shard that must serve the connection.
    pub shard: Option<usize>,
    /// The node acknowledges the stream.
    pub acks: bool,
    /// On a resume: stream bytes the node processed.
    pub received: u64,
    /// On a resume: the stream to resume (0: none).
    pub stream: u64,
}

impl Hello {
    /// Checks the first frame of a connection: a Hello, a version this
    /// router speaks, the right token, a usable name and an existing shard.
    pub fn parse(frame: Frame<'_>, auth: &Auth, shard_count: usize) -> Result<Hello, PeerFault> {
        let envelope = frame.envelope();
        let Some(hello) = envelope.body_as_hello() else {
            return Err(PeerFault::HelloRequired(Some(envelope.body_type())));
        };
        if hello.protocol_version() != PROTOCOL_VERSION {
            return Err(PeerFault::UnsupportedVersion(hello.protocol_version()));
        }
        let name = hello.node_name();
        if !(1..=NODE_NAME_BYTES_MAX).contains(&name.len()) {
            return Err(InvalidField::NodeName { len: name.len() }.into());
        }
        if !auth.admits(name, hello.auth_token().unwrap_or("")) {
            return Err(PeerFault::Unauthorized);
        }
        let shard = match hello.shard() {
            -1 => None,
            wanted if wanted >= 0 && (wanted as usize) < shard_count => Some(wanted as usize),
            wanted => {
                return Err(PeerFault::NoSuchShard {
                    wanted,
                    shard_count,
                })
            }
        };
        Ok(Hello {
            node_name: name.into(),
            incarnation: hello.incarnation(),
            shard,
            acks: hello.acks(),
            received: hello.received(),
            stream: hello.stream(),
        })
    }
}

/// Compares without an early exit, so the time taken does not tell an
/// attacker how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Who may connect, from `--auth-token-file`: anyone, the holders of one
/// shared token, or each node by its own token (then a node's name is
/// its identity: nobody else can connect, resume or evict under it).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No token file: any node (keep the router on a private network).
    #[default]
    Open,
    /// One token every node presents.
    Shared(String),
    /// Each node's name and its token; a name not listed is refused.
    PerNode(std::collections::BTreeMap<String, String>),
}

impl Auth {
    /// Reads a token file: one token alone on its line (shared), or lines
    /// `NAME TOKEN` (one per node). Blank lines and `#` comments are
    /// skipped.
    pub fn parse(text: &str) -> Result<Auth, String> {
        let mut shared = None;
        let mut nodes = std::collections::BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let check = |token: &str| {
                if token.len() > AUTH_TOKEN_BYTES_MAX {
                    Err(format!(
                        "line {}: a token is at most {AUTH_TOKEN_BYTES_MAX} bytes",
                        number + 1
                    ))
                } else {
                    Ok(token.to_string())
                }
            };
            match words[..] {
                [token] if shared.is_none() && nodes.is_empty() => shared = Some(check(token)?),
                [name, token] if shared.is_none() => {
                    if name.len() > NODE_NAME_BYTES_MAX {
                        return Err(format!(
                            "line {}: a node name is at most {NODE_NAME_BYTES_MAX} bytes",
                            number + 1
                        ));
                    }
                    if nodes.insert(name.to_string(), check(token)?).is_some() {
                        return Err(format!("line {}: {name} is listed twice", number + 1));
                    }
                }
                _ => {
                    return Err(format!(
                        "line {}: either one shared token alone, or `NAME TOKEN` lines",
                        number + 1
                    ))
                }
            }
        }
        match (shared, nodes.is_empty()) {
            (Some(token), true) => Ok(Auth::Shared(token)),
            (None, false) => Ok(Auth::PerNode(nodes)),
            _ => Err("no token in the file".into()),
        }
    }

    /// Whether node `name` presenting `token` may connect (compared in
    /// constant time for a given length).
    pub fn admits(&self, name: &str, token: &str) -> bool {
        match self {
            Auth::Open => true,
            Auth::Shared(expected) => constant_time_eq(token.as_bytes(), expected.as_bytes()),
            Auth::PerNode(nodes) => nodes
                .get(name)
                .is_some_and(|expected| constant_time_eq(token.as_bytes(), expected.as_bytes())),
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Open => f.write_str("Open"),
            Auth::Shared(_) => f.write_str("Shared(<token>)"),
            Auth::PerNode(nodes) => {
                write!(f, "PerNode({} nodes: ", nodes.len())?;
                f.debug_list().entries(nodes.keys()).finish()?;
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Encoder, HelloFrame, Verifier};

    const LIMITS: RequestLimits = RequestLimits { fanout_max: 3 };

    fn parse(bytes: &[u8]) -> Result<Request<'_>, PeerFault> {
        let frame = Verifier::new(1 << 20).verify(bytes).expect("valid frame");
        Request::parse(frame, &LIMITS)
    }

    #[test]
    fn ids_are_checked_once_here() {
        let mut encoder = Encoder::new();
        let long_user = "u".repeat(USER_ID_BYTES_MAX + 1);
        let bytes = encoder
            .session_open(&long_user, "d", fb::Platform::Web)
            .to_vec();
        assert_eq!(
            parse(&bytes).unwrap_err().code(),
            fb::ErrorCode::InvalidField
        );
        let bytes = encoder.session_close("u", "").to_vec();
        assert_eq!(
            parse(&bytes).unwrap_err(),
            PeerFault::InvalidField(InvalidField::Id {
                what: "device",
                len: 0
            })
        );
        let bytes = encoder.locate(1, "").to_vec();
        assert!(parse(&bytes).is_err());
        let bytes = encoder.subscribe("", 1).to_vec();
        assert!(parse(&bytes).is_err());
        let bytes = encoder.session_open("u", "d", fb::Platform::Web).to_vec();
        assert!(matches!(parse(&bytes), Ok(Request::SessionOpen(open)) if open.user == "u"));
    }

    #[test]
    fn refused_content_is_a_verdict_not_a_fault() {
        let mut encoder = Encoder::new();
        let bytes = encoder
            .route(&RouteFrame {
                message_id: 9,
                from_user: "",
                from_device: "",
                to_user: "",
                to_device: None,
                flags: 0,
                payload: b"",
            })
            .to_vec();
        assert!(matches!(
            parse(&bytes),
            Ok(Request::Rejected {
                message_id: 9,
                reason: fb::Reason::InvalidRecipient
            })
        ));
        let bytes = encoder
            .fanout(&crate::wire::FanoutFrame {
                message_id: 4,
                from_user: "a",
                from_device: "b",
                to_users: &["x", "y", "z", "w"],
                flags: 0,
                payload: b"",
            })
            .to_vec();
        assert!(matches!(
            parse(&bytes),
            Ok(Request::Rejected {
                reason: fb::Reason::TooManyRecipients,
                ..
            })
        ));
        let bytes = encoder
            .fanout(&crate::wire::FanoutFrame {
                message_id: 4,
                from_user: "a",
                from_device: "b",
                to_users: &["x", ""],
                flags: 0,
                payload: b"",
            })
            .to_vec();
        assert!(matches!(
            parse(&bytes),
            Ok(Request::Rejected {
                reason: fb::Reason::InvalidRecipient,
                ..
            })
        ));
        let long_user = "u".repeat(USER_ID_BYTES_MAX + 1);
        let bytes = encoder
            .publish(&crate::wire::PublishFrame {
                topic: "t",
                message_id: 5,
                from_user: &long_user,
                from_device: "d",
                from_node: "",
                flags: 0,
                payload: b"",
            })
            .to_vec();
        assert!(matches!(
            parse(&bytes),
            Ok(Request::Rejected {
                message_id: 5,
                reason: fb::Reason::InvalidSender
            })
        ));
    }

    #[test]
    fn frames_a_node_may_not_send_are_faults() {
        let mut encoder = Encoder::new();
        let bytes = encoder
            .status(1, fb::Verdict::Routed, fb::Reason::None)
            .to_vec();
        assert_eq!(
            parse(&bytes).unwrap_err(),
            PeerFault::UnexpectedFrame(fb::Body::Status)
        );
        let hello = encoder.hello(&HelloFrame::new("n", 1)).to_vec();
        let fault = parse(&hello).unwrap_err();
        assert_eq!(fault.code(), fb::ErrorCode::UnexpectedFrame);
        assert_eq!(
            fault.to_string(),
            "Hello is only allowed as the first frame"
        );
    }

    #[test]
    fn hello_checks() {
        let mut encoder = Encoder::new();
        let verifier = Verifier::new(1 << 16);
        let mut hello = |version, name: &str, token, shard| {
            encoder
                .hello(&HelloFrame {
                    protocol_version: version,
                    auth_token: token,
                    shard,
                    acks: true,
                    ..HelloFrame::new(name, 7)
                })
                .to_vec()
        };
        let check = |bytes: &[u8], token: Option<&str>| {
            let auth = token.map_or(Auth::Open, |token| Auth::Shared(token.into()));
            Hello::parse(verifier.verify(bytes).unwrap(), &auth, 2)
        };
        const V: u16 = PROTOCOL_VERSION;
        assert_eq!(
            check(&hello(V, "n", None, Some(1)), None).unwrap(),
            Hello {
                node_name: "n".into(),
                incarnation: 7,
                shard: Some(1),
                acks: true,
                received: 0,
                stream: 0
            }
        );
        assert_eq!(
            check(&hello(1, "n", None, None), None).unwrap_err(),
            PeerFault::UnsupportedVersion(1)
        );
        assert_eq!(
            check(&hello(V, "n", Some("x"), None), Some("y")).unwrap_err(),
            PeerFault::Unauthorized
        );
        assert_eq!(
            check(&hello(V, "", None, None), None).unwrap_err().code(),
            fb::ErrorCode::InvalidField
        );
        assert_eq!(
            check(&hello(V, "n", None, Some(2)), None).unwrap_err(),
            PeerFault::NoSuchShard {
                wanted: 2,
                shard_count: 2
            }
        );
        let ping = Encoder::new().ping(1).to_vec();
        assert_eq!(
            check(&ping, None).unwrap_err(),
            PeerFault::HelloRequired(Some(fb::Body::Ping))
        );
    }
}
