//! Changes every node must see at once, on one Redis pub/sub channel:
//! community servers (roles, channels, black and white lists) and bans and
//! revocations. The node that makes a change writes it to the shared store
//! as always and publishes it; every other node applies it to its memory,
//! and its rooms react as to a local change (a revoked permission removes
//! the member at once, wherever the room lives).
//!
//! Pub/sub delivers at most once: a node that was away from Redis when a
//! change went out has missed it. So a node that (re)subscribes reloads the
//! community and the bans from the shared store before it listens again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::community::hub::{CommunityHub, CommunityOp, CommunityWriter};
use crate::policy::bans::Bans;
use crate::store::{BanKind, BanOp, BanRecord, StoreHandle};

/// One message on the bus.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Message {
    /// A community server saved (its whole snapshot) or deleted (`None`).
    Community {
        from: String,
        server: u64,
        snapshot: Option<String>,
    },
    BanPut {
        from: String,
        record: BanRecord,
    },
    BanLift {
        from: String,
        ban: BanKind,
        room: Option<String>,
        subject: String,
    },
}

impl Message {
    fn from(&self) -> &str {
        match self {
            Message::Community { from, .. }
            | Message::BanPut { from, .. }
            | Message::BanLift { from, .. } => from,
        }
    }
}

/// What the bus applies remote changes to, and reloads from.
pub struct BusContext {
    pub community: Arc<CommunityHub>,
    pub bans: Arc<Bans>,
    pub store: StoreHandle,
    pub clock: crate::clock::Clock,
}

/// The community's writer in a cluster: the shared store, then the bus.
pub struct ClusterWriter {
    pub store: StoreHandle,
    pub cluster: Arc<Cluster>,
}

#[async_trait::async_trait]
impl CommunityWriter for ClusterWriter {
    fn write(&self, op: CommunityOp) {
        let (server, snapshot) = match &op {
            CommunityOp::Save { server, snapshot } => (*server, Some(snapshot.clone())),
            CommunityOp::Delete { server } => (*server, None),
        };
        self.store.community(op);
        self.cluster.publish(Message::Community {
            from: self.cluster.id.clone(),
            server,
            snapshot,
        });
    }

    async fn flush(&self) -> Result<(), String> {
        self.store.flush().await.map_err(|e| e.to_string())
    }
}

impl Cluster {
    fn publish(&self, message: Message) {
        let json = serde_json::to_string(&message).expect("bus messages serialize");
        // The publisher task sends in order; it ends only with the node.
        let _ = self.bus.send(json);
        self.metrics.bus("published");
    }

    /// Tells the other nodes about a ban written here.
    pub fn publish_ban(&self, op: &BanOp) {
        let from = self.id.clone();
        self.publish(match op.clone() {
            BanOp::Put(record) => Message::BanPut { from, record },
            BanOp::Delete {
                kind,
                room,
                subject,
            } => Message::BanLift {
                from,
                ban: kind,
                room,
                subject,
            },
        });
    }

    /// Runs the bus: one task publishes what this node queued, in order;
    /// another listens, reconnecting (and catching up from the store) after
    /// Redis comes back.
    pub fn start_bus(self: &Arc<Self>, ctx: BusContext, stop: CancellationToken) {
        let Some(mut outgoing) = self.bus_queue.lock().expect("bus queue").take() else {
            return; // started already
        };
        let cluster = self.clone();
        let stop_publishing = stop.clone();
        tokio::spawn(async move {
            let channel = cluster.keys.bus();
            loop {
                let json = tokio::select! {
                    _ = stop_publishing.cancelled() => break,
                    next = outgoing.recv() => match next {
                        Some(json) => json,
                        None => break,
                    },
                };
                let sent: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&json)
                    .query_async(&mut cluster.redis())
                    .await;
                if let Err(e) = sent {
                    // The other nodes catch up from the store when they
                    // reconnect; the change itself is already stored.
                    tracing::warn!(error = %e, "cannot publish a change to the cluster");
                }
            }
        });
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let listened = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = cluster.listen(&ctx, first) => r,
                };
                if let Err(e) = listened {
                    tracing::warn!(error = %e, "cluster bus lost; reconnecting");
                }
                first = false;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }

    async fn listen(&self, ctx: &BusContext, first: bool) -> Result<(), String> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?;
        pubsub
            .subscribe(self.keys.bus())
            .await
            .map_err(|e| e.to_string())?;
        if !first {
            catch_up(ctx).await;
        }
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<Message>(&payload) {
                Ok(message) if message.from() != self.id => {
                    self.metrics.bus("received");
                    apply(ctx, message)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable message on the cluster bus"),
            }
        }
        Err("the subscription ended".into())
    }
}

fn apply(ctx: &BusContext, message: Message) {
    match message {
        Message::Community {
            server, snapshot, ..
        } => {
            if let Err(e) = ctx.community.apply_remote(server, snapshot.as_deref()) {
                tracing::warn!(server, error = %e, "cannot apply a community change from the cluster");
            }
        }
        Message::BanPut { record, .. } => ctx.bans.apply_remote(&BanOp::Put(record)),
        Message::BanLift {
            ban, room, subject, ..
        } => ctx.bans.apply_remote(&BanOp::Delete {
            kind: ban,
            room,
            subject,
        }),
    }
}

/// After time away from the bus: what the store holds now replaces what
/// this node remembers.
async fn catch_up(ctx: &BusContext) {
    match ctx.store.community_servers().await {
        Ok(servers) => {
            if let Err(e) = ctx.community.replace_all(&servers) {
                tracing::warn!(error = %e, "cannot reload community servers");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot reload community servers"),
    }
    match ctx.store.bans(ctx.clock.unix_ms()).await {
        Ok(bans) => ctx.bans.replace_stored(bans),
        Err(e) => tracing::warn!(error = %e, "cannot reload bans"),
    }
    tracing::info!("caught up with the cluster's changes from the store");
}
