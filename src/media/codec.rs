//! The codecs and header extensions conclave negotiates, shared by the
//! server and the Rust client so both sides always agree.
//!
//! One codec per kind (Opus, VP8) keeps every publisher's packets
//! forwardable to every subscriber without transcoding or payload-type maps.

use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

pub const OPUS_PT: u8 = 111;
pub const VP8_PT: u8 = 96;
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

pub fn opus() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PT,
    }
}

pub fn vp8() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: VP8_PT,
    }
}

/// A media engine with Opus, VP8 and the audio-level extension, and the
/// default interceptors: NACK generation and retransmission, RTCP sender and
/// receiver reports, transport-wide congestion control feedback; plus ours
/// that hands inbound keyframe requests (PLI, FIR) to the application, which
/// webrtc-rs's chain would otherwise drop (see `media::interceptor`).
pub fn engine() -> Result<(MediaEngine, Registry), rtc::shared::error::Error> {
    let mut media = MediaEngine::default();
    media.register_codec(opus(), RtpCodecKind::Audio)?;
    media.register_codec(vp8(), RtpCodecKind::Video)?;
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?.with(
        super::interceptor::keyframe_requests_slot(),
        super::interceptor::KeyframeRequests::default(),
    );
    Ok((media, registry))
}
