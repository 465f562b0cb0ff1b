//! The application layer: what the edges (signaling, HTTP) share, and the
//! services that span rooms and communities.
//!
//! - [`config`]: the TOML configuration with environment overrides.
//! - [`AppState`]: the rooms, the community, tokens, the store, metrics and
//!   the media plane, as request handlers reach them.
//! - [`channels`]: connecting to a community media channel, and who is in
//!   one.
//! - [`errors`]: every error a client can be told, mapped to a protocol
//!   status, in one place.
//! - [`metrics`]: every metric, in one registry.

pub mod channels;
pub mod config;
pub mod errors;
pub mod metrics;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::clock::Clock;
use crate::community::hub::CommunityHub;
use crate::media::Media;
use crate::room::Rooms;
use crate::store::StoreHandle;

pub use config::Config;
pub use metrics::Metrics;

/// Everything request handlers share.
pub struct AppState {
    pub config: Config,
    pub dev: bool,
    pub rooms: Rooms,
    /// Community servers, roles and channels, loaded from the store at start.
    pub community: Arc<CommunityHub>,
    pub auth: Auth,
    pub store: StoreHandle,
    pub metrics: Arc<Metrics>,
    /// The WebRTC media plane; `None` when `[media] enabled = false`.
    pub media: Option<Media>,
    /// This node's place in a cluster; `None`: a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub clock: Clock,
    /// One permit per open signaling connection.
    pub connection_slots: Arc<Semaphore>,
    /// Cancelled at shutdown, after rooms have closed.
    pub connections_closing: CancellationToken,
    pub connection_tasks: TaskTracker,
}
