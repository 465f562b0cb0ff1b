//! A cluster of real conclave processes on one real Redis: rooms live on one
//! node and are reachable through every node; names are unique across the
//! cluster; a dead, paused or draining node's rooms come back elsewhere.

mod common;

use std::time::Duration;

use common::cluster::{TestCluster, user_token};
use common::{PATIENCE, event_where, eventually, eventually_within};
use conclave::client::SignalClient;
use conclave::model::Mode;
use conclave::protocol::ServerMessage;
use conclave::status::Status;
use serde_json::json;

/// Waits until `client` hears that `user` joined.
async fn hears_join(client: &mut SignalClient, user: &str) {
    event_where(client, |e| match e {
        ServerMessage::MemberJoined { member, .. } if member.user.as_str() == user => Some(()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn nodes_register_with_addresses_and_load() {
    let cluster = TestCluster::start(3).await;
    let (status, body) = cluster.nodes[1].get("/api/cluster/nodes").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"], "node-b");
    let nodes = body["nodes"].as_array().unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["node-a", "node-b", "node-c"]);
    for (node, info) in cluster.nodes.iter().zip(nodes) {
        assert_eq!(info["url"], format!("http://127.0.0.1:{}", node.port));
        assert_eq!(info["state"], "serving");
        assert_eq!(info["media_ip"], "127.0.0.1");
        assert!(
            info["cpu"].is_number() && info["rooms"].is_number(),
            "{info}"
        );
    }
}

#[tokio::test]
async fn a_room_created_on_one_node_is_joined_through_the_other_two() {
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let mut alice = a.client("alice").await;
    alice.create("town-hall", "weekly").await.unwrap();
    let owner = cluster.owner("town-hall").expect("the room is claimed");
    alice.join("town-hall", Mode::Audio, None).await.unwrap();

    let mut bob = b.client("bob").await;
    let joined = bob.join("town-hall", Mode::Audio, None).await.unwrap();
    assert_eq!(joined.room.as_str(), "town-hall");
    let users: Vec<&str> = joined.members.iter().map(|m| m.user.as_str()).collect();
    assert!(users.contains(&"alice"), "{users:?}");
    hears_join(&mut alice, "bob").await;

    let carol = c.client("carol").await;
    carol.join("town-hall", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "carol").await;
    hears_join(&mut bob, "carol").await;

    // One room, on one node, whichever the clients came through.
    assert_eq!(cluster.owner("town-hall").as_deref(), Some(owner.as_str()));
    let rooms: Vec<u64> =
        futures_util::future::join_all(cluster.nodes.iter().map(|n| n.local_rooms())).await;
    assert_eq!(rooms.iter().sum::<u64>(), 1, "{rooms:?}");

    // The admin API of any node lists it, once, with its node.
    let (status, body) = c.get("/api/rooms").await;
    assert_eq!(status, 200, "{body}");
    let listed = body["rooms"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["room"], "town-hall");
    assert_eq!(listed[0]["node"], owner.as_str());
    assert_eq!(listed[0]["members"], 3);

    // Leaving and a name taken across the cluster behave as on one node.
    let again = b
        .client("dave")
        .await
        .create("town-hall", "")
        .await
        .unwrap_err();
    assert_eq!(again.status(), Some(Status::Conflict), "{again}");
    bob.leave().await.unwrap();
    event_where(&mut alice, |e| match e {
        ServerMessage::MemberLeft { user, .. } if user.as_str() == "bob" => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn concurrent_creates_of_one_name_on_three_nodes_make_exactly_one_room() {
    let cluster = TestCluster::start(3).await;
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        clients.push(node.client(&format!("creator-{i}")).await);
    }
    for round in 0..100 {
        let name = format!("race-{round}");
        let creates = clients.iter().map(|c| c.create(&name, ""));
        let results = futures_util::future::join_all(creates).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        for lost in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(
                lost.status(),
                Some(Status::Conflict),
                "round {round}: {lost}"
            );
        }
    }
    let rooms: Vec<u64> =
        futures_util::future::join_all(cluster.nodes.iter().map(|n| n.local_rooms())).await;
    assert_eq!(rooms.iter().sum::<u64>(), 100, "{rooms:?}");
}

#[tokio::test]
async fn admin_kick_and_ban_act_through_a_node_that_does_not_own_the_room() {
    let cluster = TestCluster::start(3).await;
    let mut alice = cluster.nodes[0].client("alice").await;
    alice.create("study", "").await.unwrap();
    alice.join("study", Mode::Audio, None).await.unwrap();
    let owner = cluster.owner("study").unwrap();
    let other = cluster.nodes.iter().find(|n| n.id != owner).unwrap();
    let mut mallory = other.client("mallory").await;
    mallory.join("study", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "mallory").await;

    let (status, body) = other
        .request(
            reqwest::Method::POST,
            "/api/rooms/study/bans",
            Some(json!({"user": "mallory", "reason": "spam"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    event_where(&mut mallory, |e| match e {
        ServerMessage::Disconnected { .. } => Some(()),
        _ => None,
    })
    .await;
    // Kept out, whichever node the next try comes through.
    for node in &cluster.nodes {
        let err = node
            .client("mallory")
            .await
            .join("study", Mode::Audio, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.status(),
            Some(Status::Forbidden),
            "via {}: {err}",
            node.id
        );
    }

    // A plain kick through a non-owner.
    let mut bob = other.client("bob").await;
    bob.join("study", Mode::Audio, None).await.unwrap();
    let (status, body) = other
        .request(
            reqwest::Method::DELETE,
            "/api/rooms/study/members/bob",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let gone = event_where(&mut bob, |e| match e {
        ServerMessage::Disconnected { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(gone.as_str(), "kicked");
    assert_eq!(other.members("study").await, ["alice"]);
}

/// Bans `user` from the whole server through `node`'s admin API.
async fn server_ban(node: &common::cluster::Node, user: &str) {
    let (status, body) = node
        .request(
            reqwest::Method::POST,
            "/api/bans",
            Some(json!({"user": user, "reason": "abuse"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_server_ban_made_on_one_node_ends_sessions_on_every_node() {
    let cluster = TestCluster::start(3).await;
    let mut sessions = Vec::new();
    for node in &cluster.nodes {
        sessions.push(node.client("troll").await);
    }
    server_ban(&cluster.nodes[0], "troll").await;
    for (node, session) in cluster.nodes.iter().zip(sessions.iter_mut()) {
        let frame = common::closed(session).await;
        assert_eq!(frame.map(|f| f.0), Some(1008), "on {}", node.id);
    }
    let err = cluster.nodes[2]
        .raw_client()
        .await
        .hello(&user_token("troll"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden), "{err}");
}

#[tokio::test]
async fn a_policy_reload_reaches_every_node() {
    let cluster = TestCluster::start(3).await;
    // Each node watches the scripts directory (one shared mount here, a
    // deployment's own copy on each machine in docs/cluster.md).
    let source =
        "local policy = {}\nfunction policy.can_join(req) return true end\nreturn policy\n";
    common::save(&cluster.scripts_dir().join("closed.lua"), source);
    let hash = conclave::policy::catalog::short_hash(source.as_bytes());
    for node in &cluster.nodes {
        eventually(&format!("{} to load the script", node.id), || async {
            let (_, body) = node.get("/api/policies").await;
            body.to_string().contains(&hash)
        })
        .await;
    }
}

#[tokio::test]
async fn a_killed_owners_members_are_back_in_the_room_on_a_live_node() {
    let mut cluster = TestCluster::start(3).await;
    let a = &cluster.nodes[0];
    let mut alice = a.client("alice").await;
    cluster.nodes[0].create_room("standup", "daily").await;
    assert_eq!(cluster.owner("standup").as_deref(), Some("node-a"));
    alice.join("standup", Mode::Audio, None).await.unwrap();
    let bob = a.client("bob").await;
    bob.join("standup", Mode::Audio, None).await.unwrap();

    cluster.nodes[0].kill9();
    assert!(common::closed(&mut alice).await.is_none());

    // Both come back through node-b, as the client library's reconnect
    // would; the room opens there again with what it was created with.
    let b = &cluster.nodes[1];
    let mut alice = b.client("alice").await;
    let joined = tokio::time::timeout(PATIENCE, async {
        loop {
            match alice.join("standup", Mode::Audio, None).await {
                Ok(joined) => break joined,
                // The dead node's lease has not run out yet.
                Err(e) if e.status() == Some(Status::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("rejoin refused: {e}"),
            }
        }
    })
    .await
    .expect("rejoined within the deadline");
    assert_eq!(joined.room.as_str(), "standup");
    let owner = cluster.owner("standup").expect("claimed again");
    assert_ne!(owner, "node-a");
    let bob = cluster.nodes[2].client("bob").await;
    bob.join("standup", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "bob").await;
    let (_, body) = cluster.nodes[2].get("/api/rooms").await;
    assert_eq!(body["rooms"][0]["custom_info"], "daily", "{body}");
    assert_eq!(body["rooms"][0]["members"], 2, "{body}");
}

#[tokio::test]
async fn a_paused_owner_is_fenced_and_closes_its_copy_when_it_wakes() {
    let cluster = TestCluster::start(2).await;
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let mut alice = a.client("alice").await;
    a.create_room("fenced", "").await;
    alice.join("fenced", Mode::Audio, None).await.unwrap();
    assert_eq!(cluster.owner("fenced").as_deref(), Some("node-a"));

    a.signal(libc::SIGSTOP);
    eventually_within(PATIENCE, "node-a's claim to lapse", || async {
        cluster.owner("fenced").is_none()
    })
    .await;
    let bob = b.client("bob").await;
    bob.join("fenced", Mode::Audio, None).await.unwrap();
    assert_eq!(cluster.owner("fenced").as_deref(), Some("node-b"));

    // A request alice sends to her paused node is not applied when it
    // wakes, whether the connection reads it before the heartbeat has
    // closed the room (refused: fenced) or after (she is in no room).
    let refused = {
        let request = alice.send_data(json!("still here?"), None);
        tokio::pin!(request);
        // Polled once: the frame is handed to the client's writer.
        tokio::select! {
            biased;
            answer = &mut request => panic!("a paused node answered: {answer:?}"),
            () = std::future::ready(()) => {}
        }
        // Lets the client's writer put the frame on the socket.
        tokio::task::yield_now().await;
        a.signal(libc::SIGCONT);
        request.await.expect_err("a stale owner applies nothing")
    };
    assert!(
        matches!(
            refused.status(),
            Some(Status::Unavailable) | Some(Status::NotFound)
        ),
        "{refused}"
    );
    // node-a's renewal is refused: it closes its copy and its member hears
    // so, and node-b's claim stands.
    let reason = event_where(&mut alice, |e| match e {
        ServerMessage::Disconnected { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason.as_str(), "shutdown");
    eventually("node-a to close its copy", || async {
        a.local_rooms().await == 0
    })
    .await;
    assert_eq!(cluster.owner("fenced").as_deref(), Some("node-b"));
    assert_eq!(b.local_rooms().await, 1);
}

#[tokio::test]
async fn a_draining_node_takes_no_new_rooms_and_exits_when_its_rooms_end() {
    let mut cluster = TestCluster::start(2).await;
    let mut alice = cluster.nodes[0].client("alice").await;
    cluster.nodes[0].create_room("last-call", "").await;
    alice.join("last-call", Mode::Audio, None).await.unwrap();

    let (status, body) = cluster.nodes[0]
        .request(reqwest::Method::POST, "/api/cluster/drain", None)
        .await;
    assert_eq!(status, 202, "{body}");
    eventually("node-b to see node-a draining", || async {
        let (_, body) = cluster.nodes[1].get("/api/cluster/nodes").await;
        body["nodes"][0]["state"] == "draining"
    })
    .await;
    // New rooms go elsewhere, even when asked for on the draining node.
    let creator = cluster.nodes[0].client("carol").await;
    creator.create("new-room", "").await.unwrap();
    assert_eq!(cluster.owner("new-room").as_deref(), Some("node-b"));
    // The room already here goes on until it ends.
    let bob = cluster.nodes[0].client("bob").await;
    bob.join("last-call", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "bob").await;
    alice.leave().await.unwrap();
    bob.leave().await.unwrap();
    let status = cluster.nodes[0].exited(PATIENCE).await;
    assert!(status.success(), "{status}");
    cluster.all_see(1).await;
}

#[tokio::test]
async fn after_a_redis_restart_nodes_register_and_claim_their_rooms_again() {
    let mut cluster = TestCluster::start(2).await;
    let mut alice = cluster.nodes[0].client("alice").await;
    cluster.nodes[0].create_room("survivor", "").await;
    alice.join("survivor", Mode::Audio, None).await.unwrap();
    cluster.redis.restart();
    assert_eq!(
        cluster.owner("survivor"),
        None,
        "a fresh Redis holds nothing"
    );
    cluster.all_see(2).await;
    eventually("node-a to claim its room again", || async {
        cluster.owner("survivor").as_deref() == Some("node-a")
    })
    .await;
    // The room never closed: its member is still in it, and it is reached
    // through the other node.
    let bob = cluster.nodes[1].client("bob").await;
    bob.join("survivor", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "bob").await;
}

#[tokio::test]
async fn a_community_change_made_on_one_node_reaches_channel_rooms_on_the_others() {
    use conclave::model::LeaveReason;
    use reqwest::Method;
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    // Set up on node-a; ids are cluster-wide.
    let (status, created) = a
        .request(
            Method::POST,
            "/api/community/servers",
            Some(json!({"name": "guild", "owner": "olivia"})),
        )
        .await;
    assert!((200..300).contains(&status), "{created}");
    let server = created["id"].as_u64().unwrap();
    for user in ["alice", "bob"] {
        let (status, body) = a
            .request(
                Method::POST,
                &format!("/api/community/servers/{server}/members"),
                Some(json!({ "user": user })),
            )
            .await;
        assert!((200..300).contains(&status), "{body}");
    }
    let (status, body) = a
        .request(
            Method::POST,
            &format!("/api/community/servers/{server}/channels"),
            Some(json!({"name": "stage", "kind": "media"})),
        )
        .await;
    assert!((200..300).contains(&status), "{body}");
    let channel = body["id"].as_u64().unwrap();
    for node in [b, c] {
        eventually(&format!("{} to know the channel", node.id), || async {
            let path = format!("/api/community/servers/{server}/channels/{channel}");
            node.get(&path).await.0 == 200
        })
        .await;
    }

    // Alice connects through node-b, Bob through node-c: one room.
    let mut alice = b.client("alice").await;
    alice.connect_channel(server, channel, None).await.unwrap();
    let mut bob = c.client("bob").await;
    bob.connect_channel(server, channel, None).await.unwrap();
    hears_join(&mut alice, "bob").await;

    // Node-a puts Bob on the channel's black list: removed at once, from
    // the room wherever it lives.
    let (status, body) = a
        .request(
            Method::PUT,
            &format!("/api/community/servers/{server}/channels/{channel}/lists/black/members/bob"),
            None,
        )
        .await;
    assert!((200..300).contains(&status), "{body}");
    let reason = event_where(&mut bob, |e| match e {
        ServerMessage::Disconnected { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, LeaveReason::PermissionRevoked);
    let (user, reason) = event_where(&mut alice, |e| match e {
        ServerMessage::MemberLeft { user, reason, .. } => Some((user.0.clone(), *reason)),
        _ => None,
    })
    .await;
    assert_eq!(
        (user.as_str(), reason),
        ("bob", LeaveReason::PermissionRevoked)
    );
}

#[tokio::test]
async fn a_member_joining_through_a_non_owner_node_hears_the_room() {
    use common::media::{Participant, flow, speaks_and_is_heard};
    use conclave::model::Role;
    let cluster = TestCluster::start(2).await;
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    a.create_room("radio", "").await;
    let client = a.client("alice").await;
    let mut alice = Participant::join_on(
        client,
        "alice",
        "radio",
        Mode::Audio,
        Role::Interactor,
        |r| r,
        None,
    )
    .await;
    assert_eq!(cluster.owner("radio").as_deref(), Some("node-a"));
    // Bob's signaling goes through node-b; his media goes to node-a, whose
    // address the offer carries.
    let client = b.client("bob").await;
    let mut bob = Participant::join_on(
        client,
        "bob",
        "radio",
        Mode::Audio,
        Role::Interactor,
        |r| r,
        None,
    )
    .await;
    flow(&mut alice, &mut bob, "hello").await;
    flow(&mut bob, &mut alice, "back").await;
    let level = speaks_and_is_heard(&mut alice, &mut bob).await;
    assert!(level <= 30, "{level}");
    assert_eq!(b.local_rooms().await, 0);
}

/// Joins `room` through `node`, retrying while the room's dead node still
/// holds its lease (503) or the room is between owners.
async fn rejoin(
    node: &common::cluster::Node,
    user: &str,
    room: &str,
) -> (SignalClient, Vec<String>) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let client = node.client(user).await;
            match client.join(room, Mode::Audio, None).await {
                Ok(joined) => {
                    let members = joined.members.iter().map(|m| m.user.0.clone()).collect();
                    break (client, members);
                }
                Err(e) if e.status() == Some(Status::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("rejoin refused: {e}"),
            }
        }
    })
    .await
    .expect("rejoined within the deadline")
}

#[tokio::test]
async fn a_bot_with_other_nodes_to_go_to_rejoins_when_its_node_dies() {
    bot_rejoins_when_its_node_dies(true).await;
}

#[tokio::test]
async fn a_bot_rejoins_through_the_nodes_hello_listed_without_being_told_any() {
    bot_rejoins_when_its_node_dies(false).await;
}

/// A `conclave bot` on node-a, told of node-b with `--also-url` when `told`.
async fn bot_rejoins_when_its_node_dies(told: bool) {
    let mut cluster = TestCluster::start(2).await;
    cluster.nodes[0].create_room("lobby", "").await;
    let greeter = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bots/greeter.lua");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_conclave"));
    command
        .args(["bot", "--dev", "--user", "greeter", "--room", "lobby"])
        .arg("--url")
        .arg(cluster.nodes[0].ws_url());
    if told {
        command.arg("--also-url").arg(cluster.nodes[1].ws_url());
    }
    let child = command
        .arg(&greeter)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("conclave bot starts");
    let _bot = common::KillOnDrop(child);
    assert_eq!(cluster.owner("lobby").as_deref(), Some("node-a"));
    let (mut hana, members) = rejoin(&cluster.nodes[1], "hana", "lobby").await;
    if !members.iter().any(|m| m == "greeter") {
        hears_join(&mut hana, "greeter").await;
    }

    cluster.nodes[0].kill9();
    common::closed(&mut hana).await;
    // Both come back through node-b: hana as a person would, the bot by
    // itself. Whoever is second finds the other there.
    let (mut hana, members) = rejoin(&cluster.nodes[1], "hana", "lobby").await;
    if !members.iter().any(|m| m == "greeter") {
        hears_join(&mut hana, "greeter").await;
    }
    assert_eq!(cluster.owner("lobby").as_deref(), Some("node-b"));
}

/// Call records of `room` as `node`'s admin API lists them.
async fn records_of(node: &common::cluster::Node, room: &str) -> (u16, serde_json::Value) {
    node.get(&format!("/api/records?room={room}")).await
}

#[tokio::test]
async fn records_of_a_room_on_one_node_are_read_through_every_node_from_postgresql() {
    let pg = common::postgres::TestPostgres::new();
    let mut cluster = TestCluster::start_with(3, Some(pg.url()), "").await;
    cluster.nodes[0].create_room("ledger", "q3").await;
    let mut alice = cluster.nodes[0].client("alice").await;
    alice.join("ledger", Mode::Audio, None).await.unwrap();
    let bob = cluster.nodes[1].client("bob").await;
    bob.join("ledger", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "bob").await;
    for node in &cluster.nodes {
        eventually(&format!("{} to read both members", node.id), || async {
            let (status, body) = records_of(node, "ledger").await;
            status == 200
                && body["records"][0]["members"]
                    .as_array()
                    .map_or(0, |m| m.len())
                    == 2
        })
        .await;
    }

    // The owner dies: the room opens again on another node, which ends the
    // dead instance's record itself.
    let first = records_of(&cluster.nodes[1], "ledger").await.1["records"][0]["channel_id"].clone();
    cluster.nodes[0].kill9();
    let (_alice, _) = rejoin(&cluster.nodes[1], "alice", "ledger").await;
    eventually("the dead instance's record to end as node_lost", || async {
        let (_, body) = records_of(&cluster.nodes[2], "ledger").await;
        let records = body["records"].as_array().cloned().unwrap_or_default();
        records.len() == 2
            && records
                .iter()
                .any(|r| r["channel_id"] == first && r["end_reason"] == "node_lost")
    })
    .await;
}

#[tokio::test]
async fn while_postgresql_is_down_rooms_go_on_and_records_land_when_it_returns() {
    let mut pg = common::postgres::TestPostgres::new();
    let cluster = TestCluster::start_with(2, Some(pg.url()), "").await;
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    a.create_room("outage", "").await;
    let mut alice = a.client("alice").await;
    alice.join("outage", Mode::Audio, None).await.unwrap();

    common::postgres::off_runtime(|| pg.stop());
    // Rooms work without the database: joins, events, leaves.
    let bob = b.client("bob").await;
    bob.join("outage", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "bob").await;
    bob.leave().await.unwrap();
    // Reads say why they cannot answer instead of answering stale.
    let (status, body) = records_of(a, "outage").await;
    assert_eq!(status, 503, "{body}");

    common::postgres::off_runtime(|| pg.start());
    // Everything queued lands, in order: Bob joined and left.
    eventually_within(
        Duration::from_secs(30),
        "the queued writes to land",
        || async {
            let (status, body) = records_of(b, "outage").await;
            let members = body["records"][0]["members"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            status == 200
                && members
                    .iter()
                    .any(|m| m["user"] == "bob" && m["leave_reason"] == "normal")
        },
    )
    .await;
}

#[tokio::test]
async fn the_load_tester_spreads_participants_over_every_node_and_reads_each() {
    let cluster = TestCluster::start(3).await;
    let mut config = conclave::loadtest::Config::new(&cluster.nodes[0].ws_url());
    config.also = cluster.nodes[1..].iter().map(|n| n.ws_url()).collect();
    config.rooms = 2;
    config.publishers = 1;
    config.subscribers = 4;
    config.duration = Duration::from_secs(2);
    let report = conclave::loadtest::run(config).await.expect("a run");
    assert_eq!(report.joins.succeeded, 10, "{:?}", report.errors);
    assert_eq!(report.nodes.len(), 3);
    for (node, row) in cluster.nodes.iter().zip(&report.nodes) {
        assert_eq!(row.url, node.ws_url());
        // Ten participants dealt over three nodes: four, three, three.
        assert!(row.joined >= 3, "{row:?}");
        assert!(row.error.is_none(), "{row:?}");
    }
    // Every subscriber heard its room's publisher, whichever node it came
    // through; only the rooms' owners forwarded.
    assert_eq!(report.audio.tracks_received, 8, "{:?}", report.audio);
    let forwarded: u64 = report
        .nodes
        .iter()
        .filter_map(|n| n.forwarded_packets)
        .sum();
    assert_eq!(report.server.forwarded_packets, Some(forwarded));
    assert!(forwarded > 0);
    let forwarding = report
        .nodes
        .iter()
        .filter(|n| n.forwarded_packets > Some(0))
        .count();
    assert!(
        forwarding <= 2,
        "two rooms, two owners at most: {:?}",
        report.nodes
    );
}

/// `name`'s value in `node`'s `/metrics`, if it is there.
async fn metric(node: &common::cluster::Node, name: &str) -> Option<f64> {
    let text = reqwest::get(node.url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn every_node_exports_the_clusters_size_and_its_own_part_in_it() {
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    a.create_room("census", "").await;
    let bob = b.client("bob").await;
    bob.join("census", Mode::Audio, None).await.unwrap();

    assert_eq!(
        metric(
            a,
            "conclave_cluster_claims_total{kind=\"create\",outcome=\"won\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(metric(b, "conclave_cluster_relays").await, Some(1.0));
    assert_eq!(metric(a, "conclave_cluster_relays").await, Some(0.0));
    // The cluster-wide figures, from the registry: on every node alike once
    // a heartbeat has read node-a's new load.
    for node in [a, b, c] {
        eventually("the cluster's room and member on every node", || async {
            metric(node, "conclave_cluster_nodes{state=\"serving\"}").await == Some(3.0)
                && metric(node, "conclave_cluster_rooms").await == Some(1.0)
                && metric(node, "conclave_cluster_members").await == Some(1.0)
        })
        .await;
    }
    // A second create of the name, through node-c, is refused there.
    let carol = c.client("carol").await;
    let refused = carol.create("census", "").await.unwrap_err();
    assert_eq!(refused.status(), Some(Status::Conflict));

    bob.leave().await.unwrap();
    drop(bob);
    eventually("node-b's relay gone", || async {
        metric(b, "conclave_cluster_relays").await == Some(0.0)
    })
    .await;

    // A single server has no cluster series.
    let single = common::TestServer::start().await;
    let text = reqwest::get(single.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("conclave_rooms "), "{text}");
    assert!(!text.contains("conclave_cluster_"), "{text}");
}

#[tokio::test]
async fn a_node_that_has_not_renewed_for_a_lease_writes_nothing_to_the_key_value_store() {
    use conclave::cluster::fence::FencedKv;
    use conclave::store::kv::{KvStore, Quota, SqliteKv};
    let redis = common::redis::RedisServer::start();
    let config = conclave::cluster::ClusterConfig {
        redis_url: redis.url(),
        lease: Duration::from_millis(300),
        ..Default::default()
    };
    let bind = "127.0.0.1:1".parse().unwrap();
    let cluster = conclave::cluster::Cluster::connect(config, bind, Duration::from_secs(15))
        .await
        .expect("connects to redis");
    let dir = tempfile::tempdir().unwrap();
    let kv = FencedKv {
        inner: std::sync::Arc::new(SqliteKv::open(&dir.path().join("kv.db")).unwrap()),
        cluster: cluster.clone(),
    };
    let write = |n: i64| kv.set("room", "count", Some(&json!(n)), &Quota::UNLIMITED);
    write(1).expect("a node that just renewed writes");
    // No heartbeat runs here: the lease passes without a renewal.
    eventually("a lease without a renewal", || async {
        cluster.claims_expired()
    })
    .await;
    let refused = write(2).expect_err("fenced");
    assert!(refused.is_transient(), "{refused}");
    assert_eq!(kv.get("room", "count").unwrap(), Some(json!(1)));
    // Renewed again (it holds no claims, so every renewal succeeds).
    cluster.renew_all().await.unwrap();
    write(3).expect("renewed: writes again");
    assert_eq!(kv.get("room", "count").unwrap(), Some(json!(3)));
}

#[tokio::test]
async fn a_client_that_moves_to_a_room_on_another_node_goes_there_directly() {
    let cluster = TestCluster::start(3).await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    a.create_room("first", "").await;
    b.create_room("second", "").await;
    let carol = c.client("carol").await;
    carol.join("first", Mode::Audio, None).await.unwrap();
    assert_eq!(metric(a, "conclave_connections").await, Some(1.0));
    carol.leave().await.unwrap();

    let joined = carol.join("second", Mode::Audio, None).await.unwrap();
    assert_eq!(joined.room.as_str(), "second");
    // node-c let its relay to node-a go and opened one to node-b; node-a
    // carries nothing for carol any more (no second hop through it).
    eventually("node-a's relay connection closed", || async {
        metric(a, "conclave_connections").await == Some(0.0)
    })
    .await;
    assert_eq!(metric(a, "conclave_cluster_relays").await, Some(0.0));
    assert_eq!(metric(c, "conclave_cluster_relays").await, Some(1.0));
    assert_eq!(metric(b, "conclave_connections").await, Some(1.0));
    let bob = b.client("bob").await;
    bob.join("second", Mode::Audio, None).await.unwrap();
    assert_eq!(b.members("second").await, ["carol", "bob"]);
}

#[tokio::test]
async fn on_a_redis_cluster_rooms_are_claimed_found_and_revived_as_on_one_redis() {
    use common::cluster::{Node, NodeSetup};
    let redis = common::redis::RedisCluster::start();
    let scripts = tempfile::tempdir().unwrap();
    let setup = NodeSetup {
        redis_url: redis.url(),
        postgres_url: None,
        scripts_dir: scripts.path().to_path_buf(),
        lease: "1s",
        reconnect_grace: "15s",
        extra: "redis_cluster = true".into(),
    };
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::start(id, &setup).await);
    }
    for node in &nodes {
        eventually(&format!("{} to see three nodes", node.id), || async {
            let (status, body) = node.get("/api/cluster/nodes").await;
            status == 200 && body["nodes"].as_array().map_or(0, Vec::len) == 3
        })
        .await;
    }

    // Found through every node.
    nodes[0].create_room("town", "").await;
    let mut alice = nodes[0].client("alice").await;
    alice.join("town", Mode::Audio, None).await.unwrap();
    let bob = nodes[1].client("bob").await;
    bob.join("town", Mode::Audio, None).await.unwrap();
    hears_join(&mut alice, "bob").await;

    // Claimed once, whichever slot and Redis node a name lands on.
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        clients.push(node.client(&format!("creator-{i}")).await);
    }
    for round in 0..20 {
        let name = format!("race-{round}");
        let results =
            futures_util::future::join_all(clients.iter().map(|c| c.create(&name, ""))).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
    }
    let spread = redis.keys_per_node();
    assert!(
        spread.iter().filter(|&&keys| keys > 0).count() >= 2,
        "the keys live on several Redis nodes: {spread:?}"
    );

    // The bus: a ban made through one node ends a session on another.
    let mut troll = nodes[2].client("troll").await;
    server_ban(&nodes[1], "troll").await;
    let frame = common::closed(&mut troll).await;
    assert_eq!(frame.map(|f| f.0), Some(1008));

    // A dead owner's room opens again on a live node.
    drop(bob);
    nodes[0].kill9();
    common::closed(&mut alice).await;
    let (_, members) = rejoin(&nodes[1], "alice", "town").await;
    assert_eq!(members, ["alice"]);
}

/// A relayed client's heartbeats (pings without an id, which nothing
/// answers) reach the room's node, whose side of the relay times out on
/// silence like any connection.
#[tokio::test]
async fn a_relayed_clients_heartbeats_reach_the_rooms_node() {
    let extra = "\n[signal]\nheartbeat_interval = \"100ms\"\nheartbeat_timeout = \"1s\"\n";
    let cluster = TestCluster::start_with(2, None, extra).await;
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    a.create_room("vigil", "").await;
    let carol = b.client("carol").await;
    carol.join("vigil", Mode::Audio, None).await.unwrap();
    assert_eq!(metric(a, "conclave_cluster_relays").await, Some(0.0));
    assert_eq!(metric(b, "conclave_cluster_relays").await, Some(1.0));
    // Three heartbeat timeouts with nothing but heartbeats sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        metric(
            a,
            r#"conclave_connections_closed_total{reason="heartbeat"}"#
        )
        .await,
        None,
        "node-a timed the relayed connection out"
    );
    assert_eq!(metric(a, "conclave_connections").await, Some(1.0));
    assert_eq!(carol.close_frame(), None);
    assert_eq!(a.members("vigil").await, ["carol"]);
}
