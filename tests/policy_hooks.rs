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

#[tokio::test]
async fn the_store_survives_a_restart() {
    let visits = r#"return { on_joined = function(m)
         local n = (store.get("visits:" .. m.user) or 0) + 1
         store.set("visits:" .. m.user, n)
         room.send(m.user, { visits = n })
       end }"#;
    let mut srv = TestServer::start().await;
    srv.script("visits", visits).await;
    let mut alice = srv.client("alice").await;
    alice
        .create_with_policy("r", "", Some("visits"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    assert_eq!(event_where(&mut alice, data).await, json!({ "visits": 1 }));
    drop(alice);
    srv.stop().await;

    // The same data directory, a new process's worth of server.
    let dir = srv.data_dir.path().to_path_buf();
    let again = TestServer::start_with(|c| c.server.data_dir = dir.clone()).await;
    again.script("visits", visits).await;
    let mut alice = again.client("alice").await;
    alice
        .create_with_policy("r", "", Some("visits"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    assert_eq!(event_where(&mut alice, data).await, json!({ "visits": 2 }));
    again.shutdown().await;
}

#[tokio::test]
async fn a_decide_hooks_actions_are_dropped_when_a_later_rule_refuses() {
    let srv = TestServer::start().await;
    // The hook allows and queues a message; the room then refuses the
    // request (an audience member cannot unmute): the message never goes.
    srv.script(
        "eager",
        r#"return { can_mute = function(req) room.send(nil, { saw = req.user }) return true end }"#,
    )
    .await;
    let mut alice = srv.client("alice").await;
    alice
        .create_with_policy("r", "", Some("eager"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    let bob = srv.client("bob").await;
    bob.join("r", Mode::Audio, Some(conclave::protocol::Role::Audience))
        .await
        .unwrap();
    let err = bob.mute(MediaKind::Audio, false, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
    // A request that succeeds lets its hook's actions through: the first
    // data event alice sees is about this one, not about the refused one.
    alice.mute(MediaKind::Audio, true, None).await.unwrap();
    assert_eq!(
        event_where(&mut alice, data).await,
        json!({ "saw": "alice" })
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn can_send_may_rewrite_handle_or_refuse_with_a_code() {
    let srv = TestServer::start().await;
    srv.script(
        "editor",
        r#"return { can_send = function(req)
             if req.payload == "shout" then return { payload = "SHOUT" } end
             if req.payload == "note" then room.send(req.user, "noted") return { handled = true } end
             if req.payload == "spam" then return { allow = false, code = 429, reason = "slow down" } end
           end }"#,
    )
    .await;
    let mut alice = srv.client("alice").await;
    let mut bob = srv.client("bob").await;
    alice
        .create_with_policy("r", "", Some("editor"))
        .await
        .unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    bob.join("r", Mode::Audio, None).await.unwrap();

    alice.send_data(json!("shout"), None).await.unwrap();
    assert_eq!(event_where(&mut bob, data).await, json!("SHOUT"));
    // Handled: 200 for alice, the script's own answer to her, nothing to bob.
    alice.send_data(json!("note"), None).await.unwrap();
    assert_eq!(event_where(&mut alice, data).await, json!("noted"));
    let err = alice.send_data(json!("spam"), None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::RateLimited), "{err}");
    assert!(err.to_string().contains("slow down"), "{err}");
    // As sent, when the hook says nothing; and it is the next bob gets.
    alice.send_data(json!("plain"), None).await.unwrap();
    assert_eq!(event_where(&mut bob, data).await, json!("plain"));
    srv.shutdown().await;
}

#[tokio::test]
async fn on_screen_share_changed_hears_starts_and_stops() {
    let srv = TestServer::start().await;
    srv.script(
        "shares",
        r#"return { on_screen_share_changed = function(e)
             room.send(nil, { user = e.user, sharing = e.sharing, by = e.operate_by })
           end }"#,
    )
    .await;
    let mut alice = srv.client("alice").await;
    alice
        .create_with_policy("r", "", Some("shares"))
        .await
        .unwrap();
    alice.join("r", Mode::Video, None).await.unwrap();
    alice.share_screen(true, None).await.unwrap();
    assert_eq!(
        event_where(&mut alice, data).await,
        json!({ "user": "alice", "sharing": true, "by": "alice" })
    );
    alice.share_screen(false, None).await.unwrap();
    assert_eq!(
        event_where(&mut alice, data).await,
        json!({ "user": "alice", "sharing": false, "by": "alice" })
    );
    srv.shutdown().await;
}
