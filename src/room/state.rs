//! The room state machine: every rule of a NIM multi-person room, with no I/O.
//!
//! Inputs are method calls carrying the current time ([`Now`]); outputs are
//! queued and drained with [`Room::poll_output`]; the next deadline is
//! [`Room::poll_timeout`] and is fed back through [`Room::handle_timeout`].
//! The room never reads a clock, spawns, or touches a socket, so every rule is
//! tested here with synthetic time and benchmarked without a network.
//!
//! It holds the room's own invariants (an audience member cannot unmute, a
//! member in audio mode has no video, nobody starts a screen share for
//! someone else) and nothing about who may do what: tokens, community keys,
//! plugins and policies decide that before a request gets here
//! (`policy::authz`), and what they decided arrives as the [`Operator`] and
//! the [`Joiner`]'s terms.
//!
//! Invariants:
//! - `conns` maps exactly the connections of members that are connected; a
//!   member in its reconnect grace window has `conn == None` and a deadline.
//! - Once [`Output::Closed`] has been emitted the room accepts nothing more.
//! - A call record exists (`started`) from the first join on; a room never
//!   joined emits no record outputs at all.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use crate::clock::Now;
use crate::ids::{ChannelId, ConnId, RoomName, UserId};
use crate::model::{LeaveReason, MediaKind, MemberInfo, Mode, Role};
use crate::protocol::{JoinOk, ServerMessage};
use crate::status::Status;
use crate::store::RecordOp;

/// Timeouts a room runs with; from `[rooms]` in the config.
#[derive(Clone, Debug)]
pub struct RoomSettings {
    /// A created room that nobody joins closes after this long.
    pub empty_timeout: Duration,
    /// A member whose connection is lost stays (silently) for this long, so a
    /// reconnect resumes the membership; after it the member leaves with `timeout`.
    pub reconnect_grace: Duration,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            empty_timeout: Duration::from_secs(300),
            reconnect_grace: Duration::from_secs(15),
        }
    }
}

/// Who performs an operation, as authorization resolved it: the
/// `operate_by` of what it causes.
#[derive(Clone, Debug)]
pub enum Operator {
    /// A member through its connection, acting on itself only.
    Member(ConnId),
    /// A member allowed to act on others for this one request (the token's
    /// admin grant, a community key, or the room policy's explicit allow).
    Moderator(ConnId),
    /// An operator through the admin API.
    Admin(UserId),
    /// The room's policy script, by name.
    Policy(String),
}

/// A new member, with the terms authorization set.
#[derive(Clone, Debug)]
pub struct Joiner<'a> {
    pub user: &'a UserId,
    /// Display name (from the token).
    pub name: &'a str,
    pub mode: Mode,
    pub role: Role,
    /// Start with audio and video muted, whatever the role.
    pub muted: bool,
}

/// Why a room closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The last member left.
    AllLeft,
    /// Created and never joined within the empty timeout.
    Expired,
    /// Closed through the admin API.
    ClosedByAdmin,
    /// Closed by the room's policy (`room.close()`).
    ClosedByPolicy,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::AllLeft => "all_left",
            CloseReason::Expired => "expired",
            CloseReason::ClosedByAdmin => "closed",
            CloseReason::ClosedByPolicy => "closed_by_policy",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Who should receive a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipients {
    /// Every connected member.
    All,
    /// Every connected member but one.
    AllExcept(ConnId),
    /// One connection.
    Only(ConnId),
}

/// What the room asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send a message to connected members.
    Broadcast { to: Recipients, msg: ServerMessage },
    /// Tell one connection its membership is over (the message says why) and
    /// forget it.
    Remove { conn: ConnId, msg: ServerMessage },
    /// Write to the call record.
    Record(RecordOp),
    /// Membership counts changed: one member in or out (for metrics).
    MemberCount(isize, Option<LeaveReason>),
    /// The room is closed; the driver stops it.
    Closed(CloseReason),
}

/// Why an operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("room `{0}` is closed")]
    Closed(RoomName),
    #[error("this connection is not in room `{0}`")]
    NotMember(RoomName),
    #[error("no member `{0}` in this room")]
    NoSuchMember(UserId),
    #[error("an audience member cannot unmute; switch to interactor first")]
    AudienceCannotUnmute,
    #[error("joined in audio mode: there is no video to unmute")]
    NoVideoInAudioMode,
    #[error("joined in audio mode: there is no video to share a screen on")]
    NoScreenInAudioMode,
    #[error("an audience member cannot share a screen; switch to interactor first")]
    AudienceCannotShare,
    #[error("only a screen share can be stopped for someone else, not started")]
    CannotStartForOthers,
    #[error("acting on another member needs the admin grant")]
    NotPermitted,
    #[error("kicking needs the admin grant; to go, send `leave`")]
    KickNotPermitted,
}

impl RoomError {
    /// The status a client is answered with. Kept with the type (not in
    /// `app::errors` with the others) because the room's decision log
    /// records it too.
    pub fn status(&self) -> Status {
        match self {
            RoomError::Closed(_) | RoomError::NoSuchMember(_) | RoomError::NotMember(_) => {
                Status::NotFound
            }
            RoomError::NoVideoInAudioMode
            | RoomError::NoScreenInAudioMode
            | RoomError::CannotStartForOthers => Status::BadRequest,
            RoomError::AudienceCannotShare
            | RoomError::AudienceCannotUnmute
            | RoomError::NotPermitted
            | RoomError::KickNotPermitted => Status::Forbidden,
        }
    }
}

#[derive(Clone, Debug)]
struct Member {
    info: MemberInfo,
    /// Join order, for listing.
    seq: u64,
    /// The current connection; `None` while waiting out the grace window.
    conn: Option<ConnId>,
    grace_until: Option<Instant>,
}

/// One room instance.
#[derive(Debug)]
pub struct Room {
    name: RoomName,
    channel_id: ChannelId,
    custom_info: String,
    settings: RoomSettings,
    created_at_ms: i64,
    members: HashMap<UserId, Member>,
    conns: HashMap<ConnId, UserId>,
    next_seq: u64,
    /// A call record has been started (someone joined).
    started: bool,
    /// Set while the room has never been joined.
    expires_at: Option<Instant>,
    closed: bool,
    /// Set by policies (`room.set_metadata`); shown to joiners.
    metadata: serde_json::Map<String, serde_json::Value>,
    out: VecDeque<Output>,
}

impl Room {
    pub fn new(
        name: RoomName,
        channel_id: ChannelId,
        custom_info: String,
        settings: RoomSettings,
        now: Now,
    ) -> Room {
        Room {
            name,
            channel_id,
            custom_info,
            expires_at: Some(now.at + settings.empty_timeout),
            settings,
            created_at_ms: now.unix_ms,
            members: HashMap::new(),
            conns: HashMap::new(),
            next_seq: 0,
            started: false,
            closed: false,
            metadata: serde_json::Map::new(),
            out: VecDeque::new(),
        }
    }

    pub fn name(&self) -> &RoomName {
        &self.name
    }

    pub fn channel_id(&self) -> ChannelId {
        self.channel_id
    }

    pub fn custom_info(&self) -> &str {
        &self.custom_info
    }

    pub fn created_at_ms(&self) -> i64 {
        self.created_at_ms
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Members in join order.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.seq);
        members.into_iter().map(|m| m.info.clone()).collect()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Connections of connected members.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// The user behind a connection, if it is a member here.
    pub fn user_of(&self, conn: ConnId) -> Option<&UserId> {
        self.conns.get(&conn)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next instant [`Room::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.members
            .values()
            .filter_map(|m| m.grace_until)
            .chain(self.expires_at)
            .min()
    }

    /// Expires a never-joined room and members whose grace window has passed.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.closed {
            return;
        }
        if self.expires_at.is_some_and(|t| t <= now.at) {
            self.finish(now, CloseReason::Expired);
            return;
        }
        let mut expired: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.grace_until.is_some_and(|t| t <= now.at))
            .collect();
        expired.sort_by_key(|m| m.seq);
        let expired: Vec<UserId> = expired.into_iter().map(|m| m.info.user.clone()).collect();
        for user in expired {
            self.remove_member(now, &user, LeaveReason::Timeout);
        }
        self.close_if_empty(now);
    }

    /// A connection joins. A join by a user who is already a member (a
    /// reconnect, or a second device) takes the membership over silently,
    /// keeping its role and mode; only the name is taken from `joiner`.
    pub fn join(
        &mut self,
        now: Now,
        conn: ConnId,
        joiner: Joiner<'_>,
    ) -> Result<JoinOk, RoomError> {
        if self.closed {
            return Err(RoomError::Closed(self.name.clone()));
        }
        if let Some(member) = self.members.get_mut(joiner.user) {
            let previous = member.conn.replace(conn);
            member.grace_until = None;
            member.info.name = joiner.name.to_owned();
            let (role, mode) = (member.info.role, member.info.mode);
            self.conns.insert(conn, joiner.user.clone());
            if let Some(old) = previous.filter(|old| *old != conn) {
                self.conns.remove(&old);
                self.out.push_back(Output::Remove {
                    conn: old,
                    msg: self.disconnected_msg(LeaveReason::Replaced),
                });
            }
            return Ok(self.join_ok(role, mode, true));
        }

        let Joiner {
            user,
            name,
            mode,
            role,
            muted,
        } = joiner;
        let audience = role == Role::Audience || muted;
        let info = MemberInfo {
            user: user.clone(),
            name: name.to_owned(),
            role,
            mode,
            audio_muted: audience,
            video_muted: audience || mode == Mode::Audio,
            screen_sharing: false,
            joined_at: now.unix_ms,
        };
        if !self.started {
            self.started = true;
            self.expires_at = None;
            self.out.push_back(Output::Record(RecordOp::Start {
                channel_id: self.channel_id,
                room: self.name.clone(),
                custom_info: self.custom_info.clone(),
                created_at: self.created_at_ms,
                started_at: now.unix_ms,
            }));
        }
        self.out.push_back(Output::Record(RecordOp::Join {
            channel_id: self.channel_id,
            user: info.user.clone(),
            name: info.name.clone(),
            role,
            joined_at: now.unix_ms,
        }));
        self.out.push_back(Output::MemberCount(1, None));
        self.out.push_back(Output::Broadcast {
            to: Recipients::AllExcept(conn),
            msg: ServerMessage::MemberJoined {
                room: self.name.clone(),
                channel_id: self.channel_id,
                member: info.clone(),
            },
        });
        let seq = self.next_seq;
        self.next_seq += 1;
        self.members.insert(
            user.clone(),
            Member {
                info,
                seq,
                conn: Some(conn),
                grace_until: None,
            },
        );
        self.conns.insert(conn, user.clone());
        Ok(self.join_ok(role, mode, false))
    }

    fn join_ok(&self, role: Role, mode: Mode, resumed: bool) -> JoinOk {
        JoinOk {
            room: self.name.clone(),
            channel_id: self.channel_id,
            custom_info: self.custom_info.clone(),
            role,
            mode,
            members: self.members(),
            metadata: self.metadata.clone(),
            resumed,
        }
    }

    /// The member on `conn` leaves by its own request.
    pub fn leave(&mut self, now: Now, conn: ConnId) -> Result<(), RoomError> {
        let user = self.member_on(conn)?.clone();
        self.remove_member(now, &user, LeaveReason::Normal);
        self.close_if_empty(now);
        Ok(())
    }

    /// The member's media connection failed or went silent past the media
    /// timeout: it leaves with `timeout` at once. Its signaling may still be
    /// up, but a member nobody can hear is not in the call.
    pub fn media_lost(&mut self, now: Now, conn: ConnId) -> Result<(), RoomError> {
        let user = self.member_on(conn)?.clone();
        self.remove_member(now, &user, LeaveReason::Timeout);
        self.close_if_empty(now);
        Ok(())
    }

    /// Each member with the connection it is on (`None` in the grace window).
    pub fn members_with_conns(&self) -> impl Iterator<Item = (&MemberInfo, Option<ConnId>)> {
        self.members.values().map(|m| (&m.info, m.conn))
    }

    /// The connection is gone without a leave: the member waits out the grace
    /// window. Unknown or already-replaced connections are ignored.
    pub fn disconnected(&mut self, now: Now, conn: ConnId) {
        let Some(user) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(member) = self.members.get_mut(&user) {
            member.conn = None;
            member.grace_until = Some(now.at + self.settings.reconnect_grace);
        }
    }

    /// Switches a member's role. Becoming audience mutes audio and video.
    pub fn set_role(
        &mut self,
        actor: &Operator,
        target: Option<&UserId>,
        role: Role,
    ) -> Result<(), RoomError> {
        let (target, operator) = self.resolve(actor, target)?;
        let member = self
            .members
            .get_mut(&target)
            .ok_or_else(|| RoomError::NoSuchMember(target.clone()))?;
        if member.info.role == role {
            return Ok(());
        }
        member.info.role = role;
        let mut forced = Vec::new();
        if role == Role::Audience {
            if !member.info.audio_muted {
                member.info.audio_muted = true;
                forced.push(MediaKind::Audio);
            }
            if !member.info.video_muted {
                member.info.video_muted = true;
                forced.push(MediaKind::Video);
            }
        }
        self.out.push_back(Output::Record(RecordOp::Role {
            channel_id: self.channel_id,
            user: target.clone(),
            role,
        }));
        self.out.push_back(Output::Broadcast {
            to: Recipients::All,
            msg: ServerMessage::RoleChanged {
                room: self.name.clone(),
                channel_id: self.channel_id,
                user: target.clone(),
                role,
                operate_by: operator.0.clone(),
            },
        });
        for kind in forced {
            self.push_mute_changed(&target, kind, true, &operator);
        }
        if role == Role::Audience {
            self.stop_screen_share(&target, &operator);
        }
        Ok(())
    }

    /// Starts or stops a member's screen share. Starting is for oneself, as
    /// an interactor in video mode; stopping someone else's needs the right
    /// to act on others.
    pub fn share_screen(
        &mut self,
        actor: &Operator,
        target: Option<&UserId>,
        on: bool,
    ) -> Result<(), RoomError> {
        let (target, operator) = self.resolve(actor, target)?;
        if on && target != operator {
            return Err(RoomError::CannotStartForOthers);
        }
        let member = self
            .members
            .get_mut(&target)
            .ok_or_else(|| RoomError::NoSuchMember(target.clone()))?;
        if on {
            if member.info.role == Role::Audience {
                return Err(RoomError::AudienceCannotShare);
            }
            if member.info.mode == Mode::Audio {
                return Err(RoomError::NoScreenInAudioMode);
            }
            if member.info.screen_sharing {
                return Ok(());
            }
            member.info.screen_sharing = true;
            self.push_screen_share(&target, true, &operator);
        } else {
            self.stop_screen_share(&target, &operator);
        }
        Ok(())
    }

    fn stop_screen_share(&mut self, user: &UserId, operator: &UserId) {
        if let Some(member) = self.members.get_mut(user)
            && member.info.screen_sharing
        {
            member.info.screen_sharing = false;
            self.push_screen_share(user, false, operator);
        }
    }

    fn push_screen_share(&mut self, user: &UserId, sharing: bool, by: &UserId) {
        self.out.push_back(Output::Broadcast {
            to: Recipients::All,
            msg: ServerMessage::ScreenShareChanged {
                room: self.name.clone(),
                channel_id: self.channel_id,
                user: user.clone(),
                sharing,
                operate_by: by.0.clone(),
            },
        });
    }

    /// Mutes or unmutes a member's audio or video.
    pub fn set_mute(
        &mut self,
        actor: &Operator,
        target: Option<&UserId>,
        kind: MediaKind,
        muted: bool,
    ) -> Result<(), RoomError> {
        let (target, operator) = self.resolve(actor, target)?;
        let member = self
            .members
            .get_mut(&target)
            .ok_or_else(|| RoomError::NoSuchMember(target.clone()))?;
        if !muted && member.info.role == Role::Audience {
            return Err(RoomError::AudienceCannotUnmute);
        }
        if !muted && kind == MediaKind::Video && member.info.mode == Mode::Audio {
            return Err(RoomError::NoVideoInAudioMode);
        }
        let slot = match kind {
            MediaKind::Audio => &mut member.info.audio_muted,
            MediaKind::Video => &mut member.info.video_muted,
        };
        if *slot == muted {
            return Ok(());
        }
        *slot = muted;
        self.push_mute_changed(&target, kind, muted, &operator);
        Ok(())
    }

    /// Removes a member; others see `member_left` with reason `kicked`.
    /// Never for a plain member, even on itself (that is `leave`).
    pub fn kick(&mut self, now: Now, actor: &Operator, target: &UserId) -> Result<(), RoomError> {
        if let Operator::Member(conn) = actor {
            self.member_on(*conn)?;
            return Err(RoomError::KickNotPermitted);
        }
        let (target, _) = self.resolve(actor, Some(target))?;
        if !self.members.contains_key(&target) {
            return Err(RoomError::NoSuchMember(target));
        }
        self.remove_member(now, &target, LeaveReason::Kicked);
        self.close_if_empty(now);
        Ok(())
    }

    /// Takes a member out for a reason of the server's (a revoked
    /// permission, say); others see `member_left` with it, the member's
    /// connection `disconnected`. The room closes if that was the last member.
    pub fn remove(
        &mut self,
        now: Now,
        user: &UserId,
        reason: LeaveReason,
    ) -> Result<(), RoomError> {
        if !self.members.contains_key(user) {
            return Err(RoomError::NoSuchMember(user.clone()));
        }
        self.remove_member(now, user, reason);
        self.close_if_empty(now);
        Ok(())
    }

    /// Closes the room with everyone still in it.
    pub fn close(&mut self, now: Now, reason: CloseReason) {
        if self.closed {
            return;
        }
        let leave_reason = match reason {
            CloseReason::Shutdown => LeaveReason::Shutdown,
            _ => LeaveReason::RoomClosed,
        };
        let mut members: Vec<(u64, UserId)> = self
            .members
            .values()
            .map(|m| (m.seq, m.info.user.clone()))
            .collect();
        members.sort();
        for (_, user) in members {
            self.evict(now, &user, leave_reason);
        }
        self.finish(now, reason);
    }

    /// Who an actor is, as `operate_by` and `from` name it.
    fn operator(&self, actor: &Operator) -> Result<UserId, RoomError> {
        match actor {
            Operator::Member(conn) | Operator::Moderator(conn) => self.member_on(*conn).cloned(),
            Operator::Admin(op) => Ok(op.clone()),
            Operator::Policy(name) => Ok(UserId(format!("policy:{name}"))),
        }
    }

    /// What policies published with `room.set_metadata`.
    pub fn metadata(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.metadata
    }

    /// A member's role, if `user` is a member.
    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.members.get(user).map(|m| m.info.role)
    }

    /// Whether `user` holds a membership (connected or in its grace window).
    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.contains_key(user)
    }

    /// Mutes (or unmutes) every member but the one acting. Needs the right
    /// to act on others. Unmuting skips members who cannot publish.
    pub fn mute_all(
        &mut self,
        actor: &Operator,
        kind: MediaKind,
        muted: bool,
    ) -> Result<(), RoomError> {
        let operator = self.operator(actor)?;
        if let Operator::Member(_) = actor {
            return Err(RoomError::NotPermitted);
        }
        let mut targets: Vec<(u64, UserId)> = self
            .members
            .values()
            .filter(|m| m.info.user != operator)
            .map(|m| (m.seq, m.info.user.clone()))
            .collect();
        targets.sort();
        for (_, user) in targets {
            let Some(member) = self.members.get_mut(&user) else {
                continue;
            };
            if !muted
                && (member.info.role == Role::Audience
                    || (kind == MediaKind::Video && member.info.mode == Mode::Audio))
            {
                continue;
            }
            let slot = match kind {
                MediaKind::Audio => &mut member.info.audio_muted,
                MediaKind::Video => &mut member.info.video_muted,
            };
            if *slot != muted {
                *slot = muted;
                self.push_mute_changed(&user, kind, muted, &operator);
            }
        }
        Ok(())
    }

    /// Sends a data message to one member or to everyone (a member's own
    /// message is not echoed back to it).
    pub fn send_data(
        &mut self,
        actor: &Operator,
        to: Option<&UserId>,
        payload: serde_json::Value,
    ) -> Result<(), RoomError> {
        let from = self.operator(actor)?;
        let msg = ServerMessage::Data {
            room: self.name.clone(),
            channel_id: self.channel_id,
            from: from.0,
            payload,
        };
        let recipients = match to {
            Some(user) => {
                let member = self
                    .members
                    .get(user)
                    .ok_or_else(|| RoomError::NoSuchMember(user.clone()))?;
                match member.conn {
                    Some(conn) => Recipients::Only(conn),
                    // In its grace window: nobody to deliver to.
                    None => return Ok(()),
                }
            }
            None => match actor {
                Operator::Member(conn) | Operator::Moderator(conn) => Recipients::AllExcept(*conn),
                _ => Recipients::All,
            },
        };
        self.out.push_back(Output::Broadcast {
            to: recipients,
            msg,
        });
        Ok(())
    }

    /// Sets (or, with `null`, removes) one metadata key; everyone is told.
    pub fn set_metadata(&mut self, key: String, value: serde_json::Value) {
        if value.is_null() {
            self.metadata.remove(&key);
        } else {
            self.metadata.insert(key, value);
        }
        self.out.push_back(Output::Broadcast {
            to: Recipients::All,
            msg: ServerMessage::MetadataChanged {
                room: self.name.clone(),
                channel_id: self.channel_id,
                metadata: self.metadata.clone(),
            },
        });
    }

    /// The user on `conn`, or `NotMember`.
    fn member_on(&self, conn: ConnId) -> Result<&UserId, RoomError> {
        self.conns
            .get(&conn)
            .ok_or_else(|| RoomError::NotMember(self.name.clone()))
    }

    /// Works out whom an operation targets and who is doing it; a plain
    /// member only ever acts on itself.
    fn resolve(
        &self,
        actor: &Operator,
        target: Option<&UserId>,
    ) -> Result<(UserId, UserId), RoomError> {
        match actor {
            Operator::Admin(_) | Operator::Policy(_) => {
                let operator = self.operator(actor)?;
                let target = target.ok_or_else(|| RoomError::NoSuchMember(operator.clone()))?;
                Ok((target.clone(), operator))
            }
            Operator::Member(conn) | Operator::Moderator(conn) => {
                let me = self.member_on(*conn)?.clone();
                match target {
                    None => Ok((me.clone(), me)),
                    Some(t) if *t == me => Ok((me.clone(), me)),
                    Some(t) if matches!(actor, Operator::Moderator(_)) => Ok((t.clone(), me)),
                    Some(_) => Err(RoomError::NotPermitted),
                }
            }
        }
    }

    fn push_mute_changed(&mut self, user: &UserId, kind: MediaKind, muted: bool, by: &UserId) {
        self.out.push_back(Output::Broadcast {
            to: Recipients::All,
            msg: ServerMessage::MuteChanged {
                room: self.name.clone(),
                channel_id: self.channel_id,
                user: user.clone(),
                kind,
                muted,
                operate_by: by.0.clone(),
            },
        });
    }

    fn disconnected_msg(&self, reason: LeaveReason) -> ServerMessage {
        ServerMessage::Disconnected {
            room: self.name.clone(),
            channel_id: self.channel_id,
            code: Status::Disconnected,
            reason,
        }
    }

    /// Takes a member out, records it and tells the others.
    fn remove_member(&mut self, now: Now, user: &UserId, reason: LeaveReason) {
        if !self.evict(now, user, reason) {
            return;
        }
        self.out.push_back(Output::Broadcast {
            to: Recipients::All,
            msg: ServerMessage::MemberLeft {
                room: self.name.clone(),
                channel_id: self.channel_id,
                user: user.clone(),
                reason,
            },
        });
    }

    /// Takes a member out and records it; the member's own connection (when it
    /// did not ask to leave) is told why. Returns false if there was no such member.
    fn evict(&mut self, now: Now, user: &UserId, reason: LeaveReason) -> bool {
        let Some(member) = self.members.remove(user) else {
            return false;
        };
        if let Some(conn) = member.conn {
            self.conns.remove(&conn);
            if reason != LeaveReason::Normal {
                self.out.push_back(Output::Remove {
                    conn,
                    msg: self.disconnected_msg(reason),
                });
            }
        }
        self.out.push_back(Output::Record(RecordOp::Leave {
            channel_id: self.channel_id,
            user: user.clone(),
            left_at: now.unix_ms,
            reason,
        }));
        self.out.push_back(Output::MemberCount(-1, Some(reason)));
        true
    }

    fn close_if_empty(&mut self, now: Now) {
        if self.started && self.members.is_empty() {
            self.finish(now, CloseReason::AllLeft);
        }
    }

    fn finish(&mut self, now: Now, reason: CloseReason) {
        self.closed = true;
        if self.started {
            self.out.push_back(Output::Record(RecordOp::End {
                channel_id: self.channel_id,
                ended_at: now.unix_ms,
                reason: reason.as_str().to_owned(),
            }));
        }
        self.out.push_back(Output::Closed(reason));
    }
}

#[cfg(test)]
mod tests;
