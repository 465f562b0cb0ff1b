//! Durable storage: call records, community servers, bans and revocations.
//!
//! [`Store`] is the contract; [`sqlite::SqliteStore`] is the embedded default
//! and [`postgres::PgStore`] the database a cluster's nodes share. A store is
//! driven by [`StoreHandle`], which owns it on one dedicated thread: rooms
//! hand it writes without waiting (the room path never blocks on disk), and
//! reads are queued behind every write sent before them, so a reader always
//! sees what happened-before its request.
//!
//! A shared database can be out of reach for a while. Writes that fail
//! because of that ([`StoreError::is_transient`]) are held and retried in
//! order until it is back; see [`MAX_PENDING`]. A connection lost after the
//! database committed a write but before it said so makes the retry apply it
//! again: a record's start is then refused as a duplicate (and dropped), a
//! join adds a second membership; every other write comes out the same
//! applied twice.

pub mod kv;
pub mod postgres;
pub mod sqlite;

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

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
    /// A statement PostgreSQL refused, or a reply that made no sense; trying
    /// the same again would fail the same way.
    #[error("PostgreSQL error: {}", postgres::describe(.0))]
    Postgres(#[from] ::postgres::Error),
    /// The database cannot be reached now (refused, connection lost, shutting
    /// down): unlike every other error here, the same call may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
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

impl StoreError {
    /// Whether the failure says nothing about the call itself, only that the
    /// database is out of reach, so that retrying it later makes sense.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
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

/// Writes held during an outage, at most. Past it the oldest are dropped
/// (each logged and counted): memory must stay bounded however long the
/// database stays away. A write is a few hundred bytes, so this is tens of
/// megabytes, and at a handful of writes per join it covers many minutes of a
/// busy node.
pub const MAX_PENDING: usize = 100_000;

/// The first retry after a write failed for want of the database, doubling
/// up to [`LAST_RETRY`]: quick enough to catch a restart, rare enough not to
/// hammer a database that is struggling.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// One write, as queued by the rooms.
#[derive(Debug)]
enum Write {
    Record(RecordOp),
    Community(CommunityOp),
    Ban(BanOp),
}

impl Write {
    fn apply(&self, store: &mut impl Store) -> Result<(), StoreError> {
        match self {
            Write::Record(op) => store.apply(op),
            Write::Community(op) => store.community(op),
            Write::Ban(op) => store.ban(op),
        }
    }

    /// A write given up on: refused by the database, or dropped to keep
    /// [`MAX_PENDING`].
    fn log_lost(&self, error: &dyn std::fmt::Display) {
        match self {
            Write::Record(op) => tracing::error!(%error, ?op, "call record write failed"),
            Write::Community(op) => tracing::error!(%error, ?op, "community write failed"),
            Write::Ban(op) => tracing::error!(%error, ?op, "ban write failed"),
        }
    }
}

enum Job {
    Write(Write),
    Records(
        RecordQuery,
        oneshot::Sender<Result<Vec<CallRecord>, StoreError>>,
    ),
    Servers(oneshot::Sender<Result<Vec<String>, StoreError>>),
    Bans(i64, oneshot::Sender<Result<Vec<BanRecord>, StoreError>>),
    Flush(oneshot::Sender<()>),
    Stop,
}

/// What waits for the database during an outage, in the order it was queued.
/// Flushes wait in line too: one resolves once everything ahead of it has
/// been applied (or given up on).
enum Held {
    Write(Write),
    Flush(oneshot::Sender<()>),
}

/// A cheap, cloneable handle to the store's worker thread.
#[derive(Clone)]
pub struct StoreHandle {
    // Unbounded on purpose: a room must never wait on disk, and record writes
    // are few (a handful per join). If the disk stalls, memory grows instead
    // of the room freezing; `flush` reveals the backlog. (During an outage
    // the worker keeps taking jobs and bounds what it holds itself.)
    tx: mpsc::Sender<Job>,
}

/// Owns the worker thread. [`StoreHandle::stop`] then [`StoreWorker::join`]
/// drains every write queued before the stop.
pub struct StoreWorker {
    thread: JoinHandle<()>,
}

impl StoreWorker {
    /// Waits until the worker has applied everything queued before the stop
    /// (if the database is unreachable then, after one last try).
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("store worker panicked");
        }
    }
}

/// The worker thread's state.
struct Worker<S> {
    store: S,
    /// Empty unless the database is unreachable; then its front is the
    /// write that failed, and every later write and flush waits behind it,
    /// so writes still apply in the order they were made.
    held: VecDeque<Held>,
    /// How many of `held` are writes.
    held_writes: usize,
    /// When to try the front write again, and the wait after that.
    retry_at: Instant,
    backoff: Duration,
    outage_began: Instant,
    /// Why the last try failed, for readers turned away meanwhile.
    last_error: String,
    /// Writes dropped to keep [`MAX_PENDING`], since the worker started.
    dropped: u64,
}

impl<S: Store> Worker<S> {
    fn new(store: S) -> Self {
        let now = Instant::now();
        Worker {
            store,
            held: VecDeque::new(),
            held_writes: 0,
            retry_at: now,
            backoff: FIRST_RETRY,
            outage_began: now,
            last_error: String::new(),
            dropped: 0,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            // Checked before every job too: jobs arriving steadily must not
            // put the retry off for ever.
            if !self.held.is_empty() && Instant::now() >= self.retry_at {
                self.retry();
            }
            let job = if self.held.is_empty() {
                rx.recv().ok()
            } else {
                match rx.recv_timeout(self.retry_at.saturating_duration_since(Instant::now())) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            };
            match job {
                Some(Job::Write(write)) => self.write(write),
                Some(Job::Records(query, reply)) => {
                    let _ = reply.send(self.records(&query));
                }
                Some(Job::Servers(reply)) => {
                    let read = self
                        .readable()
                        .and_then(|()| self.store.community_servers());
                    let _ = reply.send(read);
                }
                Some(Job::Bans(now_ms, reply)) => {
                    let read = self.readable().and_then(|()| self.store.bans(now_ms));
                    let _ = reply.send(read);
                }
                Some(Job::Flush(reply)) => {
                    if self.held.is_empty() {
                        let _ = reply.send(());
                    } else {
                        self.hold(Held::Flush(reply));
                    }
                }
                Some(Job::Stop) | None => break,
            }
        }
        if !self.held.is_empty() {
            // Shutting down must not hang on a database that may never come
            // back: one last try, then what is left is lost (and said so).
            self.retry();
            if self.held_writes > 0 {
                tracing::error!(
                    lost = self.held_writes,
                    error = %self.last_error,
                    "the store stopped while the database was unavailable; held writes are lost"
                );
            }
        }
    }

    fn write(&mut self, write: Write) {
        if !self.held.is_empty() {
            self.hold(Held::Write(write));
            return;
        }
        match write.apply(&mut self.store) {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "the database is unavailable: writes are held and retried in order");
                self.outage_began = Instant::now();
                self.backoff = FIRST_RETRY;
                self.retry_at = self.outage_began + self.backoff;
                self.last_error = e.to_string();
                self.hold(Held::Write(write));
            }
            // The write itself is bad; retrying it would only fail again.
            Err(e) => write.log_lost(&e),
        }
    }

    /// During an outage a read fails at once: waiting behind the held
    /// writes could take as long as the outage.
    fn records(&mut self, query: &RecordQuery) -> Result<Vec<CallRecord>, StoreError> {
        self.readable()?;
        self.store.records(query)
    }

    /// A read answers at once: from the store, or, while writes wait for
    /// it, with why it cannot (it would not see them).
    fn readable(&self) -> Result<(), StoreError> {
        if self.held.is_empty() {
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "{} writes wait for it ({})",
            self.held_writes, self.last_error
        )))
    }

    fn hold(&mut self, held: Held) {
        if matches!(held, Held::Write(_)) {
            self.held_writes += 1;
        }
        self.held.push_back(held);
        if self.held_writes > MAX_PENDING {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        while let Some(held) = self.held.pop_front() {
            match held {
                // Nothing queued before it waits any more.
                Held::Flush(reply) => {
                    let _ = reply.send(());
                }
                Held::Write(write) => {
                    self.held_writes -= 1;
                    self.dropped += 1;
                    // The first drop, then one line in 10,000: a long outage
                    // on a busy node would otherwise log as fast as it drops.
                    if self.dropped % 10_000 == 1 {
                        write.log_lost(&format_args!(
                            "more than {MAX_PENDING} writes held while the database is unavailable; \
                             the oldest dropped ({} so far)",
                            self.dropped
                        ));
                    }
                    return;
                }
            }
        }
    }

    /// Applies held writes in order until one fails for want of the
    /// database again (then waits longer before the next try) or none is
    /// left (the outage is over).
    fn retry(&mut self) {
        let mut applied = 0usize;
        while let Some(held) = self.held.pop_front() {
            match held {
                Held::Flush(reply) => {
                    let _ = reply.send(());
                }
                Held::Write(write) => match write.apply(&mut self.store) {
                    Ok(()) => {
                        self.held_writes -= 1;
                        applied += 1;
                    }
                    Err(e) if e.is_transient() => {
                        // Still first in line.
                        self.held.push_front(Held::Write(write));
                        self.last_error = e.to_string();
                        self.backoff = (self.backoff * 2).min(LAST_RETRY);
                        self.retry_at = Instant::now() + self.backoff;
                        return;
                    }
                    Err(e) => {
                        self.held_writes -= 1;
                        write.log_lost(&e);
                    }
                },
            }
        }
        tracing::info!(
            applied,
            outage = ?self.outage_began.elapsed(),
            "the database is back: held writes caught up"
        );
    }
}

impl StoreHandle {
    /// Starts the worker thread that owns `store`.
    pub fn spawn(store: impl Store) -> (StoreHandle, StoreWorker) {
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = Worker::new(store);
        let thread = std::thread::Builder::new()
            .name("conclave-store".into())
            .spawn(move || worker.run(rx))
            .expect("the OS can start a thread at startup");
        (StoreHandle { tx }, StoreWorker { thread })
    }

    /// Queues a write; never blocks.
    pub fn apply(&self, op: RecordOp) {
        if self.tx.send(Job::Write(Write::Record(op))).is_err() {
            tracing::error!("call record dropped: the store has stopped");
        }
    }

    /// Queues a community write; never blocks. Writes apply in the order
    /// they were queued.
    pub fn community(&self, op: CommunityOp) {
        if self.tx.send(Job::Write(Write::Community(op))).is_err() {
            tracing::error!("community write dropped: the store has stopped");
        }
    }

    /// Queues a ban write; never blocks.
    pub fn ban(&self, op: BanOp) {
        if self.tx.send(Job::Write(Write::Ban(op))).is_err() {
            tracing::error!("ban write dropped: the store has stopped");
        }
    }

    /// Lists records, after every write queued before this call. While the
    /// database is unavailable, fails at once with
    /// [`StoreError::Unavailable`].
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

    /// Resolves once every write queued before this call has been applied;
    /// during an outage, once the database is back and has caught up (or
    /// the writes ahead were given up on: refused, or dropped past
    /// [`MAX_PENDING`]).
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Applies record writes to a list of their channel ids; while `down` is
    /// set every call fails as if the database were unreachable. A negative
    /// channel id is a write the database refuses.
    #[derive(Clone, Default)]
    struct Fake {
        applied: Arc<Mutex<Vec<i64>>>,
        down: Arc<AtomicBool>,
        reads: Arc<AtomicUsize>,
    }

    impl Fake {
        fn reachable(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down for the test".into()));
            }
            Ok(())
        }

        fn applied(&self) -> Vec<i64> {
            self.applied.lock().unwrap().clone()
        }
    }

    impl Store for Fake {
        fn apply(&mut self, op: &RecordOp) -> Result<(), StoreError> {
            self.reachable()?;
            let RecordOp::End { channel_id, .. } = op else {
                unreachable!("the tests only end records")
            };
            if channel_id.0 < 0 {
                return Err(StoreError::Quota("refused for the test".into()));
            }
            self.applied.lock().unwrap().push(channel_id.0);
            Ok(())
        }

        fn records(&mut self, _: &RecordQuery) -> Result<Vec<CallRecord>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.reachable()?;
            Ok(Vec::new())
        }

        fn close_dangling(&mut self, _: i64) -> Result<usize, StoreError> {
            Ok(0)
        }

        fn community(&mut self, _: &CommunityOp) -> Result<(), StoreError> {
            self.reachable()
        }

        fn community_servers(&mut self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }

        fn ban(&mut self, _: &BanOp) -> Result<(), StoreError> {
            self.reachable()
        }

        fn bans(&mut self, _: i64) -> Result<Vec<BanRecord>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn end(n: i64) -> RecordOp {
        RecordOp::End {
            channel_id: ChannelId(n),
            ended_at: 0,
            reason: String::new(),
        }
    }

    /// Longer than the longest backoff: only a broken worker reaches it.
    const PATIENCE: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn writes_wait_out_an_outage_in_order_and_reads_fail_meanwhile() {
        let fake = Fake::default();
        let (store, _worker) = StoreHandle::spawn(fake.clone());
        store.apply(end(1));
        store.flush().await.unwrap();

        fake.down.store(true, Ordering::SeqCst);
        for n in 2..=6 {
            store.apply(end(n));
        }
        let flushed = tokio::spawn({
            let store = store.clone();
            async move { store.flush().await }
        });
        let err = store.records(RecordQuery::default()).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("5 writes wait"), "{err}");
        assert_eq!(
            fake.reads.load(Ordering::SeqCst),
            0,
            "a read during an outage never reaches the database"
        );

        fake.down.store(false, Ordering::SeqCst);
        tokio::time::timeout(PATIENCE, flushed)
            .await
            .expect("the flush resolves once the writes are in")
            .unwrap()
            .unwrap();
        assert_eq!(fake.applied(), [1, 2, 3, 4, 5, 6]);
        store.records(RecordQuery::default()).await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_write_is_dropped_and_the_next_applies() {
        let fake = Fake::default();
        let (store, _worker) = StoreHandle::spawn(fake.clone());
        store.apply(end(-1));
        store.apply(end(2));
        store.flush().await.unwrap();
        assert_eq!(fake.applied(), [2]);
        store.records(RecordQuery::default()).await.unwrap();
    }

    #[tokio::test]
    async fn past_max_pending_the_oldest_writes_are_dropped() {
        let fake = Fake::default();
        let (store, _worker) = StoreHandle::spawn(fake.clone());
        fake.down.store(true, Ordering::SeqCst);
        let last = MAX_PENDING as i64 + 5;
        for n in 1..=last {
            store.apply(end(n));
        }
        // Answered once the worker has taken every write before it.
        let err = store.records(RecordQuery::default()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{MAX_PENDING} writes wait")),
            "{err}"
        );
        fake.down.store(false, Ordering::SeqCst);
        tokio::time::timeout(PATIENCE, store.flush())
            .await
            .expect("the flush resolves once the writes are in")
            .unwrap();
        let applied = fake.applied();
        assert_eq!(applied.len(), MAX_PENDING);
        assert!(applied.iter().copied().eq(6..=last), "the newest, in order");
    }

    #[test]
    fn stopping_during_an_outage_does_not_wait_for_the_database() {
        let fake = Fake::default();
        let (store, worker) = StoreHandle::spawn(fake.clone());
        fake.down.store(true, Ordering::SeqCst);
        store.apply(end(1));
        store.stop();
        worker.join();
        assert!(fake.applied().is_empty());
    }
}
