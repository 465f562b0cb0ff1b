//! The server at its limits answers 503 (protocol.md §7.4, §10): rooms,
//! connections, and creates while shutting down.

mod common;

use common::TestServer;
use conclave::status::Status;

#[tokio::test]
async fn creates_beyond_max_rooms_answer_503() {
    let srv = TestServer::start_with(|c| c.rooms.max_rooms = 2).await;
    let owner = srv.client("owner").await;
    owner.create("one", "").await.unwrap();
    owner.create("two", "").await.unwrap();
    let err = owner.create("three", "").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Unavailable), "{err}");
    assert!(err.to_string().contains("limit of 2 rooms"), "{err}");
    // The admin API meets the same limit.
    let (status, body) = srv
        .post(
            "/api/rooms",
            Some(&srv.admin_token()),
            serde_json::json!({ "room": "three" }),
        )
        .await;
    assert_eq!((status, body["code"].as_u64()), (503, Some(503)), "{body}");
    srv.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_with_http_503() {
    let srv = TestServer::start_with(|c| c.signal.max_connections = 2).await;
    let _one = srv.client("one").await;
    let _two = srv.client("two").await;
    let err = conclave::client::SignalClient::connect(&srv.ws_url())
        .await
        .err()
        .expect("a third connection is refused");
    assert!(err.to_string().contains("503"), "{err}");
    // Leaving frees a slot.
    drop(_one);
    common::eventually("a slot to free up", || async {
        conclave::client::SignalClient::connect(&srv.ws_url())
            .await
            .is_ok()
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_create_while_rooms_shut_down_answers_503() {
    let srv = TestServer::start().await;
    let owner = srv.client("owner").await;
    // The first step of shutdown, alone: rooms close and refuse new ones
    // while connections are still open.
    srv.state().rooms.shutdown().await;
    let err = owner.create("late", "").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Unavailable), "{err}");
    assert!(err.to_string().contains("shutting down"), "{err}");
    srv.shutdown().await;
}
