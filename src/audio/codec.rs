//! Opus encoder and decoder with the format fixed: 48 kHz mono, 20 ms frames.
//!
//! `opus-rs` is a pure-Rust port of libopus, so bots need no C toolchain and
//! no system library. Its errors are `&'static str`; ours say which side failed.

use opus_rs::{Application, OpusDecoder, OpusEncoder};

use super::{AudioError, FRAME_SAMPLES, SAMPLE_RATE, packet_samples};

/// Target bitrate: what browsers send for mono speech and music over WebRTC;
/// plenty for a tone to come back at its frequency and level.
const BITRATE_BPS: i32 = 32_000;

/// Room for any packet the encoder makes (a frame is at most 1275 bytes,
/// RFC 6716 §3.2.1); libopus's documentation recommends 4000.
const MAX_PACKET: usize = 4000;

/// An Opus encoder: 48 kHz mono, `Application::Audio` (full band, so test
/// tones keep their shape), variable bitrate around 32 kbit/s.
pub struct Encoder {
    inner: OpusEncoder,
}

impl Encoder {
    pub fn new() -> Result<Encoder, AudioError> {
        let mut inner = OpusEncoder::new(SAMPLE_RATE as i32, 1, Application::Audio)
            .map_err(|e| AudioError::Codec(format!("cannot create encoder: {e}")))?;
        inner.bitrate_bps = BITRATE_BPS;
        inner.use_cbr = false;
        Ok(Encoder { inner })
    }

    /// Encodes one 20 ms frame (exactly [`FRAME_SAMPLES`] samples) into one
    /// packet. NaN and infinite samples are encoded as silence rather than
    /// handed to the codec's arithmetic.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, AudioError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(AudioError::FrameSize(pcm.len()));
        }
        let sanitized: Vec<f32>;
        let pcm = if pcm.iter().all(|s| s.is_finite()) {
            pcm
        } else {
            sanitized = pcm
                .iter()
                .map(|&s| if s.is_finite() { s } else { 0.0 })
                .collect();
            &sanitized
        };
        let mut packet = vec![0u8; MAX_PACKET];
        let len = self
            .inner
            .encode(pcm, FRAME_SAMPLES, &mut packet)
            .map_err(|e| AudioError::Codec(format!("encode: {e}")))?;
        packet.truncate(len);
        Ok(packet)
    }
}

/// An Opus decoder to 48 kHz mono (a stereo packet is downmixed).
pub struct Decoder {
    inner: OpusDecoder,
}

impl Decoder {
    pub fn new() -> Result<Decoder, AudioError> {
        let inner = OpusDecoder::new(SAMPLE_RATE as i32, 1)
            .map_err(|e| AudioError::Codec(format!("cannot create decoder: {e}")))?;
        Ok(Decoder { inner })
    }

    /// Decodes every sample of `packet` (its length comes from its TOC byte:
    /// 2.5 to 120 ms). An empty or malformed packet is an error; use
    /// [`Decoder::conceal`] for a lost one.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<f32>, AudioError> {
        let samples = packet_samples(packet).ok_or_else(|| {
            AudioError::Codec(format!("malformed packet of {} bytes", packet.len()))
        })?;
        let mut pcm = vec![0f32; samples];
        let len = self
            .inner
            .decode(packet, samples, &mut pcm)
            .map_err(|e| AudioError::Codec(format!("decode: {e}")))?;
        pcm.truncate(len);
        Ok(pcm)
    }

    /// One 20 ms frame standing in for a lost packet: the decoder extrapolates
    /// from what it last heard (and fades out), which sounds better than a
    /// gap. Before any packet, or if the codec refuses, it is silence.
    pub fn conceal(&mut self) -> Vec<f32> {
        let mut pcm = vec![0f32; FRAME_SAMPLES];
        match self.inner.decode(&[], FRAME_SAMPLES, &mut pcm) {
            Ok(len) if len == FRAME_SAMPLES => pcm,
            _ => vec![0f32; FRAME_SAMPLES],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{Tone, rms};

    #[test]
    fn a_frame_that_is_not_20_ms_is_refused_by_name() {
        let mut encoder = Encoder::new().unwrap();
        let err = encoder.encode(&[0.0; 480]).unwrap_err();
        assert!(matches!(err, AudioError::FrameSize(480)));
        assert!(err.to_string().contains("960 samples"), "{err}");
        assert!(matches!(encoder.encode(&[]), Err(AudioError::FrameSize(0))));
    }

    #[test]
    fn non_finite_samples_encode_as_silence() {
        let mut encoder = Encoder::new().unwrap();
        let mut decoder = Decoder::new().unwrap();
        for _ in 0..5 {
            let packet = encoder.encode(&[f32::NAN; FRAME_SAMPLES]).unwrap();
            assert!(rms(&decoder.decode(&packet).unwrap()) < 1e-3);
        }
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let mut decoder = Decoder::new().unwrap();
        assert!(matches!(decoder.decode(&[]), Err(AudioError::Codec(_))));
        // Code 3 without its frame-count byte.
        assert!(matches!(decoder.decode(&[0xFB]), Err(AudioError::Codec(_))));
        // Code 3 claiming 63 frames of 20 ms: over the 120 ms limit.
        assert!(matches!(
            decoder.decode(&[0xFB, 63, 0, 0]),
            Err(AudioError::Codec(_))
        ));
    }

    #[test]
    fn concealment_is_one_frame_before_and_after_audio() {
        let mut decoder = Decoder::new().unwrap();
        let silence = decoder.conceal();
        assert_eq!(silence.len(), FRAME_SAMPLES);
        assert_eq!(rms(&silence), 0.0);

        let mut encoder = Encoder::new().unwrap();
        let mut tone = Tone::new(440.0, 0.5);
        for _ in 0..10 {
            decoder
                .decode(&encoder.encode(&tone.next_frame()).unwrap())
                .unwrap();
        }
        let concealed = decoder.conceal();
        assert_eq!(concealed.len(), FRAME_SAMPLES);
        assert!(
            rms(&concealed) > 0.01,
            "concealment after a tone should continue it"
        );
        // And the decoder carries on after the loss.
        let next = encoder.encode(&tone.next_frame()).unwrap();
        assert_eq!(decoder.decode(&next).unwrap().len(), FRAME_SAMPLES);
    }
}
