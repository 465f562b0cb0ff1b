//! The shared UDP ports: one socket per port, each read by one task that
//! hands every datagram to the room task owning its peer connection.
//!
//! A datagram is routed by its source address. An address seen for the first
//! time must arrive with an ICE connectivity check (a STUN binding request)
//! whose USERNAME starts with a server ufrag we handed out; that binds the
//! address to the peer. Anything else from an unknown address is dropped and
//! counted, before any parsing beyond the STUN header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::Message;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::MediaMetrics;
use super::batch::{CHUNK, RecvBuffers, recv_batch};
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
}

pub(crate) enum RouteCmd {
    /// Datagrams whose STUN USERNAME starts with `ufrag:` belong to `route`.
    Add { ufrag: String, route: Route },
    /// The peer is gone: forget its ufrag and every address bound to it.
    Remove { ufrag: String },
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
    by_addr: HashMap<SocketAddr, (String, Route)>,
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

    fn apply(&mut self, cmd: RouteCmd) {
        match cmd {
            RouteCmd::Add { ufrag, route } => {
                self.by_ufrag.insert(ufrag, route);
            }
            RouteCmd::Remove { ufrag } => {
                self.by_ufrag.remove(&ufrag);
                self.by_addr.retain(|_, (u, _)| *u != ufrag);
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
        let route = match self.by_addr.get(&from) {
            Some((_, route)) => route.clone(),
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
            at: self.clock.now().at,
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
        self.by_addr.insert(from, (ufrag.to_owned(), route.clone()));
        Some(route)
    }
}
