//! Shadow policies and recordings through a real server: a candidate runs
//! beside the live policy, decides nothing, and its disagreements are
//! counted and listed; a failing or stuck shadow never touches the room; a
//! recorded room replays offline against another version.

mod common;

use std::time::Duration;

use common::{TestServer, eventually};
use conclave::model::Mode;
use conclave::policy::catalog::PolicyRule;
use serde_json::{Value, json};

/// The live policy: everyone in.
const LIVE: &str = r#"
local p = {}
function p.can_join(req) end
return p
"#;

/// The candidate: mallory stays out; its reactions try to act.
const STRICT: &str = r#"
local p = {}
function p.can_join(req)
  if req.user == "mallory" then return false, "not mallory" end
end
function p.on_joined(member)
  room.send(member.user, { type = "from_the_shadow" })
  room.kick(member.user)
end
return p
"#;

async fn shadow(srv: &TestServer, room: &str) -> Value {
    let (code, body) = srv
        .get(
            &format!("/api/rooms/{room}/shadow"),
            Some(&srv.admin_token()),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body["shadow"].clone()
}

#[tokio::test]
async fn a_shadow_set_by_the_admin_api_decides_nothing_and_lists_disagreements() {
    let srv = TestServer::start().await;
    srv.script("default", LIVE).await;
    srv.script("strict", STRICT).await;
    let admin = srv.admin_token();
    let mut alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    let (code, body) = srv
        .post(
            "/api/rooms/r/shadow",
            Some(&admin),
            json!({ "policy": "strict" }),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["shadow"]["version"]
            .as_str()
            .unwrap()
            .starts_with("strict@")
    );

    alice.join("r", Mode::Audio, None).await.unwrap();
    // The live policy lets mallory in: only the live verdict applies.
    let mallory = srv.client("mallory").await;
    mallory.join("r", Mode::Audio, None).await.unwrap();

    eventually("the shadow to compare both joins", || async {
        shadow(&srv, "r").await["compared"] == 2
    })
    .await;
    let status = shadow(&srv, "r").await;
    assert_eq!(status["disagreements"], 1, "{status}");
    let d = &status["recent"][0];
    assert_eq!(d["hook"], "can_join");
    assert_eq!(d["request"]["user"], "mallory");
    assert_eq!(d["live"]["verdict"], "pass");
    assert_eq!(d["shadow"]["verdict"], "deny");
    assert_eq!(d["shadow"]["reason"], "not mallory");
    assert!(d["live_version"].as_str().unwrap().starts_with("default@"));
    assert!(d["shadow_version"].as_str().unwrap().starts_with("strict@"));
    assert_eq!(
        srv.metric(r#"conclave_policy_shadow_decisions_total{outcome="disagree"}"#)
            .await,
        1.0
    );
    assert_eq!(
        srv.metric(r#"conclave_policy_shadow_decisions_total{outcome="agree"}"#)
            .await,
        1.0
    );

    // The shadow's on_joined tried to send and kick: nothing happened.
    // A ping round trip, after which anything sent before it has arrived.
    alice.ping().await.unwrap();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(1), alice.next_event()).await
    {
        let text = format!("{event:?}");
        assert!(!text.contains("from_the_shadow"), "{text}");
        assert!(!text.contains("Kicked"), "{text}");
    }
    let (_, room) = srv.get("/api/rooms/r", Some(&admin)).await;
    assert_eq!(room["members"], 2, "{room}");

    // Stopping it answers its final status; then there is none.
    let (code, body) = srv.delete("/api/rooms/r/shadow", Some(&admin)).await;
    assert_eq!(code, 200);
    assert_eq!(body["shadow"]["disagreements"], 1);
    assert!(shadow(&srv, "r").await.is_null());
}

#[tokio::test]
async fn a_shadow_over_its_budget_never_touches_the_live_room() {
    let srv = TestServer::start_with(|c| {
        c.policy.shadows = vec![PolicyRule {
            rooms: "spin-*".into(),
            policy: "spinner".into(),
        }];
        c.policy.lua.time = Duration::from_millis(200);
    })
    .await;
    srv.script("default", LIVE).await;
    srv.script(
        "spinner",
        "return { can_join = function(req) while true do end end }",
    )
    .await;
    let alice = srv.client("alice").await;
    alice.create("spin-1", "").await.unwrap();
    // The config rule gave the room its shadow; the live join goes ahead
    // while the shadow burns its own budget.
    alice.join("spin-1", Mode::Audio, None).await.unwrap();
    eventually("the shadow's failure to be counted", || async {
        shadow(&srv, "spin-1").await["failures"] == 1
    })
    .await;
    let status = shadow(&srv, "spin-1").await;
    assert_eq!(status["shadow"], Value::Null);
    assert_eq!(
        status["recent"][0]["shadow"]["verdict"], "failed",
        "{status}"
    );
    assert_eq!(status["recent"][0]["shadow"]["kind"], "budget", "{status}");
    let bob = srv.client("bob").await;
    bob.join("spin-1", Mode::Audio, None).await.unwrap();
    let (_, room) = srv.get("/api/rooms/spin-1", Some(&srv.admin_token())).await;
    assert_eq!(room["members"], 2);
    assert_eq!(
        room["policy"]["errors"], 0,
        "the live policy saw no failure"
    );
}

#[tokio::test]
async fn a_recorded_room_replays_against_another_version() {
    let srv = TestServer::start().await;
    srv.script("default", LIVE).await;
    let admin = srv.admin_token();
    let alice = srv.client("alice").await;
    alice.create("rec", "").await.unwrap();
    let (code, body) = srv
        .post("/api/rooms/rec/recording", Some(&admin), json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    let file = std::path::PathBuf::from(body["file"].as_str().unwrap());
    assert!(file.starts_with(srv.data_dir.path()), "{}", file.display());

    alice.join("rec", Mode::Audio, None).await.unwrap();
    let mallory = srv.client("mallory").await;
    mallory.join("rec", Mode::Audio, None).await.unwrap();
    let (code, _) = srv.delete("/api/rooms/rec/recording", Some(&admin)).await;
    assert_eq!(code, 200);
    eventually("the recording to be complete", || async {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains(r#""kind":"end""#))
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("start"));
    assert_eq!(kinds.iter().filter(|k| *k == "decide").count(), 2, "{text}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "decision").count(),
        2,
        "{text}"
    );

    // Offline: the strict version would have refused mallory.
    let candidate = srv.data_dir.path().join("strict.lua");
    std::fs::write(&candidate, STRICT).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["policy", "replay"])
        .arg(&file)
        .arg("--policy")
        .arg(&candidate)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains(r#""user":"mallory""#), "{report}");
    assert!(
        report.contains("2 decisions and 2 reactions replayed"),
        "{report}"
    );
    assert!(report.contains("; 1 differ"), "{report}");

    // The live version itself replays without a difference.
    let same = srv.data_dir.path().join("scripts/default.lua");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["policy", "replay"])
        .arg(&file)
        .arg("--policy")
        .arg(&same)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("; 0 differ"), "{report}");
}

#[tokio::test]
async fn a_stuck_shadow_is_dropped_and_the_room_goes_on() {
    let srv = TestServer::start_with(|c| {
        c.policy.lua.time = Duration::from_millis(300);
        // Only the watchdog can stop this one: no instruction runs.
        c.policy.lua.instructions = u64::MAX / 2;
        c.scripts.threads = 2;
        c.scripts.grace = Duration::from_millis(100);
    })
    .await;
    srv.script("default", LIVE).await;
    srv.script(
        "sorter",
        r#"
        local t = {}
        for i = 1, 100000 do t[i] = i end
        return { can_join = function(req)
          local start = os.clock()
          while os.clock() - start < 2 do table.sort(t, rawequal) end
        end }"#,
    )
    .await;
    let admin = srv.admin_token();
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    let (code, body) = srv
        .post(
            "/api/rooms/r/shadow",
            Some(&admin),
            json!({ "policy": "sorter" }),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    alice.join("r", Mode::Audio, None).await.unwrap();
    eventually("the watchdog to give up on the shadow", || async {
        shadow(&srv, "r").await["stopped"].is_string()
    })
    .await;
    let status = shadow(&srv, "r").await;
    assert!(
        status["stopped"]
            .as_str()
            .unwrap()
            .contains("did not return"),
        "{status}"
    );
    // Later joins are neither slowed nor refused, and the live policy never
    // saw a failure.
    srv.client("bob")
        .await
        .join("r", Mode::Audio, None)
        .await
        .unwrap();
    let (_, room) = srv.get("/api/rooms/r", Some(&admin)).await;
    assert_eq!(room["members"], 2);
    assert_eq!(room["policy"]["errors"], 0);
    assert_eq!(room["policy"]["quarantined"], false);
}
