//! The resolution order as a table, plus the wire form and the model's rules.
//!
//! Every row of the table is checked three ways: on a bare [`Server`], and
//! twice through a [`Community`] (a cache miss, then a hit). A row with a
//! `change` first resolves through the community, so the old answer is
//! cached, then applies the change through [`Community::edit`]: a stale cache
//! fails the row.

use super::*;
use crate::community::{
    ChannelKind, Community, CommunityError, ListEntry, ListKind, Server, ServerId, Visibility,
};

const SERVER: ServerId = ServerId(1);
/// Public media channel.
const MEDIA: CommunityChannelId = CommunityChannelId(10);
/// Another public media channel, to show overrides stay in their channel.
const MEDIA2: CommunityChannelId = CommunityChannelId(11);
/// Public text channel.
const TEXT: CommunityChannelId = CommunityChannelId(12);
/// Private media channel.
const PRIVATE: CommunityChannelId = CommunityChannelId(13);
/// No such channel.
const GONE: CommunityChannelId = CommunityChannelId(99);

const EVERYONE: RoleId = RoleId::EVERYONE;
/// Custom roles, ranked A (10) above B (20) above C (30).
const A: RoleId = RoleId(1);
const B: RoleId = RoleId(2);
const C: RoleId = RoleId(3);

const CONNECT: PermissionKey = PermissionKey::RtcChannelConnect;
const DISCONNECT: PermissionKey = PermissionKey::RtcChannelDisconnectOther;
const MIC: PermissionKey = PermissionKey::RtcChannelOpenMicrophone;
const CAM: PermissionKey = PermissionKey::RtcChannelOpenCamera;
const SCREEN: PermissionKey = PermissionKey::RtcChannelOpenShareScreen;
const M_SERVER: PermissionKey = PermissionKey::ManageServer;
const M_CHANNEL: PermissionKey = PermissionKey::ManageChannel;
const M_ROLE: PermissionKey = PermissionKey::ManageRole;
const M_LISTS: PermissionKey = PermissionKey::ManageBlackWhiteList;
const MANAGE: &[PermissionKey] = &[M_SERVER, M_CHANNEL, M_ROLE, M_LISTS];

fn u(name: &str) -> UserId {
    UserId::from(name)
}

fn allow(keys: &[PermissionKey]) -> Permissions {
    Permissions::allowing(KeySet::of(keys))
}

fn deny(keys: &[PermissionKey]) -> Permissions {
    Permissions::denying(KeySet::of(keys))
}

/// Owner `owner`; members alice, bob and carol holding no custom role; the
/// everyone role allows only RTCChannelConnect; roles A, B, C allow nothing;
/// channels MEDIA, MEDIA2 (public media), TEXT (public text) and PRIVATE
/// (private media), all without overrides or list entries.
fn base() -> Server {
    let mut s = Server::new(SERVER, u("owner"));
    for name in ["alice", "bob", "carol"] {
        s.add_member(u(name));
    }
    s.set_role_permissions(EVERYONE, allow(&[CONNECT])).unwrap();
    s.add_role(A, "a", 10, Permissions::EMPTY).unwrap();
    s.add_role(B, "b", 20, Permissions::EMPTY).unwrap();
    s.add_role(C, "c", 30, Permissions::EMPTY).unwrap();
    s.add_channel(MEDIA, ChannelKind::Media, Visibility::Public)
        .unwrap();
    s.add_channel(MEDIA2, ChannelKind::Media, Visibility::Public)
        .unwrap();
    s.add_channel(TEXT, ChannelKind::Text, Visibility::Public)
        .unwrap();
    s.add_channel(PRIVATE, ChannelKind::Media, Visibility::Private)
        .unwrap();
    s
}

// Setup shorthands: the table stays one line of intent per step.
fn give(s: &mut Server, user: &str, role: RoleId) {
    s.assign_role(&u(user), role).unwrap();
}
fn role_perms(s: &mut Server, role: RoleId, p: Permissions) {
    s.set_role_permissions(role, p).unwrap();
}
fn role_over(s: &mut Server, channel: CommunityChannelId, role: RoleId, p: Permissions) {
    s.set_role_override(channel, role, p).unwrap();
}
fn member_over(s: &mut Server, channel: CommunityChannelId, user: &str, p: Permissions) {
    s.set_member_override(channel, &u(user), p).unwrap();
}
fn list(s: &mut Server, channel: CommunityChannelId, kind: ListKind, entry: ListEntry) {
    s.list_add(channel, kind, entry).unwrap();
}
fn listed(user: &str) -> ListEntry {
    ListEntry::Member(u(user))
}

enum Check {
    /// Exactly these keys allowed, with this visibility.
    Exactly {
        channel: Option<CommunityChannelId>,
        user: &'static str,
        keys: &'static [PermissionKey],
        visible: bool,
    },
    /// Exactly this keyset (for the wide ones: all keys, manage keys).
    Set {
        channel: Option<CommunityChannelId>,
        user: &'static str,
        keys: KeySet,
        visible: bool,
    },
    /// These keys allowed, those not, the others not checked.
    Keys {
        channel: Option<CommunityChannelId>,
        user: &'static str,
        has: &'static [PermissionKey],
        lacks: &'static [PermissionKey],
    },
    /// The whole answer, flags included.
    Is {
        channel: Option<CommunityChannelId>,
        user: &'static str,
        expect: Effective,
    },
    Grant {
        channel: Option<CommunityChannelId>,
        user: &'static str,
        keys: KeySet,
        expect: bool,
    },
    Authorize {
        user: &'static str,
        action: Manage,
        expect: Result<(), Refusal>,
    },
}

struct Case {
    name: &'static str,
    setup: fn(&mut Server),
    /// Applied through `Community::edit` after a first, cached resolution.
    change: Option<fn(&mut Server)>,
    check: Check,
}

fn none(_: &mut Server) {}

fn case(name: &'static str, setup: fn(&mut Server), check: Check) -> Case {
    Case {
        name,
        setup,
        change: None,
        check,
    }
}

fn after(
    name: &'static str,
    setup: fn(&mut Server),
    change: fn(&mut Server),
    check: Check,
) -> Case {
    Case {
        name,
        setup,
        change: Some(change),
        check,
    }
}

fn exactly(
    channel: Option<CommunityChannelId>,
    user: &'static str,
    keys: &'static [PermissionKey],
    visible: bool,
) -> Check {
    Check::Exactly {
        channel,
        user,
        keys,
        visible,
    }
}

fn keys(
    channel: Option<CommunityChannelId>,
    user: &'static str,
    has: &'static [PermissionKey],
    lacks: &'static [PermissionKey],
) -> Check {
    Check::Keys {
        channel,
        user,
        has,
        lacks,
    }
}

fn grant(
    channel: Option<CommunityChannelId>,
    user: &'static str,
    keys: &[PermissionKey],
    expect: bool,
) -> Check {
    Check::Grant {
        channel,
        user,
        keys: KeySet::of(keys),
        expect,
    }
}

fn authorize(user: &'static str, action: Manage, expect: Result<(), Refusal>) -> Check {
    Check::Authorize {
        user,
        action,
        expect,
    }
}

const M: Option<CommunityChannelId> = Some(MEDIA);
const SRV: Option<CommunityChannelId> = None;

fn cases() -> Vec<Case> {
    vec![
        // 1. Not a member.
        case(
            "non-member: nothing at server level",
            none,
            exactly(SRV, "stranger", &[], false),
        ),
        case(
            "non-member: nothing in a public media channel",
            none,
            exactly(M, "stranger", &[], false),
        ),
        case(
            "non-member: the everyone role's allows do not reach non-members",
            |s| role_perms(s, EVERYONE, Permissions::allowing(KeySet::ALL)),
            Check::Is {
                channel: M,
                user: "stranger",
                expect: Effective::NONE,
            },
        ),
        // 2. The owner.
        case(
            "owner: every key at server level, flagged owner",
            none,
            Check::Is {
                channel: SRV,
                user: "owner",
                expect: Effective {
                    permissions: KeySet::ALL,
                    visible: true,
                    member: true,
                    owner: true,
                },
            },
        ),
        case(
            "owner: every key in a media channel",
            none,
            Check::Set {
                channel: M,
                user: "owner",
                keys: KeySet::ALL,
                visible: true,
            },
        ),
        case(
            "owner: on the black list by name, still sees and may do everything",
            |s| list(s, MEDIA, ListKind::Black, listed("owner")),
            Check::Set {
                channel: M,
                user: "owner",
                keys: KeySet::ALL,
                visible: true,
            },
        ),
        case(
            "owner: a member override denying everything is ignored",
            |s| member_over(s, MEDIA, "owner", Permissions::denying(KeySet::ALL)),
            Check::Set {
                channel: M,
                user: "owner",
                keys: KeySet::ALL,
                visible: true,
            },
        ),
        case(
            "owner: an everyone override denying everything is ignored",
            |s| role_over(s, MEDIA, EVERYONE, Permissions::denying(KeySet::ALL)),
            Check::Set {
                channel: M,
                user: "owner",
                keys: KeySet::ALL,
                visible: true,
            },
        ),
        case(
            "owner: sees a private channel without being on its white list",
            none,
            Check::Set {
                channel: Some(PRIVATE),
                user: "owner",
                keys: KeySet::ALL,
                visible: true,
            },
        ),
        case(
            "owner: in a text channel only the manage keys apply",
            none,
            Check::Set {
                channel: Some(TEXT),
                user: "owner",
                keys: KeySet::MANAGE,
                visible: true,
            },
        ),
        // 3. Server level.
        case(
            "everyone role alone: its allows at server level",
            none,
            exactly(SRV, "alice", &[CONNECT], true),
        ),
        case(
            "everyone role alone: the same in a plain media channel",
            none,
            exactly(M, "alice", &[CONNECT], true),
        ),
        case(
            "everyone role allowing nothing: nothing, the server still visible",
            |s| role_perms(s, EVERYONE, Permissions::EMPTY),
            Check::Is {
                channel: SRV,
                user: "alice",
                expect: Effective {
                    permissions: KeySet::EMPTY,
                    visible: true,
                    member: true,
                    owner: false,
                },
            },
        ),
        case(
            "server role: its allows add to the everyone role's",
            |s| {
                role_perms(s, A, allow(&[MIC]));
                give(s, "alice", A);
            },
            exactly(SRV, "alice", &[CONNECT, MIC], true),
        ),
        case(
            "two server roles: their allows combine",
            |s| {
                role_perms(s, A, allow(&[MIC]));
                role_perms(s, B, allow(&[CAM]));
                give(s, "alice", A);
                give(s, "alice", B);
            },
            exactly(SRV, "alice", &[CONNECT, MIC, CAM], true),
        ),
        case(
            "server role deny loses to the everyone role's allow",
            |s| {
                role_perms(s, A, deny(&[CONNECT]));
                give(s, "alice", A);
            },
            exactly(M, "alice", &[CONNECT], true),
        ),
        case(
            "server roles conflicting: one allows, another denies, allowed",
            |s| {
                role_perms(s, A, allow(&[MIC]));
                role_perms(s, B, deny(&[MIC]));
                give(s, "alice", A);
                give(s, "alice", B);
            },
            exactly(M, "alice", &[CONNECT, MIC], true),
        ),
        case(
            "server role deny with no allow anywhere: not allowed (deny is inherit here)",
            |s| {
                role_perms(s, A, deny(&[MIC]));
                give(s, "alice", A);
            },
            exactly(SRV, "alice", &[CONNECT], true),
        ),
        case(
            "server role not held changes nothing",
            |s| role_perms(s, A, allow(&[MIC])),
            exactly(SRV, "bob", &[CONNECT], true),
        ),
        // 4. Channel role overrides.
        case(
            "everyone override: deny beats the server-level allow",
            |s| role_over(s, MEDIA, EVERYONE, deny(&[CONNECT])),
            exactly(M, "alice", &[], true),
        ),
        case(
            "everyone override: allow adds to the server level",
            |s| role_over(s, MEDIA, EVERYONE, allow(&[MIC])),
            exactly(M, "alice", &[CONNECT, MIC], true),
        ),
        case(
            "held role override: allow beats the server level",
            |s| {
                role_over(s, MEDIA, A, allow(&[SCREEN]));
                give(s, "alice", A);
            },
            exactly(M, "alice", &[CONNECT, SCREEN], true),
        ),
        case(
            "held role override: deny beats the same role's server-level allow",
            |s| {
                role_perms(s, A, allow(&[MIC]));
                role_over(s, MEDIA, A, deny(&[MIC]));
                give(s, "alice", A);
            },
            exactly(M, "alice", &[CONNECT], true),
        ),
        case(
            "held role override: deny beats another role's server-level allow",
            |s| {
                role_perms(s, A, allow(&[MIC]));
                role_over(s, MEDIA, B, deny(&[MIC]));
                give(s, "alice", A);
                give(s, "alice", B);
            },
            keys(M, "alice", &[CONNECT], &[MIC]),
        ),
        case(
            "two held roles' overrides conflict: allow wins",
            |s| {
                role_over(s, MEDIA, A, allow(&[MIC]));
                role_over(s, MEDIA, B, deny(&[MIC]));
                give(s, "alice", A);
                give(s, "alice", B);
            },
            keys(M, "alice", &[MIC], &[]),
        ),
        case(
            "everyone override denies, a held role's override allows: allowed",
            |s| {
                role_over(s, MEDIA, EVERYONE, deny(&[CONNECT]));
                role_over(s, MEDIA, A, allow(&[CONNECT]));
                give(s, "alice", A);
            },
            exactly(M, "alice", &[CONNECT], true),
        ),
        case(
            "everyone override denies, the allowing role not held: denied",
            |s| {
                role_over(s, MEDIA, EVERYONE, deny(&[CONNECT]));
                role_over(s, MEDIA, A, allow(&[CONNECT]));
                give(s, "alice", A);
            },
            exactly(M, "bob", &[], true),
        ),
        case(
            "override of a role not held changes nothing",
            |s| role_over(s, MEDIA, A, deny(&[CONNECT])),
            exactly(M, "bob", &[CONNECT], true),
        ),
        case(
            "overrides stay in their channel",
            |s| {
                role_over(s, MEDIA, A, deny(&[CONNECT]));
                give(s, "alice", A);
            },
            exactly(Some(MEDIA2), "alice", &[CONNECT], true),
        ),
        case(
            "overrides do not change the server-level answer",
            |s| role_over(s, MEDIA, EVERYONE, deny(&[CONNECT])),
            exactly(SRV, "alice", &[CONNECT], true),
        ),
        // 5. Member overrides.
        case(
            "member override allow beats a channel role deny",
            |s| {
                role_over(s, MEDIA, EVERYONE, deny(&[CONNECT]));
                member_over(s, MEDIA, "alice", allow(&[CONNECT]));
            },
            exactly(M, "alice", &[CONNECT], true),
        ),
        case(
            "member override deny beats a channel role allow",
            |s| {
                role_over(s, MEDIA, A, allow(&[MIC]));
                give(s, "alice", A);
                member_over(s, MEDIA, "alice", deny(&[MIC]));
            },
            exactly(M, "alice", &[CONNECT], true),
        ),
        case(
            "member override deny beats a server-level allow",
            |s| member_over(s, MEDIA, "alice", deny(&[CONNECT])),
            exactly(M, "alice", &[], true),
        ),
        case(
            "member override inherit keeps the channel role answer",
            |s| {
                role_over(s, MEDIA, A, allow(&[MIC]));
                give(s, "alice", A);
                member_over(s, MEDIA, "alice", allow(&[CAM]));
            },
            exactly(M, "alice", &[CONNECT, MIC, CAM], true),
        ),
        case(
            "member override of another member changes nothing",
            |s| member_over(s, MEDIA, "bob", deny(&[CONNECT])),
            exactly(M, "alice", &[CONNECT], true),
        ),
        case(
            "member override reset to all inherit is gone",
            |s| {
                member_over(s, MEDIA, "alice", deny(&[CONNECT]));
                let reset = PermissionChanges::new().with(CONNECT, PermissionValue::Inherit);
                s.update_member_override(MEDIA, &u("alice"), &reset)
                    .unwrap();
            },
            exactly(M, "alice", &[CONNECT], true),
        ),
        // 6. Visibility.
        case(
            "public channel, black-listed role held: invisible, nothing allowed",
            |s| {
                give(s, "alice", A);
                list(s, MEDIA, ListKind::Black, ListEntry::Role(A));
            },
            exactly(M, "alice", &[], false),
        ),
        case(
            "public channel, black-listed role not held: visible",
            |s| {
                give(s, "alice", A);
                list(s, MEDIA, ListKind::Black, ListEntry::Role(A));
            },
            exactly(M, "bob", &[CONNECT], true),
        ),
        case(
            "public channel, black-listed member: invisible despite an allow-all override",
            |s| {
                member_over(s, MEDIA, "alice", Permissions::allowing(KeySet::ALL));
                list(s, MEDIA, ListKind::Black, listed("alice"));
            },
            exactly(M, "alice", &[], false),
        ),
        case(
            "public channel, everyone role black-listed: hidden from members",
            |s| list(s, MEDIA, ListKind::Black, ListEntry::Role(EVERYONE)),
            exactly(M, "bob", &[], false),
        ),
        case(
            "public channel ignores its white list",
            |s| list(s, MEDIA, ListKind::White, listed("alice")),
            exactly(M, "bob", &[CONNECT], true),
        ),
        case(
            "private channel, on neither list: invisible",
            none,
            exactly(Some(PRIVATE), "alice", &[], false),
        ),
        case(
            "private channel, white-listed role held: visible",
            |s| {
                give(s, "alice", A);
                list(s, PRIVATE, ListKind::White, ListEntry::Role(A));
            },
            exactly(Some(PRIVATE), "alice", &[CONNECT], true),
        ),
        case(
            "private channel, white-listed role not held: invisible",
            |s| list(s, PRIVATE, ListKind::White, ListEntry::Role(A)),
            exactly(Some(PRIVATE), "bob", &[], false),
        ),
        case(
            "private channel, white-listed member: visible",
            |s| list(s, PRIVATE, ListKind::White, listed("alice")),
            exactly(Some(PRIVATE), "alice", &[CONNECT], true),
        ),
        case(
            "private channel, everyone role white-listed: visible to every member",
            |s| list(s, PRIVATE, ListKind::White, ListEntry::Role(EVERYONE)),
            exactly(Some(PRIVATE), "carol", &[CONNECT], true),
        ),
        case(
            "private channel ignores its black list",
            |s| {
                list(s, PRIVATE, ListKind::White, listed("alice"));
                list(s, PRIVATE, ListKind::Black, listed("alice"));
            },
            exactly(Some(PRIVATE), "alice", &[CONNECT], true),
        ),
        case(
            "private channel, white-listed member still subject to overrides",
            |s| {
                list(s, PRIVATE, ListKind::White, listed("alice"));
                role_over(s, PRIVATE, EVERYONE, deny(&[CONNECT]));
            },
            exactly(Some(PRIVATE), "alice", &[], true),
        ),
        case(
            "unknown channel: a member, nothing visible",
            none,
            Check::Is {
                channel: Some(GONE),
                user: "alice",
                expect: Effective {
                    permissions: KeySet::EMPTY,
                    visible: false,
                    member: true,
                    owner: false,
                },
            },
        ),
        // 7. Channel kind.
        case(
            "text channel: RTC keys never apply, even when roles allow them",
            |s| role_perms(s, EVERYONE, Permissions::allowing(KeySet::ALL)),
            Check::Set {
                channel: Some(TEXT),
                user: "alice",
                keys: KeySet::MANAGE,
                visible: true,
            },
        ),
        case(
            "text channel: a member override allowing connect has no effect",
            |s| member_over(s, TEXT, "alice", allow(&[CONNECT])),
            exactly(Some(TEXT), "alice", &[], true),
        ),
        case(
            "media channel: the same member override allows connect",
            |s| {
                role_perms(s, EVERYONE, Permissions::EMPTY);
                member_over(s, MEDIA, "alice", allow(&[CONNECT]));
            },
            exactly(M, "alice", &[CONNECT], true),
        ),
        // Management keys.
        case(
            "manage keys come from server roles like any other",
            |s| {
                role_perms(s, A, allow(MANAGE));
                give(s, "alice", A);
            },
            exactly(
                SRV,
                "alice",
                &[CONNECT, M_SERVER, M_CHANNEL, M_ROLE, M_LISTS],
                true,
            ),
        ),
        case(
            "manageBlackWhiteList allowed in one channel by an override",
            |s| {
                role_over(s, MEDIA, A, allow(&[M_LISTS]));
                give(s, "alice", A);
            },
            keys(M, "alice", &[M_LISTS], &[]),
        ),
        case(
            "... and not at server level",
            |s| {
                role_over(s, MEDIA, A, allow(&[M_LISTS]));
                give(s, "alice", A);
            },
            keys(SRV, "alice", &[], &[M_LISTS]),
        ),
        case(
            "manageChannel denied in one channel by an override",
            |s| {
                role_perms(s, A, allow(&[M_CHANNEL]));
                role_over(s, MEDIA, A, deny(&[M_CHANNEL]));
                give(s, "alice", A);
            },
            keys(M, "alice", &[], &[M_CHANNEL]),
        ),
        case(
            "text channel keeps the manage keys",
            |s| {
                role_perms(s, A, allow(&[M_CHANNEL]));
                give(s, "alice", A);
            },
            exactly(Some(TEXT), "alice", &[M_CHANNEL], true),
        ),
        // Granting.
        case(
            "grant: a key held may be granted",
            |s| {
                role_perms(s, A, allow(&[MIC]));
                give(s, "alice", A);
            },
            grant(SRV, "alice", &[MIC], true),
        ),
        case(
            "grant: a key not held may not be granted",
            none,
            grant(SRV, "alice", &[CAM], false),
        ),
        case(
            "grant: one key held, one not: refused",
            none,
            grant(SRV, "alice", &[CONNECT, CAM], false),
        ),
        case(
            "grant: the owner may grant every key",
            none,
            Check::Grant {
                channel: SRV,
                user: "owner",
                keys: KeySet::ALL,
                expect: true,
            },
        ),
        case(
            "grant: a non-member may grant nothing",
            none,
            grant(SRV, "stranger", &[], false),
        ),
        case(
            "grant: in a channel, what is held there counts",
            |s| role_over(s, MEDIA, EVERYONE, deny(&[CONNECT])),
            grant(M, "alice", &[CONNECT], false),
        ),
        case(
            "grant: ... while at server level the same key may be granted",
            |s| role_over(s, MEDIA, EVERYONE, deny(&[CONNECT])),
            grant(SRV, "alice", &[CONNECT], true),
        ),
        case(
            "grant: nothing may be granted in an invisible channel",
            |s| list(s, MEDIA, ListKind::Black, listed("alice")),
            grant(M, "alice", &[CONNECT], false),
        ),
        // Management checks.
        case(
            "authorize: server settings need manageServer",
            none,
            authorize("alice", Manage::EditServer, Err(Refusal::Missing(M_SERVER))),
        ),
        case(
            "authorize: server settings with manageServer",
            |s| {
                role_perms(s, A, allow(&[M_SERVER]));
                give(s, "alice", A);
            },
            authorize("alice", Manage::EditServer, Ok(())),
        ),
        case(
            "authorize: creating a channel needs manageChannel",
            none,
            authorize(
                "alice",
                Manage::CreateChannel,
                Err(Refusal::Missing(M_CHANNEL)),
            ),
        ),
        case(
            "authorize: lists need manageBlackWhiteList in that channel",
            |s| {
                role_over(s, MEDIA, A, allow(&[M_LISTS]));
                give(s, "alice", A);
            },
            authorize("alice", Manage::EditLists(MEDIA), Ok(())),
        ),
        case(
            "authorize: ... which another channel does not give",
            |s| {
                role_over(s, MEDIA, A, allow(&[M_LISTS]));
                give(s, "alice", A);
            },
            authorize(
                "alice",
                Manage::EditLists(MEDIA2),
                Err(Refusal::Missing(M_LISTS)),
            ),
        ),
        case(
            "authorize: editing a lower role, granting a held key",
            |s| {
                role_perms(s, A, allow(&[M_ROLE, MIC]));
                give(s, "alice", A);
            },
            authorize(
                "alice",
                Manage::EditRole {
                    role: B,
                    grants: KeySet::of(&[MIC]),
                    priority: None,
                },
                Ok(()),
            ),
        ),
        case(
            "authorize: editing a lower role, granting a key not held",
            |s| {
                role_perms(s, A, allow(&[M_ROLE]));
                give(s, "alice", A);
            },
            authorize(
                "alice",
                Manage::EditRole {
                    role: B,
                    grants: KeySet::of(&[CAM, M_ROLE]),
                    priority: None,
                },
                Err(Refusal::NotHeld(KeySet::of(&[CAM]))),
            ),
        ),
        case(
            "authorize: a role of the member's own rank may not be edited",
            |s| {
                role_perms(s, A, allow(&[M_ROLE]));
                give(s, "alice", A);
            },
            authorize(
                "alice",
                Manage::EditRole {
                    role: A,
                    grants: KeySet::EMPTY,
                    priority: None,
                },
                Err(Refusal::Outranked(A)),
            ),
        ),
        case(
            "authorize: a higher role may not be deleted",
            |s| {
                role_perms(s, B, allow(&[M_ROLE]));
                give(s, "alice", B);
            },
            authorize("alice", Manage::DeleteRole(A), Err(Refusal::Outranked(A))),
        ),
        case(
            "authorize: a lower role may not be raised above the member",
            |s| {
                role_perms(s, B, allow(&[M_ROLE]));
                give(s, "alice", B);
            },
            authorize(
                "alice",
                Manage::EditRole {
                    role: C,
                    grants: KeySet::EMPTY,
                    priority: Some(5),
                },
                Err(Refusal::RankTooHigh(5)),
            ),
        ),
        case(
            "authorize: a new role must rank below the member",
            |s| {
                role_perms(s, B, allow(&[M_ROLE]));
                give(s, "alice", B);
            },
            authorize(
                "alice",
                Manage::CreateRole {
                    priority: 20,
                    grants: KeySet::EMPTY,
                },
                Err(Refusal::RankTooHigh(20)),
            ),
        ),
        case(
            "authorize: assigning a role grants what it allows",
            |s| {
                role_perms(s, A, allow(&[M_ROLE]));
                role_perms(s, B, allow(&[CAM]));
                give(s, "alice", A);
            },
            authorize(
                "alice",
                Manage::AssignRole(B),
                Err(Refusal::NotHeld(KeySet::of(&[CAM]))),
            ),
        ),
        case(
            "authorize: manageRole from the everyone role alone outranks no role",
            |s| role_perms(s, EVERYONE, allow(&[M_ROLE])),
            authorize(
                "alice",
                Manage::UnassignRole(EVERYONE),
                Err(Refusal::Outranked(EVERYONE)),
            ),
        ),
        case(
            "authorize: a channel override needs manageRole in the channel",
            |s| {
                role_perms(s, A, allow(&[M_ROLE]));
                role_over(s, MEDIA, A, deny(&[M_ROLE]));
                give(s, "alice", A);
            },
            authorize(
                "alice",
                Manage::MemberOverride {
                    channel: MEDIA,
                    grants: KeySet::EMPTY,
                },
                Err(Refusal::Missing(M_ROLE)),
            ),
        ),
        case(
            "authorize: the owner may do everything",
            none,
            authorize(
                "owner",
                Manage::EditRole {
                    role: A,
                    grants: KeySet::ALL,
                    priority: Some(i64::MIN),
                },
                Ok(()),
            ),
        ),
        case(
            "authorize: an unknown channel is named",
            none,
            authorize(
                "owner",
                Manage::EditChannel(GONE),
                Err(Refusal::NoSuchChannel(GONE)),
            ),
        ),
        case(
            "authorize: a non-member may change nothing",
            none,
            authorize("stranger", Manage::EditServer, Err(Refusal::NotAMember)),
        ),
        // The cache follows every change.
        after(
            "cache: a role's permissions change",
            |s| give(s, "alice", A),
            |s| role_perms(s, A, allow(&[MIC])),
            exactly(M, "alice", &[CONNECT, MIC], true),
        ),
        after(
            "cache: a role is assigned",
            |s| role_perms(s, A, allow(&[MIC])),
            |s| give(s, "alice", A),
            exactly(M, "alice", &[CONNECT, MIC], true),
        ),
        after(
            "cache: a role is removed",
            |s| {
                role_perms(s, A, allow(&[MIC]));
                give(s, "alice", A);
            },
            |s| s.remove_role(A).unwrap(),
            exactly(M, "alice", &[CONNECT], true),
        ),
        after(
            "cache: a channel role override is set",
            none,
            |s| role_over(s, MEDIA, EVERYONE, deny(&[CONNECT])),
            exactly(M, "alice", &[], true),
        ),
        after(
            "cache: a member override is set",
            none,
            |s| member_over(s, MEDIA, "alice", allow(&[SCREEN])),
            exactly(M, "alice", &[CONNECT, SCREEN], true),
        ),
        after(
            "cache: the member is black-listed",
            none,
            |s| list(s, MEDIA, ListKind::Black, listed("alice")),
            exactly(M, "alice", &[], false),
        ),
        after(
            "cache: the channel turns private",
            none,
            |s| s.set_visibility(MEDIA, Visibility::Private).unwrap(),
            exactly(M, "alice", &[], false),
        ),
        after(
            "cache: the member leaves",
            none,
            |s| s.remove_member(&u("alice")).unwrap(),
            Check::Is {
                channel: M,
                user: "alice",
                expect: Effective::NONE,
            },
        ),
        after(
            "cache: ownership is transferred",
            none,
            |s| s.transfer_owner(&u("alice")).unwrap(),
            Check::Set {
                channel: M,
                user: "alice",
                keys: KeySet::ALL,
                visible: true,
            },
        ),
        after(
            "cache: the old owner is an ordinary member afterwards",
            none,
            |s| s.transfer_owner(&u("alice")).unwrap(),
            exactly(SRV, "owner", &[CONNECT], true),
        ),
    ]
}

/// The answer through each path: bare server, then the community twice (miss, then hit).
fn resolve_all(
    server: &Server,
    community: &mut Community,
    channel: Option<CommunityChannelId>,
    user: &str,
) -> [Effective; 3] {
    let user = u(user);
    [
        server.effective(channel, &user),
        community.effective(SERVER, channel, &user),
        community.effective(SERVER, channel, &user),
    ]
}

/// Checks one row; returns what went wrong.
fn run(case: &Case) -> Result<(), String> {
    let mut server = base();
    (case.setup)(&mut server);
    let mut community = Community::new();
    community
        .insert(server.clone())
        .map_err(|e| e.to_string())?;
    if let Some(change) = case.change {
        // Fill the cache with the old answers first.
        if let Check::Exactly { channel, user, .. }
        | Check::Set { channel, user, .. }
        | Check::Keys { channel, user, .. }
        | Check::Is { channel, user, .. } = case.check
        {
            community.effective(SERVER, channel, &u(user));
        }
        change(&mut server);
        change(community.edit(SERVER).map_err(|e| e.to_string())?);
    }
    let effective_check =
        |channel, user, ok: &dyn Fn(Effective) -> bool, community: &mut Community| {
            let paths = [
                "server",
                "community (first call)",
                "community (second call)",
            ];
            for (path, got) in paths
                .iter()
                .zip(resolve_all(&server, community, channel, user))
            {
                if !ok(got) {
                    return Err(format!("{path} answered {got:?}"));
                }
            }
            Ok(())
        };
    match &case.check {
        Check::Exactly {
            channel,
            user,
            keys,
            visible,
        } => {
            let want = KeySet::of(keys);
            effective_check(
                *channel,
                user,
                &|e| e.permissions == want && e.visible == *visible,
                &mut community,
            )
            .map_err(|e| format!("{e}; want keys {want:?}, visible {visible}"))
        }
        Check::Set {
            channel,
            user,
            keys,
            visible,
        } => effective_check(
            *channel,
            user,
            &|e| e.permissions == *keys && e.visible == *visible,
            &mut community,
        )
        .map_err(|e| format!("{e}; want keys {keys:?}, visible {visible}")),
        Check::Keys {
            channel,
            user,
            has,
            lacks,
        } => {
            let (has, lacks) = (KeySet::of(has), KeySet::of(lacks));
            effective_check(
                *channel,
                user,
                &|e| e.permissions.contains_all(has) && (e.permissions & lacks).is_empty(),
                &mut community,
            )
            .map_err(|e| format!("{e}; want {has:?} and none of {lacks:?}"))
        }
        Check::Is {
            channel,
            user,
            expect,
        } => effective_check(*channel, user, &|e| e == *expect, &mut community)
            .map_err(|e| format!("{e}; want {expect:?}")),
        Check::Grant {
            channel,
            user,
            keys,
            expect,
        } => {
            let got = community
                .server(SERVER)
                .is_some_and(|s| s.may_grant(*channel, &u(user), *keys));
            if got == *expect {
                Ok(())
            } else {
                Err(format!("may_grant({keys:?}) answered {got}, want {expect}"))
            }
        }
        Check::Authorize {
            user,
            action,
            expect,
        } => {
            let got = community
                .server(SERVER)
                .map(|s| s.authorize(&u(user), *action))
                .ok_or("no server")?;
            if got == *expect {
                Ok(())
            } else {
                Err(format!(
                    "authorize({action:?}) answered {got:?}, want {expect:?}"
                ))
            }
        }
    }
}

#[test]
fn resolution_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "the table has {} rows", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| run(case).err().map(|why| format!("{}: {why}", case.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn key_bits_and_names_are_stable() {
    let expected = [
        (PermissionKey::RtcChannelConnect, 0, "RTCChannelConnect"),
        (
            PermissionKey::RtcChannelDisconnectOther,
            1,
            "RTCChannelDisconnectOther",
        ),
        (
            PermissionKey::RtcChannelOpenMicrophone,
            2,
            "RTCChannelOpenMicrophone",
        ),
        (
            PermissionKey::RtcChannelOpenCamera,
            3,
            "RTCChannelOpenCamera",
        ),
        (
            PermissionKey::RtcChannelOpenCloseOtherMicrophone,
            4,
            "RTCChannelOpenCloseOtherMicrophone",
        ),
        (
            PermissionKey::RtcChannelOpenCloseOtherCamera,
            5,
            "RTCChannelOpenCloseOtherCamera",
        ),
        (
            PermissionKey::RtcChannelOpenCloseEveryoneMicrophone,
            6,
            "RTCChannelOpenCloseEveryoneMicrophone",
        ),
        (
            PermissionKey::RtcChannelOpenCloseEveryoneCamera,
            7,
            "RTCChannelOpenCloseEveryoneCamera",
        ),
        (
            PermissionKey::RtcChannelOpenShareScreen,
            8,
            "RTCChannelOpenShareScreen",
        ),
        (
            PermissionKey::RtcChannelCloseOtherShareScreen,
            9,
            "RTCChannelCloseOtherShareScreen",
        ),
        (PermissionKey::ManageServer, 10, "manageServer"),
        (PermissionKey::ManageChannel, 11, "manageChannel"),
        (PermissionKey::ManageRole, 12, "manageRole"),
        (
            PermissionKey::ManageBlackWhiteList,
            13,
            "manageBlackWhiteList",
        ),
    ];
    assert_eq!(PermissionKey::ALL.len(), expected.len());
    for (at, (key, bit, name)) in expected.into_iter().enumerate() {
        assert_eq!(PermissionKey::ALL[at], key, "ALL is in bit order");
        assert_eq!(key.bit(), bit, "{name}");
        assert_eq!(key.name(), name);
        assert_eq!(PermissionKey::from_name(name), Some(key));
        assert_eq!(PermissionKey::from_bit(bit), Some(key));
        assert_eq!(key.is_rtc(), bit < 10, "{name}");
        assert_eq!(serde_json::to_string(&key).unwrap(), format!("\"{name}\""));
    }
    assert_eq!(PermissionKey::from_bit(14), None);
    assert_eq!(PermissionKey::from_name("rtcchannelconnect"), None);
    assert_eq!(KeySet::ALL.bits(), 0x3fff);
    assert_eq!(KeySet::RTC | KeySet::MANAGE, KeySet::ALL);
    assert!((KeySet::RTC & KeySet::MANAGE).is_empty());
}

#[test]
fn setting_one_value_clears_the_other() {
    let mut p = Permissions::EMPTY.with(MIC, PermissionValue::Allow);
    p.set(MIC, PermissionValue::Deny);
    assert_eq!(p.get(MIC), PermissionValue::Deny);
    assert!(p.allow().is_empty());
    p.set(MIC, PermissionValue::Allow);
    assert_eq!((p.allow(), p.deny()), (KeySet::of(&[MIC]), KeySet::EMPTY));
    p.set(MIC, PermissionValue::Inherit);
    assert!(p.is_empty());

    assert_eq!(
        Permissions::from_masks(0b1, 0b10),
        Some(allow(&[CONNECT]).with(DISCONNECT, PermissionValue::Deny))
    );
    assert_eq!(
        Permissions::from_masks(0b1, 0b1),
        None,
        "a key in both masks"
    );
    assert_eq!(
        Permissions::from_masks(1 << 14, 0),
        None,
        "a bit naming no key"
    );
    assert_eq!(KeySet::from_bits(1 << 63), None);
    assert_eq!(KeySet::from_bits_truncate(u64::MAX), KeySet::ALL);
    assert_eq!(!KeySet::MANAGE, KeySet::RTC);
}

#[test]
fn partial_updates_touch_only_named_keys() {
    let mut p = allow(&[CONNECT, MIC]).with(CAM, PermissionValue::Deny);
    let changes = PermissionChanges::new()
        .with(MIC, PermissionValue::Deny)
        .with(CAM, PermissionValue::Inherit)
        .with(SCREEN, PermissionValue::Allow);
    p.apply(&changes);
    assert_eq!(p.allow(), KeySet::of(&[CONNECT, SCREEN]));
    assert_eq!(p.deny(), KeySet::of(&[MIC]));
}

#[test]
fn wire_form_is_a_map_of_key_to_value() {
    let p: Permissions = serde_json::from_str(
        r#"{"RTCChannelConnect": "allow", "manageRole": "deny", "RTCChannelOpenCamera": "inherit"}"#,
    )
    .unwrap();
    assert_eq!(p, allow(&[CONNECT]).with(M_ROLE, PermissionValue::Deny));
    // Inherit keys are left out when writing.
    assert_eq!(
        serde_json::to_value(p).unwrap(),
        serde_json::json!({"RTCChannelConnect": "allow", "manageRole": "deny"})
    );
    let back: Permissions = serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap();
    assert_eq!(back, p);

    // A partial update keeps its inherit keys: they mean "reset".
    let changes: PermissionChanges =
        serde_json::from_str(r#"{"RTCChannelOpenCamera": "inherit", "manageServer": "allow"}"#)
            .unwrap();
    assert_eq!(changes.inherit(), KeySet::of(&[CAM]));
    assert_eq!(changes.allow(), KeySet::of(&[M_SERVER]));
    assert_eq!(
        serde_json::to_value(changes).unwrap(),
        serde_json::json!({"RTCChannelOpenCamera": "inherit", "manageServer": "allow"})
    );

    let set: KeySet = serde_json::from_str(r#"["manageRole", "RTCChannelConnect"]"#).unwrap();
    assert_eq!(set, KeySet::of(&[CONNECT, M_ROLE]));
    assert_eq!(
        serde_json::to_string(&set).unwrap(),
        r#"["RTCChannelConnect","manageRole"]"#
    );
}

#[test]
fn wire_form_refuses_unknown_keys_values_and_repeats() {
    let error = |json: &str| {
        serde_json::from_str::<Permissions>(json)
            .unwrap_err()
            .to_string()
    };
    let unknown = error(r#"{"RTCChannelConnect": "allow", "sendMessage": "allow"}"#);
    assert!(
        unknown.contains("unknown permission key `sendMessage`"),
        "{unknown}"
    );
    let wrong_case = error(r#"{"ManageRole": "allow"}"#);
    assert!(wrong_case.contains("`ManageRole`"), "{wrong_case}");
    let value = error(r#"{"manageRole": "maybe"}"#);
    assert!(value.contains("maybe"), "{value}");
    let twice = error(r#"{"manageRole": "allow", "manageRole": "deny"}"#);
    assert!(twice.contains("`manageRole` given twice"), "{twice}");
    assert!(serde_json::from_str::<Permissions>(r#"["manageRole"]"#).is_err());
    assert!(serde_json::from_str::<KeySet>(r#"["manageEverything"]"#).is_err());
    assert!(serde_json::from_str::<PermissionChanges>(r#"{"x": "allow"}"#).is_err());
}

#[test]
fn effective_serializes_with_key_names() {
    let e = Effective {
        permissions: KeySet::of(&[CONNECT, M_LISTS]),
        visible: true,
        member: true,
        owner: false,
    };
    assert_eq!(
        serde_json::to_value(e).unwrap(),
        serde_json::json!({
            "permissions": ["RTCChannelConnect", "manageBlackWhiteList"],
            "visible": true, "member": true, "owner": false
        })
    );
}

#[test]
fn the_model_refuses_what_would_break_its_invariants() {
    let mut s = base();
    assert_eq!(
        s.add_role(EVERYONE, "x", 0, Permissions::EMPTY),
        Err(CommunityError::EveryoneRole("created"))
    );
    assert_eq!(
        s.add_role(A, "again", 0, Permissions::EMPTY),
        Err(CommunityError::RoleExists(A))
    );
    assert_eq!(
        s.remove_role(EVERYONE),
        Err(CommunityError::EveryoneRole("removed"))
    );
    assert_eq!(
        s.assign_role(&u("alice"), EVERYONE),
        Err(CommunityError::EveryoneRole("assigned"))
    );
    assert_eq!(
        s.set_role_priority(EVERYONE, 0),
        Err(CommunityError::EveryoneRole("re-ranked"))
    );
    assert_eq!(
        s.assign_role(&u("alice"), RoleId(77)),
        Err(CommunityError::NoSuchRole(RoleId(77)))
    );
    assert_eq!(
        s.assign_role(&u("stranger"), A),
        Err(CommunityError::NotAMember(u("stranger")))
    );
    assert_eq!(
        s.remove_member(&u("owner")),
        Err(CommunityError::OwnerCannotLeave)
    );
    assert_eq!(
        s.remove_member(&u("stranger")),
        Err(CommunityError::NotAMember(u("stranger")))
    );
    assert_eq!(
        s.transfer_owner(&u("stranger")),
        Err(CommunityError::NotAMember(u("stranger")))
    );
    assert_eq!(
        s.add_channel(MEDIA, ChannelKind::Text, Visibility::Public),
        Err(CommunityError::ChannelExists(MEDIA))
    );
    assert_eq!(
        s.set_visibility(GONE, Visibility::Public),
        Err(CommunityError::NoSuchChannel(GONE))
    );
    assert_eq!(
        s.set_member_override(MEDIA, &u("stranger"), allow(&[CONNECT])),
        Err(CommunityError::NotAMember(u("stranger")))
    );
    assert_eq!(
        s.list_add(MEDIA, ListKind::Black, ListEntry::Role(RoleId(77))),
        Err(CommunityError::NoSuchRole(RoleId(77)))
    );
    assert_eq!(s.role(EVERYONE).map(|r| r.priority()), Some(i64::MAX));
    assert_eq!(s.roles().count(), 4);
    assert!(s.is_member(&u("owner")));
}

#[test]
fn removing_a_role_or_member_leaves_no_trace() {
    let mut s = base();
    give(&mut s, "alice", A);
    role_over(&mut s, MEDIA, A, allow(&[MIC]));
    list(&mut s, MEDIA, ListKind::Black, ListEntry::Role(A));
    list(&mut s, PRIVATE, ListKind::White, ListEntry::Role(A));
    s.remove_role(A).unwrap();
    assert_eq!(s.member_roles(&u("alice")), Some(&[][..]));
    let media = s.channel(MEDIA).unwrap();
    assert!(media.role_overrides().is_empty());
    assert!(media.list(ListKind::Black).roles().is_empty());
    assert!(
        s.channel(PRIVATE)
            .unwrap()
            .list(ListKind::White)
            .roles()
            .is_empty()
    );

    member_over(&mut s, MEDIA, "bob", deny(&[CONNECT]));
    list(&mut s, MEDIA, ListKind::Black, listed("bob"));
    list(&mut s, PRIVATE, ListKind::White, listed("bob"));
    s.remove_member(&u("bob")).unwrap();
    // Back again, bob starts from nothing: no override, on no list.
    s.add_member(u("bob"));
    assert_eq!(
        s.effective(M, &u("bob")).permissions,
        KeySet::of(&[CONNECT])
    );
    assert!(!s.effective(Some(PRIVATE), &u("bob")).visible);
}

#[test]
fn all_inherit_overrides_are_not_kept() {
    let mut s = base();
    role_over(&mut s, MEDIA, A, allow(&[MIC]));
    role_over(&mut s, MEDIA, A, Permissions::EMPTY);
    assert!(s.channel(MEDIA).unwrap().role_overrides().is_empty());
    let changes = PermissionChanges::new().with(CAM, PermissionValue::Deny);
    s.update_role_override(MEDIA, B, &changes).unwrap();
    assert_eq!(s.channel(MEDIA).unwrap().role_override(B), deny(&[CAM]));
}

#[test]
fn generations_change_on_every_edit_and_are_never_reused() {
    let mut community = Community::new();
    community.insert(base()).unwrap();
    assert_eq!(
        community.insert(base()),
        Err(CommunityError::ServerExists(SERVER))
    );
    let first = community.generation(SERVER).unwrap();
    community.edit(SERVER).unwrap().add_member(u("dave"));
    let second = community.generation(SERVER).unwrap();
    assert_ne!(first, second);
    community.remove(SERVER).unwrap();
    community.insert(base()).unwrap();
    let third = community.generation(SERVER).unwrap();
    assert!(
        third != first && third != second,
        "a re-created server gets a fresh generation"
    );
    assert!(matches!(
        community.edit(ServerId(5)),
        Err(CommunityError::NoSuchServer(ServerId(5)))
    ));
    assert_eq!(
        community.effective(ServerId(5), None, &u("alice")),
        Effective::NONE
    );
}

#[test]
fn the_cache_is_bounded_and_skips_unknowns() {
    let mut community = Community::with_cache_limit(2);
    community.insert(base()).unwrap();
    let cached = |c: &Community| c.servers[&SERVER].cached;
    community.effective(SERVER, M, &u("stranger"));
    community.effective(SERVER, Some(GONE), &u("alice"));
    assert_eq!(
        cached(&community),
        0,
        "non-members and unknown channels are not cached"
    );
    community.effective(SERVER, M, &u("alice"));
    community.effective(SERVER, M, &u("bob"));
    assert_eq!(cached(&community), 2);
    community.effective(SERVER, M, &u("carol"));
    assert_eq!(cached(&community), 1, "full: dropped, then refilled");
    assert_eq!(
        community.effective(SERVER, M, &u("carol")).permissions,
        KeySet::of(&[CONNECT])
    );

    let mut uncached = Community::with_cache_limit(0);
    uncached.insert(base()).unwrap();
    assert_eq!(
        uncached.effective(SERVER, M, &u("alice")).permissions,
        KeySet::of(&[CONNECT])
    );
    assert_eq!(uncached.servers[&SERVER].cached, 0);
}

#[test]
fn management_helpers_name_their_key() {
    let mut s = base();
    role_perms(&mut s, A, allow(MANAGE));
    give(&mut s, "alice", A);
    let alice = u("alice");
    assert!(s.may_manage_server(&alice));
    assert!(s.may_manage_channel(None, &alice));
    assert!(s.may_manage_roles(M, &alice));
    assert!(s.may_manage_lists(MEDIA, &alice));
    let bob = u("bob");
    assert!(!s.may_manage_server(&bob));
    assert!(!s.may_manage_channel(M, &bob));
    assert!(!s.may_manage_roles(None, &bob));
    assert!(!s.may_manage_lists(MEDIA, &bob));
    // Invisible: no permission at all there, management included.
    list(&mut s, MEDIA, ListKind::Black, listed("alice"));
    assert!(!s.may_manage_lists(MEDIA, &alice));
    assert!(s.may_manage_server(&u("owner")));
}

/// The worked example of docs/community.md, step for step.
#[test]
fn the_documented_example_holds() {
    use PermissionKey::*;
    const MODERATOR: RoleId = RoleId(1);
    const SPEAKER: RoleId = RoleId(2);
    const STAGE: CommunityChannelId = CommunityChannelId(1);
    const LOBBY: CommunityChannelId = CommunityChannelId(2);
    let mut s = Server::new(SERVER, u("olivia"));
    for name in ["alice", "bob", "carol", "troll"] {
        s.add_member(u(name));
    }
    role_perms(
        &mut s,
        EVERYONE,
        allow(&[RtcChannelConnect, RtcChannelOpenMicrophone]),
    );
    let moderator = allow(&[
        RtcChannelDisconnectOther,
        RtcChannelOpenCloseOtherMicrophone,
        ManageBlackWhiteList,
    ]);
    s.add_role(MODERATOR, "moderator", 10, moderator).unwrap();
    let speaker = allow(&[RtcChannelOpenCamera, RtcChannelOpenShareScreen]);
    s.add_role(SPEAKER, "speaker", 20, speaker).unwrap();
    give(&mut s, "bob", SPEAKER);
    give(&mut s, "carol", MODERATOR);
    s.add_channel(STAGE, ChannelKind::Media, Visibility::Public)
        .unwrap();
    s.add_channel(LOBBY, ChannelKind::Text, Visibility::Public)
        .unwrap();
    role_over(&mut s, STAGE, EVERYONE, deny(&[RtcChannelOpenMicrophone]));
    role_over(&mut s, STAGE, SPEAKER, allow(&[RtcChannelOpenMicrophone]));
    member_over(&mut s, STAGE, "bob", deny(&[RtcChannelOpenShareScreen]));
    list(&mut s, STAGE, ListKind::Black, listed("troll"));

    let at = |channel, user: &str| s.effective(channel, &u(user));
    let stage = Some(STAGE);
    assert_eq!(
        at(stage, "alice").permissions,
        KeySet::of(&[RtcChannelConnect])
    );
    assert_eq!(
        at(stage, "bob").permissions,
        KeySet::of(&[
            RtcChannelConnect,
            RtcChannelOpenMicrophone,
            RtcChannelOpenCamera
        ])
    );
    assert_eq!(
        at(stage, "carol").permissions,
        KeySet::of(&[
            RtcChannelConnect,
            RtcChannelDisconnectOther,
            RtcChannelOpenCloseOtherMicrophone,
            ManageBlackWhiteList
        ])
    );
    assert_eq!(
        at(stage, "troll"),
        Effective {
            permissions: KeySet::EMPTY,
            visible: false,
            member: true,
            owner: false
        }
    );
    assert_eq!(at(stage, "olivia").permissions, KeySet::ALL);
    assert_eq!(
        at(Some(LOBBY), "carol").permissions,
        KeySet::of(&[ManageBlackWhiteList])
    );
    assert_eq!(at(Some(LOBBY), "olivia").permissions, KeySet::MANAGE);
    assert!(s.may_grant(stage, &u("carol"), KeySet::of(&[RtcChannelDisconnectOther])));
    assert!(!s.may_grant(stage, &u("carol"), KeySet::of(&[RtcChannelOpenMicrophone])));
    assert_eq!(s.authorize(&u("carol"), Manage::EditLists(STAGE)), Ok(()));
    assert_eq!(
        s.authorize(&u("carol"), Manage::AssignRole(SPEAKER)),
        Err(Refusal::Missing(ManageRole))
    );
}
