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
use conclave::policy::lua::{MemberView, RoomIdentity, RoomView};
use conclave::policy::runtime::RoomPolicy;
use conclave::policy::{Action, Check};
use conclave::protocol::{MemberInfo, Mode, Role};

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
    })
}

#[derive(Serialize)]
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

/// A room's policy state running the shipped `capacity` script.
fn capacity_room(catalog: &Arc<Catalog>) -> RoomPolicy {
    let lua = catalog
        .instantiate(
            "capacity",
            RoomIdentity {
                name: "bench",
                channel_id: 1,
                custom_info: "seats=10 max_members=100 overflow=audience",
            },
            None,
        )
        .expect("the script loads")
        .expect("capacity.lua exists");
    RoomPolicy::new(catalog.clone(), "capacity".into(), Some(lua))
}

fn wasm_check(c: &mut Criterion) {
    let catalog = catalog();
    let plugins = catalog.plugins().len();
    let mut room = RoomPolicy::new(catalog, "none".into(), None);
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

fn lua_join_hook(c: &mut Criterion) {
    let catalog = catalog();
    let mut room = capacity_room(&catalog);
    let view = view(10);
    let request = join_request();
    let mut effects = Vec::new();
    let mut group = c.benchmark_group("lua");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));
    // For reference: the host's share, with a hook that does almost nothing.
    let mut minimal = RoomPolicy::new(
        catalog.clone(),
        "minimal".into(),
        Some(
            conclave::policy::lua::LuaPolicy::new(
                Arc::new(conclave::policy::catalog::Script {
                    name: "minimal".into(),
                    source: "return { can_join = function(req) if req.user == 'x' then return false end end }".into(),
                    hash: "0".into(),
                    loaded_at_ms: 0,
                    path: "minimal.lua".into(),
                }),
                RoomIdentity {
                    name: "bench",
                    channel_id: 1,
                    custom_info: "",
                },
                &catalog.config().lua,
                None,
            )
            .expect("the minimal script loads"),
        ),
    );
    group.bench_function("can_join_minimal", |b| {
        b.iter(|| {
            let decision = minimal.decide("can_join", &view, &request, &mut effects);
            effects.clear();
            black_box(decision)
        })
    });
    group.bench_function("can_join_capacity_10_members", |b| {
        b.iter(|| {
            let decision = room.decide("can_join", &view, &request, &mut effects);
            effects.clear();
            black_box(decision)
        })
    });
    group.finish();
}

/// Hook calls per second with `rooms` rooms each on its own thread, as room
/// tasks run on a multi-thread runtime.
fn hooks_per_second(catalog: &Arc<Catalog>, rooms: usize, calls: u64) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..rooms {
            scope.spawn(|| {
                let mut room = capacity_room(catalog);
                let view = view(10);
                let request = join_request();
                let mut effects = Vec::new();
                for _ in 0..calls {
                    black_box(room.decide("can_join", &view, &request, &mut effects))
                        .expect("the hook runs");
                    effects.clear();
                }
            });
        }
    });
    (rooms as u64 * calls) as f64 / start.elapsed().as_secs_f64()
}

fn parallel_rooms(c: &mut Criterion) {
    let catalog = catalog();
    // Warm up both paths once, then report the ratio the target is about.
    let calls = 200_000;
    hooks_per_second(&catalog, 2, calls / 10);
    let one = hooks_per_second(&catalog, 1, calls);
    let two = hooks_per_second(&catalog, 2, calls);
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
            b.iter(|| hooks_per_second(&catalog, rooms, 20_000))
        });
    }
    group.finish();
}

criterion_group!(benches, wasm_check, lua_join_hook, parallel_rooms);
criterion_main!(benches);
