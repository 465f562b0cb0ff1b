//! One task per WebSocket connection.
//!
//! The task owns the socket and the connection's state (who it is, which room
//! it is in) and waits on: the next frame, the next message a room queued for
//! it, its idle deadline (hello, then heartbeat), and shutdown. Requests on one
//! connection are handled one at a time, in order.
//!
//! Ordering guarantee: a room queues events for this connection *before* it
//! answers the request that caused them, so before writing any response the
//! task first writes everything already queued. A client therefore sees the
//! events that happened before its request was applied, then the response,
//! then later events.
//!
//! No write waits for ever: a client that stops reading fills its TCP window,
//! and a write to it would block the task where it cannot see that its room
//! gave up on it. Every write races the kill signal (a room found the
//! outbox full) and the heartbeat timeout; either ends the connection.

use std::sync::Arc;
use tokio::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ratelimit::TokenBucket;
use crate::app::AppState;
use crate::auth::Identity;
use crate::ids::{ChannelId, ConnId};
use crate::model::Mode;
use crate::policy::authz::{self, Access, Ask};
use crate::protocol::{
    ChannelMembersOk, CreateOk, Frame, HelloOk, PROTOCOL_VERSION, Request, ServerMessage,
    parse_frame, parse_request,
};
use crate::room::{Act, By, Outbound, RoomHandle, Sink};
use crate::status::{Failure, Status};

/// WebSocket close codes used by the server (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Going away: the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation: rate abuse, or a client too slow to read its events.
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// No hello, or no heartbeat, in time.
    pub const IDLE_TIMEOUT: u16 = 4000;
}

struct Joined {
    handle: RoomHandle,
    channel_id: ChannelId,
}

/// Why the loop ended, and what to tell the client.
enum End {
    /// The client closed or the socket failed; nothing to send.
    Gone,
    /// A close frame with this code and reason; `why` labels the
    /// `connections_closed` metric.
    Close {
        code: u16,
        reason: &'static str,
        why: &'static str,
    },
}

impl End {
    fn close(code: u16, reason: &'static str, why: &'static str) -> End {
        End::Close { code, reason, why }
    }

    fn why(&self) -> &'static str {
        match self {
            End::Gone => "gone",
            End::Close { why, .. } => why,
        }
    }
}

/// Why a write did not finish.
enum Stalled {
    /// The socket failed or closed.
    Gone,
    /// A room found this connection's outbox full.
    Killed,
    /// One write took longer than the heartbeat timeout.
    TimedOut,
}

impl From<Stalled> for End {
    fn from(s: Stalled) -> End {
        match s {
            Stalled::Gone => End::Gone,
            Stalled::Killed => End::close(close_code::POLICY, TOO_SLOW, "too_slow"),
            Stalled::TimedOut => End::close(
                close_code::POLICY,
                "too slow: a write timed out",
                "write_timeout",
            ),
        }
    }
}

const TOO_SLOW: &str = "too slow: event queue full";

struct Connection {
    conn: ConnId,
    state: Arc<AppState>,
    identity: Option<Arc<Identity>>,
    /// The token hello was said with: a relay says hello with it again.
    token: Option<String>,
    /// In a cluster, once this connection's room lives on another node:
    /// every frame goes there and back unchanged, until the client is in no
    /// room there and asks for another (see `cluster::relay`).
    relay: Option<crate::cluster::relay::Relay>,
    /// This connection is a relay from another node (see [`serve`]).
    relayed: bool,
    room: Option<Joined>,
    ws: SplitSink<WebSocket, Message>,
    outbox: mpsc::Receiver<Outbound>,
    sink: Sink,
    /// Cancelled by a room that found the outbox full (see [`Sink::push`]).
    kill: CancellationToken,
    bucket: TokenBucket,
    rejected_in_a_row: u32,
    last_heard: Instant,
    opened: Instant,
    /// Ticks when a ban or revocation is added: this session may be one.
    bans: tokio::sync::watch::Receiver<u64>,
}

/// Runs a connection to its end. `permit` holds one of the server's
/// connection slots for as long as the connection lives.
/// `relayed`: the connection is another node's relay (cluster only): a
/// `create` on it was placed here by that node and opens here.
pub async fn serve(
    socket: WebSocket,
    state: Arc<AppState>,
    permit: OwnedSemaphorePermit,
    relayed: bool,
) {
    let conn = ConnId::next();
    let span = tracing::info_span!("conn", conn = %conn, user = tracing::field::Empty);
    async move {
        let (ws, stream) = socket.split();
        let (tx, outbox) = mpsc::channel(state.config.signal.outbound_queue.max(1));
        let kill = CancellationToken::new();
        let now = state.clock.instant();
        let mut connection = Connection {
            conn,
            identity: None,
            token: None,
            relay: None,
            relayed,
            room: None,
            ws,
            outbox,
            sink: Sink::new(tx, kill.clone()),
            kill: kill.clone(),
            bucket: TokenBucket::new(
                state.config.signal.rate_per_second,
                state.config.signal.rate_burst,
                now,
            ),
            rejected_in_a_row: 0,
            last_heard: now,
            opened: now,
            bans: state.rooms.bans().changed(),
            state,
        };
        connection.state.metrics.connections.inc();
        tracing::debug!("connected");
        connection.run(stream, kill).await;
        connection.state.metrics.connections.dec();
        drop(permit);
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn run(&mut self, mut stream: SplitStream<WebSocket>, kill: CancellationToken) {
        let shutdown = self.state.connections_closing.clone();
        let end = loop {
            let idle = self.idle_deadline();
            tokio::select! {
                biased;
                _ = kill.cancelled() => break End::close(close_code::POLICY, TOO_SLOW, "too_slow"),
                _ = shutdown.cancelled() => {
                    // Rooms have already told members why; pass on anything queued.
                    if let Err(stalled) = self.flush_outbox().await {
                        break stalled.into();
                    }
                    break End::close(close_code::GOING_AWAY, "server shutting down", "shutdown");
                }
                Ok(()) = self.bans.changed() => {
                    if let Some(end) = self.still_welcome().await {
                        break end;
                    }
                }
                Some(out) = self.outbox.recv() => {
                    if let Err(stalled) = self.deliver(out).await {
                        break stalled.into();
                    }
                }
                relayed = crate::cluster::relay::next(&mut self.relay) => match relayed {
                    Some(text) => {
                        if let Err(stalled) = self.write(Message::Text(Utf8Bytes::from(text))).await {
                            break stalled.into();
                        }
                    }
                    None => {
                        let node = self.relay.take().map(|r| r.node.clone()).unwrap_or_default();
                        tracing::info!(%node, "the room's node went away");
                        break End::close(close_code::GOING_AWAY, "the room's node went away; reconnect", "relay_lost");
                    }
                },
                _ = tokio::time::sleep_until(idle) => {
                    let (reason, why) = if self.identity.is_none() {
                        ("no hello in time", "no_hello")
                    } else {
                        ("heartbeat timeout", "heartbeat")
                    };
                    tracing::info!(why = reason, "closing idle connection");
                    break End::close(close_code::IDLE_TIMEOUT, reason, why);
                }
                frame = stream.next() => match frame {
                    None => break End::Gone,
                    Some(Err(e)) => {
                        if is_too_big(&e) {
                            self.reject_frame("too_big");
                            break End::close(close_code::TOO_BIG, "frame exceeds the size limit", "too_big");
                        }
                        tracing::debug!(error = %e, "socket error");
                        break End::Gone;
                    }
                    Some(Ok(msg)) => {
                        self.last_heard = self.state.clock.instant();
                        let text = match msg {
                            Message::Text(text) => Some(text),
                            Message::Binary(_) => None,
                            Message::Close(_) => break End::Gone,
                            // axum answers pings itself; both count as life.
                            Message::Ping(_) | Message::Pong(_) => continue,
                        };
                        if let Some(end) = self.on_frame(text.as_deref()).await {
                            break end;
                        }
                    }
                },
            }
        };
        self.state.metrics.connection_closed(end.why());
        if let Some(relay) = self.relay.take() {
            // The owner treats this as any dropped connection: the member's
            // reconnect grace starts there.
            relay.close().await;
        }
        // The room learns first: the goodbye below can take a while.
        if let Some(joined) = self.room.take() {
            joined.handle.disconnected(self.conn).await;
        }
        // A goodbye to a client that does not read could wait for ever; one
        // that reads slowly gets as long as a silent client would.
        let grace = self.state.config.signal.heartbeat_timeout;
        let goodbye = async {
            if let End::Close { code, reason, .. } = end {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                let _ = self.ws.send(Message::Close(Some(frame))).await;
            }
            let _ = self.ws.close().await;
        };
        let _ = tokio::time::timeout(grace, goodbye).await;
        tracing::debug!("disconnected");
    }

    fn idle_deadline(&self) -> Instant {
        let signal = &self.state.config.signal;
        if self.identity.is_none() {
            self.opened + signal.hello_timeout
        } else {
            self.last_heard + signal.heartbeat_timeout
        }
    }

    fn reject_frame(&self, reason: &'static str) {
        self.state.metrics.rejected_frame(reason);
    }

    /// Handles one data frame (`None` for a binary one); returns how to end
    /// the connection if it must end. Every data frame counts against the
    /// rate limit, whatever it holds.
    async fn on_frame(&mut self, text: Option<&str>) -> Option<End> {
        let started = self.state.clock.instant();
        let Some(text) = text else {
            if !self.bucket.try_take(started) {
                return self.rate_limited(None).await;
            }
            self.rejected_in_a_row = 0;
            self.reject_frame("binary");
            let reply = ServerMessage::error(
                None,
                Failure::new(
                    Status::BadRequest,
                    "binary frames are not part of the protocol; send JSON text",
                ),
            );
            return self.respond(reply).await.err().map(End::from);
        };
        let parsed = parse_frame(text);
        if !self.bucket.try_take(started) {
            let id = match &parsed {
                Ok(Frame::Request(env)) => Some(env.id),
                Ok(Frame::Heartbeat) => None,
                Err(m) => m.id,
            };
            return self.rate_limited(id).await;
        }
        self.rejected_in_a_row = 0;
        let parsed = match parsed {
            // Life is already counted; a relayed client's owner node keeps
            // a heartbeat deadline of its own, so it hears this too.
            Ok(Frame::Heartbeat) => return self.relay_frame(text).await,
            Ok(Frame::Request(env)) => Ok(env),
            Err(malformed) => Err(malformed),
        };

        if let (Some(relay), Ok(env)) = (self.relay.as_mut(), &parsed) {
            let enters = matches!(
                env.request,
                Request::Create { .. } | Request::Join { .. } | Request::Connect { .. }
            );
            // A room last found on the relay's node goes the same way
            // without asking Redis (if it moved since, that node routes the
            // request on: a second hop, never a wrong answer).
            let same_node = || {
                let room = entered_room(&env.request)?;
                self.state.cluster.as_ref()?.seen_on(&room)
            };
            if !(enters && relay.idle()) || same_node().as_deref() == Some(relay.node.as_str()) {
                relay.client_sent(env.id, &env.request);
                return self.relay_frame(text).await;
            }
            // In no room over the relay: this request is routed as if it
            // were the first (below), and keeps the relay only if it goes
            // to the same node.
        }
        let (reply, kind, code) = match parsed {
            Err(malformed) => {
                self.reject_frame("malformed");
                let failure = Failure::new(Status::BadRequest, malformed.message);
                (
                    ServerMessage::error(malformed.id, failure),
                    "malformed",
                    400,
                )
            }
            Ok(env) => {
                let kind = env.request.kind();
                match self.route(&env.request).await {
                    Ok(None) => self.let_relay_go().await,
                    Ok(Some(node)) => {
                        if let Some(relay) = self.relay.as_mut().filter(|r| r.node == node.id) {
                            relay.client_sent(env.id, &env.request);
                            return self.relay_frame(text).await;
                        }
                        self.let_relay_go().await;
                        return self.start_relay(&node, text, env.id, &env.request).await;
                    }
                    Err(failure) => {
                        let code = failure.status.code();
                        let reply = ServerMessage::error(Some(env.id), failure);
                        let result = self.respond(reply).await;
                        self.state.metrics.observe_request(
                            kind,
                            code,
                            started.elapsed().as_secs_f64(),
                        );
                        return result.err().map(End::from);
                    }
                }
                let (reply, code) = match self.handle(env.request).await {
                    Ok(data) => (ServerMessage::ok(env.id, data), Status::Ok.code()),
                    Err(failure) => {
                        let code = failure.status.code();
                        tracing::debug!(request = kind, code, message = %failure.message, "request refused");
                        (ServerMessage::error(Some(env.id), failure), code)
                    }
                };
                (reply, kind, code)
            }
        };
        let result = self.respond(reply).await;
        self.state
            .metrics
            .observe_request(kind, code, started.elapsed().as_secs_f64());
        result.err().map(End::from)
    }

    /// In a cluster: where a request that names a room is served. `None`:
    /// here (the room is here, or opens here, or does not exist); a node:
    /// relay the request there. A room whose node died is opened again
    /// here first, then joined here.
    async fn route(
        &mut self,
        request: &Request,
    ) -> Result<Option<crate::cluster::NodeInfo>, Failure> {
        use crate::cluster::claims::Route;
        let Some(cluster) = self.state.cluster.clone() else {
            return Ok(None);
        };
        // Fenced (see `cluster::fence`): this node's rooms may be another's
        // by now, so nothing is applied here until the heartbeat has renewed
        // the claims or closed the rooms.
        if self.identity.is_some()
            && !matches!(request, Request::Ping {})
            && cluster.claims_expired()
        {
            return Err(Failure::new(
                Status::Unavailable,
                "this node has lost touch with the cluster; reconnect, to any node",
            ));
        }
        if self.identity.is_none() || self.room.is_some() {
            return Ok(None);
        }
        let rooms = &self.state.rooms;
        let unavailable = |e: crate::room::claims::ClaimError| {
            Failure::from(crate::room::Error::ClusterUnavailable(e.to_string()))
        };
        let (room, route) = match request {
            Request::Create { room, .. } => {
                // Placed already, by the node that relayed it here.
                if self.relayed || rooms.get(room).is_some() {
                    return Ok(None);
                }
                match cluster.route_create(room).await {
                    Err(crate::room::claims::ClaimError::Taken(_)) => {
                        return Err(crate::room::Error::Taken(room.clone()).into());
                    }
                    other => (room.clone(), other.map_err(unavailable)?),
                }
            }
            Request::Join { room, .. } => {
                if rooms.get(room).is_some() {
                    return Ok(None);
                }
                (
                    room.clone(),
                    cluster.route_join(room).await.map_err(unavailable)?,
                )
            }
            Request::Connect {
                server, channel, ..
            } => {
                let room = crate::community::channel::room_name(*server, *channel);
                if rooms.get(&room).is_some() {
                    return Ok(None);
                }
                let route = cluster.route_channel(&room).await.map_err(unavailable)?;
                (room, route)
            }
            _ => return Ok(None),
        };
        match route {
            Route::Local => Ok(None),
            Route::Remote(node) => {
                cluster.saw(&room, &node.id);
                Ok(Some(node))
            }
            Route::Revive(meta) => match rooms.revive(room.clone(), meta).await {
                Ok(handle) => {
                    tracing::info!(room = %room, channel_id = %handle.channel_id(), "room opened again after its node was lost");
                    Ok(None)
                }
                // Another node revived it first: go there.
                Err(crate::room::Error::Taken(_)) => match cluster.route_join(&room).await {
                    Ok(Route::Remote(node)) => Ok(Some(node)),
                    Ok(_) => Ok(None),
                    Err(e) => Err(unavailable(e)),
                },
                Err(crate::room::Error::NoSuchRoom(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Opens a relay to `node` and passes `text` (the request that chose
    /// it) on; the answer comes back through the relay.
    async fn start_relay(
        &mut self,
        node: &crate::cluster::NodeInfo,
        text: &str,
        id: u64,
        request: &Request,
    ) -> Option<End> {
        let token = self.token.clone().unwrap_or_default();
        // Only a cluster node relays.
        let cluster = self.state.cluster.clone()?;
        match cluster.open_relay(node, &token).await {
            Ok(mut relay) => {
                relay.client_sent(id, request);
                tracing::debug!(node = %node.id, "relaying to the room's node");
                self.relay = Some(relay);
                self.relay_frame(text).await
            }
            Err(failure) => {
                let id = parse_request(text).ok().map(|e| e.id);
                let reply = ServerMessage::error(id, failure);
                self.respond(reply).await.err().map(End::from)
            }
        }
    }

    /// Closes a relay the client is in no room over: its next room is
    /// here, or on another node.
    async fn let_relay_go(&mut self) {
        if let Some(relay) = self.relay.take() {
            tracing::debug!(node = %relay.node, "relay no longer needed");
            relay.close().await;
        }
    }

    /// Passes a client frame to the relay.
    async fn relay_frame(&mut self, text: &str) -> Option<End> {
        let relay = self.relay.as_mut()?;
        if relay.send(text).await.is_err() {
            let node = self
                .relay
                .take()
                .map(|r| r.node.clone())
                .unwrap_or_default();
            tracing::info!(%node, "the room's node went away");
            return Some(End::close(
                close_code::GOING_AWAY,
                "the room's node went away; reconnect",
                "relay_lost",
            ));
        }
        None
    }

    /// Answers a frame over the rate with 429, or closes the connection once
    /// more than `rate_abuse_limit` frames in a row were over it.
    async fn rate_limited(&mut self, id: Option<u64>) -> Option<End> {
        self.rejected_in_a_row += 1;
        self.reject_frame("rate");
        if self.rejected_in_a_row > self.state.config.signal.rate_abuse_limit {
            tracing::warn!("closing connection for rate abuse");
            return Some(End::close(
                close_code::POLICY,
                "rate limit exceeded",
                "rate",
            ));
        }
        let reply = ServerMessage::error(
            id,
            Failure::new(Status::RateLimited, "too many requests; slow down"),
        );
        self.respond(reply).await.err().map(End::from)
    }

    async fn handle(&mut self, request: Request) -> Result<serde_json::Value, Failure> {
        if let Request::Hello { version, token } = &request {
            if self.identity.is_some() {
                return Err(Failure::new(Status::Conflict, "hello was already accepted"));
            }
            return self.hello(*version, token);
        }
        let Some(identity) = self.identity.clone() else {
            return Err(Failure::new(
                Status::Unauthorized,
                "send `hello` with a token first",
            ));
        };
        let act = match request {
            Request::Hello { .. } => {
                return Err(Failure::new(Status::Conflict, "hello was already accepted"));
            }
            Request::Ping {} => return Ok(serde_json::Value::Null),
            Request::Create {
                room,
                custom_info,
                policy,
            } => {
                let handle = self
                    .state
                    .rooms
                    .create(
                        room.clone(),
                        custom_info,
                        policy.as_deref(),
                        Some(&identity),
                    )
                    .await?;
                tracing::info!(room = %room, channel_id = %handle.channel_id(), "room created");
                return to_value(CreateOk {
                    room,
                    channel_id: handle.channel_id(),
                });
            }
            Request::Join { room, mode, role } => {
                if let Some(joined) = &self.room {
                    return Err(Failure::new(
                        Status::Conflict,
                        format!(
                            "already in room `{}`; leave it before joining another",
                            joined.handle.name()
                        ),
                    ));
                }
                // The token's room patterns answer before the room is looked
                // up: a name it does not cover tells nothing about the room.
                let access = Access {
                    room: room.as_str(),
                    identity: &identity,
                    community: None,
                    attr_lines: "",
                    ask: Ask::Join {
                        mode,
                        role,
                        members: 0,
                    },
                };
                authz::grants(&access, false)
                    .map_err(|d| self.state.rooms.refused_outside(&access, d))?;
                let handle = self.state.rooms.find(&room)?;
                let ok = handle
                    .join(self.conn, identity, mode, role, self.sink.clone())
                    .await?;
                self.room = Some(Joined {
                    channel_id: ok.channel_id,
                    handle,
                });
                return to_value(ok);
            }
            Request::Leave {} => {
                let joined = self.current_room()?;
                joined.handle.leave(self.conn).await?;
                self.room = None;
                return Ok(serde_json::Value::Null);
            }
            Request::SetRole { role, user } => Act::SetRole { target: user, role },
            Request::Mute { kind, muted, user } => Act::Mute {
                target: user,
                kind,
                muted,
            },
            Request::Kick { user, ban } => Act::Kick { target: user, ban },
            Request::MuteAll { kind, muted } => Act::MuteAll { kind, muted },
            Request::ShareScreen { on, user } => Act::ShareScreen { target: user, on },
            Request::Data { payload, to } => Act::Data { to, payload },
            Request::MediaStart {} => {
                let conn = self.conn;
                self.current_room()?.handle.media_start(conn).await?;
                return Ok(serde_json::json!({
                    "ice_servers": self.state.config.media.ice_servers,
                }));
            }
            Request::MediaAnswer { sdp } => {
                let conn = self.conn;
                self.current_room()?.handle.media_answer(conn, sdp).await?;
                return Ok(serde_json::Value::Null);
            }
            Request::IceCandidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                let conn = self.conn;
                let candidate = rtc::peer_connection::transport::RTCIceCandidateInit {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                    ..Default::default()
                };
                self.current_room()?
                    .handle
                    .ice_candidate(conn, candidate)
                    .await?;
                return Ok(serde_json::Value::Null);
            }
            Request::Connect {
                server,
                channel,
                mode,
            } => {
                if let Some(joined) = &self.room {
                    return Err(Failure::new(
                        Status::Conflict,
                        format!(
                            "already in room `{}`; leave it before connecting to a channel",
                            joined.handle.name()
                        ),
                    ));
                }
                // The community decides who connects, not the token's rooms.
                let (handle, ok) = crate::app::channels::connect(
                    &self.state.rooms,
                    &self.state.community,
                    (server, channel),
                    self.conn,
                    identity,
                    mode.unwrap_or(Mode::Video),
                    self.sink.clone(),
                )
                .await?;
                self.room = Some(Joined {
                    channel_id: ok.join.channel_id,
                    handle,
                });
                tracing::info!(%server, %channel, "connected to media channel");
                return to_value(ok);
            }
            Request::ChannelMembers { server, channel } => {
                let members = crate::app::channels::online_members(
                    &self.state.rooms,
                    &self.state.community,
                    server,
                    channel,
                    &identity.user,
                    identity.grants.admin,
                )
                .await?;
                return to_value(ChannelMembersOk {
                    server,
                    channel,
                    members,
                });
            }
        };
        self.current_room()?
            .handle
            .act(By::Member(self.conn), act)
            .await?;
        Ok(serde_json::Value::Null)
    }

    /// After a new ban or revocation: ends the session if it names this
    /// user (server-wide) or this token, removing it from its room first.
    async fn still_welcome(&mut self) -> Option<End> {
        let identity = self.identity.as_ref()?;
        let refusal = self.state.rooms.bans().refuses_session(
            &identity.user,
            identity.jti.as_deref(),
            self.state.clock.unix_ms(),
        )?;
        tracing::info!(reason = %refusal.reason, "session ended by a ban");
        if let Some(joined) = self.room.take() {
            let target = identity.user.clone();
            let kicked = joined
                .handle
                .act(
                    By::Admin(crate::ids::UserId::from("conclave")),
                    Act::Kick { target, ban: None },
                )
                .await;
            if let Err(e) = kicked {
                tracing::debug!(error = %e, "banned member already gone");
            }
        }
        Some(if refusal.status == Status::Unauthorized {
            End::close(close_code::POLICY, "token revoked", "revoked")
        } else {
            End::close(close_code::POLICY, "banned from this server", "banned")
        })
    }

    fn hello(&mut self, version: u32, token: &str) -> Result<serde_json::Value, Failure> {
        if version != PROTOCOL_VERSION {
            return Err(Failure::new(
                Status::VersionUnsupported,
                format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        let identity = self.state.auth.verify(token)?;
        if let Some(refusal) = self.state.rooms.bans().refuses_session(
            &identity.user,
            identity.jti.as_deref(),
            self.state.clock.unix_ms(),
        ) {
            return Err(Failure::new(refusal.status, refusal.reason));
        }
        tracing::Span::current().record("user", identity.user.as_str());
        tracing::debug!("hello accepted");
        if self.state.cluster.is_some() {
            self.token = Some(token.to_owned());
        }
        let config = &self.state.config;
        let ok = HelloOk {
            version: PROTOCOL_VERSION,
            server: format!("conclave/{}", env!("CARGO_PKG_VERSION")),
            user: identity.user.clone(),
            name: identity.name.clone(),
            heartbeat_interval_ms: config.signal.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: config.signal.heartbeat_timeout.as_millis() as u64,
            reconnect_grace_ms: config.rooms.reconnect_grace.as_millis() as u64,
            nodes: self
                .state
                .cluster
                .as_ref()
                .map(|c| c.signaling_urls())
                .unwrap_or_default(),
        };
        self.identity = Some(Arc::new(identity));
        to_value(ok)
    }

    fn current_room(&self) -> Result<&Joined, Failure> {
        self.room
            .as_ref()
            .ok_or_else(|| Failure::new(Status::NotFound, "not in a room"))
    }

    /// Writes one frame, unless the connection is killed or the write takes
    /// longer than the heartbeat timeout first.
    async fn write(&mut self, msg: Message) -> Result<(), Stalled> {
        let limit = self.state.config.signal.heartbeat_timeout;
        tokio::select! {
            biased;
            _ = self.kill.cancelled() => Err(Stalled::Killed),
            sent = tokio::time::timeout(limit, self.ws.send(msg)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Stalled::Gone),
                Err(_) => Err(Stalled::TimedOut),
            },
        }
    }

    /// Writes a room's message; a removal also ends our membership.
    async fn deliver(&mut self, out: Outbound) -> Result<(), Stalled> {
        let text = match out {
            Outbound::Text(text) => text,
            Outbound::Removed { channel_id, text } => {
                if self
                    .room
                    .as_ref()
                    .is_some_and(|j| j.channel_id == channel_id)
                {
                    self.room = None;
                }
                text
            }
        };
        self.write(Message::Text(Utf8Bytes::from(&*text))).await
    }

    async fn flush_outbox(&mut self) -> Result<(), Stalled> {
        while let Ok(out) = self.outbox.try_recv() {
            self.deliver(out).await?;
        }
        Ok(())
    }

    /// Writes a response after everything rooms queued before it.
    async fn respond(&mut self, msg: ServerMessage) -> Result<(), Stalled> {
        self.flush_outbox().await?;
        self.write(Message::Text(Utf8Bytes::from(msg.to_json())))
            .await
    }
}

fn to_value(data: impl serde::Serialize) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(data).map_err(|e| Failure::new(Status::Internal, e.to_string()))
}

/// Whether a read error is tungstenite refusing an oversized frame or message.
fn is_too_big(e: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(err) = source {
        if let Some(t) = err.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(t, tokio_tungstenite::tungstenite::Error::Capacity(_));
        }
        source = err.source();
    }
    false
}

/// The existing room a request asks to enter: `join`'s, or a channel's for
/// `connect` (a `create` is placed, not found).
fn entered_room(request: &Request) -> Option<crate::ids::RoomName> {
    match request {
        Request::Join { room, .. } => Some(room.clone()),
        Request::Connect {
            server, channel, ..
        } => Some(crate::community::channel::room_name(*server, *channel)),
        _ => None,
    }
}
