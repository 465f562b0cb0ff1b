//! Graceful shutdown: members are told, connections closed with 1001, and
//! every call record is finished on disk.

mod common;

use common::{TestServer, closed, next_event};
use conclave::protocol::{LeaveReason, Mode, ServerMessage};
use conclave::store::sqlite::SqliteStore;
use conclave::store::{RecordQuery, Store};

#[tokio::test]
async fn shutdown_tells_members_and_finishes_records() {
    let mut srv = TestServer::start().await;
    let mut alice = srv.client("alice").await;
    let mut idle = srv.client("idle").await; // connected, in no room
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();

    srv.stop().await;

    match next_event(&mut alice).await {
        ServerMessage::Disconnected { reason, .. } => assert_eq!(reason, LeaveReason::Shutdown),
        other => panic!("expected disconnected, got {other:?}"),
    }
    assert_eq!(closed(&mut alice).await.map(|f| f.0), Some(1001));
    assert_eq!(closed(&mut idle).await.map(|f| f.0), Some(1001));

    // The database, opened afresh, holds the finished record.
    let mut store = SqliteStore::open_in(srv.data_dir.path()).unwrap();
    let records = store.records(&RecordQuery::default()).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].end_reason.as_deref(), Some("shutdown"));
    assert_eq!(
        records[0].members[0].leave_reason.as_deref(),
        Some("shutdown")
    );
}

#[tokio::test]
async fn records_left_open_by_a_crash_are_closed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A record started and never ended, as a killed server leaves it.
        let mut store = SqliteStore::open_in(dir.path()).unwrap();
        store
            .apply(&conclave::store::RecordOp::Start {
                channel_id: conclave::ids::ChannelId(1),
                room: conclave::ids::RoomName::new("crashed").unwrap(),
                custom_info: String::new(),
                created_at: 1,
                started_at: 1,
            })
            .unwrap();
    }
    let path = dir.path().to_path_buf();
    let srv = TestServer::start_with(move |c| c.server.data_dir = path).await;
    let records = srv.records("?room=crashed").await;
    assert_eq!(records[0]["end_reason"], "crashed");
    srv.shutdown().await;
}
