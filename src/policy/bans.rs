//! Bans and token revocations: who may not come back.
//!
//! A kick alone lets the user join again at once (the token is still
//! good). A **ban** keeps a user out of one room or the whole server, for a
//! number of seconds, for the room's life, or until lifted; a
//! **revocation** refuses one token, by its `jti`, however valid its
//! signature. Both are answered before any plugin or policy is asked, and
//! both hold across restarts: everything but room-life bans is written
//! through to the store, and read back at start.
//!
//! The list lives in memory and is read on every hello and join; writes
//! are rare. Connections watch [`Bans::changed`] so that a server ban or a
//! revocation ends the sessions it names at once, not at their next join.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Serialize;
use tokio::sync::watch;

use crate::ids::{ChannelId, UserId};
use crate::status::Status;
use crate::store::{BanKind, BanOp, BanRecord, StoreHandle};

/// How long a ban lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// Until this Unix millisecond.
    At(i64),
    /// As long as this instance of the room lives (not stored).
    RoomLife(ChannelId),
    /// Until lifted.
    Lifted,
}

impl Until {
    /// `seconds` after `now_ms`.
    pub fn after(now_ms: i64, seconds: u64) -> Until {
        Until::At(now_ms.saturating_add(seconds_to_ms(seconds)))
    }

    /// At Unix second `secs`.
    pub fn at_unix_secs(secs: u64) -> Until {
        Until::At(seconds_to_ms(secs))
    }
}

fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// One ban or revocation, as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ban {
    pub kind: BanKind,
    /// The room; `None` for the whole server.
    pub room: Option<String>,
    /// The user, or the token's `jti`.
    pub subject: String,
    /// Unix milliseconds it ends at; `None` for the room's life or until lifted.
    pub until: Option<i64>,
    /// Whether it ends when the room closes.
    pub room_life: bool,
    pub reason: String,
    pub by: String,
    pub created_at: i64,
}

impl Ban {
    fn over(&self, now_ms: i64) -> bool {
        self.until.is_some_and(|until| until <= now_ms)
    }

    /// What the refused client reads.
    fn told(&self, what: &str) -> String {
        let mut text = what.to_owned();
        if let Some(until) = self.until {
            let secs = u64::try_from(until / 1000).unwrap_or(0);
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            text.push_str(&format!(" until {}", humantime::format_rfc3339_seconds(at)));
        } else if self.room_life {
            text.push_str(" for as long as the room is open");
        }
        if !self.reason.is_empty() {
            text.push_str(&format!(": {}", self.reason));
        }
        text
    }

    fn from_record(r: BanRecord) -> Ban {
        Ban {
            kind: r.kind,
            room: r.room,
            subject: r.subject,
            until: r.until,
            room_life: false,
            reason: r.reason,
            by: r.by,
            created_at: r.created_at,
        }
    }

    fn record(&self) -> Option<BanRecord> {
        (!self.room_life).then(|| BanRecord {
            kind: self.kind,
            room: self.room.clone(),
            subject: self.subject.clone(),
            until: self.until,
            reason: self.reason.clone(),
            by: self.by.clone(),
            created_at: self.created_at,
        })
    }
}

type Key = (BanKind, Option<String>, String);

/// Every ban and revocation in force, written through to the store.
pub struct Bans {
    entries: RwLock<HashMap<Key, (Ban, Option<ChannelId>)>>,
    store: Option<StoreHandle>,
    changed: watch::Sender<u64>,
    /// In a cluster, who tells the other nodes of every stored change.
    mirror: std::sync::OnceLock<Mirror>,
}

/// Passes a stored ban change on (to the other nodes of a cluster).
pub type Mirror = Box<dyn Fn(&BanOp) + Send + Sync>;

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans")
            .field("entries", &self.entries.read().map(|e| e.len()).ok())
            .finish()
    }
}

/// Why a client is turned away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub reason: String,
}

impl Bans {
    /// The list the store kept (see [`crate::store::Store::bans`]); writes
    /// go to `store` when there is one.
    pub fn new(stored: Vec<BanRecord>, store: Option<StoreHandle>) -> Bans {
        let entries = stored
            .into_iter()
            .map(|r| {
                let key = (r.kind, r.room.clone(), r.subject.clone());
                (key, (Ban::from_record(r), None))
            })
            .collect();
        Bans {
            entries: RwLock::new(entries),
            store,
            changed: watch::channel(0).0,
            mirror: std::sync::OnceLock::new(),
        }
    }

    /// Sets who hears of every stored change; once.
    pub fn set_mirror(&self, mirror: Mirror) {
        let _ = self.mirror.set(mirror);
    }

    fn write(&self, op: BanOp) {
        if let Some(mirror) = self.mirror.get() {
            mirror(&op);
        }
        if let Some(store) = &self.store {
            store.ban(op);
        }
    }

    /// A change another node stored (cluster only): applied here without
    /// storing it again. Sessions and rooms check it as a local ban.
    pub fn apply_remote(&self, op: &BanOp) {
        match op {
            BanOp::Put(record) => {
                let key = (record.kind, record.room.clone(), record.subject.clone());
                let ban = Ban::from_record(record.clone());
                self.entries
                    .write()
                    .expect("ban list")
                    .insert(key, (ban, None));
                self.changed.send_modify(|n| *n += 1);
            }
            BanOp::Delete {
                kind,
                room,
                subject,
            } => {
                let key = (*kind, room.clone(), subject.clone());
                self.entries.write().expect("ban list").remove(&key);
            }
        }
    }

    /// What the store holds now replaces every stored ban in memory (bans
    /// for a room's life, never stored, stay). Cluster only.
    pub fn replace_stored(&self, stored: Vec<BanRecord>) {
        {
            let mut entries = self.entries.write().expect("ban list");
            entries.retain(|_, (ban, _)| ban.room_life);
            for record in stored {
                let key = (record.kind, record.room.clone(), record.subject.clone());
                entries.insert(key, (Ban::from_record(record), None));
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Ticks whenever a ban or revocation is added.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Bans `user` from `room` (or the server, with `None`).
    pub fn ban_user(
        &self,
        room: Option<&str>,
        user: &UserId,
        until: Until,
        reason: &str,
        by: &str,
        now_ms: i64,
    ) -> Ban {
        self.put(
            BanKind::User,
            room.map(str::to_owned),
            user.as_str(),
            until,
            reason,
            by,
            now_ms,
        )
    }

    /// Refuses the token whose `jti` this is.
    pub fn revoke(&self, jti: &str, until: Until, reason: &str, by: &str, now_ms: i64) -> Ban {
        self.put(BanKind::Token, None, jti, until, reason, by, now_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        kind: BanKind,
        room: Option<String>,
        subject: &str,
        until: Until,
        reason: &str,
        by: &str,
        now_ms: i64,
    ) -> Ban {
        let (at, channel) = match until {
            Until::At(ms) => (Some(ms), None),
            Until::RoomLife(channel) => (None, Some(channel)),
            Until::Lifted => (None, None),
        };
        let ban = Ban {
            kind,
            room: room.clone(),
            subject: subject.to_owned(),
            until: at,
            room_life: channel.is_some(),
            reason: reason.to_owned(),
            by: by.to_owned(),
            created_at: now_ms,
        };
        let key = (kind, room, subject.to_owned());
        let replaced = {
            let mut entries = self.entries.write().expect("ban list");
            // Ended bans go when a new one comes (the store forgets them at
            // the next start): the list holds what is in force, not history.
            entries.retain(|_, (b, _)| !b.over(now_ms));
            entries.insert(key.clone(), (ban.clone(), channel))
        };
        match ban.record() {
            Some(record) => self.write(BanOp::Put(record)),
            // A room-life ban replacing a stored one: the stored one goes.
            None if replaced.is_some_and(|(old, _)| !old.room_life) => self.write(BanOp::Delete {
                kind: key.0,
                room: key.1,
                subject: key.2,
            }),
            None => {}
        }
        self.changed.send_modify(|n| *n += 1);
        ban
    }

    /// Lifts a ban or revocation; whether there was one.
    pub fn lift(&self, kind: BanKind, room: Option<&str>, subject: &str) -> bool {
        let key = (kind, room.map(str::to_owned), subject.to_owned());
        let removed = self.entries.write().expect("ban list").remove(&key);
        if let Some((ban, _)) = &removed
            && !ban.room_life
        {
            self.write(BanOp::Delete {
                kind: key.0,
                room: key.1,
                subject: key.2,
            });
        }
        removed.is_some()
    }

    /// A room instance closed: its room-life bans end with it.
    pub fn room_closed(&self, channel: ChannelId) {
        self.entries
            .write()
            .expect("ban list")
            .retain(|_, (_, c)| *c != Some(channel));
    }

    /// Why this token may not say hello (or keep its session), if it may not.
    pub fn refuses_session(
        &self,
        user: &UserId,
        jti: Option<&str>,
        now_ms: i64,
    ) -> Option<Refusal> {
        let entries = self.entries.read().expect("ban list");
        if let Some(jti) = jti
            && let Some((ban, _)) = entries.get(&(BanKind::Token, None, jti.to_owned()))
            && !ban.over(now_ms)
        {
            return Some(Refusal {
                status: Status::Unauthorized,
                reason: ban.told("this token was revoked"),
            });
        }
        let (ban, _) = entries.get(&(BanKind::User, None, user.as_str().to_owned()))?;
        (!ban.over(now_ms)).then(|| Refusal {
            status: Status::Forbidden,
            reason: ban.told("you are banned from this server"),
        })
    }

    /// Why `user` may not join `room`, if they may not.
    pub fn refuses_join(
        &self,
        room: &str,
        user: &UserId,
        jti: Option<&str>,
        now_ms: i64,
    ) -> Option<Refusal> {
        if let Some(refusal) = self.refuses_session(user, jti, now_ms) {
            return Some(refusal);
        }
        let entries = self.entries.read().expect("ban list");
        let key = (
            BanKind::User,
            Some(room.to_owned()),
            user.as_str().to_owned(),
        );
        let (ban, _) = entries.get(&key)?;
        (!ban.over(now_ms)).then(|| Refusal {
            status: Status::Forbidden,
            reason: ban.told(&format!("you are banned from room `{room}`")),
        })
    }

    /// Bans in force, oldest first: all of them, or one room's.
    pub fn list(&self, room: Option<&str>, now_ms: i64) -> Vec<Ban> {
        let mut list: Vec<Ban> = self
            .entries
            .read()
            .expect("ban list")
            .values()
            .map(|(ban, _)| ban)
            .filter(|ban| !ban.over(now_ms))
            .filter(|ban| room.is_none() || ban.room.as_deref() == room)
            .cloned()
            .collect();
        list.sort_by(|a, b| (a.created_at, &a.subject).cmp(&(b.created_at, &b.subject)));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::from("alice")
    }

    #[test]
    fn a_timed_room_ban_refuses_that_room_only_until_it_ends() {
        let bans = Bans::new(Vec::new(), None);
        bans.ban_user(Some("r"), &alice(), Until::At(10_000), "spam", "ops", 0);
        let refusal = bans.refuses_join("r", &alice(), None, 9_999).unwrap();
        assert_eq!(refusal.status, Status::Forbidden);
        assert!(
            refusal
                .reason
                .starts_with("you are banned from room `r` until 1970-01-01T00:00:10Z"),
            "{}",
            refusal.reason
        );
        assert!(refusal.reason.ends_with(": spam"), "{}", refusal.reason);
        assert!(bans.refuses_join("other", &alice(), None, 0).is_none());
        assert!(
            bans.refuses_join("r", &UserId::from("bob"), None, 0)
                .is_none()
        );
        assert!(
            bans.refuses_join("r", &alice(), None, 10_000).is_none(),
            "over"
        );
        assert!(bans.list(None, 10_000).is_empty());
    }

    #[test]
    fn a_room_life_ban_ends_with_its_room_instance() {
        let bans = Bans::new(Vec::new(), None);
        let channel = ChannelId(7);
        bans.ban_user(Some("r"), &alice(), Until::RoomLife(channel), "", "ops", 0);
        assert!(
            bans.refuses_join("r", &alice(), None, i64::MAX - 1)
                .is_some()
        );
        bans.room_closed(ChannelId(8));
        assert!(bans.refuses_join("r", &alice(), None, 0).is_some());
        bans.room_closed(channel);
        assert!(bans.refuses_join("r", &alice(), None, 0).is_none());
    }

    #[test]
    fn server_bans_and_revocations_refuse_the_session() {
        let bans = Bans::new(Vec::new(), None);
        let mut changed = bans.changed();
        bans.revoke("t-1", Until::Lifted, "leaked", "ops", 0);
        assert!(changed.has_changed().unwrap());
        changed.mark_unchanged();
        let refusal = bans.refuses_session(&alice(), Some("t-1"), 0).unwrap();
        assert_eq!(refusal.status, Status::Unauthorized);
        assert_eq!(refusal.reason, "this token was revoked: leaked");
        assert!(bans.refuses_session(&alice(), Some("t-2"), 0).is_none());
        assert!(bans.refuses_session(&alice(), None, 0).is_none());

        bans.ban_user(None, &alice(), Until::Lifted, "", "ops", 0);
        assert!(changed.has_changed().unwrap());
        let refusal = bans.refuses_join("any", &alice(), None, 0).unwrap();
        assert_eq!(refusal.reason, "you are banned from this server");
        assert!(bans.lift(BanKind::User, None, "alice"));
        assert!(!bans.lift(BanKind::User, None, "alice"), "once");
        assert!(bans.refuses_join("any", &alice(), None, 0).is_none());
    }
}
