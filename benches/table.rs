//! Location table and slot function costs with 1M sessions of 16-byte ids.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imrouter::placement::slot_for_user;
use imrouter::table::{LoginPolicy, NodeId, Table, TableLimits};

const SESSIONS: usize = 1_000_000;

fn user(i: usize) -> [u8; 16] {
    let mut id = *b"user-00000000000";
    let digits = format!("{i:011}");
    id[5..].copy_from_slice(digits.as_bytes());
    id
}

fn filled_table() -> Table {
    let mut table = Table::new(TableLimits {
        sessions_max: SESSIONS * 2,
        sessions_per_user_max: 16,
        nodes_max: 64,
        login_policy: LoginPolicy::SameDeviceKick,
    });
    for i in 0..SESSIONS {
        table.open(&user(i), b"phone", 1, NodeId((i % 64) as u32), i as u64);
    }
    table
}

fn table_ops(c: &mut Criterion) {
    let mut table = filled_table();
    let users: Vec<[u8; 16]> = (0..SESSIONS).map(user).collect();
    let mut group = c.benchmark_group("table_1m_sessions");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            // A stride that visits users in a cache-unfriendly order.
            i = (i + 7_919) % SESSIONS;
            black_box(table.sessions(&users[i]).next().map(|s| s.node))
        })
    });
    let mut j = 0usize;
    group.bench_function("open_then_close", |b| {
        b.iter(|| {
            j = (j + 7_919) % SESSIONS;
            let node = NodeId(1);
            table.open(&users[j], b"tablet", 4, node, 0);
            black_box(table.close(&users[j], b"tablet", node, 0))
        })
    });
    group.finish();
}

/// Inserting 1M sessions into an empty table, then removing them: the
/// per-operation cost including the table's growth.
fn insert_then_remove(c: &mut Criterion) {
    let users: Vec<[u8; 16]> = (0..SESSIONS).map(user).collect();
    let mut group = c.benchmark_group("table_1m_sessions");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SESSIONS as u64));
    group.bench_function("insert_1m", |b| {
        b.iter_batched(
            || {
                Table::new(TableLimits {
                    sessions_max: SESSIONS * 2,
                    sessions_per_user_max: 16,
                    nodes_max: 64,
                    login_policy: LoginPolicy::SameDeviceKick,
                })
            },
            |mut table| {
                for (i, id) in users.iter().enumerate() {
                    table.open(id, b"phone", 1, NodeId((i % 64) as u32), i as u64);
                }
                table
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.bench_function("remove_1m", |b| {
        b.iter_batched(
            filled_table,
            |mut table| {
                for (i, id) in users.iter().enumerate() {
                    table.close(id, b"phone", NodeId((i % 64) as u32), 0);
                }
                table
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn slot_function(c: &mut Criterion) {
    let id = user(42);
    c.bench_function("slot_for_user_16_bytes", |b| {
        b.iter(|| black_box(slot_for_user(black_box(&id))))
    });
}

criterion_group!(benches, table_ops, insert_then_remove, slot_function);
criterion_main!(benches);
