//! Node connections served one after another leave nothing behind (issue
//! 9: about 210 bytes were kept per connection served, 116 MB after
//! 536,000 of them). One shard's core is driven directly, as its driver
//! would, and the heap's live bytes are counted by a global allocator: a
//! leak of even one byte per connection would show.

use std::sync::Arc;

use imrouter::config::{Config, ServeArgs};
use imrouter::core::batch::CLASSES;
use imrouter::core::directory::Directory;
use imrouter::core::{ShardCore, SocketAction};
use imrouter::time::Time;
use imrouter::wire::{Encoder, HelloFrame};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

struct Shard {
    core: ShardCore,
    now: Time,
    encoder: Encoder,
}

impl Shard {
    fn new() -> Shard {
        let mut args = ServeArgs::defaults();
        args.listen = "127.0.0.1:0".into();
        args.shards = Some(1);
        args.warmup_ms = Some(0);
        let config = Arc::new(Config::from_args(&args).expect("a valid config"));
        let directory = Arc::new(Directory::new(config.nodes_max as usize, 1));
        Shard {
            core: ShardCore::new(0, config, directory, 1, Time::from_millis(1)),
            now: Time::from_millis(1),
            encoder: Encoder::new(),
        }
    }

    fn settle(&mut self) {
        loop {
            let mut any = false;
            for class in CLASSES {
                while let Some(batch) = self.core.take_batch(0, class) {
                    self.core.handle_batch(&batch, self.now);
                    self.core.recycle_batch(batch);
                    any = true;
                }
            }
            while self.core.has_work() {
                self.core.step(self.now);
                any = true;
            }
            if !any {
                break;
            }
        }
        // (The driver takes the connections to wake after every call.)
        let mut woken = Vec::new();
        self.core.take_wakes(&mut woken);
        let _ = self.core.take_log();
    }

    fn drain(&mut self, id: imrouter::core::conns::ConnId) {
        loop {
            let n = self.core.writable(id).len();
            if n == 0 {
                break;
            }
            self.core.wrote(id, n, self.now);
            self.settle();
        }
    }

    /// A node connects (Hello), reads its Welcome, opens a session, says
    /// Goodbye and is gone; the socket is released as the driver would.
    fn serve_one(&mut self, name: &str, incarnation: u64) {
        let hello = self
            .encoder
            .hello(&HelloFrame::new(name, incarnation))
            .to_vec();
        let hello = self.core.hello(&hello).expect("a valid Hello");
        assert_eq!(self.core.place(&hello).ok(), Some(0));
        let Ok(id) = self.core.open(hello, None, self.now) else {
            panic!("refused");
        };
        self.settle();
        self.drain(id);
        let mut frames = self
            .encoder
            .session_open("user", "phone", imrouter::wire::fb::Platform::Web)
            .to_vec();
        frames.extend_from_slice(self.encoder.goodbye("done"));
        self.core.receive(id, &frames, self.now);
        self.settle();
        assert_eq!(self.core.socket_action(id), SocketAction::Flush);
        self.drain(id);
        self.core.socket_released(id, self.now);
        self.settle();
        self.now += std::time::Duration::from_micros(10);
    }
}

#[test]
fn connections_served_one_after_another_leave_nothing_behind() {
    let mut shard = Shard::new();
    // Warm up: every table and scratch buffer reaches its working size.
    for i in 0..2_000 {
        shard.serve_one(&format!("warm-{i}"), 1);
        shard.serve_one("warm", i + 1);
    }
    let before = live();
    const CONNECTIONS: u64 = 20_000;
    for i in 0..CONNECTIONS {
        // New names, and one name with new incarnations (a restart loop).
        shard.serve_one(&format!("node-{i}"), 1);
        shard.serve_one("restarting", i + 1);
    }
    let grown = live() - before;
    assert!(
        grown < 16 * 1024,
        "{grown} bytes kept after {} connections",
        2 * CONNECTIONS
    );
    assert_eq!(shard.core.conns().len(), 0);
    assert_eq!(shard.core.table().session_count(), 0);
}
