//! Creating and joining rooms: names, custom info, member lists, the one-room
//! rule and reuse of a name after the room closes.

mod common;

use common::{TestServer, next_event};
use conclave::protocol::{Mode, Role, ServerMessage};
use conclave::status::Status;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn create_then_join_delivers_custom_info_and_members() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let bob = srv.client("bob").await;

    let created = alice.create("standup", "agenda: demos").await.unwrap();
    assert_eq!(created.room.as_str(), "standup");

    let joined = alice.join("standup", Mode::Video, None).await.unwrap();
    assert_eq!(joined.channel_id, created.channel_id);
    assert_eq!(joined.custom_info, "agenda: demos");
    assert_eq!(joined.role, Role::Interactor);
    assert_eq!(joined.members.len(), 1);

    let joined = bob
        .join("standup", Mode::Audio, Some(Role::Audience))
        .await
        .unwrap();
    assert_eq!(joined.custom_info, "agenda: demos", "every joiner gets it");
    let users: Vec<_> = joined.members.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);

    match next_event(&mut alice).await {
        ServerMessage::MemberJoined {
            channel_id, member, ..
        } => {
            assert_eq!(channel_id, created.channel_id);
            assert_eq!(member.user.as_str(), "bob");
            assert_eq!(member.role, Role::Audience);
            assert_eq!(member.mode, Mode::Audio);
        }
        other => panic!("expected member_joined, got {other:?}"),
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn an_existing_name_answers_417() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    let bob = srv.client("bob").await;
    alice.create("taken", "").await.unwrap();
    let err = bob.create("taken", "").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Conflict), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn invalid_names_answer_400() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let too_long = "x".repeat(129);
    for (id, room) in [(1, ""), (2, too_long.as_str()), (3, "bad\u{7}name")] {
        let frame = json!({"id": id, "type": "create", "room": room}).to_string();
        alice.send_raw(Message::text(frame)).unwrap();
        match next_event(&mut alice).await {
            ServerMessage::Response {
                id: Some(got),
                code,
                message,
                ..
            } => {
                assert_eq!(got, id);
                assert_eq!(code, Status::BadRequest, "{message:?}");
                assert!(message.unwrap().contains("room name"));
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
    let (_, body) = srv.get("/api/rooms", Some(&srv.admin_token())).await;
    assert_eq!(body["rooms"], json!([]), "nothing was created");
    srv.shutdown().await;
}

#[tokio::test]
async fn joining_a_missing_room_answers_404() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    let err = alice.join("nowhere", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::NotFound), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_connection_is_in_one_room_at_a_time() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    alice.create("one", "").await.unwrap();
    alice.create("two", "").await.unwrap();
    alice.join("one", Mode::Audio, None).await.unwrap();
    let err = alice.join("two", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Conflict), "{err}");
    // After leaving, the other room is open to it.
    alice.leave().await.unwrap();
    alice.join("two", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn after_the_last_leave_the_name_can_be_created_again() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    let first = alice.create("again", "first").await.unwrap();
    alice.join("again", Mode::Audio, None).await.unwrap();
    // The room still exists while someone is in it.
    assert_eq!(
        alice.create("again", "").await.unwrap_err().status(),
        Some(Status::Conflict)
    );
    alice.leave().await.unwrap();

    // The name is free by the time the last leave is answered.
    let second = alice.create("again", "second").await.unwrap();
    assert_ne!(first.channel_id, second.channel_id, "a new instance");
    let joined = alice.join("again", Mode::Audio, None).await.unwrap();
    assert_eq!(joined.custom_info, "second");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_room_nobody_joins_expires() {
    let srv = TestServer::start_with(|c| {
        c.rooms.empty_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let alice = srv.client("alice").await;
    alice.create("ghost", "").await.unwrap();
    common::eventually("the unjoined room to expire", || async {
        let (_, body) = srv.get("/api/rooms", Some(&srv.admin_token())).await;
        body["rooms"] == json!([])
    })
    .await;
    let err = alice.join("ghost", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::NotFound));
    assert!(srv.records("").await.is_empty(), "never joined: no record");
    srv.shutdown().await;
}
