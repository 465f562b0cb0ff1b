//! Assembles a running server from a [`Config`]: store, rooms, auth, metrics,
//! the HTTP router, and an orderly shutdown.
//!
//! Shutdown order matters and is the reason this file exists:
//! 1. stop accepting connections and creates;
//! 2. close every room: members get `disconnected {reason: shutdown}` and the
//!    call records are ended;
//! 3. tell every connection to pass on what is queued and close (1001);
//! 4. wait for connections (bounded by `shutdown_grace`);
//! 5. drain the store, so every record write is on disk before exit.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppState, Config, Metrics};
use crate::auth::{Auth, AuthError};
use crate::clock::Clock;
use crate::community::hub::{CommunityHub, HubError};
use crate::media::Media;
use crate::policy::catalog::Catalog;
use crate::room::{RoomServices, Rooms};
use crate::script::pool::Pool;
use crate::store::kv::SqliteKv;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError, StoreHandle, StoreWorker};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "no usable auth secret: {0}. Set [auth] secret or CONCLAVE_AUTH__SECRET, or run with --dev"
    )]
    Secret(AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("policy runtime: {0}")]
    Policy(String),
    #[error("cannot start a configured bot: {0}")]
    Bot(String),
    #[error("media plane: {0}")]
    Media(#[from] crate::media::MediaError),
    #[error("community data: {0}")]
    Community(#[from] HubError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop_accepting: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    store_worker: StoreWorker,
    /// Kept alive to keep watching; `None` when watching is off.
    _watcher: Option<notify::RecommendedWatcher>,
    /// Bots started from `[[bots]]`, and what stops them.
    bots: Vec<tokio::task::JoinHandle<()>>,
    stop_bots: CancellationToken,
    /// The cluster's heartbeat and bus, and what stops them.
    cluster_tasks: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

impl Server {
    /// Opens the store, binds the listener and starts serving. In `dev` mode
    /// the built-in key is used and the addresses (signaling and media) are
    /// forced to loopback.
    pub async fn start(mut config: Config, dev: bool) -> Result<Server, ServerError> {
        let auth = if dev {
            config
                .server
                .bind
                .set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            config.media.bind_ip = std::net::Ipv4Addr::LOCALHOST.into();
            Auth::dev()
        } else {
            let secret = config.auth.secret.as_deref().unwrap_or("");
            Auth::new(secret).map_err(ServerError::Secret)?
        };

        // Bound first: a cluster node advertises the address it got.
        let listener = TcpListener::bind(config.server.bind)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.server.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.server.bind,
            source,
        })?;
        let cluster = match &config.cluster {
            Some(cluster) => {
                let grace = config.rooms.reconnect_grace;
                let cluster =
                    crate::cluster::Cluster::connect(cluster.clone(), addr, grace).await?;
                tracing::info!(
                    node = cluster.id(),
                    url = cluster.url(),
                    "joining the cluster"
                );
                Some(cluster)
            }
            None => None,
        };

        let clock = Clock::new();
        // A cluster with PostgreSQL shares one store; otherwise the node's
        // own SQLite file, as a single node always has.
        let shared = config
            .cluster
            .as_ref()
            .map(|c| c.postgres_url.clone())
            .filter(|url| !url.is_empty());
        let (communities, stored_bans, store, store_worker, kv) = match &shared {
            Some(url) => {
                let store = crate::store::postgres::PgStore::connect(url)?;
                let kv: Arc<dyn crate::store::kv::KvStore> =
                    Arc::new(crate::store::postgres::PgKv::connect(url)?);
                tracing::info!("shared store: PostgreSQL");
                let (communities, bans, handle, worker) = open_store(store, clock)?;
                (communities, bans, handle, worker, kv)
            }
            None => {
                let store = SqliteStore::open_in(&config.server.data_dir)?;
                let kv: Arc<dyn crate::store::kv::KvStore> = Arc::new(SqliteKv::open(
                    &config.server.data_dir.join(crate::store::sqlite::DB_FILE),
                )?);
                let (communities, bans, handle, worker) = open_store(store, clock)?;
                (communities, bans, handle, worker, kv)
            }
        };
        if !stored_bans.is_empty() {
            tracing::info!(bans = stored_bans.len(), "bans and revocations loaded");
        }
        let bans = Arc::new(crate::policy::bans::Bans::new(
            stored_bans,
            Some(store.clone()),
        ));
        let writer: Arc<dyn crate::community::hub::CommunityWriter> = match &cluster {
            Some(cluster) => {
                let mirror = cluster.clone();
                bans.set_mirror(Box::new(move |op| mirror.publish_ban(op)));
                Arc::new(crate::cluster::bus::ClusterWriter {
                    store: store.clone(),
                    cluster: cluster.clone(),
                })
            }
            None => Arc::new(store.clone()),
        };
        let community = CommunityHub::load(&communities, Some(writer))?;
        if let Some(cluster) = &cluster {
            community.raise_next_id(cluster.reserve_ids().await?);
        }
        tracing::info!(servers = communities.len(), "community servers loaded");
        let stop_accepting = CancellationToken::new();

        let metrics = Metrics::with_cluster(cluster.as_ref().map(|c| c.metrics().as_ref()));
        let pool = Pool::start(
            "conclave-lua",
            config.scripts.clone(),
            metrics.scripts.clone(),
        )
        .map_err(|e| ServerError::Policy(format!("cannot start the script threads: {e}")))?;
        let mut policy = config.policy.clone();
        if policy.recordings_dir.as_os_str().is_empty() {
            policy.recordings_dir = config.server.data_dir.join("recordings");
        }
        let catalog = Catalog::open_with(policy, metrics.catalog.clone(), clock, pool)
            .map_err(|e| ServerError::Policy(e.to_string()))?;
        let watcher = if config.policy.watch {
            let watcher = crate::policy::reload::watch(catalog.clone(), stop_accepting.clone())
                .map_err(|e| ServerError::Policy(format!("cannot watch for changes: {e}")))?;
            Some(watcher)
        } else {
            None
        };
        let media = if config.media.enabled {
            Some(Media::bind(config.media.clone(), metrics.media.clone(), clock).await?)
        } else {
            None
        };
        let rooms = Rooms::new(RoomServices {
            settings: config.rooms.settings(),
            max_rooms: config.rooms.max_rooms,
            command_queue: config.rooms.command_queue,
            store: store.clone(),
            metrics: metrics.rooms.clone(),
            catalog,
            kv: Some(match &cluster {
                Some(cluster) => Arc::new(crate::cluster::fence::FencedKv {
                    inner: kv,
                    cluster: cluster.clone(),
                }),
                None => kv,
            }),
            media: media.clone(),
            clock,
            bans: bans.clone(),
            claims: cluster
                .clone()
                .map(|c| c as Arc<dyn crate::room::claims::Claims>),
        });
        let cluster_tasks = cluster.as_ref().map(|cluster| {
            let stop = CancellationToken::new();
            cluster.start_bus(
                crate::cluster::bus::BusContext {
                    community: community.clone(),
                    bans: bans.clone(),
                    store: store.clone(),
                    clock,
                },
                stop.clone(),
            );
            let media_ip =
                config
                    .media
                    .public_ip
                    .unwrap_or(if config.media.bind_ip.is_unspecified() {
                        addr.ip()
                    } else {
                        config.media.bind_ip
                    });
            let heartbeat = tokio::spawn(cluster.clone().run(
                crate::cluster::nodes::NodeContext {
                    rooms: rooms.clone(),
                    room_metrics: metrics.rooms.clone(),
                    media_metrics: metrics.media.clone(),
                    media_ip,
                    clock,
                },
                stop.clone(),
            ));
            (heartbeat, stop)
        });

        let state = Arc::new(AppState {
            connection_slots: Arc::new(Semaphore::new(config.signal.max_connections)),
            config,
            dev,
            rooms,
            community,
            auth,
            store,
            metrics,
            media,
            cluster,
            clock,
            connections_closing: CancellationToken::new(),
            connection_tasks: TaskTracker::new(),
        });

        let router = crate::http::router(state.clone());
        let stop = stop_accepting.clone();
        // Signaling sends small frames back to back (events, then a
        // response); with Nagle's algorithm the second waits for the peer's
        // delayed ACK, up to 40 ms. Every accepted socket gets TCP_NODELAY.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(%addr, dev, "conclave listening");
        let stop_bots = CancellationToken::new();
        let bots = start_bots(&state, addr, &stop_bots)?;
        Ok(Server {
            addr,
            state,
            stop_accepting,
            http,
            store_worker,
            _watcher: watcher,
            bots,
            stop_bots,
            cluster_tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `signal` fires, then shuts down in order. A cluster
    /// node drains first (no new rooms; its rooms may end for up to
    /// `[cluster] drain_timeout`); a second signal cuts the drain short.
    /// A drain asked for through the admin API ends the same way.
    pub async fn run_until(self, mut signal: ShutdownSignal) {
        match self.state.cluster.clone() {
            Some(cluster) => {
                tokio::select! {
                    _ = signal.recv() => {
                        tracing::info!("shutdown requested: draining first");
                        crate::cluster::drain::start(&cluster, &self.state.rooms);
                        tokio::select! {
                            _ = signal.recv() => tracing::info!("second signal: drain cut short"),
                            _ = cluster.drained() => {}
                        }
                    }
                    _ = cluster.drained() => tracing::info!("drained"),
                }
            }
            None => {
                signal.recv().await;
                tracing::info!("shutdown requested");
            }
        }
        self.shutdown().await;
    }

    /// Shuts down in the order described at the top of this module.
    pub async fn shutdown(self) {
        let state = self.state;
        // Bots leave first, like any member asked to, while rooms still run.
        self.stop_bots.cancel();
        for bot in self.bots {
            let _ = tokio::time::timeout(state.config.server.shutdown_grace, bot).await;
        }
        self.stop_accepting.cancel();
        state.rooms.shutdown().await;
        state.connections_closing.cancel();
        state.connection_tasks.close();
        let grace = state.config.server.shutdown_grace;
        if tokio::time::timeout(grace, state.connection_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "connections still open after the shutdown grace period"
            );
        }
        // Plain HTTP requests finish on their own; do not wait past the grace.
        let _ = tokio::time::timeout(grace, self.http).await;
        // Rooms are closed and their claims released: leave the cluster.
        if let Some((heartbeat, stop)) = self.cluster_tasks {
            stop.cancel();
            let _ = tokio::time::timeout(grace, heartbeat).await;
        }
        state.store.stop();
        let worker = self.store_worker;
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        tracing::info!("shutdown complete");
    }
}

/// Ends what an earlier crash left open, reads what the server starts with,
/// and hands the store to its worker thread.
fn open_store(
    mut store: impl Store,
    clock: Clock,
) -> Result<
    (
        Vec<String>,
        Vec<crate::store::BanRecord>,
        StoreHandle,
        StoreWorker,
    ),
    ServerError,
> {
    let dangling = store.close_dangling(clock.unix_ms())?;
    if dangling > 0 {
        tracing::warn!(dangling, "ended call records left open by an earlier crash");
    }
    let communities = store.community_servers()?;
    let stored_bans = store.bans(clock.unix_ms())?;
    let (store, worker) = StoreHandle::spawn(store);
    Ok((communities, stored_bans, store, worker))
}

/// Ctrl-C and SIGTERM, listened for from the moment this is created, so a
/// signal that arrives while the server is still starting is not lost.
pub struct ShutdownSignal {
    #[cfg(unix)]
    signals: Vec<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    /// Registers the handlers. Must be called inside the runtime.
    pub fn install() -> std::io::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignal {
                signals: vec![
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ],
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignal {})
        }
    }

    /// Resolves at the first signal.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let waits = self.signals.iter_mut().map(|s| Box::pin(s.recv()));
            futures_util::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Starts the configured bots. They connect to this server over loopback
/// with tokens minted from its own key, like any other client.
fn start_bots(
    state: &Arc<AppState>,
    addr: SocketAddr,
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServerError> {
    let mut host = addr;
    if host.ip().is_unspecified() {
        host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("ws://{host}/ws");
    let mut bots = Vec::new();
    for spec in &state.config.bots {
        let grants = crate::auth::Grants {
            create: true,
            rooms: vec![spec.room.clone()],
            admin: spec.admin,
            ..crate::auth::Grants::default()
        };
        // Renewed by restarting the bot; a day is longer than any one run.
        let claims = crate::auth::claims_for(
            &spec.user,
            &spec.name,
            grants,
            std::time::Duration::from_secs(24 * 3600),
        );
        let token = state
            .auth
            .mint(&claims)
            .map_err(|e| ServerError::Bot(format!("`{}`: {e}", spec.user)))?;
        let mut config = crate::bot::BotConfig::new(&url, &token, &spec.room, &spec.script);
        config.role = spec.role;
        config.options = spec.options.clone();
        config.bind = SocketAddr::new(host.ip(), 0);
        // The server's own script threads, as its rooms have.
        config.pool = Some(state.rooms.catalog().pool().clone());
        if let Some(dir) = &spec.media_dir {
            config.media_dir = dir.clone();
        }
        config.record_dir = spec
            .record_dir
            .clone()
            .unwrap_or_else(|| state.config.server.data_dir.join("recordings"));
        tracing::info!(user = %spec.user, room = %spec.room, script = %spec.script.display(), "starting bot");
        bots.push(crate::bot::spawn_supervised(config, stop.clone()));
    }
    Ok(bots)
}
