//! Several conclave nodes serving one set of rooms, with Redis between them.
//!
//! A room lives on exactly one node, its owner. Redis knows which: every
//! room's name is *claimed* there by its owner under a lease the owner keeps
//! renewing, with a fencing epoch that grows with every new owner
//! ([`claims`]). Nodes register themselves, their addresses and their load
//! under a lease too ([`nodes`]). Any node takes any client: a request for a
//! room that lives elsewhere is relayed to the owner over a WebSocket of the
//! node's own ([`relay`]), and an admin request is forwarded over HTTP
//! ([`forward`]). Community and ban changes travel on a Redis channel
//! ([`bus`]). PostgreSQL keeps the durable data every node shares
//! (`crate::store::postgres`).
//!
//! Every key one operation touches carries one hash tag (`{room:NAME}`,
//! `{nodes}`), so the same code runs on one Redis or on a Redis Cluster
//! (`redis_cluster = true`, through [`RedisConn`]).
//! docs/cluster.md says how to run it and why it is built this way.

pub mod bus;
pub mod claims;
pub mod drain;
pub mod fence;
pub mod forward;
pub mod metrics;
pub mod nodes;
pub mod relay;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use claims::{Held, Located};
pub use nodes::{NodeInfo, NodeState};

/// `[cluster]` in the configuration. Without the section a server is one
/// node and needs neither Redis nor PostgreSQL.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port/db`: room ownership, node registry, the bus.
    pub redis_url: String,
    /// `redis_url` is one node of a Redis Cluster: conclave learns the rest
    /// from it, follows its slots and redirections, and listens to the bus
    /// on that node (Redis Cluster passes every message to every node).
    pub redis_cluster: bool,
    /// `postgres://user@host:port/db`: the durable data every node shares.
    /// Empty: each node keeps its own SQLite store (records, community,
    /// bans stay per node), which suits a test and little else.
    pub postgres_url: String,
    /// This node's name in the cluster; empty: generated at start
    /// (`node-` and 8 hex digits), so a restarted node is a new node.
    pub node_id: String,
    /// Where other nodes and clients reach this node's HTTP and signaling,
    /// `http://host:port`; empty: the bind address.
    pub advertise_url: String,
    /// A label placement prefers to stay within (`eu-west`); empty: none.
    pub region: String,
    /// How long a node's registration and its rooms' claims live without
    /// renewal. A dead node's rooms can move after this long; a node that
    /// cannot renew for this long gives its rooms up. Renewed every third.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Prefix of every Redis key and channel, so several clusters can share
    /// one Redis.
    pub key_prefix: String,
    /// How long draining (SIGTERM, or `POST /api/cluster/drain`) waits for
    /// rooms to end before closing those left (members then rejoin on
    /// another node).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            postgres_url: String::new(),
            node_id: String::new(),
            advertise_url: String::new(),
            region: String::new(),
            lease: Duration::from_secs(3),
            key_prefix: "conclave".into(),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis at {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("[cluster] lease must be at least 300ms, not {0:?}")]
    Lease(Duration),
}

/// This node's place in the cluster; shared by the registry (as its
/// [`crate::room::claims::Claims`]), the connections and the HTTP API.
pub struct Cluster {
    id: String,
    url: String,
    config: ClusterConfig,
    keys: Keys,
    redis: RedisConn,
    client: redis::Client,
    /// The live nodes as of the last heartbeat, this one included.
    nodes: Mutex<Vec<NodeInfo>>,
    /// The claims this node holds, by room name.
    held: Mutex<std::collections::HashMap<crate::ids::RoomName, Held>>,
    draining: AtomicBool,
    /// Cancelled when a drain has finished (see [`drain`]).
    drained: tokio_util::sync::CancellationToken,
    /// When claims were last renewed in full: past a lease without one, the
    /// claims may belong to someone else and this node stops serving them.
    renewed: Mutex<std::time::Instant>,
    scripts: claims::Scripts,
    http: forward::HttpClient,
    /// `[rooms] reconnect_grace`: how long a dead node's rooms can come back.
    grace: Duration,
    metrics: Arc<metrics::ClusterMetrics>,
    /// Rooms this node found on other nodes, and which (see [`Cluster::seen_on`]).
    seen: Mutex<std::collections::HashMap<crate::ids::RoomName, String>>,
    /// What this node publishes on the bus, in order (see [`bus`]).
    bus: tokio::sync::mpsc::UnboundedSender<String>,
    bus_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("id", &self.id).finish()
    }
}

impl Cluster {
    /// Connects to Redis. `bind` is the HTTP listener's address, advertised
    /// when `advertise_url` is empty.
    pub async fn connect(
        mut config: ClusterConfig,
        bind: SocketAddr,
        grace: Duration,
    ) -> Result<Arc<Cluster>, ClusterError> {
        if config.lease < Duration::from_millis(300) {
            return Err(ClusterError::Lease(config.lease));
        }
        if config.node_id.is_empty() {
            config.node_id = format!("node-{:08x}", rand::random::<u32>());
        }
        let url = if config.advertise_url.is_empty() {
            let mut host = bind;
            if host.ip().is_unspecified() {
                host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{host}")
        } else {
            config.advertise_url.trim_end_matches('/').to_owned()
        };
        let redis_error = |source| ClusterError::Redis {
            url: config.redis_url.clone(),
            source,
        };
        let client = redis::Client::open(config.redis_url.as_str()).map_err(redis_error)?;
        // Commands fail fast while Redis is away (the heartbeat retries), so
        // a join never hangs on a dead Redis; the manager reconnects itself.
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = if config.redis_cluster {
            let cluster = redis::cluster::ClusterClient::builder([config.redis_url.as_str()])
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(1))
                .retries(1)
                .build()
                .map_err(redis_error)?;
            RedisConn::Cluster(cluster.get_async_connection().await.map_err(redis_error)?)
        } else {
            RedisConn::Single(
                client
                    .get_connection_manager_with_config(manager_config)
                    .await
                    .map_err(redis_error)?,
            )
        };
        let keys = Keys::new(&config.key_prefix);
        let (bus, bus_queue) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(Cluster {
            bus,
            bus_queue: Mutex::new(Some(bus_queue)),
            id: config.node_id.clone(),
            url,
            keys,
            redis,
            client,
            nodes: Mutex::new(Vec::new()),
            held: Mutex::new(Default::default()),
            draining: AtomicBool::new(false),
            drained: tokio_util::sync::CancellationToken::new(),
            renewed: Mutex::new(std::time::Instant::now()),
            scripts: claims::Scripts::new(),
            http: forward::HttpClient::new(),
            metrics: Arc::default(),
            seen: Mutex::default(),
            grace,
            config,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// This node's advertised HTTP base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The cluster's metrics, registered on this node's `/metrics`.
    pub fn metrics(&self) -> &Arc<metrics::ClusterMetrics> {
        &self.metrics
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stops taking new rooms; the next heartbeat tells the others.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The live nodes as of the last heartbeat.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().expect("node list").clone()
    }

    /// Where clients can reach the cluster: this node's signaling URL, then
    /// every other serving node's as of the last heartbeat.
    pub fn signaling_urls(&self) -> Vec<String> {
        let others = self
            .nodes
            .lock()
            .expect("node list")
            .iter()
            .filter(|n| n.id != self.id && n.state == NodeState::Serving)
            .map(|n| relay::signaling_url(&n.url))
            .collect::<Vec<_>>();
        std::iter::once(relay::signaling_url(&self.url))
            .chain(others)
            .collect()
    }

    /// Notes that `room` was found on `node` (a route to it).
    pub fn saw(&self, room: &crate::ids::RoomName, node: &str) {
        /// A bound on what is remembered; past it, start again.
        const MAX_SEEN: usize = 100_000;
        let mut seen = self.seen.lock().expect("seen rooms");
        if seen.len() >= MAX_SEEN {
            seen.clear();
        }
        seen.insert(room.clone(), node.to_owned());
    }

    /// The live node `room` was last found on from here, if any. A hint,
    /// not an answer: the room may have moved since, and the node it names
    /// then routes the request on itself.
    pub fn seen_on(&self, room: &crate::ids::RoomName) -> Option<String> {
        let node = self.seen.lock().expect("seen rooms").get(room).cloned()?;
        self.node(&node).map(|n| n.id)
    }

    /// A live node by id.
    pub fn node(&self, id: &str) -> Option<NodeInfo> {
        self.nodes
            .lock()
            .expect("node list")
            .iter()
            .find(|n| n.id == id)
            .cloned()
    }

    /// Reserves the community ids this process hands out: a range of 2^32
    /// no other node start gets (2^21 starts fit below 2^53, where a
    /// JavaScript client still reads ids exactly). Returns its first id.
    pub async fn reserve_ids(&self) -> Result<u64, ClusterError> {
        const RANGE: u64 = 1 << 32;
        let end: u64 = redis::cmd("INCRBY")
            .arg(self.keys.community_ids())
            .arg(RANGE)
            .query_async(&mut self.redis())
            .await
            .map_err(|source| ClusterError::Redis {
                url: self.config.redis_url.clone(),
                source,
            })?;
        Ok(end - RANGE + 1)
    }

    fn redis(&self) -> RedisConn {
        self.redis.clone()
    }
}

/// A connection to one Redis or to a Redis Cluster. Both reconnect by
/// themselves; the cluster one also routes each command, script call and
/// pipeline by its keys' slot (one per operation: see [`Keys`]).
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Redis key names. Every key an operation touches together shares a hash
/// tag, so one script or pipeline lands on one Redis Cluster slot.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The set of registered node ids.
    pub(crate) fn nodes(&self) -> String {
        format!("{}:{{nodes}}", self.prefix)
    }

    /// One node's registration (JSON), with the node's lease as its TTL.
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}:{{nodes}}:{id}", self.prefix)
    }

    /// Who owns a room: `NODE#EPOCH`, with the owner's lease as its TTL.
    pub(crate) fn owner(&self, room: &str) -> String {
        format!("{}:{{room:{room}}}:owner", self.prefix)
    }

    /// What a room was opened with, and its epoch counter (a hash); lives a
    /// reconnect grace past its owner, so the room can be opened again.
    pub(crate) fn meta(&self, room: &str) -> String {
        format!("{}:{{room:{room}}}:meta", self.prefix)
    }

    /// The counter community id ranges are reserved from.
    pub(crate) fn community_ids(&self) -> String {
        format!("{}:{{community}}:ids", self.prefix)
    }

    /// The channel the bus publishes on.
    pub(crate) fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }
}
