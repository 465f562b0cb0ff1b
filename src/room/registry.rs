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
use super::now;
use super::state::{Room, RoomSettings};
use crate::ids::{ChannelId, RoomName};
use crate::status::{Failure, Status};
use crate::store::StoreHandle;
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
    pub fn new(
        settings: RoomSettings,
        max_rooms: usize,
        command_queue: usize,
        store: StoreHandle,
        metrics: Arc<Metrics>,
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
            }),
        }
    }

    /// Creates a room; 417 if the name is taken, 503 at capacity or in shutdown.
    pub fn create(&self, name: RoomName, custom_info: String) -> Result<RoomHandle, Failure> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Failure::new(
                Status::Unavailable,
                "the server is shutting down",
            ));
        }
        let mut map = self.inner.map.lock().expect("room map lock poisoned");
        if map.contains_key(&name) {
            return Err(Failure::new(
                Status::Conflict,
                format!("a room named `{name}` already exists"),
            ));
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
        let room = Room::new(
            name.clone(),
            ChannelId::generate(),
            custom_info,
            self.inner.settings.clone(),
            now(),
        );
        let handle = actor::spawn(
            room,
            self.inner.command_queue,
            RoomContext {
                store: self.inner.store.clone(),
                metrics: self.inner.metrics.clone(),
                shutdown: self.inner.shutdown.clone(),
                registry: self.inner.clone(),
            },
        );
        map.insert(name, handle.clone());
        Ok(handle)
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
