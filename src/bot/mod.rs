//! Headless bots: participants without a person, run by a Lua script.
//!
//! A bot joins a room the way a browser does, over the signaling protocol
//! and WebRTC ([`crate::client::Participant`]), so it sees and is seen
//! exactly like any member and its token's grants bound what it may do. Its
//! script (sandboxed like room policies) reacts to the room through hooks
//! and acts through the `bot` table; audio (playing files and tones,
//! echoing, recording members or the mix) runs in Rust, packet by packet,
//! started and stopped by the script. docs/bots.md is the guide.
//!
//! - [`script`]: the Lua state, the `bot` API and hook calls.
//! - [`media`]: what a bot sends and records.
//! - [`runner`]: one bot's event loop.
//!
//! Bots run from the command line (`conclave bot`) or with the server
//! (`[[bots]]` in the configuration, [`BotSpec`]); either way they connect
//! over the network.

pub mod media;
pub mod runner;
pub mod script;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::ClientError;
use crate::model::{LeaveReason, Mode, Role};
use crate::policy::lua::LuaLimits;

pub use crate::script::ScriptError;
pub use runner::run;

/// Everything one bot needs.
#[derive(Clone, Debug)]
pub struct BotConfig {
    /// Signaling URL, `ws://host:port/ws`.
    pub url: String,
    /// Other nodes of a cluster, tried in order when `url` cannot be reached.
    pub also: Vec<String>,
    pub token: String,
    pub room: String,
    pub script: PathBuf,
    /// Role to ask for; the server's default when `None`.
    pub role: Option<Role>,
    pub mode: Mode,
    /// Create the room if it does not exist (needs the create grant).
    pub create: bool,
    /// `bot.options` in the script.
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Where `bot.play` finds files.
    pub media_dir: PathBuf,
    /// Where `bot.record` writes files.
    pub record_dir: PathBuf,
    pub limits: LuaLimits,
    /// Local UDP address for media.
    pub bind: SocketAddr,
    /// The script threads to run on (the server's, for its own bots); a
    /// pool of one thread is started for the bot when `None`.
    pub pool: Option<crate::script::pool::Pool>,
    /// Written by each run: the cluster's signaling URLs its `hello` listed
    /// (empty from a single server), shared by the config's clones. `conclave
    /// bot` rejoins through them when its node goes, with no `--also-url`.
    pub nodes_seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl BotConfig {
    /// A bot with defaults: creates the room if needed, files next to the
    /// script, recordings in `recordings/`.
    pub fn new(url: &str, token: &str, room: &str, script: impl Into<PathBuf>) -> BotConfig {
        let script = script.into();
        let media_dir = script
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        BotConfig {
            url: url.to_owned(),
            also: Vec::new(),
            token: token.to_owned(),
            room: room.to_owned(),
            script,
            role: None,
            mode: Mode::Audio,
            create: true,
            options: serde_json::Map::new(),
            media_dir,
            record_dir: PathBuf::from("recordings"),
            limits: LuaLimits::default(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            pool: None,
            nodes_seen: Default::default(),
        }
    }
}

/// How a bot's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It left: its script called `bot.leave()`, or it was shut down.
    Left,
    /// A moderator removed it.
    Kicked,
    /// The server ended its membership for another reason.
    Removed(LeaveReason),
    /// The signaling connection dropped.
    ConnectionLost,
    /// A hook of its script never returned (the watchdog gave up on it):
    /// the bot left, since it has nothing left to act with.
    ScriptStuck,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Left => f.write_str("left the room"),
            Ended::Kicked => f.write_str("was kicked from the room"),
            Ended::Removed(reason) => write!(f, "was removed from the room ({})", reason.as_str()),
            Ended::ConnectionLost => f.write_str("lost its connection to the server"),
            Ended::ScriptStuck => f.write_str("left because its script stopped answering"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("the bot's script cannot run: {0}")]
    Script(ScriptError),
    #[error("the bot cannot join: {0}")]
    Join(ClientError),
    #[error("cannot mint a dev token: {0}")]
    Token(#[from] crate::auth::AuthError),
    #[error("--set: {0}")]
    Options(String),
    #[error("cannot start the script thread: {0}")]
    Threads(std::io::Error),
}

/// A bot the server starts with itself (`[[bots]]` in the configuration).
/// It still connects over the network, to the server's own address, with a
/// token the server mints from its own secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotSpec {
    /// The script, e.g. `scripts/bots/greeter.lua`.
    pub script: PathBuf,
    pub room: String,
    /// The bot's user id, and its display name.
    #[serde(default = "BotSpec::default_user")]
    pub user: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub role: Option<Role>,
    /// May act on others (mute, kick, set their role).
    #[serde(default)]
    pub admin: bool,
    /// `bot.options`.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Where `bot.play` finds files; the script's directory by default.
    #[serde(default)]
    pub media_dir: Option<PathBuf>,
    /// Where `bot.record` writes; `<data_dir>/recordings` by default.
    #[serde(default)]
    pub record_dir: Option<PathBuf>,
}

impl BotSpec {
    fn default_user() -> String {
        "bot".into()
    }
}

/// Runs server-started bots until `shutdown`; a bot that ends or fails is
/// started again after a pause, as a supervisor would.
pub fn spawn_supervised(
    config: BotConfig,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(500);
        loop {
            let stop = shutdown.clone();
            let started = std::time::Instant::now();
            match run(config.clone(), async move { stop.cancelled().await }).await {
                Ok(ended) => tracing::info!(room = %config.room, "server bot {ended}"),
                Err(e) => tracing::warn!(room = %config.room, error = %e, "server bot failed"),
            }
            if shutdown.is_cancelled() {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                pause = Duration::from_millis(500);
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    })
}

/// `conclave bot` arguments.
#[derive(Debug, clap::Args)]
pub struct BotArgs {
    /// The bot's Lua script, e.g. scripts/bots/greeter.lua.
    pub script: PathBuf,
    /// Signaling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:7880/ws")]
    pub url: String,
    /// Another node of the same cluster; repeatable. With any, or when the
    /// server's hello lists a cluster's nodes (it does on a cluster node),
    /// the bot rejoins through the first node that answers whenever its
    /// connection drops or its room's node goes away, until Ctrl-C.
    #[arg(long = "also-url", value_name = "URL")]
    pub also_url: Vec<String>,
    /// Access token; with `--dev` one is minted for `--user` instead.
    #[arg(long, env = "CONCLAVE_BOT_TOKEN", required_unless_present = "dev")]
    pub token: Option<String>,
    /// Mint a token with the built-in dev key (for `serve --dev`): may create
    /// rooms and act on others.
    #[arg(long)]
    pub dev: bool,
    /// User id for a `--dev` token.
    #[arg(long, default_value = "bot")]
    pub user: String,
    /// Display name for a `--dev` token.
    #[arg(long, default_value = "")]
    pub name: String,
    /// The room to join (created if the token may create it).
    #[arg(long)]
    pub room: String,
    /// Role to join as: interactor or audience.
    #[arg(long)]
    pub role: Option<Role>,
    /// An option for the script (`bot.options.KEY`), `key=value`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where `bot.play` finds files (default: the script's directory).
    #[arg(long)]
    pub media_dir: Option<PathBuf>,
    /// Where `bot.record` writes files.
    #[arg(long, default_value = "recordings")]
    pub record_dir: PathBuf,
}

/// The binary's edge for `conclave bot`: runs until the bot ends or Ctrl-C.
/// Logs go to stderr (`RUST_LOG` filters; `info` by default): that the bot
/// joined, what its script logs (`bot.log`), hook errors and how it ended.
pub async fn run_cli(args: BotArgs) -> Result<(), BotError> {
    crate::telemetry::init_logging(
        crate::telemetry::LogFormat::Human,
        crate::telemetry::DEFAULT_LOG_FILTER,
    );
    // Without --token, clap has made sure --dev was given.
    let token = match args.token {
        Some(token) => token,
        None => {
            let grants = crate::auth::Grants {
                create: true,
                rooms: vec!["*".into()],
                admin: true,
                ..crate::auth::Grants::default()
            };
            let claims = crate::auth::claims_for(
                &args.user,
                &args.name,
                grants,
                Duration::from_secs(24 * 3600),
            );
            crate::auth::Auth::dev().mint(&claims)?
        }
    };
    let mut config = BotConfig::new(&args.url, &token, &args.room, &args.script);
    config.role = args.role;
    config.options = script::parse_options(&args.set).map_err(BotError::Options)?;
    if let Some(dir) = args.media_dir {
        config.media_dir = dir;
    }
    config.record_dir = args.record_dir;
    config.also = args.also_url;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });
    let mut pause = Duration::from_millis(200);
    loop {
        let until = stop.clone();
        let started = std::time::Instant::now();
        // The nodes given, then those the last hello listed.
        let mut attempt = config.clone();
        let seen = config.nodes_seen.lock().expect("nodes seen").clone();
        for url in seen {
            if url != attempt.url && !attempt.also.contains(&url) {
                attempt.also.push(url);
            }
        }
        let result = run(attempt, async move { until.cancelled().await }).await;
        let elsewhere = !config.also.is_empty()
            || config
                .nodes_seen
                .lock()
                .expect("nodes seen")
                .iter()
                .any(|url| *url != config.url);
        if started.elapsed() > Duration::from_secs(60) {
            pause = Duration::from_millis(200);
        }
        // A bot with somewhere else to go goes there when its node does:
        // the room opens again on a live node as its members come back.
        let node_gone = matches!(
            result,
            Ok(Ended::ConnectionLost)
                | Ok(Ended::Removed(LeaveReason::Shutdown))
                | Err(BotError::Join(_))
        );
        if !elsewhere || stop.is_cancelled() || !node_gone {
            let ended = result?;
            tracing::info!("bot {ended}");
            return Ok(());
        }
        match &result {
            Ok(ended) => tracing::warn!("bot {ended}; rejoining through the cluster"),
            Err(e) => tracing::warn!(error = %e, "cannot join; retrying through the cluster"),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return Ok(()),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
