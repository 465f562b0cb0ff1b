//! What publishers send: real Opus audio, synthetic VP8 video.
//!
//! Both are made once at start-up and shared by every publisher, so the load
//! tester spends its CPU on sending rather than on encoding: one second of a
//! tone is encoded and looped; video frames are fixed byte patterns behind
//! valid VP8 RTP headers. The SFU forwards without decoding, so neither needs
//! to be more than well-formed.

use std::time::Duration;

use bytes::Bytes;

use crate::audio::{self, AudioError, Encoder, Tone};

/// One 20 ms Opus frame every tick, 50 packets/s.
pub(crate) const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// RTP timestamp step of one audio frame (48 kHz clock).
pub(crate) const AUDIO_TICKS: u32 = audio::FRAME_SAMPLES as u32;
pub(crate) const AUDIO_CLOCK: u32 = audio::SAMPLE_RATE;

/// About 30 frames/s (33.3 ms, the closest whole microsecond).
pub(crate) const VIDEO_INTERVAL: Duration = Duration::from_micros(33_333);
/// RTP timestamp step of one video frame (90 kHz clock / 30).
pub(crate) const VIDEO_TICKS: u32 = 3_000;
pub(crate) const VIDEO_CLOCK: u32 = 90_000;
/// A keyframe every 2 s, as encoders configured for conferencing do.
const KEYFRAME_EVERY: u64 = 60;

/// A second of a 440 Hz tone as Opus packets, each with its RFC 6464 level.
#[derive(Debug)]
pub(crate) struct AudioLoop {
    frames: Vec<(Bytes, u8)>,
}

impl AudioLoop {
    pub(crate) fn new() -> Result<AudioLoop, AudioError> {
        let mut tone = Tone::new(440.0, 0.3);
        let mut encoder = Encoder::new()?;
        let frames = (0..50)
            .map(|_| {
                let pcm = tone.next_frame();
                let packet = encoder.encode(&pcm)?;
                Ok((Bytes::from(packet), audio::audio_level(&pcm)))
            })
            .collect::<Result<_, AudioError>>()?;
        Ok(AudioLoop { frames })
    }

    /// The `n`th packet of the loop and its level.
    pub(crate) fn frame(&self, n: u64) -> &(Bytes, u8) {
        &self.frames[(n % self.frames.len() as u64) as usize]
    }
}

/// Synthetic VP8 frames, already cut into RTP payloads.
#[derive(Debug)]
pub(crate) struct VideoFrames {
    key: Vec<Bytes>,
    delta: Vec<Bytes>,
}

impl VideoFrames {
    pub(crate) fn new() -> VideoFrames {
        // About 600 kbit/s at 30 fps: 2.5 kB delta frames, 9 kB keyframes.
        VideoFrames {
            key: packetize(true, 9_000),
            delta: packetize(false, 2_500),
        }
    }

    /// The payloads of frame `n`; the last one carries the marker bit.
    pub(crate) fn frame(&self, n: u64) -> &[Bytes] {
        if n.is_multiple_of(KEYFRAME_EVERY) {
            &self.key
        } else {
            &self.delta
        }
    }
}

/// Largest VP8 payload per packet, leaving room in a 1200-byte datagram for
/// the RTP header, extensions and SRTP's tag.
const MAX_PAYLOAD: usize = 1_100;

/// A VP8 frame of `size` bytes cut into RTP payloads (RFC 7741): each starts
/// with a one-byte payload descriptor (S set on the first, partition 0); the
/// first carries the frame's uncompressed header (RFC 6386 §9.1), which is
/// what receivers read to tell keyframes (P bit clear) from the rest.
fn packetize(keyframe: bool, size: usize) -> Vec<Bytes> {
    let mut frame = Vec::with_capacity(size);
    // Frame tag: P (0 = key), version 0, show_frame 1, first partition size.
    let first_partition = (size as u32 / 2) & 0x7_ffff;
    let tag = u32::from(!keyframe) | (1 << 4) | (first_partition << 5);
    frame.extend_from_slice(&tag.to_le_bytes()[..3]);
    if keyframe {
        // Start code, then 640 x 360 with no scaling.
        frame.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        frame.extend_from_slice(&640u16.to_le_bytes());
        frame.extend_from_slice(&360u16.to_le_bytes());
    }
    frame.resize(size, 0x5a);
    frame
        .chunks(MAX_PAYLOAD - 1)
        .enumerate()
        .map(|(i, chunk)| {
            let mut payload = Vec::with_capacity(chunk.len() + 1);
            payload.push(if i == 0 { 0x10 } else { 0x00 });
            payload.extend_from_slice(chunk);
            Bytes::from(payload)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_and_delta_frames_carry_valid_vp8_headers() {
        let frames = VideoFrames::new();
        let key = frames.frame(0);
        let delta = frames.frame(1);
        assert!(key.len() > delta.len() && delta.len() >= 2);
        for packets in [key, delta] {
            assert_eq!(packets[0][0], 0x10, "S bit on the first packet only");
            assert!(packets[1..].iter().all(|p| p[0] == 0x00));
            assert!(packets.iter().all(|p| p.len() <= MAX_PAYLOAD));
        }
        assert_eq!(key[0][1] & 1, 0, "P bit clear: keyframe");
        assert_eq!(&key[0][4..7], &[0x9d, 0x01, 0x2a], "start code");
        assert_eq!(delta[0][1] & 1, 1, "P bit set: interframe");
        assert_eq!(frames.frame(60)[0], key[0], "a keyframe every 2 s");
    }

    #[test]
    fn a_second_of_tone_encodes_to_fifty_opus_frames() {
        let audio = AudioLoop::new().unwrap();
        assert_eq!(audio.frames.len(), 50);
        let (packet, level) = audio.frame(50);
        assert_eq!(audio::packet_samples(packet), Some(audio::FRAME_SAMPLES));
        assert!(*level < 127, "a tone is not silence");
    }
}
