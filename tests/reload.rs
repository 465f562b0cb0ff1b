//! Hot reload from disk: live rooms switch versions without dropping anyone,
//! broken files never replace working ones, and state survives.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{TestServer, event_where, save};
use conclave::protocol::{MediaKind, Mode, ServerMessage};
use conclave::status::Status;
use serde_json::{Value, json};

fn gate(tag: &str) -> String {
    format!(
        "return {{ can_join = function(req) if req.user == 'probe' then return false, '{tag}' end end }}"
    )
}

async fn policies(srv: &TestServer) -> Value {
    srv.get("/api/policies", Some(&srv.admin_token())).await.1
}

/// Waits until room `room` runs a version of `script` whose hash differs
/// from `not`, returning it.
async fn wait_for_new_version(srv: &TestServer, room: &str, not: &str) -> String {
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let body = policies(srv).await;
        let version = body["rooms"]
            .as_array()
            .and_then(|rooms| rooms.iter().find(|r| r["room"] == room))
            .and_then(|r| r["version"].as_str())
            .unwrap_or("")
            .to_owned();
        if !version.is_empty() && version != not {
            return version;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room {room} stayed on {not}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn probe(srv: &TestServer, room: &str) -> String {
    let probe = srv.client("probe").await;
    let err = probe.join(room, Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    err.to_string()
}

async fn version_of(srv: &TestServer, room: &str) -> String {
    let (_, info) = srv
        .get(&format!("/api/rooms/{room}"), Some(&srv.admin_token()))
        .await;
    info["policy"]["version"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_edit_reaches_live_rooms_and_a_broken_edit_never_does() {
    let srv = TestServer::start().await;
    let path = srv.data_dir.path().join("scripts/gate.lua");
    save(&path, &gate("v1"));
    common::eventually("gate v1 to load", || async {
        policies(&srv).await["scripts"][0]["version"].is_string()
    })
    .await;
    let mut member = srv.client("member").await;
    member
        .create_with_policy("r", "", Some("gate"))
        .await
        .unwrap();
    member.join("r", Mode::Audio, None).await.unwrap();
    assert!(probe(&srv, "r").await.contains("v1"));
    let v1 = version_of(&srv, "r").await;

    save(&path, &gate("v2"));
    let v2 = wait_for_new_version(&srv, "r", &v1).await;
    assert!(probe(&srv, "r").await.contains("v2"));

    // A broken save is reported and changes nothing.
    save(&path, "return { can_join = function( end }");
    common::eventually("the broken save to be reported", || async {
        policies(&srv).await["scripts"][0]["last_error"].is_string()
    })
    .await;
    let status = policies(&srv).await;
    assert!(
        status["scripts"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("gate.lua")
    );
    assert_eq!(version_of(&srv, "r").await, v2);
    assert!(probe(&srv, "r").await.contains("v2"));

    // The fix goes live and clears the error.
    save(&path, &gate("v3"));
    wait_for_new_version(&srv, "r", &v2).await;
    assert!(probe(&srv, "r").await.contains("v3"));
    assert!(policies(&srv).await["scripts"][0]["last_error"].is_null());

    // The member was never dropped.
    member.ping().await.unwrap();
    member.mute(MediaKind::Audio, true, None).await.unwrap();
    assert!(matches!(
        event_where(&mut member, |e| matches!(
            e,
            ServerMessage::MuteChanged { .. }
        )
        .then_some(e.clone()))
        .await,
        ServerMessage::MuteChanged { .. }
    ));
    srv.shutdown().await;
}

#[tokio::test]
async fn a_deleted_script_keeps_its_last_good_version() {
    let srv = TestServer::start().await;
    let path = srv.data_dir.path().join("scripts/gate.lua");
    save(&path, &gate("kept"));
    common::eventually("gate to load", || async {
        policies(&srv).await["scripts"][0]["version"].is_string()
    })
    .await;
    let owner = srv.client("owner").await;
    owner
        .create_with_policy("r", "", Some("gate"))
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    common::eventually("the deletion to be noticed", || async {
        policies(&srv).await["scripts"][0]["deleted"] == true
    })
    .await;
    assert!(probe(&srv, "r").await.contains("kept"));
    // New rooms still get the last good version.
    owner
        .create_with_policy("r2", "", Some("gate"))
        .await
        .unwrap();
    assert!(probe(&srv, "r2").await.contains("kept"));

    // The file comes back: no longer marked deleted.
    save(&path, &gate("back"));
    common::eventually("the file to be back", || async {
        policies(&srv).await["scripts"][0]["deleted"] == false
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn rapid_saves_end_on_the_last_one() {
    let srv = TestServer::start().await;
    let path = srv.data_dir.path().join("scripts/gate.lua");
    save(&path, &gate("v0"));
    common::eventually("gate to load", || async {
        policies(&srv).await["scripts"][0]["version"].is_string()
    })
    .await;
    let owner = srv.client("owner").await;
    owner
        .create_with_policy("r", "", Some("gate"))
        .await
        .unwrap();
    for i in 1..=25 {
        if i % 2 == 0 {
            std::fs::write(&path, gate(&format!("v{i}"))).unwrap(); // in place
        } else {
            save(&path, &gate(&format!("v{i}"))); // rename into place
        }
    }
    common::eventually("the last save to win", || async {
        probe(&srv, "r").await.contains("v25")
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn state_survives_and_on_reload_runs() {
    let srv = TestServer::start().await;
    let path = srv.data_dir.path().join("scripts/counter.lua");
    save(
        &path,
        "return { on_joined = function(m) room.state.joins = (room.state.joins or 0) + 1 end }",
    );
    common::eventually("counter to load", || async {
        policies(&srv).await["scripts"][0]["version"].is_string()
    })
    .await;
    let mut a = srv.client("a").await;
    let b = srv.client("b").await;
    a.create_with_policy("r", "", Some("counter"))
        .await
        .unwrap();
    a.join("r", Mode::Audio, None).await.unwrap();
    b.join("r", Mode::Audio, None).await.unwrap();
    let old = version_of(&srv, "r").await;

    save(
        &path,
        r#"return { on_reload = function(previous)
             room.send(nil, { joins = room.state.joins, previous = previous })
           end }"#,
    );
    let reloaded = event_where(&mut a, |e| match e {
        ServerMessage::Data { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reloaded, json!({ "joins": 2, "previous": old }));
    srv.shutdown().await;
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let srv = TestServer::start().await;
    let path = srv.data_dir.path().join("scripts/busy.lua");
    let version = |n: u32| {
        format!(
            "return {{ can_mute = function() return true end, on_joined = function() room.state.v = {n} end }}"
        )
    };
    save(&path, &version(0));
    common::eventually("busy to load", || async {
        policies(&srv).await["scripts"][0]["version"].is_string()
    })
    .await;

    let owner = srv.client("owner").await;
    // A member stays in each room: a room closes when its last member
    // leaves, and the workers' leaves would otherwise close it.
    let mut anchors = Vec::new();
    for i in 0..4 {
        owner
            .create_with_policy(&format!("r{i}"), "", Some("busy"))
            .await
            .unwrap();
        let anchor = srv.client(&format!("anchor{i}")).await;
        anchor
            .join(&format!("r{i}"), Mode::Audio, None)
            .await
            .unwrap();
        anchors.push(anchor);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..8 {
        let client = srv.client(&format!("w{i}")).await;
        let (stop, done) = (stop.clone(), done.clone());
        let room = format!("r{}", i % 4);
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = client.join(&room, Mode::Audio, None).await {
                    failures.push(format!("join: {e}"));
                    continue;
                }
                for muted in [true, false] {
                    if let Err(e) = client.mute(MediaKind::Audio, muted, None).await {
                        failures.push(format!("mute: {e}"));
                    }
                }
                if let Err(e) = client.leave().await {
                    failures.push(format!("leave: {e}"));
                }
                done.fetch_add(4, Ordering::Relaxed);
            }
            failures
        }));
    }
    let mut last = version_of(&srv, "r0").await;
    for n in 1..=5 {
        save(&path, &version(n));
        last = wait_for_new_version(&srv, "r0", &last).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "failed requests during reload: {failures:?}"
    );
    assert!(done.load(Ordering::Relaxed) > 0);
    srv.shutdown().await;
}

/// `conclave_policy_loads_total` for scripts, by outcome.
async fn script_loads(srv: &TestServer) -> std::collections::BTreeMap<String, u64> {
    let (_, body) = srv.get("/metrics", None).await;
    let text = body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|l| l.starts_with("conclave_policy_loads_total{kind=\"script\""))
        .filter_map(|l| {
            let outcome = l.split("outcome=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((outcome.to_owned(), value))
        })
        .collect()
}

#[tokio::test]
async fn a_broken_script_is_read_once_and_the_server_stays_quiet() {
    let srv = TestServer::start().await;
    save(
        &srv.data_dir.path().join("scripts/broken.lua"),
        "return { can_join = function( end }",
    );
    common::eventually("the broken script to be reported", || async {
        script_loads(&srv).await.get("failed") == Some(&1)
    })
    .await;
    // Reading the file makes the watcher see opens and closes, which must
    // not count as changes. Proving that nothing more happens takes a
    // window: many debounce periods (30 ms each) with no further read.
    tokio::time::sleep(srv.state().config.policy.debounce * 20).await;
    let loads = script_loads(&srv).await;
    assert_eq!(loads.values().sum::<u64>(), 1, "{loads:?}");

    // Saving the same broken text again is one more read, not another
    // compile and error report; a real change is read and compiled.
    save(
        &srv.data_dir.path().join("scripts/broken.lua"),
        "return { can_join = function( end }",
    );
    common::eventually("the unchanged save to be read", || async {
        script_loads(&srv).await.get("unchanged") == Some(&1)
    })
    .await;
    assert_eq!(script_loads(&srv).await.get("failed"), Some(&1));
    srv.shutdown().await;
}

#[tokio::test]
async fn a_misspelt_hook_is_reported_with_the_hook_it_resembles() {
    let srv = TestServer::start().await;
    srv.script(
        "typo",
        "local p = {}\nfunction p.can_joni(req) return false end\n\
         function p.helper() end\np.limit = 3\nreturn p",
    )
    .await;
    let body = policies(&srv).await;
    let warnings = &body["scripts"][0]["warnings"];
    assert_eq!(warnings.as_array().map(Vec::len), Some(2), "{body}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("`can_joni` is not a hook and is never called; did you mean `can_join`?"),
        "{body}"
    );
    assert_eq!(
        warnings[1], "`helper` is not a hook and is never called",
        "{body}"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn a_policy_that_failed_to_load_is_not_reported_as_missing() {
    let srv = TestServer::start().await;
    let path = srv.data_dir.path().join("scripts/broken.lua");
    save(&path, "return { can_join = function( end }");
    common::eventually("the broken script to be reported", || async {
        policies(&srv).await["scripts"][0]["last_error"].is_string()
    })
    .await;
    let owner = srv.client("owner").await;
    let err = owner
        .create_with_policy("r", "", Some("broken"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Internal), "{err}");
    assert!(err.to_string().contains("failed to load"), "{err}");
    assert!(err.to_string().contains("GET /api/policies"), "{err}");
    let err = owner
        .create_with_policy("r", "", Some("nonesuch"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::BadRequest), "{err}");
    assert!(
        err.to_string().contains("no room policy named `nonesuch`"),
        "{err}"
    );

    // The broken script's path is shown although it never loaded, and the
    // same way as the directory is configured, before and after a reload.
    let expected = srv
        .state()
        .config
        .policy
        .scripts_dir
        .join("broken.lua")
        .display()
        .to_string();
    assert_eq!(
        policies(&srv).await["scripts"][0]["path"],
        expected.as_str()
    );
    save(&path, &gate("fixed"));
    common::eventually("the fix to load", || async {
        policies(&srv).await["scripts"][0]["version"].is_string()
    })
    .await;
    assert_eq!(
        policies(&srv).await["scripts"][0]["path"],
        expected.as_str()
    );
    srv.shutdown().await;
}
