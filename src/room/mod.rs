//! Rooms: the state machine ([`state`]), the task that drives one room
//! ([`actor`]) and the registry of open rooms by name ([`registry`]).
//!
//! A room is owned by exactly one tokio task, its single writer; everything
//! else talks to it through a [`RoomHandle`] (commands in) and a [`Sink`] per
//! member connection (messages out). No lock is held across rooms.

pub mod actor;
pub mod registry;
pub mod state;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use actor::{RoomHandle, RoomSummary};
pub use registry::Rooms;
pub use state::{Actor, CloseReason, JoinOptions, Now, Room, RoomError, RoomSettings};

use crate::ids::ChannelId;

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
