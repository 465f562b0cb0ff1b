//! `[media]` in the configuration: where the media plane's UDP sockets
//! listen and what clients are told.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The WebRTC media plane: where its UDP sockets listen and what clients are told.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Off: a signaling-only server; `media_start` answers 503.
    pub enabled: bool,
    /// Address the UDP sockets bind to; the unspecified address means every interface.
    pub bind_ip: IpAddr,
    /// One UDP port shared by every member (`7882`), or an inclusive range
    /// (`"50000-50003"`): one socket per port, members spread across them,
    /// each read by its own task. `0` takes any free port.
    pub udp_port: PortRange,
    /// The address to put in candidates instead of the local ones, for a
    /// server behind a 1:1 NAT (a cloud VM's public IP).
    pub public_ip: Option<IpAddr>,
    /// STUN/TURN servers handed to clients with every offer.
    pub ice_servers: Vec<crate::protocol::IceServer>,
    /// No packet from a member's peer connection (media, or ICE consent
    /// checks, which browsers send every few seconds) for this long ends the
    /// membership with reason `timeout`. Also the limit for connecting at all.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often `volume` events and the `on_speaking` hook run while
    /// someone speaks.
    #[serde(with = "humantime_serde")]
    pub volume_interval: Duration,
    /// Audio level (RFC 6464 dBov, 0 loudest .. 127 silent) at or below
    /// which a member counts as speaking.
    pub speaking_threshold: u8,
    /// How far (in dB) a speaker's level moves from the one last announced
    /// before a `volume` event says so again; `0`: every interval. A
    /// `volume` event carries only what changed: someone starting or
    /// stopping, or a level that moved this much.
    pub volume_step: u8,
    /// Keyframe requests forwarded to one publisher's video at most this often.
    #[serde(with = "humantime_serde")]
    pub keyframe_interval: Duration,
    /// The cores one room's media may use (`0`: every core). A room's
    /// first shard runs on the server's runtime, with the UDP readers; each
    /// shard a large room adds runs on a media thread (there are
    /// `workers - 1`).
    pub workers: usize,
    /// Members one shard of a room's media takes before the room opens
    /// another on a media thread (up to `workers` shards). Below it, a room
    /// is one task on one thread, with no hand-off between threads.
    pub peers_per_shard: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            enabled: true,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_port: PortRange {
                first: 7882,
                last: 7882,
            },
            public_ip: None,
            ice_servers: Vec::new(),
            timeout: Duration::from_secs(20),
            volume_interval: Duration::from_millis(200),
            speaking_threshold: 60,
            volume_step: 6,
            keyframe_interval: Duration::from_millis(500),
            workers: 0,
            peers_per_shard: 100,
        }
    }
}

/// A UDP port or an inclusive range of them; written `7882` or `"50000-50003"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a port or a range like 50000-50003");
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u16 = first.parse().map_err(|_| bad())?;
        let last: u16 = last.parse().map_err(|_| bad())?;
        if last < first || (first == 0 && last != 0) {
            return Err(bad());
        }
        if last - first >= 64 {
            return Err(format!(
                "`{s}`: at most 64 ports (one socket and task each)"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.serialize_str(&format!("{}-{}", self.first, self.last))
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Port(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Port(p) => Ok(PortRange { first: p, last: p }),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}
