//! Prometheus metrics and log set-up.
//!
//! Metrics are plain atomics behind `prometheus-client`; rooms and connections
//! update them directly (no lock on the hot path), `/metrics` encodes them.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
    pub code: u16,
}

/// Every metric conclave exports.
pub struct Metrics {
    registry: Registry,
    pub rooms: Gauge,
    pub members: Gauge,
    pub connections: Gauge,
    pub joins: Counter,
    pub leaves: Family<ReasonLabel, Counter>,
    pub rooms_closed: Family<ReasonLabel, Counter>,
    pub requests: Family<RequestLabel, Counter>,
    pub request_seconds: Family<RequestLabel, Histogram>,
    pub rejected_frames: Family<ReasonLabel, Counter>,
    pub media: Arc<crate::media::MediaMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("conclave");
        let rooms = Gauge::default();
        let members = Gauge::default();
        let connections = Gauge::default();
        let joins = Counter::default();
        let leaves = Family::<ReasonLabel, Counter>::default();
        let rooms_closed = Family::<ReasonLabel, Counter>::default();
        let requests = Family::<RequestLabel, Counter>::default();
        let request_seconds = Family::<RequestLabel, Histogram>::new_with_constructor(|| {
            // 50 µs to ~3 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 3.0, 11,
            ))
        });
        let rejected_frames = Family::<ReasonLabel, Counter>::default();
        registry.register("rooms", "Open rooms", rooms.clone());
        registry.register(
            "members",
            "Members in rooms, including those in their reconnect grace window",
            members.clone(),
        );
        registry.register(
            "connections",
            "Open signaling connections",
            connections.clone(),
        );
        registry.register("joins", "Members that joined a room", joins.clone());
        registry.register(
            "leaves",
            "Members that left a room, by reason",
            leaves.clone(),
        );
        registry.register(
            "rooms_closed",
            "Rooms closed, by reason",
            rooms_closed.clone(),
        );
        registry.register(
            "requests",
            "Signaling requests answered, by type and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a signaling request's arrival to its response, by type and status code",
            request_seconds.clone(),
        );
        registry.register(
            "rejected_frames",
            "Signaling frames refused without being applied: too_big, binary, malformed, rate",
            rejected_frames.clone(),
        );
        let media = Arc::new(crate::media::MediaMetrics::default());
        media.register(&mut registry);
        Arc::new(Metrics {
            media,
            registry,
            rooms,
            members,
            connections,
            joins,
            leaves,
            rooms_closed,
            requests,
            request_seconds,
            rejected_frames,
        })
    }

    pub fn observe_request(&self, request: &'static str, code: u16, seconds: f64) {
        let label = RequestLabel { request, code };
        self.requests.get_or_create(&label).inc();
        self.request_seconds.get_or_create(&label).observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    // Already installed (a test harness, say): keep the first.
    let _ = result;
}
