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

use super::actor::{self, RoomContext, RoomHandle, RoomSummary};
use super::state::{Room, RoomSettings};
use crate::auth::Identity;
use crate::community::channel::ChannelBinding;
use crate::ids::{ChannelId, RoomName};
use crate::media::Media;
use crate::policy::catalog::Catalog;
use crate::policy::lua::{Decision, HookError, HookErrorKind, RoomIdentity, RoomView};
use crate::policy::room::RoomPolicy;
use crate::policy::{Action, Check, FailureMode};
use crate::status::{Failure, Status};
use crate::store::StoreHandle;
use crate::store::kv::KvStore;
use crate::telemetry::Metrics;

pub(crate) struct RoomsInner {
    map: Mutex<HashMap<RoomName, RoomHandle>>,
    settings: RoomSettings,
    max_rooms: usize,
    command_queue: usize,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    catalog: Arc<Catalog>,
    kv: Option<Arc<dyn KvStore>>,
    media: Option<Media>,
    clock: crate::clock::Clock,
}

impl RoomsInner {
    /// Called by a room task as it ends; a newer room of the same name is left alone.
    pub(crate) fn remove(&self, name: &RoomName, channel_id: ChannelId) {
        let mut map = self.map.lock().expect("room map lock poisoned");
        if map.get(name).is_some_and(|h| h.channel_id() == channel_id) {
            map.remove(name);
        }
    }
}

/// The registry of open rooms; cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<RoomsInner>,
}

impl Rooms {
    /// A registry whose rooms run no scripts and no plugins.
    pub fn new(
        settings: RoomSettings,
        max_rooms: usize,
        command_queue: usize,
        store: StoreHandle,
        metrics: Arc<Metrics>,
    ) -> Rooms {
        let catalog = Catalog::empty().expect("an empty catalog needs nothing from outside");
        Self::with_policies(
            settings,
            max_rooms,
            command_queue,
            store,
            metrics,
            catalog,
            None,
        )
    }

    /// A registry whose rooms run the catalog's scripts and plugins.
    pub fn with_policies(
        settings: RoomSettings,
        max_rooms: usize,
        command_queue: usize,
        store: StoreHandle,
        metrics: Arc<Metrics>,
        catalog: Arc<Catalog>,
        kv: Option<Arc<dyn KvStore>>,
    ) -> Rooms {
        Rooms {
            inner: Arc::new(RoomsInner {
                map: Mutex::new(HashMap::new()),
                settings,
                max_rooms,
                command_queue,
                store,
                metrics,
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                catalog,
                kv,
                media: None,
                clock: crate::clock::Clock::new(),
            }),
        }
    }

    /// Gives rooms created from now on a media plane. Call before the
    /// registry is cloned.
    pub fn with_media(mut self, media: Media) -> Rooms {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.media = Some(media),
            None => tracing::error!("Rooms::with_media called on a shared registry; ignored"),
        }
        self
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.inner.catalog
    }

    /// Creates a room bound to a policy (`policy`, else the catalog's rules).
    /// 417 if the name is taken, 503 at capacity or in shutdown, 400 for an
    /// unknown policy; plugins and the policy's `can_create` may refuse.
    /// `creator` is `None` for the admin API, which no policy checks.
    pub fn create(
        &self,
        name: RoomName,
        custom_info: String,
        policy: Option<&str>,
        creator: Option<&Identity>,
    ) -> Result<RoomHandle, Failure> {
        if name
            .as_str()
            .starts_with(crate::community::channel::ROOM_PREFIX)
        {
            return Err(Failure::new(
                Status::Forbidden,
                format!(
                    "room names starting with `{}` belong to community media channels; connect to the channel instead",
                    crate::community::channel::ROOM_PREFIX
                ),
            ));
        }
        self.open(name, custom_info, policy, creator, None)
    }

    /// Opens the room of a community media channel. Its policy comes from
    /// the catalog's rules, like any room's; nobody is asked `can_create`.
    pub fn create_for_channel(
        &self,
        name: RoomName,
        binding: ChannelBinding,
    ) -> Result<RoomHandle, Failure> {
        self.open(name, String::new(), None, None, Some(binding))
    }

    fn open(
        &self,
        name: RoomName,
        custom_info: String,
        policy: Option<&str>,
        creator: Option<&Identity>,
        binding: Option<ChannelBinding>,
    ) -> Result<RoomHandle, Failure> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Failure::new(
                Status::Unavailable,
                "the server is shutting down",
            ));
        }
        self.check_free(&name)?;

        // Build the room's policy state outside the lock: running a script
        // takes microseconds, and other rooms should not wait for it.
        let catalog = &self.inner.catalog;
        let policy_name = catalog
            .policy_for(name.as_str(), policy)
            .map_err(|why| Failure::new(Status::Forbidden, why))?;
        let channel_id = ChannelId::generate();
        let lua = catalog.instantiate(
            &policy_name,
            RoomIdentity {
                name: name.as_str(),
                channel_id: channel_id.0,
                custom_info: &custom_info,
            },
            self.inner.kv.clone(),
        );
        // A script that exists but never loaded is a failure (decided by
        // the failure mode), not a missing policy: the author should look at
        // the log, not at the name they typed.
        let lua = match lua {
            Ok(None) => match catalog.script_error(&policy_name) {
                Some(message) => Err(HookError {
                    script: policy_name.clone(),
                    hook: "load".into(),
                    kind: HookErrorKind::Error,
                    message,
                }),
                None if policy.is_some() => {
                    return Err(Failure::new(
                        Status::BadRequest,
                        format!(
                            "no room policy named `{policy_name}` (no {}.lua in the scripts directory)",
                            policy_name
                        ),
                    ));
                }
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
                    return Err(Failure::new(
                        Status::Internal,
                        format!(
                            "the room policy `{policy_name}` failed to load; \
                             the server log and GET /api/policies say why"
                        ),
                    ));
                }
                load_error = Some(e);
                None
            }
        };
        let mut room_policy = RoomPolicy::new(catalog.clone(), policy_name, lua);
        if let Some(e) = &load_error {
            room_policy.load_failed(e);
        }
        if let Some(creator) = creator {
            let attrs = crate::auth::attr_lines(&creator.attrs);
            let mut check = Check::new(Action::CreateRoom, name.as_str(), creator.user.as_str());
            check.admin = creator.grants.admin;
            check.attrs = &attrs;
            room_policy.check_plugins(&check)?;
            #[derive(serde::Serialize)]
            struct CreateRequest<'a> {
                user: &'a str,
                room: &'a str,
                custom_info: &'a str,
                attrs: &'a serde_json::Value,
                admin: bool,
            }
            let request = CreateRequest {
                user: creator.user.as_str(),
                room: name.as_str(),
                custom_info: &custom_info,
                attrs: &creator.attrs,
                admin: creator.grants.admin,
            };
            // Effects make no sense before the room exists; they are dropped.
            let mut effects = Vec::new();
            let view = Arc::new(RoomView::default());
            if let Decision::Deny(failure) =
                room_policy.decide("can_create", &view, &request, &mut effects)?
            {
                return Err(failure);
            }
        }

        let mut map = self.inner.map.lock().expect("room map lock poisoned");
        // Checked again: another create may have won while the lock was free.
        if map.contains_key(&name) {
            return Err(taken(&name));
        }
        let room = Room::new(
            name.clone(),
            channel_id,
            custom_info,
            self.inner.settings.clone(),
            self.inner.clock.now(),
        );
        let handle = actor::spawn(
            room,
            room_policy,
            self.inner.command_queue,
            RoomContext {
                store: self.inner.store.clone(),
                metrics: self.inner.metrics.clone(),
                shutdown: self.inner.shutdown.clone(),
                registry: self.inner.clone(),
                versions: self.inner.catalog.subscribe(),
                media: self.inner.media.clone(),
                binding,
                clock: self.inner.clock,
            },
        );
        map.insert(name, handle.clone());
        Ok(handle)
    }

    fn check_free(&self, name: &RoomName) -> Result<(), Failure> {
        let map = self.inner.map.lock().expect("room map lock poisoned");
        if map.contains_key(name) {
            return Err(taken(name));
        }
        if map.len() >= self.inner.max_rooms {
            return Err(Failure::new(
                Status::Unavailable,
                format!(
                    "the server holds its limit of {} rooms",
                    self.inner.max_rooms
                ),
            ));
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
    pub fn find(&self, name: &RoomName) -> Result<RoomHandle, Failure> {
        self.get(name)
            .ok_or_else(|| Failure::new(Status::NotFound, format!("no room named `{name}`")))
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

fn taken(name: &RoomName) -> Failure {
    Failure::new(
        Status::Conflict,
        format!("a room named `{name}` already exists"),
    )
}
