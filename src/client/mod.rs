//! The node side of the protocol: what an IM node runs to talk to a
//! router.
//!
//! - [`core`]: [`NodeCore`], one connection's protocol state, sans-IO
//!   (frames, handshake, Pings, stream offsets and Acks, resumes, verdict
//!   matching).
//! - [`cluster`]: [`ClusterNode`], the node's side of a cluster of routers
//!   (or of one): a core per router, the slot map, Routes kept until their
//!   outcome and sent again, duplicates dropped, sessions resynced.
//! - [`blocking`]: a connection over a blocking `TcpStream` driven by a
//!   `NodeCore`, for one-shot commands (`imrouter locate`) and tests.

pub mod blocking;
pub mod cluster;
pub mod core;

pub use self::cluster::{ClusterConfig, ClusterNode, Outcome, Polled};
pub use self::core::{Incoming, NodeConfig, NodeCore, NodeError, State, Welcome};
