//! Resuming a membership (protocol.md §2.4) keeps what the membership had
//! (mute state, screen share, when it began) and takes everything about
//! the person from the new token: name, attrs, roles and the admin grant.
//! That last part is a security property: a token that lost a grant must
//! not keep it by resuming.

mod common;

use std::time::Duration;

use common::{TestServer, event_where};
use conclave::auth::{Auth, Grants, claims_for};
use conclave::protocol::{MediaKind, Mode, Role, ServerMessage};
use conclave::status::Status;
use serde_json::json;

fn token(user: &str, name: &str, grants: Grants, attrs: serde_json::Value) -> String {
    let mut claims = claims_for(user, name, grants, Duration::from_secs(600));
    claims.attrs = attrs.as_object().cloned().unwrap_or_default();
    Auth::dev().mint(&claims).expect("mint")
}

fn anywhere(admin: bool, roles: Vec<Role>) -> Grants {
    Grants {
        create: true,
        rooms: vec!["*".into()],
        roles,
        admin,
    }
}

#[tokio::test]
async fn a_resume_keeps_the_membership_and_takes_the_new_token() {
    let srv = TestServer::start_with(|c| c.rooms.reconnect_grace = Duration::from_secs(60)).await;
    // What a member's token says reaches others through the policy.
    srv.script(
        "tier",
        "return { can_send = function(req) \
           return { payload = { tier = room.member(req.user).attrs.tier, text = req.payload } } end }",
    )
    .await;
    let mut bob = srv.client("bob").await;
    bob.create_with_policy("r", "", Some("tier")).await.unwrap();
    bob.join("r", Mode::Video, None).await.unwrap();

    let first = token(
        "alice",
        "Alice",
        anywhere(true, vec![Role::Interactor, Role::Audience]),
        json!({ "tier": "gold" }),
    );
    let alice = srv.client_with_token(&first).await;
    let joined = alice.join("r", Mode::Video, None).await.unwrap();
    let joined_at = joined
        .members
        .iter()
        .find(|m| m.user.as_str() == "alice")
        .unwrap()
        .joined_at;
    alice.mute(MediaKind::Audio, true, None).await.unwrap();
    alice.share_screen(true, None).await.unwrap();
    // With the admin grant alice may mute bob.
    alice
        .mute(MediaKind::Video, true, Some("bob"))
        .await
        .unwrap();
    event_where(&mut bob, |e| match e {
        ServerMessage::MuteChanged { user, kind, .. }
            if user.as_str() == "bob" && *kind == MediaKind::Video =>
        {
            Some(())
        }
        _ => None,
    })
    .await;

    // The connection drops, and the server sees it go.
    drop(alice);
    common::eventually("the server to see alice's connection go", || async {
        srv.metric("conclave_connections").await == 1.0
    })
    .await;

    // Back with a new token: another name and attrs, audience only, no
    // admin grant.
    let second = token(
        "alice",
        "Alice (phone)",
        anywhere(false, vec![Role::Audience]),
        json!({ "tier": "silver" }),
    );
    let alice = srv.client_with_token(&second).await;
    let resumed = alice.join("r", Mode::Audio, None).await.unwrap();
    assert!(resumed.resumed);
    let me = resumed
        .members
        .iter()
        .find(|m| m.user.as_str() == "alice")
        .unwrap();
    // Kept from the membership: mode, role, mutes, share, start time.
    assert_eq!(me.mode, Mode::Video, "the join's mode is ignored on resume");
    assert_eq!(me.role, Role::Interactor);
    assert!(me.audio_muted && !me.video_muted);
    assert!(me.screen_sharing);
    assert_eq!(me.joined_at, joined_at);
    // Taken from the new token: the name...
    assert_eq!(me.name, "Alice (phone)");
    // ...not the admin grant any more...
    let err = alice
        .mute(MediaKind::Audio, true, Some("bob"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    assert!(err.to_string().contains("admin grant"), "{err}");
    // ...its roles: audience is allowed, interactor no longer...
    alice.set_role(Role::Audience, None).await.unwrap();
    let err = alice.set_role(Role::Interactor, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    assert!(
        err.to_string().contains("may not take the interactor role"),
        "{err}"
    );
    // ...and its attrs, as the policy reads them.
    alice.send_data(json!("hi"), Some("bob")).await.unwrap();
    let payload = event_where(&mut bob, |e| match e {
        ServerMessage::Data { from, payload, .. } if from == "alice" => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(payload, json!({ "tier": "silver", "text": "hi" }));
    srv.shutdown().await;
}
