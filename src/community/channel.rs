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
use crate::auth::Identity;
use crate::ids::{ConnId, RoomName, UserId};
use crate::model::{MediaKind, Mode};
use crate::policy::Action;
use crate::protocol::ConnectOk;
use crate::room::{RoomHandle, Rooms, Sink};
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

/// Connects `identity` to a media channel: opens its room if needed and
/// joins it. A room that closes between the lookup and the join (its last
/// member just left) is opened again, once.
pub async fn connect(
    rooms: &Rooms,
    hub: &Arc<CommunityHub>,
    (server, channel): (ServerId, CommunityChannelId),
    conn: ConnId,
    identity: Arc<Identity>,
    mode: Mode,
    sink: Sink,
) -> Result<(RoomHandle, ConnectOk), Failure> {
    let admin = identity.grants.admin;
    let mut attempts = 2;
    loop {
        attempts -= 1;
        let (handle, settings) = open_room(rooms, hub, server, channel, &identity.user, admin)?;
        match handle
            .join(conn, identity.clone(), mode, None, sink.clone())
            .await
        {
            Ok(join) => {
                let ok = ConnectOk {
                    server,
                    channel,
                    settings,
                    join,
                };
                return Ok((handle, ok));
            }
            Err(f) if f.status == Status::NotFound && attempts > 0 => continue,
            Err(f) => return Err(f),
        }
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
) -> Result<Vec<crate::model::MemberInfo>, Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::community::{PermissionChanges, PermissionValue, Visibility};

    fn bound() -> ChannelBinding {
        let hub = CommunityHub::load(&[], None).expect("an empty community loads");
        let server = hub
            .create_server("olivia".into(), "guild".into(), "test")
            .id;
        let channel = CommunityChannelId(hub.allocate_id());
        hub.edit(server, "test", |s| {
            s.add_member("bob".into());
            s.add_member("admin".into());
            Ok(s.add_channel(channel, ChannelKind::Media, Visibility::Public)?)
        })
        .unwrap();
        ChannelBinding {
            hub,
            server,
            channel,
        }
    }

    fn connected(user: &str, admin: bool) -> Connected {
        Connected {
            user: user.into(),
            admin,
            audio_on: true,
            video_on: true,
            sharing: true,
        }
    }

    fn member_override(b: &ChannelBinding, user: &str, key: PermissionKey, value: PermissionValue) {
        let changes = PermissionChanges::new().with(key, value);
        b.hub
            .edit(b.server, "test", |s| {
                Ok(s.update_member_override(b.channel, &user.into(), &changes)?)
            })
            .unwrap();
    }

    #[test]
    fn every_rtc_key_has_its_action() {
        let mut keys: Vec<PermissionKey> = [
            (Action::Join, None),
            (Action::PublishAudio, None),
            (Action::PublishVideo, None),
            (Action::ShareScreen, None),
            (Action::MuteOther, Some(MediaKind::Audio)),
            (Action::MuteOther, Some(MediaKind::Video)),
            (Action::MuteEveryone, Some(MediaKind::Audio)),
            (Action::MuteEveryone, Some(MediaKind::Video)),
            (Action::Kick, None),
            (Action::StopScreenShare, None),
        ]
        .into_iter()
        .filter_map(|(action, kind)| key_for(action, kind))
        .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys, PermissionKey::ALL[..10]);
        assert_eq!(key_for(Action::SetRole, None), None);
        assert_eq!(key_for(Action::SendData, None), None);
    }

    #[test]
    fn revocations_follow_the_current_permissions() {
        let b = bound();
        let members = [connected("bob", false), connected("admin", true)];
        assert!(b.revocations(&members).is_empty());

        member_override(
            &b,
            "bob",
            PermissionKey::RtcChannelOpenMicrophone,
            PermissionValue::Deny,
        );
        member_override(
            &b,
            "admin",
            PermissionKey::RtcChannelConnect,
            PermissionValue::Deny,
        );
        assert_eq!(
            b.revocations(&members),
            [Revocation::Mute("bob".into(), MediaKind::Audio)]
        );

        member_override(
            &b,
            "bob",
            PermissionKey::RtcChannelConnect,
            PermissionValue::Deny,
        );
        assert_eq!(b.revocations(&members), [Revocation::Remove("bob".into())]);
    }

    #[test]
    fn admission_checks_sight_connect_and_the_limit() {
        let b = bound();
        let bob = b.member(&"bob".into());
        assert!(b.admit(&bob, false, 0).is_ok());
        let full = b.admit(&bob, false, 99).unwrap_err();
        assert_eq!(full.status, Status::ChannelFull);
        let stranger = b.member(&"eve".into());
        let err = b.admit(&stranger, false, 0).unwrap_err();
        assert_eq!(err.status, Status::Forbidden);
        assert!(b.admit(&stranger, true, 0).is_ok());
    }
}
