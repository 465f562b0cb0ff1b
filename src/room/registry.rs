//! Open rooms by name. Creating is atomic per name (the second creator gets
//! 417), and a room removes itself when it closes, so the name is free again.
//!
//! The map sits behind a std `Mutex`: it is held only to look up, insert or
//! remove one entry, never across an `.await`, so a tokio mutex would buy
//! nothing. Room traffic itself never touches it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::claims::{ClaimError, ClaimKind, ClaimMeta, Claims};
use super::error::Error;
use super::state::{Room, RoomSettings};
use super::task::{self, RoomContext, RoomHandle, RoomSummary};
use crate::auth::Identity;
use crate::clock::Clock;
use crate::community::channel::{ChannelBinding, ROOM_PREFIX};
use crate::ids::{ChannelId, RoomName};
use crate::media::Media;
use crate::policy::FailureMode;
use crate::policy::authz::{self, Access, Ask, Denial};
use crate::policy::bans::Bans;
use crate::policy::catalog::Catalog;
use crate::policy::decisions::{DecisionLog, DecisionQuery, DecisionRecord};
use crate::policy::lua::{OwnedIdentity, RoomView};
use crate::policy::runtime::RoomPolicy;
use crate::store::StoreHandle;
use crate::store::kv::KvStore;

/// What rooms are made of: their settings and the services they use.
pub struct RoomServices {
    pub settings: RoomSettings,
    /// Most rooms open at once; creates beyond it answer 503.
    pub max_rooms: usize,
    /// Commands queued per room before senders wait.
    pub command_queue: usize,
    pub store: StoreHandle,
    pub metrics: Arc<super::RoomMetrics>,
    /// Scripts and plugins; [`Catalog::empty`] for rooms without either.
    pub catalog: Arc<Catalog>,
    /// The store behind the scripts' `store` API; `None`: no such store.
    pub kv: Option<Arc<dyn KvStore>>,
    /// The WebRTC media plane; `None`: signaling only.
    pub media: Option<Media>,
    pub clock: Clock,
    /// Who may not come back: checked at every join.
    pub bans: Arc<Bans>,
    /// In a cluster, what makes a name unique across nodes; `None`: this
    /// registry is the only one.
    pub claims: Option<Arc<dyn Claims>>,
}

pub(crate) struct RoomsInner {
    map: Mutex<HashMap<RoomName, RoomHandle>>,
    /// Decisions made where no room exists (see [`Rooms::outside_decisions`]).
    outside: Mutex<DecisionLog>,
    services: RoomServices,
    shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl RoomsInner {
    /// Called by a room task as it ends; a newer room of the same name is left alone.
    pub(crate) fn remove(&self, name: &RoomName, channel_id: ChannelId) {
        let mut map = self.map.lock().expect("room map lock poisoned");
        if map.get(name).is_some_and(|h| h.channel_id() == channel_id) {
            map.remove(name);
            if let Some(claims) = &self.services.claims {
                claims.release(name, channel_id);
            }
        }
    }
}

/// The registry of open rooms; cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<RoomsInner>,
}

impl Rooms {
    pub fn new(services: RoomServices) -> Rooms {
        Rooms {
            inner: Arc::new(RoomsInner {
                map: Mutex::new(HashMap::new()),
                outside: Mutex::new(DecisionLog::new(
                    "s",
                    services.catalog.config().decision_log,
                )),
                services,
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.inner.services.catalog
    }

    pub fn bans(&self) -> &Arc<Bans> {
        &self.inner.services.bans
    }

    /// Creates a room bound to a policy (`policy`, else the catalog's rules).
    /// 417 if the name is taken, 503 at capacity or in shutdown, 400 for an
    /// unknown policy; the token, plugins and the policy's `can_create` may
    /// refuse. `creator` is `None` for the admin API, which no policy checks.
    pub async fn create(
        &self,
        name: RoomName,
        custom_info: String,
        policy: Option<&str>,
        creator: Option<&Identity>,
    ) -> Result<RoomHandle, Error> {
        if let Some(creator) = creator {
            // The token answers first: a name it does not cover is refused
            // before anything is said about the room or the server.
            let access = create_access(&name, &custom_info, creator, "");
            authz::grants(&access, false).map_err(|d| self.refused_outside(&access, d))?;
        }
        if name.as_str().starts_with(ROOM_PREFIX) {
            return Err(Error::Reserved(ROOM_PREFIX));
        }
        self.open(name, custom_info, policy, creator, None, ClaimKind::Create)
            .await
    }

    /// Opens again, on this node, a room whose node died (cluster only):
    /// same name, custom info and policy, a new instance. The dead
    /// instance's call record is ended here, since its node never will.
    /// If another node revived the room first, this answers
    /// [`Error::Taken`].
    pub async fn revive(&self, name: RoomName, meta: ClaimMeta) -> Result<RoomHandle, Error> {
        let kind = ClaimKind::Revive;
        let handle = self
            .open(
                name,
                meta.custom_info,
                meta.policy.as_deref(),
                None,
                None,
                kind,
            )
            .await?;
        self.inner
            .services
            .store
            .apply(crate::store::RecordOp::End {
                channel_id: meta.channel_id,
                ended_at: self.inner.services.clock.unix_ms(),
                reason: "node_lost".into(),
            });
        Ok(handle)
    }

    /// Opens the room of a community media channel. Its policy comes from
    /// the catalog's rules, like any room's; nobody is asked `can_create`.
    pub async fn create_for_channel(
        &self,
        name: RoomName,
        binding: ChannelBinding,
    ) -> Result<RoomHandle, Error> {
        self.open(
            name,
            String::new(),
            None,
            None,
            Some(binding),
            ClaimKind::Channel,
        )
        .await
    }

    async fn open(
        &self,
        name: RoomName,
        custom_info: String,
        policy: Option<&str>,
        creator: Option<&Identity>,
        binding: Option<ChannelBinding>,
        kind: ClaimKind,
    ) -> Result<RoomHandle, Error> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.check_free(&name)?;

        // Build the room's policy state outside the lock, on a script
        // thread: other rooms never wait for it.
        let services = &self.inner.services;
        let catalog = &services.catalog;
        let policy_name = catalog
            .policy_for(name.as_str(), policy)
            .map_err(|(pattern, policy)| Error::RuleBinds { pattern, policy })?;
        let channel_id = ChannelId::generate();
        let identity = OwnedIdentity {
            name: name.as_str().to_owned(),
            channel_id: channel_id.0,
            custom_info: custom_info.clone(),
        };
        let lua = catalog
            .instantiate(&policy_name, identity.clone(), services.kv.clone())
            .await;
        // A script that exists but never loaded is a failure (decided by
        // the failure mode), not a missing policy: the author should look at
        // the log, not at the name they typed.
        let lua = match lua {
            Ok(None) => match catalog.script_error(&policy_name) {
                Some(message) => Err(crate::script::ScriptError {
                    script: policy_name.clone(),
                    hook: "load".into(),
                    kind: crate::script::ErrorKind::Error,
                    message,
                }),
                None if policy.is_some() => return Err(Error::NoSuchPolicy(policy_name)),
                None => Ok(None),
            },
            other => other,
        };
        let mut load_error = None;
        let lua = match lua {
            Ok(lua) => lua,
            Err(e) => {
                // The client learns that, not why: the script and line go to
                // the log and (when the room opens anyway) the admin API.
                tracing::warn!(room = %name, error = %e, "room policy failed to load");
                if catalog.config().failure_mode == FailureMode::Deny {
                    return Err(Error::PolicyBroken(policy_name));
                }
                load_error = Some(e);
                None
            }
        };
        let mut room_policy = RoomPolicy::new(
            catalog.clone(),
            policy_name,
            identity,
            services.kv.clone(),
            lua,
        );
        if let Some(e) = &load_error {
            room_policy.load_failed(e);
        }
        if let Some(shadow) = catalog.shadow_for(name.as_str()) {
            // A shadow that cannot start never stops the room opening.
            if let Err(e) = room_policy.set_shadow(shadow).await {
                tracing::warn!(room = %name, "{e}");
            }
        }
        if catalog.records(name.as_str()) {
            let path = catalog.recording_path(name.as_str(), channel_id.0);
            if let Err(e) = room_policy.start_recording(&path) {
                tracing::warn!(room = %name, "cannot record to {}: {e}", path.display());
            }
        }
        if let Some(creator) = creator {
            let attr_lines = crate::auth::attr_lines(&creator.attrs);
            let access = create_access(&name, &custom_info, creator, &attr_lines);
            // Effects make no sense before the room exists; they are dropped.
            let mut effects = Vec::new();
            let view = Arc::new(RoomView::default());
            let refused = room_policy
                .authorize(&access, None, &view, &mut effects)
                .await
                .err();
            if let Some(denial) = refused {
                // The room never opens: its one decision is kept with the
                // others made outside any room.
                if let Some(record) = room_policy.decisions().last() {
                    self.lock_outside().keep(record.clone());
                }
                return Err(denial.into());
            }
        }

        if let Some(claims) = &services.claims {
            // After every check that could refuse, so a refused create never
            // holds the name; before the room exists, so it never opens
            // unclaimed.
            let meta = ClaimMeta {
                custom_info: custom_info.clone(),
                policy: policy.map(str::to_owned),
                channel_id,
                created_at: services.clock.unix_ms(),
            };
            claims
                .claim(&name, kind, &meta)
                .await
                .map_err(|e| match e {
                    ClaimError::Taken(_) => Error::Taken(name.clone()),
                    ClaimError::Gone => Error::NoSuchRoom(name.clone()),
                    ClaimError::Unavailable(why) => Error::ClusterUnavailable(why),
                })?;
        }
        let mut map = self.inner.map.lock().expect("room map lock poisoned");
        // Checked again: another create may have won while the lock was free.
        if map.contains_key(&name) {
            return Err(Error::Taken(name));
        }
        let room = Room::new(
            name.clone(),
            channel_id,
            custom_info,
            services.settings.clone(),
            services.clock.now(),
        );
        let handle = task::spawn(
            room,
            room_policy,
            services.command_queue,
            RoomContext {
                store: services.store.clone(),
                metrics: services.metrics.clone(),
                shutdown: self.inner.shutdown.clone(),
                registry: self.inner.clone(),
                versions: catalog.subscribe(),
                media: services.media.clone(),
                binding,
                clock: services.clock,
                bans: services.bans.clone(),
            },
        );
        map.insert(name, handle.clone());
        Ok(handle)
    }

    fn lock_outside(&self) -> std::sync::MutexGuard<'_, DecisionLog> {
        self.inner
            .outside
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes down a refusal made before any room was involved (the
    /// token's grants, checked before a room is looked up) and returns it
    /// naming its record.
    pub fn refused_outside(&self, access: &Access<'_>, mut denial: Denial) -> Denial {
        let record = DecisionRecord {
            id: String::new(),
            at: self.inner.services.clock.unix_ms(),
            room: access.room.to_owned(),
            action: access.ask.name().to_owned(),
            actor: access.identity.user.to_string(),
            target: None,
            allowed: false,
            code: denial.status.code(),
            reason: Some(denial.reason.clone()),
            by: denial.by.clone(),
            policy: None,
            plugins: Vec::new(),
            micros: 0,
        };
        denial.decision = Some(self.lock_outside().push(record));
        denial
    }

    /// Decisions made where no room exists: creates refused by the token
    /// or `can_create`, joins the token's room patterns refused.
    pub fn outside_decisions(&self, query: &DecisionQuery) -> Vec<DecisionRecord> {
        self.lock_outside().query(query)
    }

    /// The record `id` names, among the decisions made outside rooms.
    pub fn outside_decision(&self, id: &str) -> Option<DecisionRecord> {
        self.lock_outside().get(id).cloned()
    }

    /// The open room whose instance is `channel_id`.
    pub fn by_channel(&self, channel_id: ChannelId) -> Option<RoomHandle> {
        let map = self.inner.map.lock().expect("room map lock poisoned");
        map.values().find(|h| h.channel_id() == channel_id).cloned()
    }

    fn check_free(&self, name: &RoomName) -> Result<(), Error> {
        let map = self.inner.map.lock().expect("room map lock poisoned");
        if map.contains_key(name) {
            return Err(Error::Taken(name.clone()));
        }
        let limit = self.inner.services.max_rooms;
        if map.len() >= limit {
            return Err(Error::AtCapacity(limit));
        }
        Ok(())
    }

    /// Every open room's handle.
    pub fn handles(&self) -> Vec<RoomHandle> {
        let map = self.inner.map.lock().expect("room map lock poisoned");
        map.values().cloned().collect()
    }

    pub fn get(&self, name: &RoomName) -> Option<RoomHandle> {
        self.inner
            .map
            .lock()
            .expect("room map lock poisoned")
            .get(name)
            .cloned()
    }

    /// Looks a room up, or answers 404.
    pub fn find(&self, name: &RoomName) -> Result<RoomHandle, Error> {
        self.get(name)
            .ok_or_else(|| Error::NoSuchRoom(name.clone()))
    }

    /// Every open room, sorted by name.
    pub fn list(&self) -> Vec<RoomSummary> {
        let map = self.inner.map.lock().expect("room map lock poisoned");
        let mut rooms: Vec<RoomSummary> = map.values().map(|h| h.summary()).collect();
        drop(map);
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        rooms
    }

    pub fn len(&self) -> usize {
        self.inner.map.lock().expect("room map lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every room (members are told `shutdown`, records are finished)
    /// and waits for the room tasks to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

fn create_access<'a>(
    name: &'a RoomName,
    custom_info: &'a str,
    creator: &'a Identity,
    attr_lines: &'a str,
) -> Access<'a> {
    Access {
        room: name.as_str(),
        identity: creator,
        community: None,
        attr_lines,
        ask: Ask::Create { custom_info },
    }
}
