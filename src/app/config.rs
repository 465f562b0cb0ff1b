//! Configuration: one TOML file, then `CONCLAVE_*` environment overrides, on
//! top of defaults that run a server with nothing set.
//!
//! Environment variables name a key by section and field joined with a double
//! underscore: `CONCLAVE_SERVER__BIND=0.0.0.0:7880`,
//! `CONCLAVE_AUTH__SECRET=...`. Unknown keys are refused, with the key named,
//! so a typo never silently falls back to a default. A `CONCLAVE_*` variable
//! without the double underscore is not a configuration key (the command line
//! reads some, like `CONCLAVE_CONFIG`); the binary warns about ones it does
//! not know either.
//! examples/conclave.toml lists every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::policy::catalog::PolicyConfig;
use crate::room::RoomSettings;
use crate::telemetry::LogFormat;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub rooms: RoomsConfig,
    pub signal: SignalConfig,
    pub policy: PolicyConfig,
    /// The threads every Lua script (policies and bots) runs on.
    pub scripts: crate::script::pool::PoolConfig,
    pub media: crate::media::MediaConfig,
    pub log: LogConfig,
    /// Bots started with the server (`[[bots]]`); see docs/bots.md.
    pub bots: Vec<crate::bot::BotSpec>,
    /// Several nodes sharing rooms (`[cluster]`); absent: one node, as
    /// always. See docs/cluster.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for HTTP, WebSocket signaling and the admin API.
    pub bind: SocketAddr,
    /// Where the SQLite database lives; created on first start.
    pub data_dir: PathBuf,
    /// How long shutdown waits for connections to finish after telling them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 7880)),
            data_dir: PathBuf::from("data"),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret, at least 32 bytes. Required unless running with `--dev`.
    pub secret: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// A created room that nobody joins closes after this long.
    #[serde(with = "humantime_serde")]
    pub empty_timeout: Duration,
    /// A member whose connection drops may reconnect within this window and
    /// keep its membership; after it, others see it leave with `timeout`.
    #[serde(with = "humantime_serde")]
    pub reconnect_grace: Duration,
    /// Most rooms open at once; creates beyond it answer 503.
    pub max_rooms: usize,
    /// Commands queued per room before senders wait.
    pub command_queue: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        let settings = RoomSettings::default();
        RoomsConfig {
            empty_timeout: settings.empty_timeout,
            reconnect_grace: settings.reconnect_grace,
            max_rooms: 10_000,
            command_queue: 1024,
        }
    }
}

impl RoomsConfig {
    pub fn settings(&self) -> RoomSettings {
        RoomSettings {
            empty_timeout: self.empty_timeout,
            reconnect_grace: self.reconnect_grace,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    /// How often clients are asked to send a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Silence on a connection for this long closes it.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// A connection must send `hello` within this time.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Largest accepted frame, in bytes; larger frames close the connection (1009).
    pub max_frame_bytes: usize,
    /// Sustained requests per second per connection.
    pub rate_per_second: u32,
    /// Requests a connection may send in a burst above the rate.
    pub rate_burst: u32,
    /// Requests refused for rate in a row that are answered with 429; one more
    /// closes the connection (1008).
    pub rate_abuse_limit: u32,
    /// Events queued for a connection before it is judged too slow and closed.
    pub outbound_queue: usize,
    /// Most signaling connections open at once; more are refused with 503.
    pub max_connections: usize,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            // LiveKit's pair: at 5 s, a thousand idle members' pings cost
            // the server as much as their media's consent checks.
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(20),
            hello_timeout: Duration::from_secs(10),
            max_frame_bytes: 64 * 1024,
            rate_per_second: 50,
            rate_burst: 100,
            rate_abuse_limit: 200,
            outbound_queue: 1024,
            max_connections: 20_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `conclave=debug`, ...; `RUST_LOG` wins.
    /// The default keeps the WebRTC stack's chatter (ICE and DTLS state
    /// changes per peer) to warnings.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: crate::telemetry::DEFAULT_LOG_FILTER.into(),
        }
    }
}

/// A configuration that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Defaults, then `path` (if given; it must exist), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only `CONCLAVE_<SECTION>__<KEY>` names a key; other `CONCLAVE_*`
        // variables belong to the command line (`CONCLAVE_CONFIG`,
        // `CONCLAVE_BOT_TOKEN`) and are none of the configuration's business.
        figment = figment.merge(
            Env::prefixed("CONCLAVE_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError(messages.join("; "))
        })
    }

    /// Parses TOML text with no environment (for tests and validation).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_with_nothing_set() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.bind.port(), 7880);
        assert_eq!(c.rooms.reconnect_grace, Duration::from_secs(15));
    }

    #[test]
    fn durations_and_overrides() {
        let c = Config::from_toml(
            r#"
            [rooms]
            empty_timeout = "90s"
            [signal]
            heartbeat_timeout = "2s 500ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.rooms.empty_timeout, Duration::from_secs(90));
        assert_eq!(c.signal.heartbeat_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[rooms]\nempty_timout = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("empty_timout"), "{err}");
        let err = Config::from_toml("[romos]\n").unwrap_err();
        assert!(err.to_string().contains("romos"), "{err}");
    }

    #[test]
    fn udp_ports_are_a_port_or_a_range() {
        let c = Config::from_toml("[media]\nudp_port = 50000\n").unwrap();
        assert_eq!(c.media.udp_port.ports().collect::<Vec<_>>(), vec![50000]);
        let c = Config::from_toml("[media]\nudp_port = \"50000-50002\"\n").unwrap();
        assert_eq!(c.media.udp_port.ports().count(), 3);
        let err = Config::from_toml("[media]\nudp_port = \"9-3\"\n").unwrap_err();
        assert!(err.to_string().contains("9-3"), "{err}");
    }

    #[test]
    fn bots_are_listed_with_their_options() {
        let c = Config::from_toml(
            "[[bots]]\nscript = \"scripts/bots/greeter.lua\"\nroom = \"lobby\"\n\
             options = { greeting = \"Hi\", limit_ms = 500 }\n",
        )
        .unwrap();
        assert_eq!(c.bots.len(), 1);
        assert_eq!(c.bots[0].user, "bot");
        assert_eq!(c.bots[0].options["limit_ms"], 500);
        let err = Config::from_toml("[[bots]]\nroom = \"lobby\"\n").unwrap_err();
        assert!(err.to_string().contains("script"), "{err}");
    }

    #[test]
    fn the_annotated_example_parses() {
        let text = include_str!("../../examples/conclave.toml");
        let config = Config::from_toml(text).unwrap();
        assert!(config.cluster.is_none(), "one node unless asked");
    }

    #[test]
    fn the_cluster_examples_parse_and_differ_only_where_they_must() {
        let nodes = [
            include_str!("../../examples/cluster/node-a.toml"),
            include_str!("../../examples/cluster/node-b.toml"),
            include_str!("../../examples/cluster/node-c.toml"),
        ];
        let mut ids = Vec::new();
        let mut ports = Vec::new();
        for text in nodes {
            let config = Config::from_toml(text).unwrap();
            let cluster = config.cluster.expect("a [cluster] section");
            assert_eq!(cluster.redis_url, "redis://127.0.0.1:6379");
            assert!(cluster.postgres_url.starts_with("postgres://"));
            ids.push(cluster.node_id);
            ports.push(config.server.bind.port());
        }
        ids.dedup();
        ports.dedup();
        assert_eq!((ids.len(), ports.len()), (3, 3));
    }
}
