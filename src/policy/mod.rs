//! Room policies (Lua) and permission plugins (wasm): how operators shape
//! rooms without recompiling.
//!
//! Decision order for every action a member attempts, run in one place
//! ([`authz`]):
//! 1. built-in rules: the token's grants and, in a media channel, the
//!    community's permission keys;
//! 2. wasm permission plugins ([`wasm`]): each answers allow, deny or
//!    abstain; any deny wins;
//! 3. the room's Lua policy ([`lua`]): its decide hook may allow, deny, or
//!    change the outcome (join as audience instead, say).
//!
//! The room's state machine then applies only the room's own invariants.
//!
//! A deny at any step carries a status code and a reason that reach the
//! client. A script or plugin that fails (error, budget, memory, trap)
//! decides by its configured failure mode, deny unless told otherwise.
//!
//! [`catalog`] holds the compiled, versioned scripts and plugins;
//! [`reload`] watches the directories and swaps new versions in;
//! [`runtime`] is one room's share of them.

pub mod authz;
pub mod bans;
pub mod catalog;
pub mod decisions;
pub mod lua;
pub mod recording;
pub mod reload;
pub mod runtime;
pub mod shadow;
pub mod wasm;

use serde::{Deserialize, Serialize};

use crate::model::{MediaKind, Role};

/// Everything a plugin is asked about. The numbers are the plugin ABI's
/// action codes (docs/plugins.md) and never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    CreateRoom = 1,
    Join = 2,
    PublishAudio = 3,
    PublishVideo = 4,
    ShareScreen = 5,
    MuteOther = 6,
    MuteEveryone = 7,
    Kick = 8,
    SetRole = 9,
    SendData = 10,
    /// Stop another member's screen share.
    StopScreenShare = 11,
}

impl Action {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateRoom => "create_room",
            Action::Join => "join",
            Action::PublishAudio => "publish_audio",
            Action::PublishVideo => "publish_video",
            Action::ShareScreen => "share_screen",
            Action::MuteOther => "mute_other",
            Action::MuteEveryone => "mute_everyone",
            Action::Kick => "kick",
            Action::SetRole => "set_role",
            Action::SendData => "send_data",
            Action::StopScreenShare => "stop_screen_share",
        }
    }
}

/// One permission question, borrowed from the request being decided.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    pub action: Action,
    pub room: &'a str,
    /// Who acts.
    pub user: &'a str,
    /// Whom the action is aimed at; empty when nobody.
    pub target: &'a str,
    /// The role asked for (join, set_role).
    pub role: Option<Role>,
    /// The media kind (publish, mute); for a join, the mode's: video for a
    /// join in video mode, audio for one in audio mode.
    pub kind: Option<MediaKind>,
    /// For mutes: true to mute, false to unmute.
    pub muted: bool,
    /// The actor holds the admin grant.
    pub admin: bool,
    /// Effective community permissions of the actor, as bits.
    pub permissions: u64,
    /// The actor's token attributes as `key=value` lines
    /// ([`crate::auth::attr_lines`]); empty when it has none.
    pub attrs: &'a str,
}

impl<'a> Check<'a> {
    pub fn new(action: Action, room: &'a str, user: &'a str) -> Check<'a> {
        Check {
            action,
            room,
            user,
            target: "",
            role: None,
            kind: None,
            muted: false,
            admin: false,
            permissions: 0,
            attrs: "",
        }
    }
}

/// What a script or plugin that fails is taken to have answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Fail closed: the action is refused (the default).
    #[default]
    Deny,
    /// Fail open: the script or plugin is ignored for this action.
    Allow,
}
