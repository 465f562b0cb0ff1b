//! Leaving the cluster without dropping anyone: a draining node takes no
//! new rooms (placement skips it, and a create that reaches it is placed on
//! another node), lets its rooms end for up to `[cluster] drain_timeout`,
//! then closes those left. Their members are told `shutdown` and rejoin
//! through any node; the room opens again there (see `claims`).

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::room::Rooms;

/// How often a drain looks whether the rooms have ended.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Starts draining (once); [`Cluster::drained`] resolves when it is done.
pub fn start(cluster: &Arc<Cluster>, rooms: &Rooms) {
    if cluster
        .draining
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    let cluster = cluster.clone();
    let rooms = rooms.clone();
    tokio::spawn(async move {
        let limit = cluster.config.drain_timeout;
        tracing::info!(rooms = rooms.len(), ?limit, "draining: no new rooms here");
        let ended = tokio::time::timeout(limit, async {
            while !rooms.is_empty() {
                tokio::time::sleep(CHECK_EVERY).await;
            }
        })
        .await;
        if ended.is_err() {
            tracing::info!(
                rooms = rooms.len(),
                "drain timeout: closing the rooms left; their members rejoin elsewhere"
            );
        }
        cluster.drained.cancel();
    });
}

impl Cluster {
    /// Resolves once a drain has finished.
    pub async fn drained(&self) {
        self.drained.cancelled().await
    }
}
