//! Heap bytes per session and per topic, by id length, counted by a global
//! allocator that tracks live bytes (the allocator's own per-block overhead,
//! 8 to 16 bytes with glibc, is not counted), and what a table keeps after
//! a burst, before and after `shrink`.
//!
//!   cargo bench --bench memory
//!
//! The figures go to BENCHMARKS.md and to the docs of `--max-sessions` and
//! `--max-topics` in src/limits.rs.

use imrouter::table::topics::Topics;
use imrouter::table::{LoginPolicy, NodeId, Table, TableLimits};

#[path = "../tests/common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

/// An id of exactly `len` bytes, distinct for each `i`.
fn id(prefix: &str, i: usize, len: usize) -> Vec<u8> {
    let mut id = format!("{prefix}{i}").into_bytes();
    assert!(id.len() <= len, "{len} bytes cannot hold {prefix}{i}");
    id.resize(len, b'.');
    id
}

fn limits(sessions: usize) -> TableLimits {
    TableLimits {
        sessions_max: sessions * 2,
        sessions_per_user_max: 16,
        nodes_max: 64,
        login_policy: LoginPolicy::AllowAll,
    }
}

/// Bytes per session with `users` users of `devices` sessions each.
fn sessions(users: usize, devices: usize, user_len: usize, device_len: usize) -> (f64, f64, f64) {
    let before = live();
    let mut table = Table::new(limits(users * devices));
    let device_ids: Vec<Vec<u8>> = (0..devices).map(|d| id("d", d, device_len)).collect();
    for u in 0..users {
        let user = id("u", u, user_len);
        for (d, device) in device_ids.iter().enumerate() {
            table.open(
                &user,
                device,
                1,
                NodeId((u % 64) as u32),
                (u * devices + d) as u64,
            );
        }
    }
    let count = (users * devices) as f64;
    let full = (live() - before) as f64 / count;
    for u in 0..users {
        let user = id("u", u, user_len);
        for device in &device_ids {
            table.close(&user, device, NodeId((u % 64) as u32), u64::MAX);
        }
    }
    let emptied = (live() - before) as f64 / count;
    table.shrink();
    let shrunk = (live() - before) as f64;
    drop(table);
    (full, emptied, shrunk)
}

/// Bytes per topic with `subscribers` nodes each, ids of `len` bytes.
fn topics(count: usize, subscribers: usize, len: usize) -> (f64, f64) {
    let before = live();
    let mut topics = Topics::new(count * 2);
    for t in 0..count {
        let topic = id("t", t, len);
        for node in 0..subscribers {
            topics.subscribe(&topic, NodeId(node as u32), 1).unwrap();
        }
    }
    let full = (live() - before) as f64 / count as f64;
    for node in 0..subscribers {
        topics.purge_node(NodeId(node as u32));
    }
    topics.shrink();
    let shrunk = (live() - before) as f64;
    drop(topics);
    (full, shrunk)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too,
    // briefly.
    let quick = std::env::args().any(|arg| arg == "--test") || cfg!(debug_assertions);
    let scale = if quick { 10 } else { 1 };
    println!("sessions: heap bytes each (200,000 sessions; 1 device per user unless said)");
    println!("| user id | device id | devices/user | bytes/session | emptied | after shrink |");
    println!("|---|---|---|---|---|---|");
    for (user_len, device_len, devices) in [
        (8, 5, 1),
        (16, 5, 1),
        (16, 16, 1),
        (16, 16, 4),
        (36, 36, 1),
        (64, 32, 1),
        (255, 128, 1),
    ] {
        let users = 200_000 / devices / scale;
        let (full, emptied, shrunk) = sessions(users, devices, user_len, device_len);
        println!(
            "| {user_len} B | {device_len} B | {devices} | {full:.0} | {emptied:.0} | {shrunk:.0} B in all |"
        );
    }
    println!();
    println!("topics: heap bytes each (100,000 topics)");
    println!("| topic id | subscribed nodes | bytes/topic | after purge + shrink |");
    println!("|---|---|---|---|");
    for (len, subscribers) in [(16, 1), (16, 4), (64, 1), (255, 1)] {
        let (full, shrunk) = topics(100_000 / scale, subscribers, len);
        println!("| {len} B | {subscribers} | {full:.0} | {shrunk:.0} B in all |");
    }
}
