//! Scripts that loop, eat memory, recurse, fail or answer nonsense: each is
//! contained, reported, and decides by the failure mode; other rooms and the
//! server carry on.

mod common;

use common::{TestServer, next_event};
use conclave::policy::FailureMode;
use conclave::protocol::{MediaKind, Mode, ServerMessage};
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
        "local function f(n) return f(n + 1) + 1 end return { can_join = function() return f(1) end }",
        "",
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

#[tokio::test]
async fn errors_in_every_react_hook_are_contained() {
    let srv = TestServer::start().await;
    std::fs::write(
        srv.data_dir.path().join("scripts/grumpy.lua"),
        r#"local p = {}
        for _, hook in ipairs({"on_joined", "on_left", "on_mute_changed", "on_role_changed",
                               "on_closing", "on_timer", "on_speaking"}) do
          p[hook] = function() error(hook .. " exploded") end
        end
        return p"#,
    )
    .unwrap();
    common::eventually("the script to load", || async {
        let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
        body["scripts"][0]["version"].is_string()
    })
    .await;
    let mut alice = srv.client("alice").await;
    let bob = srv.client("bob").await;
    alice
        .create_with_policy("r", "", Some("grumpy"))
        .await
        .unwrap();
    alice.join("r", Mode::Video, None).await.unwrap();
    bob.join("r", Mode::Video, None).await.unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::MemberJoined { .. }
    ));
    bob.mute(MediaKind::Audio, true, None).await.unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::MuteChanged { .. }
    ));
    bob.set_role(conclave::protocol::Role::Audience, None)
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::RoleChanged { .. }
    ));
    // Becoming audience also mutes bob's video; then he leaves.
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::MuteChanged { .. }
    ));
    bob.leave().await.unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::MemberLeft { .. }
    ));
    let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
    // joined x2, mute, role (+ the forced video mute), left: every one reported.
    assert!(room["policy"]["errors"].as_u64().unwrap() >= 5, "{room}");
    assert!(
        room["policy"]["last_error"]
            .as_str()
            .unwrap()
            .contains("exploded")
    );
    srv.shutdown().await;
}
