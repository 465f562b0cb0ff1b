//! Identifier newtypes shared by every layer.
//!
//! A room is named by a [`RoomName`] (validated once, at the edge) and each
//! instance of that name gets a fresh [`ChannelId`]: a name can be created again
//! after the room closes, but a channel id is never reused, so call records and
//! events always say which instance they mean.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest room name accepted, in bytes.
pub const MAX_ROOM_NAME_LEN: usize = 128;

/// A validated room name: 1 to [`MAX_ROOM_NAME_LEN`] bytes, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomName(String);

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoomName {
    #[error("room name is empty")]
    Empty,
    #[error("room name is {0} bytes long; the limit is {MAX_ROOM_NAME_LEN}")]
    TooLong(usize),
    #[error("room name contains a control character at byte {0}")]
    ControlCharacter(usize),
}

impl RoomName {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidRoomName> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidRoomName::Empty);
        }
        if name.len() > MAX_ROOM_NAME_LEN {
            return Err(InvalidRoomName::TooLong(name.len()));
        }
        if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
            return Err(InvalidRoomName::ControlCharacter(at));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        RoomName::new(raw).map_err(serde::de::Error::custom)
    }
}

/// One instance of a room: unique for the life of the deployment.
///
/// Built from the wall clock (milliseconds since 2020) shifted left 12 bits
/// plus a sequence, so ids sort by creation time, survive restarts without a
/// counter on disk, and stay below 2^53: a JavaScript client reads them from
/// JSON exactly (until the year 2089).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelId(pub i64);

impl ChannelId {
    /// A channel id never handed out before by this process.
    pub fn generate() -> Self {
        static LAST: AtomicU64 = AtomicU64::new(0);
        const EPOCH_2020_MS: u64 = 1_577_836_800_000;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(EPOCH_2020_MS);
        let candidate = millis << 12;
        // Monotonic even if the clock steps back or 4,096 rooms open in one millisecond.
        let prev = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(candidate.max(last + 1))
            })
            .expect("the update closure always returns Some");
        ChannelId(candidate.max(prev + 1) as i64)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user's account id, as carried in the token's `sub` claim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub String);

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        UserId(s.to_owned())
    }
}

/// One signaling connection. A user may reconnect and so own several over a
/// membership; the room always knows which one is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnId(pub u64);

impl ConnId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_validated() {
        assert_eq!(RoomName::new(""), Err(InvalidRoomName::Empty));
        assert_eq!(
            RoomName::new("a".repeat(MAX_ROOM_NAME_LEN + 1)),
            Err(InvalidRoomName::TooLong(MAX_ROOM_NAME_LEN + 1))
        );
        assert_eq!(
            RoomName::new("ab\ncd"),
            Err(InvalidRoomName::ControlCharacter(2))
        );
        assert_eq!(RoomName::new("会议室 1").unwrap().as_str(), "会议室 1");
        assert!(RoomName::new("a".repeat(MAX_ROOM_NAME_LEN)).is_ok());
    }

    #[test]
    fn channel_ids_are_unique_and_increasing() {
        let ids: Vec<_> = (0..10_000).map(|_| ChannelId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids[0].0 > 0);
        assert!(ids[9_999].0 < 1 << 53, "exact as a JavaScript number");
    }
}
