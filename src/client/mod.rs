//! The node side of the protocol: what an IM node runs to talk to a
//! router.
//!
//! - [`core`]: [`NodeCore`], one connection's protocol state, sans-IO
//!   (frames, handshake, Pings, stream offsets and Acks, resumes, verdict
//!   matching).
//! - [`blocking`]: a connection over a blocking `TcpStream` driven by a
//!   `NodeCore`, for one-shot commands (`imrouter locate`) and tests.

pub mod blocking;
pub mod core;

pub use self::core::{Incoming, NodeConfig, NodeCore, NodeError, State, Welcome};
