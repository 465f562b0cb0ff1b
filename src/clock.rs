//! The one clock every part of the server reads.
//!
//! It is tokio's: rooms, connections, policies and the media plane all take
//! their instants from [`tokio::time::Instant`], so a test that pauses tokio's
//! time (`#[tokio::test(start_paused = true)]`) moves every deadline at once,
//! and hours of grace windows and timers pass in microseconds. Wall-clock
//! milliseconds (what records and events show) follow the same clock from an
//! anchor taken when the [`Clock`] was made, so they too advance with paused
//! time and never step backwards while the process runs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// The first instant at or after `at` that is a whole number of
    /// `step`s after the clock's anchor.
    ///
    /// Timers that may run a little late put their deadlines here, so that
    /// the deadlines of a thousand idle peers, and of every room and port on
    /// the server, fall on a few shared instants: one wake runs them all,
    /// where deadlines scattered over the second would each wake a thread.
    pub fn on_grid(&self, at: Instant, step: Duration) -> Instant {
        let anchor = self.anchor.into_std();
        let step = step.as_nanos().max(1);
        let steps = at
            .saturating_duration_since(anchor)
            .as_nanos()
            .div_ceil(step);
        let offset = u64::try_from(steps * step).unwrap_or(u64::MAX);
        anchor + Duration::from_nanos(offset)
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

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_paused_time() {
        let clock = Clock::new();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now();
        assert_eq!(after.at - before.at, Duration::from_secs(3600));
        assert_eq!(after.unix_ms - before.unix_ms, 3_600_000);
    }

    #[tokio::test(start_paused = true)]
    async fn grid_instants_are_whole_steps_from_the_anchor() {
        let clock = Clock::new();
        let start = clock.now().at;
        let step = Duration::from_millis(200);
        // On the grid already: unchanged.
        assert_eq!(clock.on_grid(start, step), start);
        assert_eq!(clock.on_grid(start + step, step), start + step);
        // Between two points: the later one, from either side of the first.
        let a = clock.on_grid(start + Duration::from_millis(1), step);
        let b = clock.on_grid(start + Duration::from_millis(199), step);
        assert_eq!(a, start + step);
        assert_eq!(b, start + step);
        // Two clocks copied from one share the grid.
        tokio::time::advance(Duration::from_millis(777)).await;
        let copy = clock;
        assert_eq!(
            copy.on_grid(clock.now().at, step),
            start + Duration::from_millis(800)
        );
    }
}
