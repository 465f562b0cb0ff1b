//! The policies in scripts/, driven through the protocol by real clients.

mod common;

use common::{TestServer, event_where, next_event, shipped_scripts};
use conclave::protocol::{MediaKind, Mode, Role, ServerMessage};
use conclave::status::Status;
use serde_json::json;

async fn server() -> TestServer {
    TestServer::start_with(|c| c.policy.scripts_dir = shipped_scripts()).await
}

#[tokio::test]
async fn rooms_run_the_default_policy_unless_told_otherwise() {
    let srv = server().await;
    let alice = srv.client("alice").await;
    alice.create("plain", "").await.unwrap();
    alice.join("plain", Mode::Audio, None).await.unwrap();
    let (_, room) = srv.get("/api/rooms/plain", Some(&srv.admin_token())).await;
    assert_eq!(room["policy"]["policy"], "default");
    assert!(
        room["policy"]["version"]
            .as_str()
            .unwrap()
            .starts_with("default@")
    );
    assert!(room["lua_memory"].as_u64().unwrap() > 0);

    let err = alice
        .create_with_policy("other", "", Some("no-such-policy"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::BadRequest), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn classroom_teacher_students_hands_and_promotion() {
    let srv = server().await;
    let mut teacher = srv
        .client_with_token(&srv.token_with_attrs("teacher", json!({"teacher": true})))
        .await;
    let mut ann = srv.client("ann").await;
    let mut ben = srv.client("ben").await;
    teacher
        .create_with_policy("math", "max_speakers=1", Some("classroom"))
        .await
        .unwrap();
    let joined = teacher
        .join("math", Mode::Audio, Some(Role::Audience))
        .await
        .unwrap();
    assert_eq!(joined.role, Role::Interactor, "teachers always speak");
    let joined = ann
        .join("math", Mode::Audio, Some(Role::Interactor))
        .await
        .unwrap();
    assert_eq!(joined.role, Role::Audience, "students join as audience");
    ben.join("math", Mode::Audio, None).await.unwrap();

    let err = ann.set_role(Role::Interactor, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    assert!(err.to_string().contains("raise your hand"), "{err}");

    // Raising a hand reaches the teacher only, and shows in the metadata.
    ann.send_data(json!({"type": "raise_hand"}), None)
        .await
        .unwrap();
    let hand = event_where(&mut teacher, |e| match e {
        ServerMessage::Data { payload, from, .. } => Some((payload.clone(), from.clone())),
        _ => None,
    })
    .await;
    assert_eq!(hand.0, json!({"type": "hand_raised", "user": "ann"}));
    assert_eq!(hand.1, "policy:classroom");
    let hands = event_where(&mut ben, |e| match e {
        ServerMessage::MetadataChanged { metadata, .. } => Some(metadata["hands"].clone()),
        ServerMessage::Data { .. } => panic!("the raised hand went to a student"),
        _ => None,
    })
    .await;
    assert_eq!(hands, json!(["ann"]));

    // The teacher promotes ann; the hand comes down.
    teacher
        .set_role(Role::Interactor, Some("ann"))
        .await
        .unwrap();
    let promoted = event_where(&mut ben, |e| match e {
        ServerMessage::RoleChanged { user, role, .. } => Some((user.to_string(), *role)),
        _ => None,
    })
    .await;
    assert_eq!(promoted, ("ann".into(), Role::Interactor));
    let hands = event_where(&mut ben, |e| match e {
        ServerMessage::MetadataChanged { metadata, .. } => Some(metadata["hands"].clone()),
        _ => None,
    })
    .await;
    assert_eq!(hands, json!([]));

    // max_speakers=1: a second student cannot be promoted.
    let err = teacher
        .set_role(Role::Interactor, Some("ben"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 1"), "{err}");

    // The teacher mutes everyone; a student may not.
    ann.mute(MediaKind::Audio, false, None).await.unwrap();
    let err = ann.mute_all(MediaKind::Audio, true).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    teacher.mute_all(MediaKind::Audio, true).await.unwrap();
    let muted = event_where(&mut ann, |e| match e {
        ServerMessage::MuteChanged {
            user,
            muted: true,
            operate_by,
            ..
        } if user.as_str() == "ann" => Some(operate_by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(muted, "teacher");
    srv.shutdown().await;
}

#[tokio::test]
async fn moderated_members_join_muted_and_talk_time_is_limited() {
    let srv = server().await;
    let mut host = srv
        .client_with_token(&srv.token_with_attrs("host", json!({"host": true})))
        .await;
    let mut mia = srv.client("mia").await;
    host.create_with_policy("panel", "talk_limit_ms=400 warn_ms=100", Some("moderated"))
        .await
        .unwrap();
    let joined = host.join("panel", Mode::Video, None).await.unwrap();
    assert!(!joined.members[0].audio_muted, "the host speaks");
    let joined = mia.join("panel", Mode::Video, None).await.unwrap();
    let me = joined
        .members
        .iter()
        .find(|m| m.user.as_str() == "mia")
        .unwrap();
    assert!(me.audio_muted && me.video_muted, "members join muted");
    next_event(&mut host).await; // mia joined

    let err = mia
        .mute(MediaKind::Audio, true, Some("host"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only the host"), "{err}");
    let err = mia.kick("host").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));

    // Mia takes the floor: a warning, then the policy mutes her.
    mia.mute(MediaKind::Audio, false, None).await.unwrap();
    let warning = event_where(&mut mia, |e| match e {
        ServerMessage::Data { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(warning["type"], "talk_time_warning");
    let by = event_where(&mut mia, |e| match e {
        ServerMessage::MuteChanged {
            user,
            muted: true,
            operate_by,
            ..
        } if user.as_str() == "mia" => Some(operate_by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(by, "policy:moderated");
    let over = event_where(&mut mia, |e| match e {
        ServerMessage::Data { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(over["type"], "talk_time_over");

    // The host may unmute her again.
    host.mute(MediaKind::Audio, false, Some("mia"))
        .await
        .unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn capacity_overflows_to_audience_then_refuses() {
    let srv = server().await;
    let owner = srv.client("owner").await;
    owner
        .create_with_policy(
            "hall",
            "seats=1 max_members=3 overflow=audience",
            Some("capacity"),
        )
        .await
        .unwrap();
    let mut clients = Vec::new();
    let mut roles = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let c = srv.client(user).await;
        roles.push(
            c.join("hall", Mode::Audio, Some(Role::Interactor))
                .await
                .unwrap()
                .role,
        );
        clients.push(c);
    }
    assert_eq!(roles, [Role::Interactor, Role::Audience, Role::Audience]);
    let late = srv.client("u4").await;
    let err = late.join("hall", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    assert!(err.to_string().contains("full (3 members)"), "{err}");
    let err = clients[1]
        .set_role(Role::Interactor, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("seats are taken"), "{err}");

    owner
        .create_with_policy("strict", "seats=1 overflow=deny", Some("capacity"))
        .await
        .unwrap();
    let a = srv.client("a").await;
    let b = srv.client("b").await;
    a.join("strict", Mode::Audio, None).await.unwrap();
    let err = b.join("strict", Mode::Audio, None).await.unwrap_err();
    assert!(err.to_string().contains("all 1 seats are taken"), "{err}");
    // As audience there is room.
    b.join("strict", Mode::Audio, Some(Role::Audience))
        .await
        .unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn rules_bind_room_names_and_clients_cannot_override_them() {
    let srv = TestServer::start_with(|c| {
        c.policy.scripts_dir = shipped_scripts();
        c.policy.rules = conclave::app::config::Config::from_toml(
            "[[policy.rules]]\nrooms = \"class-*\"\npolicy = \"classroom\"\n",
        )
        .unwrap()
        .policy
        .rules;
    })
    .await;
    let alice = srv.client("alice").await;
    alice.create("class-1", "").await.unwrap();
    alice.create("elsewhere", "").await.unwrap();
    let err = alice
        .create_with_policy("class-2", "", Some("default"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    assert!(
        err.to_string().contains("use the policy `classroom`"),
        "{err}"
    );
    alice
        .create_with_policy("class-3", "", Some("classroom"))
        .await
        .unwrap();
    for (room, policy) in [("class-1", "classroom"), ("elsewhere", "default")] {
        let (_, info) = srv
            .get(&format!("/api/rooms/{room}"), Some(&srv.admin_token()))
            .await;
        assert_eq!(info["policy"]["policy"], policy, "{room}");
    }
    srv.shutdown().await;
}
