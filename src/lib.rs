//! conclave: a room and media engine.
//!
//! People meet in named rooms (NetEase NIM multi-person call semantics:
//! create then join, interactor and audience roles, mute, join/leave/timeout
//! events, call records) over a documented WebSocket protocol.
//!
//! How the crate is laid out, one job per module:
//!
//! - [`ids`]: newtype identifiers (`RoomName`, `ChannelId`, `UserId`, `ConnId`).
//! - [`status`]: the protocol's status codes, and `Failure` (a code and a sentence).
//! - [`auth`]: HS256 tokens and the grants they carry.
//! - [`room`]: the room state machine (sans-I/O), the task that drives each
//!   room, and the registry of rooms by name.
//! - [`media`]: the WebRTC media plane: an SFU on webrtc-rs's sans-I/O core,
//!   one task per room forwarding RTP between its members' peer connections.
//! - [`signal`]: the WebSocket protocol, its messages and the per-connection task.
//! - [`http`]: the router: `/ws`, the admin REST API, `/healthz`, `/metrics`.
//! - [`store`]: durable call records and community servers behind the `Store`
//!   trait; SQLite by default.
//! - [`config`]: the TOML configuration with environment overrides.
//! - [`telemetry`]: Prometheus metrics and log set-up.
//! - [`server`]: assembles the above into a running server and shuts it down in order.
//! - [`client`]: a Rust client: signaling, WebRTC media, and [`client::Participant`]
//!   putting both behind one handle.
//! - [`audio`]: Opus encoding and decoding, Ogg Opus files, test tones and
//!   the Goertzel detector that checks them.
//! - [`bot`]: headless participants run by a sandboxed Lua script.
//! - [`loadtest`]: simulated participants that load a server and report.
//! - [`community`]: community servers, roles, channels and members' permissions;
//!   the live model rooms of media channels ask before each member action.
//!
//! The flow: a connection task parses a request, checks the token's grants and
//! sends a command to the room's task; the room applies it to its state
//! machine, queues events to member connections and record writes to the
//! store thread, then answers. No room ever waits on a client or on disk.

pub mod audio;
pub mod auth;
pub mod bot;
pub mod client;
pub mod clock;
pub mod community;
pub mod config;
pub mod http;
pub mod ids;
pub mod loadtest;
pub mod media;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod room;
pub mod script;
pub mod server;
pub mod signal;
pub mod status;
pub mod store;
pub mod telemetry;
