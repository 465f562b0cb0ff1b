//! The decision log: "why was I denied?"
//!
//! Every request a member makes of a room is decided once, by the pipeline
//! (`authz`) and then the room's own rules. Each decision is written down
//! here: the action, who asked and about whom, the verdict with its code
//! and reason, which layer decided (a ban, the token's grants, a community
//! key, a plugin by name, a policy hook, the room's rules), the script and
//! plugin versions that were asked, and how long deciding took. A refused
//! request's response carries the decision's id, so an operator can look up
//! exactly the record the member is asking about.
//!
//! A log is a bounded ring: the newest `capacity` decisions, in order.
//! Each room owns one (on its task, no lock); the registry keeps one more
//! for decisions made where no room exists yet (a create the token or
//! `can_create` refused, a join the token's room patterns refused before
//! the room was looked up).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::authz::Decider;

/// One decision, as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DecisionRecord {
    /// `<channel id>-<sequence>`: unique on the server while it runs.
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    pub room: String,
    /// `create`, `join`, `set_role`, `mute`, `mute_all`, `kick`,
    /// `share_screen`, `send`.
    pub action: String,
    /// Who asked.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub allowed: bool,
    /// The status the client was answered with (200 when allowed).
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which layer decided: the one that refused, or for an allowed request
    /// the policy hook when it said more than "no objection", else `rules`.
    pub by: Decider,
    /// `name@hash` of the room policy's script, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `name@hash` of every plugin the room checks with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    /// Time spent deciding, in microseconds.
    pub micros: u64,
}

/// What the admin API filters a log by.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionQuery {
    /// Only decisions this user asked for (or that were about them).
    pub user: Option<String>,
    /// Only refusals.
    pub refused: bool,
    /// At most this many, the newest (default: all the ring holds).
    pub limit: Option<usize>,
}

impl DecisionQuery {
    fn matches(&self, record: &DecisionRecord) -> bool {
        let user = self
            .user
            .as_deref()
            .is_none_or(|u| record.actor == u || record.target.as_deref() == Some(u));
        user && (!self.refused || !record.allowed)
    }
}

/// A bounded ring of decisions, with the ids it hands out.
#[derive(Debug)]
pub struct DecisionLog {
    ring: VecDeque<DecisionRecord>,
    capacity: usize,
    prefix: String,
    next: u64,
}

impl DecisionLog {
    /// A log keeping the newest `capacity` decisions (0: none), naming them
    /// `<prefix>-<n>`.
    pub fn new(prefix: impl Into<String>, capacity: usize) -> DecisionLog {
        DecisionLog {
            ring: VecDeque::with_capacity(capacity.min(64)),
            capacity,
            prefix: prefix.into(),
            next: 1,
        }
    }

    /// Whether records are kept at all (a capacity above 0).
    pub fn keeps(&self) -> bool {
        self.capacity > 0
    }

    /// Hands out the next id without keeping a record.
    pub fn skip(&mut self) -> String {
        let id = self.next_id();
        self.next += 1;
        id
    }

    /// The id the next decision will get.
    pub fn next_id(&self) -> String {
        format!("{}-{}", self.prefix, self.next)
    }

    /// Writes `record` down under a fresh id, which it returns. With a
    /// capacity of 0 nothing is kept, but ids are still handed out.
    pub fn push(&mut self, mut record: DecisionRecord) -> String {
        let id = self.next_id();
        self.next += 1;
        if self.capacity == 0 {
            return id;
        }
        record.id = id.clone();
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(record);
        id
    }

    /// Keeps a record made elsewhere (under its own id).
    pub fn keep(&mut self, record: DecisionRecord) {
        if self.capacity == 0 {
            return;
        }
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(record);
    }

    /// A request the pipeline allowed that the room's own rules then
    /// refused: the record is amended to say so.
    pub fn refused_after(&mut self, id: &str, code: u16, reason: String) {
        if let Some(record) = self.ring.iter_mut().rev().find(|r| r.id == id) {
            record.allowed = false;
            record.code = code;
            record.reason = Some(reason);
            record.by = Decider::Room;
        }
    }

    pub fn get(&self, id: &str) -> Option<&DecisionRecord> {
        self.ring.iter().rev().find(|r| r.id == id)
    }

    pub fn last(&self) -> Option<&DecisionRecord> {
        self.ring.back()
    }

    /// The records `query` selects, oldest first.
    pub fn query(&self, query: &DecisionQuery) -> Vec<DecisionRecord> {
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut out: Vec<DecisionRecord> = self
            .ring
            .iter()
            .rev()
            .filter(|r| query.matches(r))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(actor: &str, allowed: bool) -> DecisionRecord {
        DecisionRecord {
            id: String::new(),
            at: 0,
            room: "r".into(),
            action: "join".into(),
            actor: actor.into(),
            target: None,
            allowed,
            code: if allowed { 200 } else { 403 },
            reason: None,
            by: Decider::Rules,
            policy: None,
            plugins: Vec::new(),
            micros: 1,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_ids_keep_counting() {
        let mut log = DecisionLog::new("7", 2);
        let ids: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|u| log.push(record(u, true)))
            .collect();
        assert_eq!(ids, ["7-1", "7-2", "7-3"]);
        assert_eq!(log.len(), 2);
        assert!(log.get("7-1").is_none(), "the oldest fell out");
        assert_eq!(log.get("7-3").map(|r| r.actor.as_str()), Some("c"));
    }

    #[test]
    fn queries_filter_by_user_and_refusal_and_keep_order() {
        let mut log = DecisionLog::new("1", 10);
        log.push(record("alice", true));
        log.push(record("bob", false));
        let mut kicked = record("carol", true);
        kicked.target = Some("alice".into());
        log.push(kicked);
        log.push(record("alice", false));
        let alice = log.query(&DecisionQuery {
            user: Some("alice".into()),
            ..DecisionQuery::default()
        });
        assert_eq!(
            alice.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["1-1", "1-3", "1-4"]
        );
        let refused = log.query(&DecisionQuery {
            refused: true,
            limit: Some(1),
            ..DecisionQuery::default()
        });
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].id, "1-4");
    }

    #[test]
    fn a_refusal_by_the_room_after_a_grant_amends_the_record() {
        let mut log = DecisionLog::new("1", 10);
        let id = log.push(record("alice", true));
        log.refused_after(&id, 403, "audience members cannot unmute".into());
        let r = log.get(&id).unwrap();
        assert!(!r.allowed);
        assert_eq!((r.code, r.by.clone()), (403, Decider::Room));
    }

    #[test]
    fn capacity_zero_keeps_nothing_but_still_names_decisions() {
        let mut log = DecisionLog::new("1", 0);
        assert_eq!(log.push(record("a", false)), "1-1");
        assert!(log.is_empty());
    }
}
