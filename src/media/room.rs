//! One room's media: its shards, and which shard each member's peer is on.
//!
//! A room's media starts as one shard (a task on one media worker) and
//! stays one while it is small: then every packet is decrypted, gated,
//! rewritten, encrypted and sent on one thread, with no hand-off at all.
//! When every shard holds `media.peers_per_shard` members, the next member
//! opens a shard on a media thread, up to `media.workers` shards (one per
//! core). A publisher's
//! packets are decrypted once, on its own shard, and handed to the other
//! shards as one batch per wake; each shard encrypts and sends for its own
//! subscribers. So a room's fan-out uses as many cores as it has shards.
//!
//! Placement is by member count, and sticky: a member's peer stays on the
//! shard it was placed on for as long as the member is in the room, so a
//! media restart never races a peer on one shard against its successor on
//! another.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::forwarder::{
    Directory, FAN_QUEUE, Gate, MediaCommand, MediaEvent, ShardLink, ShardMsg, ShardSetup, Stamped,
    spawn_shard,
};
use super::{MediaError, Shared};
use crate::ids::{ConnId, UserId};

/// The room task's end of its media. Dropping it ends every shard and
/// closes every peer connection of the room.
pub struct RoomMedia {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<MediaEvent>,
    /// Where the room's added shards go (`Workers::spawn`).
    base: usize,
    directory: Directory,
    /// The shards' control senders: the only strong ones.
    ctl: Vec<mpsc::UnboundedSender<Stamped>>,
    links: Arc<[ShardLink]>,
    /// Members placed on each shard.
    load: Vec<usize>,
    placed: HashMap<UserId, usize>,
    by_conn: HashMap<ConnId, usize>,
    /// The room's last word on who may publish what, for a new shard.
    gates: Vec<Gate>,
}

impl RoomMedia {
    /// Starts the room's media (one shard); what it has to say arrives on
    /// `events`. Unbounded: offers must not be lost, and the shards send a
    /// handful per change plus a volume report per interval, never one per
    /// packet.
    pub fn spawn(media: &super::Media, events: mpsc::UnboundedSender<MediaEvent>) -> RoomMedia {
        let shared = media.shared().clone();
        let mut room = RoomMedia {
            base: shared.workers.next_base(),
            shared,
            events,
            directory: Directory::default(),
            ctl: Vec::new(),
            links: Arc::from(Vec::new()),
            load: Vec::new(),
            placed: HashMap::new(),
            by_conn: HashMap::new(),
            gates: Vec::new(),
        };
        room.open_shard();
        room
    }

    pub fn send(&mut self, cmd: MediaCommand) {
        let cmd = match cmd {
            MediaCommand::Gates(gates) => return self.gates(gates),
            cmd => cmd,
        };
        let shard = match &cmd {
            MediaCommand::Start { conn, user, .. } => {
                let shard = self.place(user);
                self.by_conn.insert(*conn, shard);
                Some(shard)
            }
            MediaCommand::Answer { conn, .. } | MediaCommand::Candidate { conn, .. } => {
                self.by_conn.get(conn).copied()
            }
            MediaCommand::Gates(_) => None,
        };
        match shard {
            Some(shard) => self.to(shard, cmd),
            None => {
                if let Some(reply) = cmd.into_reply() {
                    reply(Err(MediaError::NotStarted));
                }
            }
        }
    }

    /// A new snapshot of who may publish what: to every shard.
    fn gates(&mut self, gates: Vec<Gate>) {
        // A snapshot lists every member and the connection it is on (a
        // member starts media only once it is one): whoever it leaves out
        // is gone, and so are its peers.
        let users: HashSet<&UserId> = gates.iter().map(|g| &g.user).collect();
        let conns: HashSet<ConnId> = gates.iter().filter_map(|g| g.conn).collect();
        self.placed.retain(|user, _| users.contains(user));
        self.by_conn.retain(|conn, _| conns.contains(conn));
        let mut load = vec![0; self.load.len()];
        for shard in self.placed.values() {
            load[*shard] += 1;
        }
        self.load = load;
        for shard in 0..self.ctl.len() {
            self.to(shard, MediaCommand::Gates(gates.clone()));
        }
        self.gates = gates;
    }

    fn to(&self, shard: usize, cmd: MediaCommand) {
        // A shard ends only when this handle drops.
        let _ = self.ctl[shard].send((self.shared.clock.now().at, ShardMsg::Command(cmd)));
    }

    /// The shard for `user`'s peer: where it already is, else the least
    /// loaded, else (every shard full) a new one while workers remain.
    fn place(&mut self, user: &UserId) -> usize {
        if let Some(&shard) = self.placed.get(user) {
            return shard;
        }
        let (mut shard, least) = self
            .load
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, load)| *load)
            .expect("a room has a shard");
        let full = least >= self.shared.config.peers_per_shard.max(1);
        if full && self.ctl.len() < self.shared.workers.shards_at_most() {
            shard = self.open_shard();
        }
        self.load[shard] += 1;
        self.placed.insert(user.clone(), shard);
        shard
    }

    fn open_shard(&mut self) -> usize {
        let index = self.ctl.len();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (fan_tx, fan_rx) = mpsc::channel(FAN_QUEUE);
        let mut links: Vec<ShardLink> = self.links.iter().cloned().collect();
        links.push(ShardLink {
            ctl: ctl_tx.downgrade(),
            fan: fan_tx,
        });
        self.links = links.into();
        for ctl in &self.ctl {
            let _ = ctl.send((
                self.shared.clock.now().at,
                ShardMsg::Links(self.links.clone()),
            ));
        }
        let setup = ShardSetup {
            shared: self.shared.clone(),
            events: self.events.clone(),
            index,
            links: self.links.clone(),
            directory: self.directory.clone(),
        };
        spawn_shard(setup, self.base, ctl_rx, fan_rx);
        if !self.gates.is_empty() {
            let _ = ctl_tx.send((
                self.shared.clock.now().at,
                ShardMsg::Command(MediaCommand::Gates(self.gates.clone())),
            ));
        }
        self.ctl.push(ctl_tx);
        self.load.push(0);
        if index > 0 {
            tracing::info!(shards = index + 1, "room media opened a shard");
        }
        index
    }
}
