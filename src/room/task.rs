//! The task that owns one [`Room`]: commands in through a bounded channel,
//! the state machine's outputs out to member sinks, the store, metrics, the
//! room's policy and its media task.
//!
//! The loop is the only place a room's state changes. It waits on: the next
//! command, the next deadline (the room's or a policy timer's), a new policy
//! version, a change to its community channel, what its media task reports,
//! and server shutdown. Every member request is:
//!
//! 1. authorized, once, by the pipeline (`policy::authz`: grants, community
//!    keys, plugins, the Lua decide hook), which resolves who acts;
//! 2. applied by the state machine, which keeps the room's invariants;
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

use super::error::Error;
use super::registry::RoomsInner;
use super::state::{CloseReason, Joiner, Operator, Output, Recipients, Room, RoomError};
use super::volume::Speakers;
use super::{Outbound, Sink};
use crate::auth::Identity;
use crate::clock::Clock;
use crate::community::channel::{ChannelBinding, Connected, Revocation};
use crate::community::hub::{Change, MemberContext};
use crate::ids::{ChannelId, ConnId, RoomName, UserId};
use crate::media::{Gate, Media, MediaCommand, MediaEvent, MediaReply, RoomMedia};
use crate::model::{ChannelEndReason, LeaveReason, MediaKind, MemberInfo, Mode, Role, VolumeLevel};
use crate::policy::authz::{Access, Ask, DataTerms, Decider, Denial, Granted};
use crate::policy::decisions::{DecisionQuery, DecisionRecord};
use crate::policy::lua::{Effect, MemberView, RoomView};
use crate::policy::runtime::{PolicyStatus, RoomPolicy};
use crate::policy::shadow::ShadowStatus;
use crate::protocol::{JoinOk, ServerMessage};
use crate::store::StoreHandle;

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// How long a caller waits for a room to answer before giving up with 101.
pub const ROOM_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Rounds of react-hook effects applied after one event; a script whose
/// effects keep causing effects stops here.
const MAX_EFFECT_ROUNDS: usize = 8;

/// Who asks for an action on a room.
#[derive(Clone, Debug)]
pub enum By {
    /// A member through its connection: authorized by the pipeline.
    Member(ConnId),
    /// An operator through the admin API (its token's admin grant was
    /// checked there): nothing more is asked.
    Admin(UserId),
}

/// What a member (or an operator) may ask of a room, besides joining and
/// leaving. `target: None` means oneself.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    SetRole {
        target: Option<UserId>,
        role: Role,
    },
    Mute {
        target: Option<UserId>,
        kind: MediaKind,
        muted: bool,
    },
    MuteAll {
        kind: MediaKind,
        muted: bool,
    },
    Kick {
        target: UserId,
        /// Keep them out afterwards.
        ban: Option<crate::model::BanTerms>,
    },
    ShareScreen {
        target: Option<UserId>,
        on: bool,
    },
    Data {
        to: Option<UserId>,
        payload: Value,
    },
}

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
    Act {
        by: By,
        act: Act,
        reply: Reply<()>,
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
    Close {
        reason: CloseReason,
        reply: Reply<()>,
    },
    Info {
        reply: Reply<RoomInfo>,
    },
    Decisions {
        query: DecisionQuery,
        reply: Reply<Vec<DecisionRecord>>,
    },
    ScriptState {
        reply: Reply<Result<Value, String>>,
    },
    Shadow {
        op: ShadowOp,
        reply: Reply<Result<Option<ShadowStatus>, String>>,
    },
    Recording {
        op: RecordingOp,
        reply: Reply<Result<Option<std::path::PathBuf>, String>>,
    },
}

/// What is asked of a room's shadow policy.
#[derive(Clone, Debug)]
pub enum ShadowOp {
    /// Run this policy as the shadow (replacing any other).
    Set(String),
    Clear,
    Status,
}

/// What is asked of a room's recording.
#[derive(Clone, Debug)]
pub enum RecordingOp {
    /// Start recording to the configured directory.
    Start,
    Stop,
    Status,
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

    /// Sends a command and waits for its answer. A room that does not answer
    /// within [`ROOM_ANSWER_TIMEOUT`] yields 101 rather than hanging the
    /// caller: one stuck room must not stall the connections that talk to it.
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        let closed = || Error::Closed(self.name.clone());
        let exchange = async {
            self.tx.send(make(reply)).await.map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        };
        tokio::time::timeout(ROOM_ANSWER_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(Error::NotAnswering(self.name.clone())))
    }

    pub async fn join(
        &self,
        conn: ConnId,
        identity: Arc<Identity>,
        mode: Mode,
        role: Option<Role>,
        sink: Sink,
    ) -> Result<JoinOk, Error> {
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

    pub async fn leave(&self, conn: ConnId) -> Result<(), Error> {
        self.ask(|reply| Command::Leave { conn, reply }).await
    }

    /// Tells the room a member's connection is gone (no reply: the connection
    /// is already closing). Waits for queue space rather than lose the notice.
    pub async fn disconnected(&self, conn: ConnId) {
        let _ = self.tx.send(Command::Disconnected { conn }).await;
    }

    /// Asks for a member's (or an operator's) action on the room.
    pub async fn act(&self, by: By, act: Act) -> Result<(), Error> {
        self.ask(|reply| Command::Act { by, act, reply }).await
    }

    pub async fn close(&self, reason: CloseReason) -> Result<(), Error> {
        self.ask(|reply| Command::Close { reason, reply }).await
    }

    /// Starts WebRTC for the member on `conn`; its `media_offer` follows as an event.
    pub async fn media_start(&self, conn: ConnId) -> Result<(), Error> {
        self.ask(|reply| Command::MediaStart { conn, reply }).await
    }

    pub async fn media_answer(&self, conn: ConnId, sdp: String) -> Result<(), Error> {
        self.ask(|reply| Command::MediaAnswer { conn, sdp, reply })
            .await
    }

    pub async fn ice_candidate(
        &self,
        conn: ConnId,
        candidate: rtc::peer_connection::transport::RTCIceCandidateInit,
    ) -> Result<(), Error> {
        self.ask(|reply| Command::IceCandidate {
            conn,
            candidate,
            reply,
        })
        .await
    }

    pub async fn members(&self) -> Result<Vec<MemberInfo>, Error> {
        Ok(self.info().await?.member_list)
    }

    pub async fn info(&self) -> Result<RoomInfo, Error> {
        self.ask(|reply| Command::Info { reply }).await
    }

    /// Sets, clears or reads the room's shadow policy.
    pub async fn shadow(
        &self,
        op: ShadowOp,
    ) -> Result<Result<Option<ShadowStatus>, String>, Error> {
        self.ask(|reply| Command::Shadow { op, reply }).await
    }

    /// Starts, stops or reads the room's recording; answers its file.
    pub async fn recording(
        &self,
        op: RecordingOp,
    ) -> Result<Result<Option<std::path::PathBuf>, String>, Error> {
        self.ask(|reply| Command::Recording { op, reply }).await
    }

    /// The room policy's `room.state`, as JSON (`Null` without a script).
    pub async fn script_state(&self) -> Result<Result<Value, String>, Error> {
        self.ask(|reply| Command::ScriptState { reply }).await
    }

    /// What the room's decision log holds, as `query` selects.
    pub async fn decisions(&self, query: DecisionQuery) -> Result<Vec<DecisionRecord>, Error> {
        self.ask(|reply| Command::Decisions { query, reply }).await
    }
}

/// What a room task needs from the rest of the server.
pub(crate) struct RoomContext {
    pub store: StoreHandle,
    pub metrics: Arc<super::RoomMetrics>,
    pub shutdown: CancellationToken,
    pub registry: Arc<RoomsInner>,
    pub versions: watch::Receiver<u64>,
    pub media: Option<Media>,
    /// Set for the room of a community media channel: authorization then
    /// asks the community (see `community::channel`).
    pub binding: Option<ChannelBinding>,
    pub clock: Clock,
    pub bans: Arc<crate::policy::bans::Bans>,
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
    let (media_events, media_rx) = mpsc::unbounded_channel();
    let driver = RoomTask {
        room,
        policy,
        view: None,
        view_generation: 0,
        sinks: HashMap::new(),
        present: HashMap::new(),
        members,
        ctx,
        media: None,
        media_events,
        gates: Vec::new(),
        speakers: Speakers::default(),
    };
    tracker.spawn(driver.run(rx, media_rx).instrument(span));
    handle
}

/// What woke the room.
enum Wake {
    Command(Option<Command>),
    Media(MediaEvent),
    Deadline,
    Versions,
    Community(Change),
    Shutdown,
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

/// A member's token as the room keeps it: grants for authorization, attrs
/// for scripts and plugins. Replaced when the member resumes on a new
/// connection with a new token.
struct Present {
    identity: Arc<Identity>,
    /// The attrs as plugins receive them, rendered once.
    attr_lines: Arc<str>,
}

struct RoomTask {
    room: Room,
    policy: RoomPolicy,
    /// The room as scripts see it; rebuilt lazily after any change.
    view: Option<Arc<RoomView>>,
    /// Numbers the views, so Lua states can cache what they built from one.
    view_generation: u64,
    sinks: HashMap<ConnId, Sink>,
    /// Every member's token, by user.
    present: HashMap<UserId, Present>,
    members: Arc<AtomicUsize>,
    ctx: RoomContext,
    /// The room's media task, from the first `media_start` on.
    media: Option<RoomMedia>,
    /// Where the media task reports; the receiving end is in `run`.
    media_events: mpsc::UnboundedSender<MediaEvent>,
    /// The last gates sent to the media task.
    gates: Vec<Gate>,
    /// Who speaks, as the members last heard it.
    speakers: Speakers,
}

impl RoomTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut media_rx: mpsc::UnboundedReceiver<MediaEvent>,
    ) {
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
            // Chosen first, then handled: handling awaits script calls, and
            // nothing else is polled meanwhile (a room does one thing at a
            // time, as before).
            let wake = tokio::select! {
                cmd = rx.recv() => Wake::Command(cmd),
                Some(event) = media_rx.recv() => Wake::Media(event),
                _ = sleep_until(deadline) => Wake::Deadline,
                Ok(()) = versions.changed() => Wake::Versions,
                Some(change) = community_change(&mut changes) => Wake::Community(change),
                _ = shutdown.cancelled() => Wake::Shutdown,
            };
            match wake {
                Wake::Command(Some(cmd)) => self.handle(cmd).await,
                // Every handle is gone, which only happens once the
                // registry dropped this room: nobody can reach it.
                Wake::Command(None) => self
                    .room
                    .close(self.ctx.clock.now(), CloseReason::ClosedByAdmin),
                Wake::Media(event) => self.on_media(event).await,
                Wake::Deadline => self.on_deadline().await,
                Wake::Versions => self.on_new_versions().await,
                Wake::Community(change) => self.on_community_change(change),
                Wake::Shutdown => self.room.close(self.ctx.clock.now(), CloseReason::Shutdown),
            }
            let effects = self.drain().await;
            self.apply(effects).await;
            self.sync_media();
        }
        // Commands still queued get their reply dropped, which the handle
        // reports as "room closed".
        rx.close();
        self.policy.stop_recording();
        tracing::debug!("room closed");
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join {
                conn,
                identity,
                mode,
                role,
                sink,
                reply,
            } => self.join(conn, identity, mode, role, sink, reply).await,
            Command::Leave { conn, reply } => {
                let result = self.room.leave(self.ctx.clock.now(), conn);
                if result.is_ok() {
                    let sink = self.sinks.remove(&conn);
                    self.channel_ended(sink.as_ref(), ChannelEndReason::LeftBySelf);
                }
                self.finish(Vec::new(), reply, result.map_err(Error::from))
                    .await;
            }
            Command::Disconnected { conn } => {
                self.room.disconnected(self.ctx.clock.now(), conn);
                self.sinks.remove(&conn);
            }
            Command::Act { by, act, reply } => {
                let mut effects = Vec::new();
                let result = self.act(by, act, &mut effects).await;
                self.finish(effects, reply, result).await;
            }
            Command::Close { reason, reply } => {
                self.room.close(self.ctx.clock.now(), reason);
                self.finish(Vec::new(), reply, Ok(())).await;
            }
            Command::MediaStart { conn, reply } => self.media_start(conn, reply),
            Command::MediaAnswer { conn, sdp, reply } => {
                self.pass_to_media(conn, reply, |reply| MediaCommand::Answer {
                    conn,
                    sdp,
                    reply,
                });
            }
            Command::IceCandidate {
                conn,
                candidate,
                reply,
            } => {
                self.pass_to_media(conn, reply, |reply| MediaCommand::Candidate {
                    conn,
                    candidate,
                    reply,
                });
            }
            Command::Shadow { op, reply } => {
                let answer = match op {
                    ShadowOp::Set(policy) => self.policy.set_shadow(&policy).await.map(Some),
                    ShadowOp::Clear => Ok(self.policy.clear_shadow()),
                    ShadowOp::Status => Ok(self.policy.shadow_status()),
                };
                let _ = reply.send(Ok(answer));
            }
            Command::Recording { op, reply } => {
                let answer = match op {
                    RecordingOp::Start => {
                        let catalog = self.policy.catalog().clone();
                        let path = catalog
                            .recording_path(self.room.name().as_str(), self.room.channel_id().0);
                        self.policy
                            .start_recording(&path)
                            .map(|()| Some(path.clone()))
                            .map_err(|e| format!("cannot record to {}: {e}", path.display()))
                    }
                    RecordingOp::Stop => Ok(self.policy.stop_recording()),
                    RecordingOp::Status => Ok(self.policy.recording().map(|p| p.to_path_buf())),
                };
                let _ = reply.send(Ok(answer));
            }
            Command::ScriptState { reply } => {
                let _ = reply.send(Ok(self.policy.room_state().await));
            }
            Command::Decisions { query, reply } => {
                let _ = reply.send(Ok(self.policy.decisions().query(&query)));
            }
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

    /// A join: authorized unless it resumes a membership (a reconnect is
    /// not decided again), then applied with the terms authorization set.
    async fn join(
        &mut self,
        conn: ConnId,
        identity: Arc<Identity>,
        mode: Mode,
        role: Option<Role>,
        sink: Sink,
        reply: Reply<JoinOk>,
    ) {
        let mut effects = Vec::new();
        let attr_lines: Arc<str> = crate::auth::attr_lines(&identity.attrs).into();
        let resume = self.room.is_member(&identity.user);
        let banned = self.ctx.bans.refuses_join(
            self.room.name().as_str(),
            &identity.user,
            identity.jti.as_deref(),
            self.ctx.clock.unix_ms(),
        );
        let community = self.community_of(&identity.user);
        let room = self.room.name().clone();
        let access = Access {
            room: room.as_str(),
            identity: &identity,
            community: community.as_ref(),
            attr_lines: &attr_lines,
            ask: Ask::Join {
                mode,
                role,
                members: self.room.member_count(),
            },
        };
        let terms = if let Some(refusal) = banned {
            // Before anything else is asked, a resume included.
            let decision = self.policy.record_decision(
                &access,
                false,
                refusal.status.code(),
                Some(refusal.reason.clone()),
                Decider::Ban,
                0,
            );
            let mut denial = Denial::new(refusal.status, refusal.reason, Decider::Ban);
            denial.decision = Some(decision);
            Err(Error::from(denial))
        } else if resume {
            // Role and mode stay the membership's; these are not used.
            Ok((
                crate::policy::authz::JoinTerms {
                    role: Role::Audience,
                    muted: false,
                },
                None,
            ))
        } else {
            let view = self.view();
            self.policy
                .authorize(&access, self.ctx.binding.as_ref(), &view, &mut effects)
                .await
                .map(|granted| {
                    let terms = granted.join.expect("a granted join has its terms");
                    (terms, Some(granted.decision))
                })
                .map_err(Error::from)
        };
        let result = terms.and_then(|(terms, decision)| {
            let joiner = Joiner {
                user: &identity.user,
                name: &identity.name,
                mode,
                role: terms.role,
                muted: terms.muted,
            };
            let joined = self.room.join(self.ctx.clock.now(), conn, joiner);
            joined.map_err(|e| self.refused_after(decision, e))
        });
        if result.is_ok() {
            self.sinks.insert(conn, sink);
            self.present.insert(
                identity.user.clone(),
                Present {
                    identity: identity.clone(),
                    attr_lines,
                },
            );
            self.view = None;
        }
        let reacted = self.settle(effects, result.is_ok()).await;
        // The response describes the room after everything the joiner has
        // already been told (the policy's reactions included), not the
        // moment before.
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

    /// Authorizes an action (members only; operators were checked at the
    /// API) and applies it as whom authorization resolved.
    async fn act(&mut self, by: By, act: Act, effects: &mut Vec<Effect>) -> Result<(), Error> {
        let conn = match by {
            By::Admin(user) => return self.apply_act(&Operator::Admin(user), act, None),
            By::Member(conn) => conn,
        };
        let Some(me) = self.room.user_of(conn).cloned() else {
            return Err(RoomError::NotMember(self.room.name().clone()).into());
        };
        // Starting a share for someone else is refused before any plugin
        // could mistake it for stopping theirs.
        if let Act::ShareScreen {
            target: Some(target),
            on: true,
        } = &act
            && *target != me
        {
            return Err(RoomError::CannotStartForOthers.into());
        }
        let present = self
            .present
            .get(&me)
            .ok_or_else(|| RoomError::NotMember(self.room.name().clone()))?;
        let identity = present.identity.clone();
        let attr_lines = present.attr_lines.clone();
        let current = |target: &Option<UserId>| {
            let user = target.as_ref().unwrap_or(&me);
            self.room.role_of(user).unwrap_or(Role::Audience)
        };
        let ask = match &act {
            Act::SetRole { target, role } => Ask::SetRole {
                target: target.as_ref(),
                role: *role,
                current: current(target),
            },
            Act::Mute {
                target,
                kind,
                muted,
            } => Ask::Mute {
                target: target.as_ref(),
                kind: *kind,
                muted: *muted,
            },
            Act::MuteAll { kind, muted } => Ask::MuteAll {
                kind: *kind,
                muted: *muted,
            },
            Act::Kick { target, .. } => Ask::Kick { target },
            Act::ShareScreen { target, on } => Ask::ShareScreen {
                target: target.as_ref(),
                on: *on,
            },
            Act::Data { to, payload } => Ask::Data {
                to: to.as_ref(),
                payload,
            },
        };
        let community = self.community_of(&me);
        let room = self.room.name().clone();
        let access = Access {
            room: room.as_str(),
            identity: &identity,
            community: community.as_ref(),
            attr_lines: &attr_lines,
            ask,
        };
        let view = self.view();
        let granted: Granted = self
            .policy
            .authorize(&access, self.ctx.binding.as_ref(), &view, effects)
            .await?;
        let operator = if granted.elevated {
            Operator::Moderator(conn)
        } else {
            Operator::Member(conn)
        };
        match self.apply_act(&operator, act, granted.data) {
            Err(Error::Rule(e)) => Err(self.refused_after(Some(granted.decision), e)),
            other => other,
        }
    }

    /// The room's own rules refused what the pipeline allowed: the
    /// decision's record says so, and the answer names it.
    fn refused_after(&mut self, decision: Option<String>, error: RoomError) -> Error {
        let Some(decision) = decision else {
            return Error::Rule(error);
        };
        let code = error.status().code();
        self.policy
            .decisions_mut()
            .refused_after(&decision, code, error.to_string());
        Error::Decided { decision, error }
    }

    /// Applies an authorized action to the state machine.
    fn apply_act(
        &mut self,
        operator: &Operator,
        act: Act,
        data: Option<DataTerms>,
    ) -> Result<(), Error> {
        let now = self.ctx.clock.now();
        let room = &mut self.room;
        let result = match act {
            Act::SetRole { target, role } => room.set_role(operator, target.as_ref(), role),
            Act::Mute {
                target,
                kind,
                muted,
            } => room.set_mute(operator, target.as_ref(), kind, muted),
            Act::MuteAll { kind, muted } => room.mute_all(operator, kind, muted),
            Act::Kick { target, ban } => {
                let kicked = room.kick(now, operator, &target);
                if kicked.is_ok()
                    && let Some(terms) = ban
                {
                    self.ban(operator, &target, &terms);
                }
                kicked
            }
            Act::ShareScreen { target, on } => room.share_screen(operator, target.as_ref(), on),
            Act::Data { to, payload } => match data {
                Some(DataTerms::Handled) => Ok(()),
                Some(DataTerms::Deliver(payload)) => room.send_data(operator, to.as_ref(), payload),
                None => room.send_data(operator, to.as_ref(), payload),
            },
        };
        result.map_err(Error::from)
    }

    /// Keeps `user` out of this room on `terms`: for some seconds, or for
    /// the room's life.
    fn ban(&self, operator: &Operator, user: &UserId, terms: &crate::model::BanTerms) {
        let now_ms = self.ctx.clock.unix_ms();
        let until = match terms.seconds {
            Some(secs) => crate::policy::bans::Until::after(now_ms, secs),
            None => crate::policy::bans::Until::RoomLife(self.room.channel_id()),
        };
        let by = match operator {
            Operator::Admin(user) => user.as_str().to_owned(),
            Operator::Member(conn) | Operator::Moderator(conn) => self
                .room
                .user_of(*conn)
                .map_or_else(String::new, |u| u.as_str().to_owned()),
            Operator::Policy(name) => format!("policy:{name}"),
        };
        let room = self.room.name().as_str();
        tracing::info!(user = user.as_str(), by, ?until, "banned from the room");
        self.ctx
            .bans
            .ban_user(Some(room), user, until, &terms.reason, &by, now_ms);
    }

    async fn on_deadline(&mut self) {
        let now = self.ctx.clock.now();
        if self.room.poll_timeout().is_some_and(|t| t <= now.at) {
            self.room.handle_timeout(now);
        }
        let before = self.policy.timer_count();
        let due = self.policy.due_timers(now.at);
        if self.policy.timer_count() != before {
            // One-shot timers that fired are gone (repeating ones stay).
            self.view = None;
        }
        for name in due {
            let view = self.view();
            let effects = self.policy.react("on_timer", &view, name).await;
            self.apply(effects).await;
        }
    }

    async fn on_new_versions(&mut self) {
        let view = self.view();
        if let Some(previous) = self.policy.sync(&view).await {
            tracing::info!(previous, now = ?self.policy.status().version, "room policy reloaded");
            let view = self.view();
            let effects = self.policy.react("on_reload", &view, previous).await;
            self.apply(effects).await;
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
            .members()
            .into_iter()
            .map(|info| Connected {
                admin: self
                    .present
                    .get(&info.user)
                    .is_some_and(|p| p.identity.grants.admin),
                user: info.user,
                audio_on: !info.audio_muted,
                video_on: !info.video_muted,
                sharing: info.screen_sharing,
            })
            .collect();
        let operator = Operator::Admin(UserId(change.by));
        for revocation in binding.revocations(&connected) {
            tracing::info!(?revocation, by = ?operator, "community permission revoked");
            let result = match &revocation {
                Revocation::Remove(user) => {
                    self.room.remove(now, user, LeaveReason::PermissionRevoked)
                }
                Revocation::Mute(user, kind) => {
                    self.room.set_mute(&operator, Some(user), *kind, true)
                }
                Revocation::StopShare(user) => self.room.share_screen(&operator, Some(user), false),
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

    /// The room as scripts read it: members (with their tokens' attrs) and
    /// metadata, built once per change.
    fn view(&mut self) -> Arc<RoomView> {
        if self.view.is_none() {
            self.view_generation += 1;
            let members = self
                .room
                .members()
                .into_iter()
                .map(|info| MemberView {
                    attrs: self
                        .present
                        .get(&info.user)
                        .map_or(Value::Object(Default::default()), |p| {
                            p.identity.attrs.clone()
                        }),
                    info,
                })
                .collect();
            self.view = Some(Arc::new(RoomView {
                generation: self.view_generation,
                members,
                metadata: self.room.metadata().clone(),
                timers: self.policy.timer_names(),
            }));
        }
        self.view.clone().expect("set just above")
    }

    /// Starts WebRTC for the member on `conn`.
    fn media_start(&mut self, conn: ConnId, reply: Reply<()>) {
        let Some(media) = self.ctx.media.clone() else {
            let _ = reply.send(Err(Error::MediaOff));
            return;
        };
        let member = self
            .room
            .members_with_conns()
            .find(|(_, c)| *c == Some(conn))
            .map(|(info, _)| (info.user.clone(), info.mode));
        let Some((user, mode)) = member.filter(|_| self.sinks.contains_key(&conn)) else {
            let _ = reply.send(Err(Error::JoinFirst));
            return;
        };
        // The media task learns the gates before the peer, so the first
        // offer already carries what the member may publish.
        if self.media.is_none() {
            self.media = Some(RoomMedia::spawn(&media, self.media_events.clone()));
            self.gates.clear();
        }
        self.sync_media();
        let room_media = self.media.as_mut().expect("spawned above");
        room_media.send(MediaCommand::Start {
            conn,
            user,
            mode,
            reply: media_reply(reply),
        });
    }

    /// Passes a media command on, if `conn` is a member's and media has
    /// started.
    fn pass_to_media(
        &mut self,
        conn: ConnId,
        reply: Reply<()>,
        make: impl FnOnce(MediaReply) -> MediaCommand,
    ) {
        if self.room.user_of(conn).is_none() {
            let _ = reply.send(Err(Error::NotInRoom));
            return;
        }
        match &mut self.media {
            Some(media) => media.send(make(media_reply(reply))),
            None => {
                let _ = reply.send(Err(Error::Media(crate::media::MediaError::NotStarted)));
            }
        }
    }

    /// What the media task reports.
    async fn on_media(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::Offer { conn, offer } => {
                let Some(sink) = self.sinks.get(&conn) else {
                    return;
                };
                let ice_servers = self
                    .ctx
                    .media
                    .as_ref()
                    .map(|m| m.config().ice_servers.clone())
                    .unwrap_or_default();
                let msg = ServerMessage::MediaOffer {
                    sdp: offer.sdp,
                    publish: offer.publish,
                    tracks: offer.tracks,
                    ice_servers,
                };
                sink.push(Outbound::Text(msg.to_json().into()));
            }
            // Already gone (left, replaced) is fine: nothing to end.
            MediaEvent::Lost { conn } => {
                let _ = self.room.media_lost(self.ctx.clock.now(), conn);
            }
            MediaEvent::Volume { levels } => self.volume(levels).await,
        }
    }

    /// Tells the media task who may publish what, when that changed.
    fn sync_media(&mut self) {
        if self.media.is_none() {
            return;
        }
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
        if gates != self.gates
            && let Some(media) = &mut self.media
        {
            self.gates = gates.clone();
            media.send(MediaCommand::Gates(gates));
        }
    }

    /// Speaking levels: to the members as a `volume` event of what changed
    /// (see `volume`), and to the policy's `on_speaking` hook for each member
    /// speaking.
    async fn volume(&mut self, levels: Vec<VolumeLevel>) {
        let levels: Vec<VolumeLevel> = levels
            .into_iter()
            .filter(|l| self.room.is_member(&l.user))
            .collect();
        if levels.is_empty() {
            return;
        }
        let step = self
            .ctx
            .media
            .as_ref()
            .map_or(0, |m| m.config().volume_step);
        let news = self.speakers.report(&levels, step);
        let event = |levels: Vec<VolumeLevel>| -> Option<Arc<str>> {
            (!levels.is_empty()).then(|| ServerMessage::Volume { levels }.to_json().into())
        };
        let (changes, mut everyone) = (event(news.changes), None);
        for conn in self.room.connections() {
            let text = if self.speakers.heard_last(conn) {
                changes.as_ref()
            } else {
                // Joined since the last event: told everyone speaking.
                everyone
                    .get_or_insert_with(|| event(news.everyone.clone()))
                    .as_ref()
            };
            if let (Some(text), Some(sink)) = (text, self.sinks.get(&conn)) {
                sink.push(Outbound::Text(text.clone()));
            }
        }
        self.speakers.heard_by(self.room.connections());
        if self.policy.wants("on_speaking") {
            for level in levels.iter().filter(|l| l.speaking) {
                let view = self.view();
                let event = json!({ "user": level.user, "level": level.level });
                let effects = self.policy.react("on_speaking", &view, event).await;
                self.apply(effects).await;
            }
        }
    }

    /// Carries out a request's outputs and the effects its hooks queued,
    /// then answers it.
    ///
    /// Everything the request caused, the policy's reactions included, is
    /// queued before the reply, so the requester sees it all before the
    /// response: deterministic, whatever the scheduling.
    async fn finish<T>(&mut self, effects: Vec<Effect>, reply: Reply<T>, result: Result<T, Error>) {
        self.settle(effects, result.is_ok()).await;
        // The media task hears of a mute or role change before the caller
        // hears the answer: once a client sees "muted", no later packet of
        // the muted track is forwarded.
        self.sync_media();
        let _ = reply.send(result);
    }

    /// Carries out outputs, react hooks and effects (the decide hook's only
    /// when the request succeeded). Returns whether any effect was applied.
    async fn settle(&mut self, effects: Vec<Effect>, succeeded: bool) -> bool {
        let reacted = self.drain().await;
        let mut all = if succeeded { effects } else { Vec::new() };
        all.extend(reacted);
        let any = !all.is_empty();
        self.apply(all).await;
        any
    }

    /// Applies script actions as the policy, then runs the react hooks of
    /// whatever they caused, for a bounded number of rounds.
    async fn apply(&mut self, mut effects: Vec<Effect>) {
        for _ in 0..MAX_EFFECT_ROUNDS {
            if effects.is_empty() {
                return;
            }
            let operator = Operator::Policy(self.policy.name().to_owned());
            let now = self.ctx.clock.now();
            for effect in effects.drain(..) {
                let result = match effect {
                    Effect::Kick { user } => self.room.kick(now, &operator, &user),
                    Effect::Ban { user, terms } => {
                        self.ban(&operator, &user, &terms);
                        if self.room.is_member(&user) {
                            self.room.kick(now, &operator, &user)
                        } else {
                            Ok(())
                        }
                    }
                    Effect::Mute { user, kind, muted } => {
                        self.room.set_mute(&operator, Some(&user), kind, muted)
                    }
                    Effect::MuteAll { kind, muted } => self.room.mute_all(&operator, kind, muted),
                    Effect::SetRole { user, role } => {
                        self.room.set_role(&operator, Some(&user), role)
                    }
                    Effect::Send { to, payload } => {
                        self.room.send_data(&operator, to.as_ref(), payload)
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
                        // Scripts see the room's timers (for their limit).
                        self.view = None;
                        Ok(())
                    }
                    Effect::CancelTimer { name } => {
                        self.policy.cancel_timer(&name);
                        self.view = None;
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(policy = self.policy.name(), error = %e, "policy action refused");
                }
            }
            effects = self.drain().await;
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
    async fn drain(&mut self) -> Vec<Effect> {
        let mut reactions = Vec::new();
        while let Some(output) = self.room.poll_output() {
            match output {
                Output::Broadcast { to, msg } => {
                    self.view = None;
                    if let Some(reaction) = reaction_of(&msg) {
                        if let Reaction::Left(user, _) = &reaction {
                            self.present.remove(user);
                            self.speakers.forget(user);
                        }
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
                    self.ctx.metrics.room_closed(reason);
                    self.ctx.bans.room_closed(self.room.channel_id());
                    reactions.push(Reaction::Closing(reason));
                }
            }
        }
        self.react(reactions).await
    }

    fn count_member(&self, delta: isize, reason: Option<LeaveReason>) {
        if delta > 0 {
            self.members.fetch_add(1, Ordering::Relaxed);
        } else {
            self.members.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(reason) = reason {
            tracing::debug!(reason = reason.as_str(), "member left");
        }
        self.ctx.metrics.member_count(delta, reason);
    }

    /// Runs the react hook of each reaction, collecting their effects.
    async fn react(&mut self, reactions: Vec<Reaction>) -> Vec<Effect> {
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
            let queued = match reaction {
                Reaction::Joined(user) => {
                    let member = view.members.iter().find(|m| m.info.user == user).cloned();
                    match member {
                        Some(member) => self.policy.react(hook, &view, member).await,
                        None => Vec::new(),
                    }
                }
                Reaction::Left(user, reason) => {
                    let event = json!({ "user": user, "reason": reason });
                    self.policy.react(hook, &view, event).await
                }
                Reaction::Mute(event) | Reaction::Role(event) | Reaction::ScreenShare(event) => {
                    self.policy.react(hook, &view, event).await
                }
                Reaction::Closing(reason) => self.policy.react(hook, &view, reason.as_str()).await,
            };
            effects.extend(queued);
        }
        effects
    }
}

/// A reply for the media task that the room's caller receives.
fn media_reply(reply: Reply<()>) -> MediaReply {
    Box::new(move |result| {
        let _ = reply.send(result.map_err(Error::from));
    })
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
