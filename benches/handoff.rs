//! Cross-core hand-off: a batch sent from one pinned glommio executor to
//! another over the router's link (bounded crossbeam channel + doorbell)
//! and sent back. Measures the round trip of one batch of 256 entries
//! (about a read's worth of small Routes), including the wake-up of a
//! parked receiver, which is how an idle shard is reached.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::AsyncReadExt;
use imrouter::core::batch::{push_entry, Class, EntryHeader, EntryKind};
use imrouter::shard::link::{self, Inbox, ShardLink};
use imrouter::table::NodeId;

const ENTRIES: u64 = 256;

/// Waits for a batch on `inbox`'s forward channel, parking on the doorbell
/// like a shard does.
async fn receive(inbox: &Inbox, bell: &mut glommio::net::UnixStream) -> Vec<u8> {
    loop {
        if let Ok(batch) = inbox.batches[Class::Forward as usize].try_recv() {
            return batch;
        }
        inbox.doorbell.park();
        if !inbox.batches[Class::Forward as usize].is_empty() {
            inbox.doorbell.unpark();
            continue;
        }
        let mut byte = [0u8; 64];
        let _ = bell.read(&mut byte).await;
        inbox.doorbell.unpark();
    }
}

fn bell_of(inbox: &mut Inbox) -> glommio::net::UnixStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let bell = std::mem::replace(
        &mut inbox.bell,
        std::os::unix::net::UnixStream::pair().unwrap().0,
    );
    // SAFETY: the doorbell's read end moves into the glommio stream.
    unsafe { glommio::net::UnixStream::from_raw_fd(bell.into_raw_fd()) }
}

fn executor(cpu: usize) -> glommio::LocalExecutorBuilder {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .io_memory(1 << 20)
        .preempt_timer(imrouter::limits::PREEMPT_TIMER)
}

fn handoff(c: &mut Criterion) {
    let cpus = imrouter::config::available_cpus();
    let (cpu_a, cpu_b) = (cpus[0], *cpus.last().unwrap());
    let (links, mut inboxes) = link::links(2).unwrap();
    let mut inbox_b = inboxes.pop().unwrap();
    let mut inbox_a = inboxes.pop().unwrap();
    let (requests_tx, requests_rx) = mpsc::channel::<u64>();
    let (results_tx, results_rx) = mpsc::channel::<Duration>();

    // B echoes every batch back to A.
    let links_b: Vec<ShardLink> = links.clone();
    let echo = executor(cpu_b)
        .spawn(move || async move {
            let mut bell = bell_of(&mut inbox_b);
            loop {
                let batch = receive(&inbox_b, &mut bell).await;
                if batch.is_empty() {
                    return;
                }
                let mut batch = batch;
                while let Err(back) = links_b[0].try_send(Class::Forward, batch) {
                    batch = back;
                    glommio::executor().yield_now().await;
                }
            }
        })
        .unwrap();
    // A sends a batch to B and waits for it, `iterations` times.
    let links_a = links.clone();
    let driver = executor(cpu_a)
        .spawn(move || async move {
            let mut bell = bell_of(&mut inbox_a);
            let mut batch = Vec::new();
            for i in 0..ENTRIES {
                let header = EntryHeader::new(EntryKind::Route, NodeId(i as u32), 1);
                push_entry(&mut batch, &header, &[0u8; 100]);
            }
            while let Ok(iterations) = requests_rx.recv() {
                let start = Instant::now();
                for _ in 0..iterations {
                    let mut outgoing = batch.clone();
                    while let Err(back) = links_a[1].try_send(Class::Forward, outgoing) {
                        outgoing = back;
                        glommio::executor().yield_now().await;
                    }
                    let back = receive(&inbox_a, &mut bell).await;
                    assert_eq!(back.len(), batch.len());
                }
                results_tx.send(start.elapsed()).unwrap();
            }
            let _ = links_a[1].try_send(Class::Forward, Vec::new());
        })
        .unwrap();

    let mut group = c.benchmark_group("cross_core_handoff");
    group.throughput(Throughput::Elements(ENTRIES));
    group.bench_function("batch_256_round_trip", |b| {
        b.iter_custom(|iterations| {
            requests_tx.send(iterations).unwrap();
            results_rx.recv().unwrap()
        })
    });
    group.finish();
    drop(requests_tx);
    driver.join().unwrap();
    echo.join().unwrap();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
