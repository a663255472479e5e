//! The SDK against three routers and a real etcd (Debian's etcd-server;
//! skipped when missing, and when the router binary was built without
//! `--features cluster`): a router is killed while one node keeps
//! sending to another's users, and the application sees every message
//! once, each with its final outcome Routed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use imrouter::cluster::local::{self, Etcd, RouterOptions, RouterProcess};
use imrouter_client::{ConnectOptions, Event, Message, Platform};

fn router_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("imrouter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_in_a_cluster_loses_nothing() {
    let Some(binary) = local::etcd_binary() else {
        eprintln!("skipped: no etcd binary (apt-get install etcd-server)");
        return;
    };
    if !router_binary().exists() {
        eprintln!("skipped: no imrouter binary next to the tests (cargo build --features cluster)");
        return;
    }
    let etcd = Etcd::start(binary).expect("etcd starts");
    let start = |name: &str| {
        RouterProcess::start(&RouterOptions {
            binary: router_binary(),
            name: name.to_owned(),
            cluster: "sdk-test".into(),
            etcd: Some(etcd.url.clone()),
            shards: 1,
            lease_ttl_ms: 2000,
            extra: [
                "--rebalance-batch-slots",
                "8192",
                "--rebalance-interval-ms",
                "100",
            ]
            .map(String::from)
            .to_vec(),
            cpus: None,
            netns: None,
            listen: None,
        })
    };
    let mut routers = Vec::new();
    for name in ["s1", "s2", "s3"] {
        match start(name) {
            Ok(router) => routers.push(router),
            Err(error) => {
                eprintln!("skipped: the router did not start with the cluster flags ({error}); build it with --features cluster");
                return;
            }
        }
    }
    let seeds: Vec<String> = routers.iter().map(|r| r.addr.clone()).collect();
    let connect = |name: &'static str| {
        let mut options = ConnectOptions::new(name).unknown_retries(12);
        for seed in &seeds {
            options = options.seed(seed.clone());
        }
        options.connect()
    };
    let (sender, _sender_inbox) = connect("sender").await.expect("sender connects");
    let (holder, mut holder_inbox) = connect("holder").await.expect("holder connects");
    // Until the three routers share the slots (rebalancing, a batch per
    // 100 ms) the map moves; the node follows it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    for user in &users {
        holder.open(user, "phone", Platform::Mobile).await.unwrap();
    }
    holder.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen = tokio::spawn(async move {
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        while let Some(event) = holder_inbox.recv().await {
            if let Event::Deliver(delivery) = event {
                *seen.entry(delivery.payload).or_default() += 1;
            }
        }
        seen
    });
    let mut sends = Vec::new();
    for i in 0..600u32 {
        let sender = sender.clone();
        let to = users[i as usize % users.len()].clone();
        sends.push(tokio::spawn(async move {
            sender
                .route(Message::new("s", "d", to, i.to_be_bytes().to_vec()))
                .await
        }));
        if i == 200 {
            routers[1].kill();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    let mut resent = 0;
    for send in sends {
        let outcome = send.await.unwrap().expect("an outcome");
        *verdicts
            .entry(format!("{:?}", outcome.verdict))
            .or_default() += 1;
        resent += usize::from(outcome.sends > 1);
    }
    assert_eq!(verdicts.get("Routed"), Some(&600), "{verdicts:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.close().await.unwrap();
    let seen = seen.await.unwrap();
    assert_eq!(seen.len(), 600, "every message seen");
    assert!(seen.values().all(|&n| n == 1), "each once: {seen:?}");
    eprintln!("router kill in a cluster: {resent} of 600 messages sent more than once");
}
