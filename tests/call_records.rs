//! Call records: written once someone joins, with every membership's join and
//! leave, durable across a restart.

mod common;

use common::TestServer;
use conclave::protocol::Mode;

#[tokio::test]
async fn a_record_holds_the_instance_and_every_membership() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    let bob = srv.client("bob").await;
    let created = alice.create("weekly", "notes").await.unwrap();
    alice.join("weekly", Mode::Audio, None).await.unwrap();
    bob.join("weekly", Mode::Video, None).await.unwrap();

    let open = srv.records("?room=weekly").await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["channel_id"], created.channel_id.0);
    assert_eq!(open[0]["custom_info"], "notes");
    assert!(open[0]["ended_at"].is_null(), "still open");
    assert_eq!(open[0]["members"].as_array().unwrap().len(), 2);

    bob.leave().await.unwrap();
    alice.leave().await.unwrap();
    let done = &srv.records("?room=weekly").await[0];
    assert_eq!(done["end_reason"], "all_left");
    let started = done["started_at"].as_i64().unwrap();
    let ended = done["ended_at"].as_i64().unwrap();
    assert!(ended >= started);
    for member in done["members"].as_array().unwrap() {
        assert_eq!(member["leave_reason"], "normal");
        assert!(member["left_at"].as_i64().unwrap() >= member["joined_at"].as_i64().unwrap());
    }
    let users: Vec<_> = done["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].clone())
        .collect();
    assert_eq!(users, ["alice", "bob"]);

    // Filter by channel id; a second instance of the name gets its own record.
    alice.create("weekly", "").await.unwrap();
    alice.join("weekly", Mode::Audio, None).await.unwrap();
    assert_eq!(srv.records("?room=weekly").await.len(), 2);
    let one = srv
        .records(&format!("?channel_id={}", created.channel_id.0))
        .await;
    assert_eq!(one.len(), 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_created_room_never_joined_leaves_no_record() {
    let srv = TestServer::start().await;
    let alice = srv.client("alice").await;
    alice.create("unused", "").await.unwrap();
    assert!(srv.records("").await.is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_record_queries_answer_400() {
    let srv = TestServer::start().await;
    let (status, body) = srv
        .get("/api/records?limit=lots", Some(&srv.admin_token()))
        .await;
    assert_eq!(status, 400, "{body}");
    srv.shutdown().await;
}
