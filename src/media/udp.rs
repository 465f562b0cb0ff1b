//! The shared UDP ports: one socket per port, each read by one task that
//! hands every datagram to the room task owning its peer connection.
//!
//! A datagram is routed by its source address. An address seen for the first
//! time must arrive with an ICE connectivity check (a STUN binding request)
//! whose USERNAME starts with a server ufrag we handed out; that binds the
//! address to the peer. Anything else from an unknown address is dropped and
//! counted, before any parsing beyond the STUN header.
//!
//! Once a peer is connected, the reader answers its consent checks (RFC
//! 7675) on the selected pair itself: a binding answer is a parse, an
//! HMAC-SHA1 and a CRC, and for idle members these checks are nearly all
//! the traffic, so the room's shard is neither woken nor handed them. The
//! shard learns that the peer is alive from [`Heard`].
//!
//! A port that has carried nothing but consent checks for a while (a
//! server of idle members: browsers check every few seconds each, a
//! thousand members are hundreds of checks a second) is read on a timer
//! instead: the socket leaves epoll, and every [`COALESCE`] the reader takes
//! and answers what queued meanwhile, in one `recvmmsg` and one `sendmmsg`.
//! An fd still registered would wake the runtime on every datagram even
//! while nobody reads it. The first datagram for a room, or a read that
//! finds nothing, puts the socket back in epoll, so media never waits on
//! the timer but once.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::stun::attributes::{ATTR_ICE_CONTROLLING, ATTR_USERNAME};
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Message};
use rtc::stun::xoraddr::XorMappedAddress;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::MediaMetrics;
use super::batch::{CHUNK, RecvBuffers, SendBatch, recv_batch};
use crate::clock::Clock;

/// Largest datagram accepted; WebRTC packets stay under a 1500-byte MTU.
pub(crate) const MAX_DATAGRAM: usize = 1500;

/// How long a port carrying only consent checks lets them queue before
/// reading them. A check's answer may wait this long (consent allows 30 s);
/// the first media datagram after a quiet spell may too, once.
pub(crate) const COALESCE: Duration = Duration::from_millis(20);

/// How long a port must have routed nothing to a room before its reads are
/// coalesced: a room with media in it is read as datagrams arrive.
const QUIET: Duration = Duration::from_secs(1);

/// Identifies one peer connection across the process.
pub(crate) type PeerKey = u64;

/// A datagram for a room task.
pub(crate) struct Inbound {
    pub peer: PeerKey,
    pub from: SocketAddr,
    pub at: Instant,
    pub data: BytesMut,
}

/// Where a peer's datagrams go.
#[derive(Clone)]
pub(crate) struct Route {
    pub peer: PeerKey,
    pub to: mpsc::Sender<Inbound>,
    /// The peer's ICE password (ours, from its offer), for answering its
    /// consent checks here.
    pub pwd: Arc<str>,
    pub heard: Arc<Heard>,
}

pub(crate) enum RouteCmd {
    /// Datagrams whose STUN USERNAME starts with `ufrag:` belong to `route`.
    Add { ufrag: String, route: Route },
    /// The peer is connected and `addr` is its selected pair's far end: its
    /// consent checks from there are answered by the reader.
    Consent { ufrag: String, addr: SocketAddr },
    /// The peer is gone: forget its ufrag and every address bound to it.
    Remove { ufrag: String },
}

/// When the port reader last answered one of a peer's consent checks:
/// written by the reader, read by the peer's shard for its media timeout.
pub(crate) struct Heard {
    base: Instant,
    /// Nanoseconds after `base`; 0 for never.
    after: AtomicU64,
}

impl Heard {
    pub(crate) fn new(base: Instant) -> Arc<Heard> {
        Arc::new(Heard {
            base,
            after: AtomicU64::new(0),
        })
    }

    fn note(&self, at: Instant) {
        let after = at.saturating_duration_since(self.base).as_nanos();
        self.after
            .fetch_max(u64::try_from(after).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The last check answered, or `base` if none was.
    pub(crate) fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.after.load(Ordering::Relaxed))
    }
}

/// An address bound to a peer.
struct Bound {
    ufrag: String,
    route: Route,
    /// Consent checks from here are answered by the reader.
    answer: bool,
}

/// One bound UDP port.
pub(crate) struct Port {
    pub socket: Arc<UdpSocket>,
    pub local: SocketAddr,
    pub routes: mpsc::UnboundedSender<RouteCmd>,
}

impl Port {
    pub(crate) async fn bind(
        addr: SocketAddr,
        metrics: Arc<MediaMetrics>,
        clock: Clock,
        tracker: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Port> {
        // A std socket, not tokio's: the reader registers it with the
        // runtime only while it reads datagrams as they arrive, and every
        // send is a non-blocking `sendmmsg` that never waits for it.
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let socket = Arc::new(socket);
        let local = socket.local_addr()?;
        let (routes, cmds) = mpsc::unbounded_channel();
        let reader = Reader {
            socket: socket.clone(),
            cmds,
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            crypto: rtc::crypto::default_provider().ok(),
            answers: SendBatch::new(socket.clone()),
            last_routed: clock.now().at,
            metrics,
            clock,
        };
        tracker.spawn(reader.run());
        Ok(Port {
            socket,
            local,
            routes,
        })
    }
}

struct Reader {
    socket: Arc<UdpSocket>,
    cmds: mpsc::UnboundedReceiver<RouteCmd>,
    by_ufrag: HashMap<String, Route>,
    by_addr: HashMap<SocketAddr, Bound>,
    /// For the consent answers' HMAC; without it every check goes to rtc.
    crypto: Option<Arc<dyn RTCCryptoProvider>>,
    /// Consent answers, sent once per batch received.
    answers: SendBatch,
    /// When a datagram last went to a room.
    last_routed: Instant,
    metrics: Arc<MediaMetrics>,
    clock: Clock,
}

/// What one read of the socket's queue took.
#[derive(Debug, Default, Clone, Copy)]
struct Read {
    datagrams: usize,
    /// Handed to a room (rather than answered here or dropped).
    routed: usize,
    /// The queue was empty when the last call returned.
    drained: bool,
}

/// Batches taken in one wake before the reader lets the runtime run
/// others (the rooms it just handed datagrams to among them).
const BATCHES_PER_WAKE: usize = 16;

impl Reader {
    async fn run(mut self) {
        // One byte more than accepted, so an oversized datagram is seen as
        // such instead of silently truncated to a plausible length.
        let mut bufs = RecvBuffers::new(MAX_DATAGRAM + 1);
        while self.read_as_it_arrives(&mut bufs).await && self.read_coalesced(&mut bufs).await {}
    }

    /// Reads datagrams as they arrive, the socket registered with the
    /// runtime, until the port has routed nothing to a room for [`QUIET`]
    /// and consent checks come closer together than [`COALESCE`]: then
    /// true, to read on a timer instead. False when the port is done.
    async fn read_as_it_arrives(&mut self, bufs: &mut RecvBuffers) -> bool {
        // SAFETY: the `Arc` the registration holds keeps the socket, and so
        // its file descriptor, open and unchanged until the registration
        // is dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(self.socket.clone(), Interest::READABLE) };
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "udp port cannot be polled");
                return false;
            }
        };
        let mut last_wake: Option<Instant> = None;
        loop {
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    // The media plane is gone: stop reading.
                    None => return false,
                },
                ready = fd.readable() => {
                    let mut ready = match ready {
                        Ok(ready) => ready,
                        Err(e) => {
                            tracing::warn!(error = %e, "udp port unreadable");
                            return false;
                        }
                    };
                    let read = self.read_queued(bufs);
                    if read.drained {
                        // Emptied by the last call: a datagram since is a
                        // new edge for epoll, so no call is spent on
                        // finding the queue empty.
                        ready.clear_ready();
                    }
                    if read.datagrams == 0 {
                        continue;
                    }
                    let now = self.clock.now().at;
                    let checks_only = read.routed == 0
                        && now.saturating_duration_since(self.last_routed) >= QUIET;
                    if checks_only
                        && last_wake.is_some_and(|at| now.saturating_duration_since(at) < COALESCE)
                    {
                        // Dropping `fd` takes the socket out of epoll.
                        return true;
                    }
                    last_wake = Some(now);
                }
            }
        }
    }

    /// Reads the socket every [`COALESCE`], out of epoll, for as long as
    /// each read finds datagrams and routes none to a room: true to read
    /// them as they arrive again, false when the port is done.
    async fn read_coalesced(&mut self, bufs: &mut RecvBuffers) -> bool {
        loop {
            // On the clock's grid, where the shards' idle visits fall too:
            // one wake of the runtime for both.
            let next = self
                .clock
                .on_grid(self.clock.now().at + COALESCE / 2, COALESCE);
            let due = tokio::time::sleep_until(tokio::time::Instant::from_std(next));
            tokio::pin!(due);
            loop {
                tokio::select! {
                    cmd = self.cmds.recv() => match cmd {
                        Some(cmd) => self.apply(cmd),
                        None => return false,
                    },
                    () = &mut due => break,
                }
            }
            self.metrics.coalesced_reads.inc();
            let read = self.read_queued(bufs);
            if read.datagrams == 0 || read.routed > 0 {
                return true;
            }
        }
    }

    /// Takes what the socket holds, a batch per system call, and routes it.
    fn read_queued(&mut self, bufs: &mut RecvBuffers) -> Read {
        let mut read = Read::default();
        for _ in 0..BATCHES_PER_WAKE {
            match recv_batch(&self.socket, bufs) {
                Ok(n) => {
                    self.metrics.recv_calls.inc();
                    self.metrics.received_datagrams.inc_by(n as u64);
                    read.datagrams += n;
                    for (data, from) in bufs.received() {
                        if self.route(data, from) {
                            read.routed += 1;
                        }
                    }
                    self.send_answers();
                    if n < CHUNK {
                        read.drained = true;
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    read.drained = true;
                    break;
                }
                Err(e) => {
                    // ICMP port unreachable from a vanished peer shows up
                    // here on some systems; the call reports it once and
                    // it is not fatal to the port, so read on.
                    tracing::trace!(error = %e, "udp receive error");
                }
            }
        }
        if read.routed > 0 {
            self.last_routed = self.clock.now().at;
        }
        read
    }

    fn send_answers(&mut self) {
        if self.answers.is_empty() {
            return;
        }
        let done = self.answers.flush();
        for _ in 0..done.dropped {
            self.metrics.dropped("send_buffer_full");
        }
        self.metrics.send_calls.inc_by(done.calls as u64);
        self.metrics.sent_datagrams.inc_by(done.sent as u64);
    }

    fn apply(&mut self, cmd: RouteCmd) {
        match cmd {
            RouteCmd::Add { ufrag, route } => {
                self.by_ufrag.insert(ufrag, route);
            }
            RouteCmd::Consent { ufrag, addr } => {
                // One answering address per peer: the pair it uses now.
                for (at, bound) in self.by_addr.iter_mut() {
                    if bound.ufrag == ufrag {
                        bound.answer = *at == addr;
                    }
                }
            }
            RouteCmd::Remove { ufrag } => {
                self.by_ufrag.remove(&ufrag);
                self.by_addr.retain(|_, bound| bound.ufrag != ufrag);
            }
        }
    }

    /// Answers, drops or hands `data` to its room: true for the last.
    fn route(&mut self, data: &[u8], from: SocketAddr) -> bool {
        // Commands are applied before the datagram so a just-added peer's
        // first check finds its route.
        while let Ok(cmd) = self.cmds.try_recv() {
            self.apply(cmd);
        }
        if data.len() > MAX_DATAGRAM {
            self.metrics.dropped("oversized");
            return false;
        }
        let now = self.clock.now().at;
        let route = match self.by_addr.get(&from) {
            Some(bound) => {
                if bound.answer
                    && let Some(crypto) = &self.crypto
                    && let Some(answer) = consent_answer(data, from, bound, crypto.as_ref())
                {
                    bound.route.heard.note(now);
                    self.metrics.consent_answered.inc();
                    self.answers.push(answer, from);
                    return false;
                }
                bound.route.clone()
            }
            None => match self.bind_address(data, from) {
                Some(route) => route,
                None => {
                    self.metrics.dropped("unknown_source");
                    return false;
                }
            },
        };
        let inbound = Inbound {
            peer: route.peer,
            from,
            at: now,
            data: BytesMut::from(data),
        };
        if route.to.try_send(inbound).is_err() {
            self.metrics.dropped("room_busy");
        }
        true
    }

    /// A first datagram from `from`: accepted only as a STUN message whose
    /// USERNAME names one of our peers.
    fn bind_address(&mut self, data: &[u8], from: SocketAddr) -> Option<Route> {
        // RFC 7983: STUN starts with 0 or 1; anything else is not a check.
        if data.first().is_none_or(|b| *b > 1) {
            return None;
        }
        let mut msg = Message::new();
        msg.raw = data.to_vec();
        msg.decode().ok()?;
        let username = msg.get(ATTR_USERNAME).ok()?;
        let username = std::str::from_utf8(&username).ok()?;
        let ufrag = username.split(':').next()?;
        let route = self.by_ufrag.get(ufrag)?.clone();
        self.by_addr.insert(
            from,
            Bound {
                ufrag: ufrag.to_owned(),
                route: route.clone(),
                answer: false,
            },
        );
        Some(route)
    }
}

/// The answer to a consent check from the peer bound at `from`, if `data`
/// is one this reader may answer: a binding request to the peer's ufrag,
/// from the controlling side, whose integrity and fingerprint hold. The
/// answer is what rtc's ICE-lite agent sends (RFC 8445 §7.3): the request's
/// transaction, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and FINGERPRINT.
/// Anything else, a role conflict included, is left to the agent.
fn consent_answer(
    data: &[u8],
    from: SocketAddr,
    bound: &Bound,
    crypto: &dyn RTCCryptoProvider,
) -> Option<BytesMut> {
    // A binding request's first two bytes are its type, 0x0001.
    if data.get(..2) != Some(&[0, 1]) {
        return None;
    }
    let mut msg = Message::new();
    msg.raw = data.to_vec();
    msg.decode().ok()?;
    if msg.typ != BINDING_REQUEST || !msg.contains(ATTR_ICE_CONTROLLING) {
        return None;
    }
    let username = msg.get(ATTR_USERNAME).ok()?;
    let ours = username
        .strip_prefix(bound.ufrag.as_bytes())
        .is_some_and(|rest| rest.first() == Some(&b':'));
    if !ours {
        return None;
    }
    FINGERPRINT.check(&msg).ok()?;
    let pwd = bound.route.pwd.as_bytes();
    MessageIntegrity::check(&mut msg, pwd, crypto.crypto()).ok()?;
    let mut answer = Message::new();
    answer
        .build(&[
            Box::new(msg),
            Box::new(BINDING_SUCCESS),
            Box::new(XorMappedAddress {
                ip: from.ip(),
                port: from.port(),
            }),
            Box::new(MessageIntegrity::new_raw_integrity_with_provider(
                pwd,
                crypto.crypto(),
            )),
            Box::new(FINGERPRINT),
        ])
        .ok()?;
    Some(BytesMut::from(&answer.raw[..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::attributes::{ATTR_ICE_CONTROLLED, AttrType};
    use rtc::stun::message::{Getter, Setter, TransactionId};
    use rtc::stun::textattrs::Username;

    const PWD: &str = "0123456789abcdefghijklmnopqrstuv";

    fn bound() -> Bound {
        let (to, _) = mpsc::channel(1);
        Bound {
            ufrag: "server".to_owned(),
            route: Route {
                peer: 1,
                to,
                pwd: PWD.into(),
                heard: Heard::new(Instant::now()),
            },
            answer: true,
        }
    }

    /// A consent check as a controlling client sends it.
    fn check(username: &str, pwd: &str, role: AttrType, fingerprint: bool) -> Message {
        let crypto = rtc::crypto::default_provider().unwrap();
        let mut m = Message::new();
        m.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(ATTR_USERNAME, username.to_owned())),
        ])
        .unwrap();
        m.add(role, &7u64.to_be_bytes());
        MessageIntegrity::new_raw_integrity_with_provider(pwd.as_bytes(), crypto.crypto())
            .add_to(&mut m)
            .unwrap();
        if fingerprint {
            FINGERPRINT.add_to(&mut m).unwrap();
        }
        m
    }

    fn answer(request: &Message) -> Option<BytesMut> {
        let crypto = rtc::crypto::default_provider().unwrap();
        let from: SocketAddr = "192.0.2.7:40404".parse().unwrap();
        consent_answer(&request.raw, from, &bound(), crypto.as_ref())
    }

    #[test]
    fn a_consent_check_is_answered_as_the_ice_agent_would() {
        let crypto = rtc::crypto::default_provider().unwrap();
        let request = check("server:client", PWD, ATTR_ICE_CONTROLLING, true);
        let raw = answer(&request).expect("answered");
        let mut got = Message::new();
        got.raw = raw.to_vec();
        got.decode().unwrap();
        assert_eq!(got.typ, BINDING_SUCCESS);
        assert_eq!(got.transaction_id, request.transaction_id);
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&got).unwrap();
        assert_eq!(
            SocketAddr::new(mapped.ip, mapped.port),
            "192.0.2.7:40404".parse::<SocketAddr>().unwrap()
        );
        FINGERPRINT.check(&got).unwrap();
        MessageIntegrity::check(&mut got, PWD.as_bytes(), crypto.crypto()).unwrap();
    }

    #[test]
    fn checks_the_reader_cannot_vouch_for_are_left_to_the_agent() {
        // Another peer's ufrag, a prefix of ours, a wrong password, no
        // fingerprint, and a client that thinks it is controlled (a role
        // conflict, which only the agent resolves).
        for (username, pwd, role, fingerprint) in [
            ("other:client", PWD, ATTR_ICE_CONTROLLING, true),
            ("serverx:client", PWD, ATTR_ICE_CONTROLLING, true),
            (
                "server:client",
                "not the password",
                ATTR_ICE_CONTROLLING,
                true,
            ),
            ("server:client", PWD, ATTR_ICE_CONTROLLING, false),
            ("server:client", PWD, ATTR_ICE_CONTROLLED, true),
        ] {
            let request = check(username, pwd, role, fingerprint);
            assert!(
                answer(&request).is_none(),
                "{username} {pwd} {role:?} {fingerprint}"
            );
        }
        assert!(answer(&Message::new()).is_none());
        let mut garbage = Message::new();
        garbage.raw = b"\x00\x01 not stun at all".to_vec();
        assert!(answer(&garbage).is_none());
    }

    /// A port whose only bound peer is `server`, connected from `client`.
    async fn connected_port() -> (
        Port,
        Arc<MediaMetrics>,
        tokio::net::UdpSocket,
        mpsc::Receiver<Inbound>,
    ) {
        let metrics = Arc::new(MediaMetrics::default());
        let tracker = tokio_util::task::TaskTracker::new();
        let local = "127.0.0.1:0".parse().unwrap();
        let port = Port::bind(local, metrics.clone(), Clock::new(), &tracker)
            .await
            .unwrap();
        let (to, mut room) = mpsc::channel(16);
        let route = Route {
            peer: 1,
            to,
            pwd: PWD.into(),
            heard: Heard::new(Instant::now()),
        };
        let ufrag = "server".to_owned();
        port.routes
            .send(RouteCmd::Add {
                ufrag: ufrag.clone(),
                route,
            })
            .unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The first check binds the client's address; it goes to the room,
        // whose agent answers it and, once connected, hands consent here.
        let first = check("server:client", PWD, ATTR_ICE_CONTROLLING, true);
        client.send_to(&first.raw, port.local).await.unwrap();
        room.recv().await.expect("the first check reaches the room");
        let addr = client.local_addr().unwrap();
        port.routes.send(RouteCmd::Consent { ufrag, addr }).unwrap();
        (port, metrics, client, room)
    }

    /// Sends a consent check and waits for the reader's answer.
    async fn answered(client: &tokio::net::UdpSocket, port: &Port) {
        let request = check("server:client", PWD, ATTR_ICE_CONTROLLING, true);
        client.send_to(&request.raw, port.local).await.unwrap();
        answer_arrives(client, request.transaction_id).await;
    }

    /// Waits for the next datagram and checks it answers transaction `id`.
    async fn answer_arrives(client: &tokio::net::UdpSocket, id: TransactionId) {
        let mut buf = [0u8; 256];
        let n = client.recv(&mut buf).await.unwrap();
        let mut got = Message::new();
        got.raw = buf[..n].to_vec();
        got.decode().unwrap();
        assert_eq!((got.typ, got.transaction_id), (BINDING_SUCCESS, id));
    }

    /// Sends a media-like datagram and waits for the room to get it.
    async fn reaches_the_room(
        client: &tokio::net::UdpSocket,
        port: &Port,
        room: &mut mpsc::Receiver<Inbound>,
        seq: u8,
    ) {
        let datagram = [0x80, 111, 0, seq];
        client.send_to(&datagram, port.local).await.unwrap();
        let got = room.recv().await.expect("routed");
        assert_eq!(&got.data[..], &datagram);
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_carrying_only_consent_checks_reads_them_on_a_timer() {
        let (port, metrics, client, mut room) = connected_port().await;
        // A quiet second, then two checks closer than the timer: answered
        // as they arrive, after which the socket is read on the timer.
        tokio::time::advance(QUIET).await;
        answered(&client, &port).await;
        tokio::time::advance(Duration::from_millis(5)).await;
        answered(&client, &port).await;
        let (recv_calls, send_calls) = (metrics.recv_calls.get(), metrics.send_calls.get());
        let answered_before = metrics.consent_answered.get();

        // Ten checks over 10 ms queue untouched: no wake reads them.
        let mut pending = Vec::new();
        for _ in 0..10 {
            let request = check("server:client", PWD, ATTR_ICE_CONTROLLING, true);
            client.send_to(&request.raw, port.local).await.unwrap();
            pending.push(request.transaction_id);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(
            metrics.recv_calls.get(),
            recv_calls,
            "read before the timer"
        );
        assert_eq!(metrics.coalesced_reads.get(), 0);

        // At the timer: all ten taken in one call, answered in one.
        for id in pending {
            answer_arrives(&client, id).await;
        }
        assert_eq!(metrics.recv_calls.get(), recv_calls + 1);
        assert_eq!(metrics.send_calls.get(), send_calls + 1);
        assert_eq!(metrics.consent_answered.get(), answered_before + 10);
        assert_eq!(metrics.coalesced_reads.get(), 1);

        // A datagram for the room waits for the next read, once; after it
        // the socket is read as datagrams arrive again.
        reaches_the_room(&client, &port, &mut room, 1).await;
        assert_eq!(metrics.coalesced_reads.get(), 2);
        reaches_the_room(&client, &port, &mut room, 2).await;
        assert_eq!(
            metrics.coalesced_reads.get(),
            2,
            "read on the timer, not as it arrived"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_with_media_reads_consent_checks_as_they_arrive() {
        let (port, metrics, client, _room) = connected_port().await;
        // Checks closer than the timer, but the room's first check went
        // through less than a second ago: no coalescing.
        for _ in 0..5 {
            answered(&client, &port).await;
            tokio::time::advance(Duration::from_millis(5)).await;
        }
        assert_eq!(metrics.coalesced_reads.get(), 0);
        // The same after a quiet second, when checks come far apart.
        tokio::time::advance(QUIET).await;
        for _ in 0..5 {
            answered(&client, &port).await;
            tokio::time::advance(COALESCE * 2).await;
        }
        assert_eq!(metrics.coalesced_reads.get(), 0);
        assert_eq!(metrics.consent_answered.get(), 10);
    }

    #[test]
    fn heard_keeps_the_latest_instant() {
        let base = Instant::now();
        let heard = Heard::new(base);
        assert_eq!(heard.last(), base);
        heard.note(base + Duration::from_secs(3));
        heard.note(base + Duration::from_secs(1));
        assert_eq!(heard.last(), base + Duration::from_secs(3));
    }
}
