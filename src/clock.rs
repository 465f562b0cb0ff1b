//! The one clock every part of the server reads.
//!
//! It is tokio's: rooms, connections, policies and the media plane all take
//! their instants from [`tokio::time::Instant`], so a test that pauses tokio's
//! time (`#[tokio::test(start_paused = true)]`) moves every deadline at once,
//! and hours of grace windows and timers pass in microseconds. Wall-clock
//! milliseconds (what records and events show) follow the same clock from an
//! anchor taken when the [`Clock`] was made, so they too advance with paused
//! time and never step backwards while the process runs.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The current time, as both a monotonic instant (for deadlines) and wall
/// clock milliseconds (for what is shown and stored).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: i64,
}

/// A handle on the clock; cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor: tokio::time::Instant,
    anchor_unix_ms: i64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock anchored to the system's wall clock now.
    pub fn new() -> Clock {
        Clock {
            anchor: tokio::time::Instant::now(),
            anchor_unix_ms: system_unix_ms(),
        }
    }

    pub fn now(&self) -> Now {
        let at = tokio::time::Instant::now();
        Now {
            at: at.into_std(),
            unix_ms: self.unix_ms_at(at),
        }
    }

    /// The monotonic instant, as tokio's timers take it.
    pub fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// Wall-clock milliseconds since 1970.
    pub fn unix_ms(&self) -> i64 {
        self.unix_ms_at(tokio::time::Instant::now())
    }

    fn unix_ms_at(&self, at: tokio::time::Instant) -> i64 {
        let since = at.saturating_duration_since(self.anchor).as_millis();
        self.anchor_unix_ms
            .saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    }
}

fn system_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_paused_time() {
        let clock = Clock::new();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now();
        assert_eq!(after.at - before.at, Duration::from_secs(3600));
        assert_eq!(after.unix_ms - before.unix_ms, 3_600_000);
    }
}
