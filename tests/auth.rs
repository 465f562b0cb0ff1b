//! Tokens: missing, forged, expired and wrong-room tokens answer 401 and
//! change nothing; hello comes first and carries a protocol version.

mod common;

use std::time::Duration;

use common::{TestServer, next_event};
use conclave::auth::{Auth, Grants, claims_for};
use conclave::protocol::{Mode, Request, ServerMessage};
use conclave::status::Status;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn hello_fails(srv: &TestServer, token: &str) -> (Status, String) {
    let mut client = srv.raw_client().await;
    let err = client.hello(token).await.unwrap_err();
    let conclave::client::ClientError::Refused(failure) = err else {
        panic!("expected a refusal, got {err}");
    };
    (failure.status, failure.message)
}

#[tokio::test]
async fn bad_tokens_answer_401() {
    let srv = TestServer::start().await;
    let forged = Auth::new(&"k".repeat(40))
        .unwrap()
        .mint(&claims_for(
            "eve",
            "",
            Grants::default(),
            Duration::from_secs(60),
        ))
        .unwrap();
    let mut stale = claims_for("old", "", Grants::default(), Duration::ZERO);
    stale.exp -= 600;
    let expired = Auth::dev().mint(&stale).unwrap();

    for (token, why) in [
        ("", "no token"),
        ("not-a-jwt", "malformed"),
        (forged.as_str(), "signature"),
        (expired.as_str(), "expired"),
    ] {
        let (status, message) = hello_fails(&srv, token).await;
        assert_eq!(status, Status::Unauthorized, "{token}: {message}");
        assert!(message.contains(why), "{message} should mention {why}");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn requests_before_hello_answer_401() {
    let srv = TestServer::start().await;
    let owner = srv.client("owner").await;
    owner.create("r", "").await.unwrap();
    let client = srv.raw_client().await;
    for request in [
        Request::Create {
            room: "x".parse_room(),
            custom_info: String::new(),
            policy: None,
        },
        Request::Join {
            room: "r".parse_room(),
            mode: Mode::Audio,
            role: None,
        },
    ] {
        let err = client.request(request).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::Unauthorized));
    }
    let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
    assert_eq!(room["members"], 0, "nothing changed");
    let (_, rooms) = srv.get("/api/rooms", Some(&srv.admin_token())).await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_token_for_other_rooms_answers_401() {
    let srv = TestServer::start().await;
    let owner = srv.client("owner").await;
    owner.create("private", "").await.unwrap();
    let narrow = srv.token(
        "guest",
        Grants {
            create: true,
            rooms: vec!["public-*".into()],
            ..Grants::default()
        },
    );
    let guest = srv.client_with_token(&narrow).await;
    let err = guest.join("private", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    let err = guest.create("elsewhere", "").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    guest.create("public-1", "").await.unwrap();
    guest.join("public-1", Mode::Audio, None).await.unwrap();
    let (_, room) = srv
        .get("/api/rooms/private", Some(&srv.admin_token()))
        .await;
    assert_eq!(room["members"], 0);
    srv.shutdown().await;
}

#[tokio::test]
async fn creating_needs_the_create_grant() {
    let srv = TestServer::start().await;
    let joiner = srv.token(
        "j",
        Grants {
            rooms: vec!["*".into()],
            ..Grants::default()
        },
    );
    let client = srv.client_with_token(&joiner).await;
    let err = client.create("r", "").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn an_unsupported_version_answers_11002() {
    let srv = TestServer::start().await;
    let mut client = srv.raw_client().await;
    let frame = json!({"id": 1, "type": "hello", "version": 99, "token": srv.user_token("a")});
    client.send_raw(Message::text(frame.to_string())).unwrap();
    match next_event(&mut client).await {
        ServerMessage::Response { code, message, .. } => {
            assert_eq!(code, Status::VersionUnsupported);
            assert_eq!(code.code(), 11002);
            assert!(message.unwrap().contains("99"));
        }
        other => panic!("expected a response, got {other:?}"),
    }
    // The connection stays usable for a correct hello.
    client.hello(&srv.user_token("a")).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn no_hello_in_time_closes_the_connection() {
    let srv = TestServer::start_with(|c| c.signal.hello_timeout = Duration::from_millis(200)).await;
    let mut client = srv.raw_client().await;
    let frame = common::closed(&mut client).await;
    assert_eq!(frame, Some((4000, "no hello in time".into())));
    srv.shutdown().await;
}

trait ParseRoom {
    fn parse_room(&self) -> conclave::ids::RoomName;
}

impl ParseRoom for str {
    fn parse_room(&self) -> conclave::ids::RoomName {
        conclave::ids::RoomName::new(self).expect("valid test room name")
    }
}

#[tokio::test]
async fn a_server_with_its_own_secret_takes_its_tokens_and_no_others() {
    let secret = "a-deployment-secret-of-at-least-32-bytes!";
    let srv = TestServer::start_for_real(|c| c.auth.secret = Some(secret.into())).await;
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        ..Grants::default()
    };
    let token = Auth::new(secret)
        .unwrap()
        .mint(&claims_for(
            "alice",
            "Alice",
            grants.clone(),
            Duration::from_secs(60),
        ))
        .unwrap();
    let alice = srv.client_with_token(&token).await;
    alice.create("r", "").await.unwrap();
    alice
        .join("r", conclave::protocol::Mode::Audio, None)
        .await
        .unwrap();
    // The dev key means nothing here.
    let dev = Auth::dev()
        .mint(&claims_for("eve", "", grants, Duration::from_secs(60)))
        .unwrap();
    let (status, message) = hello_fails(&srv, &dev).await;
    assert_eq!(status, Status::Unauthorized);
    assert!(message.contains("signature"), "{message}");
    // Nor is there a dev token endpoint.
    let (status, _) = srv.get("/dev/token?user=eve", None).await;
    assert_eq!(status, 404);
    srv.shutdown().await;
}
