//! Counters, kept per shard and gathered on demand.
//!
//! Each shard counts in a plain [`ShardMetrics`] inside its core, which only
//! its own thread touches; there is no shared atomic on the hot path. A
//! metrics request is a control message to every shard, each of which
//! answers with a snapshot; [`ShardMetrics::add`] sums them. `imrouter
//! serve` prints every shard's snapshot on SIGUSR1, and the admin port
//! serves them in Prometheus' text format ([`render`]).
//!
//! Two [`Histogram`]s per shard time the work inside the router: a Route
//! and a session operation, each from the read of its frame to the end of
//! its handling on the shard that owns its user (see
//! [`crate::core::ShardCore::settle_timing`]).

use std::fmt;

macro_rules! counters {
    (
        counters { $($(#[doc = $doc:literal])* $name:ident),* $(,)? }
        gauges { $($(#[doc = $gdoc:literal])* $gauge:ident),* $(,)? }
    ) => {
        /// One shard's counters and gauges (or their sum over shards).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ShardMetrics {
            $($(#[doc = $doc])* pub $name: u64,)*
            $($(#[doc = $gdoc])* pub $gauge: u64,)*
        }

        impl ShardMetrics {
            /// Every figure's name, kind and description, in field order.
            pub const FAMILIES: &'static [Family] = &[
                $(Family {
                    name: stringify!($name),
                    kind: Kind::Counter,
                    help: concat!($($doc),*),
                },)*
                $(Family {
                    name: stringify!($gauge),
                    kind: Kind::Gauge,
                    help: concat!($($gdoc),*),
                },)*
            ];

            /// Adds another shard's figures to these.
            pub fn add(&mut self, other: &ShardMetrics) {
                $(self.$name += other.$name;)*
                $(self.$gauge += other.$gauge;)*
            }

            /// The figures in the order of [`ShardMetrics::FAMILIES`].
            pub fn values(&self) -> Vec<u64> {
                vec![$(self.$name,)* $(self.$gauge,)*]
            }
        }

        impl fmt::Display for ShardMetrics {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for (index, (family, value)) in
                    Self::FAMILIES.iter().zip(self.values()).enumerate()
                {
                    if index > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{}={}", family.name, value)?;
                }
                Ok(())
            }
        }
    };
}

/// Whether a figure only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The name, kind and description of one of [`ShardMetrics`]' figures.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

counters! {
  counters {
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
    /// Sockets that waited longest for their Hello, closed to make room
    /// for a new one (--max-handshakes-per-shard).
    handshakes_evicted,
    /// Sockets refused at accept: --max-connections or
    /// --max-connections-per-source reached.
    sockets_refused,
    /// Draining frames sent (connections told to leave before a stop).
    drain_notices,
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
  }
  gauges {
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
    /// Forward batches waiting in this shard's inbox (a gauge).
    inbox_forward_batches,
    /// Response batches waiting in this shard's inbox (a gauge).
    inbox_response_batches,
    /// Bounce batches waiting in this shard's inbox (a gauge).
    inbox_bounce_batches,
    /// Bytes of forward batches built for other shards and not yet handed
    /// off (a gauge; readers pause while it is over its mark).
    outbox_forward_bytes,
    /// Bytes of response batches not yet handed off (a gauge).
    outbox_response_bytes,
    /// Bytes of bounce batches not yet handed off (a gauge).
    outbox_bounce_bytes,
  }
}

/// Upper bounds of the latency buckets, in nanoseconds (1 us to 1 s).
pub const LATENCY_BOUNDS_NS: [u64; 16] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

/// A latency histogram with the fixed buckets of [`LATENCY_BOUNDS_NS`],
/// plain numbers: each shard keeps its own, and the admin port sums them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `buckets[i]`: observations at most `LATENCY_BOUNDS_NS[i]` and above
    /// the bound before; the last counts those above every bound.
    pub buckets: [u64; LATENCY_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
    pub count: u64,
}

impl Histogram {
    /// Records `n` observations of `nanos` each.
    pub fn observe(&mut self, nanos: u64, n: u64) {
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.buckets[bucket] += n;
        self.sum_ns = self.sum_ns.saturating_add(nanos.saturating_mul(n));
        self.count += n;
    }

    pub fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.count += other.count;
    }
}

/// The timed work of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latencies {
    /// Routes this shard decided as the recipient's owner.
    pub route: Histogram,
    /// SessionOpens and SessionCloses this shard applied as owner.
    pub session_op: Histogram,
}

/// One shard's figures for the admin port.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardReport {
    pub metrics: ShardMetrics,
    pub latencies: Latencies,
}

/// Writes the shards' figures (index = shard) in Prometheus' text
/// exposition format 0.0.4: every name prefixed `imrouter_`, counters
/// suffixed `_total`, a `shard` label on each sample, times in seconds.
/// `extra` is written after (the router-wide figures). A shard that did
/// not answer (`None`) has no samples in this scrape, rather than zeros
/// that Prometheus would take for a counter reset.
pub fn render(out: &mut String, shards: &[Option<ShardReport>], extra: &[Sample]) {
    use std::fmt::Write as _;
    let values: Vec<Option<Vec<u64>>> = shards
        .iter()
        .map(|shard| shard.as_ref().map(|shard| shard.metrics.values()))
        .collect();
    for (index, family) in ShardMetrics::FAMILIES.iter().enumerate() {
        let (name, kind) = match family.kind {
            Kind::Counter => (format!("imrouter_{}_total", family.name), "counter"),
            Kind::Gauge => (format!("imrouter_{}", family.name), "gauge"),
        };
        let _ = writeln!(out, "# HELP {name} {}", help_text(family.help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (shard, values) in values.iter().enumerate() {
            if let Some(values) = values {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", values[index]);
            }
        }
    }
    type Pick = fn(&Latencies) -> &Histogram;
    let histograms: [(&str, &str, Pick); 2] = [
        (
            HISTOGRAM_NAMES[0],
            "Time from the read of a Route to the end of its handling by the recipient's owner shard (verdict given or Deliver queued).",
            |latencies| &latencies.route,
        ),
        (
            HISTOGRAM_NAMES[1],
            "Time from the read of a SessionOpen or SessionClose to the end of its handling by the user's owner shard.",
            |latencies| &latencies.session_op,
        ),
    ];
    for (name, help, pick) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (shard, report) in shards.iter().enumerate() {
            let Some(report) = report else { continue };
            let histogram = pick(&report.latencies);
            let mut cumulative = 0;
            for (bucket, &bound) in LATENCY_BOUNDS_NS.iter().enumerate() {
                cumulative += histogram.buckets[bucket];
                let _ = writeln!(
                    out,
                    "{name}_bucket{{shard=\"{shard}\",le=\"{}\"}} {cumulative}",
                    seconds(bound)
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "{name}_sum{{shard=\"{shard}\"}} {}",
                seconds(histogram.sum_ns)
            );
            let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", histogram.count);
        }
    }
    for sample in extra {
        let _ = writeln!(out, "# HELP {} {}", sample.name, sample.help);
        let _ = writeln!(out, "# TYPE {} {}", sample.name, sample.kind);
        let labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(key, value)| format!("{key}=\"{}\"", escape_label(value)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let _ = writeln!(out, "{}{labels} {}", sample.name, sample.value);
    }
}

/// Names of the histograms [`render`] writes (each with `_bucket`,
/// `_sum` and `_count` series).
pub const HISTOGRAM_NAMES: [&str; 2] = [
    "imrouter_route_duration_seconds",
    "imrouter_session_operation_duration_seconds",
];

/// Every series name the admin port's `/metrics` can write: each figure
/// of [`ShardMetrics`], the histograms' series, and the router-wide
/// figures of `admin` (kept in step by a test there). For checking
/// dashboards and alert rules against.
pub fn metric_names() -> Vec<String> {
    let mut names: Vec<String> = ShardMetrics::FAMILIES
        .iter()
        .map(|family| match family.kind {
            Kind::Counter => format!("imrouter_{}_total", family.name),
            Kind::Gauge => format!("imrouter_{}", family.name),
        })
        .collect();
    for histogram in HISTOGRAM_NAMES {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.push(format!("{histogram}{suffix}"));
        }
    }
    names.extend(ROUTER_WIDE_NAMES.iter().map(|name| name.to_string()));
    names
}

/// The router-wide figures the admin port adds to the shards'.
pub const ROUTER_WIDE_NAMES: [&str; 6] = [
    "imrouter_build_info",
    "imrouter_shards",
    "imrouter_shards_answering",
    "imrouter_uptime_seconds",
    "imrouter_resident_memory_bytes",
    "imrouter_draining",
];

/// A router-wide figure for [`render`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    /// "gauge" or "counter".
    pub kind: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Nanoseconds as seconds, written exactly (no float rounding).
fn seconds(nanos: u64) -> String {
    let whole = nanos / 1_000_000_000;
    let fraction = nanos % 1_000_000_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A doc comment as one line of HELP text (no newline, backslash escaped).
fn help_text(doc: &str) -> String {
    doc.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\\', "\\\\")
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_into_the_first_bucket_that_holds_the_value() {
        let mut histogram = Histogram::default();
        histogram.observe(999, 2);
        histogram.observe(1_000, 1);
        histogram.observe(1_001, 1);
        histogram.observe(2_000_000_000, 3);
        assert_eq!(histogram.buckets[0], 3);
        assert_eq!(histogram.buckets[1], 1);
        assert_eq!(histogram.buckets[LATENCY_BOUNDS_NS.len()], 3);
        assert_eq!(histogram.count, 7);
        assert_eq!(histogram.sum_ns, 999 * 2 + 1_000 + 1_001 + 6_000_000_000);
    }

    #[test]
    fn the_exposition_has_a_type_per_family_and_cumulative_buckets() {
        let mut report = ShardReport::default();
        report.metrics.routes_in = 5;
        report.metrics.sessions = 2;
        report.latencies.route.observe(1_500, 4);
        let mut text = String::new();
        render(
            &mut text,
            &[Some(report), Some(ShardReport::default()), None],
            &[],
        );
        assert!(text.contains("# TYPE imrouter_routes_in_total counter\n"));
        assert!(text.contains("imrouter_routes_in_total{shard=\"0\"} 5\n"));
        assert!(text.contains("imrouter_routes_in_total{shard=\"1\"} 0\n"));
        // A shard that did not answer has no samples (not zeros).
        assert!(!text.contains("shard=\"2\""));
        assert!(text.contains("# TYPE imrouter_sessions gauge\n"));
        assert!(text
            .contains("imrouter_route_duration_seconds_bucket{shard=\"0\",le=\"0.000001\"} 0\n"));
        assert!(text
            .contains("imrouter_route_duration_seconds_bucket{shard=\"0\",le=\"0.000002\"} 4\n"));
        assert!(
            text.contains("imrouter_route_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 4\n")
        );
        assert!(text.contains("imrouter_route_duration_seconds_sum{shard=\"0\"} 0.000006\n"));
        assert_eq!(seconds(1_000_000_000), "1");
        assert_eq!(seconds(50_000_000), "0.05");
    }
}
