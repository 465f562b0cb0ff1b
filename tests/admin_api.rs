//! The admin REST API, /healthz and /metrics, through real HTTP.

mod common;

use common::{TestServer, next_event};
use conclave::protocol::{LeaveReason, MediaKind, Mode, Role, ServerMessage};
use conclave::status::Status;
use serde_json::json;

#[tokio::test]
async fn the_api_needs_an_admin_token() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/api/rooms", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], 401);
    let (status, _) = srv.get("/api/rooms", Some("garbage")).await;
    assert_eq!(status, 401);
    // The scheme is case-insensitive.
    let resp = reqwest::Client::new()
        .get(srv.url("/api/rooms"))
        .header("authorization", format!("bearer {}", srv.admin_token()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, body) = srv.get("/api/rooms", Some(&srv.user_token("u"))).await;
    assert_eq!(status, 403);
    assert!(body["message"].as_str().unwrap().contains("admin"));
    let (status, _) = srv
        .post(
            "/api/rooms",
            Some(&srv.user_token("u")),
            json!({"room": "x"}),
        )
        .await;
    assert_eq!(status, 403);
    srv.shutdown().await;
}

#[tokio::test]
async fn create_list_and_close_rooms() {
    let srv = TestServer::start().await;
    let admin = srv.admin_token();
    let (status, created) = srv
        .post(
            "/api/rooms",
            Some(&admin),
            json!({"room": "ops", "custom_info": "from api"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, body) = srv
        .post("/api/rooms", Some(&admin), json!({"room": "ops"}))
        .await;
    assert_eq!((status, body["code"].as_u64()), (409, Some(417)));
    let (status, body) = srv
        .post("/api/rooms", Some(&admin), json!({"room": ""}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = srv
        .post("/api/rooms", Some(&admin), json!({"nom": "x"}))
        .await;
    assert_eq!(status, 400, "{body}");

    let mut alice = srv.client("alice").await;
    let joined = alice.join("ops", Mode::Audio, None).await.unwrap();
    assert_eq!(joined.custom_info, "from api");
    assert_eq!(joined.channel_id.0, created["channel_id"].as_i64().unwrap());

    let (_, list) = srv.get("/api/rooms", Some(&admin)).await;
    assert_eq!(list["rooms"][0]["room"], "ops");
    assert_eq!(list["rooms"][0]["members"], 1);
    let (_, room) = srv.get("/api/rooms/ops", Some(&admin)).await;
    assert_eq!(room["member_list"][0]["user"], "alice");
    let (_, members) = srv.get("/api/rooms/ops/members", Some(&admin)).await;
    assert_eq!(members["members"][0]["role"], "interactor");

    let (status, _) = srv.delete("/api/rooms/ops", Some(&admin)).await;
    assert_eq!(status, 200);
    match next_event(&mut alice).await {
        ServerMessage::Disconnected { code, reason, .. } => {
            assert_eq!(
                (code, reason),
                (Status::Disconnected, LeaveReason::RoomClosed)
            );
        }
        other => panic!("expected disconnected, got {other:?}"),
    }
    let (status, _) = srv.get("/api/rooms/ops", Some(&admin)).await;
    assert_eq!(status, 404);
    let (status, _) = srv.delete("/api/rooms/ops", Some(&admin)).await;
    assert_eq!(status, 404);
    let records = srv.records("?room=ops").await;
    assert_eq!(records[0]["end_reason"], "closed");
    assert_eq!(records[0]["members"][0]["leave_reason"], "room_closed");
    srv.shutdown().await;
}

#[tokio::test]
async fn kick_tells_the_kicked_and_the_others_differently() {
    let srv = TestServer::start().await;
    let admin = srv.admin_token();
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut alice).await; // bob joined

    let (status, _) = srv.delete("/api/rooms/r/members/bob", Some(&admin)).await;
    assert_eq!(status, 200);
    match next_event(&mut bob).await {
        ServerMessage::Disconnected { code, reason, .. } => {
            assert_eq!(code.code(), 11001);
            assert_eq!(reason, LeaveReason::Kicked);
        }
        other => panic!("the kicked member gets its own code, got {other:?}"),
    }
    match next_event(&mut alice).await {
        ServerMessage::MemberLeft { user, reason, .. } => {
            assert_eq!((user.as_str(), reason), ("bob", LeaveReason::Kicked));
        }
        other => panic!("expected member_left, got {other:?}"),
    }
    // Bob is out: free to join again (a new membership, seen by alice).
    bob.join("r", Mode::Audio, None).await.unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::MemberJoined { .. }
    ));
    let (status, _) = srv
        .delete("/api/rooms/r/members/nobody", Some(&admin))
        .await;
    assert_eq!(status, 404);
    srv.shutdown().await;
}

#[tokio::test]
async fn mute_and_role_by_admin() {
    let srv = TestServer::start().await;
    let admin = srv.admin_token();
    let mut alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Video, None).await.unwrap();

    let (status, _) = srv
        .post(
            "/api/rooms/r/members/alice/mute",
            Some(&admin),
            json!({"kind": "video", "muted": true}),
        )
        .await;
    assert_eq!(status, 200);
    match next_event(&mut alice).await {
        ServerMessage::MuteChanged {
            kind,
            muted,
            operate_by,
            ..
        } => assert_eq!(
            (kind, muted, operate_by.as_str()),
            (MediaKind::Video, true, "ops")
        ),
        other => panic!("expected mute_changed, got {other:?}"),
    }
    let (status, body) = srv
        .post(
            "/api/rooms/r/members/alice/mute",
            Some(&admin),
            json!({"kind": "smell", "muted": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, _) = srv
        .post(
            "/api/rooms/r/members/alice/role",
            Some(&admin),
            json!({"role": "audience"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::RoleChanged {
            role: Role::Audience,
            ..
        }
    ));
    let (status, body) = srv
        .post(
            "/api/rooms/r/members/alice/mute",
            Some(&admin),
            json!({"kind": "audio", "muted": false}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_u64()),
        (403, Some(403)),
        "audience cannot be unmuted"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let srv = TestServer::start().await;
    let (status, health) = srv.get("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");

    let alice = srv.client("alice").await;
    alice.create("m", "").await.unwrap();
    alice.join("m", Mode::Audio, None).await.unwrap();
    let text = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "conclave_rooms 1",
        "conclave_members 1",
        "conclave_connections 1",
        "conclave_joins_total 1",
        r#"conclave_requests_total{request="join",code="200"} 1"#,
        r#"conclave_request_duration_seconds_count{request="join",code="200"} 1"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    alice.leave().await.unwrap();
    let text = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "conclave_rooms 0",
        "conclave_members 0",
        r#"conclave_leaves_total{reason="normal"} 1"#,
        r#"conclave_rooms_closed_total{reason="all_left"} 1"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    srv.shutdown().await;
}
