//! A Rust client for the signaling protocol.
//!
//! The same types the server uses, over a real WebSocket: integration tests,
//! benchmarks, bots and the load tester all speak through it.
//! [`Participant`] puts signaling and WebRTC media behind one handle.
//!
//! ```no_run
//! # async fn demo() -> Result<(), conclave::client::ClientError> {
//! use conclave::client::SignalClient;
//! use conclave::protocol::Mode;
//! let mut client = SignalClient::connect("ws://127.0.0.1:7880/ws").await?;
//! client.hello("<token>").await?;
//! client.create("lobby", "welcome").await?;
//! let joined = client.join("lobby", Mode::Audio, None).await?;
//! println!("in channel {} with {} members", joined.channel_id, joined.members.len());
//! while let Some(event) = client.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

pub mod media;
mod participant;

pub use participant::{Participant, ParticipantOptions};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::community::{CommunityChannelId, ServerId};
use crate::ids::{RoomName, UserId};
use crate::model::{MediaKind, Mode, Role};
use crate::protocol::{
    ChannelMembersOk, ConnectOk, CreateOk, Envelope, HelloOk, JoinOk, PROTOCOL_VERSION, Request,
    ServerMessage,
};
use crate::status::{Failure, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the connection is closed{}", .0.as_ref().map(|(c, r)| format!(" ({c}: {r})")).unwrap_or_default())]
    Closed(Option<(u16, String)>),
    #[error("the server refused: {0}")]
    Refused(Failure),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("media: {0}")]
    Media(String),
}

impl ClientError {
    /// The protocol status of a refusal, if this is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Refused(f) => Some(f.status),
            _ => None,
        }
    }

    /// The decision-log id a refusal names (`GET /api/decisions/{id}`).
    pub fn decision(&self) -> Option<&str> {
        match self {
            ClientError::Refused(f) => f.decision.as_deref(),
            _ => None,
        }
    }
}

/// Requests waiting for their response, by id; `None` once the connection
/// is closed, so a request made after that fails at once instead of waiting
/// for an answer that cannot come.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<ServerMessage>>>>>;

/// How the client behaves on its own.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Send `ping` at the interval the server asks for in `hello`.
    pub heartbeat: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { heartbeat: true }
    }
}

/// A signaling connection.
pub struct SignalClient {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: mpsc::UnboundedReceiver<ServerMessage>,
    close: Arc<Mutex<Option<(u16, String)>>>,
    next_id: Arc<AtomicU64>,
    options: ClientOptions,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The socket's reader and writer; dropping the client aborts them, which
    /// drops the TCP connection at once.
    io: Vec<tokio::task::JoinHandle<()>>,
}

impl SignalClient {
    pub async fn connect(url: &str) -> Result<SignalClient, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to the first of `urls` that answers, in order: the nodes of
    /// a cluster, any of which serves any room. Returns which one it was.
    pub async fn connect_first(
        urls: &[String],
        options: ClientOptions,
    ) -> Result<(SignalClient, usize), ClientError> {
        let mut last = ClientError::Connect("no URL to connect to".into());
        for (i, url) in urls.iter().enumerate() {
            match Self::connect_with(url, options.clone()).await {
                Ok(client) => return Ok((client, i)),
                Err(e) => {
                    tracing::debug!(%url, error = %e, "cannot connect; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    pub async fn connect_with(
        url: &str,
        options: ClientOptions,
    ) -> Result<SignalClient, ClientError> {
        // No Nagle: requests are small and latency-bound (see server.rs).
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(crate::protocol::WS_READ_BUFFER);
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let (mut write, mut read) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (events_tx, events) = mpsc::unbounded_channel();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let close: Arc<Mutex<Option<(u16, String)>>> = Arc::default();

        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let closing = matches!(msg, Message::Close(_));
                if write.send(msg).await.is_err() || closing {
                    break;
                }
            }
        });

        let reader_pending = pending.clone();
        let reader_close = close.clone();
        let reader = tokio::spawn(async move {
            while let Some(frame) = read.next().await {
                let text = match frame {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(frame)) => {
                        if let Some(CloseFrame { code, reason }) = frame {
                            *reader_close.lock().expect("close slot") =
                                Some((u16::from(code), reason.to_string()));
                        }
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else {
                    tracing::warn!(%text, "unreadable message from server");
                    continue;
                };
                if let ServerMessage::Response { id: Some(id), .. } = &msg {
                    let waiter = reader_pending
                        .lock()
                        .expect("pending map")
                        .as_mut()
                        .and_then(|p| p.remove(id));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(msg);
                        continue;
                    }
                }
                if events_tx.send(msg).is_err() {
                    break;
                }
            }
            // Fail every request still waiting, and every one made later.
            reader_pending.lock().expect("pending map").take();
        });

        Ok(SignalClient {
            out,
            pending,
            events,
            close,
            next_id: Arc::new(AtomicU64::new(1)),
            options,
            heartbeat: None,
            io: vec![reader, writer],
        })
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.close.lock().expect("close slot").clone())
    }

    /// Sends a request and waits for its response's `data`.
    pub async fn request(&self, request: Request) -> Result<Value, ClientError> {
        request_on(&self.out, &self.pending, &self.next_id, request)
            .await
            .map_err(|e| match e {
                ClientError::Closed(None) => self.closed_error(),
                other => other,
            })
    }

    async fn request_as<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        let data = self.request(request).await?;
        serde_json::from_value(data).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Authenticates; starts the heartbeat unless disabled.
    pub async fn hello(&mut self, token: &str) -> Result<HelloOk, ClientError> {
        let ok: HelloOk = self
            .request_as(Request::Hello {
                version: PROTOCOL_VERSION,
                token: token.to_owned(),
            })
            .await?;
        if self.options.heartbeat && self.heartbeat.is_none() {
            let interval = Duration::from_millis(ok.heartbeat_interval_ms.max(100));
            let out = self.out.clone();
            self.heartbeat = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    // A ping without an id: the server counts it as life and
                    // answers nothing (`ping()` asks for an answer).
                    let beat = Message::Text(r#"{"type":"ping"}"#.into());
                    if out.send(beat).is_err() {
                        break;
                    }
                }
            }));
        }
        Ok(ok)
    }

    pub async fn create(&self, room: &str, custom_info: &str) -> Result<CreateOk, ClientError> {
        self.create_with_policy(room, custom_info, None).await
    }

    /// Creates a room bound to the named room policy.
    pub async fn create_with_policy(
        &self,
        room: &str,
        custom_info: &str,
        policy: Option<&str>,
    ) -> Result<CreateOk, ClientError> {
        self.request_as(Request::Create {
            room: room_name(room)?,
            custom_info: custom_info.to_owned(),
            policy: policy.map(str::to_owned),
        })
        .await
    }

    /// Mutes (or unmutes) everyone else.
    pub async fn mute_all(&self, kind: MediaKind, muted: bool) -> Result<(), ClientError> {
        self.request(Request::MuteAll { kind, muted })
            .await
            .map(drop)
    }

    /// Starts or stops sharing one's screen, or stops `user`'s.
    pub async fn share_screen(&self, on: bool, user: Option<&str>) -> Result<(), ClientError> {
        self.request(Request::ShareScreen {
            on,
            user: user.map(UserId::from),
        })
        .await
        .map(drop)
    }

    /// Sends a data message to everyone else, or to `to`.
    pub async fn send_data(&self, payload: Value, to: Option<&str>) -> Result<(), ClientError> {
        self.request(Request::Data {
            payload,
            to: to.map(UserId::from),
        })
        .await
        .map(drop)
    }

    pub async fn join(
        &self,
        room: &str,
        mode: Mode,
        role: Option<Role>,
    ) -> Result<JoinOk, ClientError> {
        self.request_as(Request::Join {
            room: room_name(room)?,
            mode,
            role,
        })
        .await
    }

    /// Connects to a community media channel (joins its room).
    pub async fn connect_channel(
        &self,
        server: u64,
        channel: u64,
        mode: Option<Mode>,
    ) -> Result<ConnectOk, ClientError> {
        self.request_as(Request::Connect {
            server: ServerId(server),
            channel: CommunityChannelId(channel),
            mode,
        })
        .await
    }

    /// Who is connected to a community media channel.
    pub async fn channel_members(
        &self,
        server: u64,
        channel: u64,
    ) -> Result<ChannelMembersOk, ClientError> {
        self.request_as(Request::ChannelMembers {
            server: ServerId(server),
            channel: CommunityChannelId(channel),
        })
        .await
    }

    pub async fn leave(&self) -> Result<(), ClientError> {
        self.request(Request::Leave {}).await.map(drop)
    }

    pub async fn set_role(&self, role: Role, user: Option<&str>) -> Result<(), ClientError> {
        self.request(Request::SetRole {
            role,
            user: user.map(UserId::from),
        })
        .await
        .map(drop)
    }

    pub async fn mute(
        &self,
        kind: MediaKind,
        muted: bool,
        user: Option<&str>,
    ) -> Result<(), ClientError> {
        self.request(Request::Mute {
            kind,
            muted,
            user: user.map(UserId::from),
        })
        .await
        .map(drop)
    }

    pub async fn kick(&self, user: &str) -> Result<(), ClientError> {
        self.request(Request::Kick {
            user: user.into(),
            ban: None,
        })
        .await
        .map(drop)
    }

    /// Removes `user` and keeps them out: for `terms.seconds`, or for as
    /// long as the room is open.
    pub async fn kick_and_ban(
        &self,
        user: &str,
        terms: crate::model::BanTerms,
    ) -> Result<(), ClientError> {
        self.request(Request::Kick {
            user: user.into(),
            ban: Some(terms),
        })
        .await
        .map(drop)
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.request(Request::Ping {}).await.map(drop)
    }

    /// Sends a frame as it is, for probing the server with bad input. Any
    /// response arrives through [`SignalClient::next_event`].
    pub fn send_raw(&self, frame: Message) -> Result<(), ClientError> {
        self.out.send(frame).map_err(|_| self.closed_error())
    }

    /// The next event (or response to a raw frame); `None` once the
    /// connection has closed.
    pub async fn next_event(&mut self) -> Option<ServerMessage> {
        self.events.recv().await
    }

    /// Takes the stream of events for another task to read;
    /// [`SignalClient::next_event`] returns `None` afterwards. Requests keep
    /// working: their responses never pass through this stream.
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<ServerMessage> {
        let (_, closed) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.events, closed)
    }

    /// The close code and reason the server sent, once it has closed.
    pub fn close_frame(&self) -> Option<(u16, String)> {
        self.close.lock().expect("close slot").clone()
    }

    /// Stops the heartbeat, so the server will see this client go silent.
    pub fn stop_heartbeat(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }

    /// Closes the connection politely: a close frame, then the socket ends
    /// once the server answers it.
    pub fn close(mut self) {
        self.stop_heartbeat();
        let _ = self.out.send(Message::Close(None));
        // Let the reader and writer finish the closing handshake.
        self.io.clear();
    }
}

impl Drop for SignalClient {
    /// Dropping without [`SignalClient::close`] cuts the connection, as a
    /// network failure would.
    fn drop(&mut self) {
        self.stop_heartbeat();
        for task in &self.io {
            task.abort();
        }
    }
}

async fn request_on(
    out: &mpsc::UnboundedSender<Message>,
    pending: &Pending,
    next_id: &AtomicU64,
    request: Request,
) -> Result<Value, ClientError> {
    let id = next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    match pending.lock().expect("pending map").as_mut() {
        Some(waiting) => waiting.insert(id, tx),
        None => return Err(ClientError::Closed(None)),
    };
    let text = serde_json::to_string(&Envelope { id, request })
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    if out.send(Message::Text(text.into())).is_err() {
        if let Some(waiting) = pending.lock().expect("pending map").as_mut() {
            waiting.remove(&id);
        }
        return Err(ClientError::Closed(None));
    }
    match rx.await {
        Ok(ServerMessage::Response {
            code: Status::Ok,
            data,
            ..
        }) => Ok(data),
        Ok(ServerMessage::Response {
            code,
            message,
            data,
            ..
        }) => {
            let decision = data["decision"].as_str().map(str::to_owned);
            Err(ClientError::Refused(
                Failure::new(code, message.unwrap_or_default()).decided(decision),
            ))
        }
        Ok(other) => Err(ClientError::Protocol(format!(
            "expected a response, got {other:?}"
        ))),
        Err(_) => Err(ClientError::Closed(None)),
    }
}

fn room_name(room: &str) -> Result<RoomName, ClientError> {
    RoomName::new(room).map_err(|e| ClientError::Invalid(e.to_string()))
}
