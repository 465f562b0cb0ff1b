//! `conclave loadtest`: the command line, and the binary's edge that runs
//! the test, prints the summary and writes the JSON report.

use std::path::PathBuf;
use std::time::Duration;

use super::progress::ProgressLine;
use super::{Config, LoadtestError, run_with_progress};
use crate::auth::Auth;

/// `conclave loadtest` arguments.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// Signaling URL of the server under test. Give it once per node to
    /// load a cluster: participants are dealt over the nodes in turn, and
    /// every node's metrics are read and added up.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:7880/ws"
    )]
    pub urls: Vec<String>,
    /// Where the server's metrics are, once per --url in the same order
    /// [default: http://<host:port of each --url>/metrics].
    #[arg(long = "metrics-url", value_name = "URL")]
    pub metrics_urls: Vec<String>,
    /// Rooms to load.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room (interactors sending audio, and video with --video).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers per room (audience, receiving only).
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// How long publishers send, once everyone has joined.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Publish synthetic VP8 video (about 30 fps) as well as audio.
    #[arg(long)]
    pub video: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Sign tokens with the built-in dev key, as `serve --dev` checks them
    /// (the default when no secret is given; wins over one that is).
    #[arg(long)]
    pub dev: bool,
    /// The server's auth secret, to sign each participant's token with.
    #[arg(
        long,
        visible_alias = "token-secret",
        env = "CONCLAVE_AUTH__SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// Rooms are named `<prefix>-r<N>`, users `<prefix>-r<N>-p<M>` and `-s<M>`.
    #[arg(long, default_value = "lt")]
    pub room_prefix: String,
    /// Joins in progress at once.
    #[arg(long, default_value_t = 8)]
    pub join_concurrency: usize,
    /// How long one join (connect to media up) may take before it counts as failed.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub join_timeout: Duration,
}

impl LoadtestArgs {
    fn config(self) -> Result<Config, LoadtestError> {
        let auth = match (&self.secret, self.dev) {
            (Some(secret), false) => Auth::new(secret).map_err(LoadtestError::Secret)?,
            _ => Auth::dev(),
        };
        let mut urls = self.urls.into_iter();
        let mut config = Config::new(&urls.next().unwrap_or_default());
        config.also = urls.collect();
        let mut metrics = self.metrics_urls.into_iter();
        config.metrics_url = metrics.next();
        config.also_metrics = metrics.collect();
        config.rooms = self.rooms;
        config.publishers = self.publishers;
        config.subscribers = self.subscribers;
        config.duration = self.duration;
        config.video = self.video;
        config.auth = auth;
        config.room_prefix = self.room_prefix;
        config.join_concurrency = self.join_concurrency;
        config.join_timeout = self.join_timeout;
        Ok(config)
    }
}

/// Runs `conclave loadtest`: progress on stderr, the summary on stdout, the
/// JSON report if asked. Fails only when nothing could be tested.
pub async fn run_cli(args: LoadtestArgs) -> Result<(), LoadtestError> {
    // The client libraries log through tracing; only errors belong beside
    // the progress line (RUST_LOG overrides).
    crate::telemetry::init_logging(crate::telemetry::LogFormat::Human, "error");
    let json = args.json.clone();
    let config = args.config()?;
    let mut line = ProgressLine::stderr();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Printing happens here, so the line can be finished before the summary.
    let printer = tokio::spawn(async move {
        while let Some(progress) = rx.recv().await {
            line.show(&progress);
        }
        line.finish();
    });
    let report = run_with_progress(config, move |p| {
        let _ = tx.send(p.clone());
    })
    .await;
    // The sender went with the run; the printer ends once it has drained.
    let _ = printer.await;
    let report = report?;
    print!("{}", report.summary());
    if let Some(path) = &json {
        report.write_json(path)?;
    }
    if report.joins.succeeded == 0 {
        let first = report
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(LoadtestError::NothingJoined { first });
    }
    Ok(())
}
