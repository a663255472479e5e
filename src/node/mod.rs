//! Node connections: accepting them, the Hello/Welcome handshake, reading
//! frames, and the bounded output path; and the directory of nodes.
//!
//! A connection is accepted by whichever shard's accept completes first
//! (every shard accepts on the router's one listening socket). That shard
//! reads the Hello and decides which shard serves the connection: the one
//! the Hello names (shard-direct nodes open one connection per shard), or
//! the shard with the fewest connections. If that is another shard, the socket and the
//! bytes read after the Hello are handed over on the control queue, once per
//! connection; from then on the connection is read and written only by its
//! shard.

pub mod client;
mod connection;
pub mod directory;
mod serve;

use std::os::fd::OwnedFd;

pub use connection::{Connection, Deferred, LinkState, PushError, TakeOver};
pub use directory::{
    Attached, Detached, Directory, Membership, MembershipEvent, NodeState, Superseded,
};
pub(crate) use serve::{accept_loop, adopt};

/// What a Hello said about the node.
#[derive(Debug, Clone)]
pub struct HelloInfo {
    pub node_name: Box<str>,
    pub incarnation: u64,
    /// The node acknowledges the stream.
    pub acks: bool,
    /// On a resume: stream bytes the node processed.
    pub received: u64,
}

/// A connection on its way from the shard that read its Hello to the shard
/// that will serve it.
pub struct Handoff {
    /// The socket (a duplicate; the accepting shard closed its own).
    pub(crate) fd: OwnedFd,
    pub(crate) hello: HelloInfo,
    /// Bytes the node sent after its Hello, already read.
    pub(crate) pending: Vec<u8>,
}
