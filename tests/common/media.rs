//! A member with WebRTC media, for tests: a signaling client and a media
//! session, with the server's offers answered whenever the test waits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use conclave::client::SignalClient;
use conclave::client::media::{MediaOptions, MediaSession, Received};
use conclave::signal::protocol::{Mode, Request, Role, ServerMessage};

use super::{PATIENCE, TestServer};

pub struct Participant {
    pub user: String,
    pub client: SignalClient,
    pub media: MediaSession,
    /// Events that arrived while waiting for something else.
    stash: VecDeque<ServerMessage>,
    /// `media_offer` events seen, for tests about negotiation.
    pub offers: Vec<ServerMessage>,
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
        let client = server.client(user).await;
        if let Err(e) = client.create(room, "").await {
            assert_eq!(e.status().map(|s| s.code()), Some(417), "create: {e}");
        }
        client.join(room, mode, Some(role)).await.expect("join");
        let options = MediaOptions {
            audio: true,
            video: mode == Mode::Video,
            bind: "127.0.0.1:0".parse().expect("literal address"),
        };
        let media = MediaSession::new(options).await.expect("media session");
        let mut p = Participant {
            user: user.to_owned(),
            client,
            media,
            stash: VecDeque::new(),
            offers: Vec::new(),
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
            self.media
                .accept_offer(&self.client, sdp.clone())
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
            if let Some(p) = self.media.next_packet(Duration::from_millis(20)).await
                && pick(&p)
            {
                return p;
            }
        }
    }
}
