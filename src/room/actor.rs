//! The task that owns one [`Room`]: commands in through a bounded channel,
//! the state machine's outputs out to member sinks, the store and metrics.
//!
//! The loop is the only place a room's state changes. It waits on three
//! things: the next command, the room's next deadline, and server shutdown.
//! Replies to a connection's request go back on a oneshot *after* the
//! outputs of that request were queued to sinks, which is what lets the
//! connection order events and responses (see `signal::connection`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::registry::RoomsInner;
use super::state::{Actor, CloseReason, Output, Recipients, Room};
use super::{Outbound, Sink, now};
use crate::auth::Identity;
use crate::ids::{ChannelId, ConnId, RoomName, UserId};
use crate::signal::protocol::{JoinOk, MediaKind, MemberInfo, Mode, Role};
use crate::status::{Failure, Status};
use crate::store::StoreHandle;
use crate::telemetry::{Metrics, ReasonLabel};

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// How long a caller waits for a room to answer before giving up with 101.
pub const ROOM_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) enum Command {
    Join {
        conn: ConnId,
        identity: Arc<Identity>,
        mode: Mode,
        role: Option<Role>,
        sink: Sink,
        reply: Reply<JoinOk>,
    },
    Leave {
        conn: ConnId,
        reply: Reply<()>,
    },
    Disconnected {
        conn: ConnId,
    },
    SetRole {
        actor: Actor,
        target: Option<UserId>,
        role: Role,
        reply: Reply<()>,
    },
    Mute {
        actor: Actor,
        target: Option<UserId>,
        kind: MediaKind,
        muted: bool,
        reply: Reply<()>,
    },
    Kick {
        actor: Actor,
        target: UserId,
        reply: Reply<()>,
    },
    Close {
        reason: CloseReason,
        reply: Reply<()>,
    },
    Members {
        reply: Reply<Vec<MemberInfo>>,
    },
}

/// A room as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RoomSummary {
    pub room: RoomName,
    pub channel_id: ChannelId,
    pub custom_info: String,
    pub created_at: i64,
    pub members: usize,
}

/// A cheap, cloneable way to talk to one room.
#[derive(Clone, Debug)]
pub struct RoomHandle {
    name: RoomName,
    channel_id: ChannelId,
    custom_info: Arc<str>,
    created_at: i64,
    members: Arc<AtomicUsize>,
    tx: mpsc::Sender<Command>,
}

impl RoomHandle {
    pub fn name(&self) -> &RoomName {
        &self.name
    }

    pub fn channel_id(&self) -> ChannelId {
        self.channel_id
    }

    pub fn summary(&self) -> RoomSummary {
        RoomSummary {
            room: self.name.clone(),
            channel_id: self.channel_id,
            custom_info: self.custom_info.to_string(),
            created_at: self.created_at,
            members: self.members.load(Ordering::Relaxed),
        }
    }

    fn closed(&self) -> Failure {
        Failure::new(Status::NotFound, format!("room `{}` is closed", self.name))
    }

    /// Sends a command and waits for its answer. A room that does not answer
    /// within [`ROOM_ANSWER_TIMEOUT`] yields 101 rather than hanging the
    /// caller: one stuck room must not stall the connections that talk to it.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Failure> {
        let (reply, rx) = oneshot::channel();
        let exchange = async {
            self.tx.send(make(reply)).await.map_err(|_| self.closed())?;
            rx.await.map_err(|_| self.closed())?
        };
        tokio::time::timeout(ROOM_ANSWER_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::new(
                    Status::Timeout,
                    format!("room `{}` did not answer in time", self.name),
                ))
            })
    }

    pub async fn join(
        &self,
        conn: ConnId,
        identity: Arc<Identity>,
        mode: Mode,
        role: Option<Role>,
        sink: Sink,
    ) -> Result<JoinOk, Failure> {
        self.ask(|reply| Command::Join {
            conn,
            identity,
            mode,
            role,
            sink,
            reply,
        })
        .await
    }

    pub async fn leave(&self, conn: ConnId) -> Result<(), Failure> {
        self.ask(|reply| Command::Leave { conn, reply }).await
    }

    /// Tells the room a member's connection is gone (no reply: the connection
    /// is already closing). Waits for queue space rather than lose the notice.
    pub async fn disconnected(&self, conn: ConnId) {
        let _ = self.tx.send(Command::Disconnected { conn }).await;
    }

    pub async fn set_role(
        &self,
        actor: Actor,
        target: Option<UserId>,
        role: Role,
    ) -> Result<(), Failure> {
        self.ask(|reply| Command::SetRole {
            actor,
            target,
            role,
            reply,
        })
        .await
    }

    pub async fn mute(
        &self,
        actor: Actor,
        target: Option<UserId>,
        kind: MediaKind,
        muted: bool,
    ) -> Result<(), Failure> {
        self.ask(|reply| Command::Mute {
            actor,
            target,
            kind,
            muted,
            reply,
        })
        .await
    }

    pub async fn kick(&self, actor: Actor, target: UserId) -> Result<(), Failure> {
        self.ask(|reply| Command::Kick {
            actor,
            target,
            reply,
        })
        .await
    }

    pub async fn close(&self, reason: CloseReason) -> Result<(), Failure> {
        self.ask(|reply| Command::Close { reason, reply }).await
    }

    pub async fn members(&self) -> Result<Vec<MemberInfo>, Failure> {
        self.ask(|reply| Command::Members { reply }).await
    }
}

/// What a room task needs from the rest of the server.
pub(crate) struct RoomContext {
    pub store: StoreHandle,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub registry: Arc<RoomsInner>,
}

/// Starts the task for `room` and returns its handle.
pub(crate) fn spawn(room: Room, queue: usize, ctx: RoomContext) -> RoomHandle {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let members = Arc::new(AtomicUsize::new(0));
    let handle = RoomHandle {
        name: room.name().clone(),
        channel_id: room.channel_id(),
        custom_info: room.custom_info().into(),
        created_at: room.created_at_ms(),
        members: members.clone(),
        tx,
    };
    let span = tracing::info_span!("room", room = %room.name(), channel_id = %room.channel_id());
    let tracker = ctx.registry.tracker.clone();
    let driver = RoomDriver {
        room,
        sinks: HashMap::new(),
        members,
        ctx,
    };
    tracker.spawn(driver.run(rx).instrument(span));
    handle
}

struct RoomDriver {
    room: Room,
    sinks: HashMap<ConnId, Sink>,
    members: Arc<AtomicUsize>,
    ctx: RoomContext,
}

impl RoomDriver {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        tracing::debug!("room open");
        self.ctx.metrics.rooms.inc();
        let shutdown = self.ctx.shutdown.clone();
        while !self.room.is_closed() {
            let deadline = self.room.poll_timeout();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    // Every handle is gone, which only happens once the
                    // registry dropped this room: nobody can reach it.
                    None => self.room.close(now(), CloseReason::ClosedByAdmin),
                },
                _ = sleep_until(deadline) => self.room.handle_timeout(now()),
                _ = shutdown.cancelled() => self.room.close(now(), CloseReason::Shutdown),
            }
            self.drain();
        }
        // Commands still queued get their reply dropped, which the handle
        // reports as "room closed".
        rx.close();
        tracing::debug!("room closed");
    }

    fn handle(&mut self, cmd: Command) {
        let now = now();
        match cmd {
            Command::Join {
                conn,
                identity,
                mode,
                role,
                sink,
                reply,
            } => {
                let result = self.room.join(now, conn, &identity, mode, role);
                if result.is_ok() {
                    self.sinks.insert(conn, sink);
                }
                self.drain();
                let _ = reply.send(result.map_err(Failure::from));
            }
            Command::Leave { conn, reply } => {
                let result = self.room.leave(now, conn);
                if result.is_ok() {
                    self.sinks.remove(&conn);
                }
                self.drain();
                let _ = reply.send(result.map_err(Failure::from));
            }
            Command::Disconnected { conn } => {
                self.room.disconnected(now, conn);
                self.sinks.remove(&conn);
            }
            Command::SetRole {
                actor,
                target,
                role,
                reply,
            } => {
                let result = self.room.set_role(&actor, target.as_ref(), role);
                self.drain();
                let _ = reply.send(result.map_err(Failure::from));
            }
            Command::Mute {
                actor,
                target,
                kind,
                muted,
                reply,
            } => {
                let result = self.room.set_mute(&actor, target.as_ref(), kind, muted);
                self.drain();
                let _ = reply.send(result.map_err(Failure::from));
            }
            Command::Kick {
                actor,
                target,
                reply,
            } => {
                let result = self.room.kick(now, &actor, &target);
                self.drain();
                let _ = reply.send(result.map_err(Failure::from));
            }
            Command::Close { reason, reply } => {
                self.room.close(now, reason);
                self.drain();
                let _ = reply.send(Ok(()));
            }
            Command::Members { reply } => {
                let _ = reply.send(Ok(self.room.members()));
            }
        }
    }

    /// Carries out everything the state machine asked for.
    fn drain(&mut self) {
        while let Some(output) = self.room.poll_output() {
            match output {
                Output::Broadcast { to, msg } => {
                    let text: Arc<str> = msg.to_json().into();
                    for conn in self.room.connections() {
                        if to == Recipients::AllExcept(conn) {
                            continue;
                        }
                        if let Some(sink) = self.sinks.get(&conn) {
                            sink.push(Outbound::Text(text.clone()));
                        }
                    }
                }
                Output::Remove { conn, msg } => {
                    if let Some(sink) = self.sinks.remove(&conn) {
                        sink.push(Outbound::Removed {
                            channel_id: self.room.channel_id(),
                            text: msg.to_json().into(),
                        });
                    }
                }
                Output::Record(op) => self.ctx.store.apply(op),
                Output::MemberCount(delta, reason) => {
                    let metrics = &self.ctx.metrics;
                    if delta > 0 {
                        metrics.joins.inc();
                        metrics.members.inc();
                        self.members.fetch_add(1, Ordering::Relaxed);
                    } else {
                        metrics.members.dec();
                        self.members.fetch_sub(1, Ordering::Relaxed);
                    }
                    if let Some(reason) = reason {
                        tracing::debug!(reason = reason.as_str(), "member left");
                        metrics
                            .leaves
                            .get_or_create(&ReasonLabel {
                                reason: reason.as_str(),
                            })
                            .inc();
                    }
                }
                Output::Closed(reason) => {
                    tracing::info!(reason = reason.as_str(), "room closing");
                    // Free the name before answering the request that closed
                    // the room, so a client may create it again at once.
                    self.ctx
                        .registry
                        .remove(self.room.name(), self.room.channel_id());
                    self.ctx.metrics.rooms.dec();
                    self.ctx
                        .metrics
                        .rooms_closed
                        .get_or_create(&ReasonLabel {
                            reason: reason.as_str(),
                        })
                        .inc();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
