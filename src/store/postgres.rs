//! The shared store: one PostgreSQL database for every node of a cluster.
//!
//! [`PgStore`] keeps what [`super::sqlite::SqliteStore`] keeps, with the same
//! meaning, and [`PgKv`] what [`super::kv::SqliteKv`] keeps. Both use the
//! synchronous client: a `PgStore` lives on the store's worker thread and a
//! `PgKv` is called from script threads, neither of which is async.
//!
//! The connection is not assumed to last: a call that finds the database out
//! of reach fails with [`StoreError::Unavailable`] and drops the connection,
//! and the next call connects again (the store's worker holds and retries the
//! writes meanwhile). Every new connection makes sure the schema is current.
//!
//! TLS is not offered (no TLS crate is in the tree): the URL's `sslmode` must
//! allow a plain connection (the default, `prefer`, does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, NoTls, Statement};
use serde_json::Value;

use super::kv::{KvStore, Quota, Usage};
use super::{
    BanKind, BanOp, BanRecord, CallRecord, CommunityOp, MemberRecord, RecordOp, RecordQuery, Store,
    StoreError,
};
use crate::ids::ChannelId;

/// Schema migrations, applied in order; `conclave_migrations` lists the
/// versions applied (migration `i` of this list is version `i + 1`). Never
/// edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE call_records (
    channel_id  BIGINT PRIMARY KEY,
    room        TEXT   NOT NULL,
    custom_info TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    end_reason  TEXT
);
CREATE INDEX call_records_room ON call_records (room, started_at);
CREATE TABLE call_members (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id   BIGINT NOT NULL REFERENCES call_records (channel_id),
    user_id      TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    role         TEXT   NOT NULL,
    joined_at    BIGINT NOT NULL,
    left_at      BIGINT,
    leave_reason TEXT
);
CREATE INDEX call_members_channel ON call_members (channel_id, user_id);
"#,
    r#"
CREATE TABLE community_servers (
    id       BIGINT PRIMARY KEY,
    snapshot TEXT   NOT NULL
);
"#,
    r#"
CREATE TABLE bans (
    kind       TEXT   NOT NULL,
    room       TEXT   NOT NULL, -- '' for the whole server
    subject    TEXT   NOT NULL,
    until      BIGINT,
    reason     TEXT   NOT NULL,
    by_whom    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, room, subject)
);
"#,
    r#"
CREATE TABLE script_kv (
    namespace TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL, -- JSON, as written (its bytes count to the quota)
    PRIMARY KEY (namespace, key)
);
"#,
    // A membership is one user's join at one instant: a join written again
    // (the worker retrying after a connection lost before the commit was
    // acknowledged) must not make a second row.
    r#"
DELETE FROM call_members a USING call_members b
 WHERE a.id > b.id AND a.channel_id = b.channel_id
   AND a.user_id = b.user_id AND a.joined_at = b.joined_at;
CREATE UNIQUE INDEX call_members_session ON call_members (channel_id, user_id, joined_at);
"#,
];

/// The schema version this build brings a database up to.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock held while migrating ("conclave" in ASCII): nodes
/// starting together take turns, and all but the first find nothing to do.
const MIGRATION_LOCK: i64 = 0x636f_6e63_6c61_7665;

/// The first half of the two-key advisory locks that serialise writers of
/// one key-value namespace (the second is the namespace's hash). Two-key
/// locks never collide with one-key ones such as [`MIGRATION_LOCK`].
const KV_LOCK_CLASS: i32 = 0x6b76; // "kv"

/// How long one attempt to connect may take when the URL does not say: a
/// database that does not answer is as unavailable as one that refuses.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Call records, community servers and bans in PostgreSQL. Owned by the
/// store's worker thread, like any [`Store`].
pub struct PgStore {
    link: Link<RecordStatements>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db` or
    /// `host=… user=…`) and brings its schema up to date. Fails if the
    /// database cannot be reached now; once connected, a lost connection is
    /// reopened on demand.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        Ok(PgStore {
            link: Link::open(url, RecordStatements::prepare)?,
        })
    }
}

/// Every statement the record store runs, prepared once per connection.
struct RecordStatements {
    start: Statement,
    join: Statement,
    role: Statement,
    leave: Statement,
    end: Statement,
    records: Statement,
    members: Statement,
    save_server: Statement,
    delete_server: Statement,
    servers: Statement,
    put_ban: Statement,
    delete_ban: Statement,
    expire_bans: Statement,
    bans: Statement,
}

impl RecordStatements {
    fn prepare(client: &mut Client) -> Result<Self, postgres::Error> {
        Ok(RecordStatements {
            start: client.prepare(
                "INSERT INTO call_records (channel_id, room, custom_info, created_at, started_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )?,
            join: client.prepare(
                "INSERT INTO call_members (channel_id, user_id, name, role, joined_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (channel_id, user_id, joined_at) DO NOTHING",
            )?,
            role: client.prepare(
                "UPDATE call_members SET role = $3
                 WHERE channel_id = $1 AND user_id = $2 AND left_at IS NULL",
            )?,
            leave: client.prepare(
                "UPDATE call_members SET left_at = $3, leave_reason = $4
                 WHERE channel_id = $1 AND user_id = $2 AND left_at IS NULL",
            )?,
            end: client.prepare(
                // The first end stands: a retried write changes nothing,
                // and a stale owner that wakes after its room moved cannot
                // overwrite the `node_lost` the new owner wrote. Members
                // still open then (a dead node's) leave with the record.
                "WITH ended AS (
                     UPDATE call_records SET ended_at = $2, end_reason = $3
                     WHERE channel_id = $1 AND ended_at IS NULL
                 )
                 UPDATE call_members SET left_at = $2, leave_reason = $3
                 WHERE channel_id = $1 AND left_at IS NULL",
            )?,
            records: client.prepare(
                "SELECT channel_id, room, custom_info, created_at, started_at, ended_at, end_reason
                 FROM call_records
                 WHERE ($1::TEXT IS NULL OR room = $1) AND ($2::BIGINT IS NULL OR channel_id = $2)
                 ORDER BY channel_id DESC LIMIT $3",
            )?,
            members: client.prepare(
                "SELECT channel_id, user_id, name, role, joined_at, left_at, leave_reason
                 FROM call_members WHERE channel_id = ANY($1) ORDER BY id",
            )?,
            save_server: client.prepare(
                "INSERT INTO community_servers (id, snapshot) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot",
            )?,
            delete_server: client.prepare("DELETE FROM community_servers WHERE id = $1")?,
            servers: client.prepare("SELECT snapshot FROM community_servers ORDER BY id")?,
            put_ban: client.prepare(
                "INSERT INTO bans (kind, room, subject, until, reason, by_whom, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (kind, room, subject) DO UPDATE SET
                   until = excluded.until, reason = excluded.reason,
                   by_whom = excluded.by_whom, created_at = excluded.created_at",
            )?,
            delete_ban: client
                .prepare("DELETE FROM bans WHERE kind = $1 AND room = $2 AND subject = $3")?,
            expire_bans: client
                .prepare("DELETE FROM bans WHERE until IS NOT NULL AND until <= $1")?,
            bans: client.prepare(
                "SELECT kind, room, subject, until, reason, by_whom, created_at FROM bans
                 ORDER BY created_at, kind, room, subject",
            )?,
        })
    }
}

impl Store for PgStore {
    fn apply(&mut self, op: &RecordOp) -> Result<(), StoreError> {
        self.link.with(|client, st| {
            match op {
                RecordOp::Start {
                    channel_id,
                    room,
                    custom_info,
                    created_at,
                    started_at,
                } => client.execute(
                    &st.start,
                    &[
                        &channel_id.0,
                        &room.as_str(),
                        custom_info,
                        created_at,
                        started_at,
                    ],
                )?,
                RecordOp::Join {
                    channel_id,
                    user,
                    name,
                    role,
                    joined_at,
                } => client.execute(
                    &st.join,
                    &[
                        &channel_id.0,
                        &user.as_str(),
                        name,
                        &role.as_str(),
                        joined_at,
                    ],
                )?,
                RecordOp::Role {
                    channel_id,
                    user,
                    role,
                } => client.execute(&st.role, &[&channel_id.0, &user.as_str(), &role.as_str()])?,
                RecordOp::Leave {
                    channel_id,
                    user,
                    left_at,
                    reason,
                } => client.execute(
                    &st.leave,
                    &[&channel_id.0, &user.as_str(), left_at, &reason.as_str()],
                )?,
                RecordOp::End {
                    channel_id,
                    ended_at,
                    reason,
                } => client.execute(&st.end, &[&channel_id.0, ended_at, reason])?,
            };
            Ok(())
        })
    }

    fn records(&mut self, query: &RecordQuery) -> Result<Vec<CallRecord>, StoreError> {
        let limit = i64::from(query.limit.unwrap_or(100).min(1000));
        self.link.with(|client, st| {
            let mut records: Vec<CallRecord> = client
                .query(&st.records, &[&query.room, &query.channel_id, &limit])?
                .iter()
                .map(|r| CallRecord {
                    channel_id: ChannelId(r.get(0)),
                    room: r.get(1),
                    custom_info: r.get(2),
                    created_at: r.get(3),
                    started_at: r.get(4),
                    ended_at: r.get(5),
                    end_reason: r.get(6),
                    members: Vec::new(),
                })
                .collect();
            if records.is_empty() {
                return Ok(records);
            }
            // Every record's members in one round trip, not one per record.
            let ids: Vec<i64> = records.iter().map(|r| r.channel_id.0).collect();
            let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, &c)| (c, i)).collect();
            for r in client.query(&st.members, &[&ids])? {
                let channel_id: i64 = r.get(0);
                records[index[&channel_id]].members.push(MemberRecord {
                    user: r.get(1),
                    name: r.get(2),
                    role: r.get(3),
                    joined_at: r.get(4),
                    left_at: r.get(5),
                    leave_reason: r.get(6),
                });
            }
            Ok(records)
        })
    }

    /// Does nothing. On one node, a record still open at start was left by
    /// a crash of this very server; in a shared database, open records
    /// belong to rooms that are live on other nodes, and ending them would
    /// corrupt those. The node that takes over a dead node's room ends the
    /// old record itself, through [`RecordOp::End`].
    fn close_dangling(&mut self, _now_ms: i64) -> Result<usize, StoreError> {
        Ok(0)
    }

    fn community(&mut self, op: &CommunityOp) -> Result<(), StoreError> {
        // Ids are u64 in the model and BIGINT here: the bits are kept as they
        // are and read back the same way (as the SQLite store does).
        self.link.with(|client, st| {
            match op {
                CommunityOp::Save { server, snapshot } => {
                    client.execute(&st.save_server, &[&(*server as i64), snapshot])?
                }
                CommunityOp::Delete { server } => {
                    client.execute(&st.delete_server, &[&(*server as i64)])?
                }
            };
            Ok(())
        })
    }

    fn community_servers(&mut self) -> Result<Vec<String>, StoreError> {
        self.link.with(|client, st| {
            Ok(client
                .query(&st.servers, &[])?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn ban(&mut self, op: &BanOp) -> Result<(), StoreError> {
        self.link.with(|client, st| {
            match op {
                BanOp::Put(ban) => client.execute(
                    &st.put_ban,
                    &[
                        &ban.kind.as_str(),
                        &ban.room.as_deref().unwrap_or(""),
                        &ban.subject,
                        &ban.until,
                        &ban.reason,
                        &ban.by,
                        &ban.created_at,
                    ],
                )?,
                BanOp::Delete {
                    kind,
                    room,
                    subject,
                } => client.execute(
                    &st.delete_ban,
                    &[&kind.as_str(), &room.as_deref().unwrap_or(""), subject],
                )?,
            };
            Ok(())
        })
    }

    fn bans(&mut self, now_ms: i64) -> Result<Vec<BanRecord>, StoreError> {
        self.link.with(|client, st| {
            client.execute(&st.expire_bans, &[&now_ms])?;
            Ok(client
                .query(&st.bans, &[])?
                .iter()
                .map(|r| {
                    let kind: &str = r.get(0);
                    let room: String = r.get(1);
                    BanRecord {
                        kind: if kind == "token" {
                            BanKind::Token
                        } else {
                            BanKind::User
                        },
                        room: (!room.is_empty()).then_some(room),
                        subject: r.get(2),
                        until: r.get(3),
                        reason: r.get(4),
                        by: r.get(5),
                        created_at: r.get(6),
                    }
                })
                .collect())
        })
    }
}

/// The key-value store scripts use, in PostgreSQL. Several nodes write the
/// same namespaces, so nothing is cached: a write counts its namespace's
/// usage inside its own transaction, after taking that namespace's lock, so
/// that two writers can never both fit under a quota only one of them fits.
pub struct PgKv {
    link: Mutex<Link<KvStatements>>,
}

impl PgKv {
    /// Connects as [`PgStore::connect`] does (the two share one schema and
    /// may share one database).
    pub fn connect(url: &str) -> Result<PgKv, StoreError> {
        Ok(PgKv {
            link: Mutex::new(Link::open(url, KvStatements::prepare)?),
        })
    }
}

struct KvStatements {
    get: Statement,
    lock: Statement,
    usage: Statement,
    put: Statement,
    delete: Statement,
}

impl KvStatements {
    fn prepare(client: &mut Client) -> Result<Self, postgres::Error> {
        Ok(KvStatements {
            get: client.prepare("SELECT value FROM script_kv WHERE namespace = $1 AND key = $2")?,
            lock: client.prepare("SELECT pg_advisory_xact_lock($1, hashtext($2))")?,
            // Bytes as SQLite counts them: the UTF-8 of key and value.
            usage: client.prepare(
                "SELECT COUNT(*), COALESCE(SUM(octet_length(key) + octet_length(value)), 0)::BIGINT
                 FROM script_kv WHERE namespace = $1",
            )?,
            put: client.prepare(
                "INSERT INTO script_kv (namespace, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            )?,
            delete: client.prepare("DELETE FROM script_kv WHERE namespace = $1 AND key = $2")?,
        })
    }
}

impl KvStore for PgKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let mut link = self.link.lock().expect("kv lock poisoned");
        let text: Option<String> = link.with(|client, st| {
            Ok(client
                .query_opt(&st.get, &[&namespace, &key])?
                .map(|r| r.get(0)))
        })?;
        // Values were written by `set` as JSON; anything else is left alone.
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&Value>,
        quota: &Quota,
    ) -> Result<(), StoreError> {
        let text = value.map(Value::to_string);
        let mut link = self.link.lock().expect("kv lock poisoned");
        link.with(|client, st| {
            // A refusal returns early: the transaction rolls back as it drops,
            // and the lock goes with it.
            let mut tx = client.transaction()?;
            tx.execute(&st.lock, &[&KV_LOCK_CLASS, &namespace])?;
            let row = tx.query_one(&st.usage, &[&namespace])?;
            let usage = Usage {
                keys: row.get::<_, i64>(0) as usize,
                bytes: row.get::<_, i64>(1) as usize,
            };
            let old: Option<String> = tx
                .query_opt(&st.get, &[&namespace, &key])?
                .map(|r| r.get(0));
            // Only the refusal matters: the next write counts afresh.
            usage.after(key, old.as_deref(), text.as_deref(), quota)?;
            match &text {
                Some(text) => tx.execute(&st.put, &[&namespace, &key, text])?,
                None => tx.execute(&st.delete, &[&namespace, &key])?,
            };
            tx.commit()?;
            Ok(())
        })
    }
}

/// A connection that is opened again when lost, with the statements `S`
/// prepared on it.
struct Link<S> {
    config: postgres::Config,
    prepare: fn(&mut Client) -> Result<S, postgres::Error>,
    /// `None` after the connection was lost, until the next call.
    conn: Option<(Client, S)>,
}

impl<S: Send> Link<S> {
    fn open(
        url: &str,
        prepare: fn(&mut Client) -> Result<S, postgres::Error>,
    ) -> Result<Self, StoreError> {
        let mut config: postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut link = Link {
            config,
            prepare,
            conn: None,
        };
        link.with(|_, _| Ok(()))?;
        Ok(link)
    }

    /// Runs `f` on the connection, opening it first if need be. A failure
    /// that means the database is out of reach comes back as
    /// [`StoreError::Unavailable`], and the connection is dropped so that
    /// the next call opens a fresh one.
    fn with<T: Send>(
        &mut self,
        f: impl FnOnce(&mut Client, &S) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        off_async(|| {
            let result = self.connected().and_then(|(client, st)| f(client, st));
            result.map_err(|e| match e {
                StoreError::Postgres(e) if unreachable(&e) => {
                    self.conn = None;
                    StoreError::Unavailable(describe(&e))
                }
                e => e,
            })
        })
    }

    fn connected(&mut self) -> Result<(&mut Client, &S), StoreError> {
        if self.conn.is_none() {
            let mut client = self.config.connect(NoTls)?;
            migrate(&mut client)?;
            let statements = (self.prepare)(&mut client)?;
            self.conn = Some((client, statements));
        }
        let (client, statements) = self.conn.as_mut().expect("connected above");
        Ok((client, statements))
    }
}

impl<S> Drop for Link<S> {
    fn drop(&mut self) {
        // Closing the client blocks on its runtime, which panics inside
        // another one: an async caller's drop is finished on a thread.
        if let Some(conn) = self.conn.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let (client, _statements) = conn;
            std::thread::spawn(move || drop(client));
        }
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`], in one transaction under
/// [`MIGRATION_LOCK`], so nodes starting at once never apply a migration
/// twice, and a failed migration leaves nothing half done. A database a newer
/// build has migrated further is left as it is.
fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS conclave_migrations (version INTEGER PRIMARY KEY)",
    )?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM conclave_migrations",
            &[],
        )?
        .get(0);
    for (version, sql) in (1..).zip(MIGRATIONS).skip(applied.max(0) as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO conclave_migrations (version) VALUES ($1)",
            &[&version],
        )?;
    }
    tx.commit()
}

/// Whether `e` means the database is out of reach rather than that it
/// refused the statement: the connection failed or closed, the socket broke,
/// or the server is shutting down, starting, or full.
fn unreachable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Class 08: connection exceptions. 57P01-03: shutting down (admin,
        // crash) or not accepting connections yet. 53300: too many
        // connections.
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    // With no SQLSTATE, an I/O error is the network; anything else (a value
    // that does not convert, say) is not.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// `e` with its cause: the client's own message only names the kind of
/// failure ("db error", "error connecting to server").
pub(super) fn describe(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Runs `f` here, or on a thread of its own when called from an async
/// context: the synchronous client drives a small runtime of its own, and
/// blocking on one inside another panics. A server at startup reads the
/// store from async code; the store's worker and the script threads are not
/// async and pay nothing.
fn off_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
