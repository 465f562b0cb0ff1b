//! The persistent key-value store room scripts use (`store.get`/`store.set`).
//!
//! Unlike call records, a script reads its value back within the same hook,
//! so this is synchronous: its own SQLite connection behind a mutex. A read
//! or write is a few microseconds; SQLite's WAL lets it run beside the
//! record writer. Keys are namespaced by policy name, so two policies never
//! see each other's data.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::StoreError;

/// The contract; a shared store can implement it later.
pub trait KvStore: Send + Sync + 'static {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError>;
    /// `None` deletes the key.
    fn set(&self, namespace: &str, key: &str, value: Option<&Value>) -> Result<(), StoreError>;
}

pub struct SqliteKv {
    conn: Mutex<Connection>,
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
            conn: Mutex::new(conn),
        })
    }
}

impl KvStore for SqliteKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let conn = self.conn.lock().expect("kv lock poisoned");
        let text: Option<String> = conn
            .prepare_cached("SELECT value FROM script_kv WHERE namespace = ?1 AND key = ?2")?
            .query_row(params![namespace, key], |r| r.get(0))
            .optional()?;
        // Values were written by `set` as JSON; anything else is left alone.
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    fn set(&self, namespace: &str, key: &str, value: Option<&Value>) -> Result<(), StoreError> {
        let conn = self.conn.lock().expect("kv lock poisoned");
        match value {
            Some(value) => {
                conn.prepare_cached(
                    "INSERT INTO script_kv (namespace, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![namespace, key, value.to_string()])?;
            }
            None => {
                conn.prepare_cached("DELETE FROM script_kv WHERE namespace = ?1 AND key = ?2")?
                    .execute(params![namespace, key])?;
            }
        }
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
        kv.set("a", "k", Some(&json!({"n": 1}))).unwrap();
        kv.set("b", "k", Some(&json!("other"))).unwrap();
        assert_eq!(kv.get("a", "k").unwrap(), Some(json!({"n": 1})));
        assert_eq!(kv.get("b", "k").unwrap(), Some(json!("other")));
        kv.set("a", "k", Some(&json!(2))).unwrap();
        assert_eq!(kv.get("a", "k").unwrap(), Some(json!(2)));
        kv.set("a", "k", None).unwrap();
        assert_eq!(kv.get("a", "k").unwrap(), None);
    }
}
