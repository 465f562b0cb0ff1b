//! Hot reload across many live rooms, and what an idle room costs.
//!
//! Starts a real server in-process with 1,000 rooms bound to one policy,
//! keeps members joining, muting and leaving some of them over WebSocket,
//! and saves a new version of the script (write to a temp file, rename into
//! place, as editors do) several times. For every room it reads when the
//! room switched (`policy.since`) and reports the time from the save to the
//! switch: p50, p99, max; and the requests that failed during the reloads.
//! It also reports the memory an idle room with its Lua state costs.
//!
//! `cargo bench --bench reload_fanout` (options: ROOMS=1000 SAVES=10).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave::app::config::Config;
use conclave::auth::{Auth, Grants, claims_for};
use conclave::client::SignalClient;
use conclave::ids::RoomName;
use conclave::protocol::{MediaKind, Mode};
use conclave::server::Server;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn script(version: usize) -> String {
    // A realistic policy: the shipped capacity rules plus per-room state.
    let capacity =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/capacity.lua"))
            .expect("scripts/capacity.lua");
    capacity.replace(
        "local policy = {}",
        &format!("local policy = {{}}\nlocal VERSION = {version}\nfunction policy.on_reload() room.state.version = VERSION end"),
    )
}

fn save(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let rooms = env_or("ROOMS", 1000);
    let saves = env_or("SAVES", 10);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(&scripts).expect("scripts dir");
        let path = scripts.join("bench.lua");
        save(&path, &script(0));

        let mut config = Config::default();
        config.server.bind = "127.0.0.1:0".parse().expect("address");
        // Any free UDP port: a server may already hold the default.
        config.media.udp_port = "0".parse().expect("literal port");
        config.server.data_dir = dir.path().join("data");
        config.policy.scripts_dir = scripts.clone();
        config.policy.plugins_dir = dir.path().join("plugins");
        config.rooms.max_rooms = rooms + 10;
        let server = Server::start(config, true).await.expect("server starts");
        let state = server.state().clone();

        let before = rss();
        for i in 0..rooms {
            let name = RoomName::new(format!("room-{i}")).expect("name");
            state
                .rooms
                .create(name, "seats=10".into(), Some("bench"), None)
                .await
                .expect("create");
        }
        let handles = state.rooms.handles();
        let mut lua_bytes = 0;
        for h in &handles {
            lua_bytes += h.info().await.expect("info").lua_memory;
        }
        let per_room = (rss().saturating_sub(before)) / rooms as u64;
        println!(
            "idle rooms: {rooms}; resident memory {:.1} KiB per room (all of it); Lua state {:.1} KiB per room",
            per_room as f64 / 1024.0,
            lua_bytes as f64 / rooms as f64 / 1024.0
        );

        // Load: members joining, muting and leaving the first rooms throughout.
        let url = format!("ws://{}/ws", server.addr());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        let member_token = |user: &str| {
            Auth::dev()
                .mint(&claims_for(
                    user,
                    "",
                    Grants {
                        rooms: vec!["*".into()],
                        ..Grants::default()
                    },
                    Duration::from_secs(3600),
                ))
                .expect("mint")
        };
        // One member stays in each loaded room, or its last leave would
        // close it (a room closes when the last member leaves).
        let mut anchors = Vec::new();
        for i in 0..8 {
            let mut anchor = SignalClient::connect(&url).await.expect("connect");
            anchor.hello(&member_token(&format!("anchor-{i}"))).await.expect("hello");
            anchor
                .join(&format!("room-{i}"), Mode::Audio, None)
                .await
                .expect("anchor joins");
            // Events for the anchor are read off in the background.
            anchors.push(tokio::spawn(async move {
                while anchor.next_event().await.is_some() {}
            }));
        }
        for i in 0..16 {
            let token = member_token(&format!("load-{i}"));
            let mut client = SignalClient::connect(&url).await.expect("connect");
            client.hello(&token).await.expect("hello");
            let (stop, requests) = (stop.clone(), requests.clone());
            let room = format!("room-{}", i % 8);
            workers.push(tokio::spawn(async move {
                let mut failed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let steps = [
                        client.join(&room, Mode::Audio, None).await.map(drop),
                        client.mute(MediaKind::Audio, true, None).await,
                        client.mute(MediaKind::Audio, false, None).await,
                        client.leave().await,
                    ];
                    for step in steps {
                        requests.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = step {
                            failed.push(e.to_string());
                        }
                    }
                }
                failed
            }));
        }

        let mut latencies = Vec::new();
        for version in 1..=saves {
            let saved = unix_ms();
            save(&path, &script(version));
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut switched = vec![None; handles.len()];
            while switched.iter().any(Option::is_none) {
                assert!(Instant::now() < deadline, "rooms did not all switch");
                for (i, h) in handles.iter().enumerate() {
                    if switched[i].is_some() {
                        continue;
                    }
                    let info = h.info().await.expect("info");
                    if info.policy.since.is_some_and(|t| t >= saved) {
                        switched[i] = info.policy.since;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies.extend(switched.into_iter().map(|t| t.expect("switched") - saved));
        }
        stop.store(true, Ordering::Relaxed);
        let mut failed = Vec::new();
        for w in workers {
            failed.extend(w.await.expect("worker"));
        }
        latencies.sort_unstable();
        println!(
            "reload: {saves} saves x {rooms} rooms; save -> room on new version: p50 {} ms, p99 {} ms, max {} ms (includes the {} ms debounce)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
            state.config.policy.debounce.as_millis(),
        );
        println!(
            "load during reloads: {} requests, {} failed{}",
            requests.load(Ordering::Relaxed),
            failed.len(),
            failed
                .first()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        );
        for anchor in anchors {
            anchor.abort();
        }
        server.shutdown().await;
    });
}
