//! The embedded store: one SQLite file in the data directory, created on first
//! start. WAL mode so admin reads never wait on a write in progress.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    BanKind, BanOp, BanRecord, CallRecord, CommunityOp, MemberRecord, RecordOp, RecordQuery, Store,
    StoreError,
};
use crate::ids::ChannelId;

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE call_records (
    channel_id  INTEGER PRIMARY KEY,
    room        TEXT    NOT NULL,
    custom_info TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    end_reason  TEXT
);
CREATE INDEX call_records_room ON call_records (room, started_at);
CREATE TABLE call_members (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id   INTEGER NOT NULL REFERENCES call_records (channel_id),
    user         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    joined_at    INTEGER NOT NULL,
    left_at      INTEGER,
    leave_reason TEXT
);
CREATE INDEX call_members_channel ON call_members (channel_id, user);
"#,
    r#"
CREATE TABLE community_servers (
    id       INTEGER PRIMARY KEY,
    snapshot TEXT    NOT NULL
);
"#,
    r#"
CREATE TABLE bans (
    kind       TEXT    NOT NULL,
    room       TEXT    NOT NULL, -- '' for the whole server
    subject    TEXT    NOT NULL,
    until      INTEGER,
    reason     TEXT    NOT NULL,
    by_whom    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, room, subject)
);
"#,
];

/// Default file name inside the data directory.
pub const DB_FILE: &str = "conclave.db";

pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/conclave.db`.
    pub fn open_in(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        Self::open(&dir.join(DB_FILE))
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A private in-memory database, for tests and benchmarks.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        Ok(SqliteStore { conn })
    }

    fn members(&self, channel_id: i64) -> Result<Vec<MemberRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT user, name, role, joined_at, left_at, leave_reason
             FROM call_members WHERE channel_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([channel_id], |r| {
            Ok(MemberRecord {
                user: r.get(0)?,
                name: r.get(1)?,
                role: r.get(2)?,
                joined_at: r.get(3)?,
                left_at: r.get(4)?,
                leave_reason: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Store for SqliteStore {
    fn apply(&mut self, op: &RecordOp) -> Result<(), StoreError> {
        match op {
            RecordOp::Start {
                channel_id,
                room,
                custom_info,
                created_at,
                started_at,
            } => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO call_records (channel_id, room, custom_info, created_at, started_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![channel_id.0, room.as_str(), custom_info, created_at, started_at])?;
            }
            RecordOp::Join {
                channel_id,
                user,
                name,
                role,
                joined_at,
            } => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO call_members (channel_id, user, name, role, joined_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        channel_id.0,
                        user.as_str(),
                        name,
                        role.as_str(),
                        joined_at
                    ])?;
            }
            RecordOp::Role {
                channel_id,
                user,
                role,
            } => {
                self.conn
                    .prepare_cached(
                        "UPDATE call_members SET role = ?3
                         WHERE channel_id = ?1 AND user = ?2 AND left_at IS NULL",
                    )?
                    .execute(params![channel_id.0, user.as_str(), role.as_str()])?;
            }
            RecordOp::Leave {
                channel_id,
                user,
                left_at,
                reason,
            } => {
                self.conn
                    .prepare_cached(
                        "UPDATE call_members SET left_at = ?3, leave_reason = ?4
                         WHERE channel_id = ?1 AND user = ?2 AND left_at IS NULL",
                    )?
                    .execute(params![
                        channel_id.0,
                        user.as_str(),
                        left_at,
                        reason.as_str()
                    ])?;
            }
            RecordOp::End {
                channel_id,
                ended_at,
                reason,
            } => {
                self.conn
                    .prepare_cached(
                        "UPDATE call_records SET ended_at = ?2, end_reason = ?3 WHERE channel_id = ?1",
                    )?
                    .execute(params![channel_id.0, ended_at, reason])?;
            }
        }
        Ok(())
    }

    fn records(&mut self, query: &RecordQuery) -> Result<Vec<CallRecord>, StoreError> {
        let limit = query.limit.unwrap_or(100).min(1000);
        let mut stmt = self.conn.prepare_cached(
            "SELECT channel_id, room, custom_info, created_at, started_at, ended_at, end_reason
             FROM call_records
             WHERE (?1 IS NULL OR room = ?1) AND (?2 IS NULL OR channel_id = ?2)
             ORDER BY channel_id DESC LIMIT ?3",
        )?;
        let heads: Vec<CallRecord> = stmt
            .query_map(params![query.room, query.channel_id, limit], |r| {
                Ok(CallRecord {
                    channel_id: ChannelId(r.get(0)?),
                    room: r.get(1)?,
                    custom_info: r.get(2)?,
                    created_at: r.get(3)?,
                    started_at: r.get(4)?,
                    ended_at: r.get(5)?,
                    end_reason: r.get(6)?,
                    members: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        heads
            .into_iter()
            .map(|mut rec| {
                rec.members = self.members(rec.channel_id.0)?;
                Ok(rec)
            })
            .collect()
    }

    fn close_dangling(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let open: Option<i64> = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM call_records WHERE ended_at IS NULL",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if open.unwrap_or(0) == 0 {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE call_members SET left_at = ?1, leave_reason = 'shutdown' WHERE left_at IS NULL",
            [now_ms],
        )?;
        let n = tx.execute(
            "UPDATE call_records SET ended_at = ?1, end_reason = 'crashed' WHERE ended_at IS NULL",
            [now_ms],
        )?;
        tx.commit()?;
        Ok(n)
    }

    fn community(&mut self, op: &CommunityOp) -> Result<(), StoreError> {
        // Ids are u64 in the model; SQLite integers are i64. The bits are
        // kept as they are and read back the same way.
        match op {
            CommunityOp::Save { server, snapshot } => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO community_servers (id, snapshot) VALUES (?1, ?2)
                         ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot",
                    )?
                    .execute(params![*server as i64, snapshot])?;
            }
            CommunityOp::Delete { server } => {
                self.conn
                    .prepare_cached("DELETE FROM community_servers WHERE id = ?1")?
                    .execute([*server as i64])?;
            }
        }
        Ok(())
    }

    fn community_servers(&mut self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT snapshot FROM community_servers ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ban(&mut self, op: &BanOp) -> Result<(), StoreError> {
        match op {
            BanOp::Put(ban) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO bans (kind, room, subject, until, reason, by_whom, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (kind, room, subject) DO UPDATE SET
                           until = excluded.until, reason = excluded.reason,
                           by_whom = excluded.by_whom, created_at = excluded.created_at",
                    )?
                    .execute(params![
                        ban.kind.as_str(),
                        ban.room.as_deref().unwrap_or(""),
                        ban.subject,
                        ban.until,
                        ban.reason,
                        ban.by,
                        ban.created_at
                    ])?;
            }
            BanOp::Delete {
                kind,
                room,
                subject,
            } => {
                self.conn
                    .prepare_cached(
                        "DELETE FROM bans WHERE kind = ?1 AND room = ?2 AND subject = ?3",
                    )?
                    .execute(params![
                        kind.as_str(),
                        room.as_deref().unwrap_or(""),
                        subject
                    ])?;
            }
        }
        Ok(())
    }

    fn bans(&mut self, now_ms: i64) -> Result<Vec<BanRecord>, StoreError> {
        self.conn.execute(
            "DELETE FROM bans WHERE until IS NOT NULL AND until <= ?1",
            [now_ms],
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT kind, room, subject, until, reason, by_whom, created_at FROM bans
             ORDER BY created_at",
        )?;
        let rows = stmt.query_map([], |r| {
            let kind: String = r.get(0)?;
            let room: String = r.get(1)?;
            Ok(BanRecord {
                kind: if kind == "token" {
                    BanKind::Token
                } else {
                    BanKind::User
                },
                room: (!room.is_empty()).then_some(room),
                subject: r.get(2)?,
                until: r.get(3)?,
                reason: r.get(4)?,
                by: r.get(5)?,
                created_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomName;
    use crate::model::{LeaveReason, Role};

    #[test]
    fn a_record_through_its_life() {
        let mut store = SqliteStore::in_memory().unwrap();
        let ch = ChannelId(42);
        let ops = [
            RecordOp::Start {
                channel_id: ch,
                room: RoomName::new("r").unwrap(),
                custom_info: "info".into(),
                created_at: 1,
                started_at: 2,
            },
            RecordOp::Join {
                channel_id: ch,
                user: "a".into(),
                name: "A".into(),
                role: Role::Interactor,
                joined_at: 2,
            },
            RecordOp::Role {
                channel_id: ch,
                user: "a".into(),
                role: Role::Audience,
            },
            RecordOp::Leave {
                channel_id: ch,
                user: "a".into(),
                left_at: 5,
                reason: LeaveReason::Timeout,
            },
            RecordOp::End {
                channel_id: ch,
                ended_at: 5,
                reason: "all_left".into(),
            },
        ];
        for op in &ops {
            store.apply(op).unwrap();
        }
        let recs = store.records(&RecordQuery::default()).unwrap();
        assert_eq!(recs.len(), 1);
        let rec = &recs[0];
        assert_eq!((rec.started_at, rec.ended_at), (2, Some(5)));
        assert_eq!(rec.end_reason.as_deref(), Some("all_left"));
        assert_eq!(rec.members.len(), 1);
        assert_eq!(rec.members[0].role, "audience");
        assert_eq!(rec.members[0].leave_reason.as_deref(), Some("timeout"));
    }

    #[test]
    fn community_servers_are_saved_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SqliteStore::open_in(dir.path()).unwrap();
            for (server, snapshot) in [(1, "a"), (2, "b"), (1, "c")] {
                let snapshot = snapshot.to_owned();
                store
                    .community(&CommunityOp::Save { server, snapshot })
                    .unwrap();
            }
            store.community(&CommunityOp::Delete { server: 2 }).unwrap();
        }
        let mut store = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(store.community_servers().unwrap(), vec!["c".to_owned()]);
    }

    #[test]
    fn reopening_keeps_data_and_closes_dangling_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SqliteStore::open_in(dir.path()).unwrap();
            store
                .apply(&RecordOp::Start {
                    channel_id: ChannelId(1),
                    room: RoomName::new("r").unwrap(),
                    custom_info: String::new(),
                    created_at: 1,
                    started_at: 1,
                })
                .unwrap();
        }
        let mut store = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(store.close_dangling(9).unwrap(), 1);
        let rec = &store.records(&RecordQuery::default()).unwrap()[0];
        assert_eq!(rec.ended_at, Some(9));
        assert_eq!(rec.end_reason.as_deref(), Some("crashed"));
    }
}
