//! A bot written in Rust on conclave's client library: it joins a room over
//! signaling and WebRTC like any participant and answers every data message
//! `{"text": "ping"}` with `{"text": "pong"}`, to the sender alone.
//!
//! Against a dev server (`cargo run --release -- serve --dev`):
//!
//! ```sh
//! cargo run --example rust_bot -- ws://127.0.0.1:7880/ws lobby
//! ```
//!
//! Scripted bots (`conclave bot`, docs/bots.md) do the same in Lua; this is
//! the way for logic that belongs in Rust.

use std::time::Duration;

use anyhow::Context;
use conclave::auth::{Auth, Grants, claims_for};
use conclave::client::{Participant, ParticipantOptions};
use conclave::protocol::ServerMessage;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:7880/ws".into());
    let room = args.next().unwrap_or_else(|| "lobby".into());

    // A dev-key token that may create the room; a real deployment hands the
    // bot a token minted with its secret instead.
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        ..Grants::default()
    };
    let token = Auth::dev().mint(&claims_for(
        "pong-bot",
        "Pong",
        grants,
        Duration::from_secs(24 * 3600),
    ))?;

    let mut options = ParticipantOptions::new(&url, &token, &room);
    options.create = true;
    let mut bot = Participant::join(options)
        .await
        .with_context(|| format!("joining `{room}` at {url}"))?;
    println!("joined `{room}` as pong-bot; send it {{\"text\": \"ping\"}}");
    while let Some(event) = bot.next_event().await {
        match event {
            ServerMessage::Data { from, payload, .. } if payload["text"] == "ping" => {
                bot.send_data(json!({ "text": "pong" }), Some(&from))
                    .await?;
                println!("ponged {from}");
            }
            ServerMessage::Disconnected { reason, .. } => {
                println!("removed from the room: {}", reason.as_str());
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
