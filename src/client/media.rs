//! WebRTC for the Rust client, on webrtc-rs's async `webrtc` crate: one peer
//! connection per membership, answering the server's offers.
//!
//! ```no_run
//! # async fn demo(mut client: conclave::client::SignalClient) -> Result<(), conclave::client::ClientError> {
//! use conclave::client::media::{MediaOptions, MediaSession};
//! use conclave::protocol::ServerMessage;
//!
//! let mut media = MediaSession::new(MediaOptions::default()).await?;
//! client.request(conclave::protocol::Request::MediaStart {}).await?;
//! while let Some(event) = client.next_event().await {
//!     if let ServerMessage::MediaOffer { sdp, .. } = event {
//!         media.accept_offer(&client, sdp).await?;
//!         break;
//!     }
//! }
//! // media.send_audio(...) publishes; media.next_packet() receives.
//! # Ok(()) }
//! ```
//!
//! Keyframe requests travel both ways: [`MediaSession::request_keyframe`]
//! asks for one on another member's video (the server relays it to the
//! publisher, throttled), and [`MediaSession::keyframe_requests`] counts the
//! ones the server relays about this session's own video.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Mutex, mpsc, watch};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};

use super::{ClientError, SignalClient};
use crate::ids::UserId;
use crate::media::codec;
use crate::model::MediaKind;
use crate::protocol::Request;

/// How often the client checks ICE consent on its selected pair (RFC 7675).
pub const CONSENT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence from the server this long and the connection is disconnected:
/// two answers missed, and half an interval for the third.
const CONSENT_SILENT: Duration = Duration::from_millis(12_500);
/// Silence this long and it has failed: consent expires (RFC 7675 §5.1).
const CONSENT_EXPIRES: Duration = Duration::from_secs(30);

/// What a session publishes and where it listens.
#[derive(Clone, Debug)]
pub struct MediaOptions {
    /// Offer an audio track to publish (used when the server gives a slot).
    pub audio: bool,
    /// Offer a video track to publish (video-mode joins only).
    pub video: bool,
    /// Local UDP address for ICE; port 0 picks one.
    pub bind: SocketAddr,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            audio: true,
            video: false,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

/// One RTP packet received from another member.
#[derive(Clone, Debug)]
pub struct Received {
    /// The member whose track it is (the server names streams by user id).
    pub user: UserId,
    pub kind: MediaKind,
    pub packet: rtc::rtp::Packet,
    pub at: Instant,
}

/// A peer connection to the server for one membership.
pub struct MediaSession {
    pc: Arc<dyn PeerConnection>,
    audio: Option<(Arc<TrackLocalStaticRTP>, u32)>,
    video: Option<(Arc<TrackLocalStaticRTP>, u32)>,
    received: Mutex<mpsc::Receiver<Received>>,
    connected: watch::Receiver<RTCPeerConnectionState>,
    audio_seq: std::sync::atomic::AtomicU16,
    remote: RemoteTracks,
    keyframe_requests: watch::Receiver<u64>,
}

/// Other members' tracks, for writing feedback about them. A std mutex:
/// it is held for a map lookup or insert only, never across an await.
type RemoteTracks = Arc<std::sync::Mutex<HashMap<(UserId, MediaKind), Arc<dyn TrackRemote>>>>;

struct Handler {
    packets: mpsc::Sender<Received>,
    state: watch::Sender<RTCPeerConnectionState>,
    remote: RemoteTracks,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let user = UserId::from(track.stream_id().await.as_str());
        let kind = match track.kind().await {
            RtpCodecKind::Video => MediaKind::Video,
            _ => MediaKind::Audio,
        };
        if let Ok(mut remote) = self.remote.lock() {
            remote.insert((user.clone(), kind), track.clone());
        }
        let packets = self.packets.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let received = Received {
                        user: user.clone(),
                        kind,
                        packet,
                        at: Instant::now(),
                    };
                    // A reader that fell behind loses packets, like a jitter
                    // buffer overflowing; the connection keeps going.
                    let _ = packets.try_send(received);
                }
            }
        });
    }
}

impl MediaSession {
    /// Builds the peer connection; nothing is sent until an offer is accepted.
    pub async fn new(options: MediaOptions) -> Result<MediaSession, ClientError> {
        MediaSession::with_interceptors(options, |registry| registry).await
    }

    /// [`MediaSession::new`] with interceptors of the caller's added to the
    /// RTP/RTCP chain (statistics, or loss and forgery in tests).
    pub async fn with_interceptors(
        options: MediaOptions,
        extend: impl FnOnce(Registry) -> Registry,
    ) -> Result<MediaSession, ClientError> {
        let (media, registry) = codec::engine().map_err(rtc_error)?;
        let registry = extend(registry);
        let (packets, received) = mpsc::channel(4096);
        let (state, connected) = watch::channel(RTCPeerConnectionState::New);
        let remote = RemoteTracks::default();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(
                // The server is ICE-lite with one candidate per port: the only
                // question is whether its address answers, so check at a
                // brisk pace (70 x 20 ms keeps the usual 1.4 s budget) and
                // nominate a working host pair at once.
                rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder::new()
                    .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(70))
                    .with_host_acceptance_min_wait(Some(Duration::ZERO))
                    // Take the DTLS client side, as browsers do.
                    .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Client)
                    // Consent every 5 s, as RFC 7675 asks (and Firefox and
                    // aiortc do), not rtc's 2 s: for an idle member the
                    // checks are nearly all its traffic, and the server pays
                    // for each. With an answer only every 5 s, silence means
                    // trouble after two missed ones, not rtc's 5 s, and
                    // failure at 30 s, consent's own limit (rtc counts the
                    // failed timeout from the disconnected one).
                    .with_ice_timeouts(
                        Some(CONSENT_SILENT),
                        Some(CONSENT_EXPIRES - CONSENT_SILENT),
                        Some(CONSENT_INTERVAL),
                    )
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                packets,
                state,
                remote: remote.clone(),
            }))
            .with_udp_addrs(vec![options.bind])
            .build()
            .await
            .map_err(rtc_error)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let (keyframes_tx, keyframe_requests) = watch::channel(0u64);
        let mut session = MediaSession {
            pc,
            audio: None,
            video: None,
            received: Mutex::new(received),
            connected,
            audio_seq: std::sync::atomic::AtomicU16::new(rand::random()),
            remote,
            keyframe_requests,
        };
        // Sendonly transceivers made before the first offer pair up with the
        // server's receive slots of the same kind (JSEP's matching rule).
        if options.audio {
            session.audio = Some(
                session
                    .add_publish(RtpCodecKind::Audio, codec::opus())
                    .await?,
            );
        }
        if options.video {
            session.video = Some(
                session
                    .add_publish(RtpCodecKind::Video, codec::vp8())
                    .await?,
            );
        }
        if let Some((track, _)) = &session.video {
            // Bound to the peer connection by now (when the transceiver was
            // added); the loop ends when the peer connection closes.
            let track = track.clone();
            tokio::spawn(async move {
                while let Some(event) = track.poll().await {
                    let TrackLocalEvent::OnRtcpPacket(packets) = event else {
                        continue;
                    };
                    let asks = packets
                        .iter()
                        .filter(|p| {
                            let any = p.as_any();
                            any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                        })
                        .count() as u64;
                    if asks > 0 {
                        keyframes_tx.send_modify(|n| *n += asks);
                    }
                }
            });
        }
        Ok(session)
    }

    async fn add_publish(
        &self,
        kind: RtpCodecKind,
        codec: RTCRtpCodecParameters,
    ) -> Result<(Arc<TrackLocalStaticRTP>, u32), ClientError> {
        let id = format!("local-{kind}");
        let ssrc = rand::random::<u32>();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "local".to_owned(),
            id.clone(),
            id,
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.rtp_codec,
                ..Default::default()
            }],
        )));
        let local: Arc<dyn TrackLocal> = track.clone();
        self.pc
            .add_transceiver_from_track(
                local,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await
            .map_err(rtc_error)?;
        Ok((track, ssrc))
    }

    /// Answers a `media_offer` and sends the answer to the server.
    pub async fn accept_offer(
        &self,
        client: &SignalClient,
        sdp: String,
    ) -> Result<(), ClientError> {
        let sdp = self.answer(sdp).await?;
        client.request(Request::MediaAnswer { sdp }).await?;
        Ok(())
    }

    /// Answers an offer and returns the answer, for a server that takes it
    /// some other way than conclave's `media_answer` (the benchmarks drive
    /// Janus with this client).
    pub async fn answer(&self, sdp: String) -> Result<String, ClientError> {
        let offer = RTCSessionDescription::offer(sdp).map_err(rtc_error)?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(rtc_error)?;
        let answer = self.pc.create_answer(None).await.map_err(rtc_error)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_error)?;
        self.local_sdp().await
    }

    /// Offers this session's own tracks, for a server where the client
    /// offers (conclave always offers itself; Janus's publishers do not).
    pub async fn offer(&self) -> Result<String, ClientError> {
        let offer = self.pc.create_offer(None).await.map_err(rtc_error)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_error)?;
        self.local_sdp().await
    }

    /// Takes the server's answer to [`MediaSession::offer`].
    pub async fn accept_answer(&self, sdp: String) -> Result<(), ClientError> {
        let answer = RTCSessionDescription::answer(sdp).map_err(rtc_error)?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(rtc_error)
    }

    async fn local_sdp(&self) -> Result<String, ClientError> {
        Ok(self
            .pc
            .local_description()
            .await
            .ok_or_else(|| ClientError::Media("no local description".into()))?
            .sdp)
    }

    /// Waits until DTLS is up and media can flow.
    pub async fn connected(&self, within: Duration) -> Result<(), ClientError> {
        let mut state = self.connected.clone();
        let wait = state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed
            )
        });
        match tokio::time::timeout(within, wait).await {
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
            Ok(_) => Err(ClientError::Media("peer connection failed".into())),
            Err(_) => Err(ClientError::Media(format!(
                "peer connection not connected within {within:?}"
            ))),
        }
    }

    /// Sends one audio packet (an Opus frame, or any payload for tests) with
    /// `timestamp` in 48 kHz units and an RFC 6464 `level` (0 loudest .. 127 silent).
    pub async fn send_audio(
        &self,
        payload: &[u8],
        timestamp: u32,
        level: u8,
    ) -> Result<(), ClientError> {
        let (track, ssrc) = self
            .audio
            .as_ref()
            .ok_or_else(|| ClientError::Media("this session publishes no audio".into()))?;
        let seq = self
            .audio_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: codec::OPUS_PT,
                ssrc: *ssrc,
                sequence_number: seq,
                timestamp,
                marker: false,
                ..Default::default()
            },
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        let level = AudioLevelExtension {
            level: level.min(127),
            voice: level < 127,
        };
        track
            .write_rtp_with_extensions(
                packet,
                &[rtc::rtp::extension::HeaderExtension::AudioLevel(level)],
            )
            .await
            .map_err(rtc_error)
    }

    /// Sends one video RTP packet as given (payload type and sequence are set here).
    pub async fn send_video(&self, mut packet: rtc::rtp::Packet) -> Result<(), ClientError> {
        let (track, ssrc) = self
            .video
            .as_ref()
            .ok_or_else(|| ClientError::Media("this session publishes no video".into()))?;
        packet.header.payload_type = codec::VP8_PT;
        packet.header.ssrc = *ssrc;
        track.write_rtp(packet).await.map_err(rtc_error)
    }

    /// Asks for a keyframe (RTCP PLI) on `user`'s video, as a decoder that
    /// lost its reference would. Errors if no such track has arrived.
    pub async fn request_keyframe(&self, user: &UserId) -> Result<(), ClientError> {
        let track = self
            .remote
            .lock()
            .ok()
            .and_then(|remote| remote.get(&(user.clone(), MediaKind::Video)).cloned())
            .ok_or_else(|| ClientError::Media(format!("no video track from {user}")))?;
        let media_ssrc = *track
            .ssrcs()
            .await
            .first()
            .ok_or_else(|| ClientError::Media(format!("no SSRC yet for {user}'s video")))?;
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        track
            .write_rtcp(vec![Box::new(pli)])
            .await
            .map_err(rtc_error)
    }

    /// How many keyframe requests (PLI, FIR) the server sent about this
    /// session's video so far; `changed()` wakes on each.
    pub fn keyframe_requests(&self) -> watch::Receiver<u64> {
        self.keyframe_requests.clone()
    }

    /// The next packet from another member, or `None` after `within`.
    pub async fn next_packet(&self, within: Duration) -> Option<Received> {
        let mut rx = self.received.lock().await;
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }

    /// The next packet from another member; `None` only once the session
    /// has closed.
    pub async fn recv(&self) -> Option<Received> {
        self.received.lock().await.recv().await
    }

    /// Packets received so far, without waiting, by sender and kind.
    pub async fn drain(&self) -> HashMap<(UserId, MediaKind), Vec<Received>> {
        let mut rx = self.received.lock().await;
        let mut out: HashMap<(UserId, MediaKind), Vec<Received>> = HashMap::new();
        while let Ok(r) = rx.try_recv() {
            out.entry((r.user.clone(), r.kind)).or_default().push(r);
        }
        out
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

fn rtc_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::Media(e.to_string())
}
