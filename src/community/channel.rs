//! Media channels as rooms: which room a channel runs in, and what the
//! community says about who may be in it.
//!
//! A media channel's room is an ordinary room named
//! `channel:<server>:<channel>`, opened on the first connect and closed when
//! the last member leaves (or the channel goes away). The room holds a
//! [`ChannelBinding`]; the authorization pipeline (`policy::authz`) asks it
//! whether a member may connect and which keys the member holds, and the
//! room asks it what a change to the community takes from connected members.
//!
//! Holders of the token's admin grant are operators: no key is asked of
//! them, as in any other room (the member limit still holds).

use std::sync::Arc;

use super::hub::{CommunityHub, MemberContext};
use super::{ChannelKind, CommunityChannelId, MediaSettings, PermissionKey, ServerId};
use crate::ids::{RoomName, UserId};
use crate::model::MediaKind;

/// Room names starting with this are reserved for media channels: nobody
/// creates them but a connect.
pub const ROOM_PREFIX: &str = "channel:";

/// The room a media channel runs in.
pub fn room_name(server: ServerId, channel: CommunityChannelId) -> RoomName {
    RoomName::new(format!("{ROOM_PREFIX}{server}:{channel}"))
        .expect("two integers and a short prefix make a valid room name")
}

/// Why a member may not connect to a media channel (now).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("no media channel {channel} in server {server}")]
    NoSuchChannel {
        server: ServerId,
        channel: CommunityChannelId,
    },
    /// Not visible reads the same as not there, except for the code: a
    /// member learns nothing about channels hidden from them.
    #[error(
        "channel {channel} is not visible to you (missing permission {})",
        PermissionKey::RtcChannelConnect
    )]
    NotVisible { channel: CommunityChannelId },
    #[error("missing permission {key} in channel {channel}")]
    Missing {
        key: PermissionKey,
        channel: CommunityChannelId,
    },
    #[error("channel {channel} is full: its member limit is {limit}")]
    Full {
        channel: CommunityChannelId,
        limit: u32,
    },
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
    pub fn admit(
        &self,
        ctx: &MemberContext,
        admin: bool,
        members: usize,
    ) -> Result<(), AdmitError> {
        let Some(settings) = self.settings() else {
            return Err(AdmitError::NoSuchChannel {
                server: self.server,
                channel: self.channel,
            });
        };
        if !admin {
            require_connect(ctx)?;
        }
        if members >= settings.member_limit as usize {
            return Err(AdmitError::Full {
                channel: self.channel,
                limit: settings.member_limit,
            });
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
fn require_connect(ctx: &MemberContext) -> Result<(), AdmitError> {
    if !ctx.visible {
        return Err(AdmitError::NotVisible {
            channel: ctx.channel,
        });
    }
    if !ctx.permissions.contains(PermissionKey::RtcChannelConnect) {
        return Err(AdmitError::Missing {
            key: PermissionKey::RtcChannelConnect,
            channel: ctx.channel,
        });
    }
    Ok(())
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
        assert!(matches!(full, AdmitError::Full { limit: 99, .. }), "{full}");
        let stranger = b.member(&"eve".into());
        let err = b.admit(&stranger, false, 0).unwrap_err();
        assert!(matches!(err, AdmitError::NotVisible { .. }), "{err}");
        assert!(b.admit(&stranger, true, 0).is_ok());
    }
}
