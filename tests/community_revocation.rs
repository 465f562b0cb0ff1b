//! Permission changes made while members are connected take effect at once,
//! done by whoever made the change.

mod common;

use common::community::set;
use common::{TestServer, event_where};
use conclave::protocol::{ChannelEndReason, LeaveReason, MediaKind, ServerMessage};
use serde_json::Value;

fn mute(e: &ServerMessage) -> Option<(String, MediaKind, bool, String)> {
    match e {
        ServerMessage::MuteChanged {
            user,
            kind,
            muted,
            operate_by,
            ..
        } => Some((user.0.clone(), *kind, *muted, operate_by.clone())),
        _ => None,
    }
}

fn share(e: &ServerMessage) -> Option<(String, bool, String)> {
    match e {
        ServerMessage::ScreenShareChanged {
            user,
            sharing,
            operate_by,
            ..
        } => Some((user.0.clone(), *sharing, operate_by.clone())),
        _ => None,
    }
}

fn ended(e: &ServerMessage) -> Option<ChannelEndReason> {
    match e {
        ServerMessage::ChannelEnded { reason, .. } => Some(*reason),
        _ => None,
    }
}

fn disconnected(e: &ServerMessage) -> Option<LeaveReason> {
    match e {
        ServerMessage::Disconnected { reason, .. } => Some(*reason),
        _ => None,
    }
}

fn left(e: &ServerMessage) -> Option<(String, LeaveReason)> {
    match e {
        ServerMessage::MemberLeft { user, reason, .. } => Some((user.0.clone(), *reason)),
        _ => None,
    }
}

fn joined(e: &ServerMessage) -> Option<String> {
    match e {
        ServerMessage::MemberJoined { member, .. } => Some(member.user.0.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn losing_media_keys_closes_the_media_at_once() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.connect_channel(server, channel, None).await.unwrap();
    bob.connect_channel(server, channel, None).await.unwrap();
    event_where(&mut alice, joined).await;
    bob.mute(MediaKind::Audio, false, None).await.unwrap();
    bob.mute(MediaKind::Video, false, None).await.unwrap();
    bob.share_screen(true, None).await.unwrap();
    event_where(&mut alice, share).await;

    // Olivia, the owner, takes Bob's microphone in this channel.
    let path = format!("/api/community/servers/{server}/channels/{channel}/members/bob");
    let olivia = srv.user_token("olivia");
    let (status, body) = srv
        .patch(
            &path,
            Some(&olivia),
            set(&["RTCChannelOpenMicrophone"], "deny"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Bob's own earlier events are still queued for him: skip to the mute.
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            event_where(c, |e| mute(e).filter(|m| m.2)).await,
            ("bob".into(), MediaKind::Audio, true, "olivia".into())
        );
    }
    let err = bob.mute(MediaKind::Audio, false, None).await.unwrap_err();
    assert!(
        err.to_string().contains("RTCChannelOpenMicrophone"),
        "{err}"
    );

    // The everyone role loses the camera and screen sharing.
    srv.everyone(
        server,
        set(
            &["RTCChannelOpenCamera", "RTCChannelOpenShareScreen"],
            "inherit",
        ),
    )
    .await;
    assert_eq!(
        event_where(&mut alice, mute).await,
        ("bob".into(), MediaKind::Video, true, "ops".into())
    );
    assert_eq!(
        event_where(&mut alice, share).await,
        ("bob".into(), false, "ops".into())
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn losing_connect_or_sight_removes_with_a_reason() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob", "carol"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    let mut carol = srv.client("carol").await;
    alice.connect_channel(server, channel, None).await.unwrap();
    bob.connect_channel(server, channel, None).await.unwrap();
    carol.connect_channel(server, channel, None).await.unwrap();

    // Bob goes on the black list: the channel is hidden from him.
    srv.op(
        "PUT",
        &format!("/servers/{server}/channels/{channel}/lists/black/members/bob"),
        Value::Null,
    )
    .await;
    assert_eq!(
        event_where(&mut bob, disconnected).await,
        LeaveReason::PermissionRevoked
    );
    assert_eq!(
        event_where(&mut bob, ended).await,
        ChannelEndReason::PermissionRevoked
    );
    assert_eq!(
        event_where(&mut alice, left).await,
        ("bob".into(), LeaveReason::PermissionRevoked)
    );

    // Carol's override takes RTCChannelConnect from her.
    srv.override_member(
        server,
        channel,
        "carol",
        set(&["RTCChannelConnect"], "deny"),
    )
    .await;
    assert_eq!(
        event_where(&mut carol, ended).await,
        ChannelEndReason::PermissionRevoked
    );
    assert_eq!(
        event_where(&mut alice, left).await,
        ("carol".into(), LeaveReason::PermissionRevoked)
    );
    let online = alice.channel_members(server, channel).await.unwrap();
    assert_eq!(online.members.len(), 1);

    // Alice leaves the server: no longer a member, so out of the channel.
    let (status, _) = srv
        .as_user(
            "alice",
            "DELETE",
            &format!("/servers/{server}/members/alice"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        event_where(&mut alice, ended).await,
        ChannelEndReason::PermissionRevoked
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn deleting_the_channel_or_closing_its_room_ends_it_for_everyone() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let mut alice = srv.client("alice").await;
    alice.connect_channel(server, channel, None).await.unwrap();

    // An operator closes the room through the rooms API.
    let room = format!("channel:{server}:{channel}");
    let (status, _) = srv
        .delete(&format!("/api/rooms/{room}"), Some(&srv.admin_token()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        event_where(&mut alice, ended).await,
        ChannelEndReason::ClosedByServer
    );

    alice.connect_channel(server, channel, None).await.unwrap();
    srv.op(
        "DELETE",
        &format!("/servers/{server}/channels/{channel}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        event_where(&mut alice, ended).await,
        ChannelEndReason::ClosedByServer
    );
    let err = alice
        .connect_channel(server, channel, None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.code()), Some(404));
    srv.shutdown().await;
}
