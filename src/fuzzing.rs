//! The harnesses of the fuzz targets (`fuzz/`, cargo-fuzz): each takes
//! arbitrary bytes and must never panic (nor, under the sanitizers, read
//! out of bounds). Kept in the crate so that they are built, linted and
//! tested with it; a regression found by a fuzzer becomes a test here.
//! Not an API.

use std::sync::Arc;
use std::time::Duration;

use crate::client::{ClusterConfig, ClusterNode, NodeConfig, NodeCore};
use crate::config::{Config, ServeArgs};
use crate::core::batch::CLASSES;
use crate::core::conns::ConnId;
use crate::core::directory::Directory;
use crate::core::ShardCore;
use crate::limits::FRAME_BYTES_MAX_CEILING;
use crate::time::Time;
use crate::wire::{check, Check, Request, RequestLimits, Verifier};

/// A frame as a router reads it: cut, verified, decoded into a request.
pub fn frame(data: &[u8]) {
    let verifier = Verifier::new(FRAME_BYTES_MAX_CEILING);
    let limits = RequestLimits { fanout_max: 10_000 };
    let mut rest = data;
    while let Check::Complete(len) = check(rest, FRAME_BYTES_MAX_CEILING) {
        if let Ok(frame) = verifier.verify(&rest[..len]) {
            let _ = Request::parse(frame, &limits);
        }
        rest = &rest[len..];
    }
}

/// The fast verification path never accepts a frame the flatbuffers
/// verifier refuses.
pub fn verifier_differential(data: &[u8]) {
    assert!(
        crate::wire::fuzzing::fast_path_sound(data),
        "the fast path accepted a frame the verifier refuses"
    );
}

/// A router shard alone, with three connected nodes, fed `data` as the
/// nodes' streams: records of (node, length, bytes). What it sends back
/// is drained; time moves 7 ms a record, so timers run too.
pub fn router_core(data: &[u8]) {
    let mut router = Router::new();
    let nodes: Vec<Option<ConnId>> = (0..3).map(|i| router.connect(i)).collect();
    let mut rest = data;
    while rest.len() >= 2 {
        let (node, len) = (rest[0] as usize % nodes.len(), rest[1] as usize);
        let len = len.min(rest.len() - 2);
        let bytes = &rest[2..2 + len];
        rest = &rest[2 + len..];
        if let Some(conn) = nodes[node] {
            router.core.receive(conn, bytes, router.now);
        }
        router.settle();
        router.now += Duration::from_millis(7);
        router.core.handle_timeout(router.now);
    }
}

/// A node's core, welcomed by a real router shard, then fed `data` as
/// the router's stream; and a cluster node's link, the same.
pub fn node_core(data: &[u8]) {
    let mut router = Router::new();
    let mut node = NodeCore::new(NodeConfig::new("fuzz-node", 42));
    node.connect(Time::ZERO);
    let hello = node.take_transmit();
    let Some(conn) = router.open(&hello) else {
        return;
    };
    router.settle();
    for bytes in [router.drain(conn), data.to_vec()] {
        node.receive(&bytes, router.now);
        // (After an error the core keeps answering it: stop there.)
        while let Some(Ok(_)) = node.poll_incoming() {}
    }

    let mut config = ClusterConfig::new(
        NodeConfig::new("fuzz-cluster-node", 43),
        vec!["127.0.0.1:1".into()],
    );
    config.resync_jitter = Duration::ZERO;
    let mut cluster = ClusterNode::new(config);
    let now = Time::from_millis(1);
    let due = cluster.connect_due(now);
    let Some(&(link, _)) = due.first() else {
        return;
    };
    cluster.connected(link, now);
    let hello = match cluster.link_mut(link) {
        Some(link) => link.core.take_transmit(),
        None => return,
    };
    let Some(conn) = router.open(&hello) else {
        return;
    };
    router.settle();
    let welcome = router.drain(conn);
    for bytes in [&welcome[..], data] {
        match cluster.link_mut(link) {
            Some(state) => state.core.receive(bytes, now),
            None => return,
        }
        while let Some(polled) = cluster.poll_link(link, now) {
            if polled.is_err() {
                break;
            }
        }
        while cluster.poll_outcome().is_some() {}
    }
    cluster.handle_timeout(now + Duration::from_secs(1));
}

/// One shard of a router alone, driven in memory.
struct Router {
    core: ShardCore,
    now: Time,
}

impl Router {
    fn new() -> Router {
        let mut args = ServeArgs::defaults();
        args.listen = "127.0.0.1:0".into();
        args.shards = Some(1);
        args.warmup_ms = Some(0);
        let config = Arc::new(Config::from_args(&args).expect("a valid configuration"));
        let directory = Arc::new(Directory::new(config.nodes_max as usize, 1));
        let now = Time::from_millis(1);
        Router {
            core: ShardCore::new(0, config, directory, 7, now),
            now,
        }
    }

    /// A node `i` connects (a Hello of a node core).
    fn connect(&mut self, i: usize) -> Option<ConnId> {
        let mut node = NodeCore::new(NodeConfig::new(format!("fuzz-{i}"), i as u64 + 1));
        node.connect(Time::ZERO);
        let hello = node.take_transmit();
        let conn = self.open(&hello)?;
        self.settle();
        self.drain(conn);
        Some(conn)
    }

    /// Reads a Hello (and what follows it) as the acceptor would.
    fn open(&mut self, bytes: &[u8]) -> Option<ConnId> {
        let Check::Complete(len) = check(bytes, FRAME_BYTES_MAX_CEILING) else {
            return None;
        };
        let hello = self.core.hello(&bytes[..len]).ok()?;
        self.core.place(&hello).ok()?;
        let conn = self.core.open(hello, None, self.now).ok()?;
        if bytes.len() > len {
            self.core.receive(conn, &bytes[len..], self.now);
        }
        Some(conn)
    }

    /// Runs the shard's own work until none is left (bounded).
    fn settle(&mut self) {
        for _ in 0..1000 {
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
        let mut woken = Vec::new();
        self.core.take_wakes(&mut woken);
    }

    /// What the shard would write to `conn`.
    fn drain(&mut self, conn: ConnId) -> Vec<u8> {
        let mut bytes = Vec::new();
        loop {
            let out = self.core.writable(conn);
            if out.is_empty() {
                break;
            }
            let len = out.len();
            bytes.extend_from_slice(out);
            self.core.wrote(conn, len, self.now);
        }
        bytes
    }
}

/// A node's requests of every kind, encoded (the first fuzz inputs).
pub fn node_stream() -> Vec<u8> {
    use crate::wire::{fb, FanoutFrame, PublishFrame, RouteFrame};
    // Welcomed first (a node sends its requests once live).
    let mut router = Router::new();
    let mut node = NodeCore::new(NodeConfig::new("seed", 9));
    node.connect(Time::ZERO);
    let hello = node.take_transmit();
    if let Some(conn) = router.open(&hello) {
        router.settle();
        node.receive(&router.drain(conn), router.now);
        while let Some(Ok(_)) = node.poll_incoming() {}
    }
    let _ = node.take_transmit();
    node.open_with_seq("alice", "phone", fb::Platform::Mobile, 1);
    node.open_with_seq("bob", "web", fb::Platform::Web, 2);
    node.route(
        &RouteFrame {
            message_id: 1,
            from_user: "alice",
            from_device: "phone",
            to_user: "bob",
            to_device: None,
            flags: 1,
            payload: b"hello",
        },
        Time::ZERO,
    );
    node.fanout(
        &FanoutFrame {
            message_id: 2,
            from_user: "alice",
            from_device: "phone",
            to_users: &["bob", "carol"],
            flags: 0,
            payload: b"all",
        },
        Time::ZERO,
    );
    node.subscribe("news", 3);
    node.publish(&PublishFrame {
        topic: "news",
        message_id: 4,
        from_user: "alice",
        from_device: "phone",
        from_node: "",
        flags: 0,
        payload: b"extra",
    });
    node.locate(5, "bob");
    node.broadcast(b"everyone");
    node.ping(6);
    node.sync_batch(
        1,
        &[("alice", "phone", fb::Platform::Mobile, 1)],
        true,
        &[],
        0,
    );
    node.close("alice", "phone", 3);
    node.take_transmit()
}

/// What a router sends a node after it routed for it (the first inputs
/// of `node_core`).
pub fn router_stream() -> Vec<u8> {
    let mut router = Router::new();
    let mut node = NodeCore::new(NodeConfig::new("seed-holder", 9));
    node.connect(Time::ZERO);
    let mut bytes = node.take_transmit();
    bytes.extend(node_stream());
    let Some(conn) = router.open(&bytes) else {
        return Vec::new();
    };
    router.settle();
    router.drain(conn)
}

/// Records of `router_core`'s input: `stream` cut in pieces for node 0.
pub fn as_records(stream: &[u8]) -> Vec<u8> {
    let mut records = Vec::new();
    for piece in stream.chunks(255) {
        records.push(0);
        records.push(piece.len() as u8);
        records.extend_from_slice(piece);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the first inputs of each fuzz target to `fuzz/corpus/`
    /// (`IMROUTER_FUZZ_SEEDS=1 cargo test --lib fuzzing -- --ignored`).
    #[test]
    #[ignore]
    fn write_seeds() {
        if std::env::var_os("IMROUTER_FUZZ_SEEDS").is_none() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let node = node_stream();
        let router = router_stream();
        assert!(!router.is_empty(), "the router answered");
        for (target, seed) in [
            ("frame", node.clone()),
            ("verifier_differential", node.clone()),
            ("router_core", as_records(&node)),
            ("node_core", router),
        ] {
            std::fs::create_dir_all(dir.join(target)).unwrap();
            std::fs::write(dir.join(target).join("seed"), seed).unwrap();
        }
    }

    /// The harnesses run (and do not panic) on a few inputs, among them
    /// valid frames, so that a broken harness is found before a fuzzer
    /// runs it.
    #[test]
    fn the_harnesses_run() {
        let mut encoder = crate::wire::Encoder::new();
        let route = encoder
            .route(&crate::wire::RouteFrame {
                message_id: 1,
                from_user: "a",
                from_device: "d",
                to_user: "b",
                to_device: None,
                flags: 0,
                payload: b"x",
            })
            .to_vec();
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0; 64],
            vec![0xff; 300],
            route.clone(),
            [vec![0, route.len() as u8], route.clone()].concat(),
        ];
        let inputs = [
            inputs,
            vec![node_stream(), as_records(&node_stream()), router_stream()],
        ]
        .concat();
        for input in &inputs {
            frame(input);
            verifier_differential(input);
            router_core(input);
            node_core(input);
        }
    }
}
