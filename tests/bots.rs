//! Bots on a real server over real sockets and WebRTC: each shipped bot
//! script does what its header says, the tone a player sends is the tone a
//! recorder records, and a broken script or a kick ends nothing else.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave::audio::{self, Encoder, Tone};
use conclave::auth::{Auth, Grants, claims_for};
use conclave::bot::{self, BotConfig, BotError, BotSpec, Ended};
use conclave::client::media::MediaSession;
use conclave::client::{Participant, ParticipantOptions, SignalClient};
use conclave::protocol::{LeaveReason, MediaKind, Mode, Role, ServerMessage};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use common::{KillOnDrop, PATIENCE, TestServer, eventually};

fn shipped_bot(name: &str) -> PathBuf {
    common::shipped_scripts().join(format!("bots/{name}.lua"))
}

fn token(user: &str, name: &str, admin: bool) -> String {
    let grants = Grants {
        create: true,
        rooms: vec!["*".into()],
        admin,
        ..Grants::default()
    };
    Auth::dev()
        .mint(&claims_for(user, name, grants, Duration::from_secs(600)))
        .expect("mint")
}

struct RunningBot {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Ended, BotError>>,
}

impl RunningBot {
    /// Asks the bot to leave and waits until it has (its files are complete then).
    async fn stop(mut self) -> Ended {
        let _ = self.stop.take().expect("stopped once").send(());
        self.end().await
    }

    async fn end(self) -> Ended {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the bot ends")
            .expect("the bot task does not panic")
            .expect("the bot runs")
    }
}

/// Starts a bot and waits until it is a member of `room`.
async fn start_bot(srv: &TestServer, user: &str, admin: bool, mut config: BotConfig) -> RunningBot {
    config.token = token(user, "", admin);
    let room = config.room.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bot::run(config, async move {
        let _ = stopped.await;
    }));
    wait_for_member(srv, &room, user).await;
    RunningBot {
        stop: Some(stop),
        task,
    }
}

fn bot_config(srv: &TestServer, room: &str, script: &Path, dir: &Path) -> BotConfig {
    let mut config = BotConfig::new(&srv.ws_url(), "", room, script);
    config.record_dir = dir.join("recordings");
    config.media_dir = dir.to_path_buf();
    config.bind = "127.0.0.1:0".parse().expect("literal address");
    // A bot hook does its job in microseconds; on two loaded cores its
    // wall-clock budget needs room. Runaway hooks still meet the
    // instruction budget.
    config.limits.time = Duration::from_secs(5);
    config
}

async fn wait_for_member(srv: &TestServer, room: &str, user: &str) {
    let admin = srv.admin_token();
    eventually(&format!("{user} in {room}"), || async {
        let (status, body) = srv
            .get(&format!("/api/rooms/{room}/members"), Some(&admin))
            .await;
        status == 200
            && body["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["user"] == user))
    })
    .await;
}

/// A person who only signals: joins `room` and reads events.
async fn listener(srv: &TestServer, user: &str, name: &str, room: &str) -> SignalClient {
    let mut client = SignalClient::connect(&srv.ws_url()).await.expect("connect");
    client
        .hello(&token(user, name, false))
        .await
        .expect("hello");
    client.join(room, Mode::Audio, None).await.expect("join");
    client
}

/// A person with media: joins `room` as an interactor.
async fn person(srv: &TestServer, user: &str, name: &str, room: &str) -> Participant {
    let mut options = ParticipantOptions::new(&srv.ws_url(), &token(user, name, false), room);
    options.bind = "127.0.0.1:0".parse().expect("literal address");
    Participant::join(options).await.expect("joins with media")
}

/// Sends a tone as a person's microphone would: 20 ms Opus frames with
/// their RFC 6464 level, until the task is aborted.
fn speak(media: Arc<MediaSession>, frequency: f32) -> JoinHandle<()> {
    speak_from(media, frequency, None)
}

/// [`speak`], noting when the first frame went out.
fn speak_from(
    media: Arc<MediaSession>,
    frequency: f32,
    first_sent: Option<Arc<std::sync::OnceLock<Instant>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tone = Tone::new(frequency, 0.4);
        let mut encoder = Encoder::new().expect("encoder");
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut timestamp = 0u32;
        loop {
            tick.tick().await;
            let pcm = tone.next_frame();
            let opus = encoder.encode(&pcm).expect("encode");
            let _ = media
                .send_audio(&opus, timestamp, audio::audio_level(&pcm))
                .await;
            if let Some(first) = &first_sent {
                first.get_or_init(Instant::now);
            }
            timestamp = timestamp.wrapping_add(960);
        }
    })
}

async fn event_where<T>(
    p: &mut Participant,
    mut pick: impl FnMut(&ServerMessage) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, p.next_event())
            .await
            .expect("the event arrives in time")
            .expect("the connection stays open");
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

fn data_from(event: &ServerMessage, bot: &str) -> Option<Value> {
    match event {
        ServerMessage::Data { from, payload, .. } if from == bot => Some(payload.clone()),
        _ => None,
    }
}

/// Whether `user`'s audio reaches `p`: the next packet from them within `within`.
async fn hears(p: &Participant, user: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match p.next_packet(left).await {
            Some(r) if r.user.as_str() == user && r.kind == MediaKind::Audio => return true,
            Some(_) => continue,
            None => return false,
        }
    }
    false
}

#[tokio::test]
async fn the_greeter_welcomes_each_joiner_by_name_and_only_them() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let greeter = start_bot(
        &srv,
        "greeter",
        false,
        bot_config(&srv, "hall", &shipped_bot("greeter"), dir.path()),
    )
    .await;

    let mut alice = listener(&srv, "alice", "Alice", "hall").await;
    let greeting = common::event_where(&mut alice, |e| data_from(e, "greeter")).await;
    assert_eq!(greeting["text"], "Welcome, Alice!");

    let mut bob = listener(&srv, "bob", "Bob", "hall").await;
    let greeting = common::event_where(&mut bob, |e| data_from(e, "greeter")).await;
    assert_eq!(greeting["text"], "Welcome, Bob!");

    // Alice sees Bob arrive but not Bob's greeting: it was addressed to him.
    common::event_where(&mut alice, |e| match e {
        ServerMessage::MemberJoined { member, .. } if member.user.as_str() == "bob" => Some(()),
        _ => None,
    })
    .await;
    alice.ping().await.expect("ping");
    let mut stray = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::ZERO, alice.next_event()).await {
        stray = stray.or(data_from(&e, "greeter"));
    }
    assert_eq!(stray, None, "alice received a greeting meant for bob");

    assert_eq!(greeter.stop().await, Ended::Left);
}

/// Waits until `path` holds at least `packets` audio packets.
async fn recorded(path: &Path, packets: usize) {
    eventually(
        &format!("{packets} packets in {}", path.display()),
        || async { audio::read_ogg_opus(path).is_ok_and(|o| o.packets.len() >= packets) },
    )
    .await;
}

/// The recorded file's audio after its first 200 ms (the decoder settling).
fn recording(path: &Path) -> Vec<f32> {
    let pcm = audio::decode_ogg_opus(path).expect("the recording decodes");
    assert!(pcm.len() > 48_000, "{} is too short", path.display());
    pcm[9_600..].to_vec()
}

#[tokio::test]
async fn two_players_tones_are_recorded_each_in_its_own_file() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = bot_config(&srv, "studio", &shipped_bot("recorder"), dir.path());
    config.role = Some(Role::Audience);
    let recorder = start_bot(&srv, "recorder", false, config).await;

    let mut players = Vec::new();
    for (user, hz) in [("low", 440), ("high", 1000)] {
        let mut config = bot_config(&srv, "studio", &shipped_bot("player"), dir.path());
        config.options.insert("tone".into(), json!(hz));
        // Each would otherwise fall silent while the other plays.
        config.options.insert("yield".into(), json!(false));
        players.push(start_bot(&srv, user, false, config).await);
    }
    let low = dir.path().join("recordings/low.ogg");
    let high = dir.path().join("recordings/high.ogg");
    recorded(&low, 100).await;
    recorded(&high, 100).await;
    assert_eq!(recorder.stop().await, Ended::Left);
    for p in players {
        p.stop().await;
    }

    for (path, own, other) in [(&low, 440.0, 1000.0), (&high, 1000.0, 440.0)] {
        let pcm = recording(path);
        let found = audio::dominant_frequency(&pcm, 200.0, 2000.0, 10.0);
        assert!(
            (found - own).abs() <= 10.0,
            "{}: {found} Hz, not {own}",
            path.display()
        );
        let (mine, theirs) = (audio::goertzel(&pcm, own), audio::goertzel(&pcm, other));
        assert!(
            mine > 20.0 * theirs,
            "{}: {own} Hz at {mine}, {other} Hz at {theirs}: the other player leaked in",
            path.display()
        );
    }
}

#[tokio::test]
async fn the_recorder_mixes_everyone_it_hears() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = bot_config(&srv, "mixroom", &shipped_bot("recorder"), dir.path());
    config.role = Some(Role::Audience);
    config.options.insert("mix".into(), json!(true));
    let recorder = start_bot(&srv, "recorder", false, config).await;
    let alice = person(&srv, "alice", "Alice", "mixroom").await;
    let bob = person(&srv, "bob", "Bob", "mixroom").await;
    let a = speak(alice.media_handle().expect("media"), 500.0);
    let b = speak(bob.media_handle().expect("media"), 1200.0);
    let mix = dir.path().join("recordings/mix.ogg");
    recorded(&dir.path().join("recordings/bob.ogg"), 100).await;
    recorded(&mix, 100).await;
    recorder.stop().await;
    a.abort();
    b.abort();

    let pcm = recording(&mix);
    let quiet = audio::goertzel(&pcm, 800.0);
    for hz in [500.0, 1200.0] {
        let level = audio::goertzel(&pcm, hz);
        assert!(
            level > 20.0 * quiet,
            "{hz} Hz missing from the mix: {level} vs {quiet}"
        );
    }
}

#[tokio::test]
async fn the_player_falls_silent_while_someone_else_speaks() {
    // Every report announced, though alice's level holds steady: the
    // reports are this test's clock.
    let srv = TestServer::start_with(|c| c.media.volume_step = 0).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let music: Vec<f32> = {
        let mut tone = Tone::new(660.0, 0.3);
        (0..50).flat_map(|_| tone.next_frame()).collect()
    };
    audio::encode_ogg_opus(&dir.path().join("music.ogg"), &music).expect("write music");
    let mut config = bot_config(&srv, "lounge", &shipped_bot("player"), dir.path());
    config.options.insert("quiet_ms".into(), json!(300));
    let player = start_bot(&srv, "dj", false, config).await;

    let alice = person(&srv, "alice", "Alice", "lounge").await;
    assert!(hears(&alice, "dj", PATIENCE).await, "the player plays");

    let mut alice = alice;
    let voice = speak(alice.media_handle().expect("media"), 300.0);
    // The player reacts to the room's `volume` events; alice gets the same
    // ones. Once they say she speaks, what the player sends during the next
    // three reports (600 ms, 30 frames while it plays) is counted.
    let alice_speaks = |e: &ServerMessage| match e {
        ServerMessage::Volume { levels } => levels
            .iter()
            .any(|l| l.user.as_str() == "alice" && l.speaking)
            .then_some(()),
        _ => None,
    };
    event_where(&mut alice, alice_speaks).await;
    // Frames already on their way when the player heard the news.
    while alice.next_packet(Duration::ZERO).await.is_some() {}
    for _ in 0..3 {
        event_where(&mut alice, alice_speaks).await;
    }
    let mut from_dj = 0;
    while let Some(p) = alice.next_packet(Duration::ZERO).await {
        from_dj += usize::from(p.user.as_str() == "dj");
    }
    assert!(
        from_dj <= 2,
        "the player kept playing over Alice: {from_dj} frames"
    );
    voice.abort();
    assert!(
        hears(&alice, "dj", PATIENCE).await,
        "the player resumes after the quiet"
    );
    player.stop().await;
}

#[tokio::test]
async fn the_moderator_warns_then_mutes_a_long_speaker() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = bot_config(&srv, "forum", &shipped_bot("moderator"), dir.path());
    config.options.insert("limit_ms".into(), json!(1500));
    config.options.insert("warn_ms".into(), json!(700));
    let moderator = start_bot(&srv, "mod", true, config).await;

    let mut alice = person(&srv, "alice", "Alice", "forum").await;
    let voice = speak(alice.media_handle().expect("media"), 400.0);
    let mut warned = false;
    let by = event_where(&mut alice, |e| match e {
        ServerMessage::Data { from, payload, .. } if from == "mod" => {
            if payload["kind"] == "warning" {
                warned = true;
            }
            None
        }
        ServerMessage::MuteChanged {
            user,
            kind: MediaKind::Audio,
            muted: true,
            operate_by,
            ..
        } if user.as_str() == "alice" => Some(operate_by.clone()),
        _ => None,
    })
    .await;
    assert!(warned, "alice was muted without a warning first");
    assert_eq!(by, "mod");
    voice.abort();
    moderator.stop().await;
}

#[tokio::test]
async fn the_echo_bot_plays_back_what_it_hears_after_its_delay() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = bot_config(&srv, "check", &shipped_bot("echo"), dir.path());
    config.options.insert("delay_ms".into(), json!(600));
    let echo = start_bot(&srv, "echo", false, config).await;

    let alice = person(&srv, "alice", "Alice", "check").await;
    let first_sent = Arc::new(std::sync::OnceLock::new());
    let voice = speak_from(
        alice.media_handle().expect("media"),
        750.0,
        Some(first_sent.clone()),
    );
    let mut decoder = audio::Decoder::new().expect("decoder");
    let mut heard = Vec::new();
    let mut first = None;
    while heard.len() < 48_000 {
        let packet = alice
            .next_packet(PATIENCE)
            .await
            .expect("the echo comes back");
        if packet.user.as_str() != "echo" {
            continue;
        }
        first.get_or_insert(packet.at);
        heard.extend(decoder.decode(&packet.packet.payload).expect("decodes"));
    }
    voice.abort();
    // From the first frame alice sent to the first echo of it.
    let spoke = *first_sent.get().expect("alice spoke");
    let delay = first.expect("an echo packet") - spoke;
    assert!(
        delay >= Duration::from_millis(600),
        "echoed after {delay:?}"
    );
    let found = audio::dominant_frequency(&heard[9_600..], 200.0, 2000.0, 10.0);
    assert!((found - 750.0).abs() <= 10.0, "echoed {found} Hz");
    echo.stop().await;
}

#[tokio::test]
async fn a_kicked_bot_ends_and_a_broken_hook_does_not_stop_it() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("fragile.lua");
    std::fs::write(
        &script,
        r#"
        local b = {}
        function b.on_member_joined(m) while true do end end
        function b.on_data(e) bot.send_data({ pong = e.payload.ping }, e.from) end
        function b.on_left(e) bot.log("left:", e.reason) end
        return b
        "#,
    )
    .expect("write script");
    let fragile = start_bot(
        &srv,
        "fragile",
        false,
        bot_config(&srv, "den", &script, dir.path()),
    )
    .await;

    let mut alice = listener(&srv, "alice", "Alice", "den").await;
    // on_member_joined ran out of budget; the bot still answers.
    alice
        .send_data(json!({ "ping": 7 }), Some("fragile"))
        .await
        .expect("send");
    let pong = common::event_where(&mut alice, |e| data_from(e, "fragile")).await;
    assert_eq!(pong, json!({ "pong": 7 }));

    let ops = srv.admin_token();
    let (status, _) = srv
        .delete("/api/rooms/den/members/fragile", Some(&ops))
        .await;
    assert_eq!(status, 200);
    assert_eq!(fragile.end().await, Ended::Kicked);
    alice.ping().await.expect("alice is unaffected");
}

#[tokio::test]
async fn a_bot_whose_hook_never_returns_leaves_and_says_why() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("stuck.lua");
    // `table.sort` with a C comparator runs no VM instruction, so the count
    // hook never sees it: only the watchdog does. The clock ends it.
    std::fs::write(
        &script,
        r#"
        local t = {}
        for i = 1, 100000 do t[i] = i end
        local b = {}
        function b.on_member_joined(m)
          local start = os.clock()
          while os.clock() - start < 3 do table.sort(t, rawequal) end
        end
        return b
        "#,
    )
    .expect("write script");
    let mut config = bot_config(&srv, "den", &script, dir.path());
    config.limits.time = Duration::from_millis(300);
    config.limits.instructions = u64::MAX / 2;
    let stuck = start_bot(&srv, "stuck", false, config).await;

    let mut alice = listener(&srv, "alice", "Alice", "den").await;
    // It leaves as a member does, not by a dropped connection.
    let reason = common::event_where(&mut alice, |e| match e {
        ServerMessage::MemberLeft { user, reason, .. } if user.as_str() == "stuck" => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, LeaveReason::Normal);
    assert_eq!(stuck.end().await, Ended::ScriptStuck);
    alice.ping().await.expect("alice is unaffected");
}

#[tokio::test]
async fn a_script_that_cannot_load_is_refused_before_joining() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("broken.lua");
    std::fs::write(&script, "return {").expect("write script");
    let mut config = bot_config(&srv, "void", &script, dir.path());
    config.token = token("broken", "", false);
    let err = bot::run(config, std::future::pending())
        .await
        .expect_err("a syntax error stops the bot");
    assert!(matches!(err, BotError::Script(_)), "{err}");
    assert!(err.to_string().contains("broken.lua"), "{err}");
    let (status, _) = srv.get("/api/rooms/void", Some(&srv.admin_token())).await;
    assert_eq!(status, 404, "the bot must not have created the room");
}

#[tokio::test]
async fn a_bot_may_only_do_what_its_token_allows() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("bossy.lua");
    std::fs::write(
        &script,
        r#"
        local b = {}
        function b.on_member_joined(m) bot.kick(m.user) end
        function b.on_error(e)
          bot.send_data({ failed = e.action, why = e.message })
        end
        return b
        "#,
    )
    .expect("write script");
    let bossy = start_bot(
        &srv,
        "bossy",
        false,
        bot_config(&srv, "keep", &script, dir.path()),
    )
    .await;
    let mut alice = listener(&srv, "alice", "Alice", "keep").await;
    let report = common::event_where(&mut alice, |e| data_from(e, "bossy")).await;
    assert_eq!(report["failed"], "kick");
    assert!(
        report["why"].as_str().is_some_and(|w| w.contains("403")),
        "{report}"
    );
    alice.ping().await.expect("alice was not kicked");
    bossy.stop().await;
}

#[tokio::test]
async fn bots_in_the_configuration_start_with_the_server() {
    let greeter = shipped_bot("greeter");
    let srv = TestServer::start_with(|c| {
        c.bots = vec![BotSpec {
            script: greeter,
            room: "lobby".into(),
            user: "host".into(),
            name: "Host".into(),
            role: None,
            admin: false,
            options: [("greeting".to_owned(), json!("Hello"))]
                .into_iter()
                .collect(),
            media_dir: None,
            record_dir: None,
        }];
    })
    .await;
    wait_for_member(&srv, "lobby", "host").await;
    let mut alice = listener(&srv, "alice", "Alice", "lobby").await;
    let greeting = common::event_where(&mut alice, |e| data_from(e, "host")).await;
    assert_eq!(greeting["text"], "Hello, Alice!");

    // At shutdown the bot leaves like a member, before the room closes.
    let left = tokio::spawn(async move {
        common::event_where(&mut alice, |e| match e {
            ServerMessage::MemberLeft { user, reason, .. } if user.as_str() == "host" => {
                Some(*reason)
            }
            _ => None,
        })
        .await
    });
    srv.shutdown().await;
    assert_eq!(left.await.expect("watcher"), LeaveReason::Normal);
}

#[tokio::test]
async fn the_bot_command_runs_a_script_against_a_server() {
    let srv = TestServer::start().await;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args([
            "bot", "--dev", "--user", "greeter", "--room", "plaza", "--url",
        ])
        .arg(srv.ws_url())
        .args(["--set", "greeting=Hi there"])
        .arg(shipped_bot("greeter"))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("conclave bot starts");
    let _child = KillOnDrop(child);
    wait_for_member(&srv, "plaza", "greeter").await;
    let mut alice = listener(&srv, "alice", "Alice", "plaza").await;
    let greeting = common::event_where(&mut alice, |e| data_from(e, "greeter")).await;
    assert_eq!(greeting["text"], "Hi there, Alice!");
}

#[tokio::test]
async fn the_bot_command_says_what_the_bot_does() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chatty.lua");
    std::fs::write(
        &script,
        "local b = {}\n\
         function b.on_joined(e) bot.log('hello from', e.room) end\n\
         function b.on_member_joind(m) end\n\
         return b\n",
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args([
            "bot", "--dev", "--user", "chatty", "--room", "hall", "--url",
        ])
        .arg(srv.ws_url())
        .arg(&script)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("conclave bot starts");
    let mut child = KillOnDrop(child);
    // Joined means signaling and media: the line comes once both are up.
    common::eventually("the bot to say it joined", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("bot joined room"))
    })
    .await;
    let (status, body) = srv
        .delete("/api/rooms/hall/members/chatty", Some(&srv.admin_token()))
        .await;
    assert_eq!(status, 200, "{body}");
    let exit = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(exit.success(), "{exit:?}:\n{log}");
    for line in [
        "bot joined room `hall` as `chatty`",
        "hello from hall",
        "`on_member_joind` is not a hook and is never called; did you mean `on_member_joined`?",
        "bot was kicked from the room",
    ] {
        assert!(log.contains(line), "`{line}` missing from:\n{log}");
    }
}
