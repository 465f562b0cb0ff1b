//! One member's peer connection, as the SFU sees it: the webrtc-rs
//! sans-I/O `RTCPeerConnection`, the slots where the member publishes, the
//! tracks it receives from others and where negotiation stands.
//!
//! The server is always the offerer: it knows when tracks come and go, and a
//! client that only ever answers can never collide with it (no glare).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};

use super::forwarder::Offer;
use super::interceptor::{SsrcGuard, ssrc_guard_slot};
use super::rewrite::SeqRewriter;
use super::srtp::KeyTap;
use super::udp::{Heard, PeerKey};
use super::{MediaError, MediaMetrics, codec};
use crate::ids::{ConnId, UserId};
use crate::model::{MediaKind, Mode, PublishSlot, TrackInfo};

/// How long after a video subscription starts its source is asked for
/// keyframes (at the throttled rate).
const KEYFRAME_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

/// The member's own media arriving at the server.
pub(crate) struct Incoming {
    pub kind: MediaKind,
    pub receiver: RTCRtpReceiverId,
    pub ssrc: u32,
    /// The negotiated id of the RFC 6464 audio-level extension, if any.
    pub audio_level: Option<u8>,
}

/// Another member's track sent to this peer.
pub(crate) struct Outgoing {
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    pub payload_type: u8,
    pub seq: SeqRewriter,
    /// Set once a packet went out, to count time to first media.
    pub sent_any: bool,
    /// The client has answered an offer that carries this track. Packets
    /// before that would reach a browser that does not know the SSRC yet,
    /// which it may then bind to the wrong receiver.
    pub negotiated: bool,
    /// Keep asking the source for keyframes until then: the first ones may
    /// go out before this subscriber's DTLS is up and be lost.
    pub keyframes_until: Option<Instant>,
    /// Sent with the peer's own SRTP context rather than through rtc's
    /// pipeline; decided at the first packet, for the track's life.
    pub direct: bool,
    /// What a direct track's sender reports say (rtc's report interceptor
    /// never sees its packets).
    pub report: SenderCounts,
}

/// A direct track's sender-report state (RFC 3550 §6.4.1).
#[derive(Default)]
pub(crate) struct SenderCounts {
    pub packets: u32,
    pub octets: u32,
    pub next_report: Option<Instant>,
}

/// How often a direct track's sender report goes out while it flows
/// (rtc's report interceptor's default).
const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl SenderCounts {
    /// Counts a sent packet; returns a sender report when one is due (every
    /// second while the track flows, as rtc's report interceptor would). It
    /// goes out right after `packet`, so its RTP time is that packet's.
    pub(crate) fn sent(
        &mut self,
        packet: &rtc::rtp::Packet,
        now: Instant,
    ) -> Option<rtc::rtcp::sender_report::SenderReport> {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(packet.payload.len() as u32);
        let due = *self.next_report.get_or_insert(now + REPORT_INTERVAL);
        if now < due {
            return None;
        }
        self.next_report = Some(now + REPORT_INTERVAL);
        Some(rtc::rtcp::sender_report::SenderReport {
            ssrc: packet.header.ssrc,
            ntp_time: rtc::shared::time::SystemInstant::now(now).ntp(now),
            rtp_time: packet.header.timestamp,
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// Where a peer's SRTP for direct sending stands.
pub(crate) enum Direct {
    /// DTLS not done, or done and not used yet.
    Waiting,
    /// Our context, from the first key rtc derived (its local one).
    Ready(Box<rtc::srtp::context::Context>),
    /// No keys, or keys that failed their check: rtc's pipeline only.
    Off,
}

pub(crate) struct Peer {
    pub key: PeerKey,
    pub user: UserId,
    pub conn: ConnId,
    pub mode: Mode,
    /// Index of the UDP port this peer uses.
    pub port: usize,
    pub local: SocketAddr,
    pub ufrag: String,
    pub pc: RTCPeerConnection,
    /// Notes the SRTP keys rtc derives for `pc` (see `srtp.rs`).
    pub keys: Option<std::sync::Arc<KeyTap>>,
    pub direct: Direct,
    /// The first SRTCP from the peer has been checked against the keys.
    pub keys_checked: bool,
    /// Where rtc last sent this peer's datagrams: the nominated pair's
    /// remote address, for what is sent beside it.
    pub remote: Option<SocketAddr>,
    /// Consent checks the port reader answered for this peer (`udp.rs`).
    pub heard: std::sync::Arc<Heard>,
    /// The address the port reader was last told to answer checks from.
    pub consent_at: Option<SocketAddr>,
    /// Receivers by the track id webrtc-rs reports packets under.
    pub incoming: HashMap<String, Incoming>,
    /// Transceivers where this member may publish (server receives).
    pub publish: Vec<(RTCRtpTransceiverId, MediaKind)>,
    pub outgoing: HashMap<(UserId, MediaKind), Outgoing>,
    /// Outgoing track id to the source it carries, for RTCP from the client.
    pub out_tracks: HashMap<String, (UserId, MediaKind)>,
    pub awaiting_answer: bool,
    /// Tracks changed while an offer was out: offer again after the answer.
    pub renegotiate: bool,
    pub last_heard: Instant,
    /// Nothing can be due for this peer before then: no input reached it
    /// since the tick that set it, and its own timers fire later. `None`:
    /// the next tick looks at it. (A sans-I/O peer connection changes only
    /// on input or on its timers, so a peer left alone has nothing to say.)
    pub quiet_until: Option<Instant>,
    /// The instant of this peer's one live entry in its shard's deadline
    /// heap, if it has one; any other entry of it there is stale.
    pub queued: Option<Instant>,
    pub failed: bool,
    /// DTLS is up (the connection reached `connected`). Before that the
    /// pipeline has no SRTP keys and discards, with a warning each, what
    /// it is given: nothing is forwarded to it.
    pub connected: bool,
    /// The last offer listed publish slots (the member may publish).
    pub publish_offered: bool,
}

/// What a new peer connection needs from the media plane.
pub(crate) struct PeerSetup {
    pub key: PeerKey,
    pub user: UserId,
    pub conn: ConnId,
    pub mode: Mode,
    pub port: usize,
    pub local: SocketAddr,
    pub advertise: Vec<IpAddr>,
    pub ufrag: String,
    pub pwd: String,
    pub heard: std::sync::Arc<Heard>,
    pub metrics: std::sync::Arc<MediaMetrics>,
}

impl Peer {
    pub(crate) fn new(setup: PeerSetup, now: Instant) -> Result<Peer, MediaError> {
        let (media, registry) = codec::engine()?;
        let registry = registry.with(ssrc_guard_slot(), SsrcGuard::new(setup.metrics));
        // ICE lite: the server has one known address per port and never
        // needs to probe; clients run the checks and the server answers.
        let keys = KeyTap::new();
        let mut settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(setup.ufrag.clone(), setup.pwd)
            // The agent's consent timers are off: once the peer is
            // connected the port reader answers its checks and the agent
            // never sees them. Liveness is the shard's media timeout, fed
            // by every datagram and every check answered (`udp::Heard`).
            .with_ice_timeouts(Some(Duration::ZERO), Some(Duration::ZERO), None);
        if let Some(keys) = &keys {
            settings = settings
                .with_crypto_provider(keys.clone())
                .with_srtp_protection_profiles(super::srtp::offered_profiles());
        }
        let settings = settings.build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(now)?;
        for ip in &setup.advertise {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: ip.to_string(),
                    port: setup.local.port(),
                    component: 1,
                    ..Default::default()
                },
                ..Default::default()
            }
            .new_candidate_host()?;
            pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
        }
        Ok(Peer {
            key: setup.key,
            user: setup.user,
            conn: setup.conn,
            mode: setup.mode,
            port: setup.port,
            local: setup.local,
            ufrag: setup.ufrag,
            pc,
            direct: if keys.is_some() {
                Direct::Waiting
            } else {
                Direct::Off
            },
            keys,
            keys_checked: false,
            remote: None,
            heard: setup.heard,
            consent_at: None,
            incoming: HashMap::new(),
            publish: Vec::new(),
            outgoing: HashMap::new(),
            out_tracks: HashMap::new(),
            awaiting_answer: false,
            renegotiate: false,
            last_heard: now,
            quiet_until: None,
            queued: None,
            failed: false,
            connected: false,
            publish_offered: false,
        })
    }

    /// Adds receive slots for the member's own audio (and video in video
    /// mode), once. Offered to the client as places to publish only while
    /// the member may.
    pub(crate) fn ensure_publish_slots(&mut self) -> Result<(), MediaError> {
        if !self.publish.is_empty() {
            return Ok(());
        }
        let mut kinds = vec![MediaKind::Audio];
        if self.mode == Mode::Video {
            kinds.push(MediaKind::Video);
        }
        for kind in kinds {
            let id = self.pc.add_transceiver_from_kind(
                codec_kind(kind),
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )?;
            self.publish.push((id, kind));
        }
        Ok(())
    }

    /// Starts sending `source`'s `kind` track to this peer (negotiated in the
    /// next offer).
    pub(crate) fn add_outgoing(
        &mut self,
        source: &UserId,
        kind: MediaKind,
    ) -> Result<(), MediaError> {
        let ssrc = rand::random::<u32>();
        let codec = match kind {
            MediaKind::Audio => codec::opus(),
            MediaKind::Video => codec::vp8(),
        };
        let track_id = format!("{}-{}", source.as_str(), kind.as_str());
        let track = MediaStreamTrack::new(
            source.as_str().to_owned(),
            track_id.clone(),
            track_id.clone(),
            codec_kind(kind),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.rtp_codec.clone(),
                ..Default::default()
            }],
        );
        let transceiver = self.pc.add_transceiver_from_track(
            track,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )?;
        let sender = self
            .pc
            .rtp_transceiver(transceiver)
            .and_then(|t| t.sender())
            .ok_or(MediaError::Internal(
                "a sendonly transceiver without a sender",
            ))?;
        self.outgoing.insert(
            (source.clone(), kind),
            Outgoing {
                sender,
                ssrc,
                payload_type: codec.payload_type,
                seq: SeqRewriter::default(),
                sent_any: false,
                negotiated: false,
                keyframes_until: None,
                direct: false,
                report: SenderCounts::default(),
            },
        );
        self.out_tracks.insert(track_id, (source.clone(), kind));
        Ok(())
    }

    pub(crate) fn remove_outgoing(
        &mut self,
        source: &UserId,
        kind: MediaKind,
    ) -> Result<(), MediaError> {
        if let Some(out) = self.outgoing.remove(&(source.clone(), kind)) {
            self.out_tracks
                .retain(|_, v| !(v.0 == *source && v.1 == kind));
            self.pc.remove_track(out.sender)?;
        }
        Ok(())
    }

    /// Creates and applies an offer for the current transceivers.
    pub(crate) fn offer(&mut self, now: Instant, may_publish: bool) -> Result<Offer, MediaError> {
        let offer = self.pc.create_offer(None)?;
        self.pc.set_local_description(now, offer)?;
        let sdp = self
            .pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or(MediaError::Internal(
                "no local description after setting it",
            ))?;
        let mut publish = Vec::new();
        if may_publish {
            for (id, kind) in self.publish.clone() {
                if let Some(mid) = self.mid(id) {
                    publish.push(PublishSlot { mid, kind });
                }
            }
        }
        let mut tracks = Vec::new();
        for ((user, kind), out) in &self.outgoing {
            let id = RTCRtpTransceiverId::from(out.sender);
            if let Some(mid) = self.pc.rtp_transceiver(id).and_then(|t| t.mid().clone()) {
                tracks.push(TrackInfo {
                    mid,
                    user: user.clone(),
                    kind: *kind,
                });
            }
        }
        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
        self.awaiting_answer = true;
        self.renegotiate = false;
        self.publish_offered = may_publish;
        Ok(Offer {
            sdp,
            publish,
            tracks,
        })
    }

    pub(crate) fn answer(&mut self, now: Instant, sdp: String) -> Result<(), MediaError> {
        if !self.awaiting_answer {
            return Err(MediaError::Negotiation(
                "no offer is waiting for an answer".into(),
            ));
        }
        tracing::trace!(user = %self.user, %sdp, "answer");
        let answer = RTCSessionDescription::answer(sdp)
            .map_err(|e| MediaError::Negotiation(format!("not an answer: {e}")))?;
        self.pc
            .set_remote_description(now, answer)
            .map_err(|e| MediaError::Negotiation(e.to_string()))?;
        self.awaiting_answer = false;
        for ((_, kind), out) in self.outgoing.iter_mut() {
            if !out.negotiated && *kind == MediaKind::Video {
                out.keyframes_until = Some(now + KEYFRAME_WINDOW);
            }
            out.negotiated = true;
        }
        Ok(())
    }

    fn mid(&mut self, id: RTCRtpTransceiverId) -> Option<String> {
        self.pc.rtp_transceiver(id).and_then(|t| t.mid().clone())
    }

    /// Which of this member's publish slots a receiver belongs to.
    pub(crate) fn publish_kind(&self, receiver: RTCRtpReceiverId) -> Option<MediaKind> {
        let id = RTCRtpTransceiverId::from(receiver);
        self.publish
            .iter()
            .find(|(slot, _)| *slot == id)
            .map(|(_, kind)| *kind)
    }
}

fn codec_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}
