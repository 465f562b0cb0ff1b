//! The signaling protocol's messages, as serde types.
//!
//! Every frame is one JSON object with a `type`. Requests from a client carry
//! an `id` the response echoes; events from the server carry none. The server
//! and the Rust client share these types, so the wire format is defined once.
//! docs/protocol.md is the prose for the same thing and must change with it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::model::{
    ChannelEndReason, LeaveReason, MediaKind, MemberInfo, Mode, PublishSlot, Role, TrackInfo,
    VolumeLevel,
};

use crate::community::{CommunityChannelId, MediaSettings, ServerId};
use crate::ids::{ChannelId, RoomName, UserId};
use crate::status::{Failure, Status};

/// The protocol version this server speaks, sent in the `hello` handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// How much a WebSocket end asks of its socket per read. tungstenite
/// zero-fills this much of its buffer before every read, the one that finds
/// nothing included; at its default of 128 KiB that was a tenth of the
/// server's CPU under light media load, for frames that are a few hundred
/// bytes (an SDP, the largest, a few KiB). Larger frames take more reads.
pub const WS_READ_BUFFER: usize = 8 * 1024;

/// A request from a client, without its envelope `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The first message on every connection.
    Hello { version: u32, token: String },
    /// Create a room; nobody is in it until someone joins.
    Create {
        room: RoomName,
        #[serde(default)]
        custom_info: String,
        /// The room policy (a script name); default: chosen by the server's rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
    },
    /// Join a created room.
    Join {
        room: RoomName,
        mode: Mode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
    },
    /// Leave the current room.
    Leave {},
    /// Change the role of oneself, or of `user` (needs the admin grant).
    SetRole {
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
    },
    /// Mute or unmute one's own audio or video, or `user`'s (needs the admin grant).
    Mute {
        kind: MediaKind,
        muted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
    },
    /// Remove `user` from the current room (needs the admin grant), and
    /// with `ban` keep them out (docs/protocol.md §5.5).
    Kick {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ban: Option<crate::model::BanTerms>,
    },
    /// Mute (or unmute) everyone else's audio or video (needs the admin grant).
    MuteAll { kind: MediaKind, muted: bool },
    /// Start or stop sharing one's screen, or stop `user`'s (needs the admin grant).
    ShareScreen {
        on: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
    },
    /// Send a data message to everyone else in the room, or to `to`.
    Data {
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<UserId>,
    },
    /// Start WebRTC media for the current membership; the server answers,
    /// then sends a `media_offer` event.
    MediaStart {},
    /// The answer to the latest `media_offer`.
    MediaAnswer { sdp: String },
    /// A trickled ICE candidate of the client (`candidate` is the
    /// `candidate:...` attribute text, as the browser's RTCIceCandidate has it).
    IceCandidate {
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u16>,
    },
    /// Heartbeat; any message counts, this one does nothing else. Without
    /// an `id` it is a notification: counted as life and never answered
    /// (see [`Frame::Heartbeat`]).
    Ping {},
    /// Connect to a community media channel: join the room bound to it,
    /// opening that room on the first connect. Leave with `leave`.
    Connect {
        server: ServerId,
        channel: CommunityChannelId,
        /// Default: video.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<Mode>,
    },
    /// Who is connected to a media channel the requester can see.
    ChannelMembers {
        server: ServerId,
        channel: CommunityChannelId,
    },
}

impl Request {
    /// The `type` string, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Create { .. } => "create",
            Request::Join { .. } => "join",
            Request::Leave {} => "leave",
            Request::SetRole { .. } => "set_role",
            Request::Mute { .. } => "mute",
            Request::Kick { .. } => "kick",
            Request::MuteAll { .. } => "mute_all",
            Request::ShareScreen { .. } => "share_screen",
            Request::Data { .. } => "data",
            Request::MediaStart {} => "media_start",
            Request::MediaAnswer { .. } => "media_answer",
            Request::IceCandidate { .. } => "ice_candidate",
            Request::Ping {} => "ping",
            Request::Connect { .. } => "connect",
            Request::ChannelMembers { .. } => "channel_members",
        }
    }
}

/// A request with its envelope, as it travels.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Envelope {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

/// A frame that could not be read as a request; answered with 400 and the
/// request id when one could be found.
#[derive(Debug)]
pub struct Malformed {
    pub id: Option<u64>,
    pub message: String,
}

/// One text frame from a client.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A request, answered with its id.
    Request(Envelope),
    /// `{"type":"ping"}` with no id: the client is alive, and nothing is
    /// sent back. An idle member's only traffic is its heartbeat, and an
    /// answer to each would be the server's largest idle cost (a TCP send
    /// per member per interval, for a reply no client reads).
    Heartbeat,
}

/// Parses one text frame that must be a request (with an id).
pub fn parse_request(text: &str) -> Result<Envelope, Malformed> {
    match parse_frame(text)? {
        Frame::Request(env) => Ok(env),
        Frame::Heartbeat => Err(missing_id()),
    }
}

fn missing_id() -> Malformed {
    Malformed {
        id: None,
        message: "missing field `id`".into(),
    }
}

/// Parses one text frame. The id is read first, so even a request with a bad
/// body gets an answer its sender can match.
pub fn parse_frame(text: &str) -> Result<Frame, Malformed> {
    let mut value: Value = serde_json::from_str(text).map_err(|e| Malformed {
        id: None,
        message: format!("malformed JSON: {e}"),
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err(Malformed {
            id: None,
            message: "a message must be a JSON object".into(),
        });
    };
    let id = match object.remove("id") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(_) => {
            return Err(Malformed {
                id: None,
                message: "`id` must be a non-negative integer".into(),
            });
        }
        None => None,
    };
    let request = Request::deserialize(value).map_err(|e| Malformed {
        id,
        message: format!("invalid request: {e}"),
    })?;
    match (id, request) {
        (Some(id), request) => Ok(Frame::Request(Envelope { id, request })),
        (None, Request::Ping {}) => Ok(Frame::Heartbeat),
        (None, _) => Err(missing_id()),
    }
}

/// Everything the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to one request.
    Response {
        /// The request's id; absent only when the request's id could not be read.
        id: Option<u64>,
        code: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default, skip_serializing_if = "Value::is_null")]
        data: Value,
    },
    /// Someone joined the room (not sent to the joiner, who gets the member list).
    MemberJoined {
        room: RoomName,
        channel_id: ChannelId,
        member: MemberInfo,
    },
    /// Someone left the room.
    MemberLeft {
        room: RoomName,
        channel_id: ChannelId,
        user: UserId,
        reason: LeaveReason,
    },
    /// A member's role changed.
    RoleChanged {
        room: RoomName,
        channel_id: ChannelId,
        user: UserId,
        role: Role,
        operate_by: String,
    },
    /// A member's audio or video mute changed; sent to everyone, the member too.
    MuteChanged {
        room: RoomName,
        channel_id: ChannelId,
        user: UserId,
        kind: MediaKind,
        muted: bool,
        operate_by: String,
    },
    /// A member started or stopped sharing a screen.
    ScreenShareChanged {
        room: RoomName,
        channel_id: ChannelId,
        user: UserId,
        sharing: bool,
        operate_by: String,
    },
    /// A data message from a member (`from` is its user id), the room's
    /// policy (`policy:<name>`) or an admin.
    Data {
        room: RoomName,
        channel_id: ChannelId,
        from: String,
        payload: Value,
    },
    /// The room's metadata changed; the whole new map.
    MetadataChanged {
        room: RoomName,
        channel_id: ChannelId,
        metadata: serde_json::Map<String, Value>,
    },
    /// The server's WebRTC offer (first, or a renegotiation); answer it with
    /// `media_answer`.
    MediaOffer {
        sdp: String,
        /// Where this member sends its own media (none for the audience).
        publish: Vec<PublishSlot>,
        /// Other members' tracks in this offer.
        tracks: Vec<TrackInfo>,
        /// STUN/TURN servers for the client's peer connection.
        ice_servers: Vec<IceServer>,
    },
    /// Who is speaking, a few times a second while anyone does.
    Volume { levels: Vec<VolumeLevel> },
    /// The server ended this connection's membership.
    Disconnected {
        room: RoomName,
        channel_id: ChannelId,
        code: Status,
        reason: LeaveReason,
    },
    /// This connection is no longer connected to a community media channel.
    ChannelEnded {
        server: ServerId,
        channel: CommunityChannelId,
        room: RoomName,
        channel_id: ChannelId,
        reason: ChannelEndReason,
    },
}

impl ServerMessage {
    pub fn ok(id: u64, data: impl Serialize) -> Self {
        ServerMessage::Response {
            id: Some(id),
            code: Status::Ok,
            message: None,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
        }
    }

    pub fn error(id: Option<u64>, failure: Failure) -> Self {
        ServerMessage::Response {
            id,
            code: failure.status,
            message: Some(failure.message),
            // A refusal a room decided names its decision-log record.
            data: failure
                .decision
                .map_or(Value::Null, |id| serde_json::json!({ "decision": id })),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// A STUN or TURN server as clients receive it (the browser's `RTCIceServer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `data` of the `hello` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloOk {
    pub version: u32,
    pub server: String,
    pub user: UserId,
    pub name: String,
    /// Send something (a `ping` will do) at least this often.
    pub heartbeat_interval_ms: u64,
    /// Silence for this long ends the connection; the membership then waits
    /// `reconnect_grace_ms` for a reconnect before leaving with `timeout`.
    pub heartbeat_timeout_ms: u64,
    pub reconnect_grace_ms: u64,
    /// In a cluster: the signaling URLs of its serving nodes, this one
    /// first. Any of them serves any room, so a client whose connection
    /// drops tries them in turn to get back to its rooms within the grace.
    /// Absent on a single server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// `data` of the `create` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateOk {
    pub room: RoomName,
    pub channel_id: ChannelId,
}

/// `data` of the `join` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinOk {
    pub room: RoomName,
    pub channel_id: ChannelId,
    pub custom_info: String,
    pub role: Role,
    pub mode: Mode,
    /// Everyone in the room, the joiner included, in join order.
    pub members: Vec<MemberInfo>,
    /// What the room's policy has published with `room.set_metadata`.
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    /// True when this join took over an existing membership of the same user
    /// (a reconnect inside the grace window): others saw nothing.
    pub resumed: bool,
}

/// `data` of the `connect` response: the join, plus where and with which
/// media settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectOk {
    pub server: ServerId,
    pub channel: CommunityChannelId,
    pub settings: MediaSettings,
    #[serde(flatten)]
    pub join: JoinOk,
}

/// `data` of the `channel_members` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelMembersOk {
    pub server: ServerId,
    pub channel: CommunityChannelId,
    /// In join order; empty when nobody is connected.
    pub members: Vec<MemberInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_join() {
        let env = parse_request(r#"{"id":7,"type":"join","room":"r1","mode":"audio"}"#).unwrap();
        assert_eq!(env.id, 7);
        assert_eq!(
            env.request,
            Request::Join {
                room: RoomName::new("r1").unwrap(),
                mode: Mode::Audio,
                role: None
            }
        );
    }

    #[test]
    fn errors_keep_the_id_when_they_can() {
        let err = parse_request(r#"{"id":3,"type":"join","room":"r1"}"#).unwrap_err();
        assert_eq!(err.id, Some(3));
        assert!(
            err.message.contains("missing field `mode`"),
            "{}",
            err.message
        );

        let err = parse_request(r#"{"id":4,"type":"dance"}"#).unwrap_err();
        assert_eq!(err.id, Some(4));
        assert!(
            err.message.contains("unknown variant `dance`"),
            "{}",
            err.message
        );

        let err = parse_request(r#"{"id":5,"type":"create","room":""}"#).unwrap_err();
        assert!(
            err.message.contains("room name is empty"),
            "{}",
            err.message
        );

        let err = parse_request("{not json").unwrap_err();
        assert_eq!(err.id, None);
        assert!(err.message.starts_with("malformed JSON"));

        let err = parse_request(r#"{"type":"leave"}"#).unwrap_err();
        assert_eq!(err.message, "missing field `id`");

        let err = parse_request(r#"{"id":1,"type":"ping","extra":1}"#).unwrap_err();
        assert!(
            err.message.contains("unknown field `extra`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_ping_without_an_id_is_a_heartbeat_and_nothing_else_is() {
        assert_eq!(parse_frame(r#"{"type":"ping"}"#).unwrap(), Frame::Heartbeat);
        assert_eq!(
            parse_frame(r#"{"id":2,"type":"ping"}"#).unwrap(),
            Frame::Request(Envelope {
                id: 2,
                request: Request::Ping {}
            })
        );
        // A request that needs an answer still needs its id.
        let err = parse_frame(r#"{"type":"leave"}"#).unwrap_err();
        assert_eq!(err.message, "missing field `id`");
        // And a heartbeat with fields is no heartbeat.
        let err = parse_frame(r#"{"type":"ping","extra":1}"#).unwrap_err();
        assert!(
            err.message.contains("unknown field `extra`"),
            "{}",
            err.message
        );
        // Where a request is expected, a heartbeat is one without an id.
        let err = parse_request(r#"{"type":"ping"}"#).unwrap_err();
        assert_eq!(err.message, "missing field `id`");
    }

    #[test]
    fn envelope_round_trips() {
        let env = Envelope {
            id: 9,
            request: Request::Mute {
                kind: MediaKind::Video,
                muted: true,
                user: None,
            },
        };
        let text = serde_json::to_string(&env).unwrap();
        assert_eq!(parse_request(&text).unwrap(), env);
    }

    #[test]
    fn events_serialize_with_their_type() {
        let msg = ServerMessage::MemberLeft {
            room: RoomName::new("r").unwrap(),
            channel_id: ChannelId(5),
            user: "bob".into(),
            reason: LeaveReason::Timeout,
        };
        let v: Value = serde_json::from_str(&msg.to_json()).unwrap();
        assert_eq!(v["type"], "member_left");
        assert_eq!(v["reason"], "timeout");
        assert_eq!(v["channel_id"], 5);
    }
}
