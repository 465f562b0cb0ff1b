//! The media plane end to end: Rust WebRTC clients (webrtc-rs) in rooms of
//! a real server, over real UDP on loopback.

mod common;

use common::TestServer;
use common::media::Participant;
use conclave::signal::protocol::{Mode, Role};

/// A payload no codec would produce by chance: the sender and a counter.
fn marked(tag: &str, n: u32) -> Vec<u8> {
    format!("{tag}:{n}").into_bytes()
}

#[tokio::test]
async fn two_members_receive_each_others_audio_byte_for_byte() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r1", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r1", Mode::Audio, Role::Interactor).await;
    // Alice's track reaches bob only after the renegotiation bob's arrival caused.
    alice.pump(std::time::Duration::from_millis(200)).await;
    for n in 0..50u32 {
        alice
            .media
            .send_audio(&marked("alice", n), n * 960, 30)
            .await
            .unwrap();
        bob.media
            .send_audio(&marked("bob", n), n * 960, 30)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        alice.pump(std::time::Duration::ZERO).await;
        bob.pump(std::time::Duration::ZERO).await;
    }
    let got = bob
        .packet_where(|p| p.packet.payload.starts_with(b"alice:"))
        .await;
    assert_eq!(got.user.as_str(), "alice");
    let got = alice
        .packet_where(|p| p.packet.payload.starts_with(b"bob:"))
        .await;
    assert_eq!(got.user.as_str(), "bob");
}
