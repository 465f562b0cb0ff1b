//! Rooms: the state machine ([`state`]), the task that drives one room
//! ([`task`]), the registry of open rooms by name ([`registry`]) and what
//! they answer when they cannot ([`error`]).
//!
//! A room is owned by exactly one tokio task, its single writer; everything
//! else talks to it through a [`RoomHandle`] (commands in) and a [`Sink`] per
//! member connection (messages out). No lock is held across rooms.

pub mod claims;
pub mod error;
pub mod registry;
pub mod state;
pub mod task;
mod volume;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use registry::{RoomServices, Rooms};
pub use state::{CloseReason, Joiner, Now, Operator, Room, RoomError, RoomSettings};
pub use task::{Act, By, RecordingOp, RoomHandle, RoomInfo, RoomSummary, ShadowOp};

use crate::ids::ChannelId;
use crate::model::LeaveReason;
use crate::telemetry::ReasonLabel;

/// A message from a room to one connection, already encoded once for all
/// recipients.
#[derive(Clone, Debug)]
pub enum Outbound {
    Text(Arc<str>),
    /// The connection's membership in `channel_id` is over; `text` says why.
    Removed {
        channel_id: ChannelId,
        text: Arc<str>,
    },
}

/// Where a room delivers messages for one connection.
///
/// Bounded: a room never waits for a client. A connection that lets its
/// queue fill is cancelled (the connection task closes the socket), and the
/// room treats it as lost.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Outbound>,
    kill: CancellationToken,
}

impl Sink {
    pub fn new(tx: mpsc::Sender<Outbound>, kill: CancellationToken) -> Self {
        Sink { tx, kill }
    }

    /// Queues without waiting. Returns false if the connection is gone or
    /// too slow (and is now being closed).
    pub fn push(&self, msg: Outbound) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kill.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The rooms' counters: plain atomics the room tasks update directly.
#[derive(Debug, Default)]
pub struct RoomMetrics {
    pub rooms: Gauge,
    pub members: Gauge,
    pub joins: Counter,
    pub leaves: Family<ReasonLabel, Counter>,
    pub rooms_closed: Family<ReasonLabel, Counter>,
}

impl RoomMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("rooms", "Open rooms", self.rooms.clone());
        registry.register(
            "members",
            "Members in rooms, including those in their reconnect grace window",
            self.members.clone(),
        );
        registry.register("joins", "Members that joined a room", self.joins.clone());
        registry.register(
            "leaves",
            "Members that left a room, by reason",
            self.leaves.clone(),
        );
        registry.register(
            "rooms_closed",
            "Rooms closed, by reason",
            self.rooms_closed.clone(),
        );
    }

    pub(crate) fn member_count(&self, delta: isize, reason: Option<LeaveReason>) {
        if delta > 0 {
            self.joins.inc();
            self.members.inc();
        } else {
            self.members.dec();
        }
        if let Some(reason) = reason {
            self.leaves
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str(),
                })
                .inc();
        }
    }

    pub(crate) fn room_closed(&self, reason: CloseReason) {
        self.rooms.dec();
        self.rooms_closed
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
}
