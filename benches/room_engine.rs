//! Joins plus leaves per second through the room engine, without a network.
//!
//! Two layers, so a regression can be placed:
//! - `room_state`: the sans-I/O [`Room`] alone, outputs drained and dropped;
//! - `room_actor`: a [`RoomHandle`] round trip to the room's task, which also
//!   encodes broadcasts to JSON, fans them out to member sinks, and hands call
//!   record writes to the SQLite store thread.
//!
//! Each iteration is one join followed by one leave of a member into a room
//! that already holds `n` others, so every join and leave broadcasts to `n`.
//!
//! Run with `cargo bench --bench room_engine`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use conclave::auth::{Grants, Identity};
use conclave::clock::Clock;
use conclave::ids::{ChannelId, ConnId, RoomName, UserId};
use conclave::model::Role;
use conclave::policy::catalog::Catalog;
use conclave::protocol::Mode;
use conclave::room::{
    Joiner, Now, Room, RoomHandle, RoomMetrics, RoomServices, RoomSettings, Rooms, Sink,
};
use conclave::store::StoreHandle;
use conclave::store::sqlite::SqliteStore;

/// Members already in the room when the measured member joins.
const ROOM_SIZES: [usize; 2] = [10, 100];

fn identity(user: &str) -> Identity {
    Identity {
        user: UserId(user.to_owned()),
        name: user.to_owned(),
        grants: Grants {
            rooms: vec!["*".into()],
            ..Grants::default()
        },
        attrs: serde_json::json!({}),
        jti: None,
    }
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .expect("the clock is after 1970"),
    }
}

fn room_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("room_state/join_leave");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    for others in ROOM_SIZES {
        // One fixed time: the state machine only compares instants against
        // deadlines, and none fall due while members come and go.
        let now = now();
        let mut room = Room::new(
            RoomName::new("bench").expect("a valid room name"),
            ChannelId::generate(),
            String::new(),
            RoomSettings::default(),
            now,
        );
        let joiner = |user: &'static UserId| Joiner {
            user,
            name: user.as_str(),
            mode: Mode::Audio,
            role: Role::Interactor,
            muted: false,
        };
        let members: Vec<&'static UserId> = (0..others)
            .map(|i| &*Box::leak(Box::new(UserId(format!("member-{i}")))))
            .collect();
        for (i, user) in members.iter().enumerate() {
            room.join(now, ConnId(i as u64), joiner(user))
                .expect("the room accepts members");
        }
        while room.poll_output().is_some() {}
        let visitor: &'static UserId = Box::leak(Box::new(UserId("visitor".into())));
        let conn = ConnId(u64::MAX);
        group.bench_with_input(BenchmarkId::from_parameter(others), &others, |b, _| {
            b.iter(|| {
                let ok = room
                    .join(now, conn, joiner(visitor))
                    .expect("the visitor may join");
                black_box(ok);
                while let Some(out) = room.poll_output() {
                    black_box(out);
                }
                room.leave(now, conn).expect("the visitor is a member");
                while let Some(out) = room.poll_output() {
                    black_box(out);
                }
            });
        });
    }
    group.finish();
}

/// A member that stays in the room for the whole benchmark, so the room
/// never closes and every join and leave has someone to broadcast to.
fn bystander_sink(rt: &tokio::runtime::Runtime) -> Sink {
    // As deep as a real connection's queue; a drain task keeps it from filling,
    // which would get the member cancelled as too slow.
    let (tx, mut rx) = mpsc::channel(1024);
    rt.spawn(async move { while rx.recv().await.is_some() {} });
    Sink::new(tx, CancellationToken::new())
}

fn room_actor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let store = SqliteStore::in_memory().expect("an in-memory SQLite store");
    let (store, _worker) = StoreHandle::spawn(store);
    let rooms = rt.block_on(async {
        Rooms::new(RoomServices {
            settings: RoomSettings::default(),
            max_rooms: ROOM_SIZES.len(),
            command_queue: 1024,
            store: store.clone(),
            metrics: Arc::new(RoomMetrics::default()),
            catalog: Catalog::empty().expect("an empty catalog"),
            kv: None,
            media: None,
            clock: Clock::new(),
            bans: Arc::new(conclave::policy::bans::Bans::new(Vec::new(), None)),
            claims: None,
        })
    });

    let mut group = c.benchmark_group("room_actor/join_leave");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    for others in ROOM_SIZES {
        let name = RoomName::new(format!("bench-{others}")).expect("a valid room name");
        // `create` spawns the room's task, so it needs the runtime entered.
        let handle: RoomHandle = rt.block_on(async {
            let handle = rooms
                .create(name, String::new(), None, None)
                .await
                .expect("room capacity covers every size");
            for i in 0..others {
                let who = Arc::new(identity(&format!("member-{i}")));
                handle
                    .join(ConnId::next(), who, Mode::Audio, None, bystander_sink(&rt))
                    .await
                    .expect("the room accepts members");
            }
            handle
        });
        let conn = ConnId::next();
        let sink = bystander_sink(&rt);
        let mut visit = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(others), &others, |b, _| {
            b.iter_custom(|iters| {
                // A fresh user per visit: the store's leave update looks up
                // open memberships by (channel, user), and one user rejoining
                // millions of times would make that a benchmark of SQLite.
                let visitors: Vec<Arc<Identity>> = (0..iters)
                    .map(|_| {
                        visit += 1;
                        Arc::new(identity(&format!("visitor-{visit}")))
                    })
                    .collect();
                rt.block_on(async {
                    let start = Instant::now();
                    for who in visitors {
                        let ok = handle
                            .join(conn, who, Mode::Audio, None, sink.clone())
                            .await
                            .expect("the visitor may join");
                        black_box(ok);
                        handle.leave(conn).await.expect("the visitor is a member");
                    }
                    // Record writes are part of the cost: a sample ends only
                    // once the store has caught up with it.
                    store.flush().await.expect("the store is running");
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
    rt.block_on(rooms.shutdown());
    store.stop();
}

criterion_group!(benches, room_state, room_actor);
criterion_main!(benches);
