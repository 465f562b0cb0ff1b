//! A permission plugin written in C on the C guest SDK (plugins/sdk-c),
//! built by tools/build-plugins, loaded by a real server and asked over the
//! real protocol: the example `blocklist` (plugins/c/blocklist.c).

mod common;

use common::TestServer;
use conclave::app::config::Config;
use conclave::client::ClientError;
use conclave::protocol::{MediaKind, Mode};
use conclave::status::Status;

/// A server running `blocklist` with the `[policy.plugins.blocklist]` TOML.
async fn server_with_blocklist(toml: &str) -> TestServer {
    let settings = Config::from_toml(toml)
        .expect("plugin config")
        .policy
        .plugins;
    TestServer::start_with(|c| {
        c.policy.plugins = settings;
        std::fs::copy(
            common::built_c_plugin("blocklist"),
            c.policy.plugins_dir.join("blocklist.wasm"),
        )
        .expect("copy plugin");
    })
    .await
}

const CONFIG: &str = r#"[policy.plugins.blocklist.config]
users = ["mallory", "trudy"]
audio_rooms = "radio-""#;

/// The status and message of a refusal; anything else fails the test.
fn refusal<T>(result: Result<T, ClientError>) -> (Status, String) {
    match result {
        Err(ClientError::Refused(failure)) => (failure.status, failure.message),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the request succeeded"),
    }
}

#[tokio::test]
async fn listed_users_are_refused_by_name_and_others_join() {
    let srv = server_with_blocklist(CONFIG).await;
    srv.client("owner").await.create("lobby", "").await.unwrap();
    for user in ["mallory", "trudy"] {
        let refused = srv
            .client(user)
            .await
            .join("lobby", Mode::Audio, None)
            .await;
        assert_eq!(
            refusal(refused),
            (
                Status::Forbidden,
                format!("{user} is blocked on this server")
            )
        );
    }
    // Whole ids only: a prefix of a listed name is someone else.
    for user in ["alice", "mall", "mallory2"] {
        srv.client(user)
            .await
            .join("lobby", Mode::Audio, None)
            .await
            .unwrap();
    }
    // The plugin loaded under its file name, and its configuration took.
    let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
    assert_eq!(body["plugins"][0]["name"], "blocklist", "{body}");
    assert!(body["plugins"][0]["version"].is_string(), "{body}");
    srv.shutdown().await;
}

#[tokio::test]
async fn audio_rooms_refuse_video_except_to_admins_and_presenters() {
    let srv = server_with_blocklist(CONFIG).await;
    let owner = srv.client("owner").await;
    for room in ["radio-1", "radio", "lobby"] {
        owner.create(room, "").await.unwrap();
    }

    // A video-mode join (the camera would start on) is refused, naming the room.
    let alice = srv.client("alice").await;
    assert_eq!(
        refusal(alice.join("radio-1", Mode::Video, None).await),
        (
            Status::Forbidden,
            "radio-1 is audio only: join in audio mode".to_owned()
        )
    );
    // In audio mode she joins, and turning her camera on is refused.
    let joined = alice.join("radio-1", Mode::Audio, None).await.unwrap();
    assert_eq!(joined.mode, Mode::Audio);
    assert_eq!(
        refusal(alice.mute(MediaKind::Video, false, None).await),
        (Status::Forbidden, "radio-1 is audio only".to_owned())
    );
    // Audio is not the plugin's business.
    alice.mute(MediaKind::Audio, true, None).await.unwrap();
    alice.mute(MediaKind::Audio, false, None).await.unwrap();

    // Rooms that do not start with the prefix are left alone.
    for room in ["lobby", "radio"] {
        let bob = srv.client("bob").await;
        bob.join(room, Mode::Video, None).await.unwrap();
        bob.mute(MediaKind::Video, true, None).await.unwrap();
        bob.mute(MediaKind::Video, false, None).await.unwrap();
    }

    // The admin flag and the token's attributes reach the plugin: admins and
    // `presenter = true` are exempt, `presenter = false` is not.
    let presenter = srv.token_with_attrs("pat", serde_json::json!({ "presenter": true }));
    for token in [srv.admin_token(), presenter] {
        let member = srv.client_with_token(&token).await;
        member.join("radio-1", Mode::Video, None).await.unwrap();
        member.mute(MediaKind::Video, true, None).await.unwrap();
        member.mute(MediaKind::Video, false, None).await.unwrap();
    }
    let listener = srv.token_with_attrs("lee", serde_json::json!({ "presenter": false }));
    let (status, message) = refusal(
        srv.client_with_token(&listener)
            .await
            .join("radio-1", Mode::Video, None)
            .await,
    );
    assert_eq!(status, Status::Forbidden);
    assert!(message.contains("join in audio mode"), "{message}");
    srv.shutdown().await;
}

#[tokio::test]
async fn an_unknown_config_key_keeps_the_plugin_from_loading() {
    let srv = server_with_blocklist(
        "[policy.plugins.blocklist.config]\nuser = \"mallory\"\n", // `users`, misspelt
    )
    .await;
    let (_, body) = srv.get("/api/policies", Some(&srv.admin_token())).await;
    let error = body["plugins"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("refused its configuration"), "{body}");
    // Not loaded, so not asked: nobody is refused.
    let mallory = srv.client("mallory").await;
    mallory.create("lobby", "").await.unwrap();
    mallory.join("lobby", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn a_configuration_larger_than_the_initial_memory_fits() {
    // About 250 KB of configuration text, where the module starts with two
    // 64 KiB pages: the SDK's allocator has to grow memory to take it.
    let users: Vec<String> = (0..25_000).map(|i| format!("user{i:05}")).collect();
    let srv = server_with_blocklist(&format!(
        "[policy.plugins.blocklist.config]\nusers = {users:?}\n"
    ))
    .await;
    srv.client("owner").await.create("lobby", "").await.unwrap();
    let refused = srv
        .client("user24999")
        .await
        .join("lobby", Mode::Audio, None)
        .await;
    assert_eq!(
        refusal(refused),
        (
            Status::Forbidden,
            "user24999 is blocked on this server".to_owned()
        )
    );
    srv.client("user25000")
        .await
        .join("lobby", Mode::Audio, None)
        .await
        .unwrap();
    srv.shutdown().await;
}
