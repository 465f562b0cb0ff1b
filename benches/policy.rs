//! Policy runtime costs: one wasm permission check and one Lua decide hook
//! through the whole host path, and how hook throughput scales with rooms
//! running in parallel.
//!
//! Run with `cargo bench --bench policy`. Figures are recorded in
//! docs/performance.md.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Serialize;

use conclave::policy::catalog::{Catalog, PolicyConfig};
use conclave::policy::lua::{MemberView, OwnedIdentity, RoomView};
use conclave::policy::runtime::RoomPolicy;
use conclave::policy::{Action, Check};
use conclave::protocol::{MemberInfo, Mode, Role};
use conclave::script::pool::Pool;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A catalog over the shipped scripts and, as its only plugin, the WAT
/// example (no build step needed), plus the Rust allowlist when built.
fn catalog() -> Arc<Catalog> {
    let plugins = tempfile::tempdir().expect("temp dir").keep();
    std::fs::copy(
        repo("plugins/wat/audio_only.wat"),
        plugins.join("audio_only.wat"),
    )
    .expect("copy the WAT plugin");
    let allowlist = repo("plugins/target/wasm32-unknown-unknown/release/allowlist.wasm");
    if allowlist.exists() {
        std::fs::copy(&allowlist, plugins.join("allowlist.wasm")).expect("copy allowlist");
    }
    let mut config = PolicyConfig {
        scripts_dir: repo("scripts"),
        plugins_dir: plugins,
        watch: false,
        ..PolicyConfig::default()
    };
    config.plugins = conclave::app::config::Config::from_toml(
        "[policy.plugins.allowlist.config]\nrooms = \"vip-*\"\nusers = \"alice,bob\"\n",
    )
    .expect("plugin config")
    .policy
    .plugins;
    Catalog::open(config).expect("catalog opens")
}

fn view(members: usize) -> Arc<RoomView> {
    Arc::new(RoomView {
        generation: 1,
        members: (0..members)
            .map(|i| MemberView {
                info: MemberInfo {
                    user: format!("member-{i}").as_str().into(),
                    name: format!("Member {i}"),
                    role: if i < 3 {
                        Role::Interactor
                    } else {
                        Role::Audience
                    },
                    mode: Mode::Audio,
                    audio_muted: false,
                    video_muted: true,
                    screen_sharing: false,
                    joined_at: 0,
                },
                attrs: serde_json::json!({}),
            })
            .collect(),
        metadata: serde_json::Map::new(),
        timers: Default::default(),
    })
}

#[derive(Clone, Serialize)]
struct JoinRequest {
    user: &'static str,
    name: &'static str,
    role: Role,
    mode: Mode,
    attrs: serde_json::Value,
    admin: bool,
}

fn join_request() -> JoinRequest {
    JoinRequest {
        user: "visitor",
        name: "Visitor",
        role: Role::Interactor,
        mode: Mode::Audio,
        attrs: serde_json::json!({}),
        admin: false,
    }
}

fn identity(custom_info: &str) -> OwnedIdentity {
    OwnedIdentity {
        name: "bench".into(),
        channel_id: 1,
        custom_info: custom_info.into(),
    }
}

/// A room's policy state running the shipped `capacity` script.
async fn capacity_room(catalog: &Arc<Catalog>) -> RoomPolicy {
    let room = identity("seats=10 max_members=100 overflow=audience");
    let lua = catalog
        .instantiate("capacity", room.clone(), None)
        .await
        .expect("the script loads")
        .expect("capacity.lua exists");
    RoomPolicy::new(catalog.clone(), "capacity".into(), room, None, Some(lua))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn wasm_check(c: &mut Criterion) {
    let catalog = catalog();
    let plugins = catalog.plugins().len();
    let mut room = RoomPolicy::new(catalog, "none".into(), identity(""), None, None);
    let mut check = Check::new(Action::Join, "vip-lounge", "alice");
    check.role = Some(Role::Interactor);
    // The first check instantiates the plugins; keep that out of the loop.
    room.check_plugins(&check).expect("alice is allowed");
    let mut group = c.benchmark_group("wasm");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function(format!("check_join_{plugins}_plugins"), |b| {
        b.iter(|| black_box(room.check_plugins(black_box(&check))))
    });
    group.finish();
}

/// `iters` decide calls awaited one after the other, as a room makes them.
fn decide_loop(
    rt: &tokio::runtime::Runtime,
    room: &mut RoomPolicy,
    view: &Arc<RoomView>,
    iters: u64,
) -> Duration {
    let request = join_request();
    rt.block_on(async {
        let mut effects = Vec::new();
        let start = Instant::now();
        for _ in 0..iters {
            let decision = room
                .decide("can_join", view, request.clone(), &mut effects)
                .await;
            black_box(decision).expect("the hook runs");
            effects.clear();
        }
        start.elapsed()
    })
}

fn lua_join_hook(c: &mut Criterion) {
    let rt = runtime();
    let catalog = catalog();
    let mut room = rt.block_on(capacity_room(&catalog));
    let view = view(10);
    let mut group = c.benchmark_group("lua");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    // For reference: the host's share, with a hook that does almost nothing.
    let minimal_script = Arc::new(conclave::policy::catalog::Script {
        name: "minimal".into(),
        source: "return { can_join = function(req) if req.user == 'x' then return false end end }"
            .into(),
        hash: "0".into(),
        loaded_at_ms: 0,
        path: "minimal.lua".into(),
    });
    let minimal_state = rt
        .block_on(catalog.load(minimal_script, identity(""), None))
        .expect("the minimal script loads");
    let mut minimal = RoomPolicy::new(
        catalog.clone(),
        "minimal".into(),
        identity(""),
        None,
        Some(minimal_state),
    );
    group.bench_function("can_join_minimal", |b| {
        b.iter_custom(|iters| decide_loop(&rt, &mut minimal, &view, iters))
    });
    group.bench_function("can_join_capacity_10_members", |b| {
        b.iter_custom(|iters| decide_loop(&rt, &mut room, &view, iters))
    });
    // The same call run on the caller's own thread: what the script thread's
    // hand-off adds is the difference.
    let inline = Catalog::open_with(
        catalog.config().clone(),
        Arc::default(),
        conclave::clock::Clock::new(),
        Pool::inline(),
    )
    .expect("catalog opens");
    let mut inline_room = rt.block_on(capacity_room(&inline));
    group.bench_function("can_join_capacity_10_members_same_thread", |b| {
        b.iter_custom(|iters| decide_loop(&rt, &mut inline_room, &view, iters))
    });
    // With a shadow (the same script, a state of its own): the live path
    // pays for the request as JSON and a queue push; the shadow's call runs
    // on its own task and script thread.
    let mut shadowed = rt.block_on(capacity_room(&catalog));
    rt.block_on(shadowed.set_shadow("capacity"))
        .expect("the shadow starts");
    group.bench_function("can_join_capacity_10_members_with_shadow", |b| {
        b.iter_custom(|iters| decide_loop(&rt, &mut shadowed, &view, iters))
    });
    // The live path's own share: on the caller's thread, the shadow's call
    // runs on a runtime worker (the other core), so what the live call pays
    // is the request as JSON, the verdict and the push.
    let mut inline_shadowed = rt.block_on(capacity_room(&inline));
    rt.block_on(inline_shadowed.set_shadow("capacity"))
        .expect("the shadow starts");
    group.bench_function(
        "can_join_capacity_10_members_same_thread_with_shadow",
        |b| b.iter_custom(|iters| decide_loop(&rt, &mut inline_shadowed, &view, iters)),
    );
    group.finish();
    let status = shadowed.shadow_status().expect("still running");
    eprintln!(
        "shadow (back to back): {} compared, {} dropped (its queue full), {} disagreements",
        status.compared, status.dropped, status.disagreements
    );
    // Back to back, the shadow's own work competes with the live calls for
    // both cores. A room's hooks come spaced out (1,000 joins/s is one per
    // millisecond): at one every 250 µs, what the shadow costs the live
    // call is its hand-off alone.
    let mut spaced_shadow = rt.block_on(capacity_room(&catalog));
    rt.block_on(spaced_shadow.set_shadow("capacity"))
        .expect("the shadow starts");
    let (plain, with) = spaced(&rt, &mut room, &mut spaced_shadow, &view);
    let status = spaced_shadow.shadow_status().expect("still running");
    eprintln!(
        "lua/spaced (one call every 250 µs, alternating rooms, 4,000 calls each): \
         without a shadow p50 {:.1} µs p99 {:.1} µs; with a shadow p50 {:.1} µs p99 {:.1} µs \
         ({} compared, {} dropped)",
        plain.0, plain.1, with.0, with.1, status.compared, status.dropped
    );
}

/// p50 and p99 of `can_join` round trips, in µs, one call every 250 µs,
/// alternating between `a` and `b` so both meet the same machine.
fn spaced(
    rt: &tokio::runtime::Runtime,
    a: &mut RoomPolicy,
    b: &mut RoomPolicy,
    view: &Arc<RoomView>,
) -> ((f64, f64), (f64, f64)) {
    let request = join_request();
    let (mut took_a, mut took_b) = rt.block_on(async {
        let mut effects = Vec::new();
        let (mut took_a, mut took_b) = (Vec::with_capacity(4000), Vec::with_capacity(4000));
        for i in 0..8000 {
            let (room, took) = if i % 2 == 0 {
                (&mut *a, &mut took_a)
            } else {
                (&mut *b, &mut took_b)
            };
            let start = Instant::now();
            let decision = room
                .decide("can_join", view, request.clone(), &mut effects)
                .await;
            took.push(start.elapsed().as_secs_f64() * 1e6);
            black_box(decision).expect("the hook runs");
            effects.clear();
            while start.elapsed() < Duration::from_micros(250) {
                tokio::task::yield_now().await;
            }
        }
        (took_a, took_b)
    });
    let pick = |took: &mut Vec<f64>| {
        took.sort_by(f64::total_cmp);
        (took[took.len() / 2], took[took.len() * 99 / 100])
    };
    (pick(&mut took_a), pick(&mut took_b))
}

/// The whole pipeline for one join on a room without a script or plugins,
/// with the decision log keeping 256 records and with it off: the
/// difference is what writing a decision down costs.
fn decision_log(c: &mut Criterion) {
    use conclave::auth::{Grants, Identity};
    use conclave::policy::authz::{Access, Ask};
    let rt = runtime();
    let identity = Identity {
        user: "visitor".into(),
        name: "Visitor".into(),
        grants: Grants {
            rooms: vec!["*".into()],
            ..Grants::default()
        },
        attrs: serde_json::json!({}),
        jti: None,
    };
    let access = Access {
        room: "bench",
        identity: &identity,
        community: None,
        attr_lines: "",
        ask: Ask::Join {
            mode: Mode::Audio,
            role: Some(Role::Interactor),
            members: 10,
        },
    };
    let view = view(10);
    let mut group = c.benchmark_group("decision_log");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    for keep in [256, 0] {
        let catalog = Catalog::open(PolicyConfig {
            scripts_dir: std::path::PathBuf::new(),
            plugins_dir: std::path::PathBuf::new(),
            watch: false,
            decision_log: keep,
            ..PolicyConfig::default()
        })
        .expect("catalog opens");
        let mut room = RoomPolicy::new(catalog, "none".into(), identity_named(), None, None);
        group.bench_function(format!("authorize_join_keeping_{keep}"), |b| {
            b.iter(|| {
                let mut effects = Vec::new();
                let granted = rt.block_on(room.authorize(&access, None, &view, &mut effects));
                black_box(granted).expect("allowed");
            })
        });
    }
    group.finish();
}

fn identity_named() -> OwnedIdentity {
    identity("")
}

/// Hook calls per second with `rooms` rooms each calling `calls` hooks in a
/// row, as room tasks on the runtime do; the script threads run them.
fn hooks_per_second(
    rt: &tokio::runtime::Runtime,
    catalog: &Arc<Catalog>,
    rooms: usize,
    calls: u64,
) -> f64 {
    rt.block_on(async {
        let mut states = Vec::new();
        for _ in 0..rooms {
            states.push(capacity_room(catalog).await);
        }
        let start = Instant::now();
        let tasks: Vec<_> = states
            .into_iter()
            .map(|mut room| {
                tokio::spawn(async move {
                    let view = view(10);
                    let request = join_request();
                    let mut effects = Vec::new();
                    for _ in 0..calls {
                        black_box(
                            room.decide("can_join", &view, request.clone(), &mut effects)
                                .await,
                        )
                        .expect("the hook runs");
                        effects.clear();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("the room task");
        }
        (rooms as u64 * calls) as f64 / start.elapsed().as_secs_f64()
    })
}

fn parallel_rooms(c: &mut Criterion) {
    let rt = runtime();
    let catalog = catalog();
    // Warm up both paths once, then report the ratio the target is about.
    let calls = 100_000;
    hooks_per_second(&rt, &catalog, 2, calls / 10);
    let one = hooks_per_second(&rt, &catalog, 1, calls);
    let two = hooks_per_second(&rt, &catalog, 2, calls);
    println!(
        "lua/parallel: 1 room {one:.0} hooks/s, 2 rooms {two:.0} hooks/s, scaling {:.2}x",
        two / one
    );
    let mut group = c.benchmark_group("lua_parallel");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(6));
    for rooms in [1usize, 2] {
        group.throughput(Throughput::Elements(rooms as u64 * 20_000));
        group.bench_function(format!("{rooms}_rooms_x_20k_hooks"), |b| {
            b.iter(|| hooks_per_second(&rt, &catalog, rooms, 20_000))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    wasm_check,
    lua_join_hook,
    decision_log,
    parallel_rooms
);
criterion_main!(benches);
