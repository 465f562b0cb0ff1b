//! Media channels as rooms: which room a channel runs in, and what the
//! room's built-in check step asks of the community.
//!
//! A media channel's room is an ordinary room named
//! `channel:<server>:<channel>`, opened on the first connect and closed when
//! the last member leaves (or the channel goes away). The room holds a
//! [`ChannelBinding`] and asks it, on the same path every member action
//! takes (`room::actor`'s authorize step, before plugins and Lua), whether
//! the member holds the key the action needs. Plugins and hooks then see the
//! same answer, so they refine it rather than repeat it.
//!
//! Holders of the token's admin grant are operators: no key is asked of
//! them, as in any other room (the member limit still holds).

use std::sync::Arc;

use super::hub::{CommunityHub, MemberContext};
use super::{ChannelKind, CommunityChannelId, MediaSettings, PermissionKey, ServerId};
use crate::ids::{RoomName, UserId};
use crate::policy::Action;
use crate::room::{RoomHandle, Rooms};
use crate::signal::protocol::MediaKind;
use crate::status::{Failure, Status};

/// Room names starting with this are reserved for media channels: nobody
/// creates them but a connect.
pub const ROOM_PREFIX: &str = "channel:";

/// The room a media channel runs in.
pub fn room_name(server: ServerId, channel: CommunityChannelId) -> RoomName {
    RoomName::new(format!("{ROOM_PREFIX}{server}:{channel}"))
        .expect("two integers and a short prefix make a valid room name")
}

/// The key a member's action needs in a media channel; `None` for actions
/// the QChat model does not govern (roles, data, muting oneself).
pub fn key_for(action: Action, kind: Option<MediaKind>) -> Option<PermissionKey> {
    use PermissionKey as K;
    Some(match (action, kind) {
        (Action::Join, _) => K::RtcChannelConnect,
        (Action::PublishAudio, _) => K::RtcChannelOpenMicrophone,
        (Action::PublishVideo, _) => K::RtcChannelOpenCamera,
        (Action::ShareScreen, _) => K::RtcChannelOpenShareScreen,
        (Action::MuteOther, Some(MediaKind::Audio)) => K::RtcChannelOpenCloseOtherMicrophone,
        (Action::MuteOther, Some(MediaKind::Video)) => K::RtcChannelOpenCloseOtherCamera,
        (Action::MuteEveryone, Some(MediaKind::Audio)) => K::RtcChannelOpenCloseEveryoneMicrophone,
        (Action::MuteEveryone, Some(MediaKind::Video)) => K::RtcChannelOpenCloseEveryoneCamera,
        (Action::Kick, _) => K::RtcChannelDisconnectOther,
        (Action::StopScreenShare, _) => K::RtcChannelCloseOtherShareScreen,
        _ => return None,
    })
}

/// The refusal for a missing key: 403, naming the key.
pub fn missing(key: PermissionKey, channel: CommunityChannelId) -> Failure {
    Failure::new(
        Status::Forbidden,
        format!("missing permission {key} in channel {channel}"),
    )
}

/// What a room bound to a media channel knows about it.
#[derive(Clone, Debug)]
pub struct ChannelBinding {
    pub hub: Arc<CommunityHub>,
    pub server: ServerId,
    pub channel: CommunityChannelId,
}

/// Something a change to the community forces on a connected member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// Lost `RTCChannelConnect` or sight of the channel: out.
    Remove(UserId),
    /// Lost the key to keep this open: closed.
    Mute(UserId, MediaKind),
    /// Lost `RTCChannelOpenShareScreen` while sharing.
    StopShare(UserId),
}

/// A connected member's media state, for [`ChannelBinding::revocations`].
#[derive(Clone, Debug)]
pub struct Connected {
    pub user: UserId,
    pub admin: bool,
    pub audio_on: bool,
    pub video_on: bool,
    pub sharing: bool,
}

impl ChannelBinding {
    /// The member's permissions here and the roles behind them.
    pub fn member(&self, user: &UserId) -> MemberContext {
        self.hub.member_context(self.server, self.channel, user)
    }

    /// The channel's settings; `None` once it is gone (or no longer media).
    pub fn settings(&self) -> Option<MediaSettings> {
        self.hub.read(|c| {
            let channel = c.server(self.server)?.channel(self.channel)?;
            (channel.kind() == ChannelKind::Media).then(|| *channel.settings())
        })
    }

    /// Whether a new member may connect: the channel is visible to them and
    /// they hold `RTCChannelConnect` (unless `admin`), and the room is below
    /// the member limit.
    pub fn admit(&self, ctx: &MemberContext, admin: bool, members: usize) -> Result<(), Failure> {
        let Some(settings) = self.settings() else {
            return Err(Failure::new(
                Status::NotFound,
                format!(
                    "no media channel {} in server {}",
                    self.channel, self.server
                ),
            ));
        };
        if !admin {
            require_connect(ctx)?;
        }
        if members >= settings.member_limit as usize {
            return Err(Failure::new(
                Status::ChannelFull,
                format!(
                    "channel {} is full: its member limit is {}",
                    self.channel, settings.member_limit
                ),
            ));
        }
        Ok(())
    }

    /// What the current community state takes away from connected members.
    pub fn revocations(&self, members: &[Connected]) -> Vec<Revocation> {
        use PermissionKey as K;
        let mut out = Vec::new();
        for m in members.iter().filter(|m| !m.admin) {
            let ctx = self.member(&m.user);
            if require_connect(&ctx).is_err() {
                out.push(Revocation::Remove(m.user.clone()));
                continue;
            }
            let held = ctx.permissions;
            if m.audio_on && !held.contains(K::RtcChannelOpenMicrophone) {
                out.push(Revocation::Mute(m.user.clone(), MediaKind::Audio));
            }
            if m.video_on && !held.contains(K::RtcChannelOpenCamera) {
                out.push(Revocation::Mute(m.user.clone(), MediaKind::Video));
            }
            if m.sharing && !held.contains(K::RtcChannelOpenShareScreen) {
                out.push(Revocation::StopShare(m.user.clone()));
            }
        }
        out
    }
}

/// Visible and `RTCChannelConnect`: what connecting, and staying, needs.
fn require_connect(ctx: &MemberContext) -> Result<(), Failure> {
    if !ctx.visible {
        // Not visible reads the same as not there, except for the code: a
        // member learns nothing about channels hidden from them.
        return Err(Failure::new(
            Status::Forbidden,
            format!(
                "channel {} is not visible to you (missing permission {})",
                ctx.channel,
                PermissionKey::RtcChannelConnect
            ),
        ));
    }
    if !ctx.permissions.contains(PermissionKey::RtcChannelConnect) {
        return Err(missing(PermissionKey::RtcChannelConnect, ctx.channel));
    }
    Ok(())
}

/// The room of a media channel, opened if nobody is connected yet. Checked
/// here first so a refused member does not open a room; the room checks again
/// (the community may change in between), and only the room's answer counts.
pub fn open_room(
    rooms: &Rooms,
    hub: &Arc<CommunityHub>,
    server: ServerId,
    channel: CommunityChannelId,
    user: &UserId,
    admin: bool,
) -> Result<(RoomHandle, MediaSettings), Failure> {
    let binding = ChannelBinding {
        hub: hub.clone(),
        server,
        channel,
    };
    let ctx = binding.member(user);
    let Some(settings) = binding.settings() else {
        return Err(Failure::new(
            Status::NotFound,
            format!("no media channel {channel} in server {server}"),
        ));
    };
    if !admin {
        require_connect(&ctx)?;
    }
    let name = room_name(server, channel);
    if let Some(handle) = rooms.get(&name) {
        return Ok((handle, settings));
    }
    match rooms.create_for_channel(name.clone(), binding) {
        Ok(handle) => Ok((handle, settings)),
        // Another connect opened it meanwhile.
        Err(f) if f.status == Status::Conflict => Ok((rooms.find(&name)?, settings)),
        Err(f) => Err(f),
    }
}

/// Who is connected to a channel the requester can see.
pub async fn online_members(
    rooms: &Rooms,
    hub: &Arc<CommunityHub>,
    server: ServerId,
    channel: CommunityChannelId,
    user: &UserId,
    admin: bool,
) -> Result<Vec<crate::signal::protocol::MemberInfo>, Failure> {
    let visible = hub.effective(server, Some(channel), user).visible;
    let exists = hub.read(|c| {
        c.server(server)
            .and_then(|s| s.channel(channel))
            .is_some_and(|c| c.kind() == ChannelKind::Media)
    });
    if !exists || !(visible || admin) {
        return Err(Failure::new(
            Status::NotFound,
            format!("no media channel {channel} in server {server}"),
        ));
    }
    match rooms.get(&room_name(server, channel)) {
        Some(handle) => match handle.members().await {
            Ok(members) => Ok(members),
            // Closed between the lookup and the question: nobody is in it.
            Err(f) if f.status == Status::NotFound => Ok(Vec::new()),
            Err(f) => Err(f),
        },
        None => Ok(Vec::new()),
    }
}
