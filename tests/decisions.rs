//! "Why was I denied?": every decision on a member's action is written to
//! the room's decision log, and a refused request names its record, which
//! the admin API resolves, whichever layer refused.

mod common;

use common::TestServer;
use conclave::auth::Grants;
use conclave::model::{MediaKind, Mode, Role};
use conclave::status::Status;
use serde_json::Value;

/// The record `id` names, through the admin API.
async fn decision(srv: &TestServer, id: &str) -> Value {
    let (code, body) = srv
        .get(&format!("/api/decisions/{id}"), Some(&srv.admin_token()))
        .await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn a_policy_refusal_names_its_record_with_hook_version_and_time() {
    let srv = TestServer::start().await;
    srv.script(
        "default",
        r#"
        local p = {}
        function p.can_join(req)
          if req.user == "mallory" then
            return { allow = false, code = 403, reason = "mallory stays out" }
          end
        end
        return p
        "#,
    )
    .await;
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();

    let mallory = srv.client("mallory").await;
    let err = mallory.join("r", Mode::Audio, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    let id = err.decision().expect("the refusal names its decision");

    let record = decision(&srv, id).await;
    assert_eq!(record["id"], id);
    assert_eq!(record["room"], "r");
    assert_eq!(record["action"], "join");
    assert_eq!(record["actor"], "mallory");
    assert_eq!(record["allowed"], false);
    assert_eq!(record["code"], 403);
    assert_eq!(record["reason"], "mallory stays out");
    assert_eq!(record["by"]["layer"], "policy");
    assert_eq!(record["by"]["hook"], "can_join");
    let version = record["policy"].as_str().unwrap();
    assert!(version.starts_with("default@"), "{record}");
    assert_eq!(record["by"]["script"], version);
    assert!(record["micros"].as_u64().is_some(), "{record}");

    // The room's log lists alice's create and join and mallory's refusal,
    // in order; the filters narrow it.
    let admin = srv.admin_token();
    let (_, all) = srv.get("/api/rooms/r/decisions", Some(&admin)).await;
    let all = all["decisions"].as_array().unwrap();
    let seen: Vec<(&str, &str, bool)> = all
        .iter()
        .map(|r| {
            let actor = r["actor"].as_str().unwrap();
            (actor, r["action"].as_str().unwrap(), r["allowed"] == true)
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("alice", "create", true),
            ("alice", "join", true),
            ("mallory", "join", false)
        ]
    );
    assert_eq!(all[1]["by"]["layer"], "rules", "the hook said nothing");
    let (_, refused) = srv
        .get("/api/rooms/r/decisions?refused=true", Some(&admin))
        .await;
    assert_eq!(refused["decisions"].as_array().unwrap().len(), 1);
    let (_, of_alice) = srv
        .get("/api/rooms/r/decisions?user=alice", Some(&admin))
        .await;
    assert_eq!(of_alice["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(of_alice["decisions"][1]["action"], "join");
}

#[tokio::test]
async fn refusals_by_the_grants_the_rules_and_the_room_name_their_layer() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();

    // A token that does not cover the room: refused before the room is
    // looked up, and kept outside any room.
    let narrow = srv.token(
        "bob",
        Grants {
            rooms: vec!["elsewhere".into()],
            ..Grants::default()
        },
    );
    let bob = srv.client_with_token(&narrow).await;
    let err = bob.join("r", Mode::Audio, None).await.unwrap_err();
    let id = err.decision().expect("named");
    assert!(id.starts_with("s-"), "{id}");
    let record = decision(&srv, id).await;
    assert_eq!(
        (record["by"]["layer"].as_str(), record["code"].as_u64()),
        (Some("grants"), Some(u64::from(Status::Unauthorized.code())))
    );

    // Acting on another member without the admin grant: the rules.
    let carol = srv.client("carol").await;
    carol.join("r", Mode::Audio, None).await.unwrap();
    let err = carol
        .mute(MediaKind::Audio, true, Some("alice"))
        .await
        .unwrap_err();
    let record = decision(&srv, err.decision().expect("named")).await;
    assert_eq!(record["by"]["layer"], "rules");
    assert_eq!(record["target"], "alice");
    assert_eq!(record["action"], "mute");

    // Allowed by the pipeline, refused by the room's own rules: an
    // audience member cannot unmute. The record says so.
    carol.set_role(Role::Audience, None).await.unwrap();
    let err = carol.mute(MediaKind::Audio, false, None).await.unwrap_err();
    assert_eq!(err.status(), Some(Status::Forbidden));
    let record = decision(&srv, err.decision().expect("named")).await;
    assert_eq!(record["by"]["layer"], "room");
    assert_eq!(record["allowed"], false);
    assert!(
        record["reason"].as_str().unwrap().contains("cannot unmute"),
        "{record}"
    );
}

#[tokio::test]
async fn a_create_refused_by_can_create_is_kept_though_the_room_never_opens() {
    let srv = TestServer::start().await;
    srv.script(
        "default",
        r#"return { can_create = function(req) return false, "no rooms today" end }"#,
    )
    .await;
    let alice = srv.client("alice").await;
    let err = alice.create("r", "").await.unwrap_err();
    let record = decision(&srv, err.decision().expect("named")).await;
    assert_eq!(record["action"], "create");
    assert_eq!(record["reason"], "no rooms today");
    assert_eq!(record["by"]["hook"], "can_create");
    let (_, outside) = srv.get("/api/decisions", Some(&srv.admin_token())).await;
    assert_eq!(outside["decisions"].as_array().unwrap().len(), 1);
    // An id nobody handed out is a clear 404.
    let (code, body) = srv
        .get("/api/decisions/42-1", Some(&srv.admin_token()))
        .await;
    assert_eq!(code, 404, "{body}");
}

#[tokio::test]
async fn a_channel_connect_refused_by_the_community_names_its_record() {
    let srv = TestServer::start().await;
    let server = srv.community("olivia", &["alice", "bob"]).await;
    let channel = srv.media_channel(server, "hall").await;
    srv.op(
        "PUT",
        &format!("/servers/{server}/channels/{channel}/lists/black/members/bob"),
        Value::Null,
    )
    .await;
    // Refused before the channel's room exists: kept with the decisions
    // made outside rooms.
    let bob = srv.client("bob").await;
    let err = bob
        .connect_channel(server, channel, None)
        .await
        .unwrap_err();
    let id = err.decision().expect("named");
    assert!(id.starts_with("s-"), "{id}");
    let record = decision(&srv, id).await;
    assert_eq!(record["by"]["layer"], "community");
    assert_eq!(record["actor"], "bob");
    assert!(
        record["reason"].as_str().unwrap().contains("not visible"),
        "{record}"
    );
    // Once the room is open, the room decides, and its log keeps it.
    let alice = srv.client("alice").await;
    alice.connect_channel(server, channel, None).await.unwrap();
    let err = bob
        .connect_channel(server, channel, None)
        .await
        .unwrap_err();
    let id = err.decision().expect("named").to_owned();
    let record = decision(&srv, &id).await;
    assert_eq!(record["by"]["layer"], "community");
}
