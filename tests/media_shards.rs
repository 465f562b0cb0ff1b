//! A room whose media spans several shards on several media workers:
//! `peers_per_shard = 1` puts each member on its own shard, so every packet,
//! mute, level and keyframe request here crosses from one worker thread to
//! another. Real WebRTC clients, real UDP on loopback.

mod common;

use std::time::Duration;

use common::TestServer;
use common::media::{Participant, across_a_mute, flow, speaks_and_is_heard, video_flow};
use conclave::ids::UserId;
use conclave::protocol::{Mode, Role};

/// A server whose rooms open a shard per member, up to `workers`.
async fn sharded(workers: usize) -> TestServer {
    TestServer::start_with(|c| {
        c.media.workers = workers;
        c.media.peers_per_shard = 1;
    })
    .await
}

async fn shards(server: &TestServer) -> f64 {
    server.metric("conclave_media_shards").await
}

#[tokio::test]
async fn members_on_three_shards_hear_each_other() {
    let server = sharded(3).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    let mut carol = Participant::join(&server, "carol", "r", Mode::Audio, Role::Audience).await;
    assert_eq!(shards(&server).await, 3.0, "one shard per member");
    flow(&mut alice, &mut bob, "alice").await;
    flow(&mut bob, &mut alice, "bob").await;
    flow(&mut alice, &mut carol, "alice-to-carol").await;
    flow(&mut bob, &mut carol, "bob-to-carol").await;
}

#[tokio::test]
async fn a_room_never_has_more_shards_than_workers() {
    let server = sharded(2).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Audience).await;
    let mut carol = Participant::join(&server, "carol", "r", Mode::Audio, Role::Audience).await;
    assert_eq!(shards(&server).await, 2.0);
    // Alice and carol share shard 0 (the least loaded when carol came);
    // bob is alone on shard 1.
    flow(&mut alice, &mut bob, "to-bob").await;
    flow(&mut alice, &mut carol, "to-carol").await;
}

#[tokio::test]
async fn a_mute_holds_on_every_shard() {
    let server = sharded(3).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    let mut carol = Participant::join(&server, "carol", "r", Mode::Audio, Role::Audience).await;
    flow(&mut alice, &mut carol, "warmup").await;
    across_a_mute(&server, &mut alice, &mut bob).await;
    flow(&mut alice, &mut carol, "after").await;
    assert_eq!(bob.ever_received(b"muted:").await, 0, "reached bob");
    assert_eq!(carol.ever_received(b"muted:").await, 0, "reached carol");
}

#[tokio::test]
async fn a_speaker_on_another_shard_is_announced() {
    let server = sharded(2).await;
    // Bob takes shard 0 (where levels are metered), alice shard 1.
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Audience).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    assert_eq!(shards(&server).await, 2.0);
    flow(&mut alice, &mut bob, "warmup").await;
    assert_eq!(speaks_and_is_heard(&mut alice, &mut bob).await, 20);
}

#[tokio::test]
async fn a_keyframe_request_reaches_a_publisher_on_another_shard() {
    let server = sharded(2).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Video, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Video, Role::Audience).await;
    assert_eq!(shards(&server).await, 2.0);
    let mut asked = alice.media.keyframe_requests();
    video_flow(&mut alice, &mut bob, "warmup").await;
    // Past the new subscriber's keyframe window, so what alice hears next
    // is bob's own request.
    let interval = server.state().config.media.keyframe_interval;
    tokio::time::sleep(Duration::from_secs(3) + 2 * interval).await;
    let heard = *asked.borrow_and_update();
    bob.media
        .request_keyframe(&UserId::from("alice"))
        .await
        .expect("PLI sent");
    tokio::time::timeout(common::PATIENCE, asked.wait_for(|n| *n > heard))
        .await
        .expect("alice never heard bob's keyframe request")
        .unwrap();
}

#[tokio::test]
async fn a_member_who_leaves_and_returns_hears_the_room_again() {
    let server = sharded(2).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Audience).await;
    flow(&mut alice, &mut bob, "first").await;
    bob.client.leave().await.unwrap();
    drop(bob);
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Audience).await;
    flow(&mut alice, &mut bob, "again").await;
}
