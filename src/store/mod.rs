//! Durable storage: call records, community servers, bans and revocations.
//!
//! [`Store`] is the contract; [`sqlite::SqliteStore`] is the embedded default
//! and a shared database can implement the same trait later. A store is driven
//! by [`StoreHandle`], which owns it on one dedicated thread: rooms hand it
//! writes without waiting (the room path never blocks on disk), and reads are
//! queued behind every write sent before them, so a reader always sees what
//! happened-before its request.

pub mod kv;
pub mod sqlite;

use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::ids::{ChannelId, RoomName, UserId};
use crate::model::{LeaveReason, Role};

/// One change to the call records, emitted by a room.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordOp {
    /// The first member joined: the record begins.
    Start {
        channel_id: ChannelId,
        room: RoomName,
        custom_info: String,
        created_at: i64,
        started_at: i64,
    },
    Join {
        channel_id: ChannelId,
        user: UserId,
        name: String,
        role: Role,
        joined_at: i64,
    },
    Role {
        channel_id: ChannelId,
        user: UserId,
        role: Role,
    },
    Leave {
        channel_id: ChannelId,
        user: UserId,
        left_at: i64,
        reason: LeaveReason,
    },
    End {
        channel_id: ChannelId,
        ended_at: i64,
        reason: String,
    },
}

/// A room instance's record (the seed's 话单).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub channel_id: ChannelId,
    pub room: String,
    pub custom_info: String,
    pub created_at: i64,
    pub started_at: i64,
    /// `None` while the room is open.
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub members: Vec<MemberRecord>,
}

/// One membership inside a call record. A user who leaves and joins again has
/// two.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub user: String,
    pub name: String,
    pub role: String,
    pub joined_at: i64,
    pub left_at: Option<i64>,
    pub leave_reason: Option<String>,
}

/// Which records to list, newest first.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordQuery {
    pub room: Option<String>,
    pub channel_id: Option<i64>,
    pub limit: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the store has stopped")]
    Stopped,
    /// A write that would take a namespace past its quota; nothing written.
    #[error("{0}")]
    Quota(String),
}

pub use crate::community::hub::CommunityOp;

/// What a ban or revocation stands against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanKind {
    /// A user, by id.
    User,
    /// One token, by its `jti` claim.
    Token,
}

impl BanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BanKind::User => "user",
            BanKind::Token => "token",
        }
    }
}

/// A ban (of a user, from a room or the server) or a token revocation, as
/// kept on disk. Bans for a room's life are never stored: the room they
/// end with does not survive a restart either.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    pub kind: BanKind,
    /// The room; `None` for the whole server (always so for tokens).
    pub room: Option<String>,
    /// The user id or the token's `jti`.
    pub subject: String,
    /// Unix milliseconds it ends at; `None`: until lifted.
    pub until: Option<i64>,
    pub reason: String,
    /// Who banned: an operator's user id, `policy:NAME`, or a member.
    pub by: String,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub enum BanOp {
    Put(BanRecord),
    Delete {
        kind: BanKind,
        room: Option<String>,
        subject: String,
    },
}

/// The durable store's contract. Methods take `&mut self`: a store is owned by
/// one worker thread and never shared.
pub trait Store: Send + 'static {
    fn apply(&mut self, op: &RecordOp) -> Result<(), StoreError>;
    fn records(&mut self, query: &RecordQuery) -> Result<Vec<CallRecord>, StoreError>;
    /// Marks records left open by a crash as ended; called once at start.
    fn close_dangling(&mut self, now_ms: i64) -> Result<usize, StoreError>;
    fn community(&mut self, op: &CommunityOp) -> Result<(), StoreError>;
    /// Every stored community server's snapshot JSON; called once at start.
    fn community_servers(&mut self) -> Result<Vec<String>, StoreError>;
    fn ban(&mut self, op: &BanOp) -> Result<(), StoreError>;
    /// Every stored ban and revocation that has not ended by `now_ms`
    /// (ended ones are deleted); called once at start.
    fn bans(&mut self, now_ms: i64) -> Result<Vec<BanRecord>, StoreError>;
}

enum Job {
    Apply(RecordOp),
    Records(
        RecordQuery,
        oneshot::Sender<Result<Vec<CallRecord>, StoreError>>,
    ),
    Community(CommunityOp),
    Ban(BanOp),
    Servers(oneshot::Sender<Result<Vec<String>, StoreError>>),
    Bans(i64, oneshot::Sender<Result<Vec<BanRecord>, StoreError>>),
    Flush(oneshot::Sender<()>),
    Stop,
}

/// A cheap, cloneable handle to the store's worker thread.
#[derive(Clone)]
pub struct StoreHandle {
    // Unbounded on purpose: a room must never wait on disk, and record writes
    // are few (a handful per join). If the disk stalls, memory grows instead
    // of the room freezing; `flush` reveals the backlog.
    tx: mpsc::UnboundedSender<Job>,
}

/// Owns the worker thread. [`StoreHandle::stop`] then [`StoreWorker::join`]
/// drains every write queued before the stop.
pub struct StoreWorker {
    thread: JoinHandle<()>,
}

impl StoreWorker {
    /// Waits until the worker has applied everything queued before the stop.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("store worker panicked");
        }
    }
}

impl StoreHandle {
    /// Starts the worker thread that owns `store`.
    pub fn spawn(mut store: impl Store) -> (StoreHandle, StoreWorker) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("conclave-store".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    match job {
                        Job::Apply(op) => {
                            if let Err(e) = store.apply(&op) {
                                tracing::error!(error = %e, ?op, "call record write failed");
                            }
                        }
                        Job::Records(query, reply) => {
                            let _ = reply.send(store.records(&query));
                        }
                        Job::Community(op) => {
                            if let Err(e) = store.community(&op) {
                                tracing::error!(error = %e, ?op, "community write failed");
                            }
                        }
                        Job::Ban(op) => {
                            if let Err(e) = store.ban(&op) {
                                tracing::error!(error = %e, ?op, "ban write failed");
                            }
                        }
                        Job::Servers(reply) => {
                            let _ = reply.send(store.community_servers());
                        }
                        Job::Bans(now_ms, reply) => {
                            let _ = reply.send(store.bans(now_ms));
                        }
                        Job::Flush(reply) => {
                            let _ = reply.send(());
                        }
                        Job::Stop => break,
                    }
                }
            })
            .expect("the OS can start a thread at startup");
        (StoreHandle { tx }, StoreWorker { thread })
    }

    /// Queues a write; never blocks.
    pub fn apply(&self, op: RecordOp) {
        if self.tx.send(Job::Apply(op)).is_err() {
            tracing::error!("call record dropped: the store has stopped");
        }
    }

    /// Queues a community write; never blocks. Writes apply in the order
    /// they were queued.
    pub fn community(&self, op: CommunityOp) {
        if self.tx.send(Job::Community(op)).is_err() {
            tracing::error!("community write dropped: the store has stopped");
        }
    }

    /// Queues a ban write; never blocks.
    pub fn ban(&self, op: BanOp) {
        if self.tx.send(Job::Ban(op)).is_err() {
            tracing::error!("ban write dropped: the store has stopped");
        }
    }

    /// Lists records, after every write queued before this call.
    pub async fn records(&self, query: RecordQuery) -> Result<Vec<CallRecord>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Records(query, reply))
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Every stored community server's snapshot, after every write queued
    /// before this call (a cluster node catching up).
    pub async fn community_servers(&self) -> Result<Vec<String>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Servers(reply))
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Every stored ban in force at `now_ms`, after every write queued
    /// before this call.
    pub async fn bans(&self, now_ms: i64) -> Result<Vec<BanRecord>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Bans(now_ms, reply))
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Asks the worker to stop once everything queued so far is applied.
    pub fn stop(&self) {
        let _ = self.tx.send(Job::Stop);
    }

    /// Resolves once every write queued before this call has been applied.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Flush(reply))
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }
}

/// The store thread keeps the community's servers.
#[async_trait::async_trait]
impl crate::community::hub::CommunityWriter for StoreHandle {
    fn write(&self, op: CommunityOp) {
        self.community(op);
    }

    async fn flush(&self) -> Result<(), String> {
        StoreHandle::flush(self).await.map_err(|e| e.to_string())
    }
}
