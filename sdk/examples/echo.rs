//! A node that hosts user `echo` and answers every message for it with
//! the same payload.
//!
//!   cargo run -p imrouter-client --example echo -- 127.0.0.1:7800

use imrouter_client::{ConnectOptions, Event, Message, Platform};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7800".into());
    let (client, mut inbox) = ConnectOptions::new("echo-node")
        .seed(router)
        .connect()
        .await?;
    client.open("echo", "bot", Platform::Web).await?;
    while let Some(event) = inbox.recv().await {
        let Event::Deliver(message) = event else {
            continue;
        };
        let reply = Message::new("echo", "bot", message.from_user, message.payload);
        let client = client.clone();
        tokio::spawn(async move {
            match client.route(reply).await {
                Ok(outcome) => println!("echoed: {:?}", outcome.verdict),
                Err(error) => eprintln!("echo failed: {error}"),
            }
        });
    }
    Ok(())
}
