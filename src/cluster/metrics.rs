//! The cluster's metrics, on every node's `/metrics` beside its own.
//!
//! Two kinds. **This node's part** in the cluster: room claims by outcome,
//! relays open to other nodes, admin requests forwarded, bus messages,
//! heartbeats that failed. **The cluster as this node last saw it**: the
//! live nodes by state and the sums of their registered load, refreshed by
//! every heartbeat (a third of a lease), so one scrape of any node answers
//! "how big is the cluster now" without a query across nodes; summing the
//! per-node series of every node gives the same figures a heartbeat later.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{NodeInfo, NodeState};
use crate::room::claims::{ClaimError, ClaimKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabel {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// Every cluster metric; plain atomics, updated where the event happens.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub nodes: Family<StateLabel, Gauge>,
    pub rooms: Gauge,
    pub members: Gauge,
    pub forwarded_per_second: Gauge<f64, AtomicU64>,
    pub cpu: Gauge<f64, AtomicU64>,
    pub claims: Family<ClaimLabel, Counter>,
    pub relays: Gauge,
    pub admin_forwarded: Counter,
    pub bus_messages: Family<DirectionLabel, Counter>,
    pub heartbeat_failures: Counter,
}

impl ClusterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("cluster");
        registry.register(
            "nodes",
            "Live nodes of the cluster as of this node's last heartbeat, by state: serving, draining",
            self.nodes.clone(),
        );
        registry.register(
            "rooms",
            "Rooms on every live node, as they registered them",
            self.rooms.clone(),
        );
        registry.register(
            "members",
            "Members on every live node, as they registered them",
            self.members.clone(),
        );
        registry.register(
            "forwarded_packets_per_second",
            "RTP packets forwarded per second by every live node together",
            self.forwarded_per_second.clone(),
        );
        registry.register(
            "cpu_cores",
            "CPU used by every live node together, in cores",
            self.cpu.clone(),
        );
        registry.register(
            "claims",
            "Room claims this node made, by kind (create, revive, channel) and outcome (won, taken, gone, unavailable)",
            self.claims.clone(),
        );
        registry.register(
            "relays",
            "Signaling connections this node relays to the node owning their room",
            self.relays.clone(),
        );
        registry.register(
            "admin_forwarded",
            "Admin API requests this node sent to the node owning their room",
            self.admin_forwarded.clone(),
        );
        registry.register(
            "bus_messages",
            "Community and ban changes on the bus, by direction: published, received",
            self.bus_messages.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Heartbeats that could not reach Redis",
            self.heartbeat_failures.clone(),
        );
    }

    /// The cluster-wide gauges from a fresh read of the node registry.
    pub(crate) fn saw(&self, nodes: &[NodeInfo]) {
        let count = |state| nodes.iter().filter(|n| n.state == state).count() as i64;
        self.nodes
            .get_or_create(&StateLabel { state: "serving" })
            .set(count(NodeState::Serving));
        self.nodes
            .get_or_create(&StateLabel { state: "draining" })
            .set(count(NodeState::Draining));
        self.rooms.set(nodes.iter().map(|n| n.rooms as i64).sum());
        self.members
            .set(nodes.iter().map(|n| n.members as i64).sum());
        self.forwarded_per_second
            .set(nodes.iter().map(|n| n.forwarded_per_second).sum());
        self.cpu.set(nodes.iter().map(|n| n.cpu).sum());
    }

    pub(crate) fn claimed(&self, kind: ClaimKind, result: &Result<(), ClaimError>) {
        let kind = match kind {
            ClaimKind::Create => "create",
            ClaimKind::Revive => "revive",
            ClaimKind::Channel => "channel",
        };
        let outcome = match result {
            Ok(()) => "won",
            Err(ClaimError::Taken(_)) => "taken",
            Err(ClaimError::Gone) => "gone",
            Err(ClaimError::Unavailable(_)) => "unavailable",
        };
        self.claims
            .get_or_create(&ClaimLabel { kind, outcome })
            .inc();
    }

    pub(crate) fn bus(&self, direction: &'static str) {
        self.bus_messages
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: NodeState, rooms: u64, cpu: f64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: String::new(),
            media_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            region: String::new(),
            state,
            rooms,
            members: rooms * 2,
            forwarded_per_second: 100.0,
            cpu,
            seen_at: 0,
            started_at: 0,
            version: String::new(),
        }
    }

    #[test]
    fn the_cluster_gauges_are_the_sums_of_the_registered_nodes() {
        let metrics = ClusterMetrics::default();
        metrics.saw(&[
            node("a", NodeState::Serving, 2, 0.5),
            node("b", NodeState::Serving, 3, 0.25),
            node("c", NodeState::Draining, 1, 0.25),
        ]);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "cluster_nodes{state=\"serving\"} 2",
            "cluster_nodes{state=\"draining\"} 1",
            "cluster_rooms 6",
            "cluster_members 12",
            "cluster_forwarded_packets_per_second 300.0",
            "cluster_cpu_cores 1.0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // A node gone from the registry leaves the sums at the next read.
        metrics.saw(&[node("a", NodeState::Serving, 2, 0.5)]);
        assert_eq!(metrics.rooms.get(), 2);
        assert_eq!(
            metrics
                .nodes
                .get_or_create(&StateLabel { state: "draining" })
                .get(),
            0
        );
    }

    #[test]
    fn claims_are_counted_by_kind_and_outcome() {
        let metrics = ClusterMetrics::default();
        metrics.claimed(ClaimKind::Create, &Ok(()));
        metrics.claimed(ClaimKind::Create, &Err(ClaimError::Taken("b#3".into())));
        metrics.claimed(ClaimKind::Create, &Err(ClaimError::Taken("c#4".into())));
        let taken = ClaimLabel {
            kind: "create",
            outcome: "taken",
        };
        assert_eq!(metrics.claims.get_or_create(&taken).get(), 2);
    }
}
