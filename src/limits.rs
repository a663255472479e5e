//! Every bound the router enforces, with the reason for it and what it costs.
//!
//! A limit that an operator may want to change is a flag (see `config`); its
//! default and its ceiling live here. A limit that follows from the design is
//! a plain constant. Relations between limits are checked at compile time at
//! the bottom of this file.

/// Slots in the user-to-shard map. Part of the protocol (nodes compute the
/// slot of a user themselves), so it never changes: 2^14 slots spread users
/// evenly over up to `SHARDS_MAX` shards with at most 1/256 imbalance from
/// rounding.
pub const SLOT_COUNT: u16 = 16384;

/// Most shards one router runs. A node's connections are tracked as a bitmask
/// of shards in one `AtomicU64`, which is what keeps the per-message
/// "where is node N" lookup a single load.
pub const SHARDS_MAX: usize = 64;

/// Default for `--max-frame-bytes`: the largest frame body (length prefix
/// excluded) a node may send. 64 KiB holds any chat message; larger media go
/// through object storage, not the router. The length prefix is checked
/// against it before the body is buffered, to limit the memory a hostile
/// peer can make us hold.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 64 * 1024;

/// Ceiling for `--max-frame-bytes`. Every connection's read buffer holds two
/// frames of this size, so the ceiling bounds per-connection memory.
pub const FRAME_BYTES_MAX_CEILING: u32 = 16 * 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Smallest read buffer per connection. Reads are as large as the free space
/// in this buffer, so under load one `recv` brings in hundreds of frames.
/// The buffer is `max(READ_BUFFER_BYTES_MIN, 2 * (max frame + prefix))`.
pub const READ_BUFFER_BYTES_MIN: usize = 256 * 1024;

/// Longest user id in bytes. Ids up to `table::USER_INLINE_BYTES` are stored
/// inline in the location table; longer ones cost an extra heap block.
pub const USER_ID_BYTES_MAX: usize = 255;

/// Longest device id in bytes (XMPP resources, OpenIM platform ids, UUIDs).
pub const DEVICE_ID_BYTES_MAX: usize = 128;

/// Longest node name in bytes.
pub const NODE_NAME_BYTES_MAX: usize = 64;

/// Longest auth token in bytes.
pub const AUTH_TOKEN_BYTES_MAX: usize = 1024;

/// Default for `--max-sessions-per-user`: devices one user may have online at
/// once. A Route fans out to all of them, so this bounds the work one message
/// can cause. Opening one more gets the new session a Kick (`SessionLimit`).
pub const SESSIONS_PER_USER_MAX_DEFAULT: u32 = 16;

/// Ceiling for `--max-sessions-per-user`; routing groups a user's sessions in
/// a fixed array of this many entries on the stack.
pub const SESSIONS_PER_USER_MAX_CEILING: u32 = 64;

/// Default for `--max-sessions`: sessions in the whole router, split evenly
/// over the shards (users are spread evenly by the slot hash). A SessionOpen
/// beyond it gets a Kick (`RouterFull`).
///
/// A session's cost depends on its ids: ids of up to 15 bytes are stored
/// inline, longer ones apart. Heap bytes per session (`cargo bench --bench
/// memory`, one device per user): 107 with an 8- or 16-byte user and a
/// 5-byte device, 143 with 16 and 16, 220 with 36 and 36, 244 with 64 and
/// 32, 531 with 255 and 128; 111 with four 16-byte devices per 16-byte
/// user. So the default bounds the table at about 1.1 GB with short ids
/// and 5.3 GB with the longest. After a burst the table gives its memory
/// back (`Table::shrink`, run by the shard when three quarters of it are
/// empty and it holds at most `SHRINK_USERS_MAX` users).
pub const SESSIONS_MAX_DEFAULT: u64 = 10_000_000;

/// Default for `--max-nodes`: distinct IM node names the router tracks. Each
/// costs one 64-byte directory entry plus a few bytes per shard.
pub const NODES_MAX_DEFAULT: u32 = 1024;

/// Ceiling for `--max-nodes`; node indexes are stored in 32 bits but a bound
/// keeps the directory (allocated up front) small.
pub const NODES_MAX_CEILING: u32 = 65_536;

/// Default for `--out-buffer-bytes`: the soft limit of a connection's output
/// buffer. Above it the connection is *congested*: new Delivers for it get a
/// `Busy` verdict instead of being queued. It is cleared below half.
pub const OUT_BUFFER_BYTES_DEFAULT: usize = 4 * 1024 * 1024;

/// Smallest `--out-buffer-bytes`: a congested buffer must still take one
/// maximum frame.
pub const OUT_BUFFER_BYTES_MIN: usize = 64 * 1024;

/// The hard limit of an output buffer is this many times the soft limit.
/// While that much waits to be written to the node's socket, the router
/// does not read the node (its own requests' answers are what grows the
/// buffer then); a node whose socket takes nothing for --node-timeout-ms
/// is closed with `SlowConsumer`. Answers and control frames are always
/// queued, and so is a Deliver an owner shard decided before the node
/// became congested, so the buffer can pass the soft limit by what was in
/// flight towards the node, which the cross-core channels bound
/// (`LINK_BATCHES_MAX` batches per source shard).
pub const OUT_BUFFER_HARD_FACTOR: usize = 2;

/// Target size of one cross-core batch. A batch is sent when a processing
/// round ends or when it grows past this; large enough that hand-off costs
/// are amortised over hundreds of messages, small enough to stay in L2.
pub const BATCH_BYTES_TARGET: usize = 32 * 1024;

/// Batches one cross-core channel holds. With `BATCH_BYTES_TARGET` this bounds
/// the memory in flight towards one shard, per class, to about 2 MiB (one
/// batch may exceed the target by one frame).
pub const LINK_BATCHES_MAX: usize = 64;

/// When the batches a shard has built for one target shard and not yet
/// handed off pass this, connection readers on the shard stop reading until
/// they are handed off: the backpressure that keeps a fast sender from
/// filling our memory when a target shard falls behind.
pub const OUTBOX_BYTES_HIGH: usize = 4 * BATCH_BYTES_TARGET;

/// Control messages (connection hand-offs, shutdown, metric requests) one
/// shard's control queue holds. These are rare; a full queue refuses the
/// hand-off with `RouterFull` rather than block an accepting shard.
pub const CONTROL_QUEUE_MAX: usize = 1024;

/// Free batch buffers a shard keeps for reuse, so that a steady flow of
/// hand-offs allocates nothing.
pub const BATCH_POOL_MAX: usize = 3 * LINK_BATCHES_MAX;

/// Default for `--max-connections-per-shard`: node connections one shard
/// serves at once (open or closing; a hand-off counts on the shard it goes
/// to, from the moment it is placed). Node connections are few (one per IM
/// node, or one per node and shard, and in a cluster one per router); the
/// bound keeps a connection flood from exhausting memory. One more is
/// placed on another shard if it may go elsewhere, else refused with
/// `RouterFull`.
pub const CONNECTIONS_PER_SHARD_MAX_DEFAULT: usize = 4096;

/// Ceiling for `--max-connections-per-shard`.
pub const CONNECTIONS_PER_SHARD_MAX_CEILING: usize = 1 << 20;

/// Default of `--max-handshakes-per-shard`: sockets one shard holds in
/// their handshake (accepted, Hello not read yet). Each costs a task and a
/// read buffer of at most `HELLO_BYTES_MAX` for at most `HELLO_TIMEOUT`.
/// One more evicts the socket that has waited longest (closed without a
/// word), so a flood of silent sockets costs a bounded amount of memory
/// and never locks out a node that sends its Hello at once.
pub const HANDSHAKES_PER_SHARD_MAX: usize = 1024;

/// Ceiling of `--max-handshakes-per-shard`.
pub const HANDSHAKES_PER_SHARD_CEILING: usize = 1 << 16;

/// The largest Hello a router reads (length prefix excluded), whatever
/// `--max-frame-bytes` is: a Hello needs a name (64 bytes), a token (1 KiB)
/// and a few numbers. Larger is FrameTooLarge before it is read, so an
/// unauthenticated socket never makes the router hold more than this.
pub const HELLO_BYTES_MAX: usize = 4096;

/// Default of `--max-connections`: sockets the whole router holds (node
/// connections and handshakes). At a few kilobytes each when idle, 131,072
/// stay far below the memory of a dedicated host; the file descriptor
/// limit (`LimitNOFILE`) must be above it.
pub const CONNECTIONS_MAX_DEFAULT: usize = 131_072;

/// Default of `--max-connections-per-source`: sockets from one IP
/// address. An IM node holds at most one connection per shard (plus a
/// reconnect's overlap); many node processes may share an address behind
/// a NAT or a test host. One address cannot take the whole router.
pub const CONNECTIONS_PER_SOURCE_MAX_DEFAULT: usize = 4096;

/// Ceiling of `--max-connections` and `--max-connections-per-source`.
pub const CONNECTIONS_MAX_CEILING: usize = 1 << 22;

/// How long a new connection may take to send its Hello. A socket that
/// says nothing holds a connection slot and a read buffer; this frees them.
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// After the router sends an Error frame (or shuts down a connection) it
/// keeps reading and discarding for at most this long, until the node
/// closes its side: closing a socket with unread input resets it, and the
/// reset can destroy the Error frame before the node reads it.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long starting retries binding an address in use: a router killed
/// a moment ago keeps its listening socket bound for a few milliseconds
/// (5-14 ms seen), so an immediate restart would fail without it. A real
/// conflict (another process serving there) still fails, a bit later.
pub const BIND_RETRY_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a stopping shard waits for its connections to flush and close.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Messages to recipients on several nodes that one connection may have
/// waiting for their destinations' reports (about 40 bytes each). A report
/// arrives when the destination shard queued the Deliver, or, for a node
/// that acknowledges its stream, when it acknowledged it (within about a
/// heartbeat), or for a suspended node when it resumed or its grace ended
/// (what it may park is bounded by --park-bytes-max). A connection that
/// passes this anyway is closed with `RouterFull` rather than let its
/// verdicts go untracked.
pub const PENDING_REPORTS_MAX: usize = 1 << 20;

/// Locates one connection may have unanswered. One more pauses its reader
/// until an answer is queued: a node that asks faster than the router
/// answers is slowed, instead of filling the owners' queues in front of
/// everyone else's messages.
pub const LOCATES_IN_FLIGHT_MAX: u32 = 64;

/// Fanout recipients one connection may have in flight (Fanouts whose
/// Delivers are not all queued yet). Past it the connection's reader
/// pauses; a single Fanout larger than this is still accepted when nothing
/// else of the connection is in flight.
pub const FANOUT_RECIPIENTS_IN_FLIGHT_MAX: u64 = 100_000;

/// Fanouts one connection may have in flight (the same way). Past it the
/// connection's reader pauses, so that one sender cannot take all of a
/// shard's `FANOUT_JOBS_MAX` and get everyone else's Fanouts refused.
pub const FANOUTS_IN_FLIGHT_MAX: u32 = 8;

/// Bytes of Broadcast and Publish frames one connection may have in flight
/// (copies not all queued yet; a copy for a congested node waits for it).
/// Past it the connection's reader pauses: a sender is slowed to the pace
/// of the nodes it sends to, and they are never disconnected for it.
/// Bounds what is held for congested nodes to this per sender and shard.
pub const FANOUT_BYTES_IN_FLIGHT_MAX: u64 = 1024 * 1024;

/// Snapshot (SessionSync) sessions one connection may have in flight (not
/// yet applied by their owners). Past it the connection's reader pauses.
pub const SYNC_SESSIONS_IN_FLIGHT_MAX: u64 = 16 * 1024;

/// How long a shard runs tasks before it reaps I/O completions again.
/// glommio reaps socket readiness and timers only between task-queue runs,
/// so while any task is runnable (a reader with data, the drain task with
/// batches) a connection that just became readable waits up to this long.
/// glommio's default (100 ms) makes a busy shard's tail latency that bad;
/// 100 us keeps the added delay below the latency target at the cost of
/// one ring poll per 100 us of continuous work (about 1-3 %). An idle shard
/// parks and is not woken by it.
pub const PREEMPT_TIMER: std::time::Duration = std::time::Duration::from_micros(100);

/// Protocol versions this router speaks.
pub const PROTOCOL_VERSION: u16 = 3;

/// Default `--reconnect-grace-ms`: how long the sessions of a node whose
/// connection was lost (no Goodbye) stay suspended, their messages parked,
/// waiting for the same process to reconnect.
pub const RECONNECT_GRACE_MS_DEFAULT: u32 = 5000;

/// Longest `--reconnect-grace-ms` (10 minutes).
pub const RECONNECT_GRACE_MS_MAX: u32 = 600_000;

/// Default `--park-bytes-max`: bytes one suspended connection may hold for
/// its node (parked frames plus frames sent but not acknowledged). One more
/// ends the grace at once: every parked message is answered Offline.
pub const PARK_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;

/// Default `--max-topics`: distinct topics in the router (split evenly over
/// the shards). Heap bytes per topic (`cargo bench --bench memory`): 115
/// with a 16-byte id and one subscribed node, 250 with four, 211 with a
/// 64-byte id, 593 with a 255-byte id (the id is kept twice: the topic's
/// entry and the subscribing node's list). The default bounds topics at
/// about 115 MB with short ids.
pub const TOPICS_MAX_DEFAULT: u64 = 1_000_000;

/// Default `--fanout-max`: recipients one Fanout may list.
pub const FANOUT_MAX_DEFAULT: u32 = 100_000;

/// Largest `--fanout-max`.
pub const FANOUT_MAX_CEILING: u32 = 1_000_000;

/// Fanouts one shard coordinates at once; one more gets `Busy/RouterBusy`.
/// Each holds a copy of its frame and the resolved recipients until done.
pub const FANOUT_JOBS_MAX: usize = 64;

/// Recipients handled between two yields to the executor while splitting,
/// resolving or delivering a Fanout: about 1,024 table lookups, well under
/// a millisecond, so a huge list never stalls a shard's other work.
pub const FANOUT_CHUNK: usize = 1024;

/// Default `--heartbeat-ms`: how often the router checks each connection,
/// pinging it when the node was quiet or the router had nothing to send.
pub const HEARTBEAT_MS_DEFAULT: u32 = 1000;

/// Range of `--heartbeat-ms`.
pub const HEARTBEAT_MS_MIN: u32 = 10;
pub const HEARTBEAT_MS_MAX: u32 = 600_000;

/// Default `--node-timeout-ms`, in heartbeats: a node that sent nothing for
/// this many heartbeats (not even a Pong) is dead.
pub const NODE_TIMEOUT_HEARTBEATS_DEFAULT: u32 = 3;

/// glommio's locked io_uring memory per executor. Locked memory is often
/// limited (8 MiB is common), and we do no O_DIRECT file I/O, which is what
/// this memory is for.
pub const IO_MEMORY_BYTES: usize = 1024 * 1024;

// Relations between the limits.
const _: () = assert!(SHARDS_MAX <= 64, "shard masks are u64");
const _: () = assert!(SHARDS_MAX <= SLOT_COUNT as usize);
const _: () = assert!(FRAME_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_CEILING);
const _: () = assert!(OUT_BUFFER_BYTES_MIN >= FRAME_BYTES_MAX_DEFAULT as usize);
const _: () = assert!(OUT_BUFFER_BYTES_DEFAULT >= OUT_BUFFER_BYTES_MIN);
const _: () = assert!(SESSIONS_PER_USER_MAX_DEFAULT <= SESSIONS_PER_USER_MAX_CEILING);
const _: () = assert!(OUTBOX_BYTES_HIGH >= BATCH_BYTES_TARGET);
const _: () =
    assert!(READ_BUFFER_BYTES_MIN >= 2 * (FRAME_BYTES_MAX_DEFAULT as usize + FRAME_PREFIX_BYTES));
const _: () = assert!(
    USER_ID_BYTES_MAX <= u8::MAX as usize,
    "id lengths are stored in a u8"
);
const _: () = assert!(
    DEVICE_ID_BYTES_MAX <= u8::MAX as usize,
    "id lengths are stored in a u8"
);

/// How often a shard gives back what a burst left behind: stream chunks no
/// connection needed meanwhile, a mostly empty table, the allocator's free
/// pages.
pub const MEMORY_RELEASE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Stream chunks freed at once that make a shard return the allocator's
/// free pages to the system (`malloc_trim`, which costs page faults when
/// the memory is used again: not for a few chunks).
pub const MEMORY_RELEASE_BYTES_MIN: usize = 1024 * 1024;

/// A table is shrunk after a burst (`Table::shrink`, once a second, when
/// three quarters of it are empty) only while it holds at most this many
/// users: the shrink rehashes them, about 10 ns each, and runs in one go.
pub const SHRINK_USERS_MAX: usize = 100_000;

/// When this many connections of a shard ended since its last release of
/// memory, the shard returns the allocator's free pages to the system at
/// the next release (their tasks, buffers and records were freed).
pub const CONNECTIONS_ENDED_FOR_RELEASE: usize = 64;

/// Longest router name (`--name`) a slot map accepts: a label for
/// operators, one word. A longer one makes the map invalid (refused).
pub const ROUTER_NAME_MAX: usize = 64;

/// Longest advertised router address (`--advertise`, `host:port`) a slot
/// map accepts: a DNS name is at most 253 bytes. A longer one makes the
/// map invalid (refused).
pub const ROUTER_ADDR_MAX: usize = 256;

/// `--lease-ttl-ms`: the etcd lease a router of a cluster registers
/// under. etcd's own minimum TTL is 1 s (its leases count in seconds;
/// imrouter rounds up); failover takes about one TTL.
pub const LEASE_TTL_MS_DEFAULT: u64 = 5_000;
pub const LEASE_TTL_MS_MIN: u64 = 1_000;
pub const LEASE_TTL_MS_MAX: u64 = 600_000;

/// `--rebuild-timeout-ms`: how long a slot a router gained waits for the
/// nodes' resyncs at most.
pub const REBUILD_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Slots the controller moves to a new (or less loaded) router per epoch:
/// each batch's resyncs are small, and one epoch is settled (every router
/// applied it) before the next.
pub const REBALANCE_BATCH_SLOTS: usize = 1024;
/// Least time between two rebalancing epochs.
pub const REBALANCE_INTERVAL_MS: u64 = 500;

/// A cluster node (`client::cluster`): Routes kept until their final
/// outcome, by default; `ClusterNode::route` refuses more (`Full`), so the
/// application waits instead of the node growing without bound.
pub const NODE_PENDING_ROUTES_DEFAULT: usize = 1 << 16;
/// Deliver keys a cluster node remembers to drop duplicates: a resend
/// arrives within a failover (seconds), far inside this many messages at
/// the rates one node sees; the oldest key goes first.
pub const NODE_DEDUP_WINDOW_DEFAULT: usize = 1 << 16;
/// Links a cluster node keeps to addresses the map no longer names (to
/// learn later maps from); more are dropped.
pub const NODE_PROBES_MAX: usize = 16;

/// Puts and deletes of a router's `nodes/` keys (the IM nodes attached to
/// it) per etcd transaction: etcd refuses more than `--max-txn-ops` (128
/// by default). More changes wait for the next transaction (one in flight
/// at a time), so a thousand nodes attaching at once cost sixteen.
pub const NODE_OPS_PER_TXN: usize = 64;

// ----- The admin port --------------------------------------------------------

/// How long an admin request waits for each shard's answer. A shard that
/// takes longer is reported unhealthy (`/healthz` 503) and its figures
/// read 0 in that scrape; the admin port's thread is never blocked (the
/// wait runs on its blocking pool).
pub const ADMIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Admin requests answered at once; one more is answered 503 at once. A
/// scrape every few seconds and a few humans need far fewer; the bound
/// keeps a runaway client from queueing control messages to the shards.
pub const ADMIN_REQUESTS_MAX: usize = 8;

/// Threads of the admin port's blocking pool (where requests wait for the
/// shards): at most one per request answered at once.
pub const ADMIN_BLOCKING_THREADS: usize = ADMIN_REQUESTS_MAX;

/// How long the admin port waits for its open requests when the router
/// stops (a client that never reads must not hold the exit).
pub const ADMIN_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest admin response `imrouter nodes` reads (a `/nodez` table for
/// the most nodes fits in well under a megabyte per thousand nodes).
pub const ADMIN_RESPONSE_BYTES_MAX: u64 = 64 << 20;

// ----- Draining and stopping -------------------------------------------------

/// Default of `--drain-window-ms`: how long nodes get to leave a draining
/// router, each at a random moment within it. Long enough that a thousand
/// nodes reconnecting elsewhere arrive at about a hundred per second.
pub const DRAIN_WINDOW_MS_DEFAULT: u64 = 10_000;

/// Default of `--shutdown-timeout-ms`: the longest a drain (SIGTERM,
/// SIGUSR2, `imrouter drain`) takes before the router closes what is left:
/// half of it at most for a cluster's slot hand-over, then the window.
pub const SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Longest `--drain-window-ms` (ten minutes) and `--shutdown-timeout-ms`
/// (an hour): a drain is a restart's prelude, not a way of life.
pub const DRAIN_WINDOW_MS_MAX: u64 = 600_000;
pub const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 3_600_000;

/// After the drain window, how long the router still waits for nodes that
/// were told at its very end (their Goodbye and the flush before it).
pub const DRAIN_CLOSE_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);
