//! Resolving a member's effective permissions in a community channel.
//!
//! The member holds 10 custom server roles in a server of 1,000 members, 12
//! roles and 50 channels; the channel has overrides for the everyone role and
//! for each of the member's roles, a member override, and a black list (roles
//! and members the member is not on, so every entry is looked at). Three
//! measurements:
//!
//! - `cold/server`: [`Server::effective`] itself, what every cache miss runs;
//! - `cold/invalidated`: an edit of the server (which drops its cache) and
//!   then [`Community::effective`], so a miss plus refilling the cache;
//! - `cached`: [`Community::effective`] answered from the cache.
//!
//! Criterion prints the mean per call; after it, a percentile pass times
//! batches of calls and prints p50 and p99 per call (the target is p50 under
//! 2 µs cold).
//!
//! Run with `cargo bench --bench permissions`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use conclave::community::{
    ChannelKind, Community, CommunityChannelId, KeySet, ListEntry, ListKind, PermissionKey,
    PermissionValue, Permissions, RoleId, Server, ServerId, Visibility,
};
use conclave::ids::UserId;

const SERVER: ServerId = ServerId(1);
const CHANNEL: CommunityChannelId = CommunityChannelId(25);
const MEMBERS: usize = 1_000;
const ROLES: u64 = 12;
const HELD: u64 = 10;
const CHANNELS: u64 = 50;

fn user() -> UserId {
    UserId::from("member-0500")
}

fn keys(keys: &[PermissionKey]) -> KeySet {
    KeySet::of(keys)
}

fn server() -> Server {
    use PermissionKey::*;
    let mut s = Server::new(SERVER, UserId::from("owner"));
    for i in 0..MEMBERS {
        s.add_member(UserId::from(format!("member-{i:04}").as_str()));
    }
    for id in 1..=ROLES {
        // Spread allows and denies over the keys so every role contributes.
        let key = PermissionKey::ALL[(id as usize) % PermissionKey::ALL.len()];
        let other = PermissionKey::ALL[(id as usize * 5) % PermissionKey::ALL.len()];
        let permissions = Permissions::allowing(key.into()).with(other, PermissionValue::Deny);
        s.add_role(
            RoleId(id),
            format!("role-{id}"),
            id as i64 * 10,
            permissions,
        )
        .expect("fresh role ids");
    }
    let member = user();
    for id in 1..=HELD {
        s.assign_role(&member, RoleId(id))
            .expect("role and member exist");
    }
    for id in 0..CHANNELS {
        s.add_channel(
            CommunityChannelId(id),
            ChannelKind::Media,
            Visibility::Public,
        )
        .expect("fresh channel ids");
    }
    s.set_role_override(
        CHANNEL,
        RoleId::EVERYONE,
        Permissions::denying(keys(&[RtcChannelOpenCamera, RtcChannelOpenShareScreen])),
    )
    .expect("channel exists");
    for id in 1..=HELD {
        let p = if id % 2 == 0 {
            Permissions::allowing(keys(&[RtcChannelOpenCamera]))
        } else {
            Permissions::denying(keys(&[RtcChannelOpenMicrophone, ManageChannel]))
        };
        s.set_role_override(CHANNEL, RoleId(id), p)
            .expect("role and channel exist");
    }
    s.set_member_override(
        CHANNEL,
        &member,
        Permissions::allowing(keys(&[RtcChannelOpenMicrophone]))
            .with(RtcChannelOpenShareScreen, PermissionValue::Deny),
    )
    .expect("member and channel exist");
    // Listed: roles and members this member is not, so nothing hides the channel.
    for id in HELD + 1..=ROLES {
        s.list_add(CHANNEL, ListKind::Black, ListEntry::Role(RoleId(id)))
            .expect("role exists");
    }
    for i in 0..20 {
        let listed = UserId::from(format!("member-{:04}", 900 + i).as_str());
        s.list_add(CHANNEL, ListKind::Black, ListEntry::Member(listed))
            .expect("member exists");
    }
    s
}

fn community() -> Community {
    let mut c = Community::new();
    c.insert(server()).expect("a fresh store");
    c
}

/// The work measured by each variant, one call.
fn cold_server(s: &Server, user: &UserId) -> KeySet {
    black_box(s.effective(black_box(Some(CHANNEL)), black_box(user))).permissions
}

fn cold_invalidated(c: &mut Community, user: &UserId) -> KeySet {
    // Any edit invalidates; adding an existing member changes nothing else.
    c.edit(SERVER)
        .expect("the server exists")
        .add_member(user.clone());
    black_box(c.effective(SERVER, black_box(Some(CHANNEL)), black_box(user))).permissions
}

fn cached(c: &mut Community, user: &UserId) -> KeySet {
    black_box(c.effective(SERVER, black_box(Some(CHANNEL)), black_box(user))).permissions
}

fn resolution(c: &mut Criterion) {
    let member = user();
    let s = server();
    let answer = s.effective(Some(CHANNEL), &member);
    assert!(
        answer.visible && !answer.permissions.is_empty(),
        "the bench resolves something"
    );

    let mut group = c.benchmark_group("permissions");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("cold/server", |b| b.iter(|| cold_server(&s, &member)));
    let mut store = community();
    group.bench_function("cold/invalidated", |b| {
        b.iter(|| cold_invalidated(&mut store, &member))
    });
    let mut store = community();
    store.effective(SERVER, Some(CHANNEL), &member);
    group.bench_function("cached", |b| b.iter(|| cached(&mut store, &member)));
    group.finish();
}

/// p50 and p99 per call, from batches of `BATCH` calls (a single call is too
/// short for the clock).
fn percentiles(_: &mut Criterion) {
    // Criterion's test mode (`cargo test --benches`) only checks that benches run.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    const BATCH: u32 = 32;
    const BATCHES: usize = 20_000;
    fn measure(name: &str, mut call: impl FnMut()) {
        for _ in 0..1_000 {
            call();
        }
        let mut per_call: Vec<f64> = (0..BATCHES)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..BATCH {
                    call();
                }
                start.elapsed().as_nanos() as f64 / f64::from(BATCH)
            })
            .collect();
        per_call.sort_by(f64::total_cmp);
        let at = |q: f64| per_call[((per_call.len() - 1) as f64 * q) as usize];
        println!(
            "permissions/{name:<18} p50 {:>7.1} ns   p99 {:>7.1} ns   (batches of {BATCH})",
            at(0.50),
            at(0.99)
        );
    }
    let member = user();
    let s = server();
    measure("cold/server", || {
        cold_server(&s, &member);
    });
    let mut store = community();
    measure("cold/invalidated", || {
        cold_invalidated(&mut store, &member);
    });
    let mut store = community();
    measure("cached", || {
        cached(&mut store, &member);
    });
}

criterion_group!(benches, resolution, percentiles);
criterion_main!(benches);
