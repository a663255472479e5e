//! The SDK against a real router process: sessions, routing with final
//! outcomes, Fanout, the inbox; and a router restart while a node keeps
//! sending, with no message lost or seen twice by the application.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imrouter_client::{ConnectOptions, Event, Message, Platform, Reason, Verdict};

/// The `imrouter` binary of this build (built if missing).
fn router_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let router = dir.join("imrouter");
    if !router.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--package", "imrouter", "--bin", "imrouter"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the imrouter binary failed");
    }
    router
}

struct Router(Child);

impl Router {
    fn start(addr: &str) -> Router {
        let child = Command::new(router_binary())
            .args([
                "serve",
                "--shards",
                "2",
                "--admin-listen",
                "127.0.0.1:0",
                "--listen",
                addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the router starts");
        // (Killed and reaped when dropped, even when it never listens.)
        let router = Router(child);
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return router;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the router did not listen on {addr}");
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

async fn next_delivery(inbox: &mut imrouter_client::Inbox) -> Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("an event in time")
            .expect("the inbox is open");
        if !matches!(event, Event::NodeEvent { .. } | Event::Router { .. }) {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_fanouts_and_the_inbox() {
    let addr = free_addr();
    let _router = Router::start(&addr);
    let (alice_node, _alice_inbox) = ConnectOptions::new("node-a")
        .seed(addr.clone())
        .connect()
        .await
        .expect("node-a connects");
    let (bob_node, mut bob_inbox) = ConnectOptions::new("node-b")
        .seed(addr.clone())
        .connect()
        .await
        .expect("node-b connects");
    bob_node
        .open("bob", "phone", Platform::Mobile)
        .await
        .unwrap();
    bob_node.open("carol", "web", Platform::Web).await.unwrap();
    bob_node.flush().await.unwrap();
    // The opens are written; the Routes come from another node, on
    // another connection: give the router a moment to apply the opens.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let outcome = alice_node
        .route(Message::new("alice", "laptop", "bob", b"hi bob".to_vec()))
        .await
        .unwrap();
    assert_eq!(outcome.verdict, Verdict::Routed, "{outcome:?}");
    match next_delivery(&mut bob_inbox).await {
        Event::Deliver(delivery) => {
            assert_eq!(delivery.to_user, "bob");
            assert_eq!(delivery.from_user, "alice");
            assert_eq!(delivery.devices, ["phone"]);
            assert_eq!(delivery.payload, b"hi bob");
        }
        other => panic!("expected a Deliver, got {other:?}"),
    }

    let outcome = alice_node
        .route(Message::new("alice", "laptop", "nobody", b"?".to_vec()))
        .await
        .unwrap();
    assert_eq!(outcome.verdict, Verdict::Offline, "{outcome:?}");

    let sessions = alice_node
        .locate("bob", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        (sessions[0].node.as_str(), sessions[0].device.as_str()),
        ("node-b", "phone")
    );
    assert_eq!(sessions[0].platform, Platform::Mobile);

    let outcome = alice_node
        .fanout(
            "alice",
            "laptop",
            vec!["bob".into(), "carol".into(), "dave".into()],
            b"to all".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        (outcome.verdict, outcome.reason),
        (Verdict::Routed, Reason::Partial),
        "{outcome:?}"
    );
    assert_eq!(outcome.offline_users, ["dave"]);
    match next_delivery(&mut bob_inbox).await {
        Event::FanoutDeliver {
            recipients,
            payload,
            ..
        } => {
            let mut users: Vec<String> = recipients.into_iter().map(|(user, _)| user).collect();
            users.sort();
            assert_eq!(users, ["bob", "carol"]);
            assert_eq!(payload, b"to all");
        }
        other => panic!("expected a FanoutDeliver, got {other:?}"),
    }
    alice_node.close().await.unwrap();
    bob_node.close().await.unwrap();
}

/// The router is killed and started again (same address) while one node
/// keeps sending to the other's users: every message ends Routed (the
/// node resends what the dead router never answered, the new router says
/// Unknown until the holder's resync is in), and the holder's application
/// sees each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restart_loses_nothing() {
    let addr = free_addr();
    let mut router = Router::start(&addr);
    let (sender, _sender_inbox) = ConnectOptions::new("sender")
        .seed(addr.clone())
        .unknown_retries(12)
        .connect()
        .await
        .unwrap();
    let (holder, mut holder_inbox) = ConnectOptions::new("holder")
        .seed(addr.clone())
        .connect()
        .await
        .unwrap();
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    for user in &users {
        holder.open(user, "phone", Platform::Mobile).await.unwrap();
    }
    holder.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

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
    for i in 0..400u32 {
        let sender = sender.clone();
        let to = users[i as usize % users.len()].clone();
        sends.push(tokio::spawn(async move {
            sender
                .route(Message::new("s", "d", to, i.to_be_bytes().to_vec()))
                .await
        }));
        if i == 150 {
            router.kill();
            router = Router::start(&addr);
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
    assert_eq!(verdicts.get("Routed"), Some(&400), "{verdicts:?}");
    // (The restart caught messages in flight: they were sent again.)
    assert!(resent > 0, "no message was sent twice");
    eprintln!("router restart: {resent} of 400 messages sent more than once");
    // Let the last copies arrive, then stop the holder.
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.close().await.unwrap();
    let seen = seen.await.unwrap();
    assert_eq!(seen.len(), 400, "every message seen");
    assert!(seen.values().all(|&n| n == 1), "each once: {seen:?}");
    drop(router);
}

/// An application that does not read its inbox for a while: the node
/// stops reading its router (the inbox holds 8 events), the router holds
/// the messages, and once the application reads again every message
/// arrives, once; every sender's outcome is Routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_not_read_holds_everything_back_and_loses_nothing() {
    let addr = free_addr();
    let _router = Router::start(&addr);
    let (sender, _sender_inbox) = ConnectOptions::new("sender")
        .seed(addr.clone())
        .connect()
        .await
        .unwrap();
    let (holder, mut holder_inbox) = ConnectOptions::new("slow-holder")
        .seed(addr.clone())
        .inbox_capacity(8)
        .connect()
        .await
        .unwrap();
    match next_delivery_or_router(&mut holder_inbox).await {
        Event::Router { up: true, .. } => {}
        other => panic!("expected the router up first, got {other:?}"),
    }
    holder
        .open("slow", "phone", Platform::Mobile)
        .await
        .unwrap();
    holder.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sends = Vec::new();
    for i in 0..3000u32 {
        let sender = sender.clone();
        sends.push(tokio::spawn(async move {
            sender
                .route(Message::new("s", "d", "slow", i.to_be_bytes().to_vec()))
                .await
        }));
    }
    // Not reading for two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 3000 {
        match tokio::time::timeout(Duration::from_secs(10), holder_inbox.recv()).await {
            Ok(Some(Event::Deliver(delivery))) => *seen.entry(delivery.payload).or_insert(0) += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(seen.len(), 3000, "every message arrived");
    assert!(seen.values().all(|&n| n == 1), "each once");
    for send in sends {
        let outcome = send.await.unwrap().unwrap();
        assert_eq!(outcome.verdict, Verdict::Routed, "{outcome:?}");
    }
}

async fn next_delivery_or_router(inbox: &mut imrouter_client::Inbox) -> Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("an event in time")
            .expect("the inbox is open");
        if !matches!(event, Event::NodeEvent { .. }) {
            return event;
        }
    }
}
