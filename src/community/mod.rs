//! Community servers: members, roles and channels, held in memory.
//!
//! A community server is a group of people (NetEase QChat's 圈组服务器), not a
//! machine. It has one owner, members, server roles and channels; a channel is
//! text or media, and a media channel is where a room runs. This module is the
//! model and its rules only: no I/O, no async, no locks. Persistence and the
//! REST and protocol surfaces call into it.
//!
//! - [`Server`] is one community server. Every change goes through a method
//!   that keeps the invariants below and reports a [`CommunityError`] instead
//!   of panicking.
//! - [`Community`] holds servers by id and caches resolved permissions per
//!   (channel, member). Mutation is only possible through [`Community::edit`],
//!   which bumps the server's generation and drops its cache first, so a cached
//!   answer never outlives the state it was computed from.
//! - [`hub`] is the live model the server runs: [`Community`] behind a lock,
//!   written through to the store, telling rooms about every change.
//! - [`channel`] binds a media channel to its room and answers the room's
//!   permission questions.
//! - [`settings`] and [`snapshot`]: media channel settings, and a server as
//!   plain data (what is stored and shown).
//! - [`permissions`] holds the permission keys, allow/deny/inherit sets and the
//!   resolution order (see its module docs, and docs/community.md).
//!
//! Invariants of a [`Server`]:
//! - the owner is always a member;
//! - the everyone role ([`RoleId::EVERYONE`]) always exists, applies to every
//!   member implicitly, is never assigned, never removed and always ranks
//!   lowest;
//! - every role a member holds, every role in a channel override and every
//!   role on a channel list exists in the server (removing a role removes it
//!   from all of them);
//! - every member override and member list entry names a current member
//!   (removing a member removes them).

pub mod channel;
pub mod hub;
pub mod permissions;
pub mod settings;
pub mod snapshot;

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

pub use permissions::{
    Effective, KeySet, Manage, PermissionChanges, PermissionKey, PermissionValue, Permissions,
    Refusal,
};
pub use settings::{AudioProfile, AudioScenario, MediaSettings, MediaSettingsUpdate};
pub use snapshot::ServerSnapshot;

/// One community server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerId(pub u64);

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A role inside one server. [`RoleId::EVERYONE`] is reserved in every server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoleId(pub u64);

impl RoleId {
    /// The everyone role: every server has it and it applies to every member.
    pub const EVERYONE: RoleId = RoleId(0);
}

impl fmt::Display for RoleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A channel inside a community server. Not a [`crate::ids::ChannelId`]: that
/// names one instance of a room, while a media channel outlives many rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommunityChannelId(pub u64);

impl fmt::Display for CommunityChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a channel carries. Only media channels have a room, so the RTC keys
/// never apply in a text channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Text,
    Media,
}

/// Who sees a channel: public channels are seen by all members but their
/// black list, private ones only by their white list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
}

/// Which of a channel's two lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Hides a public channel from the listed roles and members.
    Black,
    /// Shows a private channel to the listed roles and members.
    White,
}

/// One entry on a channel list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListEntry {
    Role(RoleId),
    Member(UserId),
}

/// Why a change to the community was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommunityError {
    #[error("no server {0}")]
    NoSuchServer(ServerId),
    #[error("server {0} already exists")]
    ServerExists(ServerId),
    #[error("no role {0} in this server")]
    NoSuchRole(RoleId),
    #[error("role {0} already exists in this server")]
    RoleExists(RoleId),
    #[error("the everyone role cannot be {0}")]
    EveryoneRole(&'static str),
    #[error("no channel {0} in this server")]
    NoSuchChannel(CommunityChannelId),
    #[error("channel {0} already exists in this server")]
    ChannelExists(CommunityChannelId),
    #[error("{0} is not a member of this server")]
    NotAMember(UserId),
    #[error("the owner cannot leave the server; transfer ownership first")]
    OwnerCannotLeave,
    #[error("channel {0} is a text channel; only media channels have media settings")]
    NotMedia(CommunityChannelId),
    #[error("invalid media settings: {0}")]
    InvalidSettings(String),
}

/// A server role: a name, a rank and the permissions it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRole {
    id: RoleId,
    name: String,
    priority: i64,
    permissions: Permissions,
}

impl ServerRole {
    pub fn id(&self) -> RoleId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rank: a smaller number ranks higher. The everyone role has
    /// `i64::MAX` and ranks below every custom role even at that number.
    /// Ranks never change what a member may do in a channel; they decide who
    /// may manage which role (see [`Server::outranks`]).
    pub fn priority(&self) -> i64 {
        self.priority
    }

    pub fn permissions(&self) -> Permissions {
        self.permissions
    }
}

/// The custom roles a member holds, sorted by id, without the everyone role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Member {
    roles: Vec<RoleId>,
}

/// A channel's black or white list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelList {
    /// Sorted, so membership is a binary search.
    roles: Vec<RoleId>,
    members: HashSet<UserId>,
}

impl ChannelList {
    pub fn roles(&self) -> &[RoleId] {
        &self.roles
    }

    pub fn members(&self) -> impl Iterator<Item = &UserId> {
        self.members.iter()
    }

    pub fn contains(&self, entry: &ListEntry) -> bool {
        match entry {
            ListEntry::Role(role) => self.has_role(*role),
            ListEntry::Member(user) => self.members.contains(user),
        }
    }

    fn has_role(&self, role: RoleId) -> bool {
        self.roles.binary_search(&role).is_ok()
    }
}

/// A channel: its kind, visibility, lists and permission overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    id: CommunityChannelId,
    name: String,
    kind: ChannelKind,
    visibility: Visibility,
    /// Sorted by role id; never holds an all-inherit entry.
    role_overrides: Vec<(RoleId, Permissions)>,
    /// Never holds an all-inherit entry.
    member_overrides: HashMap<UserId, Permissions>,
    black: ChannelList,
    white: ChannelList,
    /// Kept for text channels too (at the defaults), so the type has no
    /// kind-dependent holes; only media channels let it change.
    settings: MediaSettings,
}

impl Channel {
    pub fn id(&self) -> CommunityChannelId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn settings(&self) -> &MediaSettings {
        &self.settings
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    pub fn visibility(&self) -> Visibility {
        self.visibility
    }

    /// The override of a server role in this channel; all inherit if none.
    pub fn role_override(&self, role: RoleId) -> Permissions {
        self.role_overrides
            .binary_search_by_key(&role, |(id, _)| *id)
            .map(|at| self.role_overrides[at].1)
            .unwrap_or_default()
    }

    pub fn role_overrides(&self) -> &[(RoleId, Permissions)] {
        &self.role_overrides
    }

    /// The override of one member in this channel; all inherit if none.
    pub fn member_override(&self, user: &UserId) -> Permissions {
        self.member_overrides.get(user).copied().unwrap_or_default()
    }

    pub fn member_overrides(&self) -> impl Iterator<Item = (&UserId, Permissions)> {
        self.member_overrides.iter().map(|(u, p)| (u, *p))
    }

    /// Both lists are kept whatever the visibility, so switching a channel
    /// from private to public and back restores its white list.
    pub fn list(&self, kind: ListKind) -> &ChannelList {
        match kind {
            ListKind::Black => &self.black,
            ListKind::White => &self.white,
        }
    }

    fn list_mut(&mut self, kind: ListKind) -> &mut ChannelList {
        match kind {
            ListKind::Black => &mut self.black,
            ListKind::White => &mut self.white,
        }
    }

    fn forget_role(&mut self, role: RoleId) {
        self.role_overrides.retain(|(id, _)| *id != role);
        self.black.roles.retain(|id| *id != role);
        self.white.roles.retain(|id| *id != role);
    }

    fn forget_member(&mut self, user: &UserId) {
        self.member_overrides.remove(user);
        self.black.members.remove(user);
        self.white.members.remove(user);
    }
}

/// One community server: owner, roles, members and channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    id: ServerId,
    name: String,
    owner: UserId,
    everyone: ServerRole,
    /// Custom roles, sorted by id.
    roles: Vec<ServerRole>,
    members: HashMap<UserId, Member>,
    channels: HashMap<CommunityChannelId, Channel>,
}

impl Server {
    /// A server whose only member is its owner, with the everyone role
    /// carrying [`Permissions::everyone_default`].
    pub fn new(id: ServerId, owner: UserId) -> Self {
        let mut members = HashMap::new();
        members.insert(owner.clone(), Member::default());
        Server {
            id,
            name: String::new(),
            owner,
            everyone: ServerRole {
                id: RoleId::EVERYONE,
                name: "everyone".to_owned(),
                priority: i64::MAX,
                permissions: Permissions::everyone_default(),
            },
            roles: Vec::new(),
            members,
            channels: HashMap::new(),
        }
    }

    pub fn id(&self) -> ServerId {
        self.id
    }

    pub fn owner(&self) -> &UserId {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.contains_key(user)
    }

    pub fn members(&self) -> impl Iterator<Item = &UserId> {
        self.members.keys()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The custom roles a member holds, sorted by id (the everyone role is
    /// implied); `None` if they are not a member.
    pub fn member_roles(&self, user: &UserId) -> Option<&[RoleId]> {
        self.members.get(user).map(|m| m.roles.as_slice())
    }

    /// A role by id, the everyone role included.
    pub fn role(&self, id: RoleId) -> Option<&ServerRole> {
        if id == RoleId::EVERYONE {
            Some(&self.everyone)
        } else {
            self.custom_role(id)
        }
    }

    /// The everyone role, then the custom roles by id.
    pub fn roles(&self) -> impl Iterator<Item = &ServerRole> {
        std::iter::once(&self.everyone).chain(self.roles.iter())
    }

    pub fn channel(&self, id: CommunityChannelId) -> Option<&Channel> {
        self.channels.get(&id)
    }

    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.values()
    }

    fn custom_role(&self, id: RoleId) -> Option<&ServerRole> {
        self.roles
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|at| &self.roles[at])
    }

    fn role_mut(&mut self, id: RoleId) -> Result<&mut ServerRole, CommunityError> {
        if id == RoleId::EVERYONE {
            return Ok(&mut self.everyone);
        }
        match self.roles.binary_search_by_key(&id, |r| r.id) {
            Ok(at) => Ok(&mut self.roles[at]),
            Err(_) => Err(CommunityError::NoSuchRole(id)),
        }
    }

    fn require_role(&self, id: RoleId) -> Result<(), CommunityError> {
        match self.role(id) {
            Some(_) => Ok(()),
            None => Err(CommunityError::NoSuchRole(id)),
        }
    }

    fn require_member(&self, user: &UserId) -> Result<(), CommunityError> {
        if self.is_member(user) {
            Ok(())
        } else {
            Err(CommunityError::NotAMember(user.clone()))
        }
    }

    fn channel_mut(&mut self, id: CommunityChannelId) -> Result<&mut Channel, CommunityError> {
        self.channels
            .get_mut(&id)
            .ok_or(CommunityError::NoSuchChannel(id))
    }

    // --- members ---

    /// Adds a member holding no custom role. Adding a member twice is a no-op.
    pub fn add_member(&mut self, user: UserId) {
        self.members.entry(user).or_default();
    }

    /// Removes a member and everything about them in this server: their
    /// roles, their overrides and their list entries. Leaving forgets you;
    /// keeping someone out for good is the job of a server ban, not of lists.
    pub fn remove_member(&mut self, user: &UserId) -> Result<(), CommunityError> {
        if *user == self.owner {
            return Err(CommunityError::OwnerCannotLeave);
        }
        if self.members.remove(user).is_none() {
            return Err(CommunityError::NotAMember(user.clone()));
        }
        for channel in self.channels.values_mut() {
            channel.forget_member(user);
        }
        Ok(())
    }

    /// Makes another member the owner. The previous owner stays a member with
    /// the roles they hold.
    pub fn transfer_owner(&mut self, new_owner: &UserId) -> Result<(), CommunityError> {
        self.require_member(new_owner)?;
        self.owner = new_owner.clone();
        Ok(())
    }

    // --- roles ---

    /// Adds a custom server role. Its id must be new and not
    /// [`RoleId::EVERYONE`].
    pub fn add_role(
        &mut self,
        id: RoleId,
        name: impl Into<String>,
        priority: i64,
        permissions: Permissions,
    ) -> Result<(), CommunityError> {
        if id == RoleId::EVERYONE {
            return Err(CommunityError::EveryoneRole("created"));
        }
        match self.roles.binary_search_by_key(&id, |r| r.id) {
            Ok(_) => Err(CommunityError::RoleExists(id)),
            Err(at) => {
                self.roles.insert(
                    at,
                    ServerRole {
                        id,
                        name: name.into(),
                        priority,
                        permissions,
                    },
                );
                Ok(())
            }
        }
    }

    /// Removes a custom role from the server, from every member holding it,
    /// from every channel override and from every channel list.
    pub fn remove_role(&mut self, id: RoleId) -> Result<(), CommunityError> {
        if id == RoleId::EVERYONE {
            return Err(CommunityError::EveryoneRole("removed"));
        }
        let at = self
            .roles
            .binary_search_by_key(&id, |r| r.id)
            .map_err(|_| CommunityError::NoSuchRole(id))?;
        self.roles.remove(at);
        for member in self.members.values_mut() {
            member.roles.retain(|r| *r != id);
        }
        for channel in self.channels.values_mut() {
            channel.forget_role(id);
        }
        Ok(())
    }

    pub fn rename_role(
        &mut self,
        id: RoleId,
        name: impl Into<String>,
    ) -> Result<(), CommunityError> {
        self.role_mut(id)?.name = name.into();
        Ok(())
    }

    /// Re-ranks a custom role. The everyone role always ranks lowest.
    pub fn set_role_priority(&mut self, id: RoleId, priority: i64) -> Result<(), CommunityError> {
        if id == RoleId::EVERYONE {
            return Err(CommunityError::EveryoneRole("re-ranked"));
        }
        self.role_mut(id)?.priority = priority;
        Ok(())
    }

    /// Replaces a role's permissions (the everyone role included).
    pub fn set_role_permissions(
        &mut self,
        id: RoleId,
        permissions: Permissions,
    ) -> Result<(), CommunityError> {
        self.role_mut(id)?.permissions = permissions;
        Ok(())
    }

    /// Changes only the keys named in `changes` (a partial update, as the
    /// API sends it).
    pub fn update_role_permissions(
        &mut self,
        id: RoleId,
        changes: &PermissionChanges,
    ) -> Result<(), CommunityError> {
        self.role_mut(id)?.permissions.apply(changes);
        Ok(())
    }

    /// Gives a member a custom role. Holding it already is a no-op.
    pub fn assign_role(&mut self, user: &UserId, role: RoleId) -> Result<(), CommunityError> {
        if role == RoleId::EVERYONE {
            return Err(CommunityError::EveryoneRole("assigned"));
        }
        self.require_role(role)?;
        let member = self
            .members
            .get_mut(user)
            .ok_or_else(|| CommunityError::NotAMember(user.clone()))?;
        if let Err(at) = member.roles.binary_search(&role) {
            member.roles.insert(at, role);
        }
        Ok(())
    }

    /// Takes a custom role from a member. Not holding it is a no-op.
    pub fn unassign_role(&mut self, user: &UserId, role: RoleId) -> Result<(), CommunityError> {
        if role == RoleId::EVERYONE {
            return Err(CommunityError::EveryoneRole("unassigned"));
        }
        self.require_role(role)?;
        let member = self
            .members
            .get_mut(user)
            .ok_or_else(|| CommunityError::NotAMember(user.clone()))?;
        member.roles.retain(|r| *r != role);
        Ok(())
    }

    // --- channels ---

    /// Adds a channel with no overrides and empty lists.
    pub fn add_channel(
        &mut self,
        id: CommunityChannelId,
        kind: ChannelKind,
        visibility: Visibility,
    ) -> Result<(), CommunityError> {
        if self.channels.contains_key(&id) {
            return Err(CommunityError::ChannelExists(id));
        }
        self.channels.insert(
            id,
            Channel {
                id,
                name: String::new(),
                kind,
                visibility,
                role_overrides: Vec::new(),
                member_overrides: HashMap::new(),
                black: ChannelList::default(),
                white: ChannelList::default(),
                settings: MediaSettings::default(),
            },
        );
        Ok(())
    }

    pub fn rename_channel(
        &mut self,
        channel: CommunityChannelId,
        name: impl Into<String>,
    ) -> Result<(), CommunityError> {
        self.channel_mut(channel)?.name = name.into();
        Ok(())
    }

    /// Replaces a media channel's settings after checking them.
    pub fn set_media_settings(
        &mut self,
        channel: CommunityChannelId,
        settings: MediaSettings,
    ) -> Result<(), CommunityError> {
        settings
            .validate()
            .map_err(CommunityError::InvalidSettings)?;
        let channel = self.channel_mut(channel)?;
        if channel.kind != ChannelKind::Media {
            return Err(CommunityError::NotMedia(channel.id));
        }
        channel.settings = settings;
        Ok(())
    }

    pub fn remove_channel(&mut self, id: CommunityChannelId) -> Result<(), CommunityError> {
        self.channels
            .remove(&id)
            .map(|_| ())
            .ok_or(CommunityError::NoSuchChannel(id))
    }

    pub fn set_visibility(
        &mut self,
        channel: CommunityChannelId,
        visibility: Visibility,
    ) -> Result<(), CommunityError> {
        self.channel_mut(channel)?.visibility = visibility;
        Ok(())
    }

    /// Replaces the override of a server role (the everyone role included)
    /// in a channel. All inherit removes the override.
    pub fn set_role_override(
        &mut self,
        channel: CommunityChannelId,
        role: RoleId,
        permissions: Permissions,
    ) -> Result<(), CommunityError> {
        self.require_role(role)?;
        let channel = self.channel_mut(channel)?;
        let overrides = &mut channel.role_overrides;
        match (
            overrides.binary_search_by_key(&role, |(id, _)| *id),
            permissions.is_empty(),
        ) {
            (Ok(at), true) => {
                overrides.remove(at);
            }
            (Ok(at), false) => overrides[at].1 = permissions,
            (Err(_), true) => {}
            (Err(at), false) => overrides.insert(at, (role, permissions)),
        }
        Ok(())
    }

    /// Changes only the keys named in `changes` of a role's override.
    pub fn update_role_override(
        &mut self,
        channel: CommunityChannelId,
        role: RoleId,
        changes: &PermissionChanges,
    ) -> Result<(), CommunityError> {
        let mut permissions = self
            .channel(channel)
            .ok_or(CommunityError::NoSuchChannel(channel))?
            .role_override(role);
        permissions.apply(changes);
        self.set_role_override(channel, role, permissions)
    }

    /// Replaces a member's override in a channel. All inherit removes it.
    pub fn set_member_override(
        &mut self,
        channel: CommunityChannelId,
        user: &UserId,
        permissions: Permissions,
    ) -> Result<(), CommunityError> {
        self.require_member(user)?;
        let channel = self.channel_mut(channel)?;
        if permissions.is_empty() {
            channel.member_overrides.remove(user);
        } else {
            channel.member_overrides.insert(user.clone(), permissions);
        }
        Ok(())
    }

    /// Changes only the keys named in `changes` of a member's override.
    pub fn update_member_override(
        &mut self,
        channel: CommunityChannelId,
        user: &UserId,
        changes: &PermissionChanges,
    ) -> Result<(), CommunityError> {
        let mut permissions = self
            .channel(channel)
            .ok_or(CommunityError::NoSuchChannel(channel))?
            .member_override(user);
        permissions.apply(changes);
        self.set_member_override(channel, user, permissions)
    }

    /// Puts a role or a member on a channel's black or white list. Already
    /// listed is a no-op.
    pub fn list_add(
        &mut self,
        channel: CommunityChannelId,
        list: ListKind,
        entry: ListEntry,
    ) -> Result<(), CommunityError> {
        match &entry {
            ListEntry::Role(role) => self.require_role(*role)?,
            ListEntry::Member(user) => self.require_member(user)?,
        }
        let list = self.channel_mut(channel)?.list_mut(list);
        match entry {
            ListEntry::Role(role) => {
                if let Err(at) = list.roles.binary_search(&role) {
                    list.roles.insert(at, role);
                }
            }
            ListEntry::Member(user) => {
                list.members.insert(user);
            }
        }
        Ok(())
    }

    /// Takes a role or a member off a channel's list. Not listed is a no-op.
    pub fn list_remove(
        &mut self,
        channel: CommunityChannelId,
        list: ListKind,
        entry: &ListEntry,
    ) -> Result<(), CommunityError> {
        let list = self.channel_mut(channel)?.list_mut(list);
        match entry {
            ListEntry::Role(role) => list.roles.retain(|r| r != role),
            ListEntry::Member(user) => {
                list.members.remove(user);
            }
        }
        Ok(())
    }
}

/// Cached answers are dropped wholesale once a server holds this many, which
/// bounds the cache's memory whatever the number of members and channels.
pub const DEFAULT_CACHE_LIMIT: usize = 65_536;

/// A server plus what is cached about it.
#[derive(Debug)]
struct Entry {
    server: Server,
    generation: u64,
    /// Resolved permissions by scope (`None`: server level) then member.
    /// Two levels so a lookup borrows the user id instead of cloning it.
    cache: HashMap<Option<CommunityChannelId>, HashMap<UserId, Effective>>,
    cached: usize,
}

/// All community servers, with a cache of resolved permissions.
///
/// Single writer: mutate only through [`Community::edit`], which invalidates
/// the server's cache and gives it a new generation. Generations come from one
/// counter for the whole store, so a value is never reused, not even by a
/// server removed and created again under the same id; a holder of a resolved
/// answer (a room, say) can keep the generation beside it and compare.
#[derive(Debug)]
pub struct Community {
    servers: HashMap<ServerId, Entry>,
    next_generation: u64,
    cache_limit: usize,
}

impl Default for Community {
    fn default() -> Self {
        Community::new()
    }
}

impl Community {
    pub fn new() -> Self {
        Community::with_cache_limit(DEFAULT_CACHE_LIMIT)
    }

    /// A store caching at most `limit` answers per server; 0 disables the
    /// cache.
    pub fn with_cache_limit(limit: usize) -> Self {
        Community {
            servers: HashMap::new(),
            next_generation: 1,
            cache_limit: limit,
        }
    }

    fn bump(&mut self) -> u64 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        generation
    }

    /// Adds a server built elsewhere (new, or loaded from storage).
    pub fn insert(&mut self, server: Server) -> Result<(), CommunityError> {
        let id = server.id();
        if self.servers.contains_key(&id) {
            return Err(CommunityError::ServerExists(id));
        }
        let generation = self.bump();
        self.servers.insert(
            id,
            Entry {
                server,
                generation,
                cache: HashMap::new(),
                cached: 0,
            },
        );
        Ok(())
    }

    pub fn remove(&mut self, id: ServerId) -> Option<Server> {
        self.servers.remove(&id).map(|entry| entry.server)
    }

    pub fn server(&self, id: ServerId) -> Option<&Server> {
        self.servers.get(&id).map(|entry| &entry.server)
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.values().map(|entry| &entry.server)
    }

    /// The server's current generation; it changes on every [`Community::edit`].
    pub fn generation(&self, id: ServerId) -> Option<u64> {
        self.servers.get(&id).map(|entry| entry.generation)
    }

    /// The only way to change a server held here. Invalidates first: the
    /// exclusive borrow means nobody can read between this and the change,
    /// and a change that then fails costs only a spurious invalidation.
    pub fn edit(&mut self, id: ServerId) -> Result<&mut Server, CommunityError> {
        let generation = self.bump();
        let entry = self
            .servers
            .get_mut(&id)
            .ok_or(CommunityError::NoSuchServer(id))?;
        entry.generation = generation;
        entry.cache.clear();
        entry.cached = 0;
        Ok(&mut entry.server)
    }

    /// [`Server::effective`], cached per (channel, member) until the server's
    /// next edit. An unknown server resolves to [`Effective::NONE`].
    /// Non-members and unknown channels are answered but not cached, so
    /// lookups of arbitrary ids cannot fill the cache.
    pub fn effective(
        &mut self,
        server: ServerId,
        channel: Option<CommunityChannelId>,
        user: &UserId,
    ) -> Effective {
        let Some(entry) = self.servers.get_mut(&server) else {
            return Effective::NONE;
        };
        if let Some(hit) = entry.cache.get(&channel).and_then(|users| users.get(user)) {
            return *hit;
        }
        let resolved = entry.server.effective(channel, user);
        let known_channel = channel.is_none_or(|id| entry.server.channels.contains_key(&id));
        if self.cache_limit > 0 && resolved.member && known_channel {
            if entry.cached >= self.cache_limit {
                entry.cache.clear();
                entry.cached = 0;
            }
            entry
                .cache
                .entry(channel)
                .or_default()
                .insert(user.clone(), resolved);
            entry.cached += 1;
        }
        resolved
    }
}
