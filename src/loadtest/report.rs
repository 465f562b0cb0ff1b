//! The result of a run: built from every participant's outcome and the
//! CPU and metrics snapshots, printed as a table, saved as JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::driver::Outcome;
use super::stats::Percentiles;
use super::{Config, LoadtestError};
use crate::model::MediaKind;

/// Everything a run measured. Serialises to the `--json` report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub settings: Settings,
    /// Length of the media phase (from the start signal to the stop
    /// signal), which CPU shares and rates are over.
    pub media_seconds: f64,
    pub joins: Joins,
    pub audio: MediaReport,
    /// Present for `--video` runs.
    pub video: Option<MediaReport>,
    /// The whole server: every node's figures added up.
    pub server: ServerReport,
    /// Each node, when the run went through more than one (in the order of
    /// the URLs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    pub load_tester: LoadTesterReport,
    /// Every participant that failed to join or ran into trouble later.
    pub errors: Vec<ParticipantError>,
}

/// What was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub url: String,
    /// The other nodes' URLs, when there were any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub duration_seconds: f64,
    pub video: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joins {
    pub attempted: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// From calling `Participant::join` to media connected: WebSocket,
    /// hello, create (publishers), join, offer/answer, ICE and DTLS.
    pub latency_ms: Percentiles,
}

/// One kind of media across every (receiver, publisher) pair.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaReport {
    /// A track per receiver for each other publisher in its room that joined.
    pub tracks_expected: u64,
    /// Of those, the ones at least one packet arrived on.
    pub tracks_received: u64,
    /// Packets the publishers sent.
    pub packets_sent: u64,
    /// Each publisher's sent packets times the receivers in its room: what
    /// a lossless run delivers.
    pub packets_expected: u64,
    pub packets_received: u64,
    /// Gaps in the sequence numbers each receiver saw. Packets lost after
    /// the last one to arrive on a track are not in it (compare
    /// `packets_received` with `packets_expected`).
    pub packets_lost: u64,
    /// `packets_lost` of `packets_received + packets_lost`.
    pub loss_percent: f64,
    /// What never arrived, of `packets_expected`: sequence gaps plus
    /// packets lost before a track's first arrival or after its last
    /// (dropped by the server before forwarding, or at the very start or end).
    pub undelivered_percent: f64,
    /// RFC 3550 interarrival jitter: each track's estimate averaged over
    /// its packets, then the mean over tracks.
    pub jitter_mean_ms: f64,
    /// The highest the estimate reached on any track.
    pub jitter_max_ms: f64,
}

/// The server, from its `/metrics` (the whole process: anything else it
/// serves at the time is in the figures too).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    pub metrics_url: String,
    /// Why some figures are missing, when they are.
    pub error: Option<String>,
    /// CPU seconds used during the media phase.
    pub cpu_seconds: Option<f64>,
    /// The same as a share of one core (100 = one core busy).
    pub cpu_percent: Option<f64>,
    pub rss_before_bytes: Option<u64>,
    /// Highest resident memory seen (scraped once a second).
    pub rss_peak_bytes: Option<u64>,
    /// Packets forwarded during the media phase.
    pub forwarded_packets: Option<u64>,
    pub forwarded_per_cpu_second: Option<f64>,
}

/// One node of a run through several.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The signaling URL participants joined through.
    pub url: String,
    pub metrics_url: String,
    /// Participants that joined through it, and that failed to.
    pub joined: usize,
    pub join_failed: usize,
    /// CPU seconds used during the media phase.
    pub cpu_seconds: Option<f64>,
    /// Packets it forwarded during the media phase: the rooms it owns.
    pub forwarded_packets: Option<u64>,
    pub error: Option<String>,
}

/// This process, over the media phase, so it can be set beside the server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadTesterReport {
    pub cpu_seconds: Option<f64>,
    /// Share of one core (100 = one core busy).
    pub cpu_percent: Option<f64>,
    /// Cores available to this process.
    pub cores: usize,
}

/// Which part of the run a participant's error belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Join,
    Media,
}

/// A participant that failed, named, with the cause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParticipantError {
    pub room: String,
    pub user: String,
    pub phase: Phase,
    pub cause: String,
}

impl std::fmt::Display for ParticipantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.phase {
            Phase::Join => "could not join",
            Phase::Media => "failed during the run",
        };
        write!(
            f,
            "{} in room {} {what}: {}",
            self.user, self.room, self.cause
        )
    }
}

/// CPU and server readings taken by the run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Readings {
    pub metrics_urls: Vec<String>,
    /// Each node's figures over the media phase, in URL order.
    pub nodes: Vec<NodeReading>,
    pub media_seconds: f64,
    pub own_cpu_seconds: Option<f64>,
    pub server_cpu_seconds: Option<f64>,
    /// Wall time between the two server scrapes.
    pub server_seconds: f64,
    pub server_forwarded: Option<u64>,
    pub rss_before: Option<u64>,
    pub rss_peak: Option<u64>,
    pub server_error: Option<String>,
}

/// One node's figures over the media phase.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeReading {
    pub cpu_seconds: Option<f64>,
    pub forwarded: Option<u64>,
    pub error: Option<String>,
}

impl NodeReading {
    pub(crate) fn between(
        start: &Result<super::scrape::Sample, String>,
        end: &Result<super::scrape::Sample, String>,
    ) -> NodeReading {
        match (start, end) {
            (Ok(s), Ok(e)) => NodeReading {
                cpu_seconds: e.cpu_seconds.zip(s.cpu_seconds).map(|(e, s)| e - s),
                forwarded: e.forwarded.zip(s.forwarded).map(|(e, s)| e - s),
                error: None,
            },
            (Err(e), _) | (_, Err(e)) => NodeReading {
                error: Some(e.clone()),
                ..NodeReading::default()
            },
        }
    }
}

impl Report {
    pub(crate) fn build(config: &Config, outcomes: &[Outcome], readings: Readings) -> Report {
        let latencies: Vec<_> = outcomes
            .iter()
            .filter_map(|o| o.join.clone().ok())
            .collect();
        let mut errors = Vec::new();
        for o in outcomes {
            let (phase, cause) = match (&o.join, &o.error) {
                (Err(cause), _) => (Phase::Join, cause),
                (Ok(_), Some(cause)) => (Phase::Media, cause),
                (Ok(_), None) => continue,
            };
            errors.push(ParticipantError {
                room: o.spec.room.clone(),
                user: o.spec.user.clone(),
                phase,
                cause: cause.clone(),
            });
        }
        let server_cpu = readings.server_cpu_seconds;
        let per_cpu = match (readings.server_forwarded, server_cpu) {
            (Some(n), Some(cpu)) if cpu > 0.0 => Some(n as f64 / cpu),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let urls = config.urls();
        let nodes = if urls.len() > 1 {
            urls.iter()
                .enumerate()
                .map(|(i, url)| {
                    let through: Vec<_> = outcomes.iter().filter(|o| o.spec.node == i).collect();
                    let joined = through.iter().filter(|o| o.join.is_ok()).count();
                    let reading = readings.nodes.get(i).cloned().unwrap_or_default();
                    NodeReport {
                        url: url.clone(),
                        metrics_url: readings.metrics_urls.get(i).cloned().unwrap_or_default(),
                        joined,
                        join_failed: through.len() - joined,
                        cpu_seconds: reading.cpu_seconds,
                        forwarded_packets: reading.forwarded,
                        error: reading.error,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Report {
            settings: Settings {
                url: config.url.clone(),
                also: config.also.clone(),
                rooms: config.rooms,
                publishers: config.publishers,
                subscribers: config.subscribers,
                duration_seconds: config.duration.as_secs_f64(),
                video: config.video,
            },
            media_seconds: readings.media_seconds,
            joins: Joins {
                attempted: outcomes.len(),
                succeeded: latencies.len(),
                failed: outcomes.len() - latencies.len(),
                latency_ms: Percentiles::of(latencies),
            },
            audio: media(outcomes, MediaKind::Audio),
            video: config.video.then(|| media(outcomes, MediaKind::Video)),
            server: ServerReport {
                metrics_url: readings.metrics_urls.join(", "),
                error: readings.server_error,
                cpu_seconds: server_cpu,
                cpu_percent: server_cpu.map(|c| share(c, readings.server_seconds)),
                rss_before_bytes: readings.rss_before,
                rss_peak_bytes: readings.rss_peak,
                forwarded_packets: readings.server_forwarded,
                forwarded_per_cpu_second: per_cpu,
            },
            nodes,
            load_tester: LoadTesterReport {
                cpu_seconds: readings.own_cpu_seconds,
                cpu_percent: readings
                    .own_cpu_seconds
                    .map(|c| share(c, readings.media_seconds)),
                cores,
            },
            errors,
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    pub fn write_json(&self, path: &Path) -> Result<(), LoadtestError> {
        std::fs::write(path, self.to_json() + "\n").map_err(|source| LoadtestError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "conclave loadtest: {} room(s) x ({} publisher(s) + {} subscriber(s)), {}, {:.0} s, {}",
            s.rooms,
            s.publishers,
            s.subscribers,
            if s.video { "audio + video" } else { "audio" },
            s.duration_seconds,
            std::iter::once(&s.url)
                .chain(&s.also)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let j = &self.joins;
        let l = &j.latency_ms;
        let _ = writeln!(
            out,
            "\njoins       {} of {} ({} failed)   latency p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            j.succeeded, j.attempted, j.failed, l.p50, l.p95, l.p99, l.max
        );
        let _ = writeln!(
            out,
            "\n{:<6} {:>17} {:>11} {:>12} {:>12} {:>9} {:>7} {:>12} {:>17}",
            "media",
            "tracks recv/exp",
            "sent",
            "expected",
            "received",
            "lost",
            "loss",
            "undelivered",
            "jitter mean/max"
        );
        let rows = std::iter::once(("audio", &self.audio))
            .chain(self.video.as_ref().map(|v| ("video", v)));
        for (name, m) in rows {
            let _ = writeln!(
                out,
                "{:<6} {:>17} {:>11} {:>12} {:>12} {:>9} {:>6.2}% {:>11.2}% {:>17}",
                name,
                format!("{}/{}", m.tracks_received, m.tracks_expected),
                m.packets_sent,
                m.packets_expected,
                m.packets_received,
                m.packets_lost,
                m.loss_percent,
                m.undelivered_percent,
                format!("{:.1} / {:.1} ms", m.jitter_mean_ms, m.jitter_max_ms)
            );
        }
        let v = &self.server;
        let _ = writeln!(out, "\nserver      {}", v.metrics_url);
        if let Some(cpu) = v.cpu_seconds {
            let _ = writeln!(
                out,
                "  CPU       {:.1}% of a core ({cpu:.2} s over the media phase)",
                v.cpu_percent.unwrap_or(0.0)
            );
        }
        if let Some(peak) = v.rss_peak_bytes {
            let before = v.rss_before_bytes.map(mib).unwrap_or_else(|| "?".into());
            let _ = writeln!(
                out,
                "  memory    {} peak RSS ({before} before joins)",
                mib(peak)
            );
        }
        if let Some(n) = v.forwarded_packets {
            let _ = write!(out, "  forwarded {n} packets");
            if let Some(per) = v.forwarded_per_cpu_second.filter(|p| *p > 0.0) {
                let _ = write!(out, ", {per:.0} per CPU-second ({:.1} µs each)", 1e6 / per);
            }
            out.push('\n');
        }
        if let Some(e) = &v.error {
            let _ = writeln!(out, "  (metrics incomplete: {e})");
        }
        for n in &self.nodes {
            let cpu = n
                .cpu_seconds
                .map_or_else(|| "?".into(), |c| format!("{c:.2} s"));
            let forwarded = n
                .forwarded_packets
                .map_or_else(|| "?".into(), |f| f.to_string());
            let _ = writeln!(
                out,
                "  node      {}  joined {} ({} failed)  CPU {cpu}  forwarded {forwarded}{}",
                n.url,
                n.joined,
                n.join_failed,
                n.error
                    .as_ref()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            );
        }
        let t = &self.load_tester;
        match t.cpu_percent {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "load tester {p:.1}% of a core ({} cores available)",
                    t.cores
                );
            }
            None => out.push_str("load tester CPU unknown (no /proc/self/stat)\n"),
        }
        if !self.errors.is_empty() {
            const SHOWN: usize = 10;
            let _ = writeln!(out, "\nerrors ({}):", self.errors.len());
            for e in self.errors.iter().take(SHOWN) {
                let _ = writeln!(out, "  {e}");
            }
            if self.errors.len() > SHOWN {
                let _ = writeln!(
                    out,
                    "  ... and {} more (see --json)",
                    self.errors.len() - SHOWN
                );
            }
        }
        out
    }
}

/// Adds up one kind of media over every receiver and the publishers it
/// should hear: each other publisher in its room that joined.
fn media(outcomes: &[Outcome], kind: MediaKind) -> MediaReport {
    let mut publishers: HashMap<&str, Vec<&Outcome>> = HashMap::new();
    for o in outcomes
        .iter()
        .filter(|o| o.spec.publisher && o.join.is_ok())
    {
        publishers.entry(o.spec.room.as_str()).or_default().push(o);
    }
    let mut m = MediaReport::default();
    let mut jitter_sum = 0.0;
    for receiver in outcomes.iter().filter(|o| o.join.is_ok()) {
        let others = publishers
            .get(receiver.spec.room.as_str())
            .into_iter()
            .flatten();
        for publisher in others.filter(|p| p.spec.user != receiver.spec.user) {
            let sent = match kind {
                MediaKind::Audio => publisher.sent.audio,
                MediaKind::Video => publisher.sent.video,
            };
            m.tracks_expected += 1;
            m.packets_expected += sent;
            let key = (publisher.spec.user.as_str().into(), kind);
            let Some(track) = receiver.tracks.get(&key) else {
                continue;
            };
            m.tracks_received += 1;
            m.packets_received += track.received();
            m.packets_lost += track.lost();
            jitter_sum += track.jitter_mean_ms();
            m.jitter_max_ms = m.jitter_max_ms.max(track.jitter_max_ms());
        }
    }
    for o in outcomes.iter().filter(|o| o.spec.publisher) {
        m.packets_sent += match kind {
            MediaKind::Audio => o.sent.audio,
            MediaKind::Video => o.sent.video,
        };
    }
    let seen = m.packets_received + m.packets_lost;
    if seen > 0 {
        m.loss_percent = 100.0 * m.packets_lost as f64 / seen as f64;
    }
    if m.packets_expected > 0 {
        let missing = m.packets_expected.saturating_sub(m.packets_received);
        m.undelivered_percent = 100.0 * missing as f64 / m.packets_expected as f64;
    }
    if m.tracks_received > 0 {
        m.jitter_mean_ms = jitter_sum / m.tracks_received as f64;
    }
    m
}

/// CPU seconds over wall seconds, as a percentage of one core.
fn share(cpu: f64, wall: f64) -> f64 {
    if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::driver::Sent;
    use super::super::plan::Spec;
    use super::super::stats::TrackStats;
    use super::*;

    fn outcome(room: &str, user: &str, publisher: bool, joined: bool) -> Outcome {
        Outcome {
            spec: Spec {
                room: room.into(),
                user: user.into(),
                publisher,
                token: String::new(),
                node: 0,
            },
            join: if joined {
                Ok(Duration::from_millis(40))
            } else {
                Err("cannot connect: refused".into())
            },
            sent: Sent::default(),
            tracks: HashMap::new(),
            error: None,
        }
    }

    /// A track of `n` packets, sequence numbers 0.. with `skipped` missing.
    fn track(n: u16, skipped: Option<u16>) -> TrackStats {
        let mut t = TrackStats::new(48_000, 0);
        for seq in (0..n).filter(|s| Some(*s) != skipped) {
            t.packet(
                seq,
                u32::from(seq) * 960,
                Duration::from_millis(20 * u64::from(seq)),
            );
        }
        t
    }

    #[test]
    fn counts_tracks_packets_and_failures_per_room() {
        let mut p = outcome("r0", "r0-p0", true, true);
        p.sent.audio = 100;
        let mut s0 = outcome("r0", "r0-s0", false, true);
        s0.tracks
            .insert(("r0-p0".into(), MediaKind::Audio), track(100, Some(50)));
        // Heard nothing: expected but not received.
        let s1 = outcome("r0", "r0-s1", false, true);
        let failed = outcome("r0", "r0-s2", false, false);
        // Another room's packets are not this room's.
        let mut other = outcome("r1", "r1-s0", false, true);
        other
            .tracks
            .insert(("r0-p0".into(), MediaKind::Audio), track(10, None));

        let config = Config::new("ws://127.0.0.1:1/ws");
        let outcomes = [p, s0, s1, failed, other];
        let report = Report::build(&config, &outcomes, Readings::default());
        assert_eq!((report.joins.succeeded, report.joins.failed), (4, 1));
        let a = &report.audio;
        assert_eq!((a.tracks_expected, a.tracks_received), (2, 1));
        assert_eq!((a.packets_sent, a.packets_expected), (100, 200));
        assert_eq!((a.packets_received, a.packets_lost), (99, 1));
        assert!((a.loss_percent - 1.0).abs() < 1e-9);
        // r0-s1 heard nothing: 101 of the 200 expected never arrived.
        assert!((a.undelivered_percent - 50.5).abs() < 1e-9);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(
            report.errors[0].to_string(),
            "r0-s2 in room r0 could not join: cannot connect: refused"
        );
        let back: Report = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            (back.audio, back.errors),
            (report.audio.clone(), report.errors.clone())
        );
        assert!(report.summary().contains("joins       4 of 5 (1 failed)"));
        assert!(report.nodes.is_empty(), "one URL: no per-node rows");
    }

    #[test]
    fn a_run_over_several_nodes_reports_each_beside_the_total() {
        let mut config = Config::new("ws://127.0.0.1:1/ws");
        config.also = vec!["ws://127.0.0.1:2/ws".into()];
        let mut through_b = outcome("r0", "r0-s0", false, true);
        through_b.spec.node = 1;
        let mut failed_b = outcome("r0", "r0-s1", false, false);
        failed_b.spec.node = 1;
        let outcomes = [outcome("r0", "r0-p0", true, true), through_b, failed_b];
        let readings = Readings {
            metrics_urls: vec![
                "http://127.0.0.1:1/metrics".into(),
                "http://127.0.0.1:2/metrics".into(),
            ],
            nodes: vec![
                NodeReading {
                    cpu_seconds: Some(2.0),
                    forwarded: Some(500),
                    error: None,
                },
                NodeReading {
                    error: Some("GET http://127.0.0.1:2/metrics: refused".into()),
                    ..NodeReading::default()
                },
            ],
            ..Readings::default()
        };
        let report = Report::build(&config, &outcomes, readings);
        let rows: Vec<_> = report
            .nodes
            .iter()
            .map(|n| (n.url.as_str(), n.joined, n.join_failed, n.forwarded_packets))
            .collect();
        assert_eq!(
            rows,
            [
                ("ws://127.0.0.1:1/ws", 1, 0, Some(500)),
                ("ws://127.0.0.1:2/ws", 1, 1, None)
            ]
        );
        let summary = report.summary();
        assert!(
            summary.contains("ws://127.0.0.1:1/ws ws://127.0.0.1:2/ws"),
            "{summary}"
        );
        assert!(
            summary.contains("node      ws://127.0.0.1:2/ws  joined 1 (1 failed)"),
            "{summary}"
        );
        let back: Report = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back.nodes, report.nodes);
        assert_eq!(back.settings.also, config.also);
    }
}
