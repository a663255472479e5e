//! imrouter: a thread-per-core message router for clusters of
//! instant-messaging servers.
//!
//! IM nodes (gateway servers holding client connections) keep a TCP
//! connection to the router, tell it which users are connected where
//! (`SessionOpen`/`SessionClose`), and hand it messages for users they do
//! not host (`Route`). The router forwards each message to the node(s)
//! holding the recipient's sessions (`Deliver`) and tells the sender's node
//! the outcome (`Status`), in particular when the recipient is offline.
//!
//! # Layout
//!
//! - [`wire`]: the protocol. Framing (a length prefix checked before the
//!   body is buffered), flatbuffers verification once at ingress, and the
//!   encoder. The generated schema code lives here.
//! - [`shard`]: thread-per-core execution. One pinned glommio executor per
//!   shard, the user-to-shard function ([`shard::placement`]), and the
//!   cross-core links: bounded crossbeam channels carrying batches, with a
//!   doorbell so an idle shard sleeps; and the multi-shard operations built
//!   on them: Fanout coordination (`shard::fanout`) and session resync
//!   (`shard::sync`).
//! - [`table`]: the location table of one shard (user to sessions, with the
//!   login policy) and its topic table, plain data with no I/O.
//! - [`route`]: routing decisions, sans-IO: given a message, the table and a
//!   view of the nodes, what to deliver where and which verdict to give.
//! - [`node`]: node connections (accept, handshake, heartbeats, read,
//!   bounded output), the node directory shared by the shards (epochs,
//!   membership, the senior node), and a small blocking client for the
//!   command line (`imrouter locate`).
//! - [`metrics`]: per-shard counters, gathered on demand.
//! - [`config`]: command-line flags to a validated [`config::Config`].
//! - [`limits`]: every bound, with its reason.
//!
//! docs/PROTOCOL.md specifies the protocol for node implementers; the
//! README's architecture section draws the path of a message.

pub mod client;
pub mod config;
pub mod core;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod route;
pub mod server;
pub mod shard;
pub mod sim;
pub mod table;
pub mod time;
pub mod wire;

pub use config::Config;
pub use server::{Router, RunningRouter, StartError};

/// Writes one line to standard error, prefixed with the program name.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("imrouter: {}", format_args!($($arg)*))
    };
}
