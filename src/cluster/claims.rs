//! Room ownership in Redis: claims, their leases, fencing, placement.
//!
//! A room's owner is one key, `{room:NAME}:owner = NODE#EPOCH`, set only by
//! a Lua script that checks and writes in one step, so two nodes can never
//! both believe they created a room (the unlocked read-then-write that put
//! one LiveKit room on three nodes). The epoch comes from a counter in the
//! room's meta hash and grows with every owner; every later write by an
//! owner (renew, release) compares its whole `NODE#EPOCH`, so a node that
//! lost its claim while it was away (paused, partitioned) is refused and
//! closes its copy: it is fenced.
//!
//! The owner key lives one lease; its node renews it every third of one.
//! The meta hash lives a lease plus the reconnect grace: after a node dies,
//! its rooms' meta outlives the claim just long enough for a member who
//! reconnects elsewhere to open the room again ([`ClaimKind::Revive`]).

use std::collections::HashMap;
use std::time::Duration;

use super::{Cluster, NodeInfo, NodeState};
use crate::ids::{ChannelId, RoomName};
use crate::room::claims::{ClaimError, ClaimKind, ClaimMeta, Claims};

/// Checks and takes a name in one step. KEYS: owner, meta. ARGV: mode
/// (`create`, `revive`, `channel`), node, lease ms, meta ms, custom info,
/// policy, has policy (`1`/`0`), channel id, created at, the dead owner's
/// claim that may be replaced (empty: none). Returns `{1, claim}`,
/// `{0, holder}` (taken) or `{-1, ''}` (nothing to revive).
const CLAIM: &str = r#"
local owner = redis.call('GET', KEYS[1])
local mode = ARGV[1]
if owner and owner ~= ARGV[10] then return {0, owner} end
local has_meta = redis.call('EXISTS', KEYS[2]) == 1
if mode == 'create' and (owner or has_meta) then return {0, owner or 'a room in its grace'} end
if mode == 'revive' and not has_meta then return {-1, ''} end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
if mode == 'revive' then
  redis.call('HSET', KEYS[2], 'channel_id', ARGV[8])
else
  redis.call('HSET', KEYS[2], 'custom_info', ARGV[5], 'policy', ARGV[6], 'has_policy', ARGV[7],
    'channel_id', ARGV[8], 'created_at', ARGV[9])
end
local claim = ARGV[2] .. '#' .. epoch
redis.call('SET', KEYS[1], claim, 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, claim}
"#;

/// Keeps a claim alive. KEYS: owner, meta. ARGV: claim, lease ms, meta ms,
/// epoch, custom info, policy, has policy, channel id, created at. Returns
/// 1 (renewed), 2 (had lapsed, nobody took it: taken back, as after a Redis
/// restart) or 0 (someone else holds it, or held it since: fenced).
const RENEW: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
if owner then return 0 end
local epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch') or '0')
if epoch > tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[2], 'epoch', ARGV[4], 'custom_info', ARGV[5], 'policy', ARGV[6],
  'has_policy', ARGV[7], 'channel_id', ARGV[8], 'created_at', ARGV[9])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 2
"#;

/// Gives a name back, if it is still ours. KEYS: owner, meta. ARGV: claim,
/// epoch. A claim that lapsed with nobody taking it over is still ours.
const RELEASE: &str = r#"
local owner = redis.call('GET', KEYS[1])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if owner == ARGV[1] or (not owner and epoch == ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"#;

pub(crate) struct Scripts {
    claim: redis::Script,
    renew: redis::Script,
    /// Shared with the task a release runs on.
    release: std::sync::Arc<redis::Script>,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            claim: redis::Script::new(CLAIM),
            renew: redis::Script::new(RENEW),
            release: std::sync::Arc::new(redis::Script::new(RELEASE)),
        }
    }
}

/// A claim this node holds.
#[derive(Clone, Debug)]
pub struct Held {
    /// `NODE#EPOCH`, as written.
    pub claim: String,
    pub epoch: u64,
    pub meta: ClaimMeta,
}

/// Where a room is, as Redis knows it.
#[derive(Clone, Debug, Default)]
pub struct Located {
    /// The owner's claim, `NODE#EPOCH`, while its lease runs.
    pub claim: Option<String>,
    /// What the room was opened with, while it or its grace lasts.
    pub meta: Option<ClaimMeta>,
}

impl Located {
    /// The owning node's id.
    pub fn owner(&self) -> Option<&str> {
        self.claim.as_deref().map(node_of)
    }
}

fn node_of(claim: &str) -> &str {
    claim.rsplit_once('#').map_or(claim, |(node, _)| node)
}

/// How a request for a room is served, as decided by the node it reached.
#[derive(Clone, Debug)]
pub enum Route {
    /// Here: the room is here, or will be opened here, or does not exist.
    Local,
    /// On another node, through a relay.
    Remote(NodeInfo),
    /// Its node died; open it again here with this meta, then join.
    Revive(ClaimMeta),
}

fn unavailable(e: redis::RedisError) -> ClaimError {
    ClaimError::Unavailable(format!("redis: {e}"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Cluster {
    fn meta_ttl(&self) -> Duration {
        // Past the owner's lease, long enough for its members to come back.
        self.config.lease * 2 + self.grace
    }

    /// Reads who owns `room` and what it was opened with (one round trip:
    /// both keys share a slot).
    pub async fn locate(&self, room: &RoomName) -> Result<Located, ClaimError> {
        let (claim, meta): (Option<String>, HashMap<String, String>) = redis::pipe()
            .get(self.keys.owner(room.as_str()))
            .hgetall(self.keys.meta(room.as_str()))
            .query_async(&mut self.redis())
            .await
            .map_err(unavailable)?;
        Ok(Located {
            claim,
            meta: parse_meta(&meta),
        })
    }

    /// Whether node `id` is registered (its lease runs).
    async fn node_alive(&self, id: &str) -> Result<bool, ClaimError> {
        redis::cmd("EXISTS")
            .arg(self.keys.node(id))
            .query_async::<bool>(&mut self.redis())
            .await
            .map_err(unavailable)
    }

    /// Decides where a `join` for `room`, absent here, is served.
    pub async fn route_join(&self, room: &RoomName) -> Result<Route, ClaimError> {
        let located = self.locate(room).await?;
        match located.owner() {
            Some(node) if node == self.id => Ok(Route::Local),
            // Redis, not the list from the last heartbeat, says whether the
            // owner lives: a node that died a moment ago is still listed.
            Some(node) if self.node_alive(node).await? => {
                let info = match self.node(node) {
                    Some(info) => Some(info),
                    // Registered since the last heartbeat.
                    None => self.fetch_node(node).await?,
                };
                info.map(Route::Remote)
                    .ok_or_else(|| ClaimError::Unavailable(format!("node {node} left no address")))
            }
            Some(_) => Ok(located.meta.map_or(Route::Local, Route::Revive)),
            None => Ok(located.meta.map_or(Route::Local, Route::Revive)),
        }
    }

    /// Decides where a community channel's room is served: where it lives,
    /// or here (opening it, or taking it over from a dead node).
    pub async fn route_channel(&self, room: &RoomName) -> Result<Route, ClaimError> {
        match self.route_join(room).await? {
            Route::Revive(_) => Ok(Route::Local),
            route => Ok(route),
        }
    }

    /// Decides where a new room is opened: `Err(Taken)` if the name is held
    /// anywhere, else the better of two live serving nodes picked at random
    /// (by rooms plus members), within this node's region when it has one
    /// and some serving node shares it. Two random choices rather than the
    /// least loaded: every node decides from a list up to a heartbeat old,
    /// and all of them sending a burst of creates to the one node that
    /// looked emptiest is how a cluster tips over.
    pub async fn route_create(&self, room: &RoomName) -> Result<Route, ClaimError> {
        let located = self.locate(room).await?;
        if let Some(holder) = located.claim {
            return Err(ClaimError::Taken(holder));
        }
        if located.meta.is_some() {
            return Err(ClaimError::Taken("a room in its grace".into()));
        }
        Ok(match self.place() {
            Some(node) if node.id != self.id => Route::Remote(node),
            _ => Route::Local,
        })
    }

    /// Picks the node a new room goes to; `None`: no live serving node is
    /// known (the caller opens it here).
    pub fn place(&self) -> Option<NodeInfo> {
        let mut nodes = self.nodes.lock().expect("node list");
        let chosen = Self::choose(&nodes, &self.config.region)?;
        // Until the next heartbeat brings fresh loads, count what this node
        // sent there itself: a burst of creates between two heartbeats
        // otherwise goes by the same stale numbers.
        if let Some(node) = nodes.iter_mut().find(|n| n.id == chosen.id) {
            node.rooms += 1;
        }
        Some(chosen)
    }

    fn choose(nodes: &[NodeInfo], region: &str) -> Option<NodeInfo> {
        let serving: Vec<&NodeInfo> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Serving)
            .collect();
        let local: Vec<&NodeInfo> = if region.is_empty() {
            Vec::new()
        } else {
            serving
                .iter()
                .copied()
                .filter(|n| n.region == region)
                .collect()
        };
        let pool = if local.is_empty() { serving } else { local };
        match pool.len() {
            0 => None,
            1 => Some(pool[0].clone()),
            n => {
                let a = rand::random_range(0..n);
                let mut b = rand::random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (pool[a], pool[b]);
                Some(if b.load() < a.load() { b } else { a }.clone())
            }
        }
    }

    /// The claims this node holds, for the admin API and the heartbeat.
    pub fn held(&self) -> Vec<(RoomName, Held)> {
        self.held
            .lock()
            .expect("held claims")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Renews every claim held. Returns the rooms whose claim another node
    /// holds now (fenced: close them here), or the Redis error that stopped
    /// the renewal.
    pub async fn renew_all(&self) -> Result<Vec<RoomName>, redis::RedisError> {
        // Redis starts each renewed lease when it runs the script, after
        // this: counting from here, this node's view of its leases never
        // outlasts Redis's.
        let sent = std::time::Instant::now();
        let held = self.held();
        let lease = ms(self.config.lease);
        let meta_ttl = ms(self.meta_ttl());
        // One connection multiplexes these; they go out pipelined.
        let renewals = held.iter().map(|(room, held)| {
            let mut conn = self.redis();
            let mut call = self.scripts.renew.key(self.keys.owner(room.as_str()));
            call.key(self.keys.meta(room.as_str()))
                .arg(&held.claim)
                .arg(lease)
                .arg(meta_ttl)
                .arg(held.epoch);
            meta_args(&mut call, &held.meta);
            async move { call.invoke_async::<i64>(&mut conn).await }
        });
        let results = futures_util::future::join_all(renewals).await;
        let mut lost = Vec::new();
        for ((room, held), result) in held.into_iter().zip(results) {
            match result? {
                0 => {
                    tracing::warn!(room = %room, claim = %held.claim, "claim lost to another node; closing the room here");
                    self.held.lock().expect("held claims").remove(&room);
                    lost.push(room);
                }
                2 => tracing::info!(room = %room, "claim had lapsed; taken back"),
                _ => {}
            }
        }
        *self.renewed.lock().expect("renewal time") = sent;
        Ok(lost)
    }

    /// Whether the last full renewal was sent a lease ago or more: the
    /// claims may have lapsed and been taken, so nothing may be applied to
    /// the rooms here ([`super::fence`]). Counted from before the renewal
    /// went out, this ends no later than the leases in Redis do (clocks
    /// that run at different rates differ by parts per million, far less
    /// than the round trip this leaves in hand).
    pub fn claims_expired(&self) -> bool {
        self.renewed.lock().expect("renewal time").elapsed() >= self.config.lease
    }

    /// Forgets every claim without releasing it (they lapse on their own).
    pub fn forget_all(&self) -> Vec<RoomName> {
        self.held
            .lock()
            .expect("held claims")
            .drain()
            .map(|(k, _)| k)
            .collect()
    }
}

fn meta_args(call: &mut redis::ScriptInvocation<'_>, meta: &ClaimMeta) {
    call.arg(&meta.custom_info)
        .arg(meta.policy.as_deref().unwrap_or(""))
        .arg(if meta.policy.is_some() { "1" } else { "0" })
        .arg(meta.channel_id.0)
        .arg(meta.created_at);
}

fn parse_meta(fields: &HashMap<String, String>) -> Option<ClaimMeta> {
    let channel_id = fields.get("channel_id")?.parse().ok()?;
    Some(ClaimMeta {
        custom_info: fields.get("custom_info").cloned().unwrap_or_default(),
        policy: (fields.get("has_policy").map(String::as_str) == Some("1"))
            .then(|| fields.get("policy").cloned().unwrap_or_default()),
        channel_id: ChannelId(channel_id),
        created_at: fields
            .get("created_at")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

impl Cluster {
    async fn claim_once(
        &self,
        room: &RoomName,
        kind: ClaimKind,
        meta: &ClaimMeta,
    ) -> Result<(), ClaimError> {
        if self.is_draining() && kind == ClaimKind::Create {
            return Err(ClaimError::Unavailable(
                "this node is draining; create the room through another node".into(),
            ));
        }
        // Taking over from a dead node: its claim may outlive it by up to a
        // lease. Replace it only if the node is truly gone.
        let mut previous = String::new();
        if kind != ClaimKind::Create
            && let Some(claim) = self.locate(room).await?.claim
        {
            let node = node_of(&claim);
            if node != self.id && !self.node_alive(node).await? {
                previous = claim;
            }
        }
        let mode = match kind {
            ClaimKind::Create => "create",
            ClaimKind::Revive => "revive",
            ClaimKind::Channel => "channel",
        };
        let mut call = self.scripts.claim.key(self.keys.owner(room.as_str()));
        call.key(self.keys.meta(room.as_str()))
            .arg(mode)
            .arg(&self.id)
            .arg(ms(self.config.lease))
            .arg(ms(self.meta_ttl()));
        meta_args(&mut call, meta);
        call.arg(&previous);
        let (won, claim): (i64, String) = call
            .invoke_async(&mut self.redis())
            .await
            .map_err(unavailable)?;
        match won {
            1 => {
                let epoch = claim
                    .rsplit_once('#')
                    .and_then(|(_, e)| e.parse().ok())
                    .unwrap_or(0);
                tracing::debug!(room = %room, claim = %claim, "room claimed");
                self.held.lock().expect("held claims").insert(
                    room.clone(),
                    Held {
                        claim,
                        epoch,
                        meta: meta.clone(),
                    },
                );
                Ok(())
            }
            -1 => Err(ClaimError::Gone),
            _ => Err(ClaimError::Taken(claim)),
        }
    }
}

#[async_trait::async_trait]
impl Claims for Cluster {
    async fn claim(
        &self,
        room: &RoomName,
        kind: ClaimKind,
        meta: &ClaimMeta,
    ) -> Result<(), ClaimError> {
        let result = self.claim_once(room, kind, meta).await;
        self.metrics.claimed(kind, &result);
        result
    }

    fn release(&self, room: &RoomName, channel_id: ChannelId) {
        let held = {
            let mut held = self.held.lock().expect("held claims");
            match held.get(room) {
                Some(h) if h.meta.channel_id == channel_id => held.remove(room),
                _ => None,
            }
        };
        let Some(held) = held else { return };
        let mut conn = self.redis();
        let script = self.scripts.release.clone();
        let (owner, meta) = (
            self.keys.owner(room.as_str()),
            self.keys.meta(room.as_str()),
        );
        let room = room.clone();
        tokio::spawn(async move {
            let mut call = script.key(owner);
            call.key(meta).arg(&held.claim).arg(held.epoch.to_string());
            match call.invoke_async::<i64>(&mut conn).await {
                Ok(1) => tracing::debug!(room = %room, "claim released"),
                Ok(_) => tracing::info!(room = %room, "claim was no longer ours to release"),
                // It lapses within a lease; the name is free then.
                Err(e) => tracing::warn!(room = %room, error = %e, "cannot release the claim"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, rooms: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: format!("http://{id}"),
            media_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            region: String::new(),
            state: NodeState::Serving,
            rooms,
            members: 0,
            forwarded_per_second: 0.0,
            cpu: 0.0,
            seen_at: 0,
            started_at: 0,
            version: String::new(),
        }
    }

    #[test]
    fn two_random_choices_spread_a_burst_evenly_and_avoid_the_loaded() {
        let mut nodes = vec![node("a", 0), node("b", 0), node("c", 0)];
        let mut placed = HashMap::<String, u32>::new();
        for _ in 0..300 {
            let chosen = Cluster::choose(&nodes, "").unwrap();
            nodes.iter_mut().find(|n| n.id == chosen.id).unwrap().rooms += 1;
            *placed.entry(chosen.id).or_default() += 1;
        }
        for id in ["a", "b", "c"] {
            let n = placed[id];
            assert!((90..=110).contains(&n), "{placed:?}");
        }
        // A node far ahead gets nothing while the others catch up.
        let nodes = vec![node("a", 500), node("b", 0), node("c", 0)];
        for _ in 0..100 {
            assert_ne!(Cluster::choose(&nodes, "").unwrap().id, "a");
        }
    }

    #[test]
    fn placement_stays_in_the_region_when_it_can() {
        let mut nodes = vec![node("a", 0), node("b", 0), node("c", 9)];
        nodes[2].region = "eu".into();
        for _ in 0..50 {
            assert_eq!(Cluster::choose(&nodes, "eu").unwrap().id, "c");
        }
        nodes[2].state = NodeState::Draining;
        assert_ne!(Cluster::choose(&nodes, "eu").unwrap().id, "c");
    }
}
