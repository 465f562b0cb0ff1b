//! Fencing: a node whose claims may have lapsed applies nothing.
//!
//! A node renews its rooms' claims every third of a lease. If it has not
//! renewed for most of a lease (a stop-the-world pause, a partition from
//! Redis), another node may own its rooms by now, and anything it applied
//! would fork the room. Closing the rooms is the heartbeat's job, but the
//! heartbeat is one task among many: a node waking from a pause runs its
//! overdue timers in no particular order, so a request or a script's write
//! could land before the heartbeat has looked. So the check is made where
//! the effects are: a signaling request to one of its rooms is refused
//! (`signal::connection`), and so is a write to the shared key-value store
//! ([`FencedKv`]), from the moment the claims may have lapsed until the
//! heartbeat has renewed them or closed the rooms.

use std::sync::Arc;

use serde_json::Value;

use super::Cluster;
use crate::store::StoreError;
use crate::store::kv::{KvStore, Quota};

/// The key-value store of a cluster node's rooms: writes are refused while
/// the node's claims may have lapsed; reads go through.
pub struct FencedKv {
    pub inner: Arc<dyn KvStore>,
    pub cluster: Arc<Cluster>,
}

impl KvStore for FencedKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        self.inner.get(namespace, key)
    }

    fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&Value>,
        quota: &Quota,
    ) -> Result<(), StoreError> {
        if self.cluster.claims_expired() {
            return Err(StoreError::Unavailable(
                "this node's room claims may have lapsed (fenced); nothing written".into(),
            ));
        }
        self.inner.set(namespace, key, value, quota)
    }
}
