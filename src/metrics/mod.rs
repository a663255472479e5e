//! Counters, kept per shard and gathered on demand.
//!
//! Each shard counts in a plain [`ShardMetrics`] inside its core, which only
//! its own thread touches; there is no shared atomic on the hot path. A
//! metrics request is a control message to every shard, each of which
//! answers with a snapshot; [`ShardMetrics::add`] sums them. `imrouter
//! serve` prints every shard's snapshot on SIGUSR1.

use std::fmt;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One shard's counters and gauges (or their sum over shards).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ShardMetrics {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl ShardMetrics {
            /// Adds another shard's figures to these.
            pub fn add(&mut self, other: &ShardMetrics) {
                $(self.$name += other.$name;)*
            }
        }

        impl fmt::Display for ShardMetrics {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                $(
                    if !first { f.write_str(" ")?; }
                    first = false;
                    write!(f, "{}={}", stringify!($name), self.$name)?;
                )*
                let _ = first;
                Ok(())
            }
        }
    };
}

counters! {
    /// Routes answered Moved: another router owns the recipient's slot.
    routes_moved,
    /// Routes answered Unknown because the slot is fenced, handed over or
    /// on another shard (not the warm-up's or a rebuild's "no session").
    routes_unknown,
    /// Moved frames: session, topic and Locate requests not served here.
    moved_out,
    /// Sessions dropped because their slot went to another router.
    sessions_dropped_moved,
    /// Topics dropped because their slot went to another router.
    topics_dropped_moved,
    /// Slot map frames pushed to nodes.
    maps_pushed,
    /// A Fanout's recipients in slots this router did not serve (listed in
    /// `moved_users` for the sender to send again).
    fanout_recipients_moved,
    /// Node connections that completed the Hello/Welcome handshake here.
    connections_opened,
    /// Node connections closed here, for any reason.
    connections_closed,
    /// Connections closed with an Error frame because of what the node sent.
    connections_refused,
    /// Connections closed because the node stopped reading (SlowConsumer).
    connections_slow,
    /// Connections closed because the node was silent (NodeTimeout).
    connections_timed_out,
    /// Connections the node closed with Goodbye.
    connections_goodbye,
    /// Connections lost without a Goodbye whose stream was suspended
    /// (--reconnect-grace-ms).
    connections_suspended,
    /// Connections that took over a suspended (or replaced) stream.
    connections_resumed,
    /// Suspended connections given up: the grace ran out.
    suspensions_expired,
    /// Suspended connections given up because the park filled up.
    suspensions_park_full,
    /// Bytes queued again for resuming connections (unacknowledged plus
    /// parked).
    resume_bytes_replayed,
    /// Message outcomes answered not delivered because a suspended
    /// connection was given up.
    parked_messages_failed,
    /// Ack frames from nodes.
    acks_in,
    /// Ack frames to nodes (of their own stream).
    acks_out,
    /// Pings the router sent to quiet connections.
    pings_sent,
    /// Locate queries answered by this shard (as the user's owner).
    locates,
    /// Sessions removed by the login policy when another one opened.
    sessions_evicted,
    /// SessionCloses ignored because the node had opened the session again
    /// with a larger seq.
    session_closes_stale,
    /// Carbon copies (Deliver frames to a sender's other devices) sent.
    carbons_out,
    /// Carbon copies skipped: the node was congested or gone.
    carbons_skipped,
    /// Fanout frames read from nodes on this shard.
    fanouts_in,
    /// Fanout Delivers sent (one per destination node per Fanout).
    fanout_delivers_out,
    /// Fanout recipients reported offline to their senders.
    fanout_recipients_offline,
    /// Publish frames applied by this shard (as the topic's owner).
    publishes,
    /// Publish copies sent to subscribed nodes by this shard.
    publish_copies_out,
    /// Subscribes refused because the topic table was full.
    subscribes_refused,
    /// Session snapshots (SessionSync) committed and acknowledged.
    syncs_committed,
    /// Sessions removed because a snapshot did not list them.
    sessions_removed_by_sync,
    /// Broadcast frames read from nodes on this shard.
    broadcasts_in,
    /// Broadcast copies queued to nodes by this shard.
    broadcast_copies_out,
    /// NodeEvent copies queued to nodes by this shard.
    node_event_copies_out,
    /// Connections handed to another shard after their Hello.
    connections_handed_off,
    /// Frames read from nodes.
    frames_in,
    /// Bytes read from nodes.
    bytes_in,
    /// Bytes written to nodes.
    bytes_out,
    /// Routes read from nodes on this shard.
    routes_in,
    /// Routes this shard, as owner, queued to at least one node.
    routes_routed,
    /// Routes this shard, as owner, answered `Offline`.
    routes_offline,
    /// Routes this shard, as owner, answered `Busy`.
    routes_busy,
    /// Routes refused at ingress (`Rejected`).
    routes_rejected,
    /// Deliver frames queued to connections on this shard.
    delivers_out,
    /// Delivers that found their connection gone (answered `NodeGone`).
    delivers_node_gone,
    /// Status and Kick frames whose node had disconnected.
    frames_undeliverable,
    /// Session opens applied by this shard as owner.
    session_opens,
    /// Session closes applied by this shard as owner.
    session_closes,
    /// Kicks sent.
    kicks,
    /// Sessions dropped because their node disconnected or restarted.
    sessions_purged,
    /// Cross-core batches sent.
    batches_sent,
    /// Cross-core batches received.
    batches_received,
    /// Hand-offs that found the target channel full and were retried.
    batches_deferred,
    /// Fan-out copies (Broadcast, Publish) held for a congested connection
    /// until it had room, instead of dropping it or the copy.
    copies_held,
    /// Held copies dropped because their connection ended.
    copies_dropped,
    /// Times a connection's reader was paused (backpressure or budget).
    reads_paused,
    /// Connections whose node acknowledged nothing for --node-timeout-ms
    /// while bytes waited for an Ack.
    ack_timeouts,
    /// Connections closed because their node read nothing for
    /// --node-timeout-ms while bytes waited.
    write_stalls,
    /// Sessions held by this shard (a gauge, filled in by the snapshot).
    sessions,
    /// Sessions of departed nodes not purged yet (a gauge).
    sessions_dead,
    /// Topics owned by this shard (a gauge).
    topics,
    /// Bytes of fan-out copies held for congested connections (a gauge).
    held_copy_bytes,
    /// Fanouts this shard coordinates (a gauge).
    fanout_jobs,
    /// Free stream chunks kept for reuse (a gauge).
    pool_chunks,
    /// Users with a session in this shard (a gauge).
    users,
    /// Node connections open on this shard (a gauge).
    connections_open,
    /// Batches waiting in this shard's inbox, per class (gauges).
    inbox_forward_batches,
    inbox_response_batches,
    inbox_bounce_batches,
    /// Bytes built for other shards and not yet handed off, per class
    /// (gauges; readers pause while forward or response is over its mark).
    outbox_forward_bytes,
    outbox_response_bytes,
    outbox_bounce_bytes,
}
