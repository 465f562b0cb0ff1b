//! The rest of the Lua API, end to end: timers, the persistent store,
//! closing, metadata, creation and moderation decisions. (`on_speaking` is
//! driven by real media in tests/media.rs.)

mod common;

use common::{TestServer, event_where, next_event};
use conclave::protocol::{LeaveReason, MediaKind, Mode, ServerMessage};
use conclave::status::Status;
use serde_json::{Value, json};

fn data(e: &ServerMessage) -> Option<Value> {
    match e {
        ServerMessage::Data { payload, .. } => Some(payload.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn repeating_timers_tick_until_cancelled() {
    let srv = TestServer::start().await;
    srv.script(
        "ticker",
        r#"return {
             on_joined = function() room.state.n = 0; room.every(20, "tick") end,
             on_timer = function(name)
               room.state.n = room.state.n + 1
               room.send(nil, { tick = room.state.n })
               if room.state.n == 3 then room.cancel("tick"); room.after(30, "done") end
               if name == "done" then room.send(nil, { done = true }) end
             end,
           }"#,
    )
    .await;
    let mut alice = srv.client("alice").await;
    alice
        .create_with_policy("r", "", Some("ticker"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(event_where(&mut alice, data).await);
    }
    // Three ticks, then the one-shot "done" timer (itself counted as a tick).
    assert_eq!(
        seen[..3],
        [json!({"tick": 1}), json!({"tick": 2}), json!({"tick": 3})]
    );
    assert_eq!(seen[3], json!({"tick": 4}));
    assert_eq!(event_where(&mut alice, data).await, json!({"done": true}));
    srv.shutdown().await;
}

#[tokio::test]
async fn the_store_outlives_rooms() {
    let srv = TestServer::start().await;
    srv.script(
        "visits",
        r#"return { on_joined = function(m)
             local n = (store.get("visits:" .. m.user) or 0) + 1
             store.set("visits:" .. m.user, n)
             room.send(m.user, { visits = n })
           end }"#,
    )
    .await;
    let mut alice = srv.client("alice").await;
    for room in ["first", "second"] {
        alice
            .create_with_policy(room, "", Some("visits"))
            .await
            .unwrap();
        alice.join(room, Mode::Audio, None).await.unwrap();
        let payload = event_where(&mut alice, data).await;
        let expected = if room == "first" { 1 } else { 2 };
        assert_eq!(payload, json!({ "visits": expected }));
        alice.leave().await.unwrap();
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn a_policy_can_close_its_room() {
    let srv = TestServer::start().await;
    srv.script(
        "closer",
        r#"return {
             can_send = function(req) if req.payload == "end" then room.close() end end,
             on_closing = function(reason) store.set("closed", reason) end,
           }"#,
    )
    .await;
    let mut alice = srv.client("alice").await;
    let bob = srv.client("bob").await;
    alice
        .create_with_policy("r", "", Some("closer"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();
    bob.send_data(json!("end"), None).await.unwrap();
    let reason = event_where(&mut alice, |e| match e {
        ServerMessage::Disconnected { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, LeaveReason::RoomClosed);
    let records = srv.records("?room=r").await;
    assert_eq!(records[0]["end_reason"], "closed_by_policy");
    srv.shutdown().await;
}

#[tokio::test]
async fn metadata_reaches_joiners_and_can_create_decides() {
    let srv = TestServer::start().await;
    srv.script(
        "lobby",
        r#"return {
             can_create = function(req)
               if req.room:find("^forbidden") then return false, "not that name" end
             end,
             on_joined = function(m) room.set_metadata("host", m.user) end,
           }"#,
    )
    .await;
    let alice = srv.client("alice").await;
    let err = alice
        .create_with_policy("forbidden-1", "", Some("lobby"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    assert!(err.to_string().contains("not that name"));
    alice
        .create_with_policy("ok", "", Some("lobby"))
        .await
        .unwrap();
    alice.join("ok", Mode::Audio, None).await.unwrap();
    let bob = srv.client("bob").await;
    let joined = bob.join("ok", Mode::Audio, None).await.unwrap();
    assert_eq!(
        joined.metadata["host"], "bob",
        "the latest joiner, as the script says"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn an_explicit_allow_lets_a_member_act_on_others() {
    let srv = TestServer::start().await;
    srv.script(
        "captains",
        r#"local function captain(user) local m = room.member(user) return m and m.attrs.captain end
           return {
             can_kick = function(req) if captain(req.user) then return true end end,
             can_mute = function(req) if captain(req.user) then return true end end,
           }"#,
    )
    .await;
    let mut cap = srv
        .client_with_token(&srv.token_with_attrs("cap", json!({"captain": true})))
        .await;
    let mut mate = srv.client("mate").await;
    let other = srv.client("other").await;
    cap.create_with_policy("ship", "", Some("captains"))
        .await
        .unwrap();
    cap.join("ship", Mode::Audio, None).await.unwrap();
    mate.join("ship", Mode::Audio, None).await.unwrap();
    other.join("ship", Mode::Audio, None).await.unwrap();
    // Without the policy's explicit yes, acting on others needs the admin grant.
    let err = other
        .mute(MediaKind::Audio, true, Some("mate"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    cap.mute(MediaKind::Audio, true, Some("mate"))
        .await
        .unwrap();
    let by = event_where(&mut mate, |e| match e {
        ServerMessage::MuteChanged { operate_by, .. } => Some(operate_by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(by, "cap");
    cap.kick("other").await.unwrap();
    let left = event_where(&mut cap, |e| match e {
        ServerMessage::MemberLeft { user, reason, .. } => Some((user.to_string(), *reason)),
        _ => None,
    })
    .await;
    assert_eq!(left, ("other".into(), LeaveReason::Kicked));
    let _ = next_event(&mut mate).await;
    srv.shutdown().await;
}
