//! The persistent key-value store room scripts use (`store.get`/`store.set`).
//!
//! Unlike call records, a script reads its value back within the same hook,
//! so this is synchronous: its own SQLite connection behind a mutex. A read
//! or write is a few microseconds; SQLite's WAL lets it run beside the
//! record writer. Keys are namespaced by policy name, so two policies never
//! see each other's data.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::StoreError;

/// What one namespace may hold: keys, and bytes of keys and JSON values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub keys: usize,
    pub bytes: usize,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota {
        keys: usize::MAX,
        bytes: usize::MAX,
    };
}

/// The contract: [`SqliteKv`] on one node, [`super::postgres::PgKv`] shared
/// by a cluster's nodes.
pub trait KvStore: Send + Sync + 'static {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError>;
    /// `None` deletes the key. A write that would take the namespace past
    /// `quota` is refused with [`StoreError::Quota`], and nothing changes.
    fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&Value>,
        quota: &Quota,
    ) -> Result<(), StoreError>;
}

/// What a namespace holds now.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Usage {
    pub keys: usize,
    pub bytes: usize,
}

impl Usage {
    /// What the namespace holds after `key` goes from `old` to `new` (JSON
    /// text; `None`: absent), or the refusal if a write takes it past
    /// `quota`. A write that shrinks a namespace already over its byte limit
    /// (the limit was lowered) is let through. Shared by every [`KvStore`],
    /// so they count and refuse alike.
    pub(super) fn after(
        self,
        key: &str,
        old: Option<&str>,
        new: Option<&str>,
        quota: &Quota,
    ) -> Result<Usage, StoreError> {
        let old_bytes = old.map_or(0, |v| key.len() + v.len());
        let Some(text) = new else {
            return Ok(Usage {
                keys: self.keys - usize::from(old.is_some()).min(self.keys),
                bytes: self.bytes - old_bytes.min(self.bytes),
            });
        };
        let next = Usage {
            keys: self.keys + usize::from(old.is_none()),
            bytes: self.bytes - old_bytes.min(self.bytes) + key.len() + text.len(),
        };
        if next.keys > quota.keys {
            return Err(StoreError::Quota(format!(
                "the policy's store holds {} keys, its limit (policy.effects.store_keys)",
                quota.keys
            )));
        }
        if next.bytes > quota.bytes && next.bytes > self.bytes {
            return Err(StoreError::Quota(format!(
                "the policy's store may hold at most {} bytes (policy.effects.store_bytes); this would make {}",
                quota.bytes, next.bytes
            )));
        }
        Ok(next)
    }
}

pub struct SqliteKv {
    conn: Mutex<Db>,
}

struct Db {
    conn: Connection,
    /// Per namespace, read from the table on first use, then kept up to
    /// date by every write (this connection is the table's only writer).
    usage: HashMap<String, Usage>,
}

impl Db {
    fn usage(&mut self, namespace: &str) -> Result<Usage, StoreError> {
        if let Some(usage) = self.usage.get(namespace) {
            return Ok(*usage);
        }
        let (keys, bytes): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*),
                    COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0)
             FROM script_kv WHERE namespace = ?1",
            params![namespace],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let usage = Usage {
            keys: keys as usize,
            bytes: bytes as usize,
        };
        self.usage.insert(namespace.to_owned(), usage);
        Ok(usage)
    }
}

impl SqliteKv {
    /// Opens the key-value table in the database file at `path`.
    pub fn open(path: &Path) -> Result<SqliteKv, StoreError> {
        Self::init(Connection::open(path)?)
    }

    pub fn in_memory() -> Result<SqliteKv, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<SqliteKv, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS script_kv (
                 namespace TEXT NOT NULL,
                 key       TEXT NOT NULL,
                 value     TEXT NOT NULL,
                 PRIMARY KEY (namespace, key)
             )",
        )?;
        Ok(SqliteKv {
            conn: Mutex::new(Db {
                conn,
                usage: HashMap::new(),
            }),
        })
    }
}

impl KvStore for SqliteKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let db = self.conn.lock().expect("kv lock poisoned");
        let text: Option<String> = db
            .conn
            .prepare_cached("SELECT value FROM script_kv WHERE namespace = ?1 AND key = ?2")?
            .query_row(params![namespace, key], |r| r.get(0))
            .optional()?;
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
        let mut db = self.conn.lock().expect("kv lock poisoned");
        let usage = db.usage(namespace)?;
        let old: Option<String> = db
            .conn
            .prepare_cached("SELECT value FROM script_kv WHERE namespace = ?1 AND key = ?2")?
            .query_row(params![namespace, key], |r| r.get(0))
            .optional()?;
        let text = value.map(Value::to_string);
        let after = usage.after(key, old.as_deref(), text.as_deref(), quota)?;
        match &text {
            Some(text) => {
                db.conn
                    .prepare_cached(
                        "INSERT INTO script_kv (namespace, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                    )?
                    .execute(params![namespace, key, text])?;
            }
            None => {
                db.conn
                    .prepare_cached("DELETE FROM script_kv WHERE namespace = ?1 AND key = ?2")?
                    .execute(params![namespace, key])?;
            }
        }
        db.usage.insert(namespace.to_owned(), after);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_get_delete_and_namespaces() {
        let kv = SqliteKv::in_memory().unwrap();
        let q = Quota::UNLIMITED;
        kv.set("a", "k", Some(&json!({"n": 1})), &q).unwrap();
        kv.set("b", "k", Some(&json!("other")), &q).unwrap();
        assert_eq!(kv.get("a", "k").unwrap(), Some(json!({"n": 1})));
        assert_eq!(kv.get("b", "k").unwrap(), Some(json!("other")));
        kv.set("a", "k", Some(&json!(2)), &q).unwrap();
        assert_eq!(kv.get("a", "k").unwrap(), Some(json!(2)));
        kv.set("a", "k", None, &q).unwrap();
        assert_eq!(kv.get("a", "k").unwrap(), None);
    }

    #[test]
    fn a_namespace_is_held_to_its_quota_and_nothing_changes_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        let kv = SqliteKv::open(&path).unwrap();
        let quota = Quota {
            keys: 2,
            bytes: 100,
        };
        kv.set("p", "a", Some(&json!(1)), &quota).unwrap();
        kv.set("p", "b", Some(&json!(2)), &quota).unwrap();
        let err = kv.set("p", "c", Some(&json!(3)), &quota).unwrap_err();
        assert!(
            matches!(err, StoreError::Quota(ref m) if m.contains("2 keys")),
            "{err}"
        );
        assert_eq!(kv.get("p", "c").unwrap(), None);
        // Overwriting and other namespaces are not new keys here.
        kv.set("p", "a", Some(&json!(10)), &quota).unwrap();
        kv.set("q", "c", Some(&json!(3)), &quota).unwrap();
        // Bytes: a value that would pass 100 is refused, the old one stays.
        let big = json!("x".repeat(200));
        let err = kv.set("p", "a", Some(&big), &quota).unwrap_err();
        assert!(
            matches!(err, StoreError::Quota(ref m) if m.contains("100 bytes")),
            "{err}"
        );
        assert_eq!(kv.get("p", "a").unwrap(), Some(json!(10)));
        // Deleting frees room.
        kv.set("p", "b", None, &quota).unwrap();
        kv.set("p", "c", Some(&json!(3)), &quota).unwrap();
        drop(kv);
        // The books are rebuilt from the table after a restart.
        let kv = SqliteKv::open(&path).unwrap();
        let err = kv.set("p", "d", Some(&json!(4)), &quota).unwrap_err();
        assert!(matches!(err, StoreError::Quota(_)), "{err}");
    }
}
