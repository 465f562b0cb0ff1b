//! Wasm permission plugins through a real server: the example plugins, and
//! hostile ones that are contained and reported.

mod common;

use std::path::Path;

use common::{TestServer, built_plugin};
use conclave::app::config::Config;
use conclave::protocol::{MediaKind, Mode};
use conclave::status::Status;

/// `[policy.plugins.*]` settings from TOML, as an operator writes them.
fn plugin_settings(c: &mut Config, toml: &str) {
    c.policy.plugins = Config::from_toml(toml)
        .expect("plugin config")
        .policy
        .plugins;
}

fn install(c: &Config, file: &Path, as_name: &str) {
    std::fs::copy(file, c.policy.plugins_dir.join(as_name)).expect("copy plugin");
}

fn install_wat(c: &Config, name: &str, wat: &str) {
    std::fs::write(c.policy.plugins_dir.join(format!("{name}.wat")), wat).expect("write plugin");
}

/// A plugin module in WAT whose `conclave_check` body is `check`.
fn module(version: i32, check: &str) -> String {
    format!(
        r#"(module
          (memory (export "memory") 1)
          (func (export "conclave_abi_version") (result i32) i32.const {version})
          (func (export "conclave_alloc") (param i32) (result i32) i32.const 1024)
          (func (export "conclave_check") (param i32 i32) (result i32) {check}))"#
    )
}

async fn join_error(srv: &TestServer, user: &str, room: &str) -> (Status, String) {
    let client = srv.client(user).await;
    let err = client.join(room, Mode::Audio, None).await.unwrap_err();
    (err.status().expect("a refusal"), err.to_string())
}

#[tokio::test]
async fn allowlist_guards_matching_rooms() {
    let srv = TestServer::start_with(|c| {
        plugin_settings(
            c,
            r#"[policy.plugins.allowlist.config]
               rooms = "vip-*"
               users = ["alice", "carol"]
               attr = "vip""#,
        );
        install(c, &built_plugin("allowlist"), "allowlist.wasm");
    })
    .await;
    let owner = srv.client("owner").await;
    owner.create("vip-lounge", "").await.unwrap();
    owner.create("lobby", "").await.unwrap();
    let (status, message) = join_error(&srv, "bob", "vip-lounge").await;
    assert_eq!(status, Status::Forbidden);
    assert!(message.contains("listed users only"), "{message}");
    srv.client("alice")
        .await
        .join("vip-lounge", Mode::Audio, None)
        .await
        .unwrap();
    srv.client("bob")
        .await
        .join("lobby", Mode::Audio, None)
        .await
        .unwrap();
    // The token's attributes reach the plugin: `vip = true` admits dave.
    let vip = srv.token_with_attrs("dave", serde_json::json!({ "vip": true }));
    srv.client_with_token(&vip)
        .await
        .join("vip-lounge", Mode::Audio, None)
        .await
        .unwrap();
    let not_vip = srv.token_with_attrs("erin", serde_json::json!({ "vip": false }));
    let err = srv
        .client_with_token(&not_vip)
        .await
        .join("vip-lounge", Mode::Audio, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
    assert!(body["plugins"][0]["version"].is_string(), "{body}");
    srv.shutdown().await;
}

/// `HH:MM` in UTC, `hours` from now.
fn utc_in(hours: i64) -> String {
    let now_min = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 60;
    let m = (now_min + hours * 60).rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[tokio::test]
async fn timewindow_reads_the_host_clock() {
    let closed = format!(
        "[policy.plugins.timewindow.config]\nopen = \"{}\"\nclose = \"{}\"\n",
        utc_in(2),
        utc_in(3)
    );
    let srv = TestServer::start_with(|c| {
        plugin_settings(c, &closed);
        install(c, &built_plugin("timewindow"), "timewindow.wasm");
    })
    .await;
    srv.client("owner").await.create("r", "").await.unwrap();
    let (status, message) = join_error(&srv, "alice", "r").await;
    assert_eq!(status, Status::Forbidden);
    assert!(message.contains("closed at this hour"), "{message}");
    srv.shutdown().await;

    let open = format!(
        "[policy.plugins.timewindow.config]\nopen = \"{}\"\nclose = \"{}\"\n",
        utc_in(-1),
        utc_in(1)
    );
    let srv = TestServer::start_with(|c| {
        plugin_settings(c, &open);
        install(c, &built_plugin("timewindow"), "timewindow.wasm");
    })
    .await;
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn ratelimit_keeps_state_between_checks() {
    let srv = TestServer::start_with(|c| {
        plugin_settings(
            c,
            "[policy.plugins.ratelimit.config]\nmax = 2\nwindow_secs = 60\n",
        );
        install(c, &built_plugin("ratelimit"), "ratelimit.wasm");
    })
    .await;
    let boss = srv.client_with_token(&srv.admin_token()).await;
    let alice = srv.client("alice").await;
    boss.create("r", "").await.unwrap();
    boss.join("r", Mode::Audio, None).await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    boss.mute(MediaKind::Audio, true, Some("alice"))
        .await
        .unwrap();
    boss.mute(MediaKind::Audio, false, Some("alice"))
        .await
        .unwrap();
    let err = boss
        .mute(MediaKind::Audio, true, Some("alice"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::RateLimited), "{err}");
    assert!(err.to_string().contains("too many mutes"));
    // Muting oneself is not muting others.
    boss.mute(MediaKind::Audio, true, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn a_hand_written_wat_plugin_speaks_the_same_abi() {
    let srv = TestServer::start_with(|c| {
        let wat = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/wat/audio_only.wat");
        install(c, &wat, "audio_only.wat");
    })
    .await;
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    // The join's mode reaches the plugin (as the request's kind): a video
    // join, which would start with the camera on, is refused.
    let err = alice.join("r", Mode::Video, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    assert!(err.to_string().contains("join in audio mode"), "{err}");
    let joined = alice.join("r", Mode::Audio, None).await.unwrap();
    assert_eq!(joined.mode, Mode::Audio);
    alice.mute(MediaKind::Audio, true, None).await.unwrap();
    alice.mute(MediaKind::Audio, false, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn misbehaving_plugins_fail_closed_and_the_server_carries_on() {
    let cases = [
        (
            "spin",
            "(loop $l (br $l)) i32.const 0",
            "time budget exceeded",
        ),
        // Grows until refused; traps only if the refusal came at the cap
        // (16 MiB, 256 pages): without a cap it would get more and allow.
        (
            "hog",
            "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) \
             (if (i32.le_u (memory.size) (i32.const 256)) (then unreachable)) i32.const 1",
            "trapped",
        ),
        ("trap", "unreachable", "trapped"),
        ("garbage", "i32.const 7", "not a verdict"),
    ];
    for (name, body, needle) in cases {
        let srv = TestServer::start_with(|c| install_wat(c, name, &module(1, body))).await;
        // Creating is checked too (and refused); the admin API is not.
        let err = srv.client("owner").await.create("r", "").await.unwrap_err();
        assert_eq!(err.status(), Some(Status::Forbidden), "{name}: {err}");
        let (status, _) = srv
            .post(
                "/api/rooms",
                Some(&srv.admin_token()),
                serde_json::json!({"room": "r"}),
            )
            .await;
        assert_eq!(status, 201);
        let (status, message) = join_error(&srv, "alice", "r").await;
        assert_eq!(status, Status::Forbidden, "{name}: {message}");
        assert!(
            message.contains("permission check failed"),
            "{name}: {message}"
        );
        assert!(message.contains(needle), "{name}: {message}");
        let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
        assert!(
            room["policy"]["last_error"]
                .as_str()
                .unwrap()
                .contains(name),
            "{room}"
        );
        // The server still serves: a second try is answered the same way,
        // from a fresh instance.
        let (status, _) = join_error(&srv, "bob", "r").await;
        assert_eq!(status, Status::Forbidden);
        srv.shutdown().await;
    }
}

#[tokio::test]
async fn fail_open_plugins_are_skipped_when_they_fail() {
    let srv = TestServer::start_with(|c| {
        plugin_settings(c, "[policy.plugins.spin]\nfailure_mode = \"allow\"\n");
        install_wat(c, "spin", &module(1, "(loop $l (br $l)) i32.const 0"));
    })
    .await;
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    // Skipped, not absent: the plugin ran for the create and the join, and
    // each time ran out of time.
    let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
    assert_eq!(room["policy"]["errors"], 2, "{room}");
    assert!(
        room["policy"]["last_error"]
            .as_str()
            .unwrap()
            .contains("time budget exceeded"),
        "{room}"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn broken_modules_are_refused_at_load_with_the_reason() {
    let srv = TestServer::start_with(|c| {
        install_wat(c, "future", &module(2, "i32.const 0"));
        install_wat(
            c,
            "incomplete",
            r#"(module (memory (export "memory") 1)
                 (func (export "conclave_abi_version") (result i32) i32.const 1))"#,
        );
        install_wat(
            c,
            "wasi",
            r#"(module (import "wasi_snapshot_preview1" "fd_write"
                 (func (param i32 i32 i32 i32) (result i32))))"#,
        );
        std::fs::write(c.policy.plugins_dir.join("junk.wasm"), b"\0asm garbage").unwrap();
        // A valid module, one byte past the size cap: never compiled.
        let cap = c.policy.wasm.module_bytes;
        let mut huge = String::from("(module)\n;;");
        huge.push_str(&"x".repeat(cap + 1 - huge.len()));
        std::fs::write(c.policy.plugins_dir.join("huge.wat"), huge).unwrap();
        // Not even the magic number: still reported as a bad binary, never
        // as a text-format syntax error.
        std::fs::write(c.policy.plugins_dir.join("noise.wasm"), b"hello world").unwrap();
        std::fs::write(c.policy.plugins_dir.join("typo.wat"), b"(module (memory)").unwrap();
        install(c, &built_plugin("allowlist"), "allowlist.wasm");
        plugin_settings(
            c,
            "[policy.plugins.allowlist.config]\nrooms = \"vip-*\"\nusers = \"alice\"\n",
        );
    })
    .await;
    let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
    let errors: std::collections::BTreeMap<String, String> = body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["last_error"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert!(errors["future"].contains("ABI version 2"), "{errors:?}");
    assert!(
        errors["incomplete"].contains("missing export `conclave_alloc`"),
        "{errors:?}"
    );
    assert!(errors["wasi"].contains("cannot instantiate"), "{errors:?}");
    for binary in ["junk", "noise"] {
        assert!(
            errors[binary].contains("not a valid WebAssembly binary"),
            "{errors:?}"
        );
    }
    assert!(
        errors["typo"].contains("not valid WebAssembly text"),
        "{errors:?}"
    );
    assert!(
        errors["huge"].contains("policy.wasm.module_bytes"),
        "{errors:?}"
    );
    assert!(!errors.contains_key("allowlist"));
    // The one good plugin works; the broken ones are not consulted.
    srv.client("owner").await.create("vip-1", "").await.unwrap();
    let (status, _) = join_error(&srv, "bob", "vip-1").await;
    assert_eq!(status, Status::Forbidden);
    srv.client("alice")
        .await
        .join("vip-1", Mode::Audio, None)
        .await
        .unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn a_dropped_in_plugin_takes_effect_in_live_rooms() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Video, None).await.unwrap();
    alice.mute(MediaKind::Video, true, None).await.unwrap();
    alice.mute(MediaKind::Video, false, None).await.unwrap();
    let wat = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/wat/audio_only.wat");
    common::save(
        &srv.data_dir.path().join("plugins/audio_only.wat"),
        &std::fs::read_to_string(wat).unwrap(),
    );
    alice.mute(MediaKind::Video, true, None).await.unwrap();
    common::eventually("the new plugin to be enforced", || async {
        match alice.mute(MediaKind::Video, false, None).await {
            Ok(()) => false,
            // The plugin's own refusal, nothing else (a dropped connection
            // would be an error too).
            Err(e) => {
                assert_eq!(e.status(), Some(Status::Forbidden), "{e}");
                assert!(e.to_string().contains("video is disabled"), "{e}");
                true
            }
        }
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_deleted_plugin_runs_until_an_admin_unloads_it() {
    let srv = TestServer::start_with(|c| {
        let wat = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/wat/audio_only.wat");
        install(c, &wat, "audio_only.wat");
    })
    .await;
    let admin = srv.admin_token();
    let owner = srv.client("owner").await;
    owner.create("r", "").await.unwrap();
    let video_join = |user: &'static str| {
        let srv = &srv;
        async move { srv.client(user).await.join("r", Mode::Video, None).await }
    };
    let refused_by_the_plugin = |result: Result<_, conclave::client::ClientError>| match result {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(e.status(), Some(Status::Forbidden), "{e}");
            assert!(e.to_string().contains("join in audio mode"), "{e}");
            true
        }
    };
    assert!(refused_by_the_plugin(video_join("a").await));

    // Unloading a plugin whose file is still there would not last: refused.
    let (status, body) = srv.delete("/api/plugins/audio_only", Some(&admin)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("still exists"),
        "{body}"
    );
    let (status, _) = srv.delete("/api/plugins/nonesuch", Some(&admin)).await;
    assert_eq!(status, 404);

    // Deleting the file keeps the last good version enforcing.
    std::fs::remove_file(srv.data_dir.path().join("plugins/audio_only.wat")).unwrap();
    common::eventually("the deletion to be noticed", || async {
        let (_, body) = srv.get("/api/policies", Some(&admin)).await;
        body["plugins"][0]["deleted"] == true
    })
    .await;
    assert!(refused_by_the_plugin(video_join("b").await));

    // The admin confirms: the plugin is gone from every room.
    let (status, body) = srv.delete("/api/plugins/audio_only", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = srv.get("/api/policies", Some(&admin)).await;
    assert_eq!(body["plugins"], serde_json::json!([]), "{body}");
    let late = srv.client("c").await;
    common::eventually("the room to stop consulting the plugin", || async {
        late.join("r", Mode::Video, None).await.is_ok()
    })
    .await;
    srv.shutdown().await;
}

/// A plugin that denies, with `reason`, every `deny_on`th check of its
/// instance (counting in a global), and traps on the `trap_on`th (0: never).
fn counting(reason: &str, deny_on: i32, trap_on: i32) -> String {
    format!(
        r#"(module
          (import "conclave" "deny_reason" (func $reason (param i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{reason}")
          (global $n (mut i32) (i32.const 0))
          (func (export "conclave_abi_version") (result i32) i32.const 1)
          (func (export "conclave_alloc") (param i32) (result i32) i32.const 1024)
          (func (export "conclave_check") (param i32 i32) (result i32)
            global.get $n i32.const 1 i32.add global.set $n
            global.get $n i32.const {trap_on} i32.eq
            if unreachable end
            global.get $n i32.const {deny_on} i32.eq
            if (result i32) i32.const 16 i32.const {len} call $reason i32.const 403
            else i32.const 0 end))"#,
        len = reason.len()
    )
}

/// A plugin that denies every check, with `reason`.
fn denying(reason: &str) -> String {
    format!(
        r#"(module
          (import "conclave" "deny_reason" (func $reason (param i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{reason}")
          (func (export "conclave_abi_version") (result i32) i32.const 1)
          (func (export "conclave_alloc") (param i32) (result i32) i32.const 1024)
          (func (export "conclave_check") (param i32 i32) (result i32)
            i32.const 16 i32.const {len} call $reason i32.const 403))"#,
        len = reason.len()
    )
}

/// Rooms made through the admin API, which asks no plugin.
async fn admin_room(srv: &TestServer, room: &str) {
    let (status, body) = srv
        .post(
            "/api/rooms",
            Some(&srv.admin_token()),
            serde_json::json!({ "room": room }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn every_plugin_is_asked_in_name_order_and_the_first_deny_wins() {
    let srv = TestServer::start_with(|c| {
        install_wat(c, "a_allow", &module(1, "i32.const 1"));
        install_wat(c, "b_deny", &counting("b says no", 1, 0));
        install_wat(c, "c_deny", &counting("c says no", 1, 0));
    })
    .await;
    admin_room(&srv, "r").await;
    // An allow does not end the asking: b's deny wins, c is not reached.
    let (status, message) = join_error(&srv, "alice", "r").await;
    assert_eq!(status, Status::Forbidden);
    assert!(message.ends_with(": b says no"), "{message}");
    srv.shutdown().await;
}

#[tokio::test]
async fn each_room_has_its_own_instance_and_a_failed_one_starts_over() {
    let srv = TestServer::start_with(|c| install_wat(c, "third", &counting("third", 3, 0))).await;
    admin_room(&srv, "one").await;
    admin_room(&srv, "two").await;
    for user in ["a", "b"] {
        srv.client(user)
            .await
            .join("one", Mode::Audio, None)
            .await
            .unwrap();
    }
    let (_, message) = join_error(&srv, "c", "one").await;
    assert!(message.contains("third"), "{message}");
    // Room two counts on its own: its first check is its instance's first.
    srv.client("d")
        .await
        .join("two", Mode::Audio, None)
        .await
        .unwrap();
    srv.shutdown().await;

    // Traps on the second check; the third gets a fresh instance whose
    // count starts again (the trapped one would deny it: its third).
    let srv = TestServer::start_with(|c| install_wat(c, "fragile", &counting("third", 3, 2))).await;
    admin_room(&srv, "r").await;
    srv.client("a")
        .await
        .join("r", Mode::Audio, None)
        .await
        .unwrap();
    let (_, message) = join_error(&srv, "b", "r").await;
    assert!(message.contains("trapped"), "{message}");
    srv.client("c")
        .await
        .join("r", Mode::Audio, None)
        .await
        .unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn a_replaced_plugin_takes_over_in_live_rooms() {
    let srv = TestServer::start_with(|c| install_wat(c, "gate", &denying("v1"))).await;
    admin_room(&srv, "r").await;
    let (_, message) = join_error(&srv, "a", "r").await;
    assert!(message.contains("v1"), "{message}");
    common::save(
        &srv.data_dir.path().join("plugins/gate.wat"),
        &denying("v2"),
    );
    common::eventually("the room to ask the new version", || async {
        join_error(&srv, "a", "r").await.1.contains("v2")
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn no_instance_left_answers_500() {
    let srv = TestServer::start_with(|c| {
        c.policy.wasm.max_instances = 1;
        install_wat(c, "solo", &module(1, "i32.const 0"));
    })
    .await;
    admin_room(&srv, "one").await;
    admin_room(&srv, "two").await;
    // Room one takes the only instance, and keeps it.
    srv.client("a")
        .await
        .join("one", Mode::Audio, None)
        .await
        .unwrap();
    let (status, message) = join_error(&srv, "b", "two").await;
    assert_eq!(status, Status::Internal, "{message}");
    assert!(message.contains("cannot instantiate"), "{message}");
    srv.shutdown().await;
}
