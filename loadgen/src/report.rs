//! What a run prints and writes: a progress line per second, the summary,
//! the JSON results, and the latency distribution as an .hgrm file.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::config::{Plan, Rate, RecipientsName};
use crate::oracle::Tally;

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub tally: Tally,
    /// Router shards (from Welcome); 1 for NATS.
    pub shards: usize,
    /// Latency in nanoseconds of measured deliveries.
    pub latency: Histogram<u64>,
    /// How late measured messages were sent after their due time (ns).
    pub send_lateness: Histogram<u64>,
    /// Churn opens and closes sent in the measured window.
    pub session_ops_measured: u64,
    /// Resident memory of the router with every session open, if asked.
    pub router_rss_bytes: Option<u64>,
    /// CPU seconds the router (or nats-server) used in the measured window,
    /// if its pid was given.
    pub router_cpu_s: Option<f64>,
    /// The part of `router_cpu_s` spent in the kernel (system time).
    pub router_system_cpu_s: Option<f64>,
    /// Sessions open when the RSS was read.
    pub sessions: u64,
    /// Protocol errors seen while running.
    pub errors: Vec<String>,
    /// Failover and restart: what happened to the connections.
    pub reconnects: Vec<String>,
}

impl Results {
    pub fn throughput(&self, plan: &Plan) -> f64 {
        if plan.duration_s > 0.0 {
            self.tally.measured_ok as f64 / plan.duration_s
        } else {
            0.0
        }
    }

    /// Messages with a right outcome per CPU second of the router: the
    /// per-core figure, independent of how busy the generator was.
    pub fn msgs_per_router_cpu_s(&self) -> Option<f64> {
        self.router_cpu_s
            .filter(|&cpu| cpu > 0.0)
            .map(|cpu| self.tally.measured_ok as f64 / cpu)
    }

    pub fn session_ops_per_s(&self, plan: &Plan) -> f64 {
        if plan.duration_s > 0.0 {
            self.session_ops_measured as f64 / plan.duration_s
        } else {
            0.0
        }
    }

    /// Latency percentile in microseconds.
    pub fn latency_us(&self, quantile: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Send lateness percentile in microseconds.
    pub fn send_lateness_us(&self, quantile: f64) -> f64 {
        if self.send_lateness.is_empty() {
            0.0
        } else {
            self.send_lateness.value_at_quantile(quantile) as f64 / 1000.0
        }
    }

    pub fn latency_max_us(&self) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            self.latency.max() as f64 / 1000.0
        }
    }

    pub fn ok(&self) -> bool {
        !self.tally.has_faults() && self.errors.is_empty()
    }
}

/// One line of progress.
pub fn progress_line(
    elapsed_s: f64,
    sent_per_s: u64,
    delivered_per_s: u64,
    p99_us: f64,
    errors: u64,
) -> String {
    format!(
        "t={elapsed_s:>5.1}s  sent/s={:>10}  delivered/s={:>10}  p99={:>8.1}us  errors={errors}",
        group(sent_per_s),
        group(delivered_per_s),
        p99_us
    )
}

/// Thousands separators, for people.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate_text(rate: Rate) -> String {
    match rate {
        Rate::PerSecond(rate) => format!("{rate}"),
        Rate::Max => "max".into(),
    }
}

/// The final summary table.
pub fn summary(plan: &Plan, results: &Results) -> String {
    let t = &results.tally;
    let mut out = String::new();
    let p = plan.population;
    let _ = writeln!(
        out,
        "{} against {} at {} ({} shards): {} nodes, {} users x {} devices{}, rate {}, {} s measured",
        plan.scenario_name(),
        plan.target_name(),
        plan.router,
        results.shards,
        p.nodes,
        group(p.users as u64),
        p.devices_per_user,
        if plan.shard_direct { ", shard-direct" } else { "" },
        rate_text(plan.rate),
        plan.duration_s
    );
    let _ = writeln!(out, "  {:<16}{:>14}", "sent", group(t.sent));
    let _ = writeln!(out, "  {:<16}{:>14}", "delivered", group(t.delivered));
    let _ = writeln!(out, "  {:<16}{:>14}", "offline", group(t.offline));
    let _ = writeln!(out, "  {:<16}{:>14}", "busy", group(t.busy));
    for (name, value) in [
        ("lost", t.lost),
        ("duplicated", t.duplicated),
        ("misrouted", t.misrouted),
        ("wrong_verdict", t.wrong_verdict),
        ("corrupted", t.corrupted),
        ("unknown", t.unknown),
        ("policy_violations", t.policy_violations),
    ] {
        let _ = writeln!(
            out,
            "  {:<16}{:>14}{}",
            name,
            group(value),
            if value > 0 { "  <-- FAULT" } else { "" }
        );
    }
    let throughput = results.throughput(plan);
    let _ = writeln!(
        out,
        "  {:<16}{:>14} msgs/s ({} per router shard)",
        "throughput",
        group(throughput as u64),
        group((throughput / results.shards.max(1) as f64) as u64)
    );
    let _ = writeln!(
        out,
        "  {:<16}p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        "latency (us)",
        results.latency_us(0.5),
        results.latency_us(0.9),
        results.latency_us(0.99),
        results.latency_us(0.999),
        results.latency_max_us()
    );
    if let (Some(cpu), Some(per_cpu)) = (results.router_cpu_s, results.msgs_per_router_cpu_s()) {
        let _ = writeln!(
            out,
            "  {:<16}{:>14} msgs per CPU second ({:.0}% of a core, {:.0}% of that in the kernel)",
            "router CPU",
            group(per_cpu as u64),
            100.0 * cpu / plan.duration_s,
            100.0 * results.router_system_cpu_s.unwrap_or(0.0) / cpu.max(f64::MIN_POSITIVE)
        );
    }
    if !results.send_lateness.is_empty() {
        let _ = writeln!(
            out,
            "  {:<16}p50 {:.1}  p99 {:.1}  p99.9 {:.1}  (the generator's share of latency)",
            "sent late (us)",
            results.send_lateness_us(0.5),
            results.send_lateness_us(0.99),
            results.send_lateness_us(0.999)
        );
    }
    if results.session_ops_measured > 0 {
        let _ = writeln!(
            out,
            "  {:<16}{:>14} ops/s",
            "session ops",
            group(results.session_ops_per_s(plan) as u64)
        );
    }
    if let Some(rss) = results.router_rss_bytes {
        let _ = writeln!(
            out,
            "  {:<16}{:>14} bytes ({:.1} bytes per session, {} sessions)",
            "router RSS",
            group(rss),
            rss as f64 / results.sessions.max(1) as f64,
            group(results.sessions)
        );
    }
    if t.link_failed > 0 || !results.reconnects.is_empty() {
        let _ = writeln!(
            out,
            "  {:<16}{:>14}  (no outcome; the sender's own connection failed right after)",
            "link_failed",
            group(t.link_failed)
        );
    }
    for line in &results.reconnects {
        let _ = writeln!(out, "  reconnect: {line}");
    }
    for error in results.errors.iter().take(10) {
        let _ = writeln!(out, "  error: {error}");
    }
    let _ = writeln!(
        out,
        "  {:<16}{}",
        "result",
        if results.ok() { "OK" } else { "FAILED" }
    );
    out
}

/// The JSON results (fields documented in the README).
pub fn json(plan: &Plan, results: &Results) -> String {
    let t = &results.tally;
    let rate = match plan.rate {
        Rate::PerSecond(rate) => format!("{rate}"),
        Rate::Max => "\"max\"".into(),
    };
    let rss = results
        .router_rss_bytes
        .map_or("null".into(), |rss| rss.to_string());
    let rss_per_session = results
        .router_rss_bytes
        .filter(|_| results.sessions > 0)
        .map_or("null".into(), |rss| {
            format!("{:.2}", rss as f64 / results.sessions as f64)
        });
    let recipients = match plan.recipients {
        RecipientsName::Uniform => "uniform",
        RecipientsName::Zipf => "zipf",
    };
    format!(
        concat!(
            "{{\n",
            "  \"scenario\": \"{}\",\n  \"target\": \"{}\",\n  \"shards\": {},\n  \"nodes\": {},\n",
            "  \"users\": {},\n  \"devices_per_user\": {},\n  \"shard_direct\": {},\n  \"ack\": {},\n",
            "  \"recipients\": \"{}\",\n  \"offline_ratio\": {},\n  \"payload_bytes\": {},\n",
            "  \"rate\": {},\n  \"duration_s\": {},\n  \"warmup_s\": {},\n",
            "  \"sent\": {},\n  \"delivered\": {},\n  \"offline\": {},\n  \"busy\": {},\n",
            "  \"lost\": {},\n  \"duplicated\": {},\n  \"misrouted\": {},\n  \"wrong_verdict\": {},\n",
            "  \"corrupted\": {},\n  \"unknown\": {},\n",
            "  \"contested_users\": {},\n  \"kicks\": {},\n  \"policy_violations\": {},\n",
            "  \"link_failed\": {},\n  \"reconnects\": {},\n",
            "  \"throughput_msgs_per_s\": {:.1},\n  \"throughput_msgs_per_s_per_shard\": {:.1},\n",
            "  \"latency_us\": {{\"p50\": {:.1}, \"p90\": {:.1}, \"p99\": {:.1}, \"p999\": {:.1}, \"max\": {:.1}}},\n",
            "  \"session_ops_per_s\": {:.1},\n  \"router_rss_bytes\": {},\n  \"rss_bytes_per_session\": {},\n",
            "  \"router_cpu_s\": {},\n  \"router_system_cpu_s\": {},\n  \"msgs_per_router_cpu_s\": {},\n",
            "  \"send_lateness_us\": {{\"p50\": {:.1}, \"p99\": {:.1}, \"p999\": {:.1}}},\n",
            "  \"sessions\": {},\n  \"errors\": {},\n  \"ok\": {}\n}}\n"
        ),
        plan.scenario_name(),
        plan.target_name(),
        results.shards,
        plan.population.nodes,
        plan.population.users,
        plan.population.devices_per_user,
        plan.shard_direct,
        plan.ack,
        recipients,
        plan.offline_ratio,
        plan.payload_bytes,
        rate,
        plan.duration_s,
        plan.warmup_s,
        t.sent,
        t.delivered,
        t.offline,
        t.busy,
        t.lost,
        t.duplicated,
        t.misrouted,
        t.wrong_verdict,
        t.corrupted,
        t.unknown,
        t.contested_users,
        t.kicks,
        t.policy_violations,
        t.link_failed,
        results.reconnects.len(),
        results.throughput(plan),
        results.throughput(plan) / results.shards.max(1) as f64,
        results.latency_us(0.5),
        results.latency_us(0.9),
        results.latency_us(0.99),
        results.latency_us(0.999),
        results.latency_max_us(),
        results.session_ops_per_s(plan),
        rss,
        rss_per_session,
        results.router_cpu_s.map_or("null".into(), |cpu| format!("{cpu:.2}")),
        results.router_system_cpu_s.map_or("null".into(), |cpu| format!("{cpu:.2}")),
        results.msgs_per_router_cpu_s().map_or("null".into(), |m| format!("{m:.1}")),
        results.send_lateness_us(0.5),
        results.send_lateness_us(0.99),
        results.send_lateness_us(0.999),
        results.sessions,
        results.errors.len(),
        results.ok(),
    )
}

/// HdrHistogram's percentile distribution text (the .hgrm format its
/// plotter reads), values in microseconds, 5 ticks per half distance.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !histogram.is_empty() {
        for value in histogram.iter_quantiles(5) {
            total += value.count_since_last_iteration();
            let quantile = value.quantile_iterated_to();
            let micros = value.value_iterated_to() as f64 / 1000.0;
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{micros:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(out, "{micros:12.3} {quantile:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            histogram.mean() / 1000.0,
            histogram.stdev() / 1000.0,
            histogram.max() as f64 / 1000.0,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    out
}

pub fn write_file(path: &Path, contents: &str) -> io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234), "1,234");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn hgrm_has_the_plotter_layout() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for latency_ns in [10_000u64, 20_000, 30_000, 1_000_000] {
            histogram.record(latency_ns).unwrap();
        }
        let text = hgrm(&histogram);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("Value"));
        assert!(lines[1].is_empty());
        assert!(text.contains("#[Max     ="));
        assert!(text.contains("Total count    =            4]"));
        let last_value_line = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
        let mut words = last_value_line.split_whitespace();
        let value: f64 = words.next().unwrap().parse().unwrap();
        assert!((value - 1000.0).abs() < 2.0, "{last_value_line}");
        assert_eq!(words.next().unwrap(), "1.000000000000");
    }
}
