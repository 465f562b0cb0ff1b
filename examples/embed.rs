//! conclave as a library: a server started from Rust, with a room policy of
//! its own in a directory of its own, and a client that talks to it.
//!
//! ```sh
//! cargo run --example embed
//! ```
//!
//! It starts a dev-mode server on a free loopback port, writes a policy
//! that greets every joiner, creates a room that uses it, joins it as two
//! users, prints what the second one is told, and shuts the server down.

use std::time::Duration;

use anyhow::Context;
use conclave::app::Config;
use conclave::auth::{Auth, Grants, claims_for};
use conclave::client::SignalClient;
use conclave::model::Mode;
use conclave::protocol::ServerMessage;
use conclave::server::Server;

const GREETER: &str = r#"
-- Every newcomer gets a welcome from the room, by name.
local policy = {}
function policy.on_joined(member)
  room.send(member.user, { text = "welcome to " .. room.name .. ", " .. member.name })
end
return policy
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("a working directory")?;
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts)?;
    std::fs::write(scripts.join("greeter.lua"), GREETER)?;

    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".parse()?;
    config.server.data_dir = dir.path().join("data");
    config.policy.scripts_dir = scripts;
    config.policy.plugins_dir = dir.path().join("plugins");
    config.policy.default = "greeter".into();
    // Any free UDP port for media, so the example runs beside a real server.
    config.media.udp_port = "0".parse().map_err(anyhow::Error::msg)?;
    let server = Server::start(config, true).await?;
    let url = format!("ws://{}/ws", server.addr());
    println!("conclave is listening on {url}");

    // Tokens signed with the dev key, as `conclave token --dev` mints them.
    let token = |user: &str| {
        let grants = Grants {
            create: true,
            rooms: vec!["*".into()],
            ..Grants::default()
        };
        Auth::dev().mint(&claims_for(user, user, grants, Duration::from_secs(600)))
    };
    let alice = SignalClient::connect(&url).await?;
    let mut alice = alice;
    alice.hello(&token("alice")?).await?;
    alice.create("lobby", "the embedded example").await?;
    alice.join("lobby", Mode::Audio, None).await?;

    let mut bob = SignalClient::connect(&url).await?;
    bob.hello(&token("bob")?).await?;
    let joined = bob.join("lobby", Mode::Audio, None).await?;
    println!(
        "bob joined `{}` with {} members",
        joined.room,
        joined.members.len()
    );
    // The policy's greeting reached bob before the join's response.
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), bob.next_event())
        .await
        .context("the greeting")?
    {
        if let ServerMessage::Data { from, payload, .. } = event {
            println!("{from} says: {}", payload["text"]);
            break;
        }
    }
    server.shutdown().await;
    Ok(())
}
