//! Signaling: the WebSocket protocol at `/ws`.
//!
//! [`protocol`] defines every message; [`connection`] runs one task per
//! WebSocket that authenticates it, enforces frame size and request rate, and
//! turns requests into room commands; [`ratelimit`] is its token bucket.

pub mod connection;
pub mod protocol;
pub mod ratelimit;
