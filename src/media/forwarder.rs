//! One shard of a room's media: the task that owns the peer connections of
//! its members and forwards RTP to them.
//!
//! A room starts with one shard and has one until it outgrows it
//! (`media.peers_per_shard`); then it opens more, each on a media thread
//! of its own (see `room.rs` and `workers.rs`). Everything about a
//! member's packets happens on its shard: decrypting, gating by role and
//! mute, rewriting, encrypting and sending. A publisher's packet is forwarded to its own shard's
//! subscribers at once, and handed to the room's other shards in one batch
//! per wake, decrypted once and never again. Nothing here waits on the
//! room's signaling task or its scripts: the room task sends a snapshot of
//! who may publish what ([`Gate`]) to every shard after every change.
//!
//! What the room should know comes back as [`MediaEvent`]s (an offer is
//! ready, a member's media is lost, who speaks): the media plane knows
//! nothing of rooms' commands or of signaling messages.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::mpsc;

use super::batch::SendBatch;
use super::codec::AUDIO_LEVEL_URI;
use super::level::{LevelMeter, SILENT};
use super::peer::{Direct, Peer, PeerSetup};
use super::udp::{Heard, Inbound, PeerKey, Route, RouteCmd};
use super::{MediaError, Shared, ice_token};
use crate::ids::{ConnId, UserId};
use crate::model::{MediaKind, Mode, PublishSlot, TrackInfo, VolumeLevel};

/// How often peer timers (DTLS retransmits, RTCP reports, NACKs) and the
/// media timeout are looked at.
const TICK: Duration = Duration::from_millis(20);
/// The longest a peer is left unvisited by the tick when nothing happens to
/// it and it has no timer.
const QUIET_AT_MOST: Duration = Duration::from_secs(1);
/// How late a connected peer that nothing reached may run its timers. rtc's
/// ICE agent asks for a visit every 200 ms for as long as the connection
/// lives (its check interval bounds every other interval), to send a
/// consent check every 2 s and notice silence after 5 s; the sender-report
/// timer wants a second. None of them needs better than this, and a peer
/// that gets input (a publisher's packets, a subscriber's RTCP or STUN) is
/// visited at the next tick regardless. Without it a room of 1,000 idle
/// members made 5,000 visits a second.
const IDLE_SLACK: Duration = Duration::from_millis(900);
/// The grid a connected peer's next visit is rounded up to. Every shard of
/// every room counts it from the server clock's anchor (`Clock::on_grid`),
/// so a thousand idle members come due on five instants a second, not
/// scattered over it, and each instant is one wake of the shard. A multiple
/// of the port reader's coalescing period, so that shard 0 of a room,
/// which shares a runtime with the port readers, is woken with a
/// coalesced read rather than beside it.
const IDLE_GRID: Duration = Duration::from_millis(200);
const _: () = assert!(
    IDLE_GRID
        .as_millis()
        .is_multiple_of(super::udp::COALESCE.as_millis())
);
/// Datagrams handled per wake before timers get a turn.
const BATCH: usize = 64;
/// Datagrams queued for a room before the port's reader drops more.
pub(crate) const INBOUND_QUEUE: usize = 4096;
/// Batches of packets from the room's other shards queued for a shard
/// before they are dropped (counted as `shard_queue_full`): a shard that
/// cannot keep up loses packets, and never slows the one feeding it.
pub(crate) const FAN_QUEUE: usize = 1024;

/// Who may publish what, per member, as the room's state machine decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    pub user: UserId,
    /// The connection the membership is on now; `None` in the reconnect window.
    pub conn: Option<ConnId>,
    pub mode: Mode,
    pub interactor: bool,
    /// Forward this member's audio: an interactor, not muted.
    pub audio: bool,
    /// Forward this member's video: an interactor in video mode, not muted.
    pub video: bool,
}

/// Where the answer to a command goes: called once, from the media task.
pub type MediaReply = Box<dyn FnOnce(Result<(), MediaError>) + Send>;

/// What the room task asks of its media task.
pub enum MediaCommand {
    /// Start (or restart) the member's peer connection; its offer follows
    /// as [`MediaEvent::Offer`].
    Start {
        conn: ConnId,
        user: UserId,
        mode: Mode,
        reply: MediaReply,
    },
    Answer {
        conn: ConnId,
        sdp: String,
        reply: MediaReply,
    },
    Candidate {
        conn: ConnId,
        candidate: RTCIceCandidateInit,
        reply: MediaReply,
    },
    Gates(Vec<Gate>),
}

impl MediaCommand {
    /// Where the command's answer goes (a gate snapshot has none).
    pub(crate) fn into_reply(self) -> Option<MediaReply> {
        match self {
            MediaCommand::Start { reply, .. }
            | MediaCommand::Answer { reply, .. }
            | MediaCommand::Candidate { reply, .. } => Some(reply),
            MediaCommand::Gates(_) => None,
        }
    }
}

/// An offer for a member's client, with what it needs to map its m-lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub sdp: String,
    /// Where the member publishes its own media (none for the audience).
    pub publish: Vec<PublishSlot>,
    /// Other members' tracks in this offer.
    pub tracks: Vec<TrackInfo>,
}

/// What the media task tells its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// A (re)negotiation offer for the member on `conn`, to deliver as is.
    Offer { conn: ConnId, offer: Offer },
    /// The member's peer failed or went silent past the media timeout.
    Lost { conn: ConnId },
    /// Speaking levels of the last interval (speakers, and who just stopped).
    Volume { levels: Vec<VolumeLevel> },
}

/// What a shard hears from its room (through [`RoomMedia`]) and from the
/// room's other shards.
///
/// [`RoomMedia`]: super::room::RoomMedia
/// A message with the time it was sent: a shard takes the messages sent
/// before a datagram arrived before it handles that datagram (see
/// `MediaTask::messages_before`).
pub(crate) type Stamped = (Instant, ShardMsg);

pub(crate) enum ShardMsg {
    Command(MediaCommand),
    /// The room opened a shard: every shard of the room, this one included.
    Links(Arc<[ShardLink]>),
    /// Peers came or went on another shard: bring this shard's tracks in line.
    Resync,
    /// Ask `source` for a keyframe, if its peer is on this shard; `subscriber`
    /// when a subscriber asked (a throttled one is then counted).
    Keyframe {
        source: UserId,
        subscriber: bool,
    },
}

/// How one shard reaches another. The control sender is weak: only the
/// room's [`RoomMedia`](super::room::RoomMedia) keeps the shards alive.
#[derive(Clone)]
pub(crate) struct ShardLink {
    pub ctl: mpsc::WeakUnboundedSender<Stamped>,
    pub fan: mpsc::Sender<Arc<[Forward]>>,
}

/// Every live peer of a room, on whichever shard: the publishers each shard
/// must offer its subscribers. Keyed by peer, since a member's old peer on
/// one shard may outlive for a moment its new one on another.
pub(crate) type Directory = Arc<Mutex<HashMap<PeerKey, (UserId, Mode)>>>;

/// What a new shard needs.
pub(crate) struct ShardSetup {
    pub shared: Arc<Shared>,
    pub events: mpsc::UnboundedSender<MediaEvent>,
    pub index: usize,
    pub links: Arc<[ShardLink]>,
    pub directory: Directory,
}

/// Starts a shard (where `Workers::spawn` puts shard `setup.index` of a
/// room with this `base`); it runs until `ctl`'s last strong sender drops.
pub(crate) fn spawn_shard(
    setup: ShardSetup,
    base: usize,
    ctl: mpsc::UnboundedReceiver<Stamped>,
    fan: mpsc::Receiver<Arc<[Forward]>>,
) {
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let shared = setup.shared.clone();
    let index = setup.index;
    let task = MediaTask {
        shared: shared.clone(),
        events: setup.events,
        index,
        links: setup.links,
        directory: setup.directory,
        inbound_tx,
        peers: HashMap::new(),
        by_conn: HashMap::new(),
        gates: HashMap::new(),
        meters: HashMap::new(),
        last_keyframe: HashMap::new(),
        next_volume: shared.clock.now().at,
        next_due: shared.clock.now().at,
        out: shared
            .ports
            .iter()
            .map(|p| SendBatch::new(p.socket.clone()))
            .collect(),
        fan_out: Vec::new(),
        scratch: Vec::new(),
        held: None,
        awake: HashSet::new(),
        deadlines: BinaryHeap::new(),
    };
    shared.metrics.shards.inc();
    let span = tracing::info_span!("media_shard", shard = index);
    let run = tracing::Instrument::instrument(task.run(ctl, inbound_rx, fan), span);
    let run = tracing::Instrument::in_current_span(run);
    shared
        .workers
        .spawn(index, base, shared.tracker.track_future(run));
}

struct MediaTask {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<MediaEvent>,
    /// This shard's place in the room; shard 0 also meters speaking levels
    /// (every publisher's packets reach it, from its own peers or fanned).
    index: usize,
    links: Arc<[ShardLink]>,
    directory: Directory,
    inbound_tx: mpsc::Sender<Inbound>,
    peers: HashMap<PeerKey, Peer>,
    by_conn: HashMap<ConnId, PeerKey>,
    gates: HashMap<UserId, Gate>,
    /// Speaking levels per publisher; kept by shard 0 only.
    meters: HashMap<UserId, LevelMeter>,
    /// Last keyframe request per publisher, for throttling.
    last_keyframe: HashMap<UserId, Instant>,
    next_volume: Instant,
    /// The earliest a peer timer, keyframe retry, media timeout or volume
    /// report is due, as the last tick found it.
    next_due: Instant,
    /// What the peers wrote during this wake, per port, sent at its end.
    out: Vec<SendBatch>,
    /// What this wake's publishers sent, for the room's other shards.
    fan_out: Vec<Forward>,
    /// A direct packet's plaintext, marshalled before it is encrypted; kept
    /// so that forwarding does not allocate for it.
    scratch: Vec<u8>,
    /// A message sent after the datagram last handled arrived, kept until
    /// a later datagram or an empty queue (`messages_before`).
    held: Option<Stamped>,
    /// Peers the next tick must visit: input reached them since their last
    /// visit (their `quiet_until` is `None`).
    awake: HashSet<PeerKey>,
    /// When each quiet peer is next due (its own timer, or its media
    /// timeout), earliest first: one live entry per peer (`Peer::queued`,
    /// `schedule`), which the tick moves on when the peer's deadline moved
    /// later since. The tick touches only the awake and the due, never
    /// every peer.
    deadlines: BinaryHeap<Reverse<(Instant, PeerKey)>>,
}

/// A packet to forward: who sent it and what, decrypted and with its
/// header extensions stripped (each subscriber's sender writes its own).
pub(crate) struct Forward {
    /// The publisher and the kind of its track: what subscribers key their
    /// outgoing tracks by.
    track: (UserId, MediaKind),
    packet: rtc::rtp::Packet,
    /// The RFC 6464 level the publisher put on it, for shard 0's meters.
    level: Option<u8>,
    /// When it reached the server: the other shards apply the gates sent
    /// before then.
    at: Instant,
}

impl MediaTask {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Stamped>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut fan: mpsc::Receiver<Arc<[Forward]>>,
    ) {
        // Ticks at most every TICK, and only while something may be due:
        // soon after input (which may have given a peer work), else at the
        // earliest deadline the last tick found. An idle room sleeps until
        // its peers' next timer.
        let mut last_tick = self.shared.clock.now().at;
        let mut wake_at = last_tick + TICK;
        let tick = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at));
        tokio::pin!(tick);
        loop {
            let mut input = false;
            if inbound.is_empty()
                && fan.is_empty()
                && let Some((_, held)) = self.held.take()
            {
                self.message(held);
                input = true;
            }
            tokio::select! {
                biased;
                msg = cmds.recv() => match msg {
                    Some((_, msg)) => {
                        if let Some((_, held)) = self.held.take() {
                            self.message(held);
                        }
                        self.message(msg);
                        input = true;
                    }
                    None => break,
                },
                Some(first) = fan.recv() => {
                    let now = self.shared.clock.now().at;
                    self.messages_before(&mut cmds, first.first().map_or(now, |f| f.at));
                    self.fanned(&first, now);
                    for _ in 1..BATCH {
                        match fan.try_recv() {
                            Ok(next) => {
                                self.messages_before(&mut cmds, next.first().map_or(now, |f| f.at));
                                self.fanned(&next, now);
                            }
                            Err(_) => break,
                        }
                    }
                    input = true;
                },
                Some(first) = inbound.recv() => {
                    self.messages_before(&mut cmds, first.at);
                    self.datagram(first);
                    for _ in 1..BATCH {
                        match inbound.try_recv() {
                            Ok(next) => {
                                self.messages_before(&mut cmds, next.at);
                                self.datagram(next);
                            }
                            Err(_) => break,
                        }
                    }
                    input = true;
                },
                () = &mut tick => {
                    last_tick = self.shared.clock.now().at;
                    self.next_due = self.on_tick();
                },
            }
            let soonest = last_tick + TICK;
            let want = if input {
                soonest.min(wake_at)
            } else {
                self.next_due.max(soonest)
            };
            if want != wake_at {
                wake_at = want;
                tick.as_mut().reset(tokio::time::Instant::from_std(wake_at));
            }
            self.send();
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.close_peer(key);
        }
        self.send();
        self.shared.metrics.shards.dec();
    }

    /// Hands what this wake wrote to the kernel, and what its publishers
    /// sent to the room's other shards.
    fn send(&mut self) {
        if !self.fan_out.is_empty() {
            let batch: Arc<[Forward]> = std::mem::take(&mut self.fan_out).into();
            for (index, link) in self.links.iter().enumerate() {
                if index != self.index && link.fan.try_send(batch.clone()).is_err() {
                    self.shared.metrics.dropped("shard_queue_full");
                }
            }
        }
        for batch in &mut self.out {
            if batch.is_empty() {
                continue;
            }
            let done = batch.flush();
            let metrics = &self.shared.metrics;
            for _ in 0..done.dropped {
                metrics.dropped("send_buffer_full");
            }
            metrics.send_calls.inc_by(done.calls as u64);
            metrics.sent_datagrams.inc_by(done.sent as u64);
        }
    }

    /// Takes the messages sent before `at`, when the datagram (or batch)
    /// about to be handled arrived, and no later one. The room sends a
    /// mute's gates before it answers the mute, so a packet sent after the
    /// answer arrives after the gates were sent: it meets them shut, even
    /// while this thread drains a burst that began before; and a packet
    /// that arrived before an unmute does not meet the unmute. The first
    /// later message waits in `held` for a datagram after it, or for the
    /// queues to empty.
    fn messages_before(&mut self, cmds: &mut mpsc::UnboundedReceiver<Stamped>, at: Instant) {
        loop {
            let (sent, msg) = match self.held.take() {
                Some(held) => held,
                None => match cmds.try_recv() {
                    Ok(next) => next,
                    Err(_) => return,
                },
            };
            if sent > at {
                self.held = Some((sent, msg));
                return;
            }
            self.message(msg);
        }
    }

    fn message(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Command(cmd) => self.command(cmd),
            ShardMsg::Links(links) => self.links = links,
            ShardMsg::Resync => self.sync_tracks(),
            ShardMsg::Keyframe { source, subscriber } => {
                if self.has_local(&source) {
                    let now = self.shared.clock.now().at;
                    if subscriber {
                        self.subscriber_asks_keyframe(&source, now);
                    } else {
                        let _ = self.request_keyframe(&source, now);
                    }
                }
            }
        }
    }

    /// Tells the room's other shards something.
    fn tell_others(&self, msg: impl Fn() -> ShardMsg) {
        let now = self.shared.clock.now().at;
        for (index, link) in self.links.iter().enumerate() {
            if index != self.index
                && let Some(ctl) = link.ctl.upgrade()
            {
                let _ = ctl.send((now, msg()));
            }
        }
    }

    /// Whether `user`'s peer is on this shard.
    fn has_local(&self, user: &UserId) -> bool {
        self.peers.values().any(|p| p.user == *user)
    }

    fn command(&mut self, cmd: MediaCommand) {
        match cmd {
            MediaCommand::Start {
                conn,
                user,
                mode,
                reply,
            } => {
                reply(self.start(conn, user, mode));
            }
            MediaCommand::Answer { conn, sdp, reply } => {
                reply(self.answer(conn, sdp));
            }
            MediaCommand::Candidate {
                conn,
                candidate,
                reply,
            } => {
                let result = match self.peer_on(conn) {
                    Ok(peer) => peer
                        .pc
                        .add_remote_candidate(candidate)
                        .map_err(|e| MediaError::Negotiation(format!("candidate: {e}"))),
                    Err(e) => Err(e),
                };
                reply(result);
            }
            MediaCommand::Gates(gates) => self.set_gates(gates),
        }
    }

    fn peer_on(&mut self, conn: ConnId) -> Result<&mut Peer, MediaError> {
        let key = *self.by_conn.get(&conn).ok_or(MediaError::NotStarted)?;
        let peer = self.peers.get_mut(&key).ok_or(MediaError::NotStarted)?;
        wake(&mut self.awake, peer);
        Ok(peer)
    }

    fn start(&mut self, conn: ConnId, user: UserId, mode: Mode) -> Result<(), MediaError> {
        // A restart (page reload, reconnect) replaces the member's old peer.
        let old: Vec<PeerKey> = self
            .peers
            .values()
            .filter(|p| p.user == user)
            .map(|p| p.key)
            .collect();
        for key in old {
            self.close_peer(key);
        }
        let shared = self.shared.clone();
        let port = shared.pick_port();
        let key = shared.next_peer_key();
        let ufrag = ice_token(16);
        let pwd = ice_token(32);
        let now = self.shared.clock.now().at;
        let heard = Heard::new(now);
        let setup = PeerSetup {
            key,
            user: user.clone(),
            conn,
            mode,
            port,
            local: shared.ports[port].local,
            advertise: shared.advertise.clone(),
            ufrag: ufrag.clone(),
            pwd: pwd.clone(),
            heard: heard.clone(),
            metrics: shared.metrics.clone(),
        };
        let peer = Peer::new(setup, now)?;
        let _ = shared.ports[port].routes.send(RouteCmd::Add {
            ufrag,
            route: Route {
                peer: key,
                to: self.inbound_tx.clone(),
                pwd: pwd.into(),
                heard,
            },
        });
        shared.metrics.peers.inc();
        lock(&self.directory).insert(key, (user.clone(), mode));
        self.tell_others(|| ShardMsg::Resync);
        self.peers.insert(key, peer);
        self.awake.insert(key);
        self.by_conn.insert(conn, key);
        tracing::debug!(%user, ?mode, "media started");
        // Everyone's track set changed: the newcomer gets the others' tracks,
        // the others get the newcomer's.
        self.sync_tracks();
        Ok(())
    }

    fn answer(&mut self, conn: ConnId, sdp: String) -> Result<(), MediaError> {
        let key = *self.by_conn.get(&conn).ok_or(MediaError::NotStarted)?;
        let now = self.shared.clock.now().at;
        {
            let peer = self.peers.get_mut(&key).expect("indexed by conn");
            wake(&mut self.awake, peer);
            peer.answer(now, sdp)?;
        }
        self.flush(key);
        // New subscriptions start on a keyframe.
        let sources: Vec<UserId> = self.peers[&key]
            .outgoing
            .keys()
            .filter(|(_, kind)| *kind == MediaKind::Video)
            .map(|(user, _)| user.clone())
            .collect();
        for source in sources {
            let _ = self.request_keyframe(&source, now);
        }
        // The first answer lets the other members' tracks in.
        self.sync_tracks();
        if self
            .peers
            .get(&key)
            .is_some_and(|p| p.renegotiate && !p.awaiting_answer)
        {
            self.offer(key);
        }
        Ok(())
    }

    /// Applies the room's latest view of who may publish what.
    fn set_gates(&mut self, gates: Vec<Gate>) {
        let gates: HashMap<UserId, Gate> = gates.into_iter().map(|g| (g.user.clone(), g)).collect();
        // Peers whose membership ended, or moved to another connection
        // without starting media there, are closed.
        let stale: Vec<PeerKey> = self
            .peers
            .values()
            .filter(|p| gates.get(&p.user).and_then(|g| g.conn) != Some(p.conn))
            .map(|p| p.key)
            .collect();
        for key in stale {
            self.close_peer(key);
        }
        let now = self.shared.clock.now().at;
        let mut keyframes = Vec::new();
        for (user, gate) in &gates {
            let before = self.gates.get(user);
            let was_audio = before.is_some_and(|g| g.audio);
            let was_video = before.is_some_and(|g| g.video);
            if was_audio && !gate.audio {
                self.pause_forwarding(user, MediaKind::Audio);
            }
            if was_video && !gate.video {
                self.pause_forwarding(user, MediaKind::Video);
            }
            if !was_video && gate.video {
                keyframes.push(user.clone());
            }
        }
        // A speaker whose audio may no longer flow (muted, demoted, gone)
        // stopped: said once, as a quiet interval would, since the room
        // announces only what changed.
        let mut stopped = Vec::new();
        self.meters.retain(|user, meter| {
            let keep = gates.get(user).is_some_and(|g| g.audio);
            if !keep && meter.is_speaking() {
                stopped.push(VolumeLevel {
                    user: user.clone(),
                    level: SILENT,
                    speaking: false,
                });
            }
            keep
        });
        if !stopped.is_empty() {
            stopped.sort_by(|a, b| a.user.cmp(&b.user));
            let _ = self.events.send(MediaEvent::Volume { levels: stopped });
        }
        self.gates = gates;
        for user in keyframes {
            let _ = self.request_keyframe(&user, now);
        }
        self.sync_tracks();
    }

    /// Marks every subscriber's copy of `user`'s `kind` as paused, so it
    /// resumes without a sequence gap.
    fn pause_forwarding(&mut self, user: &UserId, kind: MediaKind) {
        for peer in self.peers.values_mut() {
            if let Some(out) = peer.outgoing.get_mut(&(user.clone(), kind)) {
                out.seq.pause();
            }
        }
    }

    /// Brings each peer's tracks in line with the room: every other
    /// interactor's audio, and video when both sides are in video mode.
    /// Renegotiates the peers whose set changed.
    fn sync_tracks(&mut self) {
        let publishers: Vec<(UserId, Mode)> = lock(&self.directory)
            .values()
            .filter(|(user, _)| self.gates.get(user).is_some_and(|g| g.interactor))
            .cloned()
            .collect();
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            let changed = {
                let peer = self.peers.get_mut(&key).expect("listed above");
                wake(&mut self.awake, peer);
                let mut want: HashSet<(UserId, MediaKind)> = HashSet::new();
                for (user, mode) in &publishers {
                    if *user == peer.user {
                        continue;
                    }
                    want.insert((user.clone(), MediaKind::Audio));
                    if *mode == Mode::Video && peer.mode == Mode::Video {
                        want.insert((user.clone(), MediaKind::Video));
                    }
                }
                let may_publish = self.gates.get(&peer.user).is_some_and(|g| g.interactor);
                match reconcile(peer, &want, may_publish) {
                    Ok(changed) => changed,
                    Err(e) => {
                        tracing::warn!(user = %peer.user, error = %e, "cannot update tracks");
                        false
                    }
                }
            };
            if changed {
                self.offer(key);
            }
        }
    }

    /// Sends a new offer to `key`, or defers it until the outstanding one is answered.
    fn offer(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        wake(&mut self.awake, peer);
        if peer.awaiting_answer {
            peer.renegotiate = true;
            return;
        }
        let may_publish = self.gates.get(&peer.user).is_some_and(|g| g.interactor);
        match peer.offer(self.shared.clock.now().at, may_publish) {
            Ok(offer) => {
                let conn = peer.conn;
                let _ = self.events.send(MediaEvent::Offer { conn, offer });
            }
            Err(e) => tracing::warn!(user = %peer.user, error = %e, "cannot create an offer"),
        }
        self.flush(key);
    }

    fn close_peer(&mut self, key: PeerKey) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        self.by_conn.remove(&peer.conn);
        let _ = peer.pc.close();
        flush_peer(&mut self.out, &mut peer);
        let _ = self.shared.ports[peer.port].routes.send(RouteCmd::Remove {
            ufrag: peer.ufrag.clone(),
        });
        self.shared.metrics.peers.dec();
        lock(&self.directory).remove(&key);
        self.tell_others(|| ShardMsg::Resync);
        tracing::debug!(user = %peer.user, "media closed");
        self.sync_tracks();
    }

    fn datagram(&mut self, inbound: Inbound) {
        let Some(peer) = self.peers.get_mut(&inbound.peer) else {
            return;
        };
        peer.last_heard = inbound.at;
        if !peer.keys_checked
            && is_rtcp(&inbound.data)
            && let Some(tap) = peer.keys.clone()
            && let Some((local, remote)) = tap.keys()
        {
            // Proof of the order the keys were noted in (see `srtp.rs`):
            // the peer's own SRTCP authenticates under its sending keys.
            // A datagram that authenticates under neither is not the
            // peer's (forged, or garbage) and proves nothing either way.
            if remote.verify(tap.plain(), &inbound.data) {
                peer.keys_checked = true;
                self.shared.metrics.srtp_keys_checked.inc();
            } else if local.verify(tap.plain(), &inbound.data) {
                peer.keys_checked = true;
                self.shared.metrics.srtp_keys_checked.inc();
                self.shared.metrics.srtp_key_mismatch.inc();
                tracing::error!(user = %peer.user, "the peer's SRTCP authenticates under the keys taken for ours; its media goes through rtc's pipeline");
                // What went direct was encrypted under the peer's own key,
                // which it cannot read; rtc's context uses the other key,
                // so moving those tracks to it repeats no keystream.
                peer.direct = Direct::Off;
                for out in peer.outgoing.values_mut() {
                    out.direct = false;
                }
            }
        }
        // A STUN check (RFC 7983: first byte 0 to 3) the port reader left
        // to the agent, or RTCP (a subscriber's receiver report, a NACK, a
        // PLI), on a connected quiet peer is handled right here, answers
        // and retransmissions included, and moves none of its timers past
        // the slack a quiet peer is given: it stays quiet, and the tick is
        // not woken for it. Every subscriber's report each second would
        // otherwise cost a visit each.
        let stun = inbound.data.first().is_some_and(|b| *b <= 3);
        if !((stun || is_rtcp(&inbound.data)) && peer.connected && peer.quiet_until.is_some()) {
            wake(&mut self.awake, peer);
        }
        let read = peer.pc.handle_read(TaggedBytesMut {
            now: inbound.at,
            transport: TransportContext {
                local_addr: peer.local,
                peer_addr: inbound.from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: inbound.data,
        });
        if let Err(e) = read {
            tracing::trace!(user = %peer.user, error = %e, "datagram rejected");
            self.shared.metrics.dropped("malformed");
        }
        let key = peer.key;
        self.events(key);
        let (forwards, keyframes) = self.reads(key, inbound.at);
        self.flush(key);
        self.publish(key, forwards, inbound.at);
        for source in keyframes {
            self.subscriber_asks_keyframe(&source, inbound.at);
        }
    }

    fn events(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        while let Some(event) = peer.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let Some(kind) = peer.publish_kind(init.receiver_id) else {
                        continue;
                    };
                    let audio_level = peer.pc.rtp_receiver(init.receiver_id).and_then(|mut r| {
                        r.get_parameters()
                            .rtp_parameters
                            .header_extensions
                            .iter()
                            .find(|h| h.uri == AUDIO_LEVEL_URI)
                            .map(|h| h.id as u8)
                    });
                    tracing::debug!(user = %peer.user, ?kind, ssrc = init.ssrc, "publishing");
                    peer.incoming.insert(
                        init.track_id,
                        super::peer::Incoming {
                            kind,
                            receiver: init.receiver_id,
                            ssrc: init.ssrc,
                            audio_level,
                        },
                    );
                }
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                    tracing::debug!(user = %peer.user, %state, "ice");
                    if state == RTCIceConnectionState::Failed {
                        peer.failed = true;
                    }
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    tracing::debug!(user = %peer.user, %state, "peer connection");
                    match state {
                        RTCPeerConnectionState::Failed => peer.failed = true,
                        RTCPeerConnectionState::Connected => peer.connected = true,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    /// Drains what the peer decoded: media to forward (if its gate is open)
    /// and keyframe requests from it as a subscriber.
    fn reads(&mut self, key: PeerKey, at: Instant) -> (Vec<Forward>, Vec<UserId>) {
        let mut forwards = Vec::new();
        let mut keyframes = Vec::new();
        let Some(peer) = self.peers.get_mut(&key) else {
            return (forwards, keyframes);
        };
        let gate = self.gates.get(&peer.user);
        while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(track, mut packet) => {
                    let Some(incoming) = peer.incoming.get(&track) else {
                        self.shared.metrics.dropped("unknown_track");
                        continue;
                    };
                    self.shared.metrics.received_packets.inc();
                    let open = match incoming.kind {
                        MediaKind::Audio => gate.is_some_and(|g| g.audio),
                        MediaKind::Video => gate.is_some_and(|g| g.video),
                    };
                    if !open {
                        self.shared.metrics.dropped("not_publishing");
                        continue;
                    }
                    let level = incoming
                        .audio_level
                        .and_then(|id| packet.header.get_extension(id))
                        .and_then(|ext| ext.first().copied());
                    // Extensions are per transport (transport-wide sequence
                    // numbers, mid): each subscriber's sender writes its own.
                    packet.header.extension = false;
                    packet.header.extensions.clear();
                    packet.header.extension_profile = 0;
                    forwards.push(Forward {
                        track: (peer.user.clone(), incoming.kind),
                        packet,
                        level,
                        at,
                    });
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    // Only keyframe requests get this far (our
                    // `KeyframeRequests` interceptor lets nothing else out of
                    // the chain); each is matched by its own media SSRC, since
                    // rtc files the compound under the first one only.
                    for p in &packets {
                        let any = p.as_any();
                        if !(any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()) {
                            continue;
                        }
                        for ssrc in p.destination_ssrc() {
                            if let Some(((source, _), _)) =
                                peer.outgoing.iter().find(|((_, kind), out)| {
                                    *kind == MediaKind::Video && out.ssrc == ssrc
                                })
                            {
                                keyframes.push(source.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        (forwards, keyframes)
    }

    /// What a publisher of this shard sent: to this shard's subscribers
    /// now, to the other shards' at the end of the wake.
    fn publish(&mut self, from: PeerKey, forwards: Vec<Forward>, now: Instant) {
        let fan = self.links.len() > 1;
        for forward in forwards {
            self.forward(Some(from), &forward, now);
            self.meter(&forward);
            if fan {
                self.fan_out.push(forward);
            }
        }
    }

    /// What another shard's publishers sent. Their shard applied the gate;
    /// it is looked at again here, in case a mute reached this shard first.
    fn fanned(&mut self, batch: &[Forward], now: Instant) {
        for forward in batch {
            let (from, kind) = &forward.track;
            let open = self.gates.get(from).is_some_and(|g| match kind {
                MediaKind::Audio => g.audio,
                MediaKind::Video => g.video,
            });
            if open {
                self.forward(None, forward, now);
                self.meter(forward);
            }
        }
    }

    /// Counts a packet's speaking level, on shard 0.
    fn meter(&mut self, forward: &Forward) {
        let Some(level) = forward.level else {
            return;
        };
        if self.index != 0 {
            return;
        }
        // Per packet: look up before cloning the key.
        match self.meters.get_mut(&forward.track.0) {
            Some(meter) => meter.packet(level),
            None => {
                let mut meter = LevelMeter::default();
                meter.packet(level);
                self.meters.insert(forward.track.0.clone(), meter);
            }
        }
    }

    /// Sends one publisher packet to every subscriber of it on this shard.
    fn forward(&mut self, from_key: Option<PeerKey>, forward: &Forward, now: Instant) {
        let track = &forward.track;
        let shared = &self.shared;
        let batches = &mut self.out;
        let awake = &mut self.awake;
        let scratch = &mut self.scratch;
        for (key, peer) in self.peers.iter_mut() {
            if Some(*key) == from_key {
                continue;
            }
            let Some(out) = peer.outgoing.get_mut(track) else {
                continue;
            };
            if !out.negotiated {
                continue;
            }
            if !peer.connected {
                shared.metrics.dropped("not_connected");
                continue;
            }
            // A write starts no timer but the sender reports' (rtc arms it
            // at the first packet it sees) and reads nothing, and what it
            // writes is flushed below: only a track's first packet can
            // bring the peer's next deadline forward. A steady stream leaves
            // a subscriber quiet, so the tick does not visit every
            // subscriber after every packet.
            let first = !out.sent_any;
            let mut packet = forward.packet.clone();
            packet.header.ssrc = out.ssrc;
            packet.header.payload_type = out.payload_type;
            packet.header.sequence_number = out.seq.rewrite(packet.header.sequence_number);
            if first {
                out.sent_any = true;
                // Audio only: video keeps rtc's NACK responder and its
                // send buffer, which direct packets would bypass.
                out.direct = track.1 == MediaKind::Audio
                    && peer.remote.is_some()
                    && direct_ready(&mut peer.direct, peer.keys.as_deref());
                tracing::debug!(to = %peer.user, from = %track.0, kind = ?track.1, direct = out.direct, "first packet forwarded");
            }
            if out.direct
                && let (Direct::Ready(context), Some(to)) = (&mut peer.direct, peer.remote)
            {
                let batch = &mut batches[peer.port];
                match send_direct(context, scratch, &packet, to, batch) {
                    Ok(()) => {
                        shared.metrics.forwarded_packets.inc();
                        shared.metrics.direct_packets.inc();
                        if let Some(report) = out.report.sent(&packet, now) {
                            let sender = out.sender;
                            if let Some(mut sender) = peer.pc.rtp_sender(sender)
                                && sender.write_rtcp(now, vec![Box::new(report)]).is_err()
                            {
                                shared.metrics.dropped("report_not_sent");
                            }
                            flush_peer(batches, peer);
                        }
                    }
                    Err(e) => {
                        tracing::trace!(to = %peer.user, error = %e, "direct packet not encrypted");
                        shared.metrics.dropped("srtp");
                    }
                }
                continue;
            }
            // Straight into the pipeline rather than through
            // `RTCRtpSender::write_rtp`, which rebuilds the sender's whole
            // parameter set (codecs, extensions, their URIs) per packet to
            // check what was set right here: this sender's SSRC and payload
            // type, and no header extensions. The track id is not read.
            let written = peer.pc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), packet),
            });
            match written {
                Ok(()) => {
                    shared.metrics.forwarded_packets.inc();
                }
                Err(_) => shared.metrics.dropped("not_negotiated"),
            }
            if first {
                wake(awake, peer);
            }
            flush_peer(batches, peer);
        }
    }

    /// Asks `source` for a keyframe on its video, at most once per interval.
    /// A subscriber's keyframe request for `source`: relayed, or absorbed by
    /// the throttle (and counted as `keyframe_throttled`).
    fn subscriber_asks_keyframe(&mut self, source: &UserId, now: Instant) {
        if self.links.len() > 1 && !self.has_local(source) {
            // Throttled here too, so that a shard full of new subscribers
            // sends one request an interval; the source's shard throttles
            // again across shards.
            let interval = self.shared.config.keyframe_interval;
            if self
                .last_keyframe
                .get(source)
                .is_some_and(|t| now.duration_since(*t) < interval)
            {
                self.shared.metrics.dropped("keyframe_throttled");
                return;
            }
            self.last_keyframe.insert(source.clone(), now);
            self.tell_others(|| ShardMsg::Keyframe {
                source: source.clone(),
                subscriber: true,
            });
            return;
        }
        if !self.request_keyframe(source, now) {
            self.shared.metrics.dropped("keyframe_throttled");
        }
    }

    /// Asks `source` for a keyframe, unless it was asked less than
    /// `keyframe_interval` ago; false when the throttle held it back. A
    /// source on another shard is asked through it (throttled here as well,
    /// so a shard of new subscribers sends one request an interval).
    fn request_keyframe(&mut self, source: &UserId, now: Instant) -> bool {
        let interval = self.shared.config.keyframe_interval;
        if self
            .last_keyframe
            .get(source)
            .is_some_and(|t| now.duration_since(*t) < interval)
        {
            return false;
        }
        let Some(key) = self
            .peers
            .values()
            .find(|p| p.user == *source)
            .map(|p| p.key)
        else {
            if self.links.len() > 1 {
                let who = source.clone();
                self.tell_others(|| ShardMsg::Keyframe {
                    source: who.clone(),
                    subscriber: false,
                });
                self.last_keyframe.insert(source.clone(), now);
            }
            return true;
        };
        let peer = self.peers.get_mut(&key).expect("found above");
        wake(&mut self.awake, peer);
        let video: Vec<(rtc::rtp_transceiver::RTCRtpReceiverId, u32)> = peer
            .incoming
            .values()
            .filter(|i| i.kind == MediaKind::Video)
            .map(|i| (i.receiver, i.ssrc))
            .collect();
        if video.is_empty() {
            return true;
        }
        for (receiver, ssrc) in video {
            if let Some(mut r) = peer.pc.rtp_receiver(receiver) {
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: ssrc,
                };
                if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                    self.shared.metrics.keyframe_requests.inc();
                }
            }
        }
        self.last_keyframe.insert(source.clone(), now);
        self.flush(key);
        true
    }

    /// Runs what is due; returns when the next thing will be.
    ///
    /// Visits the peers input woke and those whose deadline has come, and
    /// no other: a room of a thousand quiet members costs nothing between
    /// their timers.
    fn on_tick(&mut self) -> Instant {
        let now = self.shared.clock.now().at;
        let timeout = self.shared.config.timeout;
        let mut lost = Vec::new();
        let mut visit: Vec<PeerKey> = self.awake.drain().collect();
        let mut later = Vec::new();
        while let Some(Reverse((at, key))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if peer.queued != Some(at) {
                // Superseded by an earlier entry of the same peer.
                continue;
            }
            peer.queued = None;
            match peer.quiet_until {
                // Visited since the entry was made, and due later now:
                // the entry moves to its new deadline (after the loop,
                // lest it come up again in this one).
                Some(quiet) if quiet > now => later.push((quiet, key)),
                _ => visit.push(key),
            }
        }
        for (quiet, key) in later {
            if let Some(peer) = self.peers.get_mut(&key) {
                schedule(&mut self.deadlines, &mut peer.queued, key, quiet);
            }
        }
        visit.sort_unstable();
        visit.dedup();
        for key in visit {
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            peer.last_heard = peer.last_heard.max(peer.heard.last());
            if peer.pc.poll_timeout().is_some_and(|t| t <= now)
                && let Err(e) = peer.pc.handle_timeout(now)
            {
                tracing::debug!(user = %peer.user, error = %e, "peer timer");
            }
            self.events(key);
            let (forwards, keyframes) = self.reads(key, now);
            self.flush(key);
            self.publish(key, forwards, now);
            for source in keyframes {
                self.subscriber_asks_keyframe(&source, now);
            }
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            let mut wanted = Vec::new();
            for ((source, _), out) in peer.outgoing.iter_mut() {
                match out.keyframes_until {
                    Some(until) if until > now => wanted.push(source.clone()),
                    Some(_) => out.keyframes_until = None,
                    None => {}
                }
            }
            let asking = !wanted.is_empty();
            for source in wanted {
                let _ = self.request_keyframe(&source, now);
            }
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if peer.failed || now.duration_since(peer.last_heard) >= timeout {
                lost.push((key, peer.conn));
                continue;
            }
            if asking {
                // Still asking for keyframes: every tick until
                // `keyframes_until`.
                wake(&mut self.awake, peer);
                continue;
            }
            let idle = peer.connected.then(|| Idle {
                untimed: peer.incoming.is_empty()
                    && peer.outgoing.values().all(|o| o.direct || !o.sent_any),
            });
            let quiet = next_visit(
                &self.shared.clock,
                now,
                peer.pc.poll_timeout(),
                idle,
                peer.last_heard + timeout,
            );
            peer.quiet_until = Some(quiet);
            // Input during the visit (a keyframe request it relayed to
            // itself, say) woke it again: it is visited next tick anyway.
            if !self.awake.contains(&key) {
                schedule(&mut self.deadlines, &mut peer.queued, key, quiet);
            }
        }
        for (key, conn) in lost {
            if let Some(peer) = self.peers.get(&key) {
                tracing::info!(user = %peer.user, failed = peer.failed, "media lost; ending the membership");
            }
            self.close_peer(key);
            let _ = self.events.send(MediaEvent::Lost { conn });
        }
        if now >= self.next_volume {
            self.next_volume = now + self.shared.config.volume_interval;
            self.volume();
        }
        let mut due = match self.deadlines.peek() {
            _ if !self.awake.is_empty() => now,
            Some(Reverse((at, _))) => *at,
            None => now + QUIET_AT_MOST,
        };
        // Volume reports matter only while someone publishes audio.
        if !self.meters.is_empty() {
            due = due.min(self.next_volume);
        }
        due
    }

    /// Reports who speaks: to the room (event and `on_speaking` hook) when
    /// anyone speaks or just stopped.
    fn volume(&mut self) {
        let threshold = self.shared.config.speaking_threshold;
        let mut levels = Vec::new();
        for (user, meter) in &mut self.meters {
            let reading = meter.close(threshold);
            if reading.speaking || reading.changed {
                levels.push(VolumeLevel {
                    user: user.clone(),
                    level: reading.level,
                    speaking: reading.speaking,
                });
            }
        }
        self.meters.retain(|_, m| m.is_speaking());
        if levels.is_empty() {
            return;
        }
        levels.sort_by(|a, b| a.user.cmp(&b.user));
        let _ = self.events.send(MediaEvent::Volume { levels });
    }

    fn flush(&mut self, key: PeerKey) {
        if let Some(peer) = self.peers.get_mut(&key) {
            flush_peer(&mut self.out, peer);
            // Connected, with a pair in use: from now on the port reader
            // answers the consent checks from there (again if the client
            // moved to another pair).
            if peer.connected
                && let Some(remote) = peer.remote
                && peer.consent_at != Some(remote)
            {
                peer.consent_at = Some(remote);
                let _ = self.shared.ports[peer.port].routes.send(RouteCmd::Consent {
                    ufrag: peer.ufrag.clone(),
                    addr: remote,
                });
            }
        }
    }
}

/// Makes sure the peer `key`, whose live entry is at `queued`, has one in
/// the heap no later than `at`.
///
/// A peer keeps one live entry: a visit that moves its deadline later
/// leaves the entry where it is, and when it comes up the tick moves it on
/// to `quiet_until`. Pushing an entry per visit instead filled the heap
/// with stale ones: every member's join wakes the shard's every peer, and
/// the joins of a thousand members left over 100,000 entries per shard,
/// each popped in its turn.
fn schedule(
    deadlines: &mut BinaryHeap<Reverse<(Instant, PeerKey)>>,
    queued: &mut Option<Instant>,
    key: PeerKey,
    at: Instant,
) {
    if queued.is_none_or(|queued| at < queued) {
        *queued = Some(at);
        deadlines.push(Reverse((at, key)));
    }
}

/// What a connected peer's next visit may wait for.
#[derive(Clone, Copy)]
struct Idle {
    /// rtc has nothing of its own to time for the peer: it publishes
    /// nothing (no receiver reports, no NACKs to send) and its every track
    /// goes beside the pipeline or has sent nothing yet (no sender reports,
    /// no retransmissions). Its consent is answered by the port reader.
    untimed: bool,
}

/// When a peer visited at `now` is next due: its next rtc timer (looked at
/// within a second all the same), or its media timeout (`expires`). A
/// connected peer (`idle` given) waits at least `IDLE_SLACK` for its
/// timers, or, untimed, only for the media timeout, when the visit reads
/// the liveness the port reader noted; either way its deadline goes on
/// the server's `IDLE_GRID`. A peer still connecting is due on time: its
/// ICE and DTLS timers are its handshake.
fn next_visit(
    clock: &crate::clock::Clock,
    now: Instant,
    timer: Option<Instant>,
    idle: Option<Idle>,
    expires: Instant,
) -> Instant {
    let timer = timer
        .unwrap_or(now + QUIET_AT_MOST)
        .min(now + QUIET_AT_MOST);
    match idle {
        None => timer.min(expires),
        Some(Idle { untimed: true }) => clock.on_grid(expires, IDLE_GRID),
        Some(Idle { untimed: false }) => {
            clock.on_grid(timer.max(now + IDLE_SLACK).min(expires), IDLE_GRID)
        }
    }
}

/// The directory's lock; poisoned only if a shard panicked holding it, and
/// the map stays usable then.
fn lock(directory: &Directory) -> std::sync::MutexGuard<'_, HashMap<PeerKey, (UserId, Mode)>> {
    directory.lock().unwrap_or_else(|e| e.into_inner())
}

/// Input reached `peer` (or it has more to do): the next tick visits it.
fn wake(awake: &mut HashSet<PeerKey>, peer: &mut Peer) {
    peer.quiet_until = None;
    awake.insert(peer.key);
}

/// Moves whatever the peer connection has written to its port's batch.
fn flush_peer(batches: &mut [SendBatch], peer: &mut Peer) {
    let batch = &mut batches[peer.port];
    while let Some(out) = peer.pc.poll_write() {
        // DTLS and SRTP go to the selected pair; a STUN answer goes to
        // whichever pair was checked, which a client with several
        // candidates need not use.
        if out.message.first().is_some_and(|b| *b > 3) {
            peer.remote = Some(out.transport.peer_addr);
        }
        batch.push(out.message, out.transport.peer_addr);
    }
}

/// RFC 5761 §4: RTP and RTCP on one port are told apart by the second
/// byte, which is an RTCP packet type (192 to 223) only for RTCP.
fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram, [128..=191, 192..=223, ..])
}

/// Builds the peer's own SRTP context the first time a track could use it.
fn direct_ready(direct: &mut Direct, keys: Option<&super::srtp::KeyTap>) -> bool {
    if let Direct::Waiting = direct {
        let context = keys.and_then(|tap| {
            let (local, _) = tap.keys()?;
            local.context(tap.plain())
        });
        if let Some(context) = context {
            *direct = Direct::Ready(Box::new(context));
        }
    }
    matches!(direct, Direct::Ready(_))
}

/// Marshals and encrypts one forwarded packet with the subscriber's own
/// context, straight into its port's batch: the one allocation is the
/// datagram itself (rtc-srtp returns the ciphertext in a buffer of its own).
fn send_direct(
    context: &mut rtc::srtp::context::Context,
    scratch: &mut Vec<u8>,
    packet: &rtc::rtp::Packet,
    to: std::net::SocketAddr,
    batch: &mut SendBatch,
) -> Result<(), rtc::shared::error::Error> {
    use rtc::shared::marshal::{Marshal, MarshalSize};
    let len = packet.marshal_size();
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    let len = packet.marshal_to(&mut scratch[..len])?;
    let datagram = context.encrypt_rtp_with_header(&scratch[..len], &packet.header)?;
    batch.push(datagram, to);
    Ok(())
}

/// Adds and removes `peer`'s outgoing tracks to match `want`, and says
/// whether an offer is due (tracks changed, or the member's right to
/// publish did).
///
/// Every peer has its receive slots from the first offer, so even an
/// audience member alone in a room gets an offer with an m-line (an offer
/// without one gives the browser nothing to put its ICE credentials in).
/// Other members' tracks join only once that first offer is answered:
/// Chrome counted but never decoded packets of tracks that arrived in the
/// first offer of a connection, while tracks added by renegotiation play.
fn reconcile(
    peer: &mut Peer,
    want: &HashSet<(UserId, MediaKind)>,
    may_publish: bool,
) -> Result<bool, MediaError> {
    peer.ensure_publish_slots()?;
    if peer.pc.remote_description().is_none() {
        if !want.is_empty() {
            peer.renegotiate = true;
        }
        return Ok(peer.pc.local_description().is_none());
    }
    let mut changed = may_publish != peer.publish_offered;
    let have: Vec<(UserId, MediaKind)> = peer.outgoing.keys().cloned().collect();
    for track in have {
        if !want.contains(&track) {
            peer.remove_outgoing(&track.0, track.1)?;
            changed = true;
        }
    }
    let mut missing: Vec<&(UserId, MediaKind)> = want
        .iter()
        .filter(|t| !peer.outgoing.contains_key(*t))
        .collect();
    missing.sort_by_key(|(user, kind)| (user.as_str().to_owned(), kind.as_str()));
    for (user, kind) in missing {
        peer.add_outgoing(user, *kind)?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    /// Counts the allocations of the thread that makes them, so that tests
    /// running beside on other threads do not disturb the count.
    struct Counting;

    // SAFETY: every call is passed to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn allocations() -> u64 {
        ALLOCATIONS.with(|n| n.get())
    }

    /// The direct path's cost in allocations, steady state: one per
    /// forwarded packet, the datagram's own buffer (rtc-srtp encrypts into a
    /// buffer it allocates); none for marshalling, batching, `sendmmsg` or
    /// the sender-report counters.
    #[test]
    fn a_direct_packet_allocates_only_its_datagram() {
        let crypto = rtc::crypto::default_provider().expect("ring");
        let mut context = rtc::srtp::context::Context::new(
            &[7; 16],
            &[9; 12],
            rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            crypto.crypto(),
        )
        .expect("context");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let mut batch = SendBatch::new(Arc::new(socket));
        let mut scratch = Vec::new();
        let mut counts = crate::media::peer::SenderCounts::default();
        let mut packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 111,
                ssrc: 42,
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![0xa5; 160]),
        };
        let start = Instant::now();
        let mut run = |from: u16, n: u16| {
            for seq in from..from + n {
                packet.header.sequence_number = seq;
                packet.header.timestamp = u32::from(seq) * 960;
                send_direct(&mut context, &mut scratch, &packet, to, &mut batch).expect("sent");
                let _ = counts.sent(&packet, start);
                if seq % 64 == 63 {
                    batch.flush();
                }
            }
            batch.flush();
        };
        // Warm: the scratch buffer, the batch's vector and the context's
        // state for this SSRC are made once.
        run(0, 128);
        let before = allocations();
        run(128, 1024);
        assert_eq!(
            allocations() - before,
            1024,
            "allocations for 1,024 packets"
        );
    }

    /// Idle peers' visits land on the server's grid, whatever instant their
    /// last visit was, so that many share one wake; a connecting peer's
    /// handshake timers are kept to the instant.
    #[tokio::test(start_paused = true)]
    async fn idle_visits_fall_on_shared_instants() {
        let clock = crate::clock::Clock::new();
        let start = clock.now().at;
        let ms = Duration::from_millis;
        let on_grid = |at: Instant| {
            at.duration_since(start)
                .as_nanos()
                .is_multiple_of(IDLE_GRID.as_nanos())
        };
        let timed = Some(Idle { untimed: false });
        let untimed = Some(Idle { untimed: true });
        let mut seen = HashSet::new();
        for offset in [101, 150, 199, 250, 300] {
            let now = start + ms(offset);
            let expires = now + Duration::from_secs(20);
            // rtc's ICE agent asks for 200 ms; the visit waits its slack,
            // then to the next point of the grid.
            let at = next_visit(&clock, now, Some(now + ms(200)), timed, expires);
            assert!(on_grid(at), "{at:?} is off the grid");
            assert!(at >= now + IDLE_SLACK && at < now + IDLE_SLACK + IDLE_GRID);
            seen.insert(at);
            // Untimed: the media timeout, on the grid.
            let at = next_visit(&clock, now, Some(now + ms(200)), untimed, expires);
            assert!(on_grid(at) && at >= expires && at < expires + IDLE_GRID);
            // Connecting: its own timer, exactly.
            let at = next_visit(&clock, now, Some(now + ms(30)), None, expires);
            assert_eq!(at, now + ms(30));
        }
        // Five peers visited at five instants come due at one.
        assert_eq!(seen.len(), 1);
        // A media timeout sooner than the slack still bounds the wait.
        let now = start + ms(5);
        let at = next_visit(&clock, now, None, timed, now + ms(300));
        assert_eq!(at, start + ms(400));
    }

    /// Deadlines that move later leave a peer's one entry where it is;
    /// only an earlier one adds another.
    #[test]
    fn a_peer_keeps_one_live_deadline() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        let mut heap = BinaryHeap::new();
        let mut queued = None;
        let key: PeerKey = 7;
        for later in 1..=1000 {
            schedule(&mut heap, &mut queued, key, base + ms(later));
        }
        assert_eq!(heap.len(), 1);
        assert_eq!(queued, Some(base + ms(1)));
        // Sooner than the live entry: a new one, which is now the live one.
        schedule(&mut heap, &mut queued, key, base);
        assert_eq!(heap.len(), 2);
        assert_eq!(queued, Some(base));
        assert_eq!(heap.peek(), Some(&Reverse((base, key))));
    }
}
