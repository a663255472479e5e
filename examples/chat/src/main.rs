//! `imrouter-chat`: an IM node built on `imrouter-client`, for people to
//! watch in a browser. It serves a page (sign in with a user name, see
//! who is online in the whole cluster, send one-to-one and group
//! messages, see each one's delivery state) and keeps its users' messages
//! in SQLite. Several instances run against one router or a cluster; each
//! user is connected to the instance whose page they loaded.
//!
//! What it does with a message, as the OpenIM RFC has a gateway do: save
//! it, hand it to the router (which delivers it to every node holding the
//! recipient), and keep it as offline when the router says the recipient
//! has no session. Each node tells the others which of its users are
//! online (a Broadcast every few seconds and at each sign-in); when a
//! user with messages kept offline shows up anywhere, the node that keeps
//! them routes them again.
//!
//!   imrouter-chat --listen 127.0.0.1:8081 --router 127.0.0.1:7800 --name chat-a

mod store;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use imrouter_client::{Client, ConnectOptions, Event, Inbox, Message, Platform, Verdict};
use serde_json::json;
use tokio::sync::mpsc;

use store::{ChatMessage, Store, DELIVERED, OFFLINE};

/// An IM node with a web page, on imrouter.
#[derive(Debug, Parser)]
struct Args {
    /// Where the page is served.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// A router (or several, comma-separated: any routers of a cluster).
    #[arg(long, default_value = "127.0.0.1:7800")]
    router: String,
    /// This node's name in the cluster.
    #[arg(long, default_value = "chat-a")]
    name: String,
    /// The SQLite file (default: `<name>.sqlite` in the temporary dir).
    #[arg(long)]
    db: Option<String>,
    /// The router's --auth-token.
    #[arg(long)]
    token: Option<String>,
}

/// How often each node says which of its users are online, and how long
/// a node's word holds.
const PRESENCE_EVERY: Duration = Duration::from_secs(2);
const PRESENCE_FOR: Duration = Duration::from_secs(7);
/// Pages open per user on this node, and messages queued per page.
const PAGES_PER_USER: usize = 8;
const PAGE_QUEUE: usize = 256;

/// An open page: its id and its queue.
type Page = (u64, mpsc::Sender<String>);

struct App {
    node: String,
    client: Client,
    store: Mutex<Store>,
    /// Local users' open pages: user -> (page id, its queue).
    pages: Mutex<HashMap<String, Vec<Page>>>,
    /// Users online on other nodes: node -> (users, when heard).
    presence: Mutex<HashMap<String, (BTreeSet<String>, Instant)>>,
    counter: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let db = args.db.clone().unwrap_or_else(|| {
        std::env::temp_dir()
            .join(format!("{}.sqlite", args.name))
            .display()
            .to_string()
    });
    let store = Store::open(&db)?;
    let mut options = ConnectOptions::new(args.name.clone());
    for router in args.router.split(',') {
        options = options.seed(router.trim());
    }
    if let Some(token) = &args.token {
        options = options.token(token.clone());
    }
    let (client, inbox) = options.connect().await?;
    let app = Arc::new(App {
        node: args.name.clone(),
        client,
        store: Mutex::new(store),
        pages: Mutex::new(HashMap::new()),
        presence: Mutex::new(HashMap::new()),
        counter: AtomicU64::new(now_ms()),
    });
    tokio::spawn(receive(app.clone(), inbox));
    tokio::spawn(presence(app.clone()));
    let routes = axum::Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("../static/index.html")) }),
        )
        .route("/ws", get(page_socket))
        .route("/owner", get(owner))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "{}: http://{} (router {}, messages in {db})",
        args.name, args.listen, args.router
    );
    axum::serve(listener, routes)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    app.client.close().await.ok();
    Ok(())
}

// ----- Pages ---------------------------------------------------------------------

/// `/owner?user=NAME`: the router that owns the user's slot now (for the
/// operator, and for the browser test, which kills that one).
async fn owner(
    Query(query): Query<HashMap<String, String>>,
    State(app): State<Arc<App>>,
) -> Response {
    let user = query.get("user").cloned().unwrap_or_default();
    match app.client.owner_of(&user).await {
        Ok(addr) => axum::Json(json!({ "user": user, "router": addr })).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

async fn page_socket(
    upgrade: WebSocketUpgrade,
    Query(query): Query<HashMap<String, String>>,
    State(app): State<Arc<App>>,
) -> Response {
    let user = query.get("user").cloned().unwrap_or_default();
    let valid = !user.is_empty()
        && user.len() <= 32
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            "user: 1 to 32 of a-z, 0-9, - and _",
        )
            .into_response();
    }
    upgrade.on_upgrade(move |socket| page(app, user, socket))
}

/// One open page of `user`: a device of its own, for as long as it is
/// open.
async fn page(app: Arc<App>, user: String, mut socket: WebSocket) {
    let id = app.counter.fetch_add(1, Ordering::Relaxed);
    let device = format!("web-{id}");
    let (tx, mut rx) = mpsc::channel::<String>(PAGE_QUEUE);
    {
        let mut pages = app.pages.lock().expect("pages");
        let list = pages.entry(user.clone()).or_default();
        if list.len() >= PAGES_PER_USER {
            return; // (the page sees its socket close)
        }
        list.push((id, tx.clone()));
    }
    if app
        .client
        .open(&user, &device, Platform::Web)
        .await
        .is_err()
    {
        return;
    }
    let _ = tx.try_send(json!({"type": "hello", "user": user, "node": app.node}).to_string());
    let history = app.store.lock().expect("store").history(&user, 200);
    for (message, states) in history.unwrap_or_default() {
        let _ = tx.try_send(message_json(&message, &states));
    }
    announce(&app).await;
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => on_page_text(&app, &user, text.as_str()).await,
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(out) = rx.recv() => {
                if socket.send(WsMessage::Text(out.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    {
        let mut pages = app.pages.lock().expect("pages");
        if let Some(list) = pages.get_mut(&user) {
            list.retain(|(page, _)| *page != id);
            if list.is_empty() {
                pages.remove(&user);
            }
        }
    }
    let _ = app.client.close_session(&user, &device).await;
    announce(&app).await;
}

/// What a page sends: `{"type": "send", "to": ["bob"], "text": "hi"}`.
async fn on_page_text(app: &Arc<App>, user: &str, text: &str) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if value["type"] != "send" {
        return;
    }
    let mut to: Vec<String> = value["to"]
        .as_array()
        .map(|to| {
            to.iter()
                .filter_map(|u| u.as_str())
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty() && u != user)
                .collect()
        })
        .unwrap_or_default();
    to.sort();
    to.dedup();
    let body = value["text"].as_str().unwrap_or("").trim();
    if to.is_empty() || body.is_empty() || body.len() > 4000 || to.len() > 100 {
        return;
    }
    let message = ChatMessage {
        id: format!(
            "{}-{}",
            app.node,
            app.counter.fetch_add(1, Ordering::Relaxed)
        ),
        from: user.to_owned(),
        to,
        text: body.to_owned(),
        at: now_ms(),
    };
    if app
        .store
        .lock()
        .expect("store")
        .save_sent(&message)
        .is_err()
    {
        return;
    }
    let states: Vec<(String, String)> = message
        .to
        .iter()
        .map(|to| (to.clone(), store::SENDING.to_owned()))
        .collect();
    push(app, user, message_json(&message, &states));
    tokio::spawn(deliver(app.clone(), message.clone(), message.to.clone()));
}

fn message_json(message: &ChatMessage, states: &[(String, String)]) -> String {
    json!({
        "type": "message",
        "id": message.id,
        "from": message.from,
        "to": message.to,
        "text": message.text,
        "at": message.at,
        "states": states.iter().map(|(to, state)| json!({"to": to, "state": state})).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Sends `text` to every open page of local user `user`.
fn push(app: &App, user: &str, text: String) {
    let pages = app.pages.lock().expect("pages");
    for (_, page) in pages.get(user).into_iter().flatten() {
        // A page that does not keep up misses updates; its history is in
        // the store, shown again when it reloads.
        let _ = page.try_send(text.clone());
    }
}

// ----- Messages ------------------------------------------------------------------

/// Hands `message` to the router for `recipients`, and records (and
/// shows its sender) what became of it for each.
async fn deliver(app: Arc<App>, message: ChatMessage, recipients: Vec<String>) {
    let payload = serde_json::to_vec(&message).expect("serializable");
    let mut states: Vec<(String, String)> = Vec::new();
    if recipients.len() == 1 {
        let outcome = app
            .client
            .route(Message::new(&message.from, "web", &recipients[0], payload))
            .await;
        let state = match outcome.map(|o| o.verdict) {
            Ok(Verdict::Routed) => DELIVERED,
            // Offline, Unknown, Busy: kept, and sent again when the user
            // shows up.
            _ => OFFLINE,
        };
        states.push((recipients[0].clone(), state.to_owned()));
    } else {
        let outcome = app
            .client
            .fanout(&message.from, "web", recipients.clone(), payload)
            .await;
        for recipient in &recipients {
            let delivered = outcome.as_ref().is_ok_and(|o| {
                o.verdict == Verdict::Routed && !o.offline_users.contains(recipient)
            });
            let state = if delivered { DELIVERED } else { OFFLINE };
            states.push((recipient.clone(), state.to_owned()));
        }
    }
    {
        let store = app.store.lock().expect("store");
        for (recipient, state) in &states {
            let _ = store.set_state(&message.id, recipient, state);
        }
    }
    for (recipient, state) in states {
        push(
            &app,
            &message.from,
            json!({"type": "state", "id": message.id, "to": recipient, "state": state}).to_string(),
        );
    }
}

/// What the router hands this node.
async fn receive(app: Arc<App>, mut inbox: Inbox) {
    while let Some(event) = inbox.recv().await {
        match event {
            Event::Deliver(delivery) => {
                received(&app, &delivery.payload, &[delivery.to_user]);
            }
            Event::FanoutDeliver {
                recipients,
                payload,
                ..
            } => {
                let users: Vec<String> = recipients.into_iter().map(|(user, _)| user).collect();
                received(&app, &payload, &users);
            }
            Event::Broadcast { payload, .. } => heard_presence(&app, &payload),
            _ => {}
        }
    }
}

fn received(app: &App, payload: &[u8], users: &[String]) {
    let Ok(message) = serde_json::from_slice::<ChatMessage>(payload) else {
        return;
    };
    for user in users {
        let fresh = app
            .store
            .lock()
            .expect("store")
            .save_received(&message, user)
            .unwrap_or(false);
        if fresh {
            push(app, user, message_json(&message, &[]));
        }
    }
}

// ----- Presence ------------------------------------------------------------------

fn local_users(app: &App) -> BTreeSet<String> {
    app.pages.lock().expect("pages").keys().cloned().collect()
}

/// Everyone online in the cluster, as far as this node knows.
fn online(app: &App) -> BTreeSet<String> {
    let mut users = local_users(app);
    let presence = app.presence.lock().expect("presence");
    for (remote, _) in presence.values() {
        users.extend(remote.iter().cloned());
    }
    users
}

/// Tells the other nodes (a Broadcast) and the local pages who is online.
async fn announce(app: &Arc<App>) {
    let users: Vec<String> = local_users(app).into_iter().collect();
    let note = json!({"type": "presence", "node": app.node, "users": users}).to_string();
    let _ = app.client.broadcast(note.into_bytes()).await;
    show_online(app);
    resend_offline(app);
}

fn show_online(app: &App) {
    let text = json!({"type": "online", "users": online(app)}).to_string();
    let pages = app.pages.lock().expect("pages");
    for (_, page) in pages.values().flatten() {
        let _ = page.try_send(text.clone());
    }
}

fn heard_presence(app: &Arc<App>, payload: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    let (Some(node), Some(users)) = (value["node"].as_str(), value["users"].as_array()) else {
        return;
    };
    if value["type"] != "presence" || node == app.node {
        return;
    }
    let users: BTreeSet<String> = users
        .iter()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    let changed = {
        let mut presence = app.presence.lock().expect("presence");
        let before = presence.insert(node.to_owned(), (users.clone(), Instant::now()));
        before.is_none_or(|(old, _)| old != users)
    };
    if changed {
        show_online(app);
        resend_offline(app);
    }
}

/// Routes again the messages kept offline for users now online.
fn resend_offline(app: &Arc<App>) {
    let online = online(app);
    let store = app.store.lock().expect("store");
    for recipient in store.offline_recipients().unwrap_or_default() {
        if !online.contains(&recipient) {
            continue;
        }
        for message in store.offline_for(&recipient).unwrap_or_default() {
            let _ = store.set_state(&message.id, &recipient, store::SENDING);
            tokio::spawn(deliver(app.clone(), message, vec![recipient.clone()]));
        }
    }
}

/// Every [`PRESENCE_EVERY`]: tells the others, forgets nodes not heard
/// from for [`PRESENCE_FOR`].
async fn presence(app: Arc<App>) {
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    loop {
        tick.tick().await;
        let expired = {
            let mut presence = app.presence.lock().expect("presence");
            let before = presence.len();
            presence.retain(|_, (_, heard)| heard.elapsed() < PRESENCE_FOR);
            before != presence.len()
        };
        if expired {
            show_online(&app);
        }
        announce(&app).await;
    }
}
