//! The media plane end to end: Rust WebRTC clients (webrtc-rs) in rooms of
//! a real server, over real UDP on loopback.

mod common;

use std::time::Duration;

use common::TestServer;
use common::media::{
    ForgeSsrc, LossyRelay, Participant, SenderReports, across_a_mute, flow, marked, muted_drops,
    speaks_and_is_heard, until_dropped_as_muted, video, video_flow,
};
use conclave::ids::UserId;
use conclave::protocol::{LeaveReason, MediaKind, Mode, Role, ServerMessage};

#[tokio::test]
async fn two_members_receive_each_others_audio_byte_for_byte() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r1", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r1", Mode::Audio, Role::Interactor).await;
    // Each side's track reaches the other once the renegotiation bob's
    // arrival caused is through: `flow` answers offers until packets pass.
    let from_alice = flow(&mut alice, &mut bob, "alice").await;
    let from_bob = flow(&mut bob, &mut alice, "bob").await;
    // Every payload arrives whole and unchanged, attributed to its sender.
    let sent: Vec<u8> = marked("alice", from_alice + 1)
        .into_iter()
        .chain(std::iter::repeat_n(0xa5, 64))
        .collect();
    alice
        .media
        .send_audio(&sent, (from_alice + 1) * 960, 30)
        .await
        .unwrap();
    let got = bob.packet_where(|p| p.packet.payload[..] == sent[..]).await;
    assert_eq!(got.user.as_str(), "alice");
    assert_eq!(got.kind, MediaKind::Audio);
    let sent: Vec<u8> = marked("bob", from_bob + 1)
        .into_iter()
        .chain((0..=255u8).rev())
        .collect();
    bob.media
        .send_audio(&sent, (from_bob + 1) * 960, 30)
        .await
        .unwrap();
    let got = alice
        .packet_where(|p| p.packet.payload[..] == sent[..])
        .await;
    assert_eq!(got.user.as_str(), "bob");
}

#[tokio::test]
async fn a_muted_track_is_not_forwarded_even_if_the_client_keeps_sending() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    across_a_mute(&server, &mut alice, &mut bob).await;
    // Everything bob received, the packets `flow` read included.
    assert_eq!(
        bob.ever_received(b"muted:").await,
        0,
        "muted packets reached bob"
    );
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
    let dropped_before = metric(
        &server,
        "conclave_media_dropped_packets_total{reason=\"not_publishing\"}",
    )
    .await;
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
    // Every demoted packet reached the server and was dropped there...
    common::eventually("the demoted packets to be dropped", || async {
        metric(
            &server,
            "conclave_media_dropped_packets_total{reason=\"not_publishing\"}",
        )
        .await
            >= dropped_before + 25.0
    })
    .await;
    // ... and none of them reached bob.
    assert_eq!(
        bob.ever_received(b"demoted:").await,
        0,
        "an audience member's packets were forwarded"
    );
}

#[tokio::test]
async fn speaking_members_are_announced_in_volume_events() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "warmup").await;
    assert_eq!(speaks_and_is_heard(&mut alice, &mut bob).await, 20);
}

#[tokio::test]
async fn a_steady_speaker_is_announced_once_and_to_each_newcomer() {
    // Long intervals, so that a client pausing a whole interval by accident
    // (which would read as a stop and a new start) is out of the question.
    let server =
        TestServer::start_with(|c| c.media.volume_interval = Duration::from_millis(500)).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    // `flow` speaks at level 30.
    flow(&mut alice, &mut bob, "warmup").await;
    // Then alice holds level 20, a packet every 20 ms, from `first` on.
    let media = &alice.media;
    let speak = |first: u32| async move {
        for n in first.. {
            media
                .send_audio(&marked("steady", n), n * 960, 20)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let alice_speaks = |e: &ServerMessage| match e {
        ServerMessage::Volume { levels } => levels
            .iter()
            .find(|l| l.user.as_str() == "alice" && l.speaking)
            .map(|l| l.level),
        _ => None,
    };
    // Carol joins while nothing changes, and is told alice speaks.
    let mut carol = tokio::select! {
        carol = Participant::join(&server, "carol", "r", Mode::Audio, Role::Audience) => carol,
        () = speak(0) => unreachable!("alice speaks on"),
    };
    let level = tokio::select! {
        level = carol.event_where(alice_speaks) => level,
        () = speak(100_000) => unreachable!("alice speaks on"),
    };
    assert_eq!(level, 20);
    // Five more intervals at the same level, then silence.
    for n in 200_000..200_125 {
        media
            .send_audio(&marked("steady", n), n * 960, 20)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // All bob was told about alice, up to her stop.
    let mut told = Vec::new();
    loop {
        let entry = bob
            .event_where(|e| match e {
                ServerMessage::Volume { levels } => levels
                    .iter()
                    .find(|l| l.user.as_str() == "alice")
                    .map(|l| (l.level, l.speaking)),
                _ => None,
            })
            .await;
        told.push(entry);
        if !entry.1 {
            break;
        }
    }
    let steady = told
        .iter()
        .position(|e| *e == (20, true))
        .unwrap_or_else(|| panic!("never told alice speaks at 20: {told:?}"));
    assert!(
        told[..steady].iter().all(|e| *e == (30, true)),
        "before the steady level: {told:?}"
    );
    assert_eq!(told[steady..], [(20, true), (127, false)], "{told:?}");
}

#[tokio::test]
async fn a_speaker_who_mutes_is_announced_as_stopped() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "warmup").await;
    assert_eq!(speaks_and_is_heard(&mut alice, &mut bob).await, 20);
    alice
        .client
        .mute(MediaKind::Audio, true, None)
        .await
        .unwrap();
    // She keeps sending loud packets, which the server drops and does not
    // meter; the room announces only changes, so without a word bob would
    // think she speaks on.
    let media = &alice.media;
    let loud = async {
        for n in 0.. {
            media
                .send_audio(&marked("muted", n), n * 960, 20)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let stopped = bob.event_where(|e| match e {
        ServerMessage::Volume { levels } => levels
            .iter()
            .find(|l| l.user.as_str() == "alice")
            .filter(|l| !l.speaking)
            .map(|l| l.level),
        _ => None,
    });
    let stopped = tokio::select! {
        level = stopped => level,
        () = loud => unreachable!("alice sends on"),
    };
    assert_eq!(stopped, 127);
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
async fn idle_members_live_on_consent_checks_the_port_answers() {
    // The media timeout is far shorter than the wait, and two audience
    // members with no tracks to receive send nothing once connected but ICE
    // consent checks (no RTCP: nothing flows), which the UDP port's reader
    // answers without handing them to the room's media: only the liveness
    // it passes on keeps them in, and only answers the clients accept keep
    // their ICE connected.
    let interval = conclave::client::media::CONSENT_INTERVAL;
    let server = TestServer::start_with(|c| c.media.timeout = interval + interval / 2).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Audience).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Audience).await;
    let answered = "conclave_media_consent_answered_total";
    let start = metric(&server, answered).await;
    // Each client checks every 5 s: eight answers, four each, span more
    // than two media timeouts and the clients' own disconnect timeout.
    let deadline = std::time::Instant::now() + interval * 8;
    while metric(&server, answered).await < start + 8.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "consent checks answered by the port: {}",
            metric(&server, answered).await - start
        );
        alice.pump(Duration::from_millis(100)).await;
        bob.pump(Duration::from_millis(100)).await;
    }
    for member in [&mut alice, &mut bob] {
        let left = member
            .try_event_where(Duration::ZERO, |e| match e {
                ServerMessage::MemberLeft { .. } | ServerMessage::Disconnected { .. } => {
                    Some(e.clone())
                }
                _ => None,
            })
            .await;
        assert_eq!(left, None, "{} saw a member leave", member.user);
    }
    // Both peer connections still carry media.
    let mut carol = Participant::join(&server, "carol", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut carol, &mut alice, "to-alice").await;
    flow(&mut carol, &mut bob, "to-bob").await;
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
    server.metric(name).await
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

/// One video RTP packet with a recognisable payload (nothing decodes it).
const KEYFRAME_METRIC: &str = "conclave_media_keyframe_requests_total";

#[tokio::test]
async fn a_subscribers_keyframe_request_reaches_the_publisher() {
    let server = TestServer::start().await;
    let interval = server.state().config.media.keyframe_interval;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Video, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Video, Role::Interactor).await;
    // Bob publishes no video, so every keyframe request counted is for alice's.
    let mut asked = alice.media.keyframe_requests();
    let mut n = video_flow(&mut alice, &mut bob, "warmup").await;
    let subscribed = std::time::Instant::now();

    // A new subscriber's publisher is asked for keyframes for 3 s: alice's
    // client hears those (the server's PLI gets through her chain too).
    tokio::time::timeout(common::PATIENCE, asked.wait_for(|n| *n > 0))
        .await
        .expect("alice heard no keyframe request during bob's warm-up")
        .unwrap();

    // Then the requests stop: wait until the counter has stood still for
    // several intervals, after the warm-up window has surely closed.
    let deadline = subscribed + common::PATIENCE;
    let mut last = metric(&server, KEYFRAME_METRIC).await;
    let mut still_since = std::time::Instant::now();
    while subscribed.elapsed() < Duration::from_secs(3) + interval
        || still_since.elapsed() < 3 * interval
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the warm-up never ended"
        );
        alice.media.send_video(video("live", n)).await.unwrap();
        n += 1;
        bob.pump(Duration::from_millis(20)).await;
        let now = metric(&server, KEYFRAME_METRIC).await;
        if now != last {
            last = now;
            still_since = std::time::Instant::now();
        }
    }
    let heard = *asked.borrow_and_update();

    // Bob's decoder lost its reference: he asks for a keyframe.
    bob.media
        .request_keyframe(&UserId::from("alice"))
        .await
        .expect("PLI sent");
    tokio::time::timeout(common::PATIENCE, asked.wait_for(|n| *n > heard))
        .await
        .expect("alice never heard bob's keyframe request")
        .unwrap();
    let counted = metric(&server, KEYFRAME_METRIC).await;
    assert_eq!(counted, last + 1.0, "one request relayed and counted");
}

#[tokio::test]
async fn video_a_subscriber_lost_on_the_wire_is_retransmitted_by_the_server() {
    let server = TestServer::start().await;
    let port = server
        .state()
        .media
        .as_ref()
        .expect("media on")
        .local_addrs()[0];
    let relay = LossyRelay::start(port, conclave::media::codec::VP8_PT, 5).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Video, Role::Interactor).await;
    let mut bob =
        Participant::join_through(&server, "bob", "r", Mode::Video, Role::Interactor, &relay).await;
    let first = video_flow(&mut alice, &mut bob, "warmup").await;

    // From now on every fifth video packet to bob is lost once; the ones
    // after it arrive, so bob's client sees each gap and sends a NACK.
    relay.arm(true);
    for n in first..first + 60 {
        alice.media.send_video(video("v", n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        bob.pump(Duration::ZERO).await;
    }
    let lost = relay.lost();
    assert!(lost.len() >= 10, "the relay lost too little: {lost:?}");

    // Every lost packet reaches bob after all: the server answered his
    // NACKs from its send buffer for his leg (alice never saw them).
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut received = std::collections::HashSet::new();
    let mut n = first + 60;
    while !lost.iter().all(|l| received.contains(l)) {
        assert!(
            std::time::Instant::now() < deadline,
            "lost {lost:?}, got back {:?}",
            lost.iter()
                .filter(|l| received.contains(*l))
                .collect::<Vec<_>>()
        );
        // Later packets keep coming, as media does.
        alice.media.send_video(video("v", n)).await.unwrap();
        n += 1;
        bob.pump(Duration::ZERO).await;
        while let Some(p) = bob.media.next_packet(Duration::from_millis(5)).await {
            if p.kind == MediaKind::Video {
                received.insert((p.packet.header.ssrc, p.packet.header.sequence_number));
            }
        }
    }
}

/// The server encrypts forwarded audio with its own SRTP context, beside
/// webrtc-rs's write pipeline, so that pipeline's report interceptor never
/// sees it: the server writes the track's sender reports itself. Each one
/// counts exactly the packets sent before it and carries the RTP timestamp
/// of the last of them.
#[tokio::test]
async fn audio_sent_beside_the_pipeline_is_counted_in_its_sender_reports() {
    let server = TestServer::start().await;
    let reports = SenderReports::default();
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join_with(&server, "bob", "r", Mode::Audio, Role::Interactor, |r| {
        reports.install(r)
    })
    .await;
    let first = flow(&mut alice, &mut bob, "warmup").await;
    let ssrc = bob
        .all_received()
        .await
        .iter()
        .find(|p| p.user.as_str() == "alice")
        .expect("flowed")
        .packet
        .header
        .ssrc;
    // Payloads of varying length, so that the octet count means something.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut n = first + 1;
    let report = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no sender report for the forwarded track"
        );
        let payload = vec![0x5a; 20 + (n as usize % 17)];
        alice.media.send_audio(&payload, n * 960, 30).await.unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        bob.pump(Duration::ZERO).await;
        if let Some(report) = reports.latest(ssrc) {
            break report;
        }
    };
    assert!(
        metric(&server, "conclave_media_direct_packets_total").await > 0.0,
        "the audio took webrtc-rs's pipeline"
    );
    assert!(metric(&server, "conclave_media_srtp_keys_checked_total").await >= 1.0);
    assert_eq!(
        metric(&server, "conclave_media_srtp_key_mismatch_total").await,
        0.0
    );
    // What the report counts arrived before it, in order (one socket; and
    // `all_received` is in order of arrival).
    let got: Vec<rtc::rtp::Packet> = bob
        .all_received()
        .await
        .iter()
        .filter(|p| p.packet.header.ssrc == ssrc)
        .map(|p| p.packet.clone())
        .collect();
    let counted = report.packet_count as usize;
    assert!(
        counted > 0 && counted <= got.len(),
        "the report counts {counted} packets, {} arrived",
        got.len()
    );
    let octets: usize = got[..counted].iter().map(|p| p.payload.len()).sum();
    assert_eq!(report.octet_count as usize, octets);
    assert_eq!(report.rtp_time, got[counted - 1].header.timestamp);
    // Its wall clock is now's (NTP seconds since 1900).
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ntp_secs = report.ntp_time >> 32;
    assert!(
        ntp_secs.abs_diff(unix + 2_208_988_800) < 30,
        "ntp {ntp_secs}"
    );
}

#[tokio::test]
async fn rtp_on_an_ssrc_the_publisher_never_negotiated_is_dropped_and_counted() {
    let server = TestServer::start().await;
    let mut alice =
        Participant::join_with(&server, "alice", "r", Mode::Audio, Role::Interactor, |r| {
            ForgeSsrc::install(b"forged:", 0x0bad_5511, r)
        })
        .await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "before").await;
    let before = metric(
        &server,
        "conclave_media_dropped_packets_total{reason=\"unknown_ssrc\"}",
    )
    .await;
    for n in 0..25u32 {
        alice
            .media
            .send_audio(&marked("forged", n), n * 960, 30)
            .await
            .unwrap();
    }
    common::eventually("the forged packets to be counted", || async {
        metric(
            &server,
            "conclave_media_dropped_packets_total{reason=\"unknown_ssrc\"}",
        )
        .await
            >= before + 25.0
    })
    .await;
    // The peer keeps working, and nothing forged was forwarded.
    flow(&mut alice, &mut bob, "after").await;
    assert_eq!(
        bob.ever_received(b"forged:").await,
        0,
        "a packet on an unnegotiated SSRC was forwarded"
    );
}

#[tokio::test]
async fn dev_mode_binds_media_to_loopback() {
    // The harness runs servers in dev mode; ask for every interface anyway.
    let server =
        TestServer::start_with(|c| c.media.bind_ip = std::net::Ipv4Addr::UNSPECIFIED.into()).await;
    let addrs = server
        .state()
        .media
        .as_ref()
        .expect("media on")
        .local_addrs();
    assert!(
        addrs.iter().all(|a| a.ip().is_loopback()),
        "media bound beyond loopback in dev mode: {addrs:?}"
    );
}

#[tokio::test]
async fn sequence_numbers_run_on_across_a_mute() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    // Alice's client goes on numbering while muted: 25 sequence numbers
    // bob never sees.
    across_a_mute(&server, &mut alice, &mut bob).await;
    for n in 0..10u32 {
        alice
            .media
            .send_audio(&marked("tail", n), n * 960, 30)
            .await
            .unwrap();
    }
    bob.packet_where(|p| p.packet.payload.starts_with(b"tail:9"))
        .await;
    // What bob got from alice is one run, without the hole the mute left.
    let seqs: Vec<u16> = bob
        .all_received()
        .await
        .iter()
        .filter(|p| p.user.as_str() == "alice")
        .map(|p| p.packet.header.sequence_number)
        .collect();
    assert!(seqs.len() >= 12, "{seqs:?}");
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0].wrapping_add(1), "a gap in {seqs:?}");
    }
}

#[tokio::test]
async fn keyframe_requests_reach_a_publisher_at_most_once_an_interval() {
    let server =
        TestServer::start_with(|c| c.media.keyframe_interval = Duration::from_secs(30)).await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Video, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Video, Role::Interactor).await;
    video_flow(&mut alice, &mut bob, "warmup").await;
    let throttled = "conclave_media_dropped_packets_total{reason=\"keyframe_throttled\"}";
    let relayed = metric(&server, KEYFRAME_METRIC).await;
    let absorbed = metric(&server, throttled).await;
    // Ten requests inside one interval: the publisher is asked at most once
    // (none at all when the subscription's warm-up already asked), and every
    // other request is held back and counted.
    for _ in 0..10 {
        bob.media
            .request_keyframe(&UserId::from("alice"))
            .await
            .expect("PLI sent");
    }
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let passed = metric(&server, KEYFRAME_METRIC).await - relayed;
        let held = metric(&server, throttled).await - absorbed;
        assert!(passed <= 1.0, "{passed} relayed within one interval");
        // (The client's own stack may add a request of its own.)
        if passed + held >= 10.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server saw {passed} relayed and {held} held back of ten requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn loss_between_a_publisher_and_the_server_is_repaired_by_the_servers_nack() {
    let server = TestServer::start().await;
    let port = server
        .state()
        .media
        .as_ref()
        .expect("media on")
        .local_addrs()[0];
    let relay = LossyRelay::toward_server(port, conclave::media::codec::VP8_PT, 5).await;
    let mut alice =
        Participant::join_through(&server, "alice", "r", Mode::Video, Role::Interactor, &relay)
            .await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Video, Role::Interactor).await;
    let first = video_flow(&mut alice, &mut bob, "warmup").await;

    // Every fifth video packet from alice is lost once on its way in.
    relay.arm(true);
    let sent: Vec<u32> = (first..first + 60).collect();
    for &n in &sent {
        alice.media.send_video(video("v", n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        alice.pump(Duration::ZERO).await;
    }
    relay.arm(false);
    assert!(relay.lost().len() >= 10, "the relay lost too little");

    // The server saw the gaps, asked alice again (her client answered from
    // its send buffer), and forwarded the repairs: bob has every packet.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let mut n = first + 60;
    loop {
        let got: std::collections::HashSet<Vec<u8>> = bob
            .all_received()
            .await
            .iter()
            .map(|p| p.packet.payload.to_vec())
            .collect();
        let missing: Vec<u32> = sent
            .iter()
            .copied()
            .filter(|n| !got.contains(&marked("v", *n)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never repaired: {missing:?}"
        );
        // Media goes on, as it does.
        alice.media.send_video(video("v", n)).await.unwrap();
        n += 1;
        alice.pump(Duration::ZERO).await;
        bob.pump(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn mute_all_and_kick_reach_the_media_plane_before_their_answer() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Audio, Role::Interactor).await;
    let mut carol = Participant::join(&server, "carol", "r", Mode::Audio, Role::Interactor).await;
    let boss = server.client_with_token(&server.admin_token()).await;
    boss.join("r", Mode::Audio, Some(Role::Audience))
        .await
        .unwrap();
    flow(&mut alice, &mut carol, "before").await;

    boss.mute_all(MediaKind::Audio, true).await.unwrap();
    let dropped = muted_drops(&server).await;
    // Sent after the answer: the gates were already shut.
    for n in 0..25u32 {
        alice
            .media
            .send_audio(&marked("silenced", n), n * 960, 30)
            .await
            .unwrap();
    }
    until_dropped_as_muted(&server, dropped + 25.0).await;
    boss.mute_all(MediaKind::Audio, false).await.unwrap();
    flow(&mut alice, &mut carol, "again").await;
    assert_eq!(carol.ever_received(b"silenced:").await, 0);

    boss.kick("alice").await.unwrap();
    for n in 0..25u32 {
        // The kicked client may already have lost its peer: sending may fail.
        let _ = alice
            .media
            .send_audio(&marked("kicked", n), n * 960, 30)
            .await;
    }
    // The room goes on for the others...
    let mut dave = Participant::join(&server, "dave", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut dave, &mut carol, "dave").await;
    // ...and nothing alice sent after her kick was answered reached carol.
    assert_eq!(carol.ever_received(b"kicked:").await, 0);
}

#[tokio::test]
async fn an_audio_mode_member_is_offered_no_video() {
    let server = TestServer::start().await;
    let mut alice = Participant::join(&server, "alice", "r", Mode::Video, Role::Interactor).await;
    let mut bob = Participant::join(&server, "bob", "r", Mode::Audio, Role::Interactor).await;
    flow(&mut alice, &mut bob, "voice").await;
    for offer in &bob.offers {
        let ServerMessage::MediaOffer {
            sdp,
            publish,
            tracks,
            ..
        } = offer
        else {
            panic!("not an offer: {offer:?}");
        };
        assert!(
            publish.iter().all(|p| p.kind == MediaKind::Audio),
            "{publish:?}"
        );
        assert!(
            tracks.iter().all(|t| t.kind == MediaKind::Audio),
            "{tracks:?}"
        );
        assert!(!sdp.contains("m=video"), "{sdp}");
    }
    assert!(
        bob.offers
            .iter()
            .any(|o| matches!(o, ServerMessage::MediaOffer { tracks, .. } if !tracks.is_empty())),
        "alice's audio was offered"
    );
}

#[tokio::test]
async fn media_start_answers_503_without_a_media_plane() {
    let server = TestServer::start_with(|c| c.media.enabled = false).await;
    let alice = server.client("alice").await;
    alice.create("r", "").await.unwrap();
    alice.join("r", Mode::Audio, None).await.unwrap();
    let err = alice
        .request(conclave::protocol::Request::MediaStart {})
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(conclave::status::Status::Unavailable),
        "{err}"
    );
    assert!(err.to_string().contains("without a media plane"), "{err}");
}
