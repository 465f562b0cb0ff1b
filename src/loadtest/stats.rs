//! Receive statistics of one track at one receiver (RFC 3550 §6.4.1 and
//! Appendix A.1/A.8), live counters for the progress line, and percentiles.
//!
//! Loss comes from sequence numbers: the SFU rewrites them per subscriber
//! but keeps forwarded packets contiguous (`media/rewrite.rs`), so a gap is
//! a packet that was lost between the publisher and this receiver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What one receiver saw of one publisher's track.
#[derive(Clone, Debug)]
pub(crate) struct TrackStats {
    /// The RTP clock rate: 48 kHz for Opus, 90 kHz for VP8.
    clock_rate: f64,
    base_seq: u32,
    /// Highest sequence number seen, extended with wrap-around cycles.
    max_ext_seq: u32,
    received: u64,
    /// Arrival (as the receiver's clock, in RTP units) minus RTP timestamp
    /// of the previous packet; only differences matter.
    last_transit: Option<f64>,
    /// RFC 3550 interarrival jitter, in RTP timestamp units.
    jitter: f64,
    jitter_sum: f64,
    jitter_max: f64,
}

impl TrackStats {
    pub(crate) fn new(clock_rate: u32, seq: u16) -> TrackStats {
        TrackStats {
            clock_rate: f64::from(clock_rate),
            base_seq: u32::from(seq),
            max_ext_seq: u32::from(seq),
            received: 0,
            last_transit: None,
            jitter: 0.0,
            jitter_sum: 0.0,
            jitter_max: 0.0,
        }
    }

    /// Records one packet: its sequence number, RTP timestamp and arrival
    /// time relative to a fixed `epoch`.
    pub(crate) fn packet(&mut self, seq: u16, timestamp: u32, arrival: Duration) {
        self.received += 1;
        let max = self.max_ext_seq as u16;
        let ahead = seq.wrapping_sub(max);
        // Ahead by less than half the space is newer (maybe across a wrap);
        // anything else is a late or duplicate packet and moves nothing.
        if ahead != 0 && ahead < 0x8000 {
            let cycles = self.max_ext_seq & !0xffff;
            let cycles = if seq < max { cycles + 0x1_0000 } else { cycles };
            self.max_ext_seq = cycles | u32::from(seq);
        }
        // Timestamps wrap at 2^32; unwrap against nothing, as RFC 3550 does,
        // by taking differences in wrapping arithmetic below.
        let transit = arrival.as_secs_f64() * self.clock_rate - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            let mut d = transit - last;
            // A timestamp wrap shows as a jump of 2^32 units.
            const WRAP: f64 = 4_294_967_296.0;
            if d > WRAP / 2.0 {
                d -= WRAP;
            } else if d < -WRAP / 2.0 {
                d += WRAP;
            }
            self.jitter += (d.abs() - self.jitter) / 16.0;
            self.jitter_sum += self.jitter;
            self.jitter_max = self.jitter_max.max(self.jitter);
        }
        self.last_transit = Some(transit);
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Packets the sequence range says were sent to this receiver.
    pub(crate) fn expected(&self) -> u64 {
        u64::from(self.max_ext_seq - self.base_seq) + 1
    }

    /// Expected minus received; retransmissions and duplicates can make
    /// the difference negative, which counts as none lost.
    pub(crate) fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// The jitter averaged over the track's packets, in milliseconds.
    pub(crate) fn jitter_mean_ms(&self) -> f64 {
        let samples = self.received.saturating_sub(1).max(1) as f64;
        1e3 * self.jitter_sum / samples / self.clock_rate
    }

    /// The highest the jitter estimate reached, in milliseconds.
    pub(crate) fn jitter_max_ms(&self) -> f64 {
        1e3 * self.jitter_max / self.clock_rate
    }
}

/// Counters every participant bumps as it goes, read once a second for the
/// progress line. Relaxed atomics: they are tallies, nothing is ordered by them.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub joined: AtomicU64,
    pub join_failed: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub send_errors: AtomicU64,
}

impl Live {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Nearest-rank percentiles of join latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Percentiles {
        samples.sort();
        let at = |p: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e3
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_a_gap_as_loss_across_the_sequence_wrap() {
        let mut t = TrackStats::new(48_000, 65_534);
        for (i, seq) in [65_534u16, 65_535, 1, 2].into_iter().enumerate() {
            t.packet(seq, i as u32 * 960, ms(20 * i as u64));
        }
        // 65534, 65535, 0, 1, 2: five expected, 0 never came.
        assert_eq!((t.expected(), t.received(), t.lost()), (5, 4, 1));
    }

    #[test]
    fn late_and_duplicate_packets_move_nothing() {
        let mut t = TrackStats::new(48_000, 10);
        for seq in [10u16, 12, 11, 12] {
            t.packet(seq, 0, ms(0));
        }
        assert_eq!((t.expected(), t.lost()), (3, 0));
    }

    #[test]
    fn perfectly_paced_packets_have_no_jitter_and_late_ones_do() {
        let mut t = TrackStats::new(48_000, 0);
        for i in 0..50u16 {
            t.packet(i, u32::from(i) * 960, ms(20 * u64::from(i)));
        }
        assert!(t.jitter_max_ms() < 1e-6);
        // Every other packet 10 ms late: |D| = 10 ms each time, so J
        // converges on 10 ms.
        let mut t = TrackStats::new(48_000, 0);
        for i in 0..400u16 {
            let late = if i % 2 == 1 { 10 } else { 0 };
            t.packet(i, u32::from(i) * 960, ms(20 * u64::from(i) + late));
        }
        assert!(
            (t.jitter_max_ms() - 10.0).abs() < 0.1,
            "{}",
            t.jitter_max_ms()
        );
        assert!(t.jitter_mean_ms() > 9.0 && t.jitter_mean_ms() <= 10.0);
    }

    #[test]
    fn survives_a_timestamp_wrap() {
        let mut t = TrackStats::new(48_000, 0);
        let start = u32::MAX - 960;
        for i in 0..4u16 {
            let ts = start.wrapping_add(u32::from(i) * 960);
            t.packet(i, ts, ms(20 * u64::from(i)));
        }
        assert!(t.jitter_max_ms() < 1e-3, "{}", t.jitter_max_ms());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(ms).collect());
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }
}
