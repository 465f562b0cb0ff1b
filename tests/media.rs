//! The media plane end to end: Rust WebRTC clients (webrtc-rs) in rooms of
//! a real server, over real UDP on loopback.

mod common;

use std::time::Duration;

use common::TestServer;
use common::media::Participant;
use conclave::signal::protocol::{LeaveReason, MediaKind, Mode, Role, ServerMessage};

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
    alice.pump(Duration::from_millis(200)).await;
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
        tokio::time::sleep(Duration::from_millis(20)).await;
        alice.pump(Duration::ZERO).await;
        bob.pump(Duration::ZERO).await;
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

/// Sends `tag` packets from `from` until `to` receives one, answering offers
/// on both sides meanwhile. Returns the number of the first packet received.
async fn flow(from: &mut Participant, to: &mut Participant, tag: &str) -> u32 {
    let prefix = format!("{tag}:");
    for n in 0..500u32 {
        from.media
            .send_audio(&marked(tag, n), n * 960, 30)
            .await
            .expect("send");
        from.pump(Duration::ZERO).await;
        to.pump(Duration::ZERO).await;
        if let Some(p) = to.media.next_packet(Duration::from_millis(20)).await
            && p.packet.payload.starts_with(prefix.as_bytes())
        {
            return n;
        }
    }
    panic!(
        "{} never received {tag} packets from {}",
        to.user, from.user
    );
}

#[tokio::test]
async fn a_muted_track_is_not_forwarded_even_if_the_client_keeps_sending() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "before").await;

    alice
        .client
        .mute(MediaKind::Audio, true, None)
        .await
        .unwrap();
    // The SFU hears of the mute before the answer arrives, so everything
    // sent after it is dropped; the unmuted run after it proves the path
    // was open the whole time.
    for n in 0..25u32 {
        alice
            .media
            .send_audio(&marked("muted", n), n * 960, 30)
            .await
            .unwrap();
    }
    alice
        .client
        .mute(MediaKind::Audio, false, None)
        .await
        .unwrap();
    flow(&mut alice, &mut bob, "after").await;
    let seen = bob.media.drain().await;
    let muted_seen = seen
        .values()
        .flatten()
        .filter(|p| p.packet.payload.starts_with(b"muted:"))
        .count();
    assert_eq!(muted_seen, 0, "muted packets reached bob");
    let dropped = metric(
        &server,
        "conclave_media_dropped_packets_total{reason=\"not_publishing\"}",
    )
    .await;
    assert!(
        dropped >= 25.0,
        "muted packets counted as dropped: {dropped}"
    );
}

#[tokio::test]
async fn the_audience_receives_but_cannot_publish() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut carol = Participant::join(&server, "carol", "r", Mode::Audio, Role::Audience).await;
    let offer = carol.offers.last().cloned().expect("an offer");
    match offer {
        ServerMessage::MediaOffer { publish, .. } => {
            assert!(
                publish.is_empty(),
                "audience got publish slots: {publish:?}"
            )
        }
        other => panic!("not an offer: {other:?}"),
    }
    flow(&mut alice, &mut carol, "to-audience").await;
    let err = carol
        .client
        .mute(MediaKind::Audio, false, None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.code()), Some(403), "{err}");
}

#[tokio::test]
async fn switching_to_audience_stops_forwarding_at_once() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "speaking").await;
    alice.client.set_role(Role::Audience, None).await.unwrap();
    for n in 0..25u32 {
        alice
            .media
            .send_audio(&marked("demoted", n), n * 960, 30)
            .await
            .unwrap();
    }
    // Bob's own packets still reach alice: the room is alive, only alice's
    // media stopped.
    flow(&mut bob, &mut alice, "bob").await;
    bob.pump(Duration::from_millis(100)).await;
    let seen = bob.media.drain().await;
    assert!(
        !seen
            .values()
            .flatten()
            .any(|p| p.packet.payload.starts_with(b"demoted:")),
        "an audience member's packets were forwarded"
    );
}

#[tokio::test]
async fn speaking_members_are_announced_in_volume_events() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "warmup").await;
    for n in 0..20u32 {
        // Level 20: loud (RFC 6464 counts down from 0 dBov).
        alice
            .media
            .send_audio(&marked("loud", n), n * 960, 20)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let level = bob
        .event_where(|e| match e {
            ServerMessage::Volume { levels } => levels
                .iter()
                .find(|l| l.user.as_str() == "alice" && l.speaking)
                .map(|l| l.level),
            _ => None,
        })
        .await;
    assert_eq!(level, 20);
}

#[tokio::test]
async fn a_member_whose_media_goes_silent_times_out() {
    let server = TestServer::start_with(|c| c.media.timeout = Duration::from_millis(1500)).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    // Bob's peer connection goes away without a word on signaling, while
    // alice keeps talking (her packets keep her own peer alive).
    bob.media.close().await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut n = 0;
    let reason = loop {
        assert!(std::time::Instant::now() < deadline, "bob never timed out");
        alice
            .media
            .send_audio(&marked("alive", n), n * 960, 60)
            .await
            .unwrap();
        n += 1;
        let left = alice
            .try_event_where(Duration::from_millis(20), |e| match e {
                ServerMessage::MemberLeft { user, reason, .. } if user.as_str() == "bob" => {
                    Some(*reason)
                }
                _ => None,
            })
            .await;
        if let Some(reason) = left {
            break reason;
        }
    };
    assert_eq!(reason, LeaveReason::Timeout);
    let mut bob_client = bob.client;
    let why = common::event_where(&mut bob_client, |e| match e {
        ServerMessage::Disconnected { reason, .. } => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(why, LeaveReason::Timeout);
}

#[tokio::test]
async fn garbage_and_oversized_datagrams_are_dropped_and_counted() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    let port = server
        .state()
        .media
        .as_ref()
        .expect("media on")
        .local_addrs()[0];
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Looks like RTP (version 2), from an address no ICE check ever came from.
    let mut rtp = vec![0x80u8, 111, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    rtp.extend_from_slice(b"forged");
    stranger.send_to(&rtp, port).unwrap();
    stranger
        .send_to(b"\x00\x01garbage that is not stun", port)
        .unwrap();
    stranger.send_to(&vec![0x80u8; 4000], port).unwrap();
    common::eventually("the drops to be counted", || async {
        metric(
            &server,
            "conclave_media_dropped_packets_total{reason=\"unknown_source\"}",
        )
        .await
            >= 2.0
            && metric(
                &server,
                "conclave_media_dropped_packets_total{reason=\"oversized\"}",
            )
            .await
                >= 1.0
    })
    .await;
    // The room goes on.
    flow(&mut alice, &mut bob, "still").await;
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_room_policy_hears_who_speaks() {
    let server = TestServer::start().await;
    server
        .script(
            "loudest",
            r#"
            local policy = {}
            function policy.on_speaking(event)
              room.set_metadata("speaker", event.user)
            end
            return policy
            "#,
        )
        .await;
    let alice = server.client("alice").await;
    alice
        .create_with_policy("talk", "", Some("loudest"))
        .await
        .expect("create with the policy");
    drop(alice);
    let mut alice =
        Participant::join(&server, "alice", "talk", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "talk", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "warmup").await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut n = 0;
    let speaker = loop {
        assert!(std::time::Instant::now() < deadline, "the hook never ran");
        alice
            .media
            .send_audio(&marked("loud", n), n * 960, 10)
            .await
            .unwrap();
        n += 1;
        let found = bob
            .try_event_where(Duration::from_millis(20), |e| match e {
                ServerMessage::MetadataChanged { metadata, .. } => metadata
                    .get("speaker")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
                _ => None,
            })
            .await;
        if let Some(speaker) = found {
            break speaker;
        }
    };
    assert_eq!(speaker, "alice");
}
