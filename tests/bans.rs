//! Kicks that stick: bans from a room (for some seconds or the room's
//! life) and from the server, token revocation by `jti`, and `room.ban`
//! for policies; each refused with its reason, and kept across restarts.

mod common;

use common::{TestServer, closed, event_where};
use conclave::client::SignalClient;
use conclave::model::{BanTerms, LeaveReason, Mode};
use conclave::protocol::ServerMessage;
use conclave::status::Status;
use serde_json::json;

async fn left(client: &mut SignalClient, who: &str) -> LeaveReason {
    event_where(client, |e| match e {
        ServerMessage::MemberLeft { user, reason, .. } if user.as_str() == who => Some(*reason),
        _ => None,
    })
    .await
}

/// A connection's hello with `token`, and the error it met, if any.
async fn hello(
    srv: &TestServer,
    token: &str,
) -> Result<SignalClient, conclave::client::ClientError> {
    let mut client = srv.raw_client().await;
    client.hello(token).await.map(|_| client)
}

#[tokio::test]
async fn a_kick_with_a_ban_keeps_the_user_out_until_lifted() {
    let srv = TestServer::start().await;
    let mut ops = srv.client_with_token(&srv.admin_token()).await;
    ops.create("r", "").await.unwrap();
    ops.join("r", Mode::Audio, None).await.unwrap();
    let alice = srv.client("alice").await;
    alice.join("r", Mode::Audio, None).await.unwrap();

    let terms = BanTerms {
        seconds: Some(3600),
        reason: "spam".into(),
    };
    ops.kick_and_ban("alice", terms).await.unwrap();
    assert_eq!(left(&mut ops, "alice").await, LeaveReason::Kicked);

    // The same token, a new connection: refused, and told why and until when.
    let again = srv.client("alice").await;
    let err = again.join("r", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    let told = err.to_string();
    assert!(
        told.contains("you are banned from room `r` until 20"),
        "{told}"
    );
    assert!(told.ends_with(": spam"), "{told}");
    // Only from that room, and only alice.
    again.create("elsewhere", "").await.unwrap();
    again.join("elsewhere", Mode::Audio, None).await.unwrap();
    srv.client("bob")
        .await
        .join("r", Mode::Audio, None)
        .await
        .unwrap();

    let admin = srv.admin_token();
    let (_, listed) = srv.get("/api/rooms/r/bans", Some(&admin)).await;
    let bans = listed["bans"].as_array().unwrap();
    assert_eq!(bans.len(), 1, "{listed}");
    assert_eq!(bans[0]["subject"], "alice");
    assert_eq!(bans[0]["by"], "ops");
    assert_eq!(bans[0]["reason"], "spam");
    assert!(bans[0]["until"].as_i64().unwrap() > 0);

    let (status, _) = srv.delete("/api/rooms/r/bans/alice", Some(&admin)).await;
    assert_eq!(status, 200);
    let (status, _) = srv.delete("/api/rooms/r/bans/alice", Some(&admin)).await;
    assert_eq!(status, 404, "lifted once");
    let back = srv.client("alice").await;
    back.join("r", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn a_ban_for_the_rooms_life_ends_when_the_room_closes() {
    let srv = TestServer::start().await;
    let admin = srv.admin_token();
    let ops = srv.client_with_token(&admin).await;
    ops.create("r", "").await.unwrap();
    ops.join("r", Mode::Audio, None).await.unwrap();
    let alice = srv.client("alice").await;
    alice.join("r", Mode::Audio, None).await.unwrap();
    ops.kick_and_ban("alice", BanTerms::default())
        .await
        .unwrap();

    let again = srv.client("alice").await;
    let err = again.join("r", Mode::Audio, None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("banned from room `r` for as long as the room is open"),
        "{err}"
    );
    let (status, _) = srv.delete("/api/rooms/r", Some(&admin)).await;
    assert_eq!(status, 200);
    // The name again, another room: the ban went with the old one.
    again.create("r", "").await.unwrap();
    again.join("r", Mode::Audio, None).await.unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn a_server_ban_and_a_revocation_end_live_sessions_at_once() {
    let srv = TestServer::start().await;
    let admin = srv.admin_token();
    let mut alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    let mut mallory = srv.client("mallory").await;
    mallory.join("r", Mode::Audio, None).await.unwrap();
    let mut carol = hello(&srv, &srv.token_with_jti("carol", "t-carol"))
        .await
        .unwrap();
    carol.join("r", Mode::Audio, None).await.unwrap();

    let (status, body) = srv
        .post(
            "/api/bans",
            Some(&admin),
            json!({ "user": "mallory", "reason": "abuse" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(left(&mut alice, "mallory").await, LeaveReason::Kicked);
    let (code, reason) = closed(&mut mallory).await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1008, "banned from this server"));
    // Nor may mallory come back, with any token.
    let err = refused(&srv, &srv.user_token("mallory")).await;
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    assert!(
        err.to_string()
            .ends_with("you are banned from this server: abuse"),
        "{err}"
    );

    let (status, body) = srv
        .post(
            "/api/revocations",
            Some(&admin),
            json!({ "jti": "t-carol", "reason": "leaked" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(left(&mut alice, "carol").await, LeaveReason::Kicked);
    let (code, reason) = closed(&mut carol).await.expect("a close frame");
    assert_eq!((code, reason.as_str()), (1008, "token revoked"));
    let err = refused(&srv, &srv.token_with_jti("carol", "t-carol")).await;
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    assert!(err.to_string().contains("this token was revoked"), "{err}");
    // Carol's other tokens still work: it is the token that is revoked.
    hello(&srv, &srv.user_token("carol")).await.unwrap();
    // Alice was never named.
    alice.ping().await.unwrap();

    let (status, _) = srv.delete("/api/bans/mallory", Some(&admin)).await;
    assert_eq!(status, 200);
    hello(&srv, &srv.user_token("mallory")).await.unwrap();
    let (status, _) = srv.delete("/api/revocations/t-carol", Some(&admin)).await;
    assert_eq!(status, 200);
    hello(&srv, &srv.token_with_jti("carol", "t-carol"))
        .await
        .unwrap();
    srv.shutdown().await;
}

#[tokio::test]
async fn bans_and_revocations_survive_a_restart() {
    let srv = TestServer::start().await;
    let admin = srv.admin_token();
    let ban = |path: &'static str, body: serde_json::Value| {
        let srv = &srv;
        let admin = &admin;
        async move {
            let (status, answer) = srv.post(path, Some(admin), body).await;
            assert_eq!(status, 200, "{path}: {answer}");
        }
    };
    ban("/api/bans", json!({ "user": "mallory" })).await;
    // A timed room ban may be set for a room that is not open.
    ban(
        "/api/rooms/r/bans",
        json!({ "user": "alice", "seconds": 3600, "reason": "cool off" }),
    )
    .await;
    ban("/api/revocations", json!({ "jti": "t-1" })).await;
    // Room-life bans end with the room, and rooms end with the process.
    let ops = srv.client_with_token(&admin).await;
    ops.create("q", "").await.unwrap();
    ban("/api/rooms/q/bans", json!({ "user": "bob" })).await;
    let (status, answer) = srv
        .post(
            "/api/rooms/nowhere/bans",
            Some(&admin),
            json!({ "user": "bob" }),
        )
        .await;
    assert_eq!(status, 404, "a room-life ban needs the room: {answer}");
    drop(ops);

    let srv = srv.restart().await;
    let admin = srv.admin_token();
    let err = refused(&srv, &srv.user_token("mallory")).await;
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    let err = refused(&srv, &srv.token_with_jti("eve", "t-1")).await;
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    let err = alice.join("r", Mode::Audio, None).await.unwrap_err();
    assert!(err.to_string().ends_with(": cool off"), "{err}");
    let bob = srv.client("bob").await;
    bob.create("q", "").await.unwrap();
    bob.join("q", Mode::Audio, None).await.unwrap();

    let (_, bans) = srv.get("/api/bans", Some(&admin)).await;
    let listed = bans["bans"].as_array().unwrap();
    // Oldest first; two bans set within one millisecond tie, so the order
    // between them is not asserted, only that both are back.
    let created: Vec<i64> = listed
        .iter()
        .map(|b| b["created_at"].as_i64().unwrap())
        .collect();
    assert!(created.is_sorted(), "{bans}");
    let mut subjects: Vec<&str> = listed
        .iter()
        .map(|b| b["subject"].as_str().unwrap())
        .collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["alice", "mallory"], "{bans}");
    let (_, revoked) = srv.get("/api/revocations", Some(&admin)).await;
    assert_eq!(revoked["revocations"][0]["subject"], "t-1", "{revoked}");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_policy_bans_with_room_ban() {
    let srv = TestServer::start().await;
    srv.script(
        "strict",
        r#"return {
          on_joined = function(m)
            if m.user == "troll" then room.ban(m.user, 600, "trolling") end
          end,
        }"#,
    )
    .await;
    let mut alice = srv.client("alice").await;
    alice
        .create_with_policy("r", "", Some("strict"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    let troll = srv.client("troll").await;
    troll.join("r", Mode::Audio, None).await.unwrap();
    assert_eq!(left(&mut alice, "troll").await, LeaveReason::Kicked);
    let again = srv.client("troll").await;
    let err = again.join("r", Mode::Audio, None).await.unwrap_err();
    assert!(err.to_string().ends_with(": trolling"), "{err}");
    let (_, listed) = srv.get("/api/rooms/r/bans", Some(&srv.admin_token())).await;
    assert_eq!(listed["bans"][0]["by"], "policy:strict", "{listed}");
    srv.shutdown().await;
}

/// The error a hello with `token` meets; fails if it is accepted.
async fn refused(srv: &TestServer, token: &str) -> conclave::client::ClientError {
    match hello(srv, token).await {
        Ok(_) => panic!("the hello was accepted"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_ban_holds_in_a_community_media_channel_too() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob"]).await;
    let channel = srv.media_channel(server, "stage").await;
    let mut alice = srv.client("alice").await;
    let ok = alice.connect_channel(server, channel, None).await.unwrap();
    let room = ok.join.room.as_str().to_owned();
    let bob = srv.client("bob").await;
    bob.connect_channel(server, channel, None).await.unwrap();

    let (status, body) = srv
        .post(
            &format!("/api/rooms/{room}/bans"),
            Some(&srv.admin_token()),
            json!({ "user": "bob", "seconds": 600, "reason": "heckling" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(left(&mut alice, "bob").await, LeaveReason::Kicked);
    // The community would let bob in; the ban is asked first.
    let again = srv.client("bob").await;
    let err = again
        .connect_channel(server, channel, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    assert!(err.to_string().ends_with(": heckling"), "{err}");
    srv.shutdown().await;
}
