//! The socket layer of node connections: accepting them, reading their
//! Hello, handing them to the shard that serves them, and the task that
//! moves each connection's bytes between its socket and its shard's core.
//!
//! A connection is accepted by whichever shard's accept completes first
//! (every shard accepts on the router's one listening socket). That shard
//! reads the Hello and asks its core which shard serves the connection
//! (`ShardCore::place`, which reserves its place there): the one the Hello
//! names (shard-direct nodes open one connection per shard), the one where
//! the same node process has a connection to resume, or the shard with the
//! fewest connections. If that is another shard, the socket and the bytes
//! read after the Hello are handed over on the control queue, once per
//! connection; from then on the connection is read and written only by its
//! shard.
//!
//! Nothing here decides anything about the protocol: the connection task
//! writes the bytes the core gives it, hands the core the bytes it reads,
//! and does with the socket what the core says (`SocketAction`).

pub mod admission;
mod serve;

pub use serve::{accept_loop, adopt, Waiting};
