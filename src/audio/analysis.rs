//! Measuring audio: which frequency is in it, how loud it is.
//!
//! Tests assert on these instead of comparing waveforms, because a lossy codec
//! keeps a tone's frequency and level but not its exact samples.

use std::f64::consts::TAU;

use super::SAMPLE_RATE;

/// Amplitude of the `frequency_hz` component of `samples` (at [`SAMPLE_RATE`]),
/// by the Goertzel algorithm: one DFT bin, at any frequency, in one pass.
///
/// Scaled so that a sine of peak amplitude `A` gives about `A` (not `A/2`):
/// the bin's magnitude is `N·A/2` and we return `2·|X|/N`. Spectral leakage
/// makes a sine read a little low when the window does not hold a whole number
/// of its periods, and a neighbouring frequency read a little above zero; a
/// window of a few thousand samples keeps both small. Empty input gives 0.
pub fn goertzel(samples: &[f32], frequency_hz: f32) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    // f64 throughout: the recurrence sums thousands of terms that mostly cancel.
    let omega = TAU * f64::from(frequency_hz) / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    (2.0 * power.sqrt() / samples.len() as f64) as f32
}

/// The frequency in `lo_hz..=hi_hz`, probed every `step_hz`, where
/// [`goertzel`] is strongest. The answer is only as fine as `step_hz`; an
/// empty or backwards range, or a step that is not positive, gives `lo_hz`.
pub fn dominant_frequency(samples: &[f32], lo_hz: f32, hi_hz: f32, step_hz: f32) -> f32 {
    if !(step_hz > 0.0 && hi_hz >= lo_hz) {
        return lo_hz;
    }
    // Count the probes up front rather than adding `step_hz` repeatedly, so
    // rounding cannot skip `hi_hz` or loop forever on a tiny step.
    let probes = ((hi_hz - lo_hz) / step_hz).floor() as usize + 1;
    (0..probes)
        .map(|i| lo_hz + i as f32 * step_hz)
        .map(|f| (f, goertzel(samples, f)))
        .fold((lo_hz, f32::MIN), |best, probe| {
            if probe.1 > best.1 { probe } else { best }
        })
        .0
}

/// Root mean square of `samples` (0 for none). A sine of peak `A` gives `A/√2`.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt() as f32
}

/// The RFC 6464 audio level of `samples`: their RMS in -dBov (decibels below
/// full scale, where full scale is a sample of ±1), rounded and clamped to
/// `0..=127`. 0 is the loudest, 127 is silence; a full-scale sine (RMS
/// `1/√2`, -3 dBov) is 3. This is the byte the RTP audio-level header
/// extension carries and the SFU turns into `volume` events.
pub fn audio_level(samples: &[f32]) -> u8 {
    let rms = rms(samples);
    if rms.is_nan() || rms <= 0.0 {
        return 127;
    }
    let dbov = 20.0 * rms.log10();
    (-dbov).round().clamp(0.0, 127.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Tone;

    fn tone(frequency_hz: f32, amplitude: f32) -> Vec<f32> {
        let mut tone = Tone::new(frequency_hz, amplitude);
        (0..10).flat_map(|_| tone.next_frame()).collect()
    }

    #[test]
    fn goertzel_reads_a_sines_amplitude_and_not_its_neighbours() {
        let samples = tone(440.0, 0.6);
        assert!((goertzel(&samples, 440.0) - 0.6).abs() < 0.01);
        assert!(goertzel(&samples, 660.0) < 0.01);
        assert!(goertzel(&samples, 400.0) < 0.02);
        assert_eq!(goertzel(&[], 440.0), 0.0);

        // Two tones at once: each is found at its own amplitude.
        let mixed: Vec<f32> = samples
            .iter()
            .zip(tone(1000.0, 0.2))
            .map(|(a, b)| a + b)
            .collect();
        assert!((goertzel(&mixed, 440.0) - 0.6).abs() < 0.01);
        assert!((goertzel(&mixed, 1000.0) - 0.2).abs() < 0.01);
    }

    #[test]
    fn dominant_frequency_finds_the_loudest_tone() {
        let mixed: Vec<f32> = tone(440.0, 0.2)
            .iter()
            .zip(tone(1000.0, 0.5))
            .map(|(a, b)| a + b)
            .collect();
        assert_eq!(dominant_frequency(&mixed, 100.0, 2000.0, 10.0), 1000.0);
        assert_eq!(dominant_frequency(&mixed, 100.0, 800.0, 10.0), 440.0);
        // Degenerate scans answer `lo_hz` instead of looping or panicking.
        assert_eq!(dominant_frequency(&mixed, 300.0, 200.0, 10.0), 300.0);
        assert_eq!(dominant_frequency(&mixed, 300.0, 2000.0, 0.0), 300.0);
        assert_eq!(dominant_frequency(&mixed, 300.0, 2000.0, f32::NAN), 300.0);
    }

    #[test]
    fn rms_and_audio_level() {
        assert_eq!(rms(&[]), 0.0);
        assert!((rms(&tone(440.0, 1.0)) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-3);

        assert_eq!(audio_level(&[0.0; 960]), 127);
        assert_eq!(audio_level(&[]), 127);
        assert_eq!(audio_level(&tone(440.0, 1.0)), 3);
        // A tenth of full scale is 20 dB quieter.
        assert_eq!(audio_level(&tone(440.0, 0.1)), 23);
        // A square wave at full scale is 0 dBov; louder clips to 0.
        assert_eq!(audio_level(&[1.0, -1.0, 1.0, -1.0]), 0);
        assert_eq!(audio_level(&[4.0, -4.0]), 0);
        // Far below the floor is still 127, not a wrapped byte.
        assert_eq!(audio_level(&[1e-9; 960]), 127);
    }
}
