//! The live view: once a second, the participants' counters and a scrape of
//! the server, handed to whoever watches (the CLI prints a line to stderr).
//! The same scrapes give the server's peak memory for the report.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::driver::Shared;
use super::scrape::{self, Scrapers};
use super::stats::Live;
use crate::telemetry;

const EVERY: Duration = Duration::from_secs(1);

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Joining,
    Running,
    Draining,
}

/// One second's view of the run.
#[derive(Clone, Debug)]
pub struct Progress {
    pub stage: Stage,
    /// Since the run began (joins included).
    pub elapsed: Duration,
    pub participants: u64,
    pub joined: u64,
    pub join_failed: u64,
    pub sent_per_second: f64,
    pub received_per_second: f64,
    pub send_errors: u64,
    /// Share of one core over the last second (100 = one core).
    pub server_cpu_percent: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub own_cpu_percent: Option<f64>,
}

/// What watching saw that the report needs.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    pub rss_peak: Option<u64>,
}

/// Reports progress every second, and once more at `stop`.
pub(crate) async fn watch(
    shared: Arc<Shared>,
    scraper: Scrapers,
    participants: u64,
    stage: watch::Receiver<Stage>,
    stop: CancellationToken,
    mut show: Box<dyn FnMut(&Progress) + Send>,
) -> Watched {
    let began = Instant::now();
    let mut watched = Watched::default();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the first view comes a second in.
    tick.tick().await;
    let live = &shared.live;
    let mut last = (
        Instant::now(),
        0u64,
        0u64,
        telemetry::process_cpu_seconds(),
        None::<f64>,
    );
    loop {
        // One last view at the end, so even a short run shows one.
        let last_view = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let server = scrape::total(&scraper.scrape().await).ok();
        let now = Instant::now();
        let (sent, received) = (Live::get(&live.sent), Live::get(&live.received));
        let own_cpu = telemetry::process_cpu_seconds();
        let server_cpu = server.and_then(|s| s.cpu_seconds);
        let rss = server.and_then(|s| s.rss_bytes);
        if let Some(rss) = rss {
            watched.rss_peak = Some(watched.rss_peak.map_or(rss, |p| p.max(rss)));
        }
        let (at, last_sent, last_received, last_own, last_server) = last;
        let secs = now.duration_since(at).as_secs_f64().max(1e-3);
        let percent = |now: Option<f64>, then: Option<f64>| Some(100.0 * (now? - then?) / secs);
        show(&Progress {
            stage: *stage.borrow(),
            elapsed: began.elapsed(),
            participants,
            joined: Live::get(&live.joined),
            join_failed: Live::get(&live.join_failed),
            sent_per_second: (sent - last_sent) as f64 / secs,
            received_per_second: (received - last_received) as f64 / secs,
            send_errors: Live::get(&live.send_errors),
            server_cpu_percent: percent(server_cpu, last_server),
            server_rss_bytes: rss,
            own_cpu_percent: percent(own_cpu, last_own),
        });
        if last_view {
            return watched;
        }
        last = (now, sent, received, own_cpu, server_cpu);
    }
}

/// Prints progress to stderr: one line rewritten in place on a terminal,
/// a line per second otherwise (a log file, CI).
#[derive(Debug)]
pub struct ProgressLine {
    terminal: bool,
    printed: bool,
}

impl ProgressLine {
    pub fn stderr() -> ProgressLine {
        ProgressLine {
            terminal: std::io::stderr().is_terminal(),
            printed: false,
        }
    }

    pub fn show(&mut self, p: &Progress) {
        let line = format_line(p);
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not stop the run.
        let _ = if self.terminal {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.printed = true;
    }

    /// Ends the rewritten line so what follows starts on its own.
    pub fn finish(&mut self) {
        if self.terminal && self.printed {
            eprintln!();
        }
    }
}

fn format_line(p: &Progress) -> String {
    let stage = match p.stage {
        Stage::Joining => "joining ",
        Stage::Running => "running ",
        Stage::Draining => "draining",
    };
    let percent = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}%"));
    let rss = p
        .server_rss_bytes
        .map_or_else(|| "?".to_owned(), |b| format!("{} MiB", b >> 20));
    let mut line = format!(
        "[{:>4}s] {stage} joined {}/{} ({} failed)  sent {:.0}/s  received {:.0}/s  server cpu {} rss {rss}  loadtest cpu {}",
        p.elapsed.as_secs(),
        p.joined,
        p.participants,
        p.join_failed,
        p.sent_per_second,
        p.received_per_second,
        percent(p.server_cpu_percent),
        percent(p.own_cpu_percent),
    );
    if p.send_errors > 0 {
        line.push_str(&format!("  send errors {}", p.send_errors));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_is_known_and_marks_what_is_not() {
        let p = Progress {
            stage: Stage::Running,
            elapsed: Duration::from_secs(12),
            participants: 6,
            joined: 5,
            join_failed: 1,
            sent_per_second: 100.0,
            received_per_second: 400.0,
            send_errors: 0,
            server_cpu_percent: Some(12.4),
            server_rss_bytes: None,
            own_cpu_percent: Some(30.0),
        };
        assert_eq!(
            format_line(&p),
            "[  12s] running  joined 5/6 (1 failed)  sent 100/s  received 400/s  server cpu 12% rss ?  loadtest cpu 30%"
        );
    }
}
