//! conclave: a room and media engine.
//!
//! People meet in named rooms (NetEase NIM multi-person call semantics:
//! create then join, interactor and audience roles, mute, join/leave/timeout
//! events, call records) and in community media channels (NetEase QChat:
//! servers, channels, roles with RTC permissions) over a documented WebSocket
//! protocol and WebRTC, shaped by Lua room policies and wasm permission
//! plugins that reload from disk.
//!
//! # Layers
//!
//! Each module imports only modules of lower layers (never its own layer,
//! never a higher one). `tests/layers.rs` reads the table below and fails on
//! any `crate::` path that breaks it.
//!
//! <!-- layers:begin -->
//! | layer | modules | what they are |
//! |---|---|---|
//! | 0 | `ids` `status` `clock` `ticker` `telemetry` `audio` | identifiers, status codes, the clock, a thread that ticks only while there is work, metric labels and logs, Opus and Ogg |
//! | 1 | `model` | the domain's vocabulary: roles, modes, media kinds, members |
//! | 2 | `auth` `community` `script` | tokens and grants; the QChat model and its live hub; the one Lua host |
//! | 3 | `protocol` `store` | the wire messages; durable records, community snapshots, the script store |
//! | 4 | `policy` `media` | scripts, plugins and the authorization pipeline; the SFU |
//! | 5 | `room` `client` | the room state machine, its task and the registry; the Rust client |
//! | 6 | `bot` `loadtest` `cluster` | Lua-scripted participants; simulated load; nodes sharing rooms over Redis |
//! | 7 | `app` | configuration, shared state, services across rooms, errors to statuses, metrics |
//! | 8 | `signal` `authoring` | one task per WebSocket connection; the authoring toolkit (policy check, test, replay; plugin check), offline |
//! | 9 | `http` | the router: `/ws`, the admin and community APIs, health, metrics, the page |
//! | 10 | `server` | assembles everything and shuts it down in order |
//! <!-- layers:end -->
//!
//! The flow: a connection task (`signal`) parses a request and sends a
//! command to the room's task (`room`); the room authorizes it once
//! (`policy::authz`: grants, community keys, plugins, the Lua hook), applies
//! it to its state machine, queues events to member connections and record
//! writes to the store thread, tells its media task who may publish what,
//! then answers. No room ever waits on a client or on disk.

pub mod app;
pub mod audio;
pub mod auth;
pub mod authoring;
pub mod bot;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod community;
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
pub mod ticker;
