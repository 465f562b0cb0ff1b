//! A whole participant: signaling and WebRTC in one handle, the way a
//! browser tab is one. Bots, the load tester and tests embed this.
//!
//! Joining connects, authenticates, creates the room if asked, joins, starts
//! media and waits until the peer connection is up. From then on a task
//! answers every renegotiation the server offers, so tracks that come and go
//! need nothing from the caller; every other event reaches
//! [`Participant::next_event`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), conclave::client::ClientError> {
//! use conclave::client::{Participant, ParticipantOptions};
//! let options = ParticipantOptions::new("ws://127.0.0.1:7880/ws", "<token>", "lobby");
//! let mut me = Participant::join(options).await?;
//! me.send_audio(&[0xf8, 0xff, 0xfe], 960, 127).await?; // one Opus frame
//! while let Some(event) = me.next_event().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::media::{MediaOptions, MediaSession, Received};
use super::{ClientError, ClientOptions, SignalClient};
use crate::model::{MediaKind, Mode, Role};
use crate::protocol::{HelloOk, JoinOk, Request, ServerMessage};
use crate::status::Status;

/// How to join.
#[derive(Clone, Debug)]
pub struct ParticipantOptions {
    /// The signaling URL, `ws://host:port/ws`.
    pub url: String,
    /// Other nodes of a cluster, tried in order when `url` cannot be
    /// reached (every node serves every room).
    pub also: Vec<String>,
    pub token: String,
    pub room: String,
    pub mode: Mode,
    /// The role to ask for; `None` takes the server's default.
    pub role: Option<Role>,
    /// Create the room first if it does not exist (needs the create grant).
    pub create: bool,
    /// Start WebRTC media. Without it the participant only signals.
    pub media: bool,
    /// Publish audio (when the role allows).
    pub publish_audio: bool,
    /// Publish video (video mode only).
    pub publish_video: bool,
    /// Local UDP address for ICE.
    pub bind: SocketAddr,
    /// How long joining (connect to DTLS up) may take.
    pub timeout: Duration,
    /// Where to put the cluster's signaling URLs as soon as `hello` lists
    /// them (`HelloOk::nodes`), before the join completes: a join cut short
    /// by its node dying still leaves the caller somewhere else to go.
    pub nodes_seen: Option<Arc<std::sync::Mutex<Vec<String>>>>,
}

impl ParticipantOptions {
    /// An audio interactor that creates the room if needed and publishes audio.
    pub fn new(url: &str, token: &str, room: &str) -> ParticipantOptions {
        ParticipantOptions {
            url: url.to_owned(),
            also: Vec::new(),
            token: token.to_owned(),
            room: room.to_owned(),
            mode: Mode::Audio,
            role: None,
            create: true,
            media: true,
            publish_audio: true,
            publish_video: false,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            timeout: Duration::from_secs(10),
            nodes_seen: None,
        }
    }
}

/// A member of one room with signaling and media.
pub struct Participant {
    client: Arc<SignalClient>,
    media: Option<Arc<MediaSession>>,
    events: mpsc::UnboundedReceiver<ServerMessage>,
    hello: HelloOk,
    joined: JoinOk,
    pump: tokio::task::JoinHandle<()>,
}

impl Participant {
    /// Connects, joins and (unless disabled) brings media up.
    pub async fn join(options: ParticipantOptions) -> Result<Participant, ClientError> {
        let within = options.timeout;
        match tokio::time::timeout(within, Self::join_inner(options)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Media(format!(
                "joining took longer than {within:?}"
            ))),
        }
    }

    async fn join_inner(options: ParticipantOptions) -> Result<Participant, ClientError> {
        let urls: Vec<String> = std::iter::once(options.url.clone())
            .chain(options.also.iter().cloned())
            .collect();
        let (mut client, _) = SignalClient::connect_first(&urls, ClientOptions::default()).await?;
        let hello = client.hello(&options.token).await?;
        if let Some(seen) = &options.nodes_seen {
            seen.lock().expect("nodes seen").clone_from(&hello.nodes);
        }
        if options.create
            && let Err(e) = client.create(&options.room, "").await
            && e.status() != Some(Status::Conflict)
        {
            return Err(e);
        }
        let joined = client
            .join(&options.room, options.mode, options.role)
            .await?;
        let incoming = client.take_events();
        let client = Arc::new(client);
        let media = if options.media {
            // An audience member gets no publish slot, and a send-only
            // transceiver without one would pair with the first track the
            // server offers (JSEP matches m-lines by kind) and swallow it.
            let publishes = joined.role == Role::Interactor;
            let session = MediaSession::new(MediaOptions {
                audio: options.publish_audio && publishes,
                video: options.publish_video && publishes && options.mode == Mode::Video,
                bind: options.bind,
            })
            .await?;
            Some(Arc::new(session))
        } else {
            None
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(pump(incoming, events_tx, client.clone(), media.clone()));
        if let Some(media) = &media {
            client.request(Request::MediaStart {}).await?;
            media.connected(options.timeout).await?;
        }
        Ok(Participant {
            client,
            media,
            events,
            hello,
            joined,
            pump,
        })
    }

    /// What the server said to `hello`: who the token names.
    pub fn hello(&self) -> &HelloOk {
        &self.hello
    }

    /// The join response: room, role, members at the time of joining.
    pub fn joined(&self) -> &JoinOk {
        &self.joined
    }

    /// The signaling connection, for any request.
    pub fn signal(&self) -> &SignalClient {
        &self.client
    }

    /// The media session, if media was started.
    pub fn media(&self) -> Option<&MediaSession> {
        self.media.as_deref()
    }

    /// The next event (renegotiation offers included, already answered);
    /// `None` once the connection has closed.
    pub async fn next_event(&mut self) -> Option<ServerMessage> {
        self.events.recv().await
    }

    /// An event that has already arrived, without waiting.
    pub fn try_event(&mut self) -> Option<ServerMessage> {
        self.events.try_recv().ok()
    }

    /// The media session as a shared handle, for tasks that send or
    /// receive on their own.
    pub fn media_handle(&self) -> Option<Arc<MediaSession>> {
        self.media.clone()
    }

    fn session(&self) -> Result<&MediaSession, ClientError> {
        self.media
            .as_deref()
            .ok_or_else(|| ClientError::Media("this participant has no media".into()))
    }

    /// Publishes one Opus frame; `timestamp` in 48 kHz units, `level` as
    /// RFC 6464 (0 loudest .. 127 silent).
    pub async fn send_audio(
        &self,
        payload: &[u8],
        timestamp: u32,
        level: u8,
    ) -> Result<(), ClientError> {
        self.session()?.send_audio(payload, timestamp, level).await
    }

    /// The next packet from another member, or `None` after `within`.
    pub async fn next_packet(&self, within: Duration) -> Option<Received> {
        self.media.as_ref()?.next_packet(within).await
    }

    pub async fn mute(
        &self,
        kind: MediaKind,
        muted: bool,
        user: Option<&str>,
    ) -> Result<(), ClientError> {
        self.client.mute(kind, muted, user).await
    }

    pub async fn set_role(&self, role: Role, user: Option<&str>) -> Result<(), ClientError> {
        self.client.set_role(role, user).await
    }

    pub async fn kick(&self, user: &str) -> Result<(), ClientError> {
        self.client.kick(user).await
    }

    pub async fn send_data(
        &self,
        payload: serde_json::Value,
        to: Option<&str>,
    ) -> Result<(), ClientError> {
        self.client.send_data(payload, to).await
    }

    /// Leaves the room and closes media and signaling.
    pub async fn leave(self) -> Result<(), ClientError> {
        let left = self.client.leave().await;
        if let Some(media) = &self.media {
            media.close().await;
        }
        left
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Answers offers as they come and passes every event on.
async fn pump(
    mut incoming: mpsc::UnboundedReceiver<ServerMessage>,
    events: mpsc::UnboundedSender<ServerMessage>,
    client: Arc<SignalClient>,
    media: Option<Arc<MediaSession>>,
) {
    while let Some(event) = incoming.recv().await {
        if let (ServerMessage::MediaOffer { sdp, .. }, Some(media)) = (&event, &media)
            && let Err(e) = media.accept_offer(&client, sdp.clone()).await
        {
            tracing::warn!(error = %e, "could not answer the server's offer");
        }
        if events.send(event).is_err() {
            break;
        }
    }
}
