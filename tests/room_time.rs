//! Room deadlines on paused tokio time: the room's real task, state machine,
//! Lua policy and SQLite store, driven through `RoomHandle`s with member
//! sinks instead of sockets. Time moves only when the test moves it (or when
//! every task waits, to the next deadline), so a grace window of seconds or
//! a timer of a minute passes in microseconds and lands exactly on time.

use std::sync::Arc;
use std::time::Duration;

use conclave::auth::{Grants, Identity};
use conclave::clock::Clock;
use conclave::ids::{ConnId, RoomName};
use conclave::model::{LeaveReason, Mode};
use conclave::policy::catalog::{Catalog, PolicyConfig};
use conclave::protocol::ServerMessage;
use conclave::room::{Outbound, RoomHandle, RoomMetrics, RoomServices, RoomSettings, Rooms, Sink};
use conclave::script::pool::Pool;
use conclave::store::StoreHandle;
use conclave::store::sqlite::SqliteStore;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const GRACE: Duration = Duration::from_secs(15);
const EMPTY: Duration = Duration::from_secs(300);

/// A catalog whose scripts run on the test's own thread: a script thread
/// would let the paused clock jump while a hook runs.
fn paused_catalog(config: PolicyConfig) -> Arc<Catalog> {
    Catalog::open_with(config, Arc::default(), Clock::new(), Pool::inline()).unwrap()
}

fn rooms(catalog: Arc<Catalog>) -> Rooms {
    // Dropping the worker detaches its thread, which ends with the last handle.
    let (store, _worker) = StoreHandle::spawn(SqliteStore::in_memory().expect("in-memory SQLite"));
    Rooms::new(RoomServices {
        settings: RoomSettings {
            empty_timeout: EMPTY,
            reconnect_grace: GRACE,
        },
        max_rooms: 10,
        command_queue: 64,
        store,
        metrics: Arc::new(RoomMetrics::default()),
        catalog,
        kv: None,
        media: None,
        clock: Clock::new(),
        bans: Arc::new(conclave::policy::bans::Bans::new(Vec::new(), None)),
        claims: None,
    })
}

fn identity(user: &str) -> Arc<Identity> {
    Arc::new(Identity {
        user: user.into(),
        name: user.into(),
        grants: Grants {
            create: true,
            rooms: vec!["*".into()],
            ..Grants::default()
        },
        attrs: serde_json::json!({}),
        jti: None,
    })
}

/// A member's connection: its sink and what the room sends it.
struct Member {
    conn: ConnId,
    sink: Sink,
    rx: mpsc::Receiver<Outbound>,
}

impl Member {
    fn new() -> Member {
        let (tx, rx) = mpsc::channel(64);
        Member {
            conn: ConnId::next(),
            sink: Sink::new(tx, CancellationToken::new()),
            rx,
        }
    }

    async fn join(&self, room: &RoomHandle, user: &str) -> conclave::protocol::JoinOk {
        room.join(
            self.conn,
            identity(user),
            Mode::Audio,
            None,
            self.sink.clone(),
        )
        .await
        .expect("the room accepts the member")
    }

    /// The next message the room sends this member.
    async fn next(&mut self) -> ServerMessage {
        let text = match self.rx.recv().await.expect("the room is open") {
            Outbound::Text(text) | Outbound::Removed { text, .. } => text,
        };
        serde_json::from_str(&text).expect("the room sends protocol messages")
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_leaves_with_timeout_when_the_grace_window_ends() {
    let rooms = rooms(Catalog::empty().unwrap());
    let room = rooms
        .create(RoomName::new("r").unwrap(), String::new(), None, None)
        .await
        .unwrap();
    let alice = Member::new();
    let mut bob = Member::new();
    alice.join(&room, "alice").await;
    bob.join(&room, "bob").await;
    let lost = Instant::now();
    room.disconnected(alice.conn).await;
    // Nothing else is scheduled: waiting lets the clock run to the room's
    // next deadline, the end of alice's grace window, and no earlier.
    match bob.next().await {
        ServerMessage::MemberLeft { user, reason, .. } => {
            assert_eq!((user.as_str(), reason), ("alice", LeaveReason::Timeout));
        }
        other => panic!("expected member_left, got {other:?}"),
    }
    assert_eq!(Instant::now() - lost, GRACE);
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_inside_the_grace_window_resumes_unseen() {
    let rooms = rooms(Catalog::empty().unwrap());
    let room = rooms
        .create(RoomName::new("r").unwrap(), String::new(), None, None)
        .await
        .unwrap();
    let alice = Member::new();
    let mut bob = Member::new();
    alice.join(&room, "alice").await;
    bob.join(&room, "bob").await;
    room.disconnected(alice.conn).await;
    tokio::time::advance(GRACE - Duration::from_millis(1)).await;
    let again = Member::new();
    let joined = again.join(&room, "alice").await;
    assert!(joined.resumed, "the membership is taken over, not renewed");
    // Past the old window: bob has heard nothing, and alice is still in.
    tokio::time::advance(GRACE).await;
    let members = room.members().await.unwrap();
    assert_eq!(members.len(), 2);
    assert!(bob.rx.try_recv().is_err(), "others saw nothing");
}

#[tokio::test(start_paused = true)]
async fn a_room_nobody_joins_expires_after_the_empty_timeout() {
    let rooms = rooms(Catalog::empty().unwrap());
    let created = Instant::now();
    rooms
        .create(RoomName::new("quiet").unwrap(), String::new(), None, None)
        .await
        .unwrap();
    // A second of virtual time per look; the room goes at its deadline.
    while rooms.get(&RoomName::new("quiet").unwrap()).is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let gone = Instant::now() - created;
    assert!(
        gone >= EMPTY && gone <= EMPTY + Duration::from_secs(1),
        "closed after {gone:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_policy_timer_fires_on_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("minute.lua"),
        r#"return {
             on_joined = function() room.after(60000, "minute") end,
             on_timer = function(name) room.send(nil, { fired = name }) end,
           }"#,
    )
    .unwrap();
    let catalog = paused_catalog(PolicyConfig {
        scripts_dir: dir.path().to_path_buf(),
        plugins_dir: std::path::PathBuf::new(),
        default: "minute".into(),
        watch: false,
        ..PolicyConfig::default()
    });
    let rooms = rooms(catalog);
    let room = rooms
        .create(RoomName::new("r").unwrap(), String::new(), None, None)
        .await
        .unwrap();
    let mut alice = Member::new();
    alice.join(&room, "alice").await;
    let joined = Instant::now();
    match alice.next().await {
        ServerMessage::Data { from, payload, .. } => {
            assert_eq!(from, "policy:minute");
            assert_eq!(payload, serde_json::json!({ "fired": "minute" }));
        }
        other => panic!("expected the timer's data, got {other:?}"),
    }
    assert_eq!(Instant::now() - joined, Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_timer_of_the_same_name_replaces_the_old_and_none_outlive_the_room() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clock.lua"),
        r#"return {
             on_joined = function()
               room.after(60000, "once")
               room.after(1000, "once")   -- replaces the one above
               room.every(20000, "beat")
             end,
             on_timer = function(name) room.send(nil, { fired = name }) end,
           }"#,
    )
    .unwrap();
    let catalog = paused_catalog(PolicyConfig {
        scripts_dir: dir.path().to_path_buf(),
        plugins_dir: std::path::PathBuf::new(),
        default: "clock".into(),
        watch: false,
        ..PolicyConfig::default()
    });
    let rooms = rooms(catalog);
    let room = rooms
        .create(RoomName::new("r").unwrap(), String::new(), None, None)
        .await
        .unwrap();
    let mut alice = Member::new();
    alice.join(&room, "alice").await;
    let joined = Instant::now();
    let mut fired = Vec::new();
    // Up to 70 s of virtual time: `once` at 1 s (not 60 s), `beat` every 20 s.
    while fired.len() < 4 {
        match alice.next().await {
            ServerMessage::Data { payload, .. } => {
                let at = (Instant::now() - joined).as_secs();
                fired.push((payload["fired"].as_str().unwrap().to_owned(), at));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected = [("once", 1), ("beat", 20), ("beat", 40), ("beat", 60)];
    assert_eq!(
        fired,
        expected
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect::<Vec<_>>()
    );
    room.close(conclave::room::CloseReason::ClosedByAdmin)
        .await
        .unwrap();
    // The room's last word, then nothing: its timers went with it.
    assert!(matches!(
        alice.next().await,
        ServerMessage::Disconnected { .. }
    ));
    tokio::time::advance(Duration::from_secs(600)).await;
    // Once our own copy of the sink goes, only the room could still send.
    let Member { mut rx, sink, .. } = alice;
    drop(sink);
    assert!(
        rx.recv().await.is_none(),
        "the closed room let go of its sinks, and no timer fired"
    );
}
