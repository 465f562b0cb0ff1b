//! Permission keys, allow/deny/inherit sets, and how a member's permissions
//! in a server or channel are resolved.
//!
//! Each [`PermissionKey`] is one bit of a `u64` ([`KeySet`]); its bit never
//! changes, so masks can be stored. A role or override carries a
//! [`Permissions`]: two masks, `allow` and `deny`, never both set for one key;
//! a key in neither is inherit.
//!
//! # Resolution order
//!
//! [`Server::effective`] answers for one member, at server level (no channel)
//! or in one channel, in exactly this order:
//!
//! 1. Not a server member: nothing allowed, nothing visible.
//! 2. The server owner: every key allowed, every channel visible. The owner
//!    wins over lists and denies.
//! 3. Server level: a key is allowed if the everyone role or any custom
//!    server role the member holds allows it; otherwise it is not. Any allow
//!    wins, so a deny in a server role means the same as inherit: there is
//!    nothing below the server level for it to override.
//! 4. Channel role overrides (in a channel only): among the overrides of the
//!    roles the member holds, the everyone role included, a key allowed by any
//!    of them is allowed; else a key denied by any of them is denied; else the
//!    server-level answer stands.
//! 5. The member's own override in the channel: allow or deny replaces the
//!    answer so far; inherit keeps it.
//! 6. Visibility: a public channel is visible unless the member or one of
//!    their roles (everyone included) is on its black list; a private channel
//!    is visible only if the member or one of their roles (everyone included)
//!    is on its white list. In an invisible channel nothing is allowed.
//! 7. Channel kind: the RTC keys govern media channels, so in a text channel
//!    they are never allowed, not even to the owner. The manage keys apply to
//!    text and media channels alike.
//!
//! The manage keys resolve like any other key: they matter at server level,
//! but a channel override may grant or deny them inside one channel (say,
//! `manageBlackWhiteList` for the moderators of one channel only).
//!
//! Role ranks ([`super::Role::priority`], a smaller number ranks higher) never
//! enter resolution; they decide who may manage which role
//! ([`Server::outranks`], [`Server::authorize`]).
//!
//! # Granting
//!
//! Nobody may set allow on a key they do not hold themselves where the change
//! applies (server level for server roles, the channel for overrides); the
//! owner may grant everything. [`Server::authorize`] combines this with the
//! manage key each kind of change needs.

use std::fmt;
use std::ops::{BitAnd, BitOr, Not, Sub};

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Channel, ChannelKind, CommunityChannelId, Member, RoleId, Server, Visibility};
use crate::ids::UserId;

/// One permission. The discriminant is the key's bit in a [`KeySet`]: stable,
/// new keys only ever take new bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PermissionKey {
    /// Connect to a media channel (join its room).
    RtcChannelConnect = 0,
    /// Disconnect another member from a media channel.
    RtcChannelDisconnectOther = 1,
    /// Open one's own microphone.
    RtcChannelOpenMicrophone = 2,
    /// Open one's own camera.
    RtcChannelOpenCamera = 3,
    /// Open or close another member's microphone.
    RtcChannelOpenCloseOtherMicrophone = 4,
    /// Open or close another member's camera.
    RtcChannelOpenCloseOtherCamera = 5,
    /// Open or close every member's microphone at once.
    RtcChannelOpenCloseEveryoneMicrophone = 6,
    /// Open or close every member's camera at once.
    RtcChannelOpenCloseEveryoneCamera = 7,
    /// Share one's screen.
    RtcChannelOpenShareScreen = 8,
    /// Stop another member's screen share.
    RtcChannelCloseOtherShareScreen = 9,
    /// Change the server's settings, or delete it.
    ManageServer = 10,
    /// Create channels; change a channel's settings and visibility, or delete it.
    ManageChannel = 11,
    /// Create, change, delete, assign and take away roles; set channel overrides.
    ManageRole = 12,
    /// Change channels' black and white lists.
    ManageBlackWhiteList = 13,
}

impl PermissionKey {
    /// Every key, in bit order.
    pub const ALL: [PermissionKey; 14] = [
        PermissionKey::RtcChannelConnect,
        PermissionKey::RtcChannelDisconnectOther,
        PermissionKey::RtcChannelOpenMicrophone,
        PermissionKey::RtcChannelOpenCamera,
        PermissionKey::RtcChannelOpenCloseOtherMicrophone,
        PermissionKey::RtcChannelOpenCloseOtherCamera,
        PermissionKey::RtcChannelOpenCloseEveryoneMicrophone,
        PermissionKey::RtcChannelOpenCloseEveryoneCamera,
        PermissionKey::RtcChannelOpenShareScreen,
        PermissionKey::RtcChannelCloseOtherShareScreen,
        PermissionKey::ManageServer,
        PermissionKey::ManageChannel,
        PermissionKey::ManageRole,
        PermissionKey::ManageBlackWhiteList,
    ];

    /// The key's bit position.
    pub const fn bit(self) -> u32 {
        self as u32
    }

    pub const fn mask(self) -> u64 {
        1 << self as u32
    }

    /// The key by bit position.
    pub fn from_bit(bit: u32) -> Option<PermissionKey> {
        // ALL is in bit order (a test checks it), so the bit is the index.
        usize::try_from(bit)
            .ok()
            .and_then(|at| Self::ALL.get(at))
            .copied()
    }

    /// The wire name, as the API spells it.
    pub const fn name(self) -> &'static str {
        match self {
            PermissionKey::RtcChannelConnect => "RTCChannelConnect",
            PermissionKey::RtcChannelDisconnectOther => "RTCChannelDisconnectOther",
            PermissionKey::RtcChannelOpenMicrophone => "RTCChannelOpenMicrophone",
            PermissionKey::RtcChannelOpenCamera => "RTCChannelOpenCamera",
            PermissionKey::RtcChannelOpenCloseOtherMicrophone => {
                "RTCChannelOpenCloseOtherMicrophone"
            }
            PermissionKey::RtcChannelOpenCloseOtherCamera => "RTCChannelOpenCloseOtherCamera",
            PermissionKey::RtcChannelOpenCloseEveryoneMicrophone => {
                "RTCChannelOpenCloseEveryoneMicrophone"
            }
            PermissionKey::RtcChannelOpenCloseEveryoneCamera => "RTCChannelOpenCloseEveryoneCamera",
            PermissionKey::RtcChannelOpenShareScreen => "RTCChannelOpenShareScreen",
            PermissionKey::RtcChannelCloseOtherShareScreen => "RTCChannelCloseOtherShareScreen",
            PermissionKey::ManageServer => "manageServer",
            PermissionKey::ManageChannel => "manageChannel",
            PermissionKey::ManageRole => "manageRole",
            PermissionKey::ManageBlackWhiteList => "manageBlackWhiteList",
        }
    }

    /// The key with this wire name (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<PermissionKey> {
        Self::ALL.into_iter().find(|key| key.name() == name)
    }

    /// Whether the key governs media channels (and so never applies in a
    /// text channel).
    pub const fn is_rtc(self) -> bool {
        KeySet::RTC.contains(self)
    }
}

impl fmt::Display for PermissionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for PermissionKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for PermissionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = PermissionKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a permission key such as \"RTCChannelConnect\"")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<PermissionKey, E> {
                PermissionKey::from_name(name)
                    .ok_or_else(|| E::custom(format_args!("unknown permission key `{name}`")))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// What a role or override says about one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionValue {
    Allow,
    Deny,
    Inherit,
}

/// A set of keys as a bit mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeySet(u64);

impl KeySet {
    pub const EMPTY: KeySet = KeySet(0);
    /// Every key.
    pub const ALL: KeySet = KeySet((1 << PermissionKey::ALL.len()) - 1);
    /// The keys that govern media channels.
    pub const RTC: KeySet = KeySet((1 << (PermissionKey::ManageServer as u32)) - 1);
    /// The keys that govern management.
    pub const MANAGE: KeySet = KeySet(KeySet::ALL.0 & !KeySet::RTC.0);

    pub const fn bits(self) -> u64 {
        self.0
    }

    /// `None` if a bit names no key.
    pub const fn from_bits(bits: u64) -> Option<KeySet> {
        if bits & !KeySet::ALL.0 == 0 {
            Some(KeySet(bits))
        } else {
            None
        }
    }

    /// Ignores bits that name no key.
    pub const fn from_bits_truncate(bits: u64) -> KeySet {
        KeySet(bits & KeySet::ALL.0)
    }

    pub const fn of(keys: &[PermissionKey]) -> KeySet {
        let mut bits = 0;
        let mut at = 0;
        while at < keys.len() {
            bits |= keys[at].mask();
            at += 1;
        }
        KeySet(bits)
    }

    pub const fn contains(self, key: PermissionKey) -> bool {
        self.0 & key.mask() != 0
    }

    /// Whether every key of `other` is in `self`.
    pub const fn contains_all(self, other: KeySet) -> bool {
        other.0 & !self.0 == 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn insert(&mut self, key: PermissionKey) {
        self.0 |= key.mask();
    }

    pub fn remove(&mut self, key: PermissionKey) {
        self.0 &= !key.mask();
    }

    /// The keys, in bit order.
    pub fn iter(self) -> impl Iterator<Item = PermissionKey> {
        PermissionKey::ALL
            .into_iter()
            .filter(move |key| self.contains(*key))
    }
}

impl BitOr for KeySet {
    type Output = KeySet;
    fn bitor(self, other: KeySet) -> KeySet {
        KeySet(self.0 | other.0)
    }
}

impl BitAnd for KeySet {
    type Output = KeySet;
    fn bitand(self, other: KeySet) -> KeySet {
        KeySet(self.0 & other.0)
    }
}

impl Sub for KeySet {
    type Output = KeySet;
    fn sub(self, other: KeySet) -> KeySet {
        KeySet(self.0 & !other.0)
    }
}

impl Not for KeySet {
    type Output = KeySet;
    /// The complement among known keys.
    fn not(self) -> KeySet {
        KeySet(!self.0 & KeySet::ALL.0)
    }
}

impl From<PermissionKey> for KeySet {
    fn from(key: PermissionKey) -> KeySet {
        KeySet(key.mask())
    }
}

impl FromIterator<PermissionKey> for KeySet {
    fn from_iter<I: IntoIterator<Item = PermissionKey>>(keys: I) -> KeySet {
        keys.into_iter()
            .fold(KeySet::EMPTY, |set, key| set | key.into())
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(PermissionKey::name))
            .finish()
    }
}

impl fmt::Display for KeySet {
    /// Wire names joined by ", "; "none" when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (at, key) in self.iter().enumerate() {
            if at > 0 {
                f.write_str(", ")?;
            }
            f.write_str(key.name())?;
        }
        Ok(())
    }
}

/// A list of wire names.
impl Serialize for KeySet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for key in self.iter() {
            seq.serialize_element(&key)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for KeySet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SetVisitor;
        impl<'de> Visitor<'de> for SetVisitor {
            type Value = KeySet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of permission keys")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeySet, A::Error> {
                let mut set = KeySet::EMPTY;
                while let Some(key) = seq.next_element::<PermissionKey>()? {
                    set.insert(key);
                }
                Ok(set)
            }
        }
        d.deserialize_seq(SetVisitor)
    }
}

/// The permissions a role or override carries: per key allow, deny or inherit.
///
/// Two masks; a key is never in both (setting one clears the other). On the
/// wire, a map from key to `"allow"`, `"deny"` or `"inherit"`; keys left out
/// are inherit, and serializing leaves inherit keys out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Permissions {
    allow: KeySet,
    deny: KeySet,
}

impl Permissions {
    /// Every key inherit.
    pub const EMPTY: Permissions = Permissions {
        allow: KeySet::EMPTY,
        deny: KeySet::EMPTY,
    };

    /// What the everyone role of a new server carries: members may connect to
    /// media channels, open their microphone and camera and share their
    /// screen; moderation and management need a role.
    pub const fn everyone_default() -> Permissions {
        Permissions::allowing(KeySet::of(&[
            PermissionKey::RtcChannelConnect,
            PermissionKey::RtcChannelOpenMicrophone,
            PermissionKey::RtcChannelOpenCamera,
            PermissionKey::RtcChannelOpenShareScreen,
        ]))
    }

    /// Allow on `keys`, inherit elsewhere.
    pub const fn allowing(keys: KeySet) -> Permissions {
        Permissions {
            allow: keys,
            deny: KeySet::EMPTY,
        }
    }

    /// Deny on `keys`, inherit elsewhere.
    pub const fn denying(keys: KeySet) -> Permissions {
        Permissions {
            allow: KeySet::EMPTY,
            deny: keys,
        }
    }

    /// From stored masks; `None` if a bit names no key or is in both masks.
    pub const fn from_masks(allow: u64, deny: u64) -> Option<Permissions> {
        match (KeySet::from_bits(allow), KeySet::from_bits(deny)) {
            (Some(allow), Some(deny)) if allow.0 & deny.0 == 0 => Some(Permissions { allow, deny }),
            _ => None,
        }
    }

    pub const fn allow(self) -> KeySet {
        self.allow
    }

    pub const fn deny(self) -> KeySet {
        self.deny
    }

    pub const fn get(self, key: PermissionKey) -> PermissionValue {
        if self.allow.contains(key) {
            PermissionValue::Allow
        } else if self.deny.contains(key) {
            PermissionValue::Deny
        } else {
            PermissionValue::Inherit
        }
    }

    pub fn set(&mut self, key: PermissionKey, value: PermissionValue) {
        self.allow.remove(key);
        self.deny.remove(key);
        match value {
            PermissionValue::Allow => self.allow.insert(key),
            PermissionValue::Deny => self.deny.insert(key),
            PermissionValue::Inherit => {}
        }
    }

    /// `set`, for building values in one expression.
    pub fn with(mut self, key: PermissionKey, value: PermissionValue) -> Permissions {
        self.set(key, value);
        self
    }

    /// Applies a partial update: keys named in `changes` take its value,
    /// the others keep theirs.
    pub fn apply(&mut self, changes: &PermissionChanges) {
        let touched = changes.touched();
        self.allow = (self.allow - touched) | changes.allow;
        self.deny = (self.deny - touched) | changes.deny;
    }

    /// Whether every key is inherit (such an override changes nothing).
    pub const fn is_empty(self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// A partial update of a [`Permissions`]: only the keys it names change.
///
/// The same wire form as [`Permissions`], but here `"inherit"` means "reset
/// this key" and a key left out means "leave it alone" (QChat's
/// `updateServerRole` sends only what changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PermissionChanges {
    allow: KeySet,
    deny: KeySet,
    inherit: KeySet,
}

impl PermissionChanges {
    pub const fn new() -> PermissionChanges {
        PermissionChanges {
            allow: KeySet::EMPTY,
            deny: KeySet::EMPTY,
            inherit: KeySet::EMPTY,
        }
    }

    pub fn set(&mut self, key: PermissionKey, value: PermissionValue) {
        self.allow.remove(key);
        self.deny.remove(key);
        self.inherit.remove(key);
        match value {
            PermissionValue::Allow => self.allow.insert(key),
            PermissionValue::Deny => self.deny.insert(key),
            PermissionValue::Inherit => self.inherit.insert(key),
        }
    }

    pub fn with(mut self, key: PermissionKey, value: PermissionValue) -> PermissionChanges {
        self.set(key, value);
        self
    }

    /// Keys set to allow: what a grant check must look at.
    pub const fn allow(self) -> KeySet {
        self.allow
    }

    pub const fn deny(self) -> KeySet {
        self.deny
    }

    pub const fn inherit(self) -> KeySet {
        self.inherit
    }

    /// Every key the update names.
    pub const fn touched(self) -> KeySet {
        KeySet(self.allow.0 | self.deny.0 | self.inherit.0)
    }

    pub const fn is_empty(self) -> bool {
        self.touched().is_empty()
    }

    pub fn get(self, key: PermissionKey) -> Option<PermissionValue> {
        if self.allow.contains(key) {
            Some(PermissionValue::Allow)
        } else if self.deny.contains(key) {
            Some(PermissionValue::Deny)
        } else if self.inherit.contains(key) {
            Some(PermissionValue::Inherit)
        } else {
            None
        }
    }
}

fn serialize_values<S: Serializer>(
    s: S,
    entries: impl Iterator<Item = (PermissionKey, PermissionValue)>,
    len: usize,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(len))?;
    for (key, value) in entries {
        map.serialize_entry(&key, &value)?;
    }
    map.end()
}

impl Serialize for Permissions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let this = *self;
        let entries = PermissionKey::ALL
            .into_iter()
            .map(move |key| (key, this.get(key)))
            .filter(|(_, value)| *value != PermissionValue::Inherit);
        serialize_values(s, entries, self.allow.len() + self.deny.len())
    }
}

impl Serialize for PermissionChanges {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let this = *self;
        let entries = PermissionKey::ALL
            .into_iter()
            .filter_map(move |key| this.get(key).map(|value| (key, value)));
        serialize_values(s, entries, self.touched().len())
    }
}

/// Reads a `{key: value}` map, refusing unknown keys and values (the error
/// names them) and keys given twice.
struct ValuesVisitor;

impl<'de> Visitor<'de> for ValuesVisitor {
    type Value = PermissionChanges;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from permission key to \"allow\", \"deny\" or \"inherit\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PermissionChanges, A::Error> {
        let mut changes = PermissionChanges::new();
        while let Some(key) = map.next_key::<PermissionKey>()? {
            if changes.touched().contains(key) {
                return Err(de::Error::custom(format_args!(
                    "permission key `{key}` given twice"
                )));
            }
            let value = map.next_value::<PermissionValue>()?;
            changes.set(key, value);
        }
        Ok(changes)
    }
}

impl<'de> Deserialize<'de> for PermissionChanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ValuesVisitor)
    }
}

impl<'de> Deserialize<'de> for Permissions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let changes = d.deserialize_map(ValuesVisitor)?;
        Ok(Permissions {
            allow: changes.allow,
            deny: changes.deny,
        })
    }
}

/// What one member may do at server level or in one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Effective {
    /// The allowed keys.
    pub permissions: KeySet,
    /// At server level: whether the member sees the server (every member
    /// does). In a channel: whether the member sees the channel.
    pub visible: bool,
    pub member: bool,
    pub owner: bool,
}

impl Effective {
    /// A non-member's answer, and the answer for an unknown server.
    pub const NONE: Effective = Effective {
        permissions: KeySet::EMPTY,
        visible: false,
        member: false,
        owner: false,
    };

    pub const fn allows(self, key: PermissionKey) -> bool {
        self.permissions.contains(key)
    }
}

impl ChannelKind {
    /// The keys that mean something in a channel of this kind (step 7).
    pub const fn applicable(self) -> KeySet {
        match self {
            ChannelKind::Text => KeySet::MANAGE,
            ChannelKind::Media => KeySet::ALL,
        }
    }
}

impl Channel {
    /// Step 6 for a member holding `roles` (sorted custom roles).
    fn visible_to(&self, user: &UserId, roles: &[RoleId]) -> bool {
        let list = match self.visibility {
            Visibility::Public => &self.black,
            Visibility::Private => &self.white,
        };
        let listed = list.has_role(RoleId::EVERYONE)
            || (!list.roles.is_empty() && roles.iter().any(|role| list.has_role(*role)))
            || list.members.contains(user);
        match self.visibility {
            Visibility::Public => !listed,
            Visibility::Private => listed,
        }
    }
}

/// Something a member asks to change, for [`Server::authorize`].
///
/// `grants` is the set of keys the change turns to allow. Keys that are
/// already allowed and stay allowed need not be listed, so a member may edit a
/// role that carries keys they do not hold as long as they grant none of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manage {
    /// Server settings, or deleting the server: `manageServer` at server level.
    EditServer,
    /// Creating a channel: `manageChannel` at server level.
    CreateChannel,
    /// A channel's settings or visibility, or deleting it: `manageChannel` in
    /// the channel.
    EditChannel(CommunityChannelId),
    /// A channel's black or white list: `manageBlackWhiteList` in the channel.
    EditLists(CommunityChannelId),
    /// Creating a custom role ranked `priority` that allows `grants`:
    /// `manageRole` at server level, a rank below the member's highest role,
    /// and every key of `grants` held at server level.
    CreateRole { priority: i64, grants: KeySet },
    /// Changing a role's name, permissions or (with `priority`) rank:
    /// `manageRole` at server level, the role ranked below the member's
    /// highest role (and so must the new rank be), `grants` held at server
    /// level.
    EditRole {
        role: RoleId,
        grants: KeySet,
        priority: Option<i64>,
    },
    /// Deleting a role: `manageRole` at server level, the role ranked below
    /// the member's highest.
    DeleteRole(RoleId),
    /// Giving a member a role: as [`Manage::DeleteRole`], and every key the
    /// role allows held at server level (giving a role grants what it allows).
    AssignRole(RoleId),
    /// Taking a role from a member: as [`Manage::DeleteRole`].
    UnassignRole(RoleId),
    /// Setting a role's override in a channel: `manageRole` in the channel,
    /// the role ranked below the member's highest, `grants` held in the
    /// channel.
    RoleOverride {
        channel: CommunityChannelId,
        role: RoleId,
        grants: KeySet,
    },
    /// Setting a member's override in a channel: `manageRole` in the channel
    /// and `grants` held in the channel.
    MemberOverride {
        channel: CommunityChannelId,
        grants: KeySet,
    },
}

/// Why [`Server::authorize`] said no; the sentence is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a member of this server")]
    NotAMember,
    #[error("no role {0} in this server")]
    NoSuchRole(RoleId),
    #[error("no channel {0} in this server")]
    NoSuchChannel(CommunityChannelId),
    #[error("missing permission {0}")]
    Missing(PermissionKey),
    #[error("cannot grant permissions you do not hold: {0}")]
    NotHeld(KeySet),
    #[error("role {0} ranks at or above your highest role")]
    Outranked(RoleId),
    #[error("a role ranked {0} would rank at or above your highest role")]
    RankTooHigh(i64),
}

impl Server {
    /// What `user` may do here: at server level if `channel` is `None`, else
    /// in that channel. Follows the resolution order in the module docs. An
    /// unknown channel resolves to nothing allowed and not visible.
    pub fn effective(&self, channel: Option<CommunityChannelId>, user: &UserId) -> Effective {
        // 1. Not a member.
        let Some(member) = self.members.get(user) else {
            return Effective::NONE;
        };
        let owner = *user == self.owner;
        let channel = match channel {
            None => None,
            Some(id) => match self.channels.get(&id) {
                Some(channel) => Some(channel),
                None => {
                    return Effective {
                        permissions: KeySet::EMPTY,
                        visible: false,
                        member: true,
                        owner,
                    };
                }
            },
        };
        // 2. The owner (step 7 still applies: no RTC keys in a text channel).
        if owner {
            return Effective {
                permissions: channel.map_or(KeySet::ALL, |c| c.kind.applicable()),
                visible: true,
                member: true,
                owner: true,
            };
        }
        // 3. Server level: any allow wins; deny is inherit here.
        let mut allowed = self.everyone.permissions.allow;
        for role in &member.roles {
            if let Some(role) = self.custom_role(*role) {
                allowed = allowed | role.permissions.allow;
            }
        }
        let Some(channel) = channel else {
            return Effective {
                permissions: allowed,
                visible: true,
                member: true,
                owner: false,
            };
        };
        // 6, checked early: an invisible channel allows nothing whatever the
        // overrides say, so there is no point computing them.
        if !channel.visible_to(user, &member.roles) {
            return Effective {
                permissions: KeySet::EMPTY,
                visible: false,
                member: true,
                owner: false,
            };
        }
        // 4. Channel role overrides of the roles held: allow wins, then deny.
        if !channel.role_overrides.is_empty() {
            let mut role_allow = KeySet::EMPTY;
            let mut role_deny = KeySet::EMPTY;
            let mut fold = |p: Permissions| {
                role_allow = role_allow | p.allow;
                role_deny = role_deny | p.deny;
            };
            fold(channel.role_override(RoleId::EVERYONE));
            for role in &member.roles {
                fold(channel.role_override(*role));
            }
            allowed = role_allow | (allowed - role_deny);
        }
        // 5. The member's own override.
        if let Some(own) = channel.member_overrides.get(user) {
            allowed = own.allow | (allowed - own.deny);
        }
        // 7. Only the keys that mean something in this kind of channel.
        Effective {
            permissions: allowed & channel.kind.applicable(),
            visible: true,
            member: true,
            owner: false,
        }
    }

    /// Whether `granter` may set allow on every key of `perms` where the
    /// change applies (server level for `None`, else that channel): they must
    /// hold the keys themselves there. The owner may grant everything.
    pub fn may_grant(
        &self,
        channel: Option<CommunityChannelId>,
        granter: &UserId,
        perms: KeySet,
    ) -> bool {
        let held = self.effective(channel, granter);
        held.member && (held.owner || held.permissions.contains_all(perms))
    }

    /// `manageServer` at server level: server settings.
    pub fn may_manage_server(&self, user: &UserId) -> bool {
        self.effective(None, user)
            .allows(PermissionKey::ManageServer)
    }

    /// `manageChannel`: creating channels (`None`), or a channel's settings,
    /// visibility and deletion.
    pub fn may_manage_channel(&self, channel: Option<CommunityChannelId>, user: &UserId) -> bool {
        self.effective(channel, user)
            .allows(PermissionKey::ManageChannel)
    }

    /// `manageRole`: server roles and their assignment (`None`), or the role
    /// and member overrides of a channel.
    pub fn may_manage_roles(&self, channel: Option<CommunityChannelId>, user: &UserId) -> bool {
        self.effective(channel, user)
            .allows(PermissionKey::ManageRole)
    }

    /// `manageBlackWhiteList` in a channel: its black and white lists.
    pub fn may_manage_lists(&self, channel: CommunityChannelId, user: &UserId) -> bool {
        self.effective(Some(channel), user)
            .allows(PermissionKey::ManageBlackWhiteList)
    }

    /// The rank of the member's highest custom role; `None` if they hold
    /// only the everyone role (which ranks below every custom role).
    fn top_priority(&self, member: &Member) -> Option<i64> {
        member
            .roles
            .iter()
            .filter_map(|id| self.custom_role(*id))
            .map(|role| role.priority)
            .min()
    }

    /// Whether `user` ranks above `role`: they are the owner, or they hold a
    /// custom role with a smaller priority number. The everyone role is
    /// outranked by every holder of a custom role.
    pub fn outranks(&self, user: &UserId, role: RoleId) -> bool {
        let Some(member) = self.members.get(user) else {
            return false;
        };
        if *user == self.owner {
            return true;
        }
        let Some(top) = self.top_priority(member) else {
            return false;
        };
        if role == RoleId::EVERYONE {
            return true;
        }
        self.custom_role(role)
            .is_some_and(|role| top < role.priority)
    }

    /// Whether `user` may make this change: the manage key it needs, the rank
    /// rule for roles, and the grant rule (see [`Manage`] for each). Checks
    /// run in that order, so the refusal names the first rule broken. The
    /// owner may do everything to things that exist.
    pub fn authorize(&self, user: &UserId, action: Manage) -> Result<(), Refusal> {
        let Some(member) = self.members.get(user) else {
            return Err(Refusal::NotAMember);
        };
        let known_channel = |id: CommunityChannelId| {
            if self.channels.contains_key(&id) {
                Ok(())
            } else {
                Err(Refusal::NoSuchChannel(id))
            }
        };
        let known_role = |id: RoleId| self.role(id).ok_or(Refusal::NoSuchRole(id));
        // What the action needs: where, which key, which role must rank below
        // the member, which new rank must, and which keys are granted.
        let (scope, key, role, rank, grants) = match action {
            Manage::EditServer => (None, PermissionKey::ManageServer, None, None, KeySet::EMPTY),
            Manage::CreateChannel => (
                None,
                PermissionKey::ManageChannel,
                None,
                None,
                KeySet::EMPTY,
            ),
            Manage::EditChannel(channel) => {
                known_channel(channel)?;
                let key = PermissionKey::ManageChannel;
                (Some(channel), key, None, None, KeySet::EMPTY)
            }
            Manage::EditLists(channel) => {
                known_channel(channel)?;
                let key = PermissionKey::ManageBlackWhiteList;
                (Some(channel), key, None, None, KeySet::EMPTY)
            }
            Manage::CreateRole { priority, grants } => (
                None,
                PermissionKey::ManageRole,
                None,
                Some(priority),
                grants,
            ),
            Manage::EditRole {
                role,
                grants,
                priority,
            } => {
                known_role(role)?;
                (
                    None,
                    PermissionKey::ManageRole,
                    Some(role),
                    priority,
                    grants,
                )
            }
            Manage::DeleteRole(role) | Manage::UnassignRole(role) => {
                known_role(role)?;
                (
                    None,
                    PermissionKey::ManageRole,
                    Some(role),
                    None,
                    KeySet::EMPTY,
                )
            }
            Manage::AssignRole(role) => {
                let grants = known_role(role)?.permissions.allow;
                (None, PermissionKey::ManageRole, Some(role), None, grants)
            }
            Manage::RoleOverride {
                channel,
                role,
                grants,
            } => {
                known_channel(channel)?;
                known_role(role)?;
                (
                    Some(channel),
                    PermissionKey::ManageRole,
                    Some(role),
                    None,
                    grants,
                )
            }
            Manage::MemberOverride { channel, grants } => {
                known_channel(channel)?;
                (Some(channel), PermissionKey::ManageRole, None, None, grants)
            }
        };
        if *user == self.owner {
            return Ok(());
        }
        let held = self.effective(scope, user).permissions;
        if !held.contains(key) {
            return Err(Refusal::Missing(key));
        }
        if let Some(role) = role
            && !self.outranks(user, role)
        {
            return Err(Refusal::Outranked(role));
        }
        if let Some(rank) = rank
            && self.top_priority(member).is_none_or(|top| top >= rank)
        {
            return Err(Refusal::RankTooHigh(rank));
        }
        let missing = grants - held;
        if !missing.is_empty() {
            return Err(Refusal::NotHeld(missing));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
