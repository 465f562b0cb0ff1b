//! The shared store against a real PostgreSQL: call records through the
//! store's worker, community servers, bans, the scripts' key-value store
//! with its quotas, migrations when several nodes start at once, and writes
//! held through an outage and applied in order once the database is back.

mod common;

use std::sync::Barrier;
use std::time::Duration;

use common::postgres::{TestPostgres, off_runtime};
use conclave::ids::{ChannelId, RoomName};
use conclave::model::{LeaveReason, Role};
use conclave::store::kv::{KvStore, Quota};
use conclave::store::postgres::{PgKv, PgStore, SCHEMA_VERSION};
use conclave::store::{
    BanKind, BanOp, BanRecord, CommunityOp, RecordOp, RecordQuery, Store, StoreError, StoreHandle,
};
use serde_json::json;

/// Longer than the worker's longest backoff and a server's restart: only
/// something broken reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

fn start(channel: i64, room: &str, at: i64) -> RecordOp {
    RecordOp::Start {
        channel_id: ChannelId(channel),
        room: RoomName::new(room).unwrap(),
        custom_info: format!("info {channel}"),
        created_at: at - 1,
        started_at: at,
    }
}

fn join(channel: i64, user: &str, at: i64) -> RecordOp {
    RecordOp::Join {
        channel_id: ChannelId(channel),
        user: user.into(),
        name: user.to_uppercase(),
        role: Role::Interactor,
        joined_at: at,
    }
}

fn leave(channel: i64, user: &str, at: i64, reason: LeaveReason) -> RecordOp {
    RecordOp::Leave {
        channel_id: ChannelId(channel),
        user: user.into(),
        left_at: at,
        reason,
    }
}

fn end(channel: i64, at: i64) -> RecordOp {
    RecordOp::End {
        channel_id: ChannelId(channel),
        ended_at: at,
        reason: "all_left".into(),
    }
}

fn ban(kind: BanKind, room: Option<&str>, subject: &str, until: Option<i64>) -> BanRecord {
    BanRecord {
        kind,
        room: room.map(str::to_owned),
        subject: subject.into(),
        until,
        reason: format!("no {subject}"),
        by: "admin".into(),
        created_at: until.unwrap_or(1_000),
    }
}

#[tokio::test]
async fn records_written_through_the_worker_are_listed_newest_first() {
    let pg = TestPostgres::new();
    let (store, worker) = StoreHandle::spawn(PgStore::connect(&pg.url()).unwrap());
    for op in [
        start(42, "r", 2),
        join(42, "a", 2),
        RecordOp::Role {
            channel_id: ChannelId(42),
            user: "a".into(),
            role: Role::Audience,
        },
        join(42, "b", 3),
        leave(42, "a", 5, LeaveReason::Timeout),
        // A user who leaves and joins again has two memberships.
        join(42, "a", 6),
        leave(42, "a", 7, LeaveReason::Normal),
        leave(42, "b", 7, LeaveReason::Kicked),
        end(42, 7),
        start(43, "other", 8),
        start(44, "r", 9),
        join(44, "c", 9),
    ] {
        store.apply(op);
    }

    let all = store.records(RecordQuery::default()).await.unwrap();
    let ids: Vec<i64> = all.iter().map(|r| r.channel_id.0).collect();
    assert_eq!(ids, [44, 43, 42], "newest first");
    let rec = &all[2];
    assert_eq!(rec.room, "r");
    assert_eq!(rec.custom_info, "info 42");
    assert_eq!((rec.created_at, rec.started_at), (1, 2));
    assert_eq!(rec.ended_at, Some(7));
    assert_eq!(rec.end_reason.as_deref(), Some("all_left"));
    let members: Vec<_> = rec
        .members
        .iter()
        .map(|m| {
            (
                m.user.as_str(),
                m.role.as_str(),
                m.joined_at,
                m.left_at,
                m.leave_reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        members,
        [
            ("a", "audience", 2, Some(5), Some("timeout")),
            ("b", "interactor", 3, Some(7), Some("kicked")),
            ("a", "interactor", 6, Some(7), Some("normal")),
        ]
    );
    assert_eq!(rec.members[0].name, "A");
    assert!(all[1].members.is_empty());
    assert_eq!(
        (all[1].ended_at, all[1].end_reason.as_deref()),
        (None, None)
    );
    assert_eq!(all[0].members.len(), 1);

    let query = |room: Option<&str>, channel_id: Option<i64>, limit: Option<u32>| RecordQuery {
        room: room.map(str::to_owned),
        channel_id,
        limit,
    };
    let ids = |records: Vec<conclave::store::CallRecord>| -> Vec<i64> {
        records.iter().map(|r| r.channel_id.0).collect()
    };
    let in_r = store.records(query(Some("r"), None, None)).await.unwrap();
    assert_eq!(ids(in_r), [44, 42]);
    let one = store.records(query(None, Some(42), None)).await.unwrap();
    assert_eq!(one, std::slice::from_ref(rec));
    let newest = store.records(query(None, None, Some(1))).await.unwrap();
    assert_eq!(ids(newest), [44]);
    let none = store
        .records(query(Some("r"), Some(43), None))
        .await
        .unwrap();
    assert!(none.is_empty());

    store.stop();
    off_runtime(|| worker.join());
}

#[test]
fn a_refused_write_is_an_error_not_an_outage() {
    let pg = TestPostgres::new();
    let mut store = PgStore::connect(&pg.url()).unwrap();
    store.apply(&start(1, "r", 1)).unwrap();
    // The same channel twice: the database refuses it, for good.
    let err = store.apply(&start(1, "r", 2)).unwrap_err();
    assert!(matches!(err, StoreError::Postgres(_)), "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    // A member of a record that does not exist.
    let err = store.apply(&join(9, "a", 1)).unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert_eq!(store.records(&RecordQuery::default()).unwrap().len(), 1);
}

#[test]
fn open_records_are_left_to_the_nodes_that_hold_them() {
    let pg = TestPostgres::new();
    let mut store = PgStore::connect(&pg.url()).unwrap();
    store.apply(&start(1, "r", 1)).unwrap();
    store.apply(&join(1, "a", 1)).unwrap();
    drop(store);
    let mut store = PgStore::connect(&pg.url()).unwrap();
    assert_eq!(store.close_dangling(9).unwrap(), 0);
    let rec = &store.records(&RecordQuery::default()).unwrap()[0];
    assert_eq!(rec.ended_at, None);
    assert_eq!(rec.members[0].left_at, None);
}

#[test]
fn community_servers_are_saved_replaced_and_deleted() {
    let pg = TestPostgres::new();
    {
        let mut store = PgStore::connect(&pg.url()).unwrap();
        // u64::MAX: the bits survive the trip through a signed column.
        for (server, snapshot) in [(1, "a"), (2, "b"), (1, "c"), (u64::MAX, "max")] {
            let snapshot = snapshot.to_owned();
            store
                .community(&CommunityOp::Save { server, snapshot })
                .unwrap();
        }
        store.community(&CommunityOp::Delete { server: 2 }).unwrap();
    }
    // Another connection (another node) sees them.
    let mut store = PgStore::connect(&pg.url()).unwrap();
    // Ordered by the stored (signed) id, as the SQLite store orders them.
    assert_eq!(store.community_servers().unwrap(), ["max", "c"]);
}

#[test]
fn bans_are_put_replaced_lifted_and_expire() {
    let pg = TestPostgres::new();
    let mut store = PgStore::connect(&pg.url()).unwrap();
    let in_room = ban(BanKind::User, Some("r"), "mallory", Some(5_000));
    let server_wide = ban(BanKind::User, None, "mallory", None);
    let token = ban(BanKind::Token, None, "jti-1", Some(3_000));
    let short = ban(BanKind::User, Some("r"), "eve", Some(2_000));
    for b in [&in_room, &server_wide, &token, &short] {
        store.ban(&BanOp::Put(b.clone())).unwrap();
    }
    // Putting the same kind, room and subject again replaces the terms.
    let longer = BanRecord {
        until: Some(6_000),
        reason: "again".into(),
        created_at: 1_500,
        ..in_room.clone()
    };
    store.ban(&BanOp::Put(longer.clone())).unwrap();
    store
        .ban(&BanOp::Delete {
            kind: BanKind::User,
            room: None,
            subject: "mallory".into(),
        })
        .unwrap();

    // At 3,000 the token's and eve's bans have ended.
    assert_eq!(store.bans(3_000).unwrap(), std::slice::from_ref(&longer));
    // Ended ones are deleted, not only hidden.
    assert_eq!(store.bans(0).unwrap(), [longer]);
    assert!(store.bans(6_000).unwrap().is_empty());
}

#[test]
fn the_key_value_store_keeps_namespaces_apart() {
    let pg = TestPostgres::new();
    let kv = PgKv::connect(&pg.url()).unwrap();
    let q = Quota::UNLIMITED;
    kv.set("a", "k", Some(&json!({"n": 1})), &q).unwrap();
    kv.set("b", "k", Some(&json!("other")), &q).unwrap();
    assert_eq!(kv.get("a", "k").unwrap(), Some(json!({"n": 1})));
    assert_eq!(kv.get("b", "k").unwrap(), Some(json!("other")));
    kv.set("a", "k", Some(&json!(2)), &q).unwrap();
    assert_eq!(kv.get("a", "k").unwrap(), Some(json!(2)));
    kv.set("a", "k", None, &q).unwrap();
    assert_eq!(kv.get("a", "k").unwrap(), None);
    assert_eq!(kv.get("b", "k").unwrap(), Some(json!("other")));
    // Not ASCII: still one value, byte for byte.
    kv.set("a", "clé", Some(&json!("värde ✓")), &q).unwrap();
    assert_eq!(kv.get("a", "clé").unwrap(), Some(json!("värde ✓")));
}

#[test]
fn a_namespace_is_held_to_its_quota_across_connections() {
    let pg = TestPostgres::new();
    let kv = PgKv::connect(&pg.url()).unwrap();
    let quota = Quota {
        keys: 2,
        bytes: 100,
    };
    kv.set("p", "a", Some(&json!(1)), &quota).unwrap();
    kv.set("p", "b", Some(&json!(2)), &quota).unwrap();
    let err = kv.set("p", "c", Some(&json!(3)), &quota).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the policy's store holds 2 keys, its limit (policy.effects.store_keys)"
    );
    assert_eq!(kv.get("p", "c").unwrap(), None);
    // Overwriting and other namespaces are not new keys here.
    kv.set("p", "a", Some(&json!(10)), &quota).unwrap();
    kv.set("q", "c", Some(&json!(3)), &quota).unwrap();
    // Bytes: a value that would pass 100 is refused, the old one stays.
    let big = json!("x".repeat(200));
    let err = kv.set("p", "a", Some(&big), &quota).unwrap_err();
    assert!(matches!(err, StoreError::Quota(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "the policy's store may hold at most 100 bytes (policy.effects.store_bytes); this would make 205"
    );
    assert_eq!(kv.get("p", "a").unwrap(), Some(json!(10)));
    // Deleting frees room.
    kv.set("p", "b", None, &quota).unwrap();
    kv.set("p", "c", Some(&json!(3)), &quota).unwrap();

    // Another node's connection counts what this one wrote: nothing is
    // kept in memory.
    let other = PgKv::connect(&pg.url()).unwrap();
    let err = other.set("p", "d", Some(&json!(4)), &quota).unwrap_err();
    assert!(matches!(err, StoreError::Quota(_)), "{err}");
    other.set("p", "c", None, &quota).unwrap();
    kv.set("p", "d", Some(&json!(4)), &quota).unwrap();
}

#[test]
fn concurrent_writers_of_a_namespace_never_pass_its_quota() {
    let pg = TestPostgres::new();
    const WRITERS: usize = 8;
    let quota = Quota {
        keys: 3,
        bytes: usize::MAX,
    };
    // A node each, connected before they start: a writer that failed to
    // connect would leave the others at the barrier for ever.
    let nodes: Vec<PgKv> = (0..WRITERS)
        .map(|_| PgKv::connect(&pg.url()).unwrap())
        .collect();
    let barrier = Barrier::new(WRITERS);
    let accepted = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .zip(&nodes)
            .map(|(i, kv)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    // All writing new keys at once.
                    barrier.wait();
                    match kv.set("shared", &format!("k{i}"), Some(&json!(i)), &quota) {
                        Ok(()) => true,
                        Err(StoreError::Quota(_)) => false,
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .filter(|&ok| ok)
            .count()
    });
    assert_eq!(accepted, quota.keys);
    let held: i64 = pg
        .client()
        .query_one(
            "SELECT COUNT(*) FROM script_kv WHERE namespace = 'shared'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, quota.keys as i64);
}

#[test]
fn nodes_starting_at_once_apply_each_migration_once() {
    let pg = TestPostgres::new();
    const NODES: usize = 6;
    let url = pg.url();
    let barrier = Barrier::new(NODES);
    std::thread::scope(|scope| {
        let nodes: Vec<_> = (0..NODES)
            .map(|i| {
                let (url, barrier) = (&url, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    // Record stores and key-value stores share the schema.
                    if i % 2 == 0 {
                        PgStore::connect(url).map(drop)
                    } else {
                        PgKv::connect(url).map(drop)
                    }
                })
            })
            .collect();
        for node in nodes {
            node.join().unwrap().unwrap();
        }
    });
    let versions: Vec<i32> = pg
        .client()
        .query(
            "SELECT version FROM conclave_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    // And a node starting later finds nothing to do.
    PgStore::connect(&url).unwrap();
    let count: i64 = pg
        .client()
        .query_one("SELECT COUNT(*) FROM conclave_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, i64::from(SCHEMA_VERSION));
}

#[test]
fn an_unreachable_database_is_unavailable_and_reconnected_to() {
    let mut pg = TestPostgres::new();
    let mut store = PgStore::connect(&pg.url()).unwrap();
    let kv = PgKv::connect(&pg.url()).unwrap();
    pg.stop();
    let err = store.records(&RecordQuery::default()).unwrap_err();
    assert!(err.is_transient(), "{err}");
    let err = kv.get("p", "k").unwrap_err();
    assert!(err.is_transient(), "{err}");
    // Nothing listens now: a fresh connection is refused, which is as
    // transient as the one that was lost.
    let err = store.apply(&start(1, "r", 1)).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = PgStore::connect(&pg.url()).err().expect("nothing listens");
    assert!(err.is_transient(), "{err}");

    pg.start();
    store.apply(&start(1, "r", 1)).unwrap();
    assert_eq!(store.records(&RecordQuery::default()).unwrap().len(), 1);
    kv.set("p", "k", Some(&json!(1)), &Quota::UNLIMITED)
        .unwrap();
}

#[tokio::test]
async fn writes_queued_during_an_outage_apply_in_order_once_it_ends() {
    let mut pg = TestPostgres::new();
    let (store, worker) = StoreHandle::spawn(PgStore::connect(&pg.url()).unwrap());
    store.apply(start(1, "r", 1));
    store.flush().await.unwrap();

    off_runtime(|| pg.stop());
    const USERS: i64 = 50;
    for n in 0..USERS {
        store.apply(join(1, &format!("u{n:02}"), 10 + n));
    }
    store.apply(RecordOp::Role {
        channel_id: ChannelId(1),
        user: "u00".into(),
        role: Role::Audience,
    });
    for n in 0..USERS {
        store.apply(leave(1, &format!("u{n:02}"), 100 + n, LeaveReason::Normal));
    }
    store.apply(end(1, 200));
    // A later record, and the other kinds of write, queue behind them.
    store.apply(start(2, "r", 300));
    store.community(CommunityOp::Save {
        server: 7,
        snapshot: "s7".into(),
    });
    store.ban(BanOp::Put(ban(BanKind::User, None, "mallory", None)));

    // Reads are not kept waiting for the database to come back.
    let err = tokio::time::timeout(PATIENCE, store.records(RecordQuery::default()))
        .await
        .expect("a read answers during an outage")
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let flushed = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });

    off_runtime(|| pg.start());
    tokio::time::timeout(PATIENCE, flushed)
        .await
        .expect("the held writes are applied once the database is back")
        .unwrap()
        .unwrap();

    let records = store.records(RecordQuery::default()).await.unwrap();
    let ids: Vec<i64> = records.iter().map(|r| r.channel_id.0).collect();
    assert_eq!(ids, [2, 1]);
    let rec = &records[1];
    assert_eq!(rec.ended_at, Some(200));
    // Joins in the order they were made, each left after it joined, and the
    // role change applied to the member that had already joined.
    let users: Vec<String> = (0..USERS).map(|n| format!("u{n:02}")).collect();
    assert_eq!(
        rec.members.iter().map(|m| &m.user).collect::<Vec<_>>(),
        users.iter().collect::<Vec<_>>()
    );
    for (n, m) in (0..).zip(&rec.members) {
        assert_eq!((m.joined_at, m.left_at), (10 + n, Some(100 + n)), "{m:?}");
    }
    assert_eq!(rec.members[0].role, "audience");
    assert_eq!(rec.members[1].role, "interactor");

    store.stop();
    off_runtime(|| worker.join());
    let url = pg.url();
    off_runtime(|| {
        let mut check = PgStore::connect(&url).unwrap();
        assert_eq!(check.community_servers().unwrap(), ["s7"]);
        let bans = check.bans(0).unwrap();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].subject, "mallory");
    });
}

#[test]
fn writes_repeated_after_a_lost_acknowledgement_change_nothing() {
    let pg = TestPostgres::new();
    let mut store = PgStore::connect(&pg.url()).unwrap();
    store.apply(&start(1, "r", 10)).unwrap();
    // The worker retries a write whose commit it never heard about.
    store.apply(&join(1, "a", 11)).unwrap();
    store.apply(&join(1, "a", 11)).unwrap();
    // A rejoin later is a second membership.
    store
        .apply(&leave(1, "a", 12, LeaveReason::Normal))
        .unwrap();
    store.apply(&join(1, "a", 13)).unwrap();
    let rec = &store.records(&RecordQuery::default()).unwrap()[0];
    let joins: Vec<i64> = rec.members.iter().map(|m| m.joined_at).collect();
    assert_eq!(joins, [11, 13]);
}

#[test]
fn the_first_end_of_a_record_stands_and_closes_the_members_left_open() {
    let pg = TestPostgres::new();
    let mut store = PgStore::connect(&pg.url()).unwrap();
    store.apply(&start(1, "r", 10)).unwrap();
    store.apply(&join(1, "a", 11)).unwrap();
    // The node that revived the room ends the dead node's record ...
    store
        .apply(&RecordOp::End {
            channel_id: ChannelId(1),
            ended_at: 20,
            reason: "node_lost".into(),
        })
        .unwrap();
    // ... and the stale owner, waking later, cannot rewrite it.
    store.apply(&end(1, 30)).unwrap();
    let rec = &store.records(&RecordQuery::default()).unwrap()[0];
    assert_eq!(
        (rec.ended_at, rec.end_reason.as_deref()),
        (Some(20), Some("node_lost"))
    );
    assert_eq!(rec.members[0].left_at, Some(20));
    assert_eq!(rec.members[0].leave_reason.as_deref(), Some("node_lost"));
}
