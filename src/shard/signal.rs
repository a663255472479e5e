//! Wake-ups between tasks of one shard (never across threads).
//!
//! glommio tasks of one executor share a thread, so these are plain `Cell`s:
//! no atomics, no locks. Cross-core wake-ups are the doorbell in `link`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Wakes one waiting task. A notification with nobody waiting is kept, so
/// the next `wait` returns at once; several notifications collapse into one.
#[derive(Default)]
pub struct Signal {
    notified: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Waits for a notification and consumes it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.notified.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Wakes every waiting task when some shared condition may have changed.
/// Waiters re-check their condition after each wake-up.
#[derive(Default)]
pub struct Broadcast {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Broadcast {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Wakes `waker` at the next `notify_all`.
    pub fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Waits for the next `notify_all` (always yields at least once).
    pub async fn notified(&self) {
        let seen = self.generation.get();
        poll_fn(|cx| {
            if self.generation.get() != seen {
                Poll::Ready(())
            } else {
                let mut wakers = self.wakers.borrow_mut();
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }

    /// Waits until `ready()` holds, re-checking it after every notification.
    pub async fn wait_until(&self, mut ready: impl FnMut() -> bool) {
        while !ready() {
            self.notified().await;
        }
    }
}
