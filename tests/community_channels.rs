//! Community media channels over the signaling protocol: connecting,
//! members, media and moderation with who did it, the member limit,
//! visibility, and a 403 naming the key for every RTC permission.

mod common;

use common::community::{KEYS, allow, set};
use common::{TestServer, event_where};
use conclave::protocol::{ChannelEndReason, LeaveReason, MediaKind, Mode, ServerMessage};
use conclave::status::Status;
use serde_json::{Value, json};

pub fn mute(e: &ServerMessage) -> Option<(String, MediaKind, bool, String)> {
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

pub fn share(e: &ServerMessage) -> Option<(String, bool, String)> {
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

pub fn ended(e: &ServerMessage) -> Option<(u64, u64, ChannelEndReason)> {
    match e {
        ServerMessage::ChannelEnded {
            server,
            channel,
            reason,
            ..
        } => Some((server.0, channel.0, *reason)),
        _ => None,
    }
}

pub fn left(e: &ServerMessage) -> Option<(String, LeaveReason)> {
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

/// The refusal's code and message.
fn refusal(e: conclave::client::ClientError) -> (Status, String) {
    match e {
        conclave::client::ClientError::Refused(f) => (f.status, f.message),
        other => panic!("expected a refusal, got {other}"),
    }
}

fn users(members: &[conclave::protocol::MemberInfo]) -> Vec<&str> {
    members.iter().map(|m| m.user.as_str()).collect()
}

#[tokio::test]
async fn connect_list_and_disconnect() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob"]).await;
    let channel = srv.media_channel(server, "stage").await;

    let mut alice = srv.client("alice").await;
    let ok = alice.connect_channel(server, channel, None).await.unwrap();
    assert_eq!((ok.server.0, ok.channel.0), (server, channel));
    assert_eq!(ok.join.room.as_str(), format!("channel:{server}:{channel}"));
    assert_eq!(ok.settings.member_limit, 99);
    let video = ok.settings.video;
    assert_eq!((video.width, video.height, video.fps), (640, 480, 15));
    assert_eq!(ok.join.mode, Mode::Video);
    // Connected with microphone and camera off; opening them is asked for.
    assert!(ok.join.members[0].audio_muted && ok.join.members[0].video_muted);

    let mut bob = srv.client("bob").await;
    let ok = bob
        .connect_channel(server, channel, Some(Mode::Audio))
        .await
        .unwrap();
    assert_eq!(users(&ok.join.members), ["alice", "bob"]);
    assert_eq!(event_where(&mut alice, joined).await, "bob");

    let carol_view = srv.client("olivia").await;
    let online = carol_view.channel_members(server, channel).await.unwrap();
    assert_eq!(users(&online.members), ["alice", "bob"]);

    bob.leave().await.unwrap();
    assert_eq!(
        event_where(&mut bob, ended).await,
        (server, channel, ChannelEndReason::LeftBySelf)
    );
    assert_eq!(
        event_where(&mut alice, left).await,
        ("bob".into(), LeaveReason::Normal)
    );
    alice.leave().await.unwrap();
    assert_eq!(
        event_where(&mut alice, ended).await.2,
        ChannelEndReason::LeftBySelf
    );
    // All members out: the room is gone, the channel stays.
    let online = carol_view.channel_members(server, channel).await.unwrap();
    assert!(online.members.is_empty());
    let again = bob.connect_channel(server, channel, None).await.unwrap();
    assert_eq!(users(&again.join.members), ["bob"]);
    srv.shutdown().await;
}

#[tokio::test]
async fn the_channel_room_is_reserved() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let alice = srv.client("alice").await;
    let err = alice
        .create(&format!("channel:{server}:{channel}"), "")
        .await
        .unwrap_err();
    assert_eq!(refusal(err).0, Status::Forbidden);
    // A text channel has no room.
    let text = srv
        .op(
            "POST",
            &format!("/servers/{server}/channels"),
            json!({"name": "chat", "kind": "text"}),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let err = alice.connect_channel(server, text, None).await.unwrap_err();
    assert_eq!(refusal(err).0, Status::NotFound);
    srv.shutdown().await;
}

#[tokio::test]
async fn own_media_and_moderation_carry_the_operator() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let moderator = srv
        .role(
            server,
            "moderator",
            10,
            allow(&[
                "RTCChannelDisconnectOther",
                "RTCChannelOpenCloseOtherMicrophone",
                "RTCChannelOpenCloseOtherCamera",
                "RTCChannelOpenCloseEveryoneMicrophone",
                "RTCChannelOpenCloseEveryoneCamera",
                "RTCChannelCloseOtherShareScreen",
            ]),
        )
        .await;
    srv.give(server, "alice", moderator).await;

    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.connect_channel(server, channel, None).await.unwrap();
    bob.connect_channel(server, channel, None).await.unwrap();
    event_where(&mut alice, joined).await;

    // Bob opens his own microphone and camera and shares his screen.
    bob.mute(MediaKind::Audio, false, None).await.unwrap();
    bob.mute(MediaKind::Video, false, None).await.unwrap();
    bob.share_screen(true, None).await.unwrap();
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            event_where(c, mute).await,
            ("bob".into(), MediaKind::Audio, false, "bob".into())
        );
        assert_eq!(
            event_where(c, mute).await,
            ("bob".into(), MediaKind::Video, false, "bob".into())
        );
        assert_eq!(
            event_where(c, share).await,
            ("bob".into(), true, "bob".into())
        );
    }

    // Alice closes and reopens Bob's microphone, closes every camera, and
    // stops his share: each event names Bob and Alice.
    alice
        .mute(MediaKind::Audio, true, Some("bob"))
        .await
        .unwrap();
    alice
        .mute(MediaKind::Audio, false, Some("bob"))
        .await
        .unwrap();
    alice.mute_all(MediaKind::Video, true).await.unwrap();
    alice.share_screen(false, Some("bob")).await.unwrap();
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            event_where(c, mute).await,
            ("bob".into(), MediaKind::Audio, true, "alice".into())
        );
        assert_eq!(
            event_where(c, mute).await,
            ("bob".into(), MediaKind::Audio, false, "alice".into())
        );
        assert_eq!(
            event_where(c, mute).await,
            ("bob".into(), MediaKind::Video, true, "alice".into())
        );
        assert_eq!(
            event_where(c, share).await,
            ("bob".into(), false, "alice".into())
        );
    }
    alice.mute_all(MediaKind::Audio, true).await.unwrap();
    assert_eq!(
        event_where(&mut bob, mute).await,
        ("bob".into(), MediaKind::Audio, true, "alice".into())
    );

    // Alice disconnects Bob.
    alice.kick("bob").await.unwrap();
    match event_where(&mut bob, |e| match e {
        ServerMessage::Disconnected { reason, .. } => Some(*reason),
        _ => None,
    })
    .await
    {
        LeaveReason::Kicked => {}
        other => panic!("expected kicked, got {other:?}"),
    }
    assert_eq!(
        event_where(&mut bob, ended).await,
        (server, channel, ChannelEndReason::Kicked)
    );
    assert_eq!(
        event_where(&mut alice, left).await,
        ("bob".into(), LeaveReason::Kicked)
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn over_the_member_limit_answers_channel_full() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob"]).await;
    let channel = srv.media_channel(server, "small").await;
    let path = format!("/servers/{server}/channels/{channel}/settings");
    let settings = srv.op("PATCH", &path, json!({"member_limit": 1})).await;
    assert_eq!(settings["member_limit"], 1);
    assert_eq!(srv.op("GET", &path, Value::Null).await, settings);

    let alice = srv.client("alice").await;
    alice.connect_channel(server, channel, None).await.unwrap();
    let bob = srv.client("bob").await;
    let (status, message) = refusal(
        bob.connect_channel(server, channel, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, Status::ChannelFull);
    assert_eq!(status.code(), 11003);
    assert!(message.contains("member limit is 1"), "{message}");
    srv.shutdown().await;
}

#[tokio::test]
async fn an_invisible_channel_is_not_listed_and_refuses_connect() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob"]).await;
    let private = srv
        .op(
            "POST",
            &format!("/servers/{server}/channels"),
            json!({"name": "backstage", "kind": "media", "visibility": "private"}),
        )
        .await["id"]
        .as_u64()
        .unwrap();
    let public = srv.media_channel(server, "hall").await;
    srv.op(
        "PUT",
        &format!("/servers/{server}/channels/{public}/lists/black/members/bob"),
        Value::Null,
    )
    .await;
    srv.op(
        "PUT",
        &format!("/servers/{server}/channels/{private}/lists/white/members/alice"),
        Value::Null,
    )
    .await;

    let listed = |body: Value| -> Vec<u64> {
        body["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let channels = format!("/servers/{server}/channels");
    let (_, for_alice) = srv.as_user("alice", "GET", &channels, Value::Null).await;
    let (_, for_bob) = srv.as_user("bob", "GET", &channels, Value::Null).await;
    assert_eq!(listed(for_alice), [private, public]);
    assert!(listed(for_bob).is_empty());
    let (status, _) = srv
        .as_user("bob", "GET", &format!("{channels}/{private}"), Value::Null)
        .await;
    assert_eq!(status, 404);

    let bob = srv.client("bob").await;
    for channel in [private, public] {
        let (status, message) = refusal(
            bob.connect_channel(server, channel, None)
                .await
                .unwrap_err(),
        );
        assert_eq!(status, Status::Forbidden);
        assert!(message.contains("not visible"), "{message}");
        let err = bob.channel_members(server, channel).await.unwrap_err();
        assert_eq!(refusal(err).0, Status::NotFound);
    }
    let alice = srv.client("alice").await;
    alice.connect_channel(server, private, None).await.unwrap();
    srv.shutdown().await;
}

/// Bob holds only RTCChannelConnect (and Olivia, the owner, everything);
/// every other RTC key is refused with 403 naming it, and a member override
/// takes RTCChannelConnect from Mallory.
#[tokio::test]
async fn every_rtc_key_is_enforced_and_named() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["bob", "mallory"]).await;
    let channel = srv.media_channel(server, "stage").await;
    srv.everyone(server, set(&KEYS[1..10], "inherit")).await;
    srv.override_member(
        server,
        channel,
        "mallory",
        set(&["RTCChannelConnect"], "deny"),
    )
    .await;

    let mallory = srv.client("mallory").await;
    let (status, message) = refusal(
        mallory
            .connect_channel(server, channel, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, Status::Forbidden);
    assert!(message.contains("RTCChannelConnect"), "{message}");

    let mut olivia = srv.client("olivia").await;
    olivia.connect_channel(server, channel, None).await.unwrap();
    olivia.mute(MediaKind::Video, false, None).await.unwrap();
    olivia.share_screen(true, None).await.unwrap();
    let bob = srv.client("bob").await;
    bob.connect_channel(server, channel, None).await.unwrap();
    event_where(&mut olivia, joined).await;

    let attempts: Vec<(&str, conclave::client::ClientError)> = vec![
        (
            "RTCChannelOpenMicrophone",
            bob.mute(MediaKind::Audio, false, None).await.unwrap_err(),
        ),
        (
            "RTCChannelOpenCamera",
            bob.mute(MediaKind::Video, false, None).await.unwrap_err(),
        ),
        (
            "RTCChannelOpenShareScreen",
            bob.share_screen(true, None).await.unwrap_err(),
        ),
        (
            "RTCChannelOpenCloseOtherMicrophone",
            bob.mute(MediaKind::Audio, true, Some("olivia"))
                .await
                .unwrap_err(),
        ),
        (
            "RTCChannelOpenCloseOtherCamera",
            bob.mute(MediaKind::Video, true, Some("olivia"))
                .await
                .unwrap_err(),
        ),
        (
            "RTCChannelOpenCloseEveryoneMicrophone",
            bob.mute_all(MediaKind::Audio, true).await.unwrap_err(),
        ),
        (
            "RTCChannelOpenCloseEveryoneCamera",
            bob.mute_all(MediaKind::Video, true).await.unwrap_err(),
        ),
        (
            "RTCChannelCloseOtherShareScreen",
            bob.share_screen(false, Some("olivia")).await.unwrap_err(),
        ),
        (
            "RTCChannelDisconnectOther",
            bob.kick("olivia").await.unwrap_err(),
        ),
    ];
    for (key, err) in attempts {
        let (status, message) = refusal(err);
        assert_eq!(status, Status::Forbidden, "{key}: {message}");
        assert_eq!(
            message,
            format!("missing permission {key} in channel {channel}")
        );
    }
    // Muting oneself needs no key.
    bob.mute(MediaKind::Audio, true, None).await.unwrap();
    // The owner holds every key.
    olivia.mute(MediaKind::Audio, false, None).await.unwrap();
    olivia.kick("bob").await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn an_admin_token_skips_the_keys_but_not_the_member_limit() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice"]).await;
    let channel = srv.media_channel(server, "stage").await;
    // Nobody holds any key here, the operator included.
    srv.everyone(server, set(&KEYS[..10], "deny")).await;
    let path = format!("/servers/{server}/channels/{channel}/settings");
    srv.op("PATCH", &path, json!({"member_limit": 1})).await;

    let alice = srv.client("alice").await;
    let (status, message) = refusal(
        alice
            .connect_channel(server, channel, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, Status::Forbidden, "{message}");
    let ops = srv.client_with_token(&srv.admin_token()).await;
    ops.connect_channel(server, channel, None).await.unwrap();
    // Keys are the operator's to skip: it opens its microphone without one.
    ops.mute(MediaKind::Audio, false, None).await.unwrap();
    // The limit is not: a second operator finds the channel full.
    let second = srv.client_with_token(&srv.admin_token_for("ops2")).await;
    let (status, _) = refusal(
        second
            .connect_channel(server, channel, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, Status::ChannelFull);
    srv.shutdown().await;
}

#[tokio::test]
async fn deleting_a_server_ends_its_live_channels() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let mut alice = srv.client("alice").await;
    alice.connect_channel(server, channel, None).await.unwrap();
    srv.op("DELETE", &format!("/servers/{server}"), Value::Null)
        .await;
    let reason = common::event_where(&mut alice, ended).await;
    assert_eq!(
        (reason.0, reason.1, reason.2),
        (server, channel, ChannelEndReason::ClosedByServer)
    );
    // The channel's room is gone with it.
    let (_, rooms) = srv.get("/api/rooms", Some(&srv.admin_token())).await;
    assert_eq!(rooms["rooms"], json!([]), "{rooms}");
    srv.shutdown().await;
}
