//! The lost wake-up patched in third_party/glommio (IMROUTER-PATCH.md;
//! upstream: glommio/glommio#53), reproduced. With a preempt timer of tens
//! of microseconds the timer often fires between reaping I/O and running
//! the tasks that I/O woke; unpatched, the executor then takes the preempted
//! turn for an idle one and parks with runnable tasks and nothing left to
//! wake it. Unpatched, each case below hangs within its first few hundred
//! turns; patched, each takes well under a second.
//!
//! (A timer of a few nanoseconds, as upstream's reproducer uses, does not
//! separate the two here: reaping I/O takes longer than the timer, so it
//! fires before every turn and even the patched executor never runs a
//! task, a livelock rather than a hang.)

use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

/// Runs `work` on a fresh executor with `preempt` as its preempt timer, on
/// a thread of its own; fails if it has not finished by the deadline (a
/// hung executor is left behind, parked).
fn finishes(what: &str, preempt: Duration, work: fn(&LocalExecutor)) {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 20)
            .preempt_timer(preempt)
            .make()
            .expect("an executor");
        work(&executor);
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(20)).is_ok(),
        "lost wake-up: {what} never finished with a {preempt:?} preempt timer"
    );
}

#[test]
fn tasks_woken_by_io_run_even_when_the_preempt_timer_fires_first() {
    for micros in [20, 50] {
        let preempt = Duration::from_micros(micros);
        // The executor's main task is woken by the reactor: upstream's case.
        finishes("1,000 empty runs", preempt, |executor| {
            for _ in 0..1_000 {
                executor.run(async {});
            }
        });
        // Each timer's completion is reaped by the executor and wakes the
        // task, the step the race loses.
        finishes("2,000 timer sleeps", preempt, |executor| {
            executor.run(async {
                for _ in 0..2_000 {
                    glommio::timer::sleep(Duration::from_micros(1)).await;
                }
            });
        });
    }
}
