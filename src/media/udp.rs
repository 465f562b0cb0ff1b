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

use std::collections::HashMap;
use std::net::SocketAddr;
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
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::MediaMetrics;
use super::batch::{CHUNK, RecvBuffers, SendBatch, recv_batch};
use crate::clock::Clock;

/// Largest datagram accepted; WebRTC packets stay under a 1500-byte MTU.
pub(crate) const MAX_DATAGRAM: usize = 1500;

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
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let local = socket.local_addr()?;
        let (routes, cmds) = mpsc::unbounded_channel();
        let reader = Reader {
            socket: socket.clone(),
            cmds,
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            crypto: rtc::crypto::default_provider().ok(),
            answers: SendBatch::new(socket.clone()),
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
    metrics: Arc<MediaMetrics>,
    clock: Clock,
}

impl Reader {
    async fn run(mut self) {
        // One byte more than accepted, so an oversized datagram is seen as
        // such instead of silently truncated to a plausible length.
        let mut bufs = RecvBuffers::new(MAX_DATAGRAM + 1);
        loop {
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    // The media plane is gone: stop reading.
                    None => return,
                },
                ready = self.socket.readable() => {
                    if let Err(e) = ready {
                        tracing::warn!(error = %e, "udp port unreadable");
                        return;
                    }
                    self.read_ready(&mut bufs);
                },
            }
        }
    }

    /// Takes what the socket holds, a batch per system call, and routes it.
    fn read_ready(&mut self, bufs: &mut RecvBuffers) {
        loop {
            match recv_batch(&self.socket, bufs) {
                Ok(n) => {
                    self.metrics.recv_calls.inc();
                    self.metrics.received_datagrams.inc_by(n as u64);
                    for (data, from) in bufs.received() {
                        self.route(data, from);
                    }
                    self.send_answers();
                    if n < CHUNK {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP port unreachable from a vanished peer shows up
                    // here on some systems; it is not fatal to the port.
                    tracing::trace!(error = %e, "udp receive error");
                    return;
                }
            }
        }
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

    fn route(&mut self, data: &[u8], from: SocketAddr) {
        // Commands are applied before the datagram so a just-added peer's
        // first check finds its route.
        while let Ok(cmd) = self.cmds.try_recv() {
            self.apply(cmd);
        }
        if data.len() > MAX_DATAGRAM {
            self.metrics.dropped("oversized");
            return;
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
                    return;
                }
                bound.route.clone()
            }
            None => match self.bind_address(data, from) {
                Some(route) => route,
                None => {
                    self.metrics.dropped("unknown_source");
                    return;
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
