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
//! Imports point one way: the socket layer ([`node`]) and the shard driver
//! ([`shard`]) drive the sans-IO shard core ([`core`]), which uses the plain
//! data and decisions below it ([`table`], [`route`], [`wire`]). Nothing in
//! `core`, `client`, `table`, `route` or `wire` touches a socket, a clock
//! or an executor: they take the time as an argument ([`time`]) and return
//! what to do, so the seeded simulation ([`sim`]) runs the same code.
//!
//! - [`server`]: starting and stopping a router: one pinned glommio
//!   executor per shard, the listening socket (its bind retried briefly
//!   after a crash), the cross-core links.
//! - [`node`]: the socket layer of node connections: accept, read the
//!   Hello, hand the socket to the shard that serves it, and the task that
//!   moves each connection's bytes between its socket and its core.
//! - [`shard`]: the shard driver: feeds its core I/O, batches from other
//!   shards (bounded crossbeam channels with a doorbell, [`shard::link`])
//!   and timer expiries; wakes connection tasks the core names.
//! - [`core`]: everything one shard knows and decides ([`core::ShardCore`]):
//!   the users and topics it owns ([`core::owner`]), its connections and
//!   their output streams ([`core::conns`], [`core::stream`]: offsets,
//!   bytes kept until acknowledged, parking, resume), the batches it sends
//!   other shards ([`core::batch`]), Fanout jobs ([`core::fanout`]), resync
//!   ([`core::sync`]), liveness (heartbeats, timeouts, the grace), and the
//!   node directory all shards share ([`core::directory`]: epochs,
//!   membership, placement of connections).
//! - [`client`]: the node side of a connection, sans-IO
//!   ([`client::NodeCore`]: handshake, Pings, stream offsets and Acks,
//!   resume, verdict matching), and a blocking [`client::blocking::Connection`] on
//!   top (`imrouter locate`, tests, the load generator).
//! - [`cluster`]: several routers as one service (in progress, see
//!   docs/CLUSTER.md): the slot map ([`cluster::map`]), the controller's
//!   plans for it ([`cluster::plan`]), and a router's membership in etcd
//!   ([`cluster::member`]: lease, fence, election, hand-over), sans-IO over
//!   the etcd requests of [`cluster::etcd`].
//! - [`sim`]: the deterministic simulation: every shard core and many node
//!   cores in one thread on virtual time, a seeded scheduler, injected
//!   faults, invariants checked at every step (`imrouter-sim`,
//!   scripts/simulate.sh); and the cluster's control plane with a fake
//!   etcd ([`sim::control`], `imrouter-sim --control`).
//! - [`table`]: the location table of one shard (user to sessions, with the
//!   login policy) and its topic table, plain data.
//! - [`route`]: routing decisions: given a message, the table and a view of
//!   the nodes, what to deliver where and which verdict to give.
//! - [`wire`]: the protocol: framing, verification once at ingress (a fast
//!   path for Route, SessionOpen and SessionClose, proved against the
//!   flatbuffers verifier), typed requests ([`wire::Request`]) or a peer
//!   fault, and the encoder. The generated schema code lives here.
//! - [`placement`]: the user-to-slot-to-shard function.
//! - [`time`]: time as the cores see it: a number handed in.
//! - [`metrics`]: per-shard counters and latency histograms, gathered on
//!   demand, and their Prometheus text format.
//! - [`admin`]: the admin port (`/metrics`, `/healthz`, `/readyz`,
//!   `/nodez`), axum on a thread of its own, off the message path.
//! - [`config`]: command-line flags to a validated [`config::Config`].
//! - [`limits`]: every bound, with its reason and what happens at it.
//!
//! The path of a Route, socket to socket: `node` reads bytes and hands
//! them to `ShardCore::receive`; the core cuts frames, verifies each once
//! (`wire::Verifier`) and types it (`wire::Request`); a Route for a user
//! owned here goes to `core::owner`, which decides with `route::route` and
//! writes each Deliver straight into the destination connection's stream
//! (`core::stream`) or into the Response batch for that connection's shard;
//! `shard` hands batches across cores, and the destination's `node` task
//! writes the stream to its socket.
//!
//! docs/PROTOCOL.md specifies the protocol for node implementers; the
//! README's architecture section draws the path of a message.

pub mod admin;
pub mod client;
pub mod cluster;
pub mod config;
pub mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod logging;
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
