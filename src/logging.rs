//! The router's log: `tracing` events, written to standard error by
//! `tracing-subscriber` as text or JSON lines, filtered by a level that
//! SIGHUP can change.
//!
//! What is logged at `info`: the router's start and stop, each node
//! connection's connect, resume and disconnect (with node name,
//! incarnation and reason), membership events, suspensions and their end,
//! and the cluster's changes (registration, map epochs, fencing). Refused
//! connections are `warn`. Nothing is logged per message at `info` or
//! `debug`; the shard cores' lines are produced in their state machines
//! and written by their drivers (`shard`), at most `LOG_LINES_MAX` per
//! operation.

use std::sync::OnceLock;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-30T14:00:00.000000Z  INFO message key=value ...`
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message and fields.
    Json,
}

/// The filter in force, replaceable at run time.
static FILTER: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Checks a level: `error`, `warn`, `info`, `debug`, `trace` or `off`, or
/// per-module directives such as `info,imrouter::cluster=debug`.
pub fn parse_level(level: &str) -> Result<Targets, String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let level = level.trim();
    if level.is_empty() {
        return Err("the log level is empty".into());
    }
    // (`Targets` would take a bare word as a module name, logging it all.)
    for directive in level.split(',') {
        let word = directive.rsplit('=').next().unwrap_or("").trim();
        if !LEVELS.contains(&word.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "log level {level:?}: {directive:?} is not one of {} (or MODULE=LEVEL)",
                LEVELS.join(", ")
            ));
        }
    }
    level
        .parse::<Targets>()
        .map_err(|error| format!("log level {level:?}: {error}"))
}

/// Installs the log for this process (once; a second call fails).
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let (filter, handle) = reload::Layer::new(parse_level(level)?);
    let text = (format == LogFormat::Text).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false)
    });
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|error| format!("the log: {error}"))?;
    let _ = FILTER.set(handle);
    Ok(())
}

/// Whether `init` installed the log.
pub fn is_installed() -> bool {
    FILTER.get().is_some()
}

/// Changes the level of the log `init` installed.
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = parse_level(level)?;
    let handle = FILTER.get().ok_or("the log is not installed")?;
    handle
        .reload(filter)
        .map_err(|error| format!("the log: {error}"))
}

/// For tests: the router's log lines go to the test's captured output
/// (shown when it fails). Level `IMROUTER_TEST_LOG`, else `info`. Calling
/// it again does nothing.
pub fn init_for_tests() {
    let level = std::env::var("IMROUTER_TEST_LOG").unwrap_or_else(|_| "info".into());
    let filter = parse_level(&level).unwrap_or_else(|_| Targets::new());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_test_writer()
                .with_ansi(false)
                .with_target(false),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_parse_and_nonsense_does_not() {
        assert!(parse_level("info").is_ok());
        assert!(parse_level("warn,imrouter::cluster=debug").is_ok());
        assert!(parse_level("off").is_ok());
        assert!(parse_level("").is_err());
        assert!(parse_level("loud").is_err());
    }
}
