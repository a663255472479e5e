//! The shard driver: one glommio executor per core, feeding its
//! [`ShardCore`] with I/O and time.
//!
//! A [`Driver`] is the per-core service (Seastar's `sharded<T>`). It owns
//! the shard's core (all state and decisions, sans-IO, in `core`) and
//! does what the core cannot: it runs the tasks that drain the inbox,
//! hand the outboxes to other shards ([`link`]), fire the core's timer,
//! run its sliced work, and it wakes connection tasks (`node`) when the
//! core says they have something to do. Everything in it is `!Send` and
//! touched by its own thread alone: no locks on the data plane.
//!
//! A message takes one of these paths (A: the sender's connection, B: the
//! recipient's owner, C: the recipient node's connection):
//!
//! ```text
//! A == B == C   read, route and write on one core (shard-direct nodes)
//! A -> B        Forward batch: B routes it (an immediate Offline or Busy
//!               verdict goes back B -> A in a Response batch)
//! B -> C        Response batch: C queues the Deliver
//! C -> A        Bounce batch: C reports the outcome when the verdict
//!               depends on it; A writes the one Status
//! ```

pub mod link;
pub mod signal;

use std::cell::{Cell, RefCell, RefMut};
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use crate::core::batch::{Class, CLASSES};
use crate::core::conns::ConnId;
use crate::core::ShardCore;
use crate::time::{Clock, Time};

use link::{Control, Inbox, ShardLink};
use signal::{Broadcast, Signal};

/// Batches of one class taken per drain round before the other classes and
/// the connection readers get a turn.
const BATCHES_PER_ROUND: usize = 8;

/// First and longest pause before retrying a hand-off to a full channel.
/// Only a congested router waits here; an idle one never arms a timer.
const FLUSH_RETRY_FIRST: Duration = Duration::from_micros(20);
const FLUSH_RETRY_MAX: Duration = Duration::from_millis(1);

/// Read buffers a shard keeps: a reader borrows one only while its read
/// completes (not while it waits), so a few serve every connection.
const READ_BUFFERS_KEPT: usize = 4;

/// The driver of one shard. See the module docs.
pub struct Driver {
    pub index: usize,
    core: RefCell<ShardCore>,
    pub clock: Clock,
    /// `links[t]` sends to shard `t`.
    pub links: Vec<ShardLink>,
    inbox: Inbox,
    /// The waker of each connection's task, by its slot (`ConnId::slot`):
    /// registered on every turn, so no hashing.
    wakers: RefCell<Vec<Option<(ConnId, Waker)>>>,
    /// Scratch for the core's wake list.
    woken: RefCell<Vec<ConnId>>,
    /// Readers waiting for outbox room.
    pub room: Broadcast,
    flush_wanted: Signal,
    inbox_ready: Signal,
    timer_changed: Signal,
    jobs_wanted: Signal,
    stopped: Signal,
    /// A connection's socket was released.
    pub sockets_changed: Broadcast,
    /// Buffers for reads, `config.read_buffer_bytes()` each.
    read_buffers: RefCell<Vec<Vec<u8>>>,
    read_buffer_bytes: usize,
    /// Sockets accepted here and still in their handshake.
    pub handshakes: Cell<usize>,
    /// Those, oldest first (with finished ones not dropped yet).
    pub handshake_queue: RefCell<std::collections::VecDeque<Rc<crate::node::Waiting>>>,
    /// Router-wide and per-source socket counts.
    pub admission: std::sync::Arc<crate::node::admission::Admission>,
    /// Sockets served by connection tasks here.
    pub sockets: Cell<usize>,
    /// The task accepting connections (dropped, closing this shard's
    /// listening socket, when the router drains or stops).
    acceptor: RefCell<Option<glommio::Task<()>>>,
}

impl Driver {
    pub fn new(
        core: ShardCore,
        clock: Clock,
        links: Vec<ShardLink>,
        inbox: Inbox,
        admission: std::sync::Arc<crate::node::admission::Admission>,
    ) -> Self {
        let read_buffer_bytes = core.config().read_buffer_bytes();
        Driver {
            index: core.index(),
            core: RefCell::new(core),
            clock,
            links,
            inbox,
            wakers: RefCell::new(Vec::new()),
            woken: RefCell::new(Vec::new()),
            room: Broadcast::default(),
            flush_wanted: Signal::default(),
            inbox_ready: Signal::default(),
            timer_changed: Signal::default(),
            jobs_wanted: Signal::default(),
            stopped: Signal::default(),
            sockets_changed: Broadcast::default(),
            read_buffers: RefCell::new(Vec::new()),
            read_buffer_bytes,
            handshakes: Cell::new(0),
            handshake_queue: RefCell::new(std::collections::VecDeque::new()),
            admission,
            sockets: Cell::new(0),
            acceptor: RefCell::new(None),
        }
    }

    /// The core, borrowed for a read-only look.
    pub fn core(&self) -> RefMut<'_, ShardCore> {
        self.core.borrow_mut()
    }

    /// Runs `f` on the core with the current time, then acts on what it
    /// produced: connections to wake, batches to hand off, sliced work,
    /// a changed timer, log lines.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut ShardCore, Time) -> R) -> R {
        let now = self.clock.now();
        let result = {
            let mut core = self.core.borrow_mut();
            let result = f(&mut core, now);
            // Times the Routes and session operations it handled (one
            // clock read per operation that had any).
            if core.timing_pending() {
                core.settle_timing(self.clock.now());
            }
            result
        };
        self.after();
        result
    }

    /// See [`Driver::with_core`].
    fn after(&self) {
        let mut woken = self.woken.borrow_mut();
        let (has_batches, has_work, deadline_changed, log) = {
            let mut core = self.core.borrow_mut();
            core.take_wakes(&mut woken);
            (
                core.has_batches(),
                core.has_work(),
                core.take_deadline_changed(),
                core.take_log(),
            )
        };
        if !woken.is_empty() {
            let mut wakers = self.wakers.borrow_mut();
            for id in woken.drain(..) {
                let Some(entry) = wakers.get_mut(id.slot()) else {
                    continue;
                };
                if entry.as_ref().is_some_and(|(held, _)| *held == id) {
                    let (_, waker) = entry.take().expect("checked");
                    waker.wake();
                }
            }
        }
        if has_batches {
            self.flush_wanted.notify();
        }
        if has_work {
            self.jobs_wanted.notify();
        }
        if deadline_changed {
            self.timer_changed.notify();
        }
        for line in log {
            emit(self.index, &line);
        }
    }

    /// Remembers the waker of `id`'s task, woken when the core wakes `id`.
    pub fn register(&self, id: ConnId, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        let slot = id.slot();
        if slot >= wakers.len() {
            wakers.resize_with(slot + 1, || None);
        }
        match &mut wakers[slot] {
            Some((held_id, held)) if *held_id == id => {
                if !held.will_wake(waker) {
                    held.clone_from(waker);
                }
            }
            entry => *entry = Some((id, waker.clone())),
        }
    }

    /// Forgets `id`'s task.
    pub fn unregister(&self, id: ConnId) {
        if let Some(entry) = self.wakers.borrow_mut().get_mut(id.slot()) {
            if entry.as_ref().is_some_and(|(held, _)| *held == id) {
                *entry = None;
            }
        }
    }

    /// A read buffer, to give back with [`Driver::give_read_buffer`].
    pub fn take_read_buffer(&self) -> Vec<u8> {
        self.read_buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; self.read_buffer_bytes])
    }

    pub fn give_read_buffer(&self, buffer: Vec<u8>) {
        let mut buffers = self.read_buffers.borrow_mut();
        if buffers.len() < READ_BUFFERS_KEPT {
            buffers.push(buffer);
        }
    }

    /// Stopping or draining: no new connection is served.
    pub fn is_shutting_down(&self) -> bool {
        let core = self.core.borrow();
        core.is_shutting_down() || core.is_draining()
    }

    /// Hands the outboxes off, retrying while a target channel is full.
    async fn run_flusher(self: Rc<Self>) {
        loop {
            self.flush_wanted.wait().await;
            let mut retry = FLUSH_RETRY_FIRST;
            loop {
                let (sent, deferred) = self.flush();
                if sent > 0 {
                    self.room.notify_all();
                    self.inbox_ready.notify();
                }
                if deferred == 0 {
                    break;
                }
                glommio::timer::sleep(retry).await;
                retry = (retry * 2).min(FLUSH_RETRY_MAX);
            }
        }
    }

    /// One hand-off attempt: (batches sent, batches whose channel was full).
    fn flush(&self) -> (u64, u64) {
        let mut core = self.core.borrow_mut();
        let (mut sent, mut deferred) = (0, 0);
        for target in 0..self.links.len() {
            for class in CLASSES {
                let Some(batch) = core.take_batch(target, class) else {
                    continue;
                };
                match self.links[target].try_send(class, batch) {
                    Ok(()) => sent += 1,
                    Err(batch) => {
                        core.untake_batch(target, class, batch);
                        deferred += 1;
                    }
                }
            }
        }
        core.count_flush(sent, deferred);
        (sent, deferred)
    }

    /// Takes batches and control messages from the inbox until it is empty,
    /// then sleeps until the doorbell rings.
    async fn run_drain(self: Rc<Self>) {
        loop {
            if self.drain_round() {
                glommio::executor().yield_now().await;
                continue;
            }
            self.inbox.doorbell.park();
            if self
                .inbox
                .has_work(|class| self.core.borrow().may_take(class))
            {
                self.inbox.doorbell.unpark();
                continue;
            }
            self.inbox_ready.wait().await;
            self.inbox.doorbell.unpark();
        }
    }

    /// One round over the inbox; returns whether anything was taken.
    fn drain_round(self: &Rc<Self>) -> bool {
        let mut worked = false;
        while let Ok(message) = self.inbox.control.try_recv() {
            self.on_control(message);
            worked = true;
        }
        for class in [Class::Bounce, Class::Response, Class::Forward] {
            for _ in 0..BATCHES_PER_ROUND {
                if !self.core.borrow().may_take(class) {
                    break;
                }
                let Ok(batch) = self.inbox.batches[class as usize].try_recv() else {
                    break;
                };
                self.with_core(|core, now| {
                    core.handle_batch(&batch, now);
                    core.recycle_batch(batch);
                });
                worked = true;
            }
        }
        worked
    }

    /// Turns doorbell bytes into a wake-up of the drain task.
    async fn run_doorbell(self: Rc<Self>, mut bell: glommio::net::UnixStream) {
        use futures_lite::AsyncReadExt;
        let mut bytes = [0u8; 64];
        while let Ok(1..) = bell.read(&mut bytes).await {
            self.inbox_ready.notify();
        }
    }

    /// Fires the core's timer.
    async fn run_timer(self: Rc<Self>) {
        loop {
            let deadline = self.core.borrow().poll_timeout();
            let wait = self.clock.until(deadline);
            if !wait.is_zero() {
                futures_lite::future::or(glommio::timer::sleep(wait), self.timer_changed.wait())
                    .await;
            }
            if self.clock.now() >= self.core.borrow().poll_timeout() {
                self.with_core(|core, now| core.handle_timeout(now));
                if self.core.borrow_mut().take_memory_released() {
                    release_free_memory();
                }
            }
        }
    }

    /// Runs the core's sliced work, yielding between slices.
    async fn run_jobs(self: Rc<Self>) {
        loop {
            self.jobs_wanted.wait().await;
            while self.with_core(|core, now| core.step(now)) {
                glommio::executor().yield_now().await;
            }
        }
    }

    fn on_control(self: &Rc<Self>, message: Control) {
        match message {
            Control::Adopt(handoff) => {
                glommio::spawn_local(crate::node::adopt(self.clone(), handoff)).detach();
            }
            Control::Metrics(reply) => {
                let _ = reply.try_send(self.metrics());
            }
            Control::Report(reply) => {
                let _ = reply.try_send(crate::metrics::ShardReport {
                    metrics: self.metrics(),
                    latencies: self.core.borrow().latencies(),
                });
            }
            Control::Health(reply) => {
                let _ = reply.try_send(self.core.borrow().health(self.clock.now()));
            }
            Control::Nodes(reply) => {
                let _ = reply.try_send(self.core.borrow().nodes_report(self.clock.now()));
            }
            Control::Shutdown => {
                self.stop_accepting();
                self.with_core(|core, now| core.shutdown(now));
                self.stopped.notify();
            }
            Control::StopAccepting => {
                self.stop_accepting();
                self.with_core(|core, _| core.refuse_new_connections());
            }
            Control::Drain { window, reason } => {
                self.stop_accepting();
                self.with_core(|core, now| core.drain(window, &reason, now));
            }
            Control::Reconfigure(config) => self.with_core(|core, _| core.reconfigure(config)),
            Control::View(view) => self.with_core(|core, now| core.apply_view(&view, now)),
            Control::Members(update) => self.with_core(|core, _| core.apply_members(&update)),
        }
    }

    /// Sockets this shard lets wait for their Hello at once.
    pub fn handshakes_max(&self) -> usize {
        self.core.borrow().config().handshakes_per_shard_max
    }

    /// Runs `task` as this shard's acceptor (see `stop_accepting`).
    pub fn set_acceptor(&self, task: glommio::Task<()>) {
        *self.acceptor.borrow_mut() = Some(task);
    }

    /// Cancels the acceptor: its listening socket closes with it (once
    /// every shard's is closed, new connections are refused by the kernel
    /// rather than queued for a router that will not serve them).
    fn stop_accepting(&self) {
        drop(self.acceptor.borrow_mut().take());
    }

    /// The core's counters and gauges, with the inbox's depths.
    fn metrics(&self) -> crate::metrics::ShardMetrics {
        let mut metrics = self.core.borrow().snapshot();
        let depth = |class: Class| self.inbox.batches[class as usize].len() as u64;
        metrics.inbox_forward_batches = depth(Class::Forward);
        metrics.inbox_response_batches = depth(Class::Response);
        metrics.inbox_bounce_batches = depth(Class::Bounce);
        metrics
    }

    /// Runs the shard's tasks until a `Shutdown` control message arrives,
    /// then waits (bounded) for its connections to close.
    pub async fn run(self: Rc<Self>, bell: glommio::net::UnixStream) {
        glommio::spawn_local(self.clone().run_drain()).detach();
        glommio::spawn_local(self.clone().run_flusher()).detach();
        glommio::spawn_local(self.clone().run_doorbell(bell)).detach();
        glommio::spawn_local(self.clone().run_timer()).detach();
        glommio::spawn_local(self.clone().run_jobs()).detach();
        self.stopped.wait().await;
        let all_closed = async {
            self.sockets_changed
                .wait_until(|| self.sockets.get() == 0)
                .await
        };
        let deadline = glommio::timer::sleep(crate::limits::SHUTDOWN_GRACE);
        futures_lite::future::or(all_closed, deadline).await;
        self.stop_accepting();
    }
}

/// Writes one of the core's log lines with its fields.
fn emit(shard: usize, line: &crate::core::LogLine) {
    use crate::core::LogLevel;
    let node = line.node.as_deref();
    let incarnation = line
        .incarnation
        .map(|incarnation| format!("{incarnation:#x}"));
    let incarnation = incarnation.as_deref();
    let reason = line.reason.as_deref();
    let event = line.event;
    match line.level {
        LogLevel::Warn => {
            tracing::warn!(shard, event, node, incarnation, reason, "{}", line.text)
        }
        LogLevel::Info => {
            tracing::info!(shard, event, node, incarnation, reason, "{}", line.text)
        }
    }
}

/// Returns the allocator's free pages to the system. Freed memory in the
/// middle of glibc's heap stays resident until then: after a burst of
/// connections or sessions the router's RSS would stay at its peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
