//! The `conclave` binary: parses the command line and calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};

use conclave::app::Config;
use conclave::auth::{Auth, Grants, claims_for};
use conclave::protocol::Role;
use conclave::server::{Server, ShutdownSignal};

#[derive(Parser)]
#[command(name = "conclave", version, about = "A room and media engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Development mode: built-in key, loopback only, prints a ready-to-use token.
        #[arg(long)]
        dev: bool,
        /// TOML configuration file (see examples/conclave.toml).
        #[arg(long, short, env = "CONCLAVE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Mint an access token.
    Token {
        /// User id (the token's subject).
        #[arg(long)]
        user: String,
        /// Display name; defaults to the user id.
        #[arg(long, default_value = "")]
        name: String,
        /// May create rooms.
        #[arg(long)]
        create: bool,
        /// Room name pattern the token covers (`*` matches anything); repeatable.
        #[arg(long = "room", default_value = "*")]
        rooms: Vec<String>,
        /// Role the user may take (interactor, audience); repeatable; default both.
        #[arg(long = "role")]
        roles: Vec<Role>,
        /// May use the admin API and act on other members.
        #[arg(long)]
        admin: bool,
        /// An attribute room policies can read, `key=value` (the value is
        /// JSON if it parses as JSON, else a string); repeatable.
        /// E.g. `--attr teacher=true`.
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, serde_json::Value)>,
        /// How long the token is valid, e.g. `1h`, `7d`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The token's id (`jti`), by which it can be revoked; random when
        /// not given. Printed on stderr.
        #[arg(long)]
        jti: Option<String>,
        /// Sign with the built-in dev key (for `serve --dev`).
        #[arg(long)]
        dev: bool,
        /// TOML configuration to read `[auth] secret` from.
        #[arg(long, short, env = "CONCLAVE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a Lua-scripted bot: a participant that joins a room over the
    /// network like any client and acts by its script.
    Bot(conclave::bot::BotArgs),
    /// Load-test a server with simulated participants and report what they saw.
    Loadtest(conclave::loadtest::LoadtestArgs),
    /// Check, test and replay room policies, offline.
    #[command(subcommand)]
    Policy(conclave::authoring::PolicyCommand),
    /// Check a permission plugin, offline.
    #[command(subcommand)]
    Plugin(conclave::authoring::PluginCommand),
}

fn parse_attr(s: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { dev, config } => serve(dev, config),
        Command::Bot(args) => Ok(runtime()?.block_on(conclave::bot::run_cli(args))?),
        Command::Loadtest(args) => Ok(runtime()?.block_on(conclave::loadtest::run_cli(args))?),
        Command::Policy(command) => {
            quiet_logging();
            let status = conclave::authoring::run_policy(command)?;
            std::process::exit(status)
        }
        Command::Plugin(command) => {
            quiet_logging();
            let status = conclave::authoring::run_plugin(command)?;
            std::process::exit(status)
        }
        Command::Token {
            user,
            name,
            create,
            rooms,
            roles,
            admin,
            attrs,
            ttl,
            jti,
            dev,
            config,
        } => {
            let auth = if dev {
                Auth::dev()
            } else {
                let config = Config::load(config.as_deref())?;
                let secret = config.auth.secret.unwrap_or_default();
                Auth::new(&secret).context(
                    "set [auth] secret or CONCLAVE_AUTH__SECRET, or pass --dev for the dev key",
                )?
            };
            let grants = Grants {
                create,
                rooms,
                roles: if roles.is_empty() {
                    Grants::default().roles
                } else {
                    roles
                },
                admin,
            };
            let mut claims = claims_for(&user, &name, grants, ttl);
            claims.attrs = attrs.into_iter().collect();
            if jti.is_some() {
                claims.jti = jti;
            }
            let token = auth.mint(&claims)?;
            if let Some(jti) = &claims.jti {
                eprintln!("jti: {jti} (revoke with POST /api/revocations)");
            }
            println!("{token}");
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

/// `CONCLAVE_*` variables that are neither configuration keys
/// (`CONCLAVE_<SECTION>__<KEY>`) nor read by any command's options: most
/// likely a configuration key with a single underscore.
fn stray_env_vars() -> Vec<String> {
    let mut known: Vec<String> = Vec::new();
    let cli = Cli::command();
    let mut commands = vec![&cli];
    while let Some(command) = commands.pop() {
        commands.extend(command.get_subcommands());
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                known.push(env.to_string_lossy().into_owned());
            }
        }
    }
    std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| key.starts_with("CONCLAVE_") && !key.contains("__"))
        .filter(|key| !known.contains(key))
        .collect()
}

fn serve(dev: bool, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    conclave::telemetry::init_logging(config.log.format, &config.log.level);
    for key in stray_env_vars() {
        tracing::warn!(
            "ignoring {key}: configuration keys are CONCLAVE_<SECTION>__<KEY>, \
             with two underscores (CONCLAVE_SERVER__BIND)"
        );
    }
    if !dev && config.auth.secret.is_none() {
        bail!(
            "no auth secret configured: set [auth] secret (32+ bytes) or CONCLAVE_AUTH__SECRET, \
             or run `conclave serve --dev` to try conclave locally"
        );
    }
    runtime()?.block_on(async move {
        let signal = ShutdownSignal::install().context("installing signal handlers")?;
        let server = Server::start(config, dev).await?;
        if dev {
            print_dev_banner(&server)?;
        }
        server.run_until(signal).await;
        Ok(())
    })
}

fn print_dev_banner(server: &Server) -> anyhow::Result<()> {
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        admin: true,
        ..Grants::default()
    };
    let token = Auth::dev().mint(&claims_for(
        "dev",
        "Developer",
        grants,
        Duration::from_secs(7 * 24 * 3600),
    ))?;
    let addr = server.addr();
    let banner = format!(
        "conclave is running in dev mode (built-in key, loopback only)\n\
         \x20 signaling  ws://{addr}/ws\n\
         \x20 admin API  http://{addr}/api/rooms\n\
         \x20 metrics    http://{addr}/metrics\n\
         \x20 token (user `dev`, admin, may create and join any room, valid 7 days):\n\
         {token}\n\
         \x20 mint more: conclave token --dev --user alice --create\n"
    );
    // A closed stdout (the reader went away) is no reason to stop serving.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// The authoring commands print their own report on stdout; the log keeps
/// to warnings (a script's `log.info` included) unless `RUST_LOG` says more.
fn quiet_logging() {
    conclave::telemetry::init_logging(conclave::telemetry::LogFormat::Human, "warn");
}
