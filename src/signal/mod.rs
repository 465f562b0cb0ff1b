//! Signaling: the WebSocket protocol at `/ws`.
//!
//! [`connection`] runs one task per WebSocket that authenticates it,
//! enforces frame size and request rate, and turns requests
//! ([`crate::protocol`]) into room commands; [`ratelimit`] is its token
//! bucket.

pub mod connection;
pub mod ratelimit;
