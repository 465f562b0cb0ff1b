//! The node registry and the heartbeat that keeps this node in it.
//!
//! Each node writes `{nodes}:ID` (its [`NodeInfo`] as JSON) with its lease as
//! the key's TTL, and adds its id to the `{nodes}` set. A node that stops
//! renewing disappears from Redis by itself when the TTL runs out; readers
//! drop set members whose key is gone. Redis keeps the time, so nodes need
//! no agreement on clocks.
//!
//! The heartbeat, every third of a lease, does in order: renew this node's
//! room claims (closing any it lost), register this node with its load, and
//! read the live nodes back for placement and routing.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::room::{CloseReason, Rooms};

/// Whether a node takes new rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Serving,
    /// Takes no new rooms; its rooms end or move, then it exits.
    Draining,
}

/// A node as the registry holds it (`GET /api/cluster/nodes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// HTTP and signaling base, `http://host:port`.
    pub url: String,
    /// The address its media candidates carry.
    pub media_ip: IpAddr,
    pub region: String,
    pub state: NodeState,
    pub rooms: u64,
    pub members: u64,
    /// RTP packets forwarded per second over the last heartbeat.
    pub forwarded_per_second: f64,
    /// The process's CPU over the last heartbeat, in cores (1.0: one core).
    pub cpu: f64,
    /// Unix ms of the last registration.
    pub seen_at: i64,
    pub started_at: i64,
    pub version: String,
}

impl NodeInfo {
    /// What placement compares: a room costs a task and timers whether or
    /// not anyone is in it; each member costs its share of the fan-out.
    pub fn load(&self) -> u64 {
        self.rooms + self.members
    }
}

/// What the heartbeat reads the load from.
pub struct NodeContext {
    pub rooms: Rooms,
    pub room_metrics: Arc<crate::room::RoomMetrics>,
    pub media_metrics: Arc<crate::media::MediaMetrics>,
    pub media_ip: IpAddr,
    pub clock: crate::clock::Clock,
}

/// CPU time of this process so far, from /proc (zero where there is none).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

impl Cluster {
    /// Runs the heartbeat until `stop`, then deregisters.
    pub async fn run(self: Arc<Self>, ctx: NodeContext, stop: CancellationToken) {
        let every = self.config.lease / 3;
        let started_at = ctx.clock.unix_ms();
        let forwarded = || ctx.media_metrics.forwarded_packets.get();
        let mut last = (Instant::now(), cpu_time(), forwarded());
        let mut redis_down = false;
        loop {
            let now = (Instant::now(), cpu_time(), forwarded());
            let wall = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
            let cpu = now.1.saturating_sub(last.1).as_secs_f64() / wall;
            let forwarded = now.2.saturating_sub(last.2) as f64 / wall;
            last = now;
            let beat = self.beat(&ctx, started_at, cpu, forwarded).await;
            match beat {
                Ok(()) if redis_down => {
                    redis_down = false;
                    tracing::info!("redis is back; this node is registered again");
                }
                Ok(()) => {}
                Err(e) => {
                    self.metrics.heartbeat_failures.inc();
                    if !redis_down {
                        tracing::error!(error = %e, "cluster heartbeat failed");
                    }
                    redis_down = true;
                }
            }
            if self.claims_expired() {
                // Nothing renewed for a lease: another node may hold these
                // rooms now. Stop serving them rather than risk two owners.
                let rooms = self.forget_all();
                if !rooms.is_empty() {
                    tracing::error!(
                        rooms = rooms.len(),
                        "claims not renewed for a lease; closing this node's rooms"
                    );
                }
                close_rooms(&ctx.rooms, rooms).await;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        let _: Result<(), _> = redis::pipe()
            .del(self.keys.node(&self.id))
            .srem(self.keys.nodes(), &self.id)
            .query_async(&mut self.redis())
            .await;
        tracing::info!(node = %self.id, "left the cluster");
    }

    async fn beat(
        &self,
        ctx: &NodeContext,
        started_at: i64,
        cpu: f64,
        forwarded: f64,
    ) -> Result<(), redis::RedisError> {
        let lost = self.renew_all().await?;
        close_rooms(&ctx.rooms, lost).await;
        let me = NodeInfo {
            id: self.id.clone(),
            url: self.url.clone(),
            media_ip: ctx.media_ip,
            region: self.config.region.clone(),
            state: if self.is_draining() {
                NodeState::Draining
            } else {
                NodeState::Serving
            },
            rooms: ctx.rooms.len() as u64,
            members: ctx.room_metrics.members.get().max(0) as u64,
            forwarded_per_second: forwarded,
            cpu,
            seen_at: ctx.clock.unix_ms(),
            started_at,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let json = serde_json::to_string(&me).expect("node info serializes");
        let () = redis::pipe()
            .set(self.keys.node(&self.id), json)
            .arg("PX")
            .arg(self.config.lease.as_millis() as u64)
            .ignore()
            .sadd(self.keys.nodes(), &self.id)
            .ignore()
            .query_async(&mut self.redis())
            .await?;
        self.read_nodes().await?;
        Ok(())
    }

    /// Every registered node, read from Redis (and kept as the list
    /// placement and routing use until the next heartbeat); ids whose
    /// registration lapsed are dropped from the set.
    pub async fn read_nodes(&self) -> Result<Vec<NodeInfo>, redis::RedisError> {
        let nodes = self.fetch_nodes().await?;
        self.metrics.saw(&nodes);
        *self.nodes.lock().expect("node list") = nodes.clone();
        Ok(nodes)
    }

    async fn fetch_nodes(&self) -> Result<Vec<NodeInfo>, redis::RedisError> {
        let mut conn = self.redis();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, value) in ids.into_iter().zip(values) {
            match value.and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok()) {
                Some(node) => nodes.push(node),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: i64 = redis::cmd("SREM")
                .arg(self.keys.nodes())
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// One node's registration, straight from Redis.
    pub(crate) async fn fetch_node(
        &self,
        id: &str,
    ) -> Result<Option<NodeInfo>, crate::room::claims::ClaimError> {
        let value: Option<String> = redis::cmd("GET")
            .arg(self.keys.node(id))
            .query_async(&mut self.redis())
            .await
            .map_err(|e| crate::room::claims::ClaimError::Unavailable(format!("redis: {e}")))?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }
}

/// Closes rooms this node must not serve any more; their members are told
/// `shutdown` and rejoin through any node, which finds the new owner.
async fn close_rooms(rooms: &Rooms, names: Vec<crate::ids::RoomName>) {
    for name in names {
        if let Some(handle) = rooms.get(&name)
            && let Err(e) = handle.close(CloseReason::Shutdown).await
        {
            tracing::debug!(room = %name, error = %e, "room already closing");
        }
    }
}
