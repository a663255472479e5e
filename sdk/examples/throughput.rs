//! Messages per second one SDK client sustains: node `tp-sender` routes
//! `N` messages (at most `W` waiting for their outcome at a time) to
//! users of node `tp-holder` in the same process, and waits for every
//! outcome and every Deliver. Prints the rate and the process's CPU time.
//!
//!   cargo run --release -p imrouter-client --example throughput -- 127.0.0.1:7800 [N] [W]

use std::sync::Arc;
use std::time::Instant;

use imrouter_client::{ConnectOptions, Event, Message, Platform, Verdict};
use tokio::sync::Semaphore;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc_rusage::Rusage = unsafe { std::mem::zeroed() };
    unsafe { libc_rusage::getrusage(0, &mut usage) };
    let tv = |t: libc_rusage::Timeval| t.sec as f64 + t.usec as f64 / 1e6;
    tv(usage.utime) + tv(usage.stime)
}

/// getrusage(2), declared here to keep the SDK's dependencies small.
mod libc_rusage {
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Timeval {
        pub sec: i64,
        pub usec: i64,
    }
    #[repr(C)]
    pub struct Rusage {
        pub utime: Timeval,
        pub stime: Timeval,
        pub rest: [i64; 14],
    }
    extern "C" {
        pub fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let router = args.next().unwrap_or_else(|| "127.0.0.1:7800".into());
    let count: u32 = args.next().map_or(Ok(200_000), |n| n.parse())?;
    let window: usize = args.next().map_or(Ok(256), |n| n.parse())?;
    let (holder, mut inbox) = ConnectOptions::new("tp-holder")
        .seed(router.clone())
        .connect()
        .await?;
    let users: Vec<String> = (0..1000).map(|i| format!("tp-user-{i}")).collect();
    for user in &users {
        holder.open(user, "d0", Platform::Mobile).await?;
    }
    holder.flush().await?;
    let (sender, _sender_inbox) = ConnectOptions::new("tp-sender")
        .seed(router)
        .connect()
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let receiver = tokio::spawn(async move {
        let mut delivered = 0u32;
        while delivered < count {
            match inbox.recv().await {
                Some(Event::Deliver(_)) => delivered += 1,
                Some(_) => {}
                None => break,
            }
        }
        delivered
    });
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let room = Arc::new(Semaphore::new(window));
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let permit = room.clone().acquire_owned().await?;
        let sender = sender.clone();
        let to = users[i as usize % users.len()].clone();
        tasks.push(tokio::spawn(async move {
            let outcome = sender
                .route(Message::new("tp", "d0", to, vec![0u8; 64]))
                .await;
            drop(permit);
            outcome
                .map(|o| o.verdict == Verdict::Routed)
                .unwrap_or(false)
        }));
    }
    let mut routed = 0u32;
    for task in tasks {
        routed += u32::from(task.await?);
    }
    let delivered = receiver.await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "{count} messages, window {window}: {routed} Routed, {delivered} delivered in {elapsed:.2} s: {:.0} msg/s; SDK process CPU {cpu:.2} s ({:.0} msg per CPU second, sender and holder together)",
        f64::from(count) / elapsed,
        f64::from(count) / cpu
    );
    Ok(())
}
