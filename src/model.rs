//! The domain's vocabulary, shared by every layer: roles, modes, media
//! kinds, why members leave, members as others see them. Plain data with
//! serde names; the wire protocol ([`crate::protocol`]) carries these as they
//! are, and so do the store, policies, plugins and the media plane.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// What a member may do with media in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Publishes and receives.
    Interactor,
    /// Receives only.
    Audience,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Interactor => "interactor",
            Role::Audience => "audience",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "interactor" => Ok(Role::Interactor),
            "audience" => Ok(Role::Audience),
            other => Err(format!(
                "unknown role `{other}`: use \"interactor\" or \"audience\""
            )),
        }
    }
}

/// The call type chosen at join: audio only, or audio and video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Audio,
    Video,
}

/// Which of a member's media a mute applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

impl std::str::FromStr for MediaKind {
    type Err = String;

    fn from_str(s: &str) -> Result<MediaKind, String> {
        match s {
            "audio" => Ok(MediaKind::Audio),
            "video" => Ok(MediaKind::Video),
            other => Err(format!(
                "unknown media kind `{other}`: use \"audio\" or \"video\""
            )),
        }
    }
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// Why a member is no longer in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The member asked to leave.
    Normal,
    /// Connection lost or heartbeat missed, and no reconnect within the grace window.
    Timeout,
    /// An administrator (or a policy) removed the member.
    Kicked,
    /// The room was closed with members still in it.
    RoomClosed,
    /// The server is shutting down.
    Shutdown,
    /// The same user joined again from another connection; only ever sent to
    /// the connection that lost the membership, never as `member_left`.
    Replaced,
    /// The member lost the right to connect to (or to see) the community
    /// media channel the room belongs to.
    PermissionRevoked,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Normal => "normal",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Kicked => "kicked",
            LeaveReason::RoomClosed => "room_closed",
            LeaveReason::Shutdown => "shutdown",
            LeaveReason::Replaced => "replaced",
            LeaveReason::PermissionRevoked => "permission_revoked",
        }
    }
}

/// Why a connection's time in a community media channel ended (QChat's
/// channel-ended reasons), as `channel_ended` tells that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelEndReason {
    /// The member disconnected (`leave`).
    LeftBySelf,
    /// Another member or an operator disconnected them.
    Kicked,
    /// The server ended the channel's room: closed by an operator or the
    /// room's policy, or the channel or its community server was deleted.
    ClosedByServer,
    /// Their permission to connect, or the channel's visibility to them, was
    /// taken away.
    PermissionRevoked,
    /// The same user connected again elsewhere.
    Replaced,
    /// The server is shutting down.
    Shutdown,
}

impl From<LeaveReason> for ChannelEndReason {
    fn from(reason: LeaveReason) -> Self {
        match reason {
            LeaveReason::Normal => ChannelEndReason::LeftBySelf,
            LeaveReason::Kicked => ChannelEndReason::Kicked,
            // A timeout is only ever seen by others: the member's connection
            // is already gone.
            LeaveReason::RoomClosed | LeaveReason::Timeout => ChannelEndReason::ClosedByServer,
            LeaveReason::Shutdown => ChannelEndReason::Shutdown,
            LeaveReason::Replaced => ChannelEndReason::Replaced,
            LeaveReason::PermissionRevoked => ChannelEndReason::PermissionRevoked,
        }
    }
}

/// A member as others see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub user: UserId,
    pub name: String,
    pub role: Role,
    pub mode: Mode,
    pub audio_muted: bool,
    pub video_muted: bool,
    /// Sharing a screen now.
    #[serde(default)]
    pub screen_sharing: bool,
    /// Unix milliseconds when this membership began.
    pub joined_at: i64,
}

/// An m-line where the member publishes its own audio or video.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishSlot {
    pub mid: String,
    pub kind: MediaKind,
}

/// An m-line carrying another member's track.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub mid: String,
    pub user: UserId,
    pub kind: MediaKind,
}

/// One member's audio level in a `volume` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLevel {
    pub user: UserId,
    /// RFC 6464 level: 0 (loudest, 0 dBov) to 127 (silence, -127 dBov).
    pub level: u8,
    pub speaking: bool,
}

/// A ban that comes with a kick (or a policy's `room.ban`): for `seconds`,
/// or, without, for as long as the room is open.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanTerms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// What the banned user is told when a join is refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}
