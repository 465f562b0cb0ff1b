//! Hostile and broken input: each gets a clear answer (or a close with a
//! reason), and other clients and rooms carry on.

mod common;

use std::time::Duration;

use common::{TestServer, closed, next_event};
use conclave::protocol::{MediaKind, Mode, ServerMessage};
use conclave::status::Status;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The response to the raw frame just sent.
async fn answer(client: &mut conclave::client::SignalClient) -> (Option<u64>, Status, String) {
    match next_event(client).await {
        ServerMessage::Response {
            id, code, message, ..
        } => (id, code, message.unwrap_or_default()),
        other => panic!("expected a response, got {other:?}"),
    }
}

/// A room with two members, to check that it is unaffected.
async fn bystanders(
    srv: &TestServer,
) -> (
    conclave::client::SignalClient,
    conclave::client::SignalClient,
) {
    let a = srv.client("bystander-a").await;
    let b = srv.client("bystander-b").await;
    a.create("calm", "").await.unwrap();
    a.join("calm", Mode::Audio, None).await.unwrap();
    b.join("calm", Mode::Audio, None).await.unwrap();
    (a, b)
}

/// The bystanders' room still works end to end.
async fn still_fine(
    a: &mut conclave::client::SignalClient,
    b: &mut conclave::client::SignalClient,
) {
    // a has seen b join; drain it before checking.
    assert!(matches!(
        next_event(a).await,
        ServerMessage::MemberJoined { .. }
    ));
    b.mute(MediaKind::Audio, true, None).await.unwrap();
    assert!(matches!(
        next_event(a).await,
        ServerMessage::MuteChanged { .. }
    ));
}

#[tokio::test]
async fn malformed_frames_get_400_with_the_reason() {
    let srv = TestServer::start().await;
    let (mut a, mut b) = bystanders(&srv).await;
    let mut eve = srv.client("eve").await;
    let cases = [
        ("{oops", None, "malformed JSON"),
        ("[1,2]", None, "JSON object"),
        (
            r#"{"id":1,"type":"teleport"}"#,
            Some(1),
            "unknown variant `teleport`",
        ),
        (
            r#"{"id":2,"type":"join","room":"calm"}"#,
            Some(2),
            "missing field `mode`",
        ),
        (
            r#"{"id":3,"type":"join","room":"calm","mode":"hologram"}"#,
            Some(3),
            "unknown variant `hologram`",
        ),
        (r#"{"id":"x","type":"ping"}"#, None, "`id` must be"),
        (r#"{"type":"leave"}"#, None, "missing field `id`"),
    ];
    for (frame, id, needle) in cases {
        eve.send_raw(Message::text(frame)).unwrap();
        let (got_id, code, message) = answer(&mut eve).await;
        assert_eq!(code, Status::BadRequest, "{frame}");
        assert_eq!(got_id, id, "{frame}");
        assert!(message.contains(needle), "{frame}: {message}");
    }
    eve.send_raw(Message::binary(vec![1, 2, 3])).unwrap();
    let (_, code, message) = answer(&mut eve).await;
    assert_eq!(code, Status::BadRequest);
    assert!(message.contains("binary"), "{message}");
    // Still connected and usable.
    eve.ping().await.unwrap();
    still_fine(&mut a, &mut b).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let srv = TestServer::start_with(|c| c.signal.max_frame_bytes = 4096).await;
    let (mut a, mut b) = bystanders(&srv).await;
    let mut eve = srv.client("eve").await;
    let huge = format!(
        r#"{{"id":1,"type":"create","room":"r","custom_info":"{}"}}"#,
        "x".repeat(10_000)
    );
    eve.send_raw(Message::text(huge)).unwrap();
    let frame = closed(&mut eve).await;
    assert_eq!(frame.map(|f| f.0), Some(1009));
    still_fine(&mut a, &mut b).await;
    let metrics = reqwest::get(srv.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"conclave_rejected_frames_total{reason="too_big"} 1"#),
        "{metrics}"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn a_flood_is_refused_with_429_then_closed_with_1008() {
    let srv = TestServer::start_with(|c| {
        c.signal.rate_per_second = 1;
        c.signal.rate_burst = 5;
        c.signal.rate_abuse_limit = 20;
    })
    .await;
    let (mut a, mut b) = bystanders(&srv).await;
    let mut eve = srv.client("eve").await; // hello used one token
    for id in 0..40u64 {
        let frame = format!(r#"{{"id":{id},"type":"ping"}}"#);
        if eve.send_raw(Message::text(frame)).is_err() {
            break;
        }
    }
    let mut codes = Vec::new();
    while let Some(event) = eve.next_event().await {
        if let ServerMessage::Response { code, .. } = event {
            codes.push(code);
        }
    }
    let ok = codes.iter().filter(|c| **c == Status::Ok).count();
    let limited = codes.iter().filter(|c| **c == Status::RateLimited).count();
    assert!((4..=5).contains(&ok), "the burst passes: {codes:?}");
    assert_eq!(limited, 20, "then 429 up to the abuse limit: {codes:?}");
    assert_eq!(
        eve.close_frame(),
        Some((1008, "rate limit exceeded".into()))
    );
    still_fine(&mut a, &mut b).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_alone() {
    // A tiny outbound queue, and a member that never reads its socket.
    // The bystander floods the room with events, so its own rate limit
    // must not be what stops the test.
    let srv = TestServer::start_with(|c| {
        c.signal.outbound_queue = 4;
        c.signal.rate_per_second = 1_000_000;
        c.signal.rate_burst = 1_000_000;
    })
    .await;
    let (mut a, mut b) = bystanders(&srv).await;
    still_fine(&mut a, &mut b).await;

    // Raw tungstenite so that nothing reads the socket, over a socket with
    // a small receive buffer so that the kernel stops absorbing soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(srv.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(srv.ws_url(), tcp)
        .await
        .unwrap();
    use futures_util::SinkExt;
    let hello =
        serde_json::json!({"id":1,"type":"hello","version":1,"token":srv.user_token("slow")});
    slow.send(Message::text(hello.to_string())).await.unwrap();
    let join = serde_json::json!({"id":2,"type":"join","room":"calm","mode":"audio"});
    slow.send(Message::text(join.to_string())).await.unwrap();
    assert!(
        matches!(next_event(&mut a).await, ServerMessage::MemberJoined { member, .. } if member.user.as_str() == "slow")
    );

    // Make events until the server gives up on the reader. Kernel socket
    // buffers absorb many first, so the number needed is not fixed.
    let blob = serde_json::json!({ "blob": "x".repeat(32 * 1024) });
    let closed = r#"conclave_connections_closed_total{reason="too_slow"}"#;
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while srv.metric(closed).await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the non-reading connection to be closed"
        );
        for _ in 0..20 {
            b.send_data(blob.clone(), None).await.unwrap();
        }
    }
    // What the server queued was delivered, then the close: 1008.
    use futures_util::StreamExt;
    let close = tokio::time::timeout(common::PATIENCE, async {
        while let Some(Ok(frame)) = slow.next().await {
            if let Message::Close(close) = frame {
                return close;
            }
        }
        None
    })
    .await
    .expect("the close frame arrives");
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("too slow"), "{close:?}");
    // The membership waits out its grace window, like any lost connection:
    // still listed, and nobody was told it left.
    let (_, members) = srv
        .get("/api/rooms/calm/members", Some(&srv.admin_token()))
        .await;
    let users: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert!(users.contains(&"slow"), "{members}");
    drop(slow);
    // a and b are unaffected.
    b.ping().await.unwrap();
    a.ping().await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn a_close_frame_from_the_client_is_a_lost_connection() {
    let srv =
        TestServer::start_with(|c| c.rooms.reconnect_grace = Duration::from_millis(100)).await;
    let alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut bob).await;
    alice
        .send_raw(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .unwrap();
    assert!(matches!(
        next_event(&mut bob).await,
        ServerMessage::MemberLeft {
            reason: conclave::protocol::LeaveReason::Timeout,
            ..
        }
    ));
    srv.shutdown().await;
}

#[tokio::test]
async fn binary_frames_count_against_the_rate_limit() {
    let srv = TestServer::start_with(|c| {
        c.signal.rate_per_second = 1;
        c.signal.rate_burst = 3;
        c.signal.rate_abuse_limit = 5;
    })
    .await;
    let mut eve = srv.client("eve").await;
    for _ in 0..20 {
        if eve.send_raw(Message::binary(vec![0u8; 16])).is_err() {
            break;
        }
    }
    assert_eq!(
        closed(&mut eve).await,
        Some((1008, "rate limit exceeded".into()))
    );
    srv.shutdown().await;
}
