//! The handshake and the heartbeat (protocol.md §2.1, §2.2): `hello` once,
//! within `hello_timeout`, and a refused `hello` buys no time; after it,
//! any frame counts as life, whatever it holds.

mod common;

use std::time::Duration;

use common::{TestServer, closed};
use conclave::status::Status;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_second_hello_answers_417() {
    let srv = TestServer::start().await;
    let mut client = srv.client("alice").await;
    let err = client.hello(&srv.user_token("alice")).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Conflict), "{err}");
    assert!(
        err.to_string().contains("hello was already accepted"),
        "{err}"
    );
    // The connection is as it was.
    client.ping().await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn refused_hellos_do_not_extend_the_hello_timeout() {
    let srv = TestServer::start_with(|c| c.signal.hello_timeout = Duration::from_secs(1)).await;
    let mut client = srv.raw_client().await;
    // Keep saying hello with a forged token, faster than the timeout: each
    // is refused, and none counts as the hello the timeout waits for. The
    // loop ends when the server closes the connection.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refused hellos kept the connection open"
        );
        match client.hello("forged.token.here").await {
            Err(e) if e.status() == Some(Status::Unauthorized) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => break,
            Ok(_) => panic!("a forged token was accepted"),
        }
    }
    let frame = closed(&mut client).await;
    assert_eq!(frame, Some((4000, "no hello in time".into())));
    srv.shutdown().await;
}

/// Keeps a connection whose client sends no heartbeat alive with `frame`,
/// well past the heartbeat timeout, then shows it still answers.
async fn frames_count_as_life(frame: fn() -> Message, answered: bool) {
    let srv = TestServer::start_with(|c| {
        c.signal.heartbeat_timeout = Duration::from_millis(1000);
    })
    .await;
    let mut client = srv.client("alice").await;
    client.stop_heartbeat();
    // Three timeouts' worth of time, a frame every 250 ms.
    for _ in 0..12 {
        client.send_raw(frame()).expect("the connection is open");
        if answered {
            // Binary and malformed frames are answered (400), which also
            // proves the server read them.
            let event = common::next_event(&mut client).await;
            assert!(
                matches!(&event, conclave::protocol::ServerMessage::Response { code, .. } if *code == Status::BadRequest),
                "{event:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client.ping().await.expect("still connected");
    assert_eq!(client.close_frame(), None);
    if !answered {
        // Whatever the server said to those frames came before the answer
        // to the ping, so it would be waiting here.
        let said = client.take_events().try_recv();
        assert!(said.is_err(), "the server answered: {said:?}");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn binary_frames_count_as_life() {
    frames_count_as_life(|| Message::binary(vec![1u8, 2, 3]), true).await;
}

#[tokio::test]
async fn malformed_frames_count_as_life() {
    frames_count_as_life(|| Message::text("{not json"), true).await;
}

/// The heartbeat clients send (protocol.md §2.2): a `ping` with no id.
#[tokio::test]
async fn pings_without_an_id_count_as_life_and_get_no_answer() {
    frames_count_as_life(|| Message::text(r#"{"type":"ping"}"#), false).await;
}

#[tokio::test]
async fn websocket_pings_count_as_life() {
    frames_count_as_life(|| Message::Ping(vec![7u8].into()), false).await;
}
