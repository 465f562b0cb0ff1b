//! A sine tone, frame by frame: what a bot plays so a test can check, at the
//! far end, that audio went through (and whose it was, by frequency).

use std::f64::consts::TAU;

use super::{FRAME_SAMPLES, SAMPLE_RATE};

/// A sine generator whose phase carries over from one frame to the next, so
/// consecutive frames join without a click (a click is broadband energy that
/// would blur the frequency a detector finds).
#[derive(Debug, Clone)]
pub struct Tone {
    /// Phase advance per sample, in radians.
    step: f64,
    amplitude: f32,
    /// Current phase in `[0, TAU)`, kept in `f64` and wrapped so it neither
    /// drifts nor loses precision over a long call.
    phase: f64,
}

impl Tone {
    /// A sine of `frequency_hz` (below 24 kHz to be meaningful) and peak
    /// `amplitude` (1.0 is full scale), starting at phase zero.
    pub fn new(frequency_hz: f32, amplitude: f32) -> Tone {
        Tone {
            step: TAU * f64::from(frequency_hz) / f64::from(SAMPLE_RATE),
            amplitude,
            phase: 0.0,
        }
    }

    /// The next 20 ms: [`FRAME_SAMPLES`] samples.
    pub fn next_frame(&mut self) -> Vec<f32> {
        let frame = (0..FRAME_SAMPLES)
            .map(|i| self.amplitude * (self.phase + self.step * i as f64).sin() as f32)
            .collect();
        self.phase = (self.phase + self.step * FRAME_SAMPLES as f64).rem_euclid(TAU);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_continue_one_unbroken_sine() {
        let mut tone = Tone::new(1000.0, 0.25);
        let samples: Vec<f32> = (0..100).flat_map(|_| tone.next_frame()).collect();
        assert_eq!(samples.len(), 100 * FRAME_SAMPLES);
        for (n, &sample) in samples.iter().enumerate() {
            let t = n as f64 / f64::from(SAMPLE_RATE);
            let expected = 0.25 * (TAU * 1000.0 * t).sin() as f32;
            assert!(
                (sample - expected).abs() < 1e-4,
                "sample {n}: {sample} vs {expected}"
            );
        }
        assert_eq!(samples.iter().fold(0f32, |m, s| m.max(s.abs())), 0.25);
    }
}
