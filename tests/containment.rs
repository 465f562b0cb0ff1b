//! A script that never returns costs only its own room. The watchdog answers
//! for it by the failure mode, the room keeps its members and quarantines
//! the state, other rooms, `/healthz` and the admin API carry on, and the
//! threads given up on stay under their cap. An idle server's tickers sleep.

mod common;

use std::time::Duration;

use common::{TestServer, eventually_within, next_event};
use conclave::protocol::{MediaKind, Mode, ServerMessage};
use conclave::status::Status;

/// Work the count hook cannot see: `table.sort` with a C comparator runs
/// no VM instruction while it sorts, so the hook between two budget checks
/// (a thousand instructions: some two hundred sorts) never comes in time.
/// The clock ends it after five seconds, so the test can see it end.
/// Members whose name starts with `first` get in without it.
const STUCK: &str = r#"
local t = {}
for i = 1, 100000 do t[i] = i end
return {
  can_join = function(req)
    if req.user:find("^first") then return end
    local start = os.clock()
    while os.clock() - start < 5 do table.sort(t, rawequal) end
  end,
}"#;

/// Tests here count the process's threads by name: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Long enough for a stuck call to reach its next budget check and return.
const STALL: Duration = Duration::from_secs(120);

fn stuck_limits(c: &mut conclave::app::Config, threads: usize, max_stuck: usize) {
    c.policy.lua.time = Duration::from_millis(300);
    // The instruction budget may not stop the stuck hook first: only the
    // watchdog can.
    c.policy.lua.instructions = u64::MAX / 2;
    c.scripts.threads = threads;
    c.scripts.max_stuck = max_stuck;
    c.scripts.grace = Duration::from_millis(100);
    c.scripts.queue_timeout = Duration::from_millis(500);
}

async fn overruns(srv: &TestServer, state: &str) -> u64 {
    srv.metric(&format!(
        "conclave_script_overruns_total{{state=\"{state}\"}}"
    ))
    .await as u64
}

async fn threads(srv: &TestServer, state: &str) -> u64 {
    srv.metric(&format!("conclave_script_threads{{state=\"{state}\"}}"))
        .await as u64
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<u64> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| {
            let task = task.ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            comm.starts_with(prefix)
                .then(|| task.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// How often a thread of this process has been switched out voluntarily.
fn switches(tid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// Waits until no server of an earlier test has script or epoch threads.
async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    let serial = SERIAL.lock().await;
    eventually_within(STALL, "the threads of earlier servers to end", || async {
        threads_named("conclave-lua-").is_empty() && threads_named("conclave-wasm-").is_empty()
    })
    .await;
    serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_scripts_cost_only_their_own_rooms() {
    let _serial = alone().await;
    let srv = TestServer::start_with(|c| stuck_limits(c, 2, 4)).await;
    srv.script("stuck", STUCK).await;
    let owner = srv.client("owner").await;
    let admin = srv.admin_token();

    // A control room on the default policy, with two members.
    owner.create("calm", "").await.unwrap();
    let mut calm_a = srv.client("calm-a").await;
    calm_a.join("calm", Mode::Audio, None).await.unwrap();

    const ROOMS: usize = 3;
    let mut firsts = Vec::new();
    for i in 0..ROOMS {
        let room = format!("stuck-{i}");
        owner
            .create_with_policy(&room, "", Some("stuck"))
            .await
            .unwrap();
        let first = srv.client(&format!("first-{i}")).await;
        first.join(&room, Mode::Audio, None).await.unwrap();
        firsts.push(first);
    }

    // Three joins at once, each into a hook that never comes back.
    let mut guests = Vec::new();
    for i in 0..ROOMS {
        guests.push(srv.client(&format!("guest-{i}")).await);
    }
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("stuck-{i}")).collect();
    let answers = futures_util::future::join_all(
        guests
            .iter()
            .zip(&rooms)
            .map(|(g, room)| g.join(room, Mode::Audio, None)),
    )
    .await;
    for answer in answers {
        let err = answer.unwrap_err();
        assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
        assert!(err.to_string().contains("stopped answering"), "{err}");
    }
    assert_eq!(overruns(&srv, "stuck").await, ROOMS as u64);
    assert_eq!(
        srv.metric("conclave_policy_failures_total{hook=\"can_join\",kind=\"stuck\"}")
            .await,
        ROOMS as f64
    );
    // Replaced: the pool has its strength while the abandoned run on.
    assert_eq!(threads(&srv, "serving").await, 2);

    // The control room, /healthz and the admin API answer as ever.
    let calm_b = srv.client("calm-b").await;
    calm_b.join("calm", Mode::Audio, None).await.unwrap();
    assert!(matches!(
        next_event(&mut calm_a).await,
        ServerMessage::MemberJoined { .. }
    ));
    calm_b.leave().await.unwrap();
    assert!(matches!(
        next_event(&mut calm_a).await,
        ServerMessage::MemberLeft { .. }
    ));
    let (status, _) = srv.get("/healthz", None).await;
    assert_eq!(status, 200);
    let (status, listed) = srv.get("/api/rooms", Some(&admin)).await;
    assert_eq!(status, 200, "{listed}");

    for (room, first) in rooms.iter().zip(&firsts) {
        let (_, room) = srv.get(&format!("/api/rooms/{room}"), Some(&admin)).await;
        assert_eq!(room["policy"]["quarantined"], true, "{room}");
        let error = room["policy"]["last_error"].as_str().unwrap();
        assert!(error.contains("`can_join`"), "which hook: {error}");
        assert!(error.contains("did not return within"), "why: {error}");
        // Its member stays, and may act: the room is not the script.
        assert_eq!(room["members"], 1, "{room}");
        first.mute(MediaKind::Audio, true, None).await.unwrap();
    }
    // Later joins are answered by the failure mode, with no thread asked.
    let late = srv.client("late").await;
    let err = late.join("stuck-0", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    assert!(err.to_string().contains("stopped answering"), "{err}");
    assert_eq!(overruns(&srv, "stuck").await, ROOMS as u64);
    // All of it while the three calls were still running.
    assert_eq!(threads(&srv, "stuck").await, ROOMS as u64);
    assert!(threads_named("conclave-lua-").len() <= 2 + ROOMS + 1);

    // The abandoned calls reach a budget check at last, and their threads
    // end: the pool is at strength already.
    eventually_within(STALL, "the abandoned threads to end", || async {
        threads(&srv, "stuck").await == 0
    })
    .await;
    assert_eq!(threads(&srv, "serving").await, 2);

    // A reload gives the quarantined rooms a fresh state.
    srv.script("stuck", "return { can_join = function() end }")
        .await;
    let (_, room) = srv.get("/api/rooms/stuck-1", Some(&admin)).await;
    assert_eq!(room["policy"]["quarantined"], false, "{room}");
    late.join("stuck-1", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_stuck_threads_are_not_replaced() {
    let _serial = alone().await;
    // One thread, and one stuck thread replaced at most.
    let srv = TestServer::start_with(|c| stuck_limits(c, 1, 1)).await;
    srv.script("stuck", STUCK).await;
    srv.script("calm", "return { can_join = function() end }")
        .await;
    let owner = srv.client("owner").await;
    for room in ["stuck-0", "stuck-1"] {
        owner
            .create_with_policy(room, "", Some("stuck"))
            .await
            .unwrap();
    }
    owner
        .create_with_policy("calm-lua", "", Some("calm"))
        .await
        .unwrap();
    owner.create("calm", "").await.unwrap();

    for room in ["stuck-0", "stuck-1"] {
        let guest = srv.client("guest").await;
        let err = guest.join(room, Mode::Audio, None).await.unwrap_err();
        assert!(err.to_string().contains("stopped answering"), "{err}");
    }
    assert_eq!(overruns(&srv, "stuck").await, 2);
    assert_eq!(overruns(&srv, "unreplaced").await, 1);
    assert_eq!(threads(&srv, "serving").await, 0);
    assert_eq!(threads(&srv, "stuck").await, 2);
    // The cap holds in the process, not only in the books.
    assert_eq!(
        threads_named("conclave-lua-").len(),
        2 + 1,
        "two and the watchdog"
    );

    // With no thread to run it, a hook is answered as busy after the
    // queue timeout; rooms without Lua never notice.
    let guest = srv.client("guest").await;
    let err = guest.join("calm-lua", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    assert!(err.to_string().contains("too busy"), "{err}");
    assert_eq!(overruns(&srv, "busy").await, 1);
    guest.join("calm", Mode::Audio, None).await.unwrap();
    let (status, _) = srv.get("/healthz", None).await;
    assert_eq!(status, 200);

    // Freed at last, a stuck thread rejoins the short pool.
    eventually_within(STALL, "the pool to be whole again", || async {
        threads(&srv, "serving").await == 1 && threads(&srv, "stuck").await == 0
    })
    .await;
    let other = srv.client("other").await;
    other.join("calm-lua", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_parks_its_tickers() {
    let _serial = alone().await;
    let srv = TestServer::start().await;
    let wat = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/wat/audio_only.wat");
    common::save(
        &srv.data_dir.path().join("plugins/audio_only.wat"),
        &std::fs::read_to_string(wat).unwrap(),
    );
    srv.script("calm", "return { can_join = function() end }")
        .await;
    common::eventually("the plugin to load", || async {
        let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
        body["plugins"][0]["version"].is_string()
    })
    .await;
    // Work for both: a Lua hook and a plugin check.
    let owner = srv.client("owner").await;
    owner
        .create_with_policy("r", "", Some("calm"))
        .await
        .unwrap();
    owner.join("r", Mode::Audio, None).await.unwrap();

    let tickers: Vec<u64> = ["conclave-lua-wa", "conclave-wasm-e"]
        .into_iter()
        .flat_map(threads_named)
        .collect();
    assert_eq!(tickers.len(), 2, "the watchdog and the epoch ticker");
    // Once their linger is over they sleep: no wake-ups at all, where a
    // running 1 kHz ticker wakes a thousand times a second.
    common::eventually("the tickers to park", || async {
        let before: Vec<u64> = tickers.iter().map(|&t| switches(t)).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tickers.iter().map(|&t| switches(t)).collect::<Vec<_>>() == before
    })
    .await;
    srv.shutdown().await;
}

/// Each class of hostile hook, with the words its failure is reported by.
const CLASSES: &[(&str, &str, &str)] = &[
    (
        "finalizer",
        // Finalizers run with the VM's hooks off: refused outright.
        "return { can_join = function() setmetatable({}, { __gc = function() while true do end end }) end }",
        "`__gc` finalizers are not allowed",
    ),
    (
        "pattern",
        // Backtracking of O(n^6) over a long subject, inside one call.
        "local s = string.rep('a', 50000) \
         return { can_join = function() return s:find('.-.-.-.-.-.-b') end }",
        "budget",
    ),
    (
        "gsub",
        // A hundred megabytes of output from a thousand replacements,
        // built inside the library: capped as it grows.
        "local s, big = string.rep('x', 1000), string.rep('y', 100000) \
         return { can_join = function() return s:gsub('x', big) end }",
        "memory",
    ),
    (
        "spin",
        "return { can_join = function() while true do end end }",
        "budget",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_hostile_hook_at_once_leaves_the_control_room_alone() {
    let _serial = alone().await;
    let srv = TestServer::start_with(|c| {
        c.policy.lua.memory_bytes = 16 * 1024 * 1024;
    })
    .await;
    for (name, source, _) in CLASSES {
        srv.script(name, source).await;
    }
    let owner = srv.client("owner").await;
    owner.create("calm", "").await.unwrap();
    let mut calm_a = srv.client("calm-a").await;
    calm_a.join("calm", Mode::Audio, None).await.unwrap();

    const EACH: usize = 3;
    let mut rooms = Vec::new();
    for (class, _, needle) in CLASSES {
        for i in 0..EACH {
            let room = format!("{class}-{i}");
            owner
                .create_with_policy(&room, "", Some(class))
                .await
                .unwrap();
            rooms.push((room, *needle));
        }
    }
    let mut guests = Vec::new();
    for (room, _) in &rooms {
        guests.push(srv.client(&format!("guest-of-{room}")).await);
    }
    // Every hostile join at once, and the control room busy all along.
    let hostile = futures_util::future::join_all(
        guests
            .iter()
            .zip(&rooms)
            .map(|(g, (room, _))| g.join(room, Mode::Audio, None)),
    );
    let control = async {
        for round in 0..5 {
            let visitor = srv.client(&format!("visitor-{round}")).await;
            visitor.join("calm", Mode::Audio, None).await.unwrap();
            assert!(matches!(
                next_event(&mut calm_a).await,
                ServerMessage::MemberJoined { .. }
            ));
            visitor.leave().await.unwrap();
            assert!(matches!(
                next_event(&mut calm_a).await,
                ServerMessage::MemberLeft { .. }
            ));
            assert_eq!(srv.get("/healthz", None).await.0, 200);
        }
    };
    let (answers, ()) = tokio::join!(hostile, control);
    for (answer, (room, needle)) in answers.into_iter().zip(&rooms) {
        let err = answer.unwrap_err();
        assert_eq!(err.status(), Some(Status::Forbidden), "{room}: {err}");
        let (_, status) = srv
            .get(&format!("/api/rooms/{room}"), Some(&srv.admin_token()))
            .await;
        let error = status["policy"]["last_error"].as_str().unwrap();
        assert!(error.contains(needle), "{room}: {error}");
        // Caught inside the VM: not quarantined, and under its cap.
        assert_eq!(status["policy"]["quarantined"], false, "{room}");
        assert!(
            status["lua_memory"].as_u64().unwrap() <= 16 * 1024 * 1024,
            "{room}: {status}"
        );
    }
    assert_eq!(overruns(&srv, "stuck").await, 0);
    srv.shutdown().await;
}
