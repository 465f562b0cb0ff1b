//! Every metric conclave exports, in one registry: the rooms', the media
//! plane's and the policy catalog's counters (each subsystem owns its own),
//! the signaling edge's, and the standard process metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::media::MediaMetrics;
use crate::policy::catalog::CatalogMetrics;
use crate::room::RoomMetrics;
use crate::telemetry::{ProcessCollector, ReasonLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
    pub code: u16,
}

/// Every metric conclave exports.
pub struct Metrics {
    registry: Registry,
    pub rooms: Arc<RoomMetrics>,
    pub media: Arc<MediaMetrics>,
    pub catalog: Arc<CatalogMetrics>,
    pub scripts: Arc<crate::script::pool::PoolMetrics>,
    /// Open signaling connections.
    pub connections: Gauge,
    pub requests: Family<RequestLabel, Counter>,
    pub request_seconds: Family<RequestLabel, Histogram>,
    pub rejected_frames: Family<ReasonLabel, Counter>,
    pub connections_closed: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    /// A single node's metrics.
    pub fn new() -> Arc<Metrics> {
        Self::with_cluster(None)
    }

    /// With `cluster`, a cluster node's: its own and the cluster's
    /// (`conclave_cluster_*`, see `cluster::metrics`).
    pub fn with_cluster(cluster: Option<&crate::cluster::metrics::ClusterMetrics>) -> Arc<Metrics> {
        // The standard process metrics carry no prefix; everything of ours
        // lives under `conclave_`.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("conclave");
        let rooms = Arc::new(RoomMetrics::default());
        rooms.register(registry);
        let connections = Gauge::default();
        let requests = Family::<RequestLabel, Counter>::default();
        let request_seconds = Family::<RequestLabel, Histogram>::new_with_constructor(|| {
            // 50 µs to ~3 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 3.0, 11,
            ))
        });
        let rejected_frames = Family::<ReasonLabel, Counter>::default();
        let connections_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections",
            "Open signaling connections",
            connections.clone(),
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
        registry.register(
            "connections_closed",
            "Signaling connections ended, by why: gone (the client left or the socket failed), too_slow, write_timeout, no_hello, heartbeat, too_big, rate, shutdown",
            connections_closed.clone(),
        );
        let media = Arc::new(MediaMetrics::default());
        media.register(registry);
        let scripts = Arc::new(crate::script::pool::PoolMetrics::default());
        scripts.register(registry);
        if let Some(cluster) = cluster {
            cluster.register(registry);
        }
        let catalog = Arc::new(CatalogMetrics::default());
        registry.register(
            "policy_loads",
            "Reads of script and plugin files, by kind and outcome: loaded, failed, unchanged, deleted",
            catalog.loads.clone(),
        );
        registry.register(
            "policy_limits",
            "Script API calls refused at a [policy.effects] limit, by limit: actions_per_call, message_bytes_per_call, timers_per_room, metadata_bytes, store_keys, store_bytes",
            catalog.limits.clone(),
        );
        registry.register(
            "policy_failures",
            "Failed hook calls and plugin checks in rooms, by hook (or load, plugin) and kind: error, budget, memory, plugin",
            catalog.failures.clone(),
        );
        registry.register(
            "policy_shadow_decisions",
            "Decide hooks a shadow policy answered beside the live one, by outcome: agree, disagree, failed, dropped",
            catalog.shadow.clone(),
        );
        Arc::new(Metrics {
            registry: root,
            rooms,
            media,
            catalog,
            scripts,
            connections,
            requests,
            request_seconds,
            rejected_frames,
            connections_closed,
        })
    }

    pub fn observe_request(&self, request: &'static str, code: u16, seconds: f64) {
        let label = RequestLabel { request, code };
        self.requests.get_or_create(&label).inc();
        self.request_seconds.get_or_create(&label).observe(seconds);
    }

    pub fn rejected_frame(&self, reason: &'static str) {
        self.rejected_frames
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_standard_process_metrics_without_our_prefix() {
        let text = Metrics::new().encode();
        assert!(text.contains("conclave_rooms "), "{text}");
        if cfg!(target_os = "linux") {
            assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
            assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        }
    }
}
