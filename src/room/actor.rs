//! The task that owns one [`Room`]: commands in through a bounded channel,
//! the state machine's outputs out to member sinks, the store, metrics and
//! the room's policy.
//!
//! The loop is the only place a room's state changes. It waits on: the next
//! command, the next deadline (the room's or a policy timer's), a new policy
//! version, and server shutdown. Every member request goes:
//!
//! 1. permission plugins (any deny wins),
//! 2. the Lua decide hook (`can_join`, `can_mute`, ...),
//! 3. the state machine, which applies the room's own rules,
//!
//! then the outputs are carried out, react hooks run on what happened
//! (`on_joined`, `on_left`, ...), and the actions scripts queued are applied
//! as the policy (bounded rounds, so scripts cannot ping-pong forever).
//! Replies go back on a oneshot *after* the outputs of that request were
//! queued to sinks, which is what lets a connection order events and
//! responses (see `signal::connection`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::registry::RoomsInner;
use super::state::{Actor, CloseReason, JoinOptions, Output, Recipients, Room};
use super::{Outbound, Sink};
use crate::auth::Identity;
use crate::community::channel::{self as media_channel, ChannelBinding, Connected, Revocation};
use crate::community::hub::{Change, MemberContext};
use crate::ids::{ChannelId, ConnId, RoomName, UserId};
use crate::media::room::MediaCommand;
use crate::media::{Gate, Media, RoomMedia};
use crate::model::{ChannelEndReason, LeaveReason, MediaKind, MemberInfo, Mode, Role, VolumeLevel};
use crate::policy::lua::{Decision, Effect, RoomView};
use crate::policy::room::{PolicyStatus, RoomPolicy};
use crate::policy::{Action, Check};
use crate::protocol::{JoinOk, ServerMessage};
use crate::status::{Failure, Status};
use crate::store::StoreHandle;
use crate::telemetry::{Metrics, ReasonLabel};

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// How long a caller waits for a room to answer before giving up with 101.
pub const ROOM_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Rounds of react-hook effects applied after one event; a script whose
/// effects keep causing effects stops here.
const MAX_EFFECT_ROUNDS: usize = 8;

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
    MuteAll {
        actor: Actor,
        kind: MediaKind,
        muted: bool,
        reply: Reply<()>,
    },
    Kick {
        actor: Actor,
        target: UserId,
        reply: Reply<()>,
    },
    ShareScreen {
        actor: Actor,
        target: Option<UserId>,
        on: bool,
        reply: Reply<()>,
    },
    Data {
        actor: Actor,
        to: Option<UserId>,
        payload: Value,
        reply: Reply<()>,
    },
    Speaking {
        user: UserId,
        level: u8,
    },
    MediaStart {
        conn: ConnId,
        reply: Reply<()>,
    },
    MediaAnswer {
        conn: ConnId,
        sdp: String,
        reply: Reply<()>,
    },
    IceCandidate {
        conn: ConnId,
        candidate: rtc::peer_connection::transport::RTCIceCandidateInit,
        reply: Reply<()>,
    },
    /// The media plane lost this connection's peer (ICE failure or silence).
    MediaLost {
        conn: ConnId,
    },
    /// Speaking levels from the media plane, for the room and its policy.
    Volume {
        levels: Vec<VolumeLevel>,
    },
    Close {
        reason: CloseReason,
        reply: Reply<()>,
    },
    Info {
        reply: Reply<RoomInfo>,
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

/// A room in detail: members and policy.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RoomInfo {
    #[serde(flatten)]
    pub summary: RoomSummary,
    pub member_list: Vec<MemberInfo>,
    pub metadata: serde_json::Map<String, Value>,
    pub policy: PolicyStatus,
    /// Bytes held by the room's Lua state.
    pub lua_memory: usize,
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

    pub async fn mute_all(
        &self,
        actor: Actor,
        kind: MediaKind,
        muted: bool,
    ) -> Result<(), Failure> {
        self.ask(|reply| Command::MuteAll {
            actor,
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

    pub async fn share_screen(
        &self,
        actor: Actor,
        target: Option<UserId>,
        on: bool,
    ) -> Result<(), Failure> {
        self.ask(|reply| Command::ShareScreen {
            actor,
            target,
            on,
            reply,
        })
        .await
    }

    pub async fn send_data(
        &self,
        actor: Actor,
        to: Option<UserId>,
        payload: Value,
    ) -> Result<(), Failure> {
        self.ask(|reply| Command::Data {
            actor,
            to,
            payload,
            reply,
        })
        .await
    }

    /// Reports a member's speaking level (0-127, RFC 6464 style: lower is
    /// louder; larger values are clamped) to the room's `on_speaking` hook.
    /// Never waits.
    pub fn speaking(&self, user: UserId, level: u8) {
        let level = level.min(127);
        let _ = self.tx.try_send(Command::Speaking { user, level });
    }

    pub async fn close(&self, reason: CloseReason) -> Result<(), Failure> {
        self.ask(|reply| Command::Close { reason, reply }).await
    }

    /// Starts WebRTC for the member on `conn`; its `media_offer` follows as an event.
    pub async fn media_start(&self, conn: ConnId) -> Result<(), Failure> {
        self.ask(|reply| Command::MediaStart { conn, reply }).await
    }

    pub async fn media_answer(&self, conn: ConnId, sdp: String) -> Result<(), Failure> {
        self.ask(|reply| Command::MediaAnswer { conn, sdp, reply })
            .await
    }

    pub async fn ice_candidate(
        &self,
        conn: ConnId,
        candidate: rtc::peer_connection::transport::RTCIceCandidateInit,
    ) -> Result<(), Failure> {
        self.ask(|reply| Command::IceCandidate {
            conn,
            candidate,
            reply,
        })
        .await
    }

    pub async fn members(&self) -> Result<Vec<MemberInfo>, Failure> {
        Ok(self.info().await?.member_list)
    }

    pub async fn info(&self) -> Result<RoomInfo, Failure> {
        self.ask(|reply| Command::Info { reply }).await
    }
}

/// What a room task needs from the rest of the server.
pub(crate) struct RoomContext {
    pub store: StoreHandle,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub registry: Arc<RoomsInner>,
    pub versions: watch::Receiver<u64>,
    pub media: Option<Media>,
    /// Set for the room of a community media channel: the built-in check
    /// step then asks the community (see `community::channel`).
    pub binding: Option<ChannelBinding>,
    pub clock: crate::clock::Clock,
}

/// Starts the task for `room` and returns its handle.
pub(crate) fn spawn(room: Room, policy: RoomPolicy, queue: usize, ctx: RoomContext) -> RoomHandle {
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
    // A root span: the room outlives the request that created it, and its
    // log lines must not carry the creator's connection.
    let span = tracing::info_span!(parent: None, "room", room = %room.name(), channel_id = %room.channel_id());
    let tracker = ctx.registry.tracker.clone();
    let driver = RoomDriver {
        room,
        policy,
        view: None,
        view_generation: 0,
        sinks: HashMap::new(),
        members,
        ctx,
        media: None,
        gates: Vec::new(),
        weak: handle.tx.downgrade(),
    };
    tracker.spawn(driver.run(rx).instrument(span));
    handle
}

/// Something that happened, for the react hooks.
enum Reaction {
    Joined(UserId),
    Left(UserId, LeaveReason),
    Mute(Value),
    Role(Value),
    ScreenShare(Value),
    Closing(CloseReason),
}

struct RoomDriver {
    room: Room,
    policy: RoomPolicy,
    /// The room as scripts see it; rebuilt lazily after any change.
    view: Option<Arc<RoomView>>,
    /// Numbers the views, so Lua states can cache what they built from one.
    view_generation: u64,
    sinks: HashMap<ConnId, Sink>,
    members: Arc<AtomicUsize>,
    ctx: RoomContext,
    /// The room's media task, from the first `media_start` on.
    media: Option<RoomMedia>,
    /// The last gates sent to the media task.
    gates: Vec<Gate>,
    /// For the media task to reach this room without keeping it alive.
    weak: mpsc::WeakSender<Command>,
}

/// The request a decide hook receives, as a Lua table.
#[derive(Serialize)]
struct HookRequest<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<MediaKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    muted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a Value>,
    admin: bool,
    /// In a media channel's room: the member's permissions and roles there.
    #[serde(skip_serializing_if = "Option::is_none")]
    community: Option<&'a MemberContext>,
}

impl RoomDriver {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        tracing::debug!(policy = ?self.policy.status().version, "room open");
        self.ctx.metrics.rooms.inc();
        let shutdown = self.ctx.shutdown.clone();
        let mut versions = self.ctx.versions.clone();
        let mut changes = self.ctx.binding.as_ref().map(|b| b.hub.subscribe());
        while !self.room.is_closed() {
            let deadline = [self.room.poll_timeout(), self.policy.next_timer()]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    // Every handle is gone, which only happens once the
                    // registry dropped this room: nobody can reach it.
                    None => self.room.close(self.ctx.clock.now(), CloseReason::ClosedByAdmin),
                },
                _ = sleep_until(deadline) => self.on_deadline(),
                Ok(()) = versions.changed() => self.on_new_versions(),
                Some(change) = community_change(&mut changes) => self.on_community_change(change),
                _ = shutdown.cancelled() => self.room.close(self.ctx.clock.now(), CloseReason::Shutdown),
            }
            let effects = self.drain();
            self.apply(effects);
            self.sync_media();
        }
        // Commands still queued get their reply dropped, which the handle
        // reports as "room closed".
        rx.close();
        tracing::debug!("room closed");
    }

    fn on_deadline(&mut self) {
        let now = self.ctx.clock.now();
        if self.room.poll_timeout().is_some_and(|t| t <= now.at) {
            self.room.handle_timeout(now);
        }
        for name in self.policy.due_timers(now.at) {
            let mut effects = Vec::new();
            let view = self.view();
            self.policy.react("on_timer", &view, &[&name], &mut effects);
            self.apply(effects);
        }
    }

    fn on_new_versions(&mut self) {
        let view = self.view();
        if let Some(previous) = self.policy.sync(&view) {
            tracing::info!(previous, now = ?self.policy.status().version, "room policy reloaded");
            let mut effects = Vec::new();
            let view = self.view();
            self.policy
                .react("on_reload", &view, &[&previous], &mut effects);
            self.apply(effects);
        }
    }

    /// Applies at once what a change to the community takes from connected
    /// members, as done by whoever made the change. A channel that is gone
    /// closes its room.
    fn on_community_change(&mut self, change: Change) {
        let Some(binding) = &self.ctx.binding else {
            return;
        };
        if change.server != Some(binding.server) {
            return;
        }
        let now = self.ctx.clock.now();
        if binding.settings().is_none() {
            tracing::info!("community media channel removed; closing its room");
            self.room.close(now, CloseReason::ClosedByAdmin);
            return;
        }
        let connected: Vec<Connected> = self
            .room
            .members_with_grants()
            .into_iter()
            .map(|(info, admin)| Connected {
                user: info.user,
                admin,
                audio_on: !info.audio_muted,
                video_on: !info.video_muted,
                sharing: info.screen_sharing,
            })
            .collect();
        let actor = Actor::Admin(UserId(change.by));
        for revocation in binding.revocations(&connected) {
            tracing::info!(?revocation, by = ?actor, "community permission revoked");
            let result = match &revocation {
                Revocation::Remove(user) => {
                    self.room.remove(now, user, LeaveReason::PermissionRevoked)
                }
                Revocation::Mute(user, kind) => self.room.set_mute(&actor, Some(user), *kind, true),
                Revocation::StopShare(user) => self.room.share_screen(&actor, Some(user), false),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "revocation not applied");
            }
        }
    }

    /// The acting member's permissions and roles, in a media channel's room.
    fn community_of(&self, user: &UserId) -> Option<MemberContext> {
        self.ctx.binding.as_ref().map(|b| b.member(user))
    }

    /// Tells a connection its time in the media channel is over.
    fn channel_ended(&self, sink: Option<&Sink>, reason: ChannelEndReason) {
        let (Some(binding), Some(sink)) = (&self.ctx.binding, sink) else {
            return;
        };
        let msg = ServerMessage::ChannelEnded {
            server: binding.server,
            channel: binding.channel,
            room: self.room.name().clone(),
            channel_id: self.room.channel_id(),
            reason,
        };
        sink.push(Outbound::Text(msg.to_json().into()));
    }

    fn view(&mut self) -> Arc<RoomView> {
        if self.view.is_none() {
            self.view_generation += 1;
            let mut view = self.room.view();
            view.generation = self.view_generation;
            self.view = Some(Arc::new(view));
        }
        self.view.clone().expect("set just above")
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join {
                conn,
                identity,
                mode,
                role,
                sink,
                reply,
            } => {
                let mut effects = Vec::new();
                let result = self
                    .decide_join(&identity, mode, role, &mut effects)
                    .and_then(|(role, options)| {
                        self.room
                            .join(self.ctx.clock.now(), conn, &identity, mode, role, options)
                            .map_err(Failure::from)
                    });
                if result.is_ok() {
                    self.sinks.insert(conn, sink);
                }
                let reacted = self.settle(effects, result.is_ok());
                // The response describes the room after everything the
                // joiner has already been told (the policy's reactions
                // included), not the moment before.
                let result = result.map(|mut ok| {
                    if !reacted {
                        return ok;
                    }
                    ok.members = self.room.members();
                    ok.metadata = self.room.metadata().clone();
                    if let Some(me) = ok.members.iter().find(|m| m.user == identity.user) {
                        ok.role = me.role;
                    }
                    ok
                });
                let _ = reply.send(result);
            }
            Command::Leave { conn, reply } => {
                let result = self.room.leave(self.ctx.clock.now(), conn);
                if result.is_ok() {
                    let sink = self.sinks.remove(&conn);
                    self.channel_ended(sink.as_ref(), ChannelEndReason::LeftBySelf);
                }
                self.finish(Vec::new(), reply, result.map_err(Failure::from));
            }
            Command::Disconnected { conn } => {
                self.room.disconnected(self.ctx.clock.now(), conn);
                self.sinks.remove(&conn);
            }
            Command::SetRole {
                actor,
                target,
                role,
                reply,
            } => {
                let fields = HookFields {
                    role: Some(role),
                    ..HookFields::default()
                };
                let guard = Guard::new(Action::SetRole, "can_set_role", fields);
                self.guarded(actor, target.as_ref(), guard, reply, |room, actor| {
                    room.set_role(actor, target.as_ref(), role)
                });
            }
            Command::Mute {
                actor,
                target,
                kind,
                muted,
                reply,
            } => {
                let fields = HookFields {
                    kind: Some(kind),
                    muted: Some(muted),
                    ..HookFields::default()
                };
                let guard = Guard::new(Action::MuteOther, "can_mute", fields);
                self.guarded(actor, target.as_ref(), guard, reply, |room, actor| {
                    room.set_mute(actor, target.as_ref(), kind, muted)
                });
            }
            Command::MuteAll {
                actor,
                kind,
                muted,
                reply,
            } => {
                let fields = HookFields {
                    kind: Some(kind),
                    muted: Some(muted),
                    on_others: true,
                    ..HookFields::default()
                };
                let guard = Guard::new(Action::MuteEveryone, "can_mute_all", fields);
                self.guarded(actor, None, guard, reply, |room, actor| {
                    room.mute_all(actor, kind, muted)
                });
            }
            Command::Kick {
                actor,
                target,
                reply,
            } => {
                let fields = HookFields {
                    on_others: true,
                    ..HookFields::default()
                };
                let guard = Guard::new(Action::Kick, "can_kick", fields);
                let now = self.ctx.clock.now();
                self.guarded(actor, Some(&target), guard, reply, |room, actor| {
                    room.kick(now, actor, &target)
                });
            }
            Command::ShareScreen {
                actor,
                target,
                on,
                reply,
            } => {
                let fields = HookFields {
                    on: Some(on),
                    ..HookFields::default()
                };
                // Starting a share for someone else is refused before any
                // plugin could mistake it for stopping theirs.
                if on
                    && let (Actor::Member(conn), Some(target)) = (&actor, &target)
                    && self.room.user_of(*conn) != Some(target)
                {
                    let _ = reply.send(Err(super::RoomError::CannotStartForOthers.into()));
                    return;
                }
                let guard = Guard::new(Action::StopScreenShare, "can_share_screen", fields);
                self.guarded(actor, target.as_ref(), guard, reply, |room, actor| {
                    room.share_screen(actor, target.as_ref(), on)
                });
            }
            Command::Data {
                actor,
                to,
                payload,
                reply,
            } => {
                let mut effects = Vec::new();
                let result = self.decide_data(actor, to.as_ref(), payload, &mut effects);
                self.finish(effects, reply, result);
            }
            Command::Speaking { user, level } => {
                if self.room.is_member(&user) && self.policy.wants("on_speaking") {
                    let mut effects = Vec::new();
                    let view = self.view();
                    let event = json!({ "user": user, "level": level });
                    self.policy
                        .react("on_speaking", &view, &[&event], &mut effects);
                    self.apply(effects);
                }
            }
            Command::Close { reason, reply } => {
                self.room.close(self.ctx.clock.now(), reason);
                self.finish(Vec::new(), reply, Ok(()));
            }
            Command::MediaStart { conn, reply } => self.media_start(conn, reply),
            Command::MediaAnswer { conn, sdp, reply } => match self.media_for(conn) {
                Ok(media) => media.send(MediaCommand::Answer { conn, sdp, reply }),
                Err(failure) => {
                    let _ = reply.send(Err(failure));
                }
            },
            Command::IceCandidate {
                conn,
                candidate,
                reply,
            } => match self.media_for(conn) {
                Ok(media) => media.send(MediaCommand::Candidate {
                    conn,
                    candidate,
                    reply,
                }),
                Err(failure) => {
                    let _ = reply.send(Err(failure));
                }
            },
            Command::MediaLost { conn } => {
                // Already gone (left, replaced) is fine: nothing to end.
                let _ = self.room.media_lost(self.ctx.clock.now(), conn);
            }
            Command::Volume { levels } => self.volume(levels),
            Command::Info { reply } => {
                let view = self.view();
                let info = RoomInfo {
                    summary: RoomSummary {
                        room: self.room.name().clone(),
                        channel_id: self.room.channel_id(),
                        custom_info: self.room.custom_info().to_owned(),
                        created_at: self.room.created_at_ms(),
                        members: self.room.member_count(),
                    },
                    member_list: self.room.members(),
                    metadata: view.metadata.clone(),
                    policy: self.policy.status().clone(),
                    lua_memory: self.policy.lua_memory(),
                };
                let _ = reply.send(Ok(info));
            }
        }
    }

    /// Authorizes a member's action (plugins, then the decide hook) and, if
    /// allowed, applies it to the state machine as the actor it resolved to.
    fn media_start(&mut self, conn: ConnId, reply: Reply<()>) {
        let Some(media) = self.ctx.media.clone() else {
            let _ = reply.send(Err(Failure::new(
                Status::Unavailable,
                "this server runs without a media plane ([media] enabled = false)",
            )));
            return;
        };
        let member = self
            .room
            .members_with_conns()
            .find(|(_, c)| *c == Some(conn))
            .map(|(info, _)| (info.user.clone(), info.mode));
        let (Some((user, mode)), Some(sink)) = (member, self.sinks.get(&conn).cloned()) else {
            let _ = reply.send(Err(Failure::new(
                Status::NotFound,
                "join a room before starting media",
            )));
            return;
        };
        // The media task learns the gates before the peer, so the first
        // offer already carries what the member may publish.
        if self.media.is_none() {
            self.media = Some(RoomMedia::spawn(&media, self.weak.clone()));
            self.gates.clear();
        }
        self.sync_media();
        let room_media = self.media.as_ref().expect("spawned above");
        room_media.send(MediaCommand::Start {
            conn,
            user,
            mode,
            sink,
            reply,
        });
    }

    /// The media task, if `conn` is a member's and media has started.
    fn media_for(&self, conn: ConnId) -> Result<&RoomMedia, Failure> {
        if self.room.user_of(conn).is_none() {
            return Err(Failure::new(Status::NotFound, "not in a room"));
        }
        self.media
            .as_ref()
            .ok_or_else(|| Failure::new(Status::BadRequest, "send media_start first"))
    }

    /// Tells the media task who may publish what, when that changed.
    fn sync_media(&mut self) {
        let Some(media) = &self.media else {
            return;
        };
        let mut gates: Vec<Gate> = self
            .room
            .members_with_conns()
            .map(|(m, conn)| {
                let interactor = m.role == Role::Interactor;
                Gate {
                    user: m.user.clone(),
                    conn,
                    mode: m.mode,
                    interactor,
                    audio: interactor && !m.audio_muted,
                    video: interactor && m.mode == Mode::Video && !m.video_muted,
                }
            })
            .collect();
        gates.sort_by(|a, b| a.user.cmp(&b.user));
        if gates != self.gates {
            self.gates = gates.clone();
            media.send(MediaCommand::Gates(gates));
        }
    }

    /// Speaking levels: to every member as a `volume` event, and to the
    /// policy's `on_speaking` hook for each member speaking.
    fn volume(&mut self, levels: Vec<VolumeLevel>) {
        let levels: Vec<VolumeLevel> = levels
            .into_iter()
            .filter(|l| self.room.is_member(&l.user))
            .collect();
        if levels.is_empty() {
            return;
        }
        let text: Arc<str> = ServerMessage::Volume {
            levels: levels.clone(),
        }
        .to_json()
        .into();
        for conn in self.room.connections() {
            if let Some(sink) = self.sinks.get(&conn) {
                sink.push(Outbound::Text(text.clone()));
            }
        }
        if self.policy.wants("on_speaking") {
            for level in levels.iter().filter(|l| l.speaking) {
                let mut effects = Vec::new();
                let view = self.view();
                let event = json!({ "user": level.user, "level": level.level });
                self.policy
                    .react("on_speaking", &view, &[&event], &mut effects);
                self.apply(effects);
            }
        }
    }

    fn guarded(
        &mut self,
        actor: Actor,
        target: Option<&UserId>,
        guard: Guard,
        reply: Reply<()>,
        apply: impl FnOnce(&mut Room, &Actor) -> Result<(), super::RoomError>,
    ) {
        let mut effects = Vec::new();
        let result = self
            .authorize(actor, target, guard, &mut effects)
            .and_then(|actor| apply(&mut self.room, &actor).map_err(Failure::from));
        self.finish(effects, reply, result);
    }

    /// Carries out a request's outputs and the effects its hooks queued,
    /// then answers it.
    ///
    /// Everything the request caused, the policy's reactions included, is
    /// queued before the reply, so the requester sees it all before the
    /// response: deterministic, whatever the scheduling.
    fn finish<T>(&mut self, effects: Vec<Effect>, reply: Reply<T>, result: Result<T, Failure>) {
        self.settle(effects, result.is_ok());
        // The media task hears of a mute or role change before the caller
        // hears the answer: once a client sees "muted", no later packet of
        // the muted track is forwarded.
        self.sync_media();
        let _ = reply.send(result);
    }

    /// Carries out outputs, react hooks and effects (the decide hook's only
    /// when the request succeeded). Returns whether any effect was applied.
    fn settle(&mut self, effects: Vec<Effect>, succeeded: bool) -> bool {
        let reacted = self.drain();
        let mut all = if succeeded { effects } else { Vec::new() };
        all.extend(reacted);
        let any = !all.is_empty();
        self.apply(all);
        any
    }

    /// Plugins then `can_join`. Returns the role to join with and how the
    /// policy wants the join applied. A resume is not decided again.
    fn decide_join(
        &mut self,
        identity: &Identity,
        mode: Mode,
        role: Option<Role>,
        effects: &mut Vec<Effect>,
    ) -> Result<(Option<Role>, JoinOptions), Failure> {
        if self.room.is_member(&identity.user) {
            return Ok((role, JoinOptions::default()));
        }
        let community = self.community_of(&identity.user);
        // A media channel admits by community permission, not by the token's
        // room roles: members connect as interactors with microphone and
        // camera off, and open them with the keys they hold.
        let (role, defaults) = match (&self.ctx.binding, &community) {
            (Some(binding), Some(ctx)) => {
                binding.admit(ctx, identity.grants.admin, self.room.member_count())?;
                let options = JoinOptions {
                    role_decided: true,
                    muted: true,
                };
                (Some(role.unwrap_or(Role::Interactor)), options)
            }
            _ => (role, JoinOptions::default()),
        };
        let asked = role.or_else(|| identity.default_role());
        let attrs = crate::auth::attr_lines(&identity.attrs);
        let mut check = Check::new(
            Action::Join,
            self.room.name().as_str(),
            identity.user.as_str(),
        );
        check.role = asked;
        check.kind = Some(match mode {
            Mode::Audio => MediaKind::Audio,
            Mode::Video => MediaKind::Video,
        });
        check.admin = identity.grants.admin;
        check.permissions = community.as_ref().map_or(0, MemberContext::bits);
        check.attrs = &attrs;
        self.policy.check_plugins(&check)?;
        if !self.policy.has_script() {
            return Ok((role, defaults));
        }
        #[derive(Serialize)]
        struct JoinRequest<'a> {
            user: &'a str,
            name: &'a str,
            role: Option<Role>,
            mode: Mode,
            attrs: &'a Value,
            admin: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            community: Option<&'a MemberContext>,
        }
        let request = JoinRequest {
            user: identity.user.as_str(),
            name: &identity.name,
            role: asked,
            mode,
            attrs: &identity.attrs,
            admin: identity.grants.admin,
            community: community.as_ref(),
        };
        let view = self.view();
        match self.policy.decide("can_join", &view, &request, effects)? {
            Decision::Deny(failure) => Err(failure),
            Decision::Join {
                role: decided,
                muted,
            } => Ok((
                decided.or(role),
                JoinOptions {
                    role_decided: decided.is_some() || defaults.role_decided,
                    muted: muted || defaults.muted,
                },
            )),
            Decision::Pass | Decision::Allow | Decision::Payload(_) | Decision::Handled => {
                Ok((role, defaults))
            }
        }
    }

    /// Runs plugins and the decide hook for a member's action, and says as
    /// whom the state machine should apply it: a member the policy
    /// explicitly allowed to act on others becomes a moderator for this one
    /// action. Admin and policy actors are not checked.
    fn authorize(
        &mut self,
        actor: Actor,
        target: Option<&UserId>,
        guard: Guard,
        effects: &mut Vec<Effect>,
    ) -> Result<Actor, Failure> {
        let Guard {
            on_other: on_other_action,
            hook,
            fields,
        } = guard;
        let Actor::Member(conn) = actor else {
            return Ok(actor);
        };
        let Some(me) = self.room.user_of(conn).cloned() else {
            return Err(Failure::new(
                Status::NotFound,
                format!("this connection is not in room `{}`", self.room.name()),
            ));
        };
        let on_other = fields.on_others || target.is_some_and(|t| *t != me);
        let admin = self.room.is_admin(conn);
        // Which plugin action this is: acting on others, or starting to
        // publish (unmuting oneself); muting oneself or switching one's own
        // role needs no permission.
        let action = if on_other {
            Some(on_other_action)
        } else if on_other_action == Action::SetRole {
            Some(Action::SetRole)
        } else if fields.on == Some(true) {
            Some(Action::ShareScreen)
        } else {
            match (fields.kind, fields.muted) {
                (Some(MediaKind::Audio), Some(false)) => Some(Action::PublishAudio),
                (Some(MediaKind::Video), Some(false)) => Some(Action::PublishVideo),
                _ => None,
            }
        };
        // Built-in step for a media channel: the community key the action
        // needs. Holding a key for acting on others is what the admin grant
        // is elsewhere, so the member acts as a moderator for this action.
        let community = self.community_of(&me);
        let mut actor = actor;
        if let (Some(ctx), Some(action)) = (&community, action)
            && let Some(key) = media_channel::key_for(action, fields.kind)
            && !admin
        {
            if !ctx.permissions.contains(key) {
                return Err(media_channel::missing(key, ctx.channel));
            }
            if on_other {
                actor = Actor::Moderator(conn);
            }
        }
        if let Some(action) = action {
            let attrs = self.room.attr_lines(conn);
            let mut check = Check::new(action, self.room.name().as_str(), me.as_str());
            check.target = target.map_or("", |t| t.as_str());
            check.role = fields.role;
            check.kind = fields.kind;
            check.muted = fields.muted.unwrap_or(false);
            check.admin = admin;
            check.permissions = community.as_ref().map_or(0, MemberContext::bits);
            check.attrs = &attrs;
            self.policy.check_plugins(&check)?;
        }
        if !self.policy.has_script() {
            return Ok(actor);
        }
        let request = HookRequest {
            user: me.as_str(),
            target: target.map(|t| t.as_str()),
            role: fields.role,
            kind: fields.kind,
            muted: fields.muted,
            on: fields.on,
            payload: None,
            admin,
            community: community.as_ref(),
        };
        let view = self.view();
        match self.policy.decide(hook, &view, &request, effects)? {
            Decision::Deny(failure) => Err(failure),
            Decision::Allow if on_other => Ok(Actor::Moderator(conn)),
            _ => Ok(actor),
        }
    }

    fn decide_data(
        &mut self,
        actor: Actor,
        to: Option<&UserId>,
        payload: Value,
        effects: &mut Vec<Effect>,
    ) -> Result<(), Failure> {
        let mut payload = payload;
        if let Actor::Member(conn) = &actor {
            let Some(me) = self.room.user_of(*conn).cloned() else {
                return Err(Failure::new(
                    Status::NotFound,
                    format!("this connection is not in room `{}`", self.room.name()),
                ));
            };
            let community = self.community_of(&me);
            let attrs = self.room.attr_lines(*conn);
            let mut check = Check::new(Action::SendData, self.room.name().as_str(), me.as_str());
            check.target = to.map_or("", |t| t.as_str());
            check.admin = self.room.is_admin(*conn);
            check.permissions = community.as_ref().map_or(0, MemberContext::bits);
            check.attrs = &attrs;
            self.policy.check_plugins(&check)?;
            if self.policy.has_script() {
                let request = HookRequest {
                    user: me.as_str(),
                    target: to.map(|t| t.as_str()),
                    role: None,
                    kind: None,
                    muted: None,
                    on: None,
                    payload: Some(&payload),
                    admin: check.admin,
                    community: community.as_ref(),
                };
                let view = self.view();
                match self.policy.decide("can_send", &view, &request, effects)? {
                    Decision::Deny(failure) => return Err(failure),
                    Decision::Payload(changed) => payload = changed,
                    Decision::Handled => return Ok(()),
                    _ => {}
                }
            }
        }
        self.room
            .send_data(&actor, to, payload)
            .map_err(Failure::from)
    }

    /// Applies script actions as the policy, then runs the react hooks of
    /// whatever they caused, for a bounded number of rounds.
    fn apply(&mut self, mut effects: Vec<Effect>) {
        for _ in 0..MAX_EFFECT_ROUNDS {
            if effects.is_empty() {
                return;
            }
            let actor = Actor::Policy(self.policy.name().to_owned());
            let now = self.ctx.clock.now();
            for effect in effects.drain(..) {
                let result = match effect {
                    Effect::Kick { user } => self.room.kick(now, &actor, &user),
                    Effect::Mute { user, kind, muted } => {
                        self.room.set_mute(&actor, Some(&user), kind, muted)
                    }
                    Effect::MuteAll { kind, muted } => self.room.mute_all(&actor, kind, muted),
                    Effect::SetRole { user, role } => self.room.set_role(&actor, Some(&user), role),
                    Effect::Send { to, payload } => {
                        self.room.send_data(&actor, to.as_ref(), payload)
                    }
                    Effect::SetMetadata { key, value } => {
                        self.room.set_metadata(key, value);
                        Ok(())
                    }
                    Effect::Close => {
                        self.room.close(now, CloseReason::ClosedByPolicy);
                        Ok(())
                    }
                    Effect::Timer {
                        name,
                        after_ms,
                        repeat,
                    } => {
                        let after = std::time::Duration::from_millis(after_ms);
                        self.policy.set_timer(name, after, repeat, now.at);
                        Ok(())
                    }
                    Effect::CancelTimer { name } => {
                        self.policy.cancel_timer(&name);
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(policy = self.policy.name(), error = %e, "policy action refused");
                }
            }
            effects = self.drain();
        }
        if !effects.is_empty() {
            tracing::warn!(
                policy = self.policy.name(),
                "policy effects still cascading after {MAX_EFFECT_ROUNDS} rounds; dropped"
            );
        }
    }

    /// Carries out everything the state machine asked for, then runs the
    /// react hooks on it. Returns the effects those hooks queued.
    fn drain(&mut self) -> Vec<Effect> {
        let mut reactions = Vec::new();
        while let Some(output) = self.room.poll_output() {
            match output {
                Output::Broadcast { to, msg } => {
                    self.view = None;
                    if let Some(reaction) = reaction_of(&msg) {
                        reactions.push(reaction);
                    }
                    let text: Arc<str> = msg.to_json().into();
                    if let Recipients::Only(conn) = to {
                        if let Some(sink) = self.sinks.get(&conn) {
                            sink.push(Outbound::Text(text));
                        }
                        continue;
                    }
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
                    self.view = None;
                    let reason = match &msg {
                        ServerMessage::Disconnected { reason, .. } => Some(*reason),
                        _ => None,
                    };
                    if let Some(sink) = self.sinks.remove(&conn) {
                        sink.push(Outbound::Removed {
                            channel_id: self.room.channel_id(),
                            text: msg.to_json().into(),
                        });
                        // After `disconnected`, which ends the membership:
                        // the connection is told where it was, and why.
                        if let Some(reason) = reason {
                            self.channel_ended(Some(&sink), reason.into());
                        }
                    }
                }
                Output::Record(op) => self.ctx.store.apply(op),
                Output::MemberCount(delta, reason) => {
                    self.view = None;
                    self.count_member(delta, reason);
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
                    reactions.push(Reaction::Closing(reason));
                }
            }
        }
        self.react(reactions)
    }

    fn count_member(&self, delta: isize, reason: Option<LeaveReason>) {
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

    /// Runs the react hook of each reaction, collecting their effects.
    fn react(&mut self, reactions: Vec<Reaction>) -> Vec<Effect> {
        let mut effects = Vec::new();
        for reaction in reactions {
            let hook = match &reaction {
                Reaction::Joined(_) => "on_joined",
                Reaction::Left(..) => "on_left",
                Reaction::Mute(_) => "on_mute_changed",
                Reaction::Role(_) => "on_role_changed",
                Reaction::ScreenShare(_) => "on_screen_share_changed",
                Reaction::Closing(_) => "on_closing",
            };
            if !self.policy.wants(hook) {
                continue;
            }
            let view = self.view();
            match reaction {
                Reaction::Joined(user) => {
                    let member = view.members.iter().find(|m| m.info.user == user).cloned();
                    if let Some(member) = member {
                        self.policy.react(hook, &view, &[&member], &mut effects);
                    }
                }
                Reaction::Left(user, reason) => {
                    let event = json!({ "user": user, "reason": reason });
                    self.policy.react(hook, &view, &[&event], &mut effects);
                }
                Reaction::Mute(event) | Reaction::Role(event) | Reaction::ScreenShare(event) => {
                    self.policy.react(hook, &view, &[&event], &mut effects);
                }
                Reaction::Closing(reason) => {
                    self.policy
                        .react(hook, &view, &[&reason.as_str()], &mut effects);
                }
            }
        }
        effects
    }
}

/// How a member's action is checked: the plugin action it is when aimed at
/// others, the decide hook, and the request's extra fields.
struct Guard {
    on_other: Action,
    hook: &'static str,
    fields: HookFields,
}

impl Guard {
    fn new(on_other: Action, hook: &'static str, fields: HookFields) -> Guard {
        Guard {
            on_other,
            hook,
            fields,
        }
    }
}

/// The extra fields of a decide hook's request.
#[derive(Default)]
struct HookFields {
    role: Option<Role>,
    kind: Option<MediaKind>,
    muted: Option<bool>,
    /// Screen share: start (`true`) or stop.
    on: Option<bool>,
    /// The action is on others whatever the target (mute all, kick).
    on_others: bool,
}

fn reaction_of(msg: &ServerMessage) -> Option<Reaction> {
    match msg {
        ServerMessage::MemberJoined { member, .. } => Some(Reaction::Joined(member.user.clone())),
        ServerMessage::MemberLeft { user, reason, .. } => {
            Some(Reaction::Left(user.clone(), *reason))
        }
        ServerMessage::MuteChanged {
            user,
            kind,
            muted,
            operate_by,
            ..
        } => Some(Reaction::Mute(json!({
            "user": user, "kind": kind, "muted": muted, "operate_by": operate_by
        }))),
        ServerMessage::RoleChanged {
            user,
            role,
            operate_by,
            ..
        } => Some(Reaction::Role(json!({
            "user": user, "role": role, "operate_by": operate_by
        }))),
        ServerMessage::ScreenShareChanged {
            user,
            sharing,
            operate_by,
            ..
        } => Some(Reaction::ScreenShare(json!({
            "user": user, "sharing": sharing, "operate_by": operate_by
        }))),
        _ => None,
    }
}

/// The next change to the community, for a room bound to a channel; never
/// for other rooms (nor once the community is gone).
async fn community_change(changes: &mut Option<watch::Receiver<Change>>) -> Option<Change> {
    if let Some(rx) = changes
        && rx.changed().await.is_ok()
    {
        return Some(rx.borrow_and_update().clone());
    }
    std::future::pending().await
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
