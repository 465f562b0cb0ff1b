//! A server as plain data: what the store writes and the API shows.
//!
//! Loading goes through the same [`Server`] methods every change uses, so a
//! snapshot that breaks an invariant (a member holding a role that does not
//! exist, say) is refused with the error that change would have got, instead
//! of producing a server the resolution code never expected.

use serde::{Deserialize, Serialize};

use super::{
    ChannelKind, ChannelList, CommunityChannelId, CommunityError, ListEntry, ListKind,
    MediaSettings, Permissions, RoleId, Server, ServerId, Visibility,
};
use crate::ids::UserId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSnapshot {
    pub id: ServerId,
    pub name: String,
    pub owner: UserId,
    /// The everyone role's permissions.
    pub everyone: Permissions,
    /// Custom roles, by id.
    pub roles: Vec<RoleSnapshot>,
    /// Members by user id, each with the custom roles they hold.
    pub members: Vec<MemberSnapshot>,
    /// Channels by id.
    pub channels: Vec<ChannelSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSnapshot {
    pub id: RoleId,
    pub name: String,
    pub priority: i64,
    pub permissions: Permissions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSnapshot {
    pub user: UserId,
    pub roles: Vec<RoleId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    pub id: CommunityChannelId,
    pub name: String,
    pub kind: ChannelKind,
    pub visibility: Visibility,
    pub settings: MediaSettings,
    pub role_overrides: Vec<RoleOverride>,
    pub member_overrides: Vec<MemberOverride>,
    pub black_list: ListSnapshot,
    pub white_list: ListSnapshot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleOverride {
    pub role: RoleId,
    pub permissions: Permissions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberOverride {
    pub user: UserId,
    pub permissions: Permissions,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSnapshot {
    pub roles: Vec<RoleId>,
    pub members: Vec<UserId>,
}

impl ListSnapshot {
    fn of(list: &ChannelList) -> ListSnapshot {
        let mut members: Vec<UserId> = list.members().cloned().collect();
        members.sort();
        ListSnapshot {
            roles: list.roles().to_vec(),
            members,
        }
    }

    fn entries(&self) -> impl Iterator<Item = ListEntry> + '_ {
        self.roles
            .iter()
            .map(|r| ListEntry::Role(*r))
            .chain(self.members.iter().cloned().map(ListEntry::Member))
    }
}

impl Server {
    /// Everything about the server, in a stable order (sorted ids), so equal
    /// servers give equal snapshots.
    pub fn snapshot(&self) -> ServerSnapshot {
        let mut members: Vec<MemberSnapshot> = self
            .members
            .iter()
            .map(|(user, m)| MemberSnapshot {
                user: user.clone(),
                roles: m.roles.clone(),
            })
            .collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        let mut channels: Vec<ChannelSnapshot> =
            self.channels.values().map(channel_snapshot).collect();
        channels.sort_by_key(|c| c.id);
        ServerSnapshot {
            id: self.id,
            name: self.name.clone(),
            owner: self.owner.clone(),
            everyone: self.everyone.permissions,
            roles: self
                .roles
                .iter()
                .map(|r| RoleSnapshot {
                    id: r.id,
                    name: r.name.clone(),
                    priority: r.priority,
                    permissions: r.permissions,
                })
                .collect(),
            members,
            channels,
        }
    }

    /// Rebuilds a server through the checked methods.
    pub fn from_snapshot(snapshot: &ServerSnapshot) -> Result<Server, CommunityError> {
        let mut server = Server::new(snapshot.id, snapshot.owner.clone());
        server.set_name(snapshot.name.clone());
        server.set_role_permissions(RoleId::EVERYONE, snapshot.everyone)?;
        for role in &snapshot.roles {
            server.add_role(role.id, role.name.clone(), role.priority, role.permissions)?;
        }
        for member in &snapshot.members {
            server.add_member(member.user.clone());
            for role in &member.roles {
                server.assign_role(&member.user, *role)?;
            }
        }
        for c in &snapshot.channels {
            server.add_channel(c.id, c.kind, c.visibility)?;
            server.rename_channel(c.id, c.name.clone())?;
            if c.kind == ChannelKind::Media {
                server.set_media_settings(c.id, c.settings)?;
            }
            for o in &c.role_overrides {
                server.set_role_override(c.id, o.role, o.permissions)?;
            }
            for o in &c.member_overrides {
                server.set_member_override(c.id, &o.user, o.permissions)?;
            }
            for entry in c.black_list.entries() {
                server.list_add(c.id, ListKind::Black, entry)?;
            }
            for entry in c.white_list.entries() {
                server.list_add(c.id, ListKind::White, entry)?;
            }
        }
        Ok(server)
    }
}

pub(crate) fn channel_snapshot(c: &super::Channel) -> ChannelSnapshot {
    let mut member_overrides: Vec<MemberOverride> = c
        .member_overrides()
        .map(|(user, permissions)| MemberOverride {
            user: user.clone(),
            permissions,
        })
        .collect();
    member_overrides.sort_by(|a, b| a.user.cmp(&b.user));
    ChannelSnapshot {
        id: c.id(),
        name: c.name().to_owned(),
        kind: c.kind(),
        visibility: c.visibility(),
        settings: *c.settings(),
        role_overrides: c
            .role_overrides()
            .iter()
            .map(|(role, permissions)| RoleOverride {
                role: *role,
                permissions: *permissions,
            })
            .collect(),
        member_overrides,
        black_list: ListSnapshot::of(c.list(ListKind::Black)),
        white_list: ListSnapshot::of(c.list(ListKind::White)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::community::{PermissionKey, PermissionValue};

    #[test]
    fn a_server_survives_a_round_trip_through_json() {
        let owner = UserId::from("olivia");
        let mut s = Server::new(ServerId(7), owner);
        s.set_name("guild");
        s.add_member("bob".into());
        s.add_role(
            RoleId(3),
            "mod",
            10,
            Permissions::EMPTY.with(PermissionKey::ManageRole, PermissionValue::Allow),
        )
        .unwrap();
        s.assign_role(&"bob".into(), RoleId(3)).unwrap();
        let ch = CommunityChannelId(9);
        s.add_channel(ch, ChannelKind::Media, Visibility::Private)
            .unwrap();
        s.rename_channel(ch, "stage").unwrap();
        let settings = MediaSettings {
            member_limit: 5,
            ..MediaSettings::default()
        };
        s.set_media_settings(ch, settings).unwrap();
        s.set_role_override(
            ch,
            RoleId(3),
            Permissions::EMPTY.with(PermissionKey::RtcChannelConnect, PermissionValue::Deny),
        )
        .unwrap();
        s.set_member_override(
            ch,
            &"bob".into(),
            Permissions::EMPTY.with(PermissionKey::RtcChannelOpenCamera, PermissionValue::Allow),
        )
        .unwrap();
        s.list_add(ch, ListKind::White, ListEntry::Role(RoleId(3)))
            .unwrap();
        s.list_add(ch, ListKind::White, ListEntry::Member("bob".into()))
            .unwrap();

        let json = serde_json::to_string(&s.snapshot()).unwrap();
        let back: ServerSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(Server::from_snapshot(&back).unwrap(), s);
    }

    #[test]
    fn a_snapshot_breaking_an_invariant_is_refused() {
        let mut snap = Server::new(ServerId(1), "o".into()).snapshot();
        snap.members.push(MemberSnapshot {
            user: "x".into(),
            roles: vec![RoleId(42)],
        });
        assert_eq!(
            Server::from_snapshot(&snap),
            Err(CommunityError::NoSuchRole(RoleId(42)))
        );
    }
}
