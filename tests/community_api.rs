//! The community REST API over real HTTP: what it stores (across a
//! restart), media channel settings, the manage keys for members, and the
//! rule that nobody grants what they do not hold.

mod common;

use common::TestServer;
use common::community::allow;
use serde_json::{Value, json};

#[tokio::test]
async fn the_model_survives_a_restart() {
    let mut srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice"]).await;
    let role = srv
        .role(server, "speaker", 20, allow(&["RTCChannelOpenCamera"]))
        .await;
    srv.give(server, "alice", role).await;
    let channel = srv.media_channel(server, "stage").await;
    srv.op(
        "PATCH",
        &format!("/servers/{server}/channels/{channel}/settings"),
        json!({"member_limit": 7, "audio_profile": "high_quality", "audio_scenario": "music",
               "video": {"width": 1280, "height": 720}}),
    )
    .await;
    srv.op(
        "PATCH",
        &format!("/servers/{server}/channels/{channel}/roles/{role}"),
        json!({"RTCChannelOpenMicrophone": "deny"}),
    )
    .await;
    srv.op(
        "PUT",
        &format!("/servers/{server}/channels/{channel}/lists/black/members/alice"),
        Value::Null,
    )
    .await;
    let before = srv
        .op("GET", &format!("/servers/{server}"), Value::Null)
        .await;

    srv.stop().await;
    let dir = srv.data_dir.path().to_path_buf();
    let again = TestServer::start_with(|c| c.server.data_dir = dir.clone()).await;
    let after = again
        .op("GET", &format!("/servers/{server}"), Value::Null)
        .await;
    assert_eq!(before, after);
    let settings = &after["channels"][0]["settings"];
    assert_eq!(settings["member_limit"], 7);
    assert_eq!(settings["audio_profile"], "high_quality");
    assert_eq!(
        settings["video"],
        json!({"width": 1280, "height": 720, "fps": 15})
    );
    // New ids never collide with stored ones.
    let next = again.media_channel(server, "second").await;
    assert!(next > channel && next > role);
    again.shutdown().await;
}

#[tokio::test]
async fn settings_have_defaults_and_bad_values_are_refused() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &[]).await;
    let channel = srv.media_channel(server, "stage").await;
    let path = format!("/servers/{server}/channels/{channel}/settings");
    let settings = srv.op("GET", &path, Value::Null).await;
    assert_eq!(
        settings,
        json!({"member_limit": 99, "audio_profile": "default", "audio_scenario": "default",
               "video": {"width": 640, "height": 480, "fps": 15}})
    );
    let admin = srv.admin_token();
    let url = format!("/api/community{path}");
    let (status, body) = srv
        .patch(&url, Some(&admin), json!({"member_limit": 0}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("member_limit"));
    let (status, _) = srv
        .patch(&url, Some(&admin), json!({"video": {"fps": 240}}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = srv
        .patch(&url, Some(&admin), json!({"audio_profile": "loud"}))
        .await;
    assert_eq!(status, 400);
    srv.shutdown().await;
}

/// Bob is a plain member; each manage key is refused with 403 naming it.
#[tokio::test]
async fn every_manage_key_is_enforced_and_named() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["bob"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let base = format!("/servers/{server}");
    let attempts = [
        (
            "manageServer",
            srv.as_user("bob", "PATCH", &base, json!({"name": "mine"}))
                .await,
        ),
        (
            "manageChannel",
            srv.as_user(
                "bob",
                "POST",
                &format!("{base}/channels"),
                json!({"name": "x", "kind": "media"}),
            )
            .await,
        ),
        (
            "manageChannel",
            srv.as_user(
                "bob",
                "PATCH",
                &format!("{base}/channels/{channel}/settings"),
                json!({"member_limit": 2}),
            )
            .await,
        ),
        (
            "manageRole",
            srv.as_user(
                "bob",
                "POST",
                &format!("{base}/roles"),
                json!({"name": "x", "priority": 5}),
            )
            .await,
        ),
        (
            "manageBlackWhiteList",
            srv.as_user(
                "bob",
                "PUT",
                &format!("{base}/channels/{channel}/lists/black/members/olivia"),
                Value::Null,
            )
            .await,
        ),
    ];
    for (key, (status, body)) in attempts {
        assert_eq!(status, 403, "{key}: {body}");
        assert_eq!(body["code"], 403);
        assert_eq!(body["message"], format!("missing permission {key}"));
    }
    // A stranger reads nothing.
    let (status, _) = srv.as_user("eve", "GET", &base, Value::Null).await;
    assert_eq!(status, 403);
    srv.shutdown().await;
}

#[tokio::test]
async fn members_with_manage_keys_manage_within_what_they_hold() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["mod", "bob"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let moderator = srv
        .role(
            server,
            "moderator",
            10,
            allow(&[
                "manageRole",
                "manageChannel",
                "manageBlackWhiteList",
                "RTCChannelOpenCloseOtherMicrophone",
            ]),
        )
        .await;
    srv.give(server, "mod", moderator).await;
    let base = format!("/servers/{server}");

    // Within what they hold: a role ranked below theirs, allowing a key they hold.
    let (status, body) = srv
        .as_user(
            "mod",
            "POST",
            &format!("{base}/roles"),
            json!({"name": "helper", "priority": 20,
                   "permissions": {"RTCChannelOpenCloseOtherMicrophone": "allow"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let helper = body["id"].as_u64().unwrap();
    let (status, body) = srv
        .as_user(
            "mod",
            "PUT",
            &format!("{base}/members/bob/roles/{helper}"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Listed first: once private, a channel is managed only by those who see it.
    for role in [helper, moderator] {
        let (status, _) = srv
            .as_user(
                "mod",
                "PUT",
                &format!("{base}/channels/{channel}/lists/white/roles/{role}"),
                Value::Null,
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = srv
        .as_user(
            "mod",
            "PATCH",
            &format!("{base}/channels/{channel}"),
            json!({"visibility": "private"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, effective) = srv
        .as_user(
            "mod",
            "GET",
            &format!("{base}/channels/{channel}/permissions/bob"),
            Value::Null,
        )
        .await;
    assert_eq!(effective["visible"], true);
    assert!(
        effective["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("RTCChannelOpenCloseOtherMicrophone"))
    );

    // Beyond it: a key they lack, in a role, an override or by giving a role.
    let (status, body) = srv
        .as_user(
            "mod",
            "POST",
            &format!("{base}/roles"),
            json!({"name": "bouncer", "priority": 30,
                   "permissions": {"RTCChannelDisconnectOther": "allow"}}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "cannot grant permissions you do not hold: RTCChannelDisconnectOther"
    );
    let (status, body) = srv
        .as_user(
            "mod",
            "PATCH",
            &format!("{base}/channels/{channel}/members/bob"),
            json!({"manageServer": "allow"}),
        )
        .await;
    assert_eq!(status, 403);
    assert!(body["message"].as_str().unwrap().contains("manageServer"));
    let (status, body) = srv
        .as_user(
            "mod",
            "PATCH",
            &format!("{base}/roles/{moderator}"),
            json!({"name": "boss"}),
        )
        .await;
    assert_eq!(status, 403, "their own rank is not below theirs: {body}");
    // Denying is not granting.
    let (status, body) = srv
        .as_user(
            "mod",
            "PATCH",
            &format!("{base}/channels/{channel}/members/bob"),
            json!({"RTCChannelOpenCamera": "deny"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    srv.shutdown().await;
}

#[tokio::test]
async fn anyone_may_found_a_server_and_its_owner_runs_it() {
    let srv = TestServer::start().await;
    let (status, created) = srv
        .as_user("olivia", "POST", "/servers", json!({"name": "club"}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["owner"], "olivia");
    let id = created["id"].as_u64().unwrap();
    let (status, _) = srv
        .as_user(
            "olivia",
            "POST",
            &format!("/servers/{id}/members"),
            json!({"user": "alice"}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, list) = srv.as_user("alice", "GET", "/servers", Value::Null).await;
    assert_eq!(list["servers"][0]["id"], id);
    assert_eq!(list["servers"][0]["members"], 2);
    let (status, _) = srv
        .as_user(
            "eve",
            "POST",
            "/servers",
            json!({"name": "x", "owner": "alice"}),
        )
        .await;
    assert_eq!(status, 403);
    // The everyone role cannot go; the owner cannot leave.
    let (status, _) = srv
        .as_user(
            "olivia",
            "DELETE",
            &format!("/servers/{id}/roles/0"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = srv
        .as_user(
            "olivia",
            "DELETE",
            &format!("/servers/{id}/members/olivia"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = srv
        .as_user("olivia", "DELETE", &format!("/servers/{id}"), Value::Null)
        .await;
    assert_eq!(status, 200);
    let (status, _) = srv
        .as_user("olivia", "GET", &format!("/servers/{id}"), Value::Null)
        .await;
    assert_eq!(status, 404);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_stored_server_is_refused_at_start_with_the_reason() {
    let mut srv = TestServer::start().await;
    srv.community("olivia", &["alice"]).await;
    srv.stop().await;
    let db = srv.data_dir.path().join("conclave.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE community_servers SET snapshot = '{not json'", [])
        .unwrap();
    drop(conn);

    let mut config = conclave::app::Config::default();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = srv.data_dir.path().to_path_buf();
    config.media.udp_port = "0".parse().unwrap();
    config.policy.scripts_dir = srv.data_dir.path().join("scripts");
    config.policy.plugins_dir = srv.data_dir.path().join("plugins");
    let err = conclave::server::Server::start(config, true)
        .await
        .err()
        .expect("a corrupt server is not served");
    let message = err.to_string();
    assert!(
        message.contains("stored community server is unreadable"),
        "{message}"
    );
}
