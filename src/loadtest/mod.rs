//! The load tester: simulated participants that load a server over the
//! network, as real clients do, and a report of what they saw.
//!
//! A run has three stages. **Joining**: every participant joins through
//! [`crate::client::Participant`] (publishers first, so rooms exist before
//! their audience arrives), a few at a time; a failed join is counted and
//! named, never fatal. **Running**: publishers send 20 ms Opus frames at 50
//! packets/s (and with `video`, synthetic VP8 at about 30 frames/s) for the
//! configured duration, while everyone records what arrives. **Draining**:
//! sending stops, packets in flight land, everyone leaves. The server's CPU
//! and memory come from its `/metrics` (the standard process metrics), this
//! process's CPU from `/proc/self/stat`, both over the running stage, so the
//! report shows whether the load tester itself was the bottleneck.
//!
//! Against a cluster, give every node's URL (`url` and `also`): participants
//! are dealt over them in turn, so a room's members arrive through several
//! nodes and most reach its owner through a relay, as a cluster's clients
//! do; every node's metrics are read and added up, and the report shows
//! each node beside the total.
//!
//! - [`args`](self::args): the command line and the binary's edge ([`run_cli`]).
//! - `plan`: who joins which room, with a token each.
//! - `driver`: one task per participant, from join to leave.
//! - `source`: the Opus and VP8 packets publishers send.
//! - `stats`: per-track loss and RFC 3550 jitter; percentiles.
//! - `scrape`: the server's `/metrics`.
//! - [`progress`](self::progress): the once-a-second view and its printer.
//! - [`report`](self::report): the [`Report`], its table and its JSON.
//!
//! ```no_run
//! # async fn demo() -> Result<(), conclave::loadtest::LoadtestError> {
//! let mut config = conclave::loadtest::Config::new("ws://127.0.0.1:7880/ws");
//! config.rooms = 2;
//! config.subscribers = 20;
//! let report = conclave::loadtest::run(config).await?;
//! println!("{}", report.summary());
//! # Ok(()) }
//! ```

pub mod args;
mod driver;
mod plan;
pub mod progress;
pub mod report;
mod scrape;
mod source;
mod stats;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use args::{LoadtestArgs, run_cli};
pub use progress::{Progress, Stage};
pub use report::{ParticipantError, Report};
pub use stats::Percentiles;

use crate::audio::AudioError;
use crate::auth::{Auth, AuthError};
use crate::telemetry;
use driver::{Outcome, Shared, Signals};
use report::Readings;
use scrape::Scrapers;

/// Why a run could not take place at all. Failures of single participants
/// are not errors: they are in the [`Report`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadtestError {
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid settings: {0}")]
    Invalid(String),
    #[error("cannot mint tokens: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot encode the test tone: {0}")]
    Audio(#[from] AudioError),
    #[error("cannot write the report to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--secret: {0}")]
    Secret(AuthError),
    #[error("no participant joined; the first failure: {first}")]
    NothingJoined { first: String },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The signaling URL, `ws://host:port/ws`.
    pub url: String,
    /// Other nodes of the same cluster: participant `i` joins through
    /// `[url, also..][i % n]`.
    pub also: Vec<String>,
    /// Where the server's metrics are; by default `/metrics` on the host
    /// and port of `url`.
    pub metrics_url: Option<String>,
    /// Where each of `also`'s metrics are, in order; by default derived
    /// from each URL as for `url`.
    pub also_metrics: Vec<String>,
    pub rooms: usize,
    /// Per room.
    pub publishers: usize,
    /// Per room.
    pub subscribers: usize,
    /// How long publishers send.
    pub duration: Duration,
    pub video: bool,
    /// Signs every participant's token: the server's key.
    pub auth: Auth,
    /// Rooms are `<prefix>-r<N>`.
    pub room_prefix: String,
    /// Joins in progress at once.
    pub join_concurrency: usize,
    /// How long one join may take.
    pub join_timeout: Duration,
}

impl Config {
    /// One room, one publisher, ten subscribers, 30 s of audio, dev key.
    pub fn new(url: &str) -> Config {
        Config {
            url: url.to_owned(),
            also: Vec::new(),
            metrics_url: None,
            also_metrics: Vec::new(),
            rooms: 1,
            publishers: 1,
            subscribers: 10,
            duration: Duration::from_secs(30),
            video: false,
            auth: Auth::dev(),
            room_prefix: "lt".to_owned(),
            join_concurrency: 8,
            join_timeout: Duration::from_secs(15),
        }
    }

    fn check(&self) -> Result<(), LoadtestError> {
        if self.rooms == 0 || self.publishers + self.subscribers == 0 {
            return Err(LoadtestError::Invalid(
                "nobody to run: rooms and publishers + subscribers must be at least 1".into(),
            ));
        }
        if self.join_concurrency == 0 {
            return Err(LoadtestError::Invalid(
                "join concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Every signaling URL, `url` first.
    fn urls(&self) -> Vec<String> {
        std::iter::once(self.url.clone())
            .chain(self.also.iter().cloned())
            .collect()
    }

    /// The metrics URLs as given: none (all derived), or one per URL.
    fn metrics_urls(&self) -> Result<Vec<String>, LoadtestError> {
        let urls = self.urls();
        match (&self.metrics_url, self.also_metrics.is_empty()) {
            (None, true) => Ok(Vec::new()),
            (Some(first), true) if urls.len() == 1 => Ok(vec![first.clone()]),
            (Some(first), false) => Ok(std::iter::once(first.clone())
                .chain(self.also_metrics.iter().cloned())
                .collect()),
            _ => Err(LoadtestError::Invalid(
                "give a metrics URL for every signaling URL, or for none".into(),
            )),
        }
    }
}

/// Runs a load test and reports.
pub async fn run(config: Config) -> Result<Report, LoadtestError> {
    run_with_progress(config, |_| {}).await
}

/// Runs a load test, calling `show` once a second with the live figures.
pub async fn run_with_progress(
    config: Config,
    show: impl FnMut(&Progress) + Send + 'static,
) -> Result<Report, LoadtestError> {
    config.check()?;
    let urls = config.urls();
    let scraper = Scrapers::new(&urls, &config.metrics_urls()?)?;
    // Valid for the whole run, however slow the joins.
    let ttl = config.duration + config.join_timeout * 2 + Duration::from_secs(3600);
    let shape = plan::Shape {
        rooms: config.rooms,
        publishers: config.publishers,
        subscribers: config.subscribers,
        nodes: urls.len(),
    };
    let specs = plan::participants(&config.auth, &config.room_prefix, shape, ttl)?;
    let shared = Arc::new(Shared {
        urls: urls.clone(),
        video: config.video,
        bind: local_bind(&config.url),
        join_timeout: config.join_timeout,
        join_slots: Semaphore::new(config.join_concurrency),
        audio: source::AudioLoop::new()?,
        frames: source::VideoFrames::new(),
        live: stats::Live::default(),
        epoch: Instant::now(),
    });
    let (stage, stage_rx) = watch::channel(Stage::Joining);
    let stop_watching = CancellationToken::new();
    let watcher = tokio::spawn(progress::watch(
        shared.clone(),
        scraper.clone(),
        specs.len() as u64,
        stage_rx,
        stop_watching.clone(),
        Box::new(show),
    ));
    let mut readings = Readings {
        metrics_urls: scraper.urls(),
        ..Readings::default()
    };
    let before = scrape::total(&scraper.scrape().await);
    readings.rss_before = before.as_ref().ok().and_then(|s| s.rss_bytes);

    // Publishers join first: the first of each room creates it.
    let signals = Signals::default();
    let (publishers, subscribers): (Vec<_>, Vec<_>) = specs.into_iter().partition(|s| s.publisher);
    let mut drivers = Vec::new();
    for group in [publishers, subscribers] {
        let mut joined = Vec::new();
        for spec in group {
            let (tx, rx) = oneshot::channel();
            joined.push(rx);
            drivers.push(tokio::spawn(driver::drive(
                spec,
                shared.clone(),
                tx,
                signals.clone(),
            )));
        }
        for rx in joined {
            // A driver always answers before its task can end.
            let _ = rx.await;
        }
    }

    let _ = stage.send(Stage::Running);
    let start_server = scraper.scrape().await;
    let start_own = telemetry::process_cpu_seconds();
    let started = Instant::now();
    signals.start.cancel();
    tokio::time::sleep(config.duration).await;
    signals.stop.cancel();
    readings.media_seconds = started.elapsed().as_secs_f64();
    readings.own_cpu_seconds = telemetry::process_cpu_seconds()
        .zip(start_own)
        .map(|(end, start)| end - start);
    let end_server = scraper.scrape().await;
    readings.server_seconds = started.elapsed().as_secs_f64();
    readings.nodes = start_server
        .iter()
        .zip(&end_server)
        .map(|(start, end)| report::NodeReading::between(start, end))
        .collect();
    let (start_server, end_server) = (scrape::total(&start_server), scrape::total(&end_server));
    match (&start_server, &end_server) {
        (Ok(start), Ok(end)) => {
            readings.server_cpu_seconds =
                end.cpu_seconds.zip(start.cpu_seconds).map(|(e, s)| e - s);
            readings.server_forwarded = end.forwarded.zip(start.forwarded).map(|(e, s)| e - s);
            if readings.server_cpu_seconds.is_none() {
                readings.server_error = Some(
                    "the server exports no process_cpu_seconds_total (not Linux, or an older conclave)"
                        .into(),
                );
            }
        }
        (Err(e), _) | (_, Err(e)) => readings.server_error = Some(e.clone()),
    }

    let _ = stage.send(Stage::Draining);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(drivers.len());
    for handle in drivers {
        match handle.await {
            Ok(outcome) => outcomes.push(outcome),
            // A driver never panics on its input; if it did, that is a bug
            // worth its backtrace.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("driver tasks are never aborted: {e}"),
        }
    }
    stop_watching.cancel();
    let watched = watcher.await.unwrap_or_default();
    readings.rss_peak = watched.rss_peak.max(readings.rss_before);
    Ok(Report::build(&config, &outcomes, readings))
}

/// The local address for ICE: loopback for a server on this machine (one
/// candidate, checked at once), every interface otherwise.
fn local_bind(url: &str) -> SocketAddr {
    let host = url
        .parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()));
    let ip = match host.as_deref() {
        Some("localhost") => Ipv4Addr::LOCALHOST.into(),
        Some(h) => h
            .parse::<IpAddr>()
            .ok()
            .filter(IpAddr::is_loopback)
            .unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
        None => Ipv4Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}
