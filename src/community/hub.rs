//! The live community: the model behind one lock, written through to the
//! store, with a notice to rooms on every change.
//!
//! Reads (every permission check of every room) answer from memory: the
//! [`Community`] cache, invalidated by [`Community::edit`]. The database is
//! read once, at start. A change is applied to a copy of the server first and
//! swapped in only if every step succeeded, so a refused multi-step change
//! leaves nothing half done; then the new snapshot is queued to the store
//! thread while the lock is still held, which keeps the writes in the order of
//! the changes, and rooms bound to the server's channels are told so they can
//! apply revocations at once.
//!
//! The lock is a std mutex: it is held for a hash lookup or one edit, never
//! across an `.await`, and rooms call it from their own tasks.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use super::permissions::Refusal;
use super::{Community, CommunityChannelId, CommunityError, Effective, RoleId, Server, ServerId};
use super::{KeySet, ServerSnapshot};
use crate::ids::UserId;

/// Why a community request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Model(#[from] CommunityError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("stored community server is unreadable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Forbidden(String),
}

/// One change to the stored community servers. A server is stored whole, as
/// the JSON of its [`crate::community::ServerSnapshot`]: changes are rare
/// (people editing roles and channels) and the model is read from memory,
/// never from storage, so one row per server keeps writes atomic and simple.
#[derive(Clone, Debug, PartialEq)]
pub enum CommunityOp {
    Save { server: u64, snapshot: String },
    Delete { server: u64 },
}

/// Where the hub writes changed servers: queued in the order of the changes
/// and never waited on, except through [`CommunityWriter::flush`]. The
/// store thread is one; a shared database can be another.
#[async_trait::async_trait]
pub trait CommunityWriter: Send + Sync {
    fn write(&self, op: CommunityOp);
    /// Resolves once every write queued before it is durable.
    async fn flush(&self) -> Result<(), String>;
}

/// The last change, as rooms see it: which server, and who made it (the
/// `operate_by` of whatever the change forces on connected members).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub server: Option<ServerId>,
    pub by: String,
}

/// A custom role as policies see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleInfo {
    pub id: RoleId,
    pub name: String,
    pub priority: i64,
}

/// What one member may do in one channel, and the roles behind it: what a
/// room hands its plugins (`permissions`, as bits) and Lua hooks (the whole
/// thing, as `req.community`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberContext {
    pub server: ServerId,
    pub channel: CommunityChannelId,
    pub owner: bool,
    pub visible: bool,
    /// The allowed keys, by wire name.
    pub permissions: KeySet,
    /// The custom roles held, highest rank first (the everyone role is
    /// implied and not listed).
    pub roles: Vec<RoleInfo>,
}

impl MemberContext {
    pub fn bits(&self) -> u64 {
        self.permissions.bits()
    }
}

struct HubState {
    community: Community,
    /// The next id handed out for a server, role or channel. One counter for
    /// all three keeps ids unique across kinds, which makes logs unambiguous.
    next_id: u64,
}

/// The community model as the running server holds it; shared by the API,
/// the connections and the rooms.
pub struct CommunityHub {
    state: Mutex<HubState>,
    store: Option<Arc<dyn CommunityWriter>>,
    changes: watch::Sender<Change>,
}

impl std::fmt::Debug for CommunityHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommunityHub").finish_non_exhaustive()
    }
}

/// The largest id a server, its roles and its channels use.
fn highest_id(server: &Server) -> u64 {
    let roles = server.roles().map(|r| r.id().0);
    let channels = server.channels().map(|c| c.id().0);
    roles.chain(channels).fold(server.id().0, u64::max)
}

impl CommunityHub {
    /// The hub over the servers stored as `snapshots` (JSON), writing changes
    /// to `store` (`None`: kept in memory only, for tests and benches).
    pub fn load(
        snapshots: &[String],
        store: Option<Arc<dyn CommunityWriter>>,
    ) -> Result<Arc<CommunityHub>, HubError> {
        let mut community = Community::new();
        let mut highest = 0;
        for json in snapshots {
            let snapshot: ServerSnapshot =
                serde_json::from_str(json).map_err(|e| HubError::Corrupt(e.to_string()))?;
            let server = Server::from_snapshot(&snapshot)?;
            highest = highest.max(highest_id(&server));
            community.insert(server)?;
        }
        Ok(Arc::new(CommunityHub {
            state: Mutex::new(HubState {
                community,
                next_id: highest + 1,
            }),
            store,
            changes: watch::channel(Change::default()).0,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock is a bug in the model; the state is
        // still the last complete one (edits apply to a copy), so go on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ids handed out from now on start at `floor` or above. A cluster node
    /// reserves a range no other node uses (`Cluster::reserve_ids`), so
    /// servers, roles and channels created on two nodes at once never share
    /// an id.
    pub fn raise_next_id(&self, floor: u64) {
        let mut state = self.lock();
        state.next_id = state.next_id.max(floor);
    }

    /// A fresh id for a server, role or channel.
    pub fn allocate_id(&self) -> u64 {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        id
    }

    /// Notices of changes, for rooms bound to channels.
    pub fn subscribe(&self) -> watch::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Reads the model.
    pub fn read<R>(&self, f: impl FnOnce(&Community) -> R) -> R {
        f(&self.lock().community)
    }

    /// What `user` may do in `server` (at server level with no channel),
    /// from the cache.
    pub fn effective(
        &self,
        server: ServerId,
        channel: Option<CommunityChannelId>,
        user: &UserId,
    ) -> Effective {
        self.lock().community.effective(server, channel, user)
    }

    /// The member's permissions in a channel and the roles they hold.
    pub fn member_context(
        &self,
        server: ServerId,
        channel: CommunityChannelId,
        user: &UserId,
    ) -> MemberContext {
        let mut state = self.lock();
        let effective = state.community.effective(server, Some(channel), user);
        let mut roles: Vec<RoleInfo> = state
            .community
            .server(server)
            .and_then(|s| {
                let held = s.member_roles(user)?;
                Some(
                    held.iter()
                        .filter_map(|id| s.role(*id))
                        .map(|r| RoleInfo {
                            id: r.id(),
                            name: r.name().to_owned(),
                            priority: r.priority(),
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        roles.sort_by_key(|r| (r.priority, r.id));
        MemberContext {
            server,
            channel,
            owner: effective.owner,
            visible: effective.visible,
            permissions: effective.permissions,
            roles,
        }
    }

    /// Creates a server owned by `owner` and stores it.
    pub fn create_server(&self, owner: UserId, name: String, by: &str) -> ServerSnapshot {
        let mut state = self.lock();
        let id = ServerId(state.next_id);
        state.next_id += 1;
        let mut server = Server::new(id, owner);
        server.set_name(name);
        let snapshot = server.snapshot();
        // The id was never handed out, so the insert cannot collide.
        let _ = state.community.insert(server);
        self.persist(&snapshot);
        drop(state);
        self.notify(id, by);
        snapshot
    }

    /// Removes a server; rooms of its channels close.
    pub fn delete_server(&self, id: ServerId, by: &str) -> Result<(), HubError> {
        let mut state = self.lock();
        state
            .community
            .remove(id)
            .ok_or(CommunityError::NoSuchServer(id))?;
        if let Some(store) = &self.store {
            store.write(CommunityOp::Delete { server: id.0 });
        }
        drop(state);
        self.notify(id, by);
        Ok(())
    }

    /// Applies `change` to a copy of the server and, if it succeeds, makes
    /// the copy current, stores it and tells the rooms. `change` sees the
    /// server as it is before the change, so it can authorize first.
    pub fn edit<R>(
        &self,
        id: ServerId,
        by: &str,
        change: impl FnOnce(&mut Server) -> Result<R, HubError>,
    ) -> Result<R, HubError> {
        let mut state = self.lock();
        let mut copy = state
            .community
            .server(id)
            .ok_or(CommunityError::NoSuchServer(id))?
            .clone();
        let result = change(&mut copy)?;
        let snapshot = copy.snapshot();
        *state.community.edit(id)? = copy;
        self.persist(&snapshot);
        drop(state);
        self.notify(id, by);
        Ok(result)
    }

    fn persist(&self, snapshot: &ServerSnapshot) {
        let Some(store) = &self.store else {
            return;
        };
        match serde_json::to_string(snapshot) {
            Ok(json) => store.write(CommunityOp::Save {
                server: snapshot.id.0,
                snapshot: json,
            }),
            // Plain data with string keys: cannot fail, but never panic here.
            Err(e) => tracing::error!(server = %snapshot.id, error = %e, "cannot encode server"),
        }
    }

    fn notify(&self, server: ServerId, by: &str) {
        self.changes.send_replace(Change {
            server: Some(server),
            by: by.to_owned(),
        });
    }

    /// A change another node made (cluster only): server `id` is now
    /// `snapshot` (JSON), or gone (`None`). Nothing is stored: the node that
    /// made the change stored it. Rooms hear of it as of a local change.
    pub fn apply_remote(&self, id: u64, snapshot: Option<&str>) -> Result<(), HubError> {
        let id = ServerId(id);
        let mut state = self.lock();
        match snapshot {
            Some(json) => {
                let snapshot: ServerSnapshot =
                    serde_json::from_str(json).map_err(|e| HubError::Corrupt(e.to_string()))?;
                let server = Server::from_snapshot(&snapshot)?;
                // No bump of `next_id`: in a cluster each node hands out ids
                // from a range of its own (see `raise_next_id`).
                if state.community.server(id).is_some() {
                    *state.community.edit(id)? = server;
                } else {
                    state.community.insert(server)?;
                }
            }
            None => {
                state.community.remove(id);
            }
        }
        drop(state);
        self.notify(id, "cluster");
        Ok(())
    }

    /// Everything stored, replacing what is in memory (cluster only: after
    /// time away from the bus). Every server counts as changed.
    pub fn replace_all(&self, snapshots: &[String]) -> Result<(), HubError> {
        let loaded = CommunityHub::load(snapshots, None)?;
        let fresh = {
            let mut state = loaded.lock();
            std::mem::replace(
                &mut *state,
                HubState {
                    community: Community::new(),
                    next_id: 0,
                },
            )
        };
        let ids: Vec<ServerId> = {
            let mut state = self.lock();
            let mut ids: Vec<ServerId> = state.community.servers().map(|s| s.id()).collect();
            ids.extend(fresh.community.servers().map(|s| s.id()));
            state.community = fresh.community;
            ids
        };
        for id in ids {
            self.notify(id, "cluster");
        }
        Ok(())
    }

    /// Waits until every write queued so far is on disk.
    pub async fn flush(&self) {
        if let Some(store) = &self.store
            && let Err(e) = store.flush().await
        {
            tracing::error!(error = %e, "community store flush failed");
        }
    }
}
