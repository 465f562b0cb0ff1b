//! The WebRTC media plane: a selective forwarding unit (SFU) on webrtc-rs's
//! sans-I/O core (`rtc`).
//!
//! - [`udp`]: the shared UDP ports and the task reading each one, which routes
//!   datagrams to rooms by ICE ufrag, then by source address.
//! - `room`: a room's media as one or more shards, and which member's peer
//!   is on which.
//! - `forwarder`: one shard, a task that owns its members' peer connections
//!   and forwards RTP to them; no locks on the packet path.
//! - `workers`: the threads the shards run on, one per core.
//! - [`peer`]: one member's peer connection and its negotiation.
//! - [`codec`]: what both ends negotiate (shared with the Rust client).
//! - `interceptor`: our links in webrtc-rs's RTP/RTCP chain: keyframe
//!   requests delivered to the application, unknown SSRCs dropped.
//! - `batch`: datagrams to and from the kernel many at a time (`sendmmsg`,
//!   `recvmmsg`).
//! - `rewrite`, `level`: sequence rewriting and speaking detection.
//!
//! The room task (signaling) and the media task of a room are separate:
//! the media path never waits on a script or on signaling. The room task
//! tells the media task who may publish what (a snapshot after each change);
//! the media task tells the room task about speaking levels and lost members.

mod batch;
pub mod codec;
mod config;
mod forwarder;
mod interceptor;
mod level;
mod peer;
mod rewrite;
mod room;
mod srtp;
mod udp;
mod workers;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::telemetry::ReasonLabel;

pub use config::{MediaConfig, PortRange};
pub use forwarder::{Gate, MediaCommand, MediaEvent, MediaReply, Offer};
pub use room::RoomMedia;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("webrtc: {0}")]
    Rtc(#[from] rtc::shared::error::Error),
    #[error("negotiation: {0}")]
    Negotiation(String),
    #[error("send media_start first")]
    NotStarted,
    #[error("cannot start the media workers: {0}")]
    Workers(std::io::Error),
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// Counters of the media plane, registered with the server's metrics.
#[derive(Default)]
pub struct MediaMetrics {
    pub peers: Gauge,
    /// Shards of rooms' media running: one per room with media, more for a
    /// room that outgrew one.
    pub shards: Gauge,
    pub received_packets: Counter,
    pub forwarded_packets: Counter,
    /// Of those, encrypted with conclave's own SRTP context and sent beside
    /// rtc's write pipeline (`srtp.rs`).
    pub direct_packets: Counter,
    /// Peers whose SRTCP was checked against the SRTP keys noted for them,
    /// and of those, the ones whose keys were in the other order: their
    /// tracks go through rtc's pipeline.
    pub srtp_keys_checked: Counter,
    pub srtp_key_mismatch: Counter,
    /// Consent checks (RFC 7675) answered by a port's reader without
    /// waking the peer's shard.
    pub consent_answered: Counter,
    /// Reads of a port on its timer, taken out of epoll while only consent
    /// checks arrive.
    pub coalesced_reads: Counter,
    pub dropped_packets: Family<ReasonLabel, Counter>,
    pub keyframe_requests: Counter,
    /// System calls that sent datagrams, and the datagrams they sent.
    pub send_calls: Counter,
    pub sent_datagrams: Counter,
    /// System calls that received datagrams, and what they received.
    pub recv_calls: Counter,
    pub received_datagrams: Counter,
}

impl MediaMetrics {
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register("media_peers", "Peer connections open", self.peers.clone());
        registry.register(
            "media_shards",
            "Shards of rooms' media running (one per room until it outgrows one)",
            self.shards.clone(),
        );
        registry.register(
            "media_received_packets",
            "RTP packets received from publishers",
            self.received_packets.clone(),
        );
        registry.register(
            "media_forwarded_packets",
            "RTP packets forwarded to subscribers",
            self.forwarded_packets.clone(),
        );
        registry.register(
            "media_direct_packets",
            "Forwarded packets encrypted and sent beside webrtc-rs's write pipeline",
            self.direct_packets.clone(),
        );
        registry.register(
            "media_srtp_keys_checked",
            "Peers whose SRTCP was checked against the SRTP keys noted for them",
            self.srtp_keys_checked.clone(),
        );
        registry.register(
            "media_srtp_key_mismatch",
            "Peers whose SRTCP authenticated under the key taken for the server's own",
            self.srtp_key_mismatch.clone(),
        );
        registry.register(
            "media_consent_answered",
            "ICE consent checks answered by the UDP port's reader, beside webrtc-rs's agent",
            self.consent_answered.clone(),
        );
        registry.register(
            "media_udp_coalesced_reads",
            "Reads of a UDP port on a timer while it carries only consent checks",
            self.coalesced_reads.clone(),
        );
        registry.register(
            "media_dropped_packets",
            "Datagrams and packets dropped, by reason",
            self.dropped_packets.clone(),
        );
        registry.register(
            "media_keyframe_requests",
            "Keyframe requests (PLI) sent to publishers",
            self.keyframe_requests.clone(),
        );
        registry.register(
            "media_udp_send_calls",
            "System calls that sent media datagrams (sendmmsg batches)",
            self.send_calls.clone(),
        );
        registry.register(
            "media_udp_sent_datagrams",
            "Media datagrams handed to the kernel",
            self.sent_datagrams.clone(),
        );
        registry.register(
            "media_udp_recv_calls",
            "System calls that received media datagrams (recvmmsg batches)",
            self.recv_calls.clone(),
        );
        registry.register(
            "media_udp_received_datagrams",
            "Media datagrams taken from the kernel",
            self.received_datagrams.clone(),
        );
    }

    pub(crate) fn dropped(&self, reason: &'static str) {
        self.dropped_packets
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The media plane of one server: its UDP ports and settings. Cheap to clone.
#[derive(Clone)]
pub struct Media {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub config: MediaConfig,
    pub ports: Vec<udp::Port>,
    /// Addresses put into candidates.
    pub advertise: Vec<IpAddr>,
    pub metrics: Arc<MediaMetrics>,
    /// The server's clock: every peer timer and timeout counts in it.
    pub clock: Clock,
    next_port: AtomicUsize,
    next_peer: AtomicU64,
    pub tracker: TaskTracker,
    /// The threads the rooms' media shards run on.
    pub(crate) workers: workers::Workers,
}

impl Media {
    /// Binds the configured UDP port(s) and starts reading them.
    pub async fn bind(
        config: MediaConfig,
        metrics: Arc<MediaMetrics>,
        clock: Clock,
    ) -> Result<Media, MediaError> {
        let tracker = TaskTracker::new();
        let mut ports = Vec::new();
        for port in config.udp_port.ports() {
            let addr = SocketAddr::new(config.bind_ip, port);
            let bound = udp::Port::bind(addr, metrics.clone(), clock, &tracker)
                .await
                .map_err(|source| MediaError::Bind { addr, source })?;
            ports.push(bound);
        }
        let advertise = advertised_ips(&config);
        let count = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let workers = workers::Workers::start(count).map_err(MediaError::Workers)?;
        tracing::info!(
            ports = ?ports.iter().map(|p| p.local).collect::<Vec<_>>(),
            advertise = ?advertise,
            cores = workers.shards_at_most(),
            "media plane listening"
        );
        Ok(Media {
            shared: Arc::new(Shared {
                config,
                ports,
                advertise,
                metrics,
                clock,
                next_port: AtomicUsize::new(0),
                next_peer: AtomicU64::new(1),
                tracker,
                workers,
            }),
        })
    }

    /// The bound UDP addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.ports.iter().map(|p| p.local).collect()
    }

    pub fn config(&self) -> &MediaConfig {
        &self.shared.config
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Shared {
    /// Spreads peers across the ports round-robin.
    pub(crate) fn pick_port(&self) -> usize {
        self.next_port.fetch_add(1, Ordering::Relaxed) % self.ports.len()
    }

    pub(crate) fn next_peer_key(&self) -> u64 {
        self.next_peer.fetch_add(1, Ordering::Relaxed)
    }
}

/// The IPs clients are told to send to: the configured public IP; else the
/// bind address; else (bound to every interface) the interface that routes
/// outward, plus loopback for clients on this machine.
fn advertised_ips(config: &MediaConfig) -> Vec<IpAddr> {
    if let Some(ip) = config.public_ip {
        return vec![ip];
    }
    if !config.bind_ip.is_unspecified() {
        return vec![config.bind_ip];
    }
    let mut ips = Vec::new();
    if let Some(ip) = outward_ip() {
        ips.push(ip);
    }
    ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    ips
}

/// The local address the kernel would use to reach the outside. `connect` on
/// a UDP socket only picks a route; nothing is sent.
fn outward_ip() -> Option<IpAddr> {
    let socket = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // TEST-NET-1 (RFC 5737): routable in form, never a real peer.
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// A random string from the ICE character set (RFC 8445 ice-char).
pub(crate) fn ice_token(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}
