//! Scripts that loop, eat memory, recurse, fail or answer nonsense: each is
//! contained, reported, and decides by the failure mode; other rooms and the
//! server carry on.

mod common;

use common::media::Participant;
use common::{TestServer, next_event};
use conclave::policy::FailureMode;
use conclave::protocol::{MediaKind, Mode, Role, ServerMessage};
use conclave::status::Status;

const HOSTILE: &[(&str, &str, &str)] = &[
    (
        "spin",
        "return { can_join = function() while true do end end }",
        "budget",
    ),
    (
        "bomb",
        "return { can_join = function() local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 4096) .. i end end }",
        "memory",
    ),
    (
        "deep",
        // Each lookup re-enters the VM from C: the C-stack limit, reached
        // long before the memory limit is.
        "local t = setmetatable({}, { __index = function(t, k) return t[k] end }) \
         return { can_join = function() return t.x end }",
        "stack overflow",
    ),
    (
        "raises",
        "return { can_join = function() error('no entry today') end }",
        "no entry today",
    ),
    (
        "nonsense",
        "return { can_join = function() return 42 end }",
        "returned a integer",
    ),
    (
        "not_a_function",
        "return { can_join = 'yes' }",
        "not a function",
    ),
];

fn write_scripts(dir: &std::path::Path) {
    for (name, source, _) in HOSTILE {
        std::fs::write(dir.join(format!("{name}.lua")), source).unwrap();
    }
    std::fs::write(dir.join("calm.lua"), "return {}").unwrap();
}

#[tokio::test]
async fn hostile_decide_hooks_fail_closed_and_are_reported() {
    let srv = TestServer::start_with(|c| {
        // Generous time so each hostile script meets the limit it is
        // aimed at (the spinner the instruction budget, the bomb memory)
        // however busy the machine is.
        c.policy.lua.memory_bytes = 8 * 1024 * 1024;
        c.policy.lua.instructions = 20_000_000;
        c.policy.lua.time = std::time::Duration::from_secs(30);
    })
    .await;
    write_scripts(&srv.data_dir.path().join("scripts"));
    // Written after start: the watcher loads them.
    let owner = srv.client("owner").await;
    common::eventually("the hostile scripts to load", || async {
        let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
        body["scripts"].as_array().map_or(0, |s| s.len()) == HOSTILE.len() + 1
    })
    .await;

    // A calm room keeps working all along.
    owner
        .create_with_policy("calm", "", Some("calm"))
        .await
        .unwrap();
    let mut calm_a = srv.client("calm-a").await;
    let calm_b = srv.client("calm-b").await;
    calm_a.join("calm", Mode::Audio, None).await.unwrap();
    calm_b.join("calm", Mode::Audio, None).await.unwrap();
    next_event(&mut calm_a).await;

    for (name, _, needle) in HOSTILE {
        owner
            .create_with_policy(name, "", Some(name))
            .await
            .unwrap();
        let guest = srv.client("guest").await;
        let err = guest.join(name, Mode::Audio, None).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::Forbidden), "{name}: {err}");
        // The client learns the kind of failure, not the script's insides.
        let told = err.to_string();
        assert!(
            told.contains(&format!("the room policy `{name}` failed")),
            "{told}"
        );
        assert!(!told.contains(".lua:"), "no script path or line: {told}");

        // The operator sees the script, version and message.
        let (_, room) = srv
            .get(&format!("/api/rooms/{name}"), Some(&srv.admin_token()))
            .await;
        assert_eq!(room["policy"]["errors"], 1, "{name}: {room}");
        let detail = room["policy"]["last_error"].as_str().unwrap();
        assert!(detail.contains(&format!("{name}@")), "{detail}");
        assert!(detail.contains(needle), "{name}: {detail}");
        assert_eq!(room["members"], 0, "{name}: nobody got in");

        calm_b.mute(MediaKind::Audio, true, None).await.unwrap();
        assert!(matches!(
            next_event(&mut calm_a).await,
            ServerMessage::MuteChanged { .. }
        ));
        calm_b.mute(MediaKind::Audio, false, None).await.unwrap();
        assert!(matches!(
            next_event(&mut calm_a).await,
            ServerMessage::MuteChanged { .. }
        ));
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn fail_open_lets_the_action_through() {
    let srv = TestServer::start_with(|c| c.policy.failure_mode = FailureMode::Allow).await;
    std::fs::write(
        srv.data_dir.path().join("scripts/raises.lua"),
        "return { can_join = function() error('broken') end }",
    )
    .unwrap();
    common::eventually("the script to load", || async {
        let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
        body["scripts"][0]["version"].is_string()
    })
    .await;
    let alice = srv.client("alice").await;
    alice
        .create_with_policy("r", "", Some("raises"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
    assert_eq!(room["policy"]["errors"], 1);
    srv.shutdown().await;
}

/// `conclave_policy_failures_total` for `hook`, kind `error`.
async fn failures(srv: &TestServer, hook: &str) -> u64 {
    let name = format!("conclave_policy_failures_total{{hook=\"{hook}\",kind=\"error\"}}");
    srv.metric(&name).await as u64
}

#[tokio::test]
async fn errors_in_every_react_hook_are_contained() {
    let srv = TestServer::start().await;
    srv.script(
        "grumpy",
        r#"local p = {}
        -- A decide hook's actions apply when its request succeeds: bob's
        -- join sets the timer whose hook then fails.
        function p.can_join(req) if req.user == "bob" then room.after(10, "t") end end
        for _, hook in ipairs({"on_joined", "on_left", "on_mute_changed", "on_role_changed",
                               "on_screen_share_changed", "on_closing", "on_timer",
                               "on_speaking"}) do
          p[hook] = function() error(hook .. " exploded") end
        end
        return p"#,
    )
    .await;
    srv.client("owner")
        .await
        .create_with_policy("r", "", Some("grumpy"))
        .await
        .unwrap();
    let alice = Participant::join(&srv, "alice", "r", Mode::Video, Role::Interactor).await;
    let bob = Participant::join(&srv, "bob", "r", Mode::Video, Role::Interactor).await;
    let expect = |hook: &'static str, n: u64| {
        let srv = &srv;
        async move {
            common::eventually(&format!("{n} failure(s) of {hook}"), || async {
                failures(srv, hook).await >= n
            })
            .await;
            assert_eq!(failures(srv, hook).await, n, "{hook}");
        }
    };
    expect("on_joined", 2).await;
    expect("on_timer", 1).await;
    bob.client.share_screen(true, None).await.unwrap();
    expect("on_screen_share_changed", 1).await;
    bob.client.mute(MediaKind::Audio, true, None).await.unwrap();
    expect("on_mute_changed", 1).await;
    // Becoming audience also mutes bob's video and stops his share.
    bob.client.set_role(Role::Audience, None).await.unwrap();
    expect("on_role_changed", 1).await;
    expect("on_mute_changed", 2).await;
    expect("on_screen_share_changed", 2).await;
    // Alice speaks (real media, real levels) until the hook has failed.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut n = 0u32;
    while failures(&srv, "on_speaking").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "on_speaking never ran"
        );
        alice
            .media
            .send_audio(format!("loud:{n}").as_bytes(), n * 960, 10)
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    bob.client.leave().await.unwrap();
    expect("on_left", 1).await;
    // The room answered everything; its last error names the hook.
    let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
    assert!(
        room["policy"]["last_error"]
            .as_str()
            .unwrap()
            .contains("exploded"),
        "{room}"
    );
    let (status, _) = srv.delete("/api/rooms/r", Some(&srv.admin_token())).await;
    assert_eq!(status, 200);
    expect("on_closing", 1).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn side_effects_past_their_limits_fail_the_hook_and_are_counted() {
    let srv = TestServer::start_with(|c| {
        let e = &mut c.policy.effects;
        e.actions_per_call = 10;
        e.message_bytes_per_call = 1000;
        e.timers_per_room = 5;
        e.metadata_bytes = 200;
        e.store_keys = 5;
        e.store_bytes = 1000;
    })
    .await;
    srv.script(
        "greedy",
        r#"return { can_join = function(req)
          local u = req.user
          if u == "actions" then for i = 1, 11 do room.send(nil, { i = i }) end
          elseif u == "message_bytes" then room.send(nil, { blob = string.rep("x", 1200) })
          elseif u == "timers" then for i = 1, 6 do room.after(60000, "t" .. i) end
          elseif u == "metadata" then room.set_metadata("blob", string.rep("x", 300))
          elseif u == "store_keys" then for i = 1, 6 do store.set("k" .. i, i) end
          elseif u == "store_bytes" then store.set("big", string.rep("x", 1200))
          end
        end }"#,
    )
    .await;
    let owner = srv.client("owner").await;
    owner
        .create_with_policy("r", "", Some("greedy"))
        .await
        .unwrap();
    for (user, limit) in [
        ("actions", "actions_per_call"),
        ("message_bytes", "message_bytes_per_call"),
        ("timers", "timers_per_room"),
        ("metadata", "metadata_bytes"),
        // Store writes apply as they are made: the bytes first, while
        // there are keys to spare.
        ("store_bytes", "store_bytes"),
        ("store_keys", "store_keys"),
    ] {
        let client = srv.client(user).await;
        let err = client.join("r", Mode::Audio, None).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::Forbidden), "{user}: {err}");
        let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
        let error = room["policy"]["last_error"].as_str().unwrap();
        // The script's line, and the key to raise.
        assert!(error.contains("greedy.lua:"), "{user}: {error}");
        assert!(
            error.contains(&format!("policy.effects.{limit}")),
            "{user}: {error}"
        );
        let counted = format!("conclave_policy_limits_total{{limit=\"{limit}\"}}");
        assert_eq!(srv.metric(&counted).await, 1.0, "{limit}");
    }
    // No queued action of a failed hook applied: no metadata.
    let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
    assert_eq!(room["metadata"], serde_json::json!({}), "{room}");
    // Within the limits, the same calls go through.
    let fine = srv.client("fine").await;
    fine.join("r", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}
