//! The browser client end to end: the page at `/` in headless Chromium with
//! fake camera and microphone, against a real server on 127.0.0.1:0.
//!
//! Assertions read the page through `window.conclave` (state and WebRTC
//! stats), never its text, except where the text is the point (errors shown
//! in words). Browser tests run one at a time: each starts two or three
//! Chromium instances, and the machines that run them are small.

mod common;
#[path = "browser/harness.rs"]
mod harness;

use std::time::Duration;

use common::{TestServer, event_where};
use conclave::auth::{Auth, Grants};
use conclave::protocol::{Mode, ServerMessage};
use harness::{Browser, member, stat};
use serde_json::Value;

/// Held by each browser test for its whole run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A page opened on the test server.
async fn page(srv: &TestServer) -> Browser {
    let browser = Browser::start().await;
    browser.open(&srv.url("/")).await;
    browser
}

fn last_error(state: &Value) -> (&Value, &Value, &str) {
    let e = &state["lastError"];
    (
        &e["request"],
        &e["code"],
        e["message"].as_str().unwrap_or(""),
    )
}

// ---- the page and the dev token, over plain HTTP ----------------------------

#[tokio::test]
async fn the_page_and_its_assets_are_served() {
    let srv = TestServer::start().await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/conclave.js", "text/javascript"),
        ("/conclave.css", "text/css"),
    ] {
        let resp = http.get(srv.url(path)).send().await.expect("GET");
        assert_eq!(resp.status(), 200, "{path}");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let body = resp.text().await.unwrap();
        assert!(!body.is_empty(), "{path}");
        if path == "/" {
            // The test server runs in dev mode: the page offers dev tokens.
            assert!(body.contains(r#"data-dev="true""#), "{body}");
        }
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn a_dev_token_may_create_and_join_any_room_but_not_administer() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/dev/token?user=alice&name=Alice", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "alice");
    let token = body["token"].as_str().expect("a token");
    let identity = Auth::dev().verify(token).expect("signed with the dev key");
    assert_eq!(identity.user.as_str(), "alice");
    assert_eq!(identity.name, "Alice");
    assert_eq!(
        identity.grants,
        Grants {
            create: true,
            rooms: vec!["*".into()],
            admin: false,
            ..Grants::default()
        }
    );

    // And the server takes it: create, then join.
    let client = srv.client_with_token(token).await;
    client.create("dev-room", "").await.expect("create");
    client
        .join("dev-room", Mode::Audio, None)
        .await
        .expect("join");
    let (status, body) = srv.get("/api/rooms", Some(token)).await;
    assert_eq!(status, 403, "no admin grant: {body}");
    drop(client);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_dev_token_needs_a_sensible_user() {
    let srv = TestServer::start().await;
    for query in ["", "?user=", "?user=a%0Ab", "?name=x", "?user=a&admin=true"] {
        let (status, body) = srv.get(&format!("/dev/token{query}"), None).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], 400, "{query}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let long = "u".repeat(129);
    let (status, body) = srv.get(&format!("/dev/token?user={long}"), None).await;
    assert_eq!(status, 400, "{body}");
    srv.shutdown().await;
}

#[tokio::test]
async fn without_dev_mode_there_is_no_dev_token() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut config = conclave::app::config::Config::default();
    config.server.bind = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = data_dir.path().to_path_buf();
    config.auth.secret = Some("a production secret of more than thirty-two bytes".into());
    config.policy.scripts_dir = data_dir.path().join("scripts");
    config.policy.plugins_dir = data_dir.path().join("plugins");
    std::fs::create_dir_all(&config.policy.scripts_dir).unwrap();
    std::fs::create_dir_all(&config.policy.plugins_dir).unwrap();
    let server = conclave::server::Server::start(config, false)
        .await
        .expect("server starts");
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();

    let resp = http
        .get(format!("{base}/dev/token?user=alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.text().await.unwrap(),
        "",
        "as a route that does not exist"
    );

    // The page is there, without its dev-token button.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains(r#"data-dev="false""#), "{body}");
    server.shutdown().await;
}

// ---- the page in a browser: rooms, members, errors -----------------------------

#[tokio::test]
async fn the_dev_token_button_fills_a_token_and_join_creates_the_room() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let alice = page(&srv).await;
    alice.fill("user", "alice").await;
    alice.click("#dev-token").await;
    alice
        .wait_for_js(
            "a dev token for alice",
            "return document.getElementById('token').value.split('.').length === 3 \
             && document.getElementById('user').value === 'alice'",
        )
        .await;
    alice.fill("room", "fresh").await;
    alice.choose("mode", "audio").await;
    alice.click("#join").await;

    let state = alice.wait_joined("fresh", 1).await;
    assert_eq!(state["user"], "alice");
    assert_eq!(state["role"], "interactor");
    assert_eq!(state["mode"], "audio");
    assert_eq!(state["resumed"], false);
    let me = member(&state, "alice");
    assert_eq!(me["role"], "interactor");
    assert_eq!(me["audio_muted"], false);
    assert_eq!(me["video_muted"], true);

    let (status, body) = srv
        .get("/api/rooms/fresh/members", Some(&srv.admin_token()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["members"][0]["user"], "alice");
    alice.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn members_see_each_others_role_and_mute_changes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let alice = page(&srv).await;
    let bob = page(&srv).await;
    alice
        .join("team", &srv.user_token("alice"), "interactor", "video")
        .await;
    alice.wait_joined("team", 1).await;
    bob.join("team", &srv.user_token("bob"), "audience", "video")
        .await;
    let state = bob.wait_joined("team", 2).await;
    assert_eq!(state["role"], "audience");
    assert_eq!(member(&state, "alice")["role"], "interactor");

    let state = alice
        .wait_for("bob listed as audience", |s| {
            member(s, "bob")["role"] == "audience"
        })
        .await;
    assert_eq!(member(&state, "bob")["audio_muted"], true);
    assert_eq!(member(&state, "bob")["video_muted"], true);

    // Alice mutes her microphone with her own button; Bob's page hears of it.
    alice.click("#toggle-audio").await;
    bob.wait_for("alice's mic off", |s| {
        member(s, "alice")["audio_muted"] == true
    })
    .await;
    alice.click("#toggle-audio").await;
    bob.wait_for("alice's mic on again", |s| {
        member(s, "alice")["audio_muted"] == false
    })
    .await;

    // Bob becomes an interactor; both pages show it.
    bob.click("#toggle-role").await;
    bob.wait_for("bob an interactor", |s| s["role"] == "interactor")
        .await;
    alice
        .wait_for("bob listed as interactor", |s| {
            member(s, "bob")["role"] == "interactor"
        })
        .await;
    alice.close().await;
    bob.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn errors_from_the_server_are_shown_in_words() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;

    // A token the server does not accept.
    let mallory = page(&srv).await;
    mallory
        .join("team", "not-a-token", "interactor", "audio")
        .await;
    let state = mallory
        .wait_for("the hello refused", |s| {
            s["lastError"]["request"] == "hello"
        })
        .await;
    let (_, code, message) = last_error(&state);
    assert_eq!(code, 401);
    assert!(message.starts_with("token is malformed"), "{message}");
    let shown = mallory.text("#error").await;
    assert!(
        shown.starts_with("hello: 401 unauthorized: token is malformed"),
        "{shown}"
    );
    assert_eq!(state["joined"], false);
    mallory.close().await;

    // Members without the admin grant try to act on others.
    let alice = page(&srv).await;
    let bob = page(&srv).await;
    alice
        .join("team", &srv.user_token("alice"), "interactor", "audio")
        .await;
    alice.wait_joined("team", 1).await;
    bob.join("team", &srv.user_token("bob"), "interactor", "audio")
        .await;
    bob.wait_joined("team", 2).await;
    alice.wait_joined("team", 2).await;

    alice.click("li[data-user='bob'] button.kick").await;
    let state = alice
        .wait_for("the kick refused", |s| s["lastError"]["request"] == "kick")
        .await;
    let (_, code, message) = last_error(&state);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "kicking needs the admin grant; to go, send `leave`"
    );
    assert_eq!(
        alice.text("#error").await,
        "kick: 403 forbidden: kicking needs the admin grant; to go, send `leave`"
    );

    alice.click("li[data-user='bob'] button.mute-audio").await;
    let state = alice
        .wait_for("the mute refused", |s| s["lastError"]["request"] == "mute")
        .await;
    let (_, code, message) = last_error(&state);
    assert_eq!(code, 403);
    assert_eq!(message, "acting on another member needs the admin grant");
    assert!(bob.state().await["joined"] == true);

    // A room this token does not cover.
    let carol = page(&srv).await;
    let narrow = srv.token(
        "carol",
        Grants {
            rooms: vec!["other".into()],
            ..Grants::default()
        },
    );
    carol.join("team", &narrow, "interactor", "audio").await;
    let state = carol
        .wait_for("the join refused", |s| s["lastError"]["request"] == "join")
        .await;
    let (_, code, message) = last_error(&state);
    assert_eq!(code, 401);
    assert_eq!(message, "this token does not cover room `team`");
    assert_eq!(state["joined"], false);
    for browser in [alice, bob, carol] {
        browser.close().await;
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn an_admin_page_mutes_and_kicks_and_the_kicked_page_knows() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let ops = page(&srv).await;
    let bob = page(&srv).await;
    ops.join("town", &srv.admin_token(), "interactor", "audio")
        .await;
    ops.wait_joined("town", 1).await;
    bob.join("town", &srv.user_token("bob"), "interactor", "audio")
        .await;
    bob.wait_joined("town", 2).await;
    ops.wait_joined("town", 2).await;

    ops.click("li[data-user='bob'] button.mute-audio").await;
    let state = bob
        .wait_for("bob muted by ops", |s| {
            member(s, "bob")["audio_muted"] == true
        })
        .await;
    assert!(state["lastError"].is_null(), "{state:#}");

    ops.click("li[data-user='bob'] button.kick").await;
    let state = bob
        .wait_for("bob out of the room", |s| s["joined"] == false)
        .await;
    assert_eq!(state["disconnected"]["reason"], "kicked");
    assert_eq!(state["disconnected"]["code"], 11001);
    assert_eq!(state["members"], Value::Array(vec![]));
    let shown = bob.text("#error").await;
    assert!(
        shown.contains("was removed (kicked)"),
        "the kick is shown, not {shown:?}; the page's errors: {:#}",
        state["errors"]
    );
    ops.wait_for("bob gone from the list", |s| {
        member(s, "bob").is_null() && s["members"].as_array().map(Vec::len) == Some(1)
    })
    .await;

    // A kicked page does not rejoin on reload.
    bob.reload().await;
    let state = bob.state().await;
    assert_eq!(state["joined"], false);
    ops.close().await;
    bob.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn leaving_reaches_the_other_page() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let alice = page(&srv).await;
    let bob = page(&srv).await;
    alice
        .join("r", &srv.user_token("alice"), "interactor", "audio")
        .await;
    alice.wait_joined("r", 1).await;
    bob.join("r", &srv.user_token("bob"), "audience", "audio")
        .await;
    bob.wait_joined("r", 2).await;
    alice.wait_joined("r", 2).await;

    bob.click("#leave").await;
    let state = bob.wait_for("bob left", |s| s["joined"] == false).await;
    assert!(
        state["disconnected"].is_null(),
        "a leave is not a disconnect"
    );
    alice
        .wait_for("bob gone", |s| {
            member(s, "bob").is_null() && s["members"].as_array().map(Vec::len) == Some(1)
        })
        .await;

    // The page can join again on the same connection.
    bob.click("#join").await;
    bob.wait_joined("r", 2).await;
    alice.close().await;
    bob.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_reload_resumes_the_membership_unseen() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let mut watcher = srv.client("watcher").await;
    watcher.create("r", "").await.unwrap();
    watcher.join("r", Mode::Audio, None).await.unwrap();

    let bob = page(&srv).await;
    bob.join("r", &srv.user_token("bob"), "interactor", "video")
        .await;
    bob.wait_joined("r", 2).await;
    event_where(&mut watcher, |e| match e {
        ServerMessage::MemberJoined { member, .. } if member.user.as_str() == "bob" => Some(()),
        _ => None,
    })
    .await;

    bob.reload().await;
    let state = bob.wait_joined("r", 2).await;
    assert_eq!(state["resumed"], true);
    assert_eq!(state["role"], "interactor");
    assert_eq!(state["mode"], "video");
    // The new connection negotiates media afresh and publishes again.
    let state = bob
        .wait_for("media connected after the reload", |s| {
            s["media"]["connection"] == "connected"
        })
        .await;
    assert_eq!(
        state["media"]["publishing"],
        serde_json::json!(["audio", "video"])
    );
    assert_eq!(state["errors"], Value::Array(vec![]), "{state:#}");

    // Whatever the reload caused in the room was queued before the answer to
    // this ping: the watcher saw no member leave or join.
    watcher.ping().await.unwrap();
    // Every event queued so far, not just the first.
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, watcher.next_event()).await {
        seen.push(event);
    }
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            ServerMessage::MemberLeft { .. } | ServerMessage::MemberJoined { .. }
        )),
        "the watcher saw {seen:?}"
    );
    bob.close().await;
    srv.shutdown().await;
}

// ---- media --------------------------------------------------------------------

/// Two pages in `room` in video mode, both interactors, media flowing.
async fn two_publishers(srv: &TestServer, room: &str) -> (Browser, Browser) {
    let alice = page(srv).await;
    let bob = page(srv).await;
    alice
        .join(room, &srv.user_token("alice"), "interactor", "video")
        .await;
    alice.wait_joined(room, 1).await;
    bob.join(room, &srv.user_token("bob"), "interactor", "video")
        .await;
    bob.wait_joined(room, 2).await;
    (alice, bob)
}

/// Waits until `user`'s `kind` packets on this page grow by `by`.
async fn packets_grow(browser: &Browser, user: &str, kind: &str, by: f64) {
    let start = stat(&browser.stats().await, user, kind, "packetsReceived");
    browser
        .wait_for_stats(&format!("{by} more {kind} packets from {user}"), |s| {
            stat(s, user, kind, "packetsReceived") >= start + by
        })
        .await;
}

#[tokio::test]
async fn two_browsers_receive_each_others_audio_and_video() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let (alice, bob) = two_publishers(&srv, "av").await;

    for (page, other) in [(&alice, "bob"), (&bob, "alice")] {
        packets_grow(page, other, "audio", 50.0).await;
        packets_grow(page, other, "video", 30.0).await;
        let first = page.stats().await;
        page.wait_for_stats(&format!("{other}'s audio heard and video decoded"), |s| {
            stat(s, other, "audio", "totalAudioEnergy") > 0.0
                && stat(s, other, "video", "framesDecoded")
                    > stat(&first, other, "video", "framesDecoded") + 10.0
        })
        .await;
        let state = page.state().await;
        assert_eq!(member(&state, other)["element"], "video", "{state:#}");
        assert_eq!(state["media"]["connection"], "connected", "{state:#}");
    }
    alice.close().await;
    bob.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn an_audience_page_receives_but_cannot_publish() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let alice = page(&srv).await;
    let carol = page(&srv).await;
    alice
        .join("stage", &srv.user_token("alice"), "interactor", "video")
        .await;
    alice.wait_joined("stage", 1).await;
    carol
        .join("stage", &srv.user_token("carol"), "audience", "video")
        .await;
    carol.wait_joined("stage", 2).await;

    packets_grow(&carol, "alice", "audio", 50.0).await;
    packets_grow(&carol, "alice", "video", 30.0).await;

    // Unmuting is the publish attempt; an audience member is refused.
    carol.click("#toggle-audio").await;
    let state = carol
        .wait_for("the unmute refused", |s| {
            s["lastError"]["request"] == "mute"
        })
        .await;
    let (_, code, _) = last_error(&state);
    assert_eq!(code, 403);
    assert_eq!(state["media"]["publishing"], Value::Array(vec![]));
    let sent = carol.outbound().await;
    assert!(
        stat_sent(&sent, "audio") == 0.0 && stat_sent(&sent, "video") == 0.0,
        "an audience page sends no media: {sent}"
    );

    // Alice keeps receiving nothing from carol while getting media flowing
    // the other way: her stats list no carol at all.
    let stats = alice.stats().await;
    assert!(stats.get("carol").is_none(), "{stats:#}");
    alice.close().await;
    carol.close().await;
    srv.shutdown().await;
}

fn stat_sent(outbound: &Value, kind: &str) -> f64 {
    outbound[kind]["packetsSent"].as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn muting_stops_the_other_sides_inbound_packets() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let (alice, bob) = two_publishers(&srv, "hush").await;
    packets_grow(&bob, "alice", "audio", 50.0).await;
    packets_grow(&bob, "alice", "video", 30.0).await;

    alice.click("#toggle-audio").await;
    alice.click("#toggle-video").await;
    bob.wait_for("alice muted", |s| {
        let a = member(s, "alice");
        a["audio_muted"] == true && a["video_muted"] == true
    })
    .await;
    // Alice's browser keeps sending (a disabled track still sends silence
    // and black frames) and the server drops it: wait until it has dropped
    // a good run of her packets, once before the reading and once after.
    let dropped = "conclave_media_dropped_packets_total{reason=\"not_publishing\"}";
    let drops = |more: f64| {
        let srv = &srv;
        async move {
            let from = srv.metric(dropped).await;
            common::eventually("the server to drop alice's muted packets", || async {
                srv.metric(dropped).await >= from + more
            })
            .await;
        }
    };
    drops(50.0).await;
    let before = bob.stats().await;
    let sent_before = alice.outbound().await;
    drops(50.0).await;
    let after = bob.stats().await;
    let sent_after = alice.outbound().await;
    assert!(
        stat_sent(&sent_after, "audio") > stat_sent(&sent_before, "audio"),
        "alice's browser still sends audio: {sent_before} then {sent_after}"
    );
    for kind in ["audio", "video"] {
        assert_eq!(
            stat(&after, "alice", kind, "packetsReceived"),
            stat(&before, "alice", kind, "packetsReceived"),
            "{kind} still reaches bob while the server drops it: {before} then {after}"
        );
    }
    // Alice still hears bob: only her media stopped.
    packets_grow(&alice, "bob", "audio", 25.0).await;
    alice.close().await;
    bob.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_rust_client_and_a_browser_receive_each_other() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let alice = page(&srv).await;
    alice
        .join("mixed", &srv.user_token("alice"), "interactor", "audio")
        .await;
    alice.wait_joined("mixed", 1).await;
    let mut bob = common::media::Participant::join(
        &srv,
        "bob",
        "mixed",
        Mode::Audio,
        conclave::protocol::Role::Interactor,
    )
    .await;

    // Bob sends Opus silence frames (a valid packet a browser decodes)
    // while both sides are watched: the page's inbound stats for bob grow,
    // and bob receives alice's Opus from the browser.
    let start = stat(&alice.stats().await, "bob", "audio", "packetsReceived");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut from_alice = 0;
    let mut n: u32 = 0;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no two-way audio: bob got {from_alice} packets from alice"
        );
        bob.media
            .send_audio(&[0xf8, 0xff, 0xfe], n * 960, 50)
            .await
            .expect("send");
        n += 1;
        bob.pump(Duration::ZERO).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        from_alice += bob
            .media
            .drain()
            .await
            .iter()
            .filter(|((user, _), _)| user.as_str() == "alice")
            .map(|(_, packets)| packets.len())
            .sum::<usize>();
        if n.is_multiple_of(10)
            && from_alice >= 20
            && stat(&alice.stats().await, "bob", "audio", "packetsReceived") >= start + 20.0
        {
            break;
        }
    }
    // Both ways went beside webrtc-rs's pipeline, each encrypted with the
    // receiver's own SRTP context (Chrome counts only what it decrypted),
    // and both peers' SRTCP proved the keys noted for them in the order
    // they were taken.
    assert!(srv.metric("conclave_media_direct_packets_total").await >= 40.0);
    // Receiver reports come about once a second, so the check may wait.
    common::eventually("both peers' keys to be checked", || async {
        srv.metric("conclave_media_srtp_keys_checked_total").await >= 2.0
    })
    .await;
    assert_eq!(
        srv.metric("conclave_media_srtp_key_mismatch_total").await,
        0.0
    );
    bob.media.close().await;
    alice.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_browser_hears_a_bot_and_a_bot_records_the_browser() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let bots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bots");
    let bot = |user: &str, script: &str| {
        let mut config = conclave::bot::BotConfig::new(
            &srv.ws_url(),
            &srv.user_token(user),
            "concert",
            bots.join(script),
        );
        config.record_dir = dir.path().to_path_buf();
        config.bind = "127.0.0.1:0".parse().expect("literal address");
        config
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut recorder = bot("tape", "recorder.lua");
    recorder.role = Some(conclave::protocol::Role::Audience);
    let recorder = tokio::spawn(conclave::bot::run(recorder, async {
        let _ = stopped.await;
    }));
    let mut player = bot("dj", "player.lua");
    player.options.insert("tone".into(), serde_json::json!(440));
    player
        .options
        .insert("yield".into(), serde_json::json!(false));
    let player = tokio::spawn(conclave::bot::run(player, std::future::pending()));

    // The page decodes the bot's Opus (encoded in Rust) and hears it.
    let alice = page(&srv).await;
    alice
        .join("concert", &srv.user_token("alice"), "interactor", "audio")
        .await;
    alice.wait_joined("concert", 3).await;
    packets_grow(&alice, "dj", "audio", 50.0).await;
    alice
        .wait_for_stats("the player's tone heard", |s| {
            stat(s, "dj", "audio", "totalAudioEnergy") > 0.0
        })
        .await;

    // The recorder decodes the page's Opus (Chromium's libopus encoder):
    // the fake microphone's beeps are in the file.
    let tape = dir.path().join("alice.ogg");
    common::eventually("three seconds of alice recorded", || async {
        conclave::audio::read_ogg_opus(&tape).is_ok_and(|o| o.packets.len() >= 150)
    })
    .await;
    let _ = stop.send(());
    let ended = tokio::time::timeout(common::PATIENCE, recorder)
        .await
        .expect("the recorder ends")
        .expect("no panic")
        .expect("the recorder ran");
    assert_eq!(ended, conclave::bot::Ended::Left);
    let pcm = conclave::audio::decode_ogg_opus(&tape).expect("the recording decodes");
    let loudest = pcm
        .chunks(960)
        .map(conclave::audio::rms)
        .fold(0.0f32, f32::max);
    assert!(
        loudest > 0.01,
        "the recording is silent (loudest frame rms {loudest})"
    );

    player.abort();
    alice.close().await;
    srv.shutdown().await;
}

// ---- in a cluster ---------------------------------------------------------------

#[tokio::test]
async fn a_page_whose_node_dies_gets_back_into_its_room_through_another_node() {
    use common::cluster::{TestCluster, user_token};
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = TestCluster::start(2).await;
    cluster.nodes[0].create_room("town", "").await;
    assert_eq!(cluster.owner("town").as_deref(), Some("node-a"));

    // The page is served by node-a, the room's node.
    let pat = Browser::start().await;
    pat.open(&cluster.nodes[0].url("/")).await;
    pat.join("town", &user_token("pat"), "interactor", "audio")
        .await;
    let state = pat.wait_joined("town", 1).await;
    assert_eq!(
        state["nodes"],
        serde_json::json!([cluster.nodes[0].ws_url(), cluster.nodes[1].ws_url()]),
        "hello lists the cluster, this node first"
    );
    pat.wait_for("media connected", |s| {
        s["media"]["connection"] == "connected"
    })
    .await;

    // node-a dies with the page's connection, its page origin and the room.
    cluster.nodes[0].kill9();
    let b = cluster.nodes[1].ws_url();
    let state = pat
        .wait_for("back in town through node-b", |s| {
            s["joined"] == true && s["room"] == "town" && s["url"] == b.as_str()
        })
        .await;
    assert_eq!(member(&state, "pat")["role"], "interactor");
    assert_eq!(cluster.owner("town").as_deref(), Some("node-b"));
    pat.wait_for("media connected to node-b", |s| {
        s["media"]["connection"] == "connected"
    })
    .await;

    // One room, on node-b: a client there finds the page in it.
    let watcher = cluster.nodes[1].client("watcher").await;
    let joined = watcher.join("town", Mode::Audio, None).await.unwrap();
    let users: Vec<&str> = joined.members.iter().map(|m| m.user.as_str()).collect();
    assert!(users.contains(&"pat"), "{users:?}");
    pat.close().await;
}
