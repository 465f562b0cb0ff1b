//! A member with WebRTC media, for tests: a signaling client and a media
//! session, with the server's offers answered whenever the test waits.
//! Also ways to make the wire misbehave: a relay that loses packets on
//! their way to a client, and an interceptor that forges a client's SSRC.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use conclave::client::SignalClient;
use conclave::client::media::{MediaOptions, MediaSession, Received};
use conclave::protocol::{MediaKind, Mode, Request, Role, ServerMessage};

use super::{PATIENCE, TestServer};

pub struct Participant {
    pub user: String,
    pub client: SignalClient,
    pub media: MediaSession,
    /// Events that arrived while waiting for something else.
    stash: VecDeque<ServerMessage>,
    /// `media_offer` events seen, for tests about negotiation.
    pub offers: Vec<ServerMessage>,
    /// Every packet read so far, by any helper: what this member received
    /// is all here, so a test of what must never arrive misses nothing.
    received: Vec<Received>,
    /// Media goes through a relay: the server's candidate port in each
    /// offer is replaced by the relay's (from, to).
    via: Option<(u16, u16)>,
}

impl Participant {
    /// Connects as `user`, joins `room` (creating it if needed) and starts media.
    pub async fn join(
        server: &TestServer,
        user: &str,
        room: &str,
        mode: Mode,
        role: Role,
    ) -> Participant {
        Participant::join_inner(server, user, room, mode, role, |r| r, None).await
    }

    /// [`Participant::join`] with the media path through `relay`.
    pub async fn join_through(
        server: &TestServer,
        user: &str,
        room: &str,
        mode: Mode,
        role: Role,
        relay: &LossyRelay,
    ) -> Participant {
        let via = (relay.server.port(), relay.local.port());
        Participant::join_inner(server, user, room, mode, role, |r| r, Some(via)).await
    }

    /// [`Participant::join`] with interceptors added to the client's chain.
    pub async fn join_with(
        server: &TestServer,
        user: &str,
        room: &str,
        mode: Mode,
        role: Role,
        extend: impl FnOnce(Registry) -> Registry,
    ) -> Participant {
        Participant::join_inner(server, user, room, mode, role, extend, None).await
    }

    async fn join_inner(
        server: &TestServer,
        user: &str,
        room: &str,
        mode: Mode,
        role: Role,
        extend: impl FnOnce(Registry) -> Registry,
        via: Option<(u16, u16)>,
    ) -> Participant {
        let client = server.client(user).await;
        Participant::join_on(client, user, room, mode, role, extend, via).await
    }

    /// Joins `room` (creating it if needed) and starts media over `client`,
    /// a connection that said hello as `user` to any server (a cluster
    /// node, say).
    pub async fn join_on(
        client: SignalClient,
        user: &str,
        room: &str,
        mode: Mode,
        role: Role,
        extend: impl FnOnce(Registry) -> Registry,
        via: Option<(u16, u16)>,
    ) -> Participant {
        if let Err(e) = client.create(room, "").await {
            assert_eq!(e.status().map(|s| s.code()), Some(417), "create: {e}");
        }
        client.join(room, mode, Some(role)).await.expect("join");
        let options = MediaOptions {
            audio: true,
            video: mode == Mode::Video,
            bind: "127.0.0.1:0".parse().expect("literal address"),
        };
        let media = MediaSession::with_interceptors(options, extend)
            .await
            .expect("media session");
        let mut p = Participant {
            user: user.to_owned(),
            client,
            media,
            stash: VecDeque::new(),
            offers: Vec::new(),
            received: Vec::new(),
            via,
        };
        p.client
            .request(Request::MediaStart {})
            .await
            .expect("media_start accepted");
        // The first offer; answering it starts ICE and DTLS.
        p.pump(Duration::ZERO).await;
        while p.offers.is_empty() {
            p.pump_one(PATIENCE).await;
        }
        p.media
            .connected(PATIENCE)
            .await
            .expect("peer connection up");
        p
    }

    /// Handles one signaling event (answering offers, stashing the rest);
    /// false if none came within `within`.
    async fn pump_one(&mut self, within: Duration) -> bool {
        let event = match tokio::time::timeout(within, self.client.next_event()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("{}: connection closed", self.user),
            Err(_) => return false,
        };
        if let ServerMessage::MediaOffer { sdp, .. } = &event {
            let sdp = match self.via {
                Some((from, to)) => {
                    sdp.replace(&format!(" {from} typ host"), &format!(" {to} typ host"))
                }
                None => sdp.clone(),
            };
            self.media
                .accept_offer(&self.client, sdp)
                .await
                .expect("offer answered");
            self.offers.push(event);
        } else {
            self.stash.push_back(event);
        }
        true
    }

    /// Handles whatever signaling is already queued, waiting at most `within` for the first.
    pub async fn pump(&mut self, within: Duration) {
        if self.pump_one(within).await {
            while self.pump_one(Duration::ZERO).await {}
        }
    }

    /// The next event other than an offer.
    pub async fn next_event(&mut self) -> ServerMessage {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.stash.pop_front() {
                return e;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                self.pump_one(left).await,
                "{}: no event within the deadline",
                self.user
            );
        }
    }

    /// Waits for an event `pick` accepts, skipping others.
    pub async fn event_where<T>(&mut self, mut pick: impl FnMut(&ServerMessage) -> Option<T>) -> T {
        loop {
            let e = self.next_event().await;
            if let Some(found) = pick(&e) {
                return found;
            }
        }
    }

    /// An already-arrived event `pick` accepts (handling what is queued, and
    /// waiting up to `within`), or `None`; other events stay stashed.
    pub async fn try_event_where<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Option<T> {
        self.pump(within).await;
        let found = self.stash.iter().position(|e| pick(e).is_some())?;
        let event = self.stash.remove(found)?;
        pick(&event)
    }

    /// The next media packet accepted by `pick`, answering offers meanwhile.
    pub async fn packet_where(&mut self, mut pick: impl FnMut(&Received) -> bool) -> Received {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: no matching packet within the deadline",
                self.user
            );
            self.pump(Duration::ZERO).await;
            if let Some(p) = self.next_packet(Duration::from_millis(20)).await
                && pick(&p)
            {
                return p;
            }
        }
    }

    /// The next packet within `within`, kept in the log too.
    pub async fn next_packet(&mut self, within: Duration) -> Option<Received> {
        let p = self.media.next_packet(within).await?;
        self.received.push(p.clone());
        Some(p)
    }

    /// Every packet received so far, read or not.
    pub async fn all_received(&mut self) -> &[Received] {
        for (_, packets) in self.media.drain().await {
            self.received.extend(packets);
        }
        self.received.sort_by_key(|p| p.at);
        &self.received
    }

    /// Whether any packet received so far has a payload starting with `prefix`.
    pub async fn ever_received(&mut self, prefix: &[u8]) -> usize {
        self.all_received()
            .await
            .iter()
            .filter(|p| p.packet.payload.starts_with(prefix))
            .count()
    }
}

/// Closest to the wire of anything in a client's chain: on receive, before
/// the NACK generator looks for gaps; on send, after everything else.
const WIRE: usize = 100;

/// A link in a client's chain, closest to the wire, that lets `read` look
/// at each inbound packet and `write` change each outbound one.
struct WireHook<R, W> {
    read: R,
    write: W,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

fn wire_hook<R, W>(registry: Registry, read: R, write: W) -> Registry
where
    R: FnMut(&Packet) + Send + Sync + 'static,
    W: FnMut(&mut Packet) + Send + Sync + 'static,
{
    registry.with(
        Slot::from(WIRE),
        WireHook {
            read,
            write,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        },
    )
}

impl<R: FnMut(&Packet), W: FnMut(&mut Packet)> Protocol<TaggedPacket, TaggedPacket, ()>
    for WireHook<R, W>
{
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        (self.read)(&msg.message.packet);
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        (self.write)(&mut msg.message.packet);
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write_queue.pop_front()
    }
}

impl<R: FnMut(&Packet) + Send + Sync, W: FnMut(&mut Packet) + Send + Sync> Interceptor
    for WireHook<R, W>
{
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Rewrites, on send, the SSRC of every RTP packet whose payload starts with
/// `prefix` to `ssrc`: media on a stream the client never negotiated. (The
/// client's own sender refuses an undeclared SSRC, so it is forged past it.)
pub struct ForgeSsrc;

impl ForgeSsrc {
    pub fn install(prefix: &'static [u8], ssrc: u32, registry: Registry) -> Registry {
        wire_hook(
            registry,
            |_: &Packet| {},
            move |packet: &mut Packet| {
                if let Packet::Rtp(rtp) = packet
                    && rtp.payload.starts_with(prefix)
                {
                    rtp.header.ssrc = ssrc;
                }
            },
        )
    }
}

/// Notes every sender report a client receives, as it comes off the wire.
#[derive(Clone, Default)]
pub struct SenderReports {
    seen: Arc<Mutex<Vec<rtc::rtcp::sender_report::SenderReport>>>,
}

impl SenderReports {
    pub fn install(&self, registry: Registry) -> Registry {
        let seen = self.seen.clone();
        wire_hook(
            registry,
            move |packet: &Packet| {
                let Packet::Rtcp(packets) = packet else {
                    return;
                };
                let mut seen = seen.lock().expect("reports");
                seen.extend(packets.iter().filter_map(|p| {
                    p.as_any()
                        .downcast_ref::<rtc::rtcp::sender_report::SenderReport>()
                        .cloned()
                }));
            },
            |_: &mut Packet| {},
        )
    }

    /// The latest report about `ssrc`, if one came.
    pub fn latest(&self, ssrc: u32) -> Option<rtc::rtcp::sender_report::SenderReport> {
        let seen = self.seen.lock().expect("reports");
        seen.iter().rev().find(|r| r.ssrc == ssrc).cloned()
    }
}

/// A UDP relay between one client and the server's media port that loses,
/// while armed, the first copy of every RTP packet of one payload type whose
/// sequence number is a multiple of `every`, in one direction: loss on the
/// wire, before SRTP, as a real path loses packets. (Lost after decryption, a retransmission would
/// be rejected by the client's SRTP replay check as a duplicate.) RTP
/// headers are readable under SRTP, so it picks by payload type and
/// sequence number; everything else passes both ways.
pub struct LossyRelay {
    pub local: SocketAddr,
    server: SocketAddr,
    armed: Arc<AtomicBool>,
    /// (SSRC, sequence number) of each packet lost, in order.
    lost: Arc<Mutex<Vec<(u32, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyRelay {
    /// Loses packets on their way from the server to the client.
    pub async fn start(server: SocketAddr, payload_type: u8, every: u16) -> LossyRelay {
        Self::start_lossy(server, payload_type, every, false).await
    }

    /// Loses packets on their way from the client to the server.
    pub async fn toward_server(server: SocketAddr, payload_type: u8, every: u16) -> LossyRelay {
        Self::start_lossy(server, payload_type, every, true).await
    }

    async fn start_lossy(
        server: SocketAddr,
        payload_type: u8,
        every: u16,
        toward_server: bool,
    ) -> LossyRelay {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("relay socket");
        let local = socket.local_addr().expect("relay address");
        let armed = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let (armed_in, lost_in) = (armed.clone(), lost.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut client: Option<SocketAddr> = None;
            let mut seen = HashSet::new();
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let data = &buf[..n];
                let to_server = from != server;
                let to = if to_server {
                    client = Some(from);
                    server
                } else {
                    match client {
                        Some(to) => to,
                        None => continue,
                    }
                };
                // RFC 7983: RTP and RTCP start with 128..=191; RTCP's types
                // (200..) never equal a dynamic payload type with the marker.
                if to_server == toward_server
                    && n >= 12
                    && (128..=191).contains(&data[0])
                    && data[1] & 0x7f == payload_type
                    && armed_in.load(Ordering::SeqCst)
                {
                    let seq = u16::from_be_bytes([data[2], data[3]]);
                    let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                    if seq.is_multiple_of(every) && seen.insert((ssrc, seq)) {
                        lost_in.lock().expect("not poisoned").push((ssrc, seq));
                        continue;
                    }
                }
                let _ = socket.send_to(data, to).await;
            }
        });
        LossyRelay {
            local,
            server,
            armed,
            lost,
            task,
        }
    }

    /// Starts (or stops) losing packets.
    pub fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::SeqCst);
    }

    pub fn lost(&self) -> Vec<(u32, u16)> {
        self.lost.lock().expect("not poisoned").clone()
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A payload no codec would produce by chance: the sender and a counter.
pub fn marked(tag: &str, n: u32) -> Vec<u8> {
    format!("{tag}:{n}").into_bytes()
}

/// Sends `tag` packets from `from` until `to` receives one, answering offers
/// on both sides meanwhile. Returns the number of the first packet received.
pub async fn flow(from: &mut Participant, to: &mut Participant, tag: &str) -> u32 {
    let prefix = format!("{tag}:");
    for n in 0..500u32 {
        from.media
            .send_audio(&marked(tag, n), n * 960, 30)
            .await
            .expect("send");
        from.pump(Duration::ZERO).await;
        to.pump(Duration::ZERO).await;
        if let Some(p) = to.next_packet(Duration::from_millis(20)).await
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

/// Media flows, alice mutes and sends 25 `muted:` packets anyway, unmutes,
/// and media flows again. The SFU hears of the mute before the answer
/// arrives, so everything sent after it is dropped; the unmuted run after it
/// proves the path was open the whole time.
pub async fn across_a_mute(server: &TestServer, alice: &mut Participant, bob: &mut Participant) {
    flow(alice, bob, "before").await;
    alice
        .client
        .mute(MediaKind::Audio, true, None)
        .await
        .unwrap();
    let dropped = muted_drops(server).await;
    for n in 0..25u32 {
        alice
            .media
            .send_audio(&marked("muted", n), n * 960, 30)
            .await
            .unwrap();
    }
    until_dropped_as_muted(server, dropped + 25.0).await;
    alice
        .client
        .mute(MediaKind::Audio, false, None)
        .await
        .unwrap();
    flow(alice, bob, "after").await;
}

pub fn video(tag: &str, n: u32) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            sequence_number: n as u16,
            timestamp: n * 3000,
            marker: true,
            ..Default::default()
        },
        payload: bytes::Bytes::from(marked(tag, n)),
    }
}

/// Sends `tag` video from `from` until `to` receives some; returns the next
/// packet number to send.
pub async fn video_flow(from: &mut Participant, to: &mut Participant, tag: &str) -> u32 {
    let prefix = format!("{tag}:");
    for n in 0..500u32 {
        from.media.send_video(video(tag, n)).await.expect("send");
        from.pump(Duration::ZERO).await;
        to.pump(Duration::ZERO).await;
        if let Some(p) = to.next_packet(Duration::from_millis(20)).await
            && p.kind == MediaKind::Video
            && p.packet.payload.starts_with(prefix.as_bytes())
        {
            return n + 1;
        }
    }
    panic!("{} never received {tag} video from {}", to.user, from.user);
}

/// Packets the server dropped because their sender may not publish now.
pub async fn muted_drops(server: &TestServer) -> f64 {
    server
        .metric("conclave_media_dropped_packets_total{reason=\"not_publishing\"}")
        .await
}

/// Waits until the server has dropped `count` packets in all as not
/// publishing. A client hands its packets to its own WebRTC stack, which
/// puts them on the wire when its tasks next run: a test that unmutes
/// right after sending could have the unmute reach the server first.
/// (Forwarded instead, they would never be counted, and this times out.)
pub async fn until_dropped_as_muted(server: &TestServer, count: f64) {
    super::eventually(
        "the muted packets reached the server and were dropped",
        || async { muted_drops(server).await >= count },
    )
    .await;
}

/// `speaker` sends 20 loud packets (level 20: RFC 6464 counts down from 0
/// dBov), 20 ms apart; returns the level `listener` is told it speaks at,
/// from the first `volume` event that has it speaking.
pub async fn speaks_and_is_heard(speaker: &mut Participant, listener: &mut Participant) -> u8 {
    for n in 0..20u32 {
        speaker
            .media
            .send_audio(&marked("loud", n), n * 960, 20)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let who = speaker.user.clone();
    listener
        .event_where(|e| match e {
            ServerMessage::Volume { levels } => levels
                .iter()
                .find(|l| l.user.as_str() == who && l.speaking)
                .map(|l| l.level),
            _ => None,
        })
        .await
}
