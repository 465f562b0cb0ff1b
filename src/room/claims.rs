//! Who may open a room: the seam between the registry and a cluster.
//!
//! On one node the registry's map is the whole truth, and [`Rooms`] needs
//! nothing more. In a cluster a name must be unique across every node, so
//! before a room opens the registry asks its [`Claims`] to take the name
//! (atomically, cluster-wide), and when the room ends it gives the name
//! back. The registry never learns how: `crate::cluster` implements this
//! trait over Redis, and this layer imports nothing above it.
//!
//! [`Rooms`]: super::Rooms

use crate::ids::{ChannelId, RoomName};

/// What a claim records about the room, so that a node taking it over after
/// its owner died can open it again as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimMeta {
    pub custom_info: String,
    /// The policy asked for at create time (`None`: the catalog's rules).
    pub policy: Option<String>,
    pub channel_id: ChannelId,
    pub created_at: i64,
}

/// How a room is being opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimKind {
    /// A new room: refused if the name is held anywhere, or its owner died
    /// less than a grace period ago (the room may still come back).
    Create,
    /// The room of a node that died, opened again here. Refused if another
    /// live node holds it (it was revived there first).
    Revive,
    /// A community channel's room: it has no creator, so whoever connects
    /// first opens it, here or, after its owner died, again.
    Channel,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another node holds the name (or held it and may come back).
    #[error("the name is held by {0}")]
    Taken(String),
    /// A revive found nothing to revive: the room ended meanwhile.
    #[error("the room ended")]
    Gone,
    /// The claim could not be made at all (Redis unreachable).
    #[error("{0}")]
    Unavailable(String),
}

/// Takes and gives back room names. Claims are made before a room opens and
/// released after it closes; in between the implementation keeps them alive.
#[async_trait::async_trait]
pub trait Claims: Send + Sync + 'static {
    async fn claim(
        &self,
        room: &RoomName,
        kind: ClaimKind,
        meta: &ClaimMeta,
    ) -> Result<(), ClaimError>;

    /// The room instance `channel_id` closed: its name is free again. Never
    /// waits; a release that cannot be made lets the claim lapse.
    fn release(&self, room: &RoomName, channel_id: ChannelId);
}
