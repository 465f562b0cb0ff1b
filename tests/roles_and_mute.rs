//! Roles chosen at join and switched later, mute and unmute, and who may act
//! on whom, as other members see it.

mod common;

use common::{TestServer, next_event};
use conclave::auth::Grants;
use conclave::protocol::{MediaKind, Mode, Role, ServerMessage};
use conclave::status::Status;

#[tokio::test]
async fn switching_role_is_seen_by_everyone() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Video, None).await.unwrap();
    bob.join("r", Mode::Video, Some(Role::Audience))
        .await
        .unwrap();
    next_event(&mut alice).await; // bob joined

    bob.set_role(Role::Interactor, None).await.unwrap();
    for client in [&mut alice, &mut bob] {
        match next_event(client).await {
            ServerMessage::RoleChanged {
                user,
                role,
                operate_by,
                ..
            } => {
                assert_eq!(user.as_str(), "bob");
                assert_eq!(role, Role::Interactor);
                assert_eq!(operate_by, "bob");
            }
            other => panic!("expected role_changed, got {other:?}"),
        }
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn mute_reaches_everyone_with_who_did_it() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Video, None).await.unwrap();
    bob.join("r", Mode::Video, None).await.unwrap();
    next_event(&mut alice).await; // bob joined

    alice.mute(MediaKind::Audio, true, None).await.unwrap();
    alice.mute(MediaKind::Audio, false, None).await.unwrap();
    for client in [&mut alice, &mut bob] {
        for expected in [true, false] {
            match next_event(client).await {
                ServerMessage::MuteChanged {
                    user,
                    kind,
                    muted,
                    operate_by,
                    ..
                } => {
                    assert_eq!(
                        (user.as_str(), kind, muted, operate_by.as_str()),
                        ("alice", MediaKind::Audio, expected, "alice")
                    );
                }
                other => panic!("expected mute_changed, got {other:?}"),
            }
        }
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn audience_cannot_unmute() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    let joined = alice
        .join("r", Mode::Audio, Some(Role::Audience))
        .await
        .unwrap();
    assert!(joined.members[0].audio_muted);
    let err = alice.mute(MediaKind::Audio, false, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn becoming_audience_mutes_and_is_announced() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    alice.set_role(Role::Audience, None).await.unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::RoleChanged {
            role: Role::Audience,
            ..
        }
    ));
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::MuteChanged {
            kind: MediaKind::Audio,
            muted: true,
            ..
        }
    ));
    srv.shutdown().await;
}

#[tokio::test]
async fn roles_are_held_to_the_token() {
    let srv = TestServer::start().await;
    let listener = srv.token(
        "lis",
        Grants {
            rooms: vec!["*".into()],
            roles: vec![Role::Audience],
            ..Grants::default()
        },
    );
    let host = srv.client("host").await;
    host.create("talk", "").await.unwrap();
    let lis = srv.client_with_token(&listener).await;
    let err = lis
        .join("talk", Mode::Audio, Some(Role::Interactor))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    let joined = lis.join("talk", Mode::Audio, None).await.unwrap();
    assert_eq!(joined.role, Role::Audience);
    let err = lis.set_role(Role::Interactor, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn acting_on_others_needs_the_admin_grant() {
    let srv = TestServer::start().await;
    let mut mod_ = srv.client_with_token(&srv.admin_token()).await;
    let mut alice = srv.client("alice").await;
    mod_.create("r", "").await.unwrap();
    mod_.join("r", Mode::Audio, None).await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    next_event(&mut mod_).await; // alice joined

    for err in [
        alice.mute(MediaKind::Audio, true, Some("ops")).await,
        alice.set_role(Role::Audience, Some("ops")).await,
        alice.kick("ops").await,
    ] {
        assert_eq!(err.unwrap_err().status(), Some(Status::Forbidden));
    }

    mod_.mute(MediaKind::Audio, true, Some("alice"))
        .await
        .unwrap();
    match next_event(&mut alice).await {
        ServerMessage::MuteChanged {
            user, operate_by, ..
        } => {
            assert_eq!(user.as_str(), "alice");
            assert_eq!(operate_by, "ops", "the seed's operateByAccId");
        }
        other => panic!("expected mute_changed, got {other:?}"),
    }
    next_event(&mut mod_).await; // the same mute_changed
    mod_.set_role(Role::Audience, Some("alice")).await.unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        ServerMessage::RoleChanged { operate_by, .. } if operate_by == "ops"
    ));
    let err = mod_
        .mute(MediaKind::Audio, true, Some("nobody"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::NotFound));
    srv.shutdown().await;
}

#[tokio::test]
async fn requests_outside_a_room_answer_404() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    for err in [
        alice.leave().await,
        alice.mute(MediaKind::Audio, true, None).await,
        alice.set_role(Role::Audience, None).await,
        alice.kick("bob").await,
    ] {
        assert_eq!(err.unwrap_err().status(), Some(Status::NotFound));
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn screen_sharing_is_for_video_interactors_and_admins_can_stop_it() {
    let srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let admin = srv.client_with_token(&srv.admin_token()).await;
    let listener = srv.client("listener").await;
    let voice = srv.client("voice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Video, None).await.unwrap();
    admin.join("r", Mode::Video, None).await.unwrap();
    listener
        .join("r", Mode::Video, Some(Role::Audience))
        .await
        .unwrap();
    voice.join("r", Mode::Audio, None).await.unwrap();

    let err = listener.share_screen(true, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    let err = voice.share_screen(true, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::BadRequest));
    let err = admin.share_screen(true, Some("alice")).await.unwrap_err();
    assert_eq!(
        err.status(),
        Some(Status::BadRequest),
        "nobody starts a share for someone else"
    );

    alice.share_screen(true, None).await.unwrap();
    let event = common::event_where(&mut alice, |e| match e {
        ServerMessage::ScreenShareChanged {
            user,
            sharing,
            operate_by,
            ..
        } => Some((user.to_string(), *sharing, operate_by.clone())),
        _ => None,
    })
    .await;
    assert_eq!(event, ("alice".into(), true, "alice".into()));
    let (_, members) = srv
        .get("/api/rooms/r/members", Some(&srv.admin_token()))
        .await;
    assert_eq!(members["members"][0]["screen_sharing"], true);

    let err = listener
        .share_screen(false, Some("alice"))
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(Status::Forbidden),
        "stopping others needs the grant"
    );
    admin.share_screen(false, Some("alice")).await.unwrap();
    let event = common::event_where(&mut alice, |e| match e {
        ServerMessage::ScreenShareChanged {
            sharing,
            operate_by,
            ..
        } => Some((*sharing, operate_by.clone())),
        _ => None,
    })
    .await;
    assert_eq!(event, (false, "ops".into()));

    // Becoming audience ends a share.
    alice.share_screen(true, None).await.unwrap();
    alice.set_role(Role::Audience, None).await.unwrap();
    let stopped = common::event_where(&mut alice, |e| match e {
        ServerMessage::ScreenShareChanged { sharing: false, .. } => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(stopped, ());
    srv.shutdown().await;
}
