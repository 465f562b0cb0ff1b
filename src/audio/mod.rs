//! Audio for bots and tests: Opus encoding and decoding, Ogg Opus files, test
//! tones, and the detectors that check them.
//!
//! Everything here is 48 kHz mono `f32` in `[-1, 1]`, cut into 20 ms frames of
//! [`FRAME_SAMPLES`]: the rate and frame the SFU forwards (RTP Opus is always
//! clocked at 48 kHz) and the frame the browser client sends. A bot can play a
//! tone or a file into a room, record what it hears, and a test can then ask
//! "was that 440 Hz?" without a human listening.
//!
//! One file per job:
//!
//! - [`codec`](self::codec): [`Encoder`] and [`Decoder`], thin wrappers over
//!   the pure-Rust `opus-rs` that fix the format and turn its errors into ours.
//! - [`toc`](self::toc): [`packet_samples`], how long a packet is, from its
//!   first byte, without decoding it.
//! - [`ogg_read`](self::ogg_read): [`read_ogg_opus`] and [`decode_ogg_opus`]
//!   (RFC 7845 files in).
//! - [`ogg_write`](self::ogg_write): [`OggOpusWriter`] and [`encode_ogg_opus`]
//!   (RFC 7845 files out, safe to interrupt).
//! - [`tone`](self::tone): [`Tone`], a sine with continuous phase.
//! - [`analysis`](self::analysis): [`goertzel`], [`dominant_frequency`],
//!   [`rms`] and the RFC 6464 [`audio_level`].
//!
//! Nothing here panics on its input: malformed packets and files are errors.

mod analysis;
mod codec;
mod ogg_read;
mod ogg_write;
mod toc;
mod tone;

pub use analysis::{audio_level, dominant_frequency, goertzel, rms};
pub use codec::{Decoder, Encoder};
pub use ogg_read::{OggOpus, decode_ogg_opus, read_ogg_opus, read_ogg_opus_from};
pub use ogg_write::{OggOpusWriter, encode_ogg_opus};
pub use toc::packet_samples;
pub use tone::Tone;

/// The one sample rate: Opus's native rate and RTP's Opus clock.
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in one 20 ms frame at [`SAMPLE_RATE`]: what every [`Encoder::encode`]
/// call takes and what [`Decoder::conceal`] returns.
pub const FRAME_SAMPLES: usize = 960;

/// Samples the decoder outputs before the first real one (RFC 7845 §4.2); the
/// Opus encoder's look-ahead at 48 kHz (2.5 ms CELT overlap + 4 ms delay
/// compensation), written into every file we make.
pub const PRE_SKIP: u16 = 312;

/// What can go wrong with audio.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The Opus encoder or decoder refused (a malformed packet, most often).
    #[error("opus: {0}")]
    Codec(String),
    /// A frame handed to the encoder was not 20 ms long.
    #[error("an Opus frame is {FRAME_SAMPLES} samples (20 ms at 48 kHz), got {0}")]
    FrameSize(usize),
    /// The bytes are not an Ogg Opus stream; the message names what is wrong
    /// (and the file, when there is one).
    #[error("not Ogg Opus: {0}")]
    NotOggOpus(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    //! End-to-end: tone → Opus → tone, and tone → Ogg file → tone.

    use super::*;

    /// `frames` 20 ms frames of a tone, as one buffer.
    fn tone(frequency_hz: f32, amplitude: f32, frames: usize) -> Vec<f32> {
        let mut tone = Tone::new(frequency_hz, amplitude);
        (0..frames).flat_map(|_| tone.next_frame()).collect()
    }

    #[test]
    fn a_tone_survives_opus_and_is_told_apart_from_its_neighbour() {
        let mut encoder = Encoder::new().unwrap();
        let mut decoder = Decoder::new().unwrap();
        let mut tone = Tone::new(440.0, 0.5);
        let mut heard = Vec::new();
        for _ in 0..50 {
            let packet = encoder.encode(&tone.next_frame()).unwrap();
            assert_eq!(packet_samples(&packet), Some(FRAME_SAMPLES));
            assert!(
                packet.len() < 400,
                "32 kbit/s is ~80 bytes, got {}",
                packet.len()
            );
            heard.extend(decoder.decode(&packet).unwrap());
        }
        assert_eq!(heard.len(), 50 * FRAME_SAMPLES);

        // Skip the codec's start-up (look-ahead and adaptation).
        let steady = &heard[10 * FRAME_SAMPLES..];
        let at_tone = goertzel(steady, 440.0);
        let at_neighbour = goertzel(steady, 660.0);
        assert!(at_tone > 0.3, "440 Hz came back at amplitude {at_tone}");
        assert!(
            at_neighbour < 0.05 * at_tone,
            "660 Hz at {at_neighbour} vs {at_tone}"
        );
        let found = dominant_frequency(steady, 200.0, 2000.0, 5.0);
        assert!((found - 440.0).abs() <= 5.0, "dominant frequency {found}");
    }

    #[test]
    fn an_ogg_file_round_trips_a_tone_at_its_exact_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.opus");
        // Not a whole number of frames: the last one is padded, then trimmed.
        let pcm: Vec<f32> = tone(660.0, 0.5, 60)[..57_000].to_vec();
        encode_ogg_opus(&path, &pcm).unwrap();

        let file = read_ogg_opus(&path).unwrap();
        assert_eq!((file.channels, file.pre_skip), (1, PRE_SKIP));
        assert_eq!(file.granule_position, u64::from(PRE_SKIP) + 57_000);

        let back = decode_ogg_opus(&path).unwrap();
        assert_eq!(back.len(), pcm.len());
        let found = dominant_frequency(&back[4800..], 200.0, 2000.0, 5.0);
        assert!((found - 660.0).abs() <= 5.0, "dominant frequency {found}");
        assert!(goertzel(&back[4800..], 440.0) < 0.05);

        // Pre-skip is right to the sample: the decoded tone lines up with
        // the original (two samples off, the error is over 15% of the tone).
        let error: Vec<f32> = pcm.iter().zip(&back).map(|(a, b)| a - b).collect();
        assert!(
            rms(&error[4800..]) < 0.05 * rms(&pcm[4800..]),
            "decoded tone is out of step with the original: pre-skip wrong?"
        );
    }

    #[test]
    fn an_empty_recording_is_a_valid_file_of_no_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.opus");
        encode_ogg_opus(&path, &[]).unwrap();
        assert_eq!(decode_ogg_opus(&path).unwrap(), Vec::<f32>::new());
    }
}
