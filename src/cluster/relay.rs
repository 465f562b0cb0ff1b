//! Signaling for a room on another node: the node the client reached opens
//! its own WebSocket to the owner, says `hello` there with the client's
//! token, and from then on passes frames both ways unchanged.
//!
//! Relay rather than redirect: the client sees the protocol it always sees
//! (no new status, no second connection to manage, nothing for a browser
//! page or bot to learn), the token is checked by the owner as by any node,
//! and the cost is one loopback-class hop per signaling message, never per
//! media packet: the owner's SDP carries its own media address, so RTP goes
//! straight to it. A direct node-to-node socket rather than Redis pub/sub:
//! a message crosses one TCP hop instead of two plus a Redis, and ordering
//! per connection is the socket's.
//!
//! A relay lasts while the client may be in a room over it. The relaying
//! node follows that from the frames it passes ([`Membership`]): once the
//! client has left (or was removed) and asked for nothing since, its next
//! `create`, `join` or `connect` is routed afresh (one look-up in Redis,
//! skipped for a room this node last found on the relay's node): to the
//! same node, through the same relay; elsewhere, the relay closes,
//! so a client that moves from a room on one node to a room on another
//! reaches the second directly instead of through the first.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::NodeInfo;
use crate::protocol::{PROTOCOL_VERSION, Request, ServerMessage};
use crate::status::{Failure, Status};

/// The id the relay's own `hello` goes out with; its answer is the relay's
/// and never reaches the client. Below 2^53, like every id a client sees.
const HELLO_ID: u64 = (1 << 53) - 1;

/// How long opening a relay (connect, hello) may take.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An open relay to the node that owns the client's room.
pub struct Relay {
    pub node: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// `conclave_cluster_relays`, one less when the relay goes.
    open: Option<prometheus_client::metrics::gauge::Gauge>,
    membership: Membership,
}

/// What the relaying node knows of the client's membership on the owner,
/// from the requests it passed on and the answers and events it passed back.
#[derive(Debug, Default)]
struct Membership {
    /// `join` and `connect` requests passed on and not yet answered.
    entering: Vec<u64>,
    /// A `leave` passed on and not yet answered, with nothing asked since
    /// that could put the client back in a room.
    leaving: Option<u64>,
    /// Whether the client may be in a room over this relay.
    in_room: bool,
}

impl Membership {
    fn client_sent(&mut self, id: u64, request: &Request) {
        match request {
            Request::Join { .. } | Request::Connect { .. } => {
                self.entering.push(id);
                self.leaving = None;
            }
            Request::Leave {} => self.leaving = Some(id),
            _ => {}
        }
    }

    fn owner_sent(&mut self, text: &str) {
        let awaiting = !self.entering.is_empty() || self.leaving.is_some();
        // Most frames are neither: skip parsing them.
        let response = awaiting && text.contains("\"response\"");
        let ended = self.in_room
            && (text.contains("\"disconnected\"") || text.contains("\"channel_ended\""));
        if !response && !ended {
            return;
        }
        match serde_json::from_str::<ServerMessage>(text) {
            Ok(ServerMessage::Response {
                id: Some(id), code, ..
            }) => {
                if let Some(i) = self.entering.iter().position(|e| *e == id) {
                    self.entering.swap_remove(i);
                    if code == crate::status::Status::Ok {
                        self.in_room = true;
                    }
                } else if self.leaving == Some(id) {
                    self.leaving = None;
                    // A leave that failed leaves the membership as it was,
                    // except that there was none to leave.
                    if code == crate::status::Status::Ok || code == crate::status::Status::NotFound
                    {
                        self.in_room = false;
                    }
                }
            }
            Ok(ServerMessage::Disconnected { .. } | ServerMessage::ChannelEnded { .. })
                if self.entering.is_empty() =>
            {
                self.in_room = false;
            }
            _ => {}
        }
    }

    /// Whether the client is in no room over the relay and has nothing in
    /// flight that could put it in one.
    fn idle(&self) -> bool {
        !self.in_room && self.entering.is_empty() && self.leaving.is_none()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(gauge) = self.open.take() {
            gauge.dec();
        }
    }
}

impl super::Cluster {
    /// Opens a relay from this node to `node` for a client that said hello
    /// with `token`, counted in `conclave_cluster_relays` while it lasts.
    pub async fn open_relay(&self, node: &NodeInfo, token: &str) -> Result<Relay, Failure> {
        let mut relay = Relay::open(node, &self.id, token).await?;
        self.metrics.relays.inc();
        relay.open = Some(self.metrics.relays.clone());
        Ok(relay)
    }
}

impl Relay {
    /// Connects to `node` and says hello with `token`. A refusal there (a
    /// revoked token, a ban) is the client's answer, as if it had connected
    /// there itself.
    pub async fn open(node: &NodeInfo, from: &str, token: &str) -> Result<Relay, Failure> {
        let url = signaling_url(&node.url);
        let unreachable = |why: String| {
            Failure::new(
                Status::Unavailable,
                format!(
                    "the room's node {} cannot be reached ({why}); retry",
                    node.id
                ),
            )
        };
        let open = async {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url
                .as_str()
                .into_client_request()
                .map_err(|e| unreachable(e.to_string()))?;
            // Tells the owner to serve this connection itself.
            request.headers_mut().insert(
                super::forward::FORWARDED,
                axum::http::HeaderValue::from_str(from).map_err(|e| unreachable(e.to_string()))?,
            );
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(crate::protocol::WS_READ_BUFFER);
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            let hello = serde_json::json!({
                "id": HELLO_ID,
                "type": "hello",
                "version": PROTOCOL_VERSION,
                "token": token,
            });
            ws.send(Message::text(hello.to_string()))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            while let Some(frame) = ws.next().await {
                let text = match frame.map_err(|e| unreachable(e.to_string()))? {
                    Message::Text(text) => text,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if let Ok(ServerMessage::Response {
                    id: Some(HELLO_ID),
                    code,
                    message,
                    ..
                }) = serde_json::from_str::<ServerMessage>(&text)
                {
                    if code == Status::Ok {
                        return Ok(ws);
                    }
                    return Err(Failure::new(code, message.unwrap_or_default()));
                }
            }
            Err(unreachable("closed before hello was answered".into()))
        };
        let ws = tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| unreachable(format!("no answer in {OPEN_TIMEOUT:?}")))??;
        Ok(Relay {
            node: node.id.clone(),
            ws,
            open: None,
            membership: Membership::default(),
        })
    }

    /// Notes a client request about to be passed on, for [`Relay::idle`].
    pub fn client_sent(&mut self, id: u64, request: &Request) {
        self.membership.client_sent(id, request);
    }

    /// Whether the client is in no room over this relay and has asked for
    /// nothing that could put it in one: a new room can be routed afresh.
    pub fn idle(&self) -> bool {
        self.membership.idle()
    }

    /// Passes one client frame on.
    pub async fn send(&mut self, text: &str) -> Result<(), ()> {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .map_err(|_| ())
    }

    /// The next frame from the owner for the client: `None` once the owner's
    /// side is gone.
    pub async fn recv(&mut self) -> Option<String> {
        while let Some(frame) = self.ws.next().await {
            match frame {
                Ok(Message::Text(text)) => {
                    self.membership.owner_sent(&text);
                    return Some(text.as_str().to_owned());
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
        None
    }

    /// Closes the owner's side politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// `http://host:port` → `ws://host:port/ws` (and https → wss).
pub fn signaling_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/ws")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}/ws")
    } else {
        format!("ws://{base}/ws")
    }
}

/// Waits for the relay's next frame, or for ever when there is no relay (so
/// a `select!` can always poll it).
pub async fn next(relay: &mut Option<Relay>) -> Option<String> {
    match relay {
        Some(relay) => relay.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::{Membership, signaling_url};
    use crate::protocol::Request;

    fn join() -> Request {
        serde_json::from_str(r#"{"type":"join","room":"r","mode":"audio"}"#).unwrap()
    }

    fn answer(id: u64, code: u16) -> String {
        format!(r#"{{"type":"response","id":{id},"code":{code}}}"#)
    }

    const KICKED: &str =
        r#"{"type":"disconnected","room":"r","channel_id":1,"code":200,"reason":"kicked"}"#;

    #[test]
    fn a_relay_is_idle_once_its_client_has_left_and_asked_for_nothing_since() {
        let mut m = Membership::default();
        m.client_sent(1, &join());
        assert!(!m.idle(), "a join in flight");
        m.owner_sent(&answer(1, 200));
        assert!(!m.idle(), "in the room");
        m.client_sent(2, &Request::Leave {});
        m.owner_sent(r#"{"type":"member_left","room":"r","user":"x","reason":"normal"}"#);
        assert!(!m.idle(), "the leave not answered yet");
        m.owner_sent(&answer(2, 200));
        assert!(m.idle());
    }

    #[test]
    fn a_join_sent_right_after_a_leave_keeps_the_relay() {
        let mut m = Membership::default();
        m.client_sent(1, &join());
        m.owner_sent(&answer(1, 200));
        m.client_sent(2, &Request::Leave {});
        m.client_sent(3, &join());
        m.owner_sent(&answer(2, 200));
        assert!(!m.idle(), "the second join is in flight");
        m.owner_sent(&answer(3, 200));
        assert!(!m.idle(), "in the second room");
    }

    #[test]
    fn a_removed_client_is_in_no_room_and_a_refused_join_puts_it_in_none() {
        let mut m = Membership::default();
        m.client_sent(1, &join());
        m.owner_sent(&answer(1, 404));
        assert!(m.idle(), "the join was refused");
        m.client_sent(2, &join());
        m.owner_sent(&answer(2, 200));
        m.owner_sent(KICKED);
        assert!(m.idle(), "kicked");
    }

    #[test]
    fn the_signaling_url_follows_the_advertised_base() {
        assert_eq!(
            signaling_url("http://10.0.0.5:7880"),
            "ws://10.0.0.5:7880/ws"
        );
        assert_eq!(
            signaling_url("https://eu.example.com/"),
            "wss://eu.example.com/ws"
        );
    }
}
