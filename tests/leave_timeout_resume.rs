//! Leaving: by request (`normal`), by silence or a lost connection
//! (`timeout`, after the grace window), and coming back inside the window
//! (resumed, with nothing seen by others).

mod common;

use std::time::Duration;

use common::{TestServer, closed, next_event};
use conclave::protocol::{LeaveReason, MediaKind, Mode, ServerMessage};
use conclave::status::Status;

/// A heartbeat timeout short enough to wait for in a test, with ten
/// heartbeats in it, so a loaded machine never lets a live client miss it.
fn fast_heartbeat(grace: Duration) -> impl FnOnce(&mut conclave::app::config::Config) {
    move |c| {
        c.signal.heartbeat_interval = Duration::from_millis(100);
        c.signal.heartbeat_timeout = Duration::from_millis(1000);
        c.rooms.reconnect_grace = grace;
    }
}

/// Open signaling connections, from `/metrics`.
async fn connections(srv: &TestServer) -> u64 {
    srv.metric("conclave_connections").await as u64
}

fn assert_left(event: ServerMessage, who: &str, why: LeaveReason) {
    match event {
        ServerMessage::MemberLeft { user, reason, .. } => {
            assert_eq!((user.as_str(), reason), (who, why));
        }
        other => panic!("expected member_left of {who}, got {other:?}"),
    }
}

#[tokio::test]
async fn leave_is_seen_as_normal() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut bob).await; // alice joined
    alice.leave().await.unwrap();
    assert_left(next_event(&mut bob).await, "alice", LeaveReason::Normal);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_missed_heartbeat_ends_in_timeout() {
    let srv = TestServer::start_with(fast_heartbeat(Duration::from_millis(200))).await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut bob).await; // alice joined

    alice.stop_heartbeat();
    let frame = closed(&mut alice).await;
    assert_eq!(frame, Some((4000, "heartbeat timeout".into())));
    assert_left(next_event(&mut bob).await, "alice", LeaveReason::Timeout);

    let (_, room) = srv.get("/api/rooms/r", Some(&srv.admin_token())).await;
    assert_eq!(room["members"], 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_lost_connection_ends_in_timeout_after_the_grace_window() {
    let srv = TestServer::start_with(fast_heartbeat(Duration::from_millis(200))).await;
    let alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut bob).await; // alice joined

    drop(alice); // the TCP connection is cut, no leave, no close frame
    assert_left(next_event(&mut bob).await, "alice", LeaveReason::Timeout);

    let records = srv.records("?room=r").await;
    assert_eq!(records[0]["members"][1]["leave_reason"], "timeout");
    srv.shutdown().await;
}

#[tokio::test]
async fn reconnecting_inside_the_grace_window_resumes_silently() {
    let srv = TestServer::start_with(|c| c.rooms.reconnect_grace = Duration::from_secs(60)).await;
    let alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    let first = alice.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut bob).await; // alice joined

    drop(alice);
    // The server has seen the drop (the connection is gone, and its room
    // was told before the count fell): alice is in her grace window now.
    common::eventually("the server to see alice's connection go", || async {
        connections(&srv).await == 1
    })
    .await;
    let again = srv.client("alice").await;
    let resumed = again.join("r", Mode::Audio, None).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.channel_id, first.channel_id);
    assert_eq!(resumed.members.len(), 2);

    // The next thing bob hears is this mute: no left/joined pair came first.
    again.mute(MediaKind::Audio, true, None).await.unwrap();
    assert!(
        matches!(next_event(&mut bob).await, ServerMessage::MuteChanged { user, .. } if user.as_str() == "alice")
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    let srv = TestServer::start().await;
    let mut first = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    first.create("r", "").await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    first.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut bob).await; // alice joined

    let second = srv.client("alice").await;
    assert!(second.join("r", Mode::Audio, None).await.unwrap().resumed);
    match next_event(&mut first).await {
        ServerMessage::Disconnected { code, reason, .. } => {
            assert_eq!(
                (code, reason),
                (Status::Disconnected, LeaveReason::Replaced)
            );
        }
        other => panic!("expected disconnected, got {other:?}"),
    }
    // The replaced connection is no longer in the room, and may join another.
    assert_eq!(
        first.leave().await.unwrap_err().status(),
        Some(Status::NotFound)
    );
    second.mute(MediaKind::Audio, true, None).await.unwrap();
    assert!(matches!(
        next_event(&mut bob).await,
        ServerMessage::MuteChanged { .. }
    ));
    srv.shutdown().await;
}
