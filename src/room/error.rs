//! What a room, or the registry of rooms, answers when it cannot do what it
//! was asked. Typed all the way to the edge: the connection and the HTTP API
//! turn these into protocol statuses, in one place (`app::errors`).

use crate::ids::RoomName;
use crate::media::MediaError;
use crate::policy::authz::Denial;

use super::state::RoomError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The room's own rules refused (an audience member cannot unmute, ...).
    #[error(transparent)]
    Rule(#[from] RoomError),
    /// Authorization refused: grants, community keys, a plugin or the policy.
    #[error(transparent)]
    Denied(#[from] Denial),
    /// The room closed before it could answer.
    #[error("room `{0}` is closed")]
    Closed(RoomName),
    /// The room did not answer within `ROOM_ANSWER_TIMEOUT`.
    #[error("room `{0}` did not answer in time")]
    NotAnswering(RoomName),
    #[error("no room named `{0}`")]
    NoSuchRoom(RoomName),
    #[error("a room named `{0}` already exists")]
    Taken(RoomName),
    #[error("the server holds its limit of {0} rooms")]
    AtCapacity(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// In a cluster: the room's name could not be claimed or looked up.
    #[error("the cluster cannot be reached: {0}")]
    ClusterUnavailable(String),
    #[error(
        "room names starting with `{0}` belong to community media channels; connect to the channel instead"
    )]
    Reserved(&'static str),
    /// A `[[policy.rules]]` entry binds the name to another policy.
    #[error("rooms named like `{pattern}` use the policy `{policy}`")]
    RuleBinds { pattern: String, policy: String },
    #[error("no room policy named `{0}` (no {0}.lua in the scripts directory)")]
    NoSuchPolicy(String),
    /// The policy's script exists but did not load; the details are in the
    /// log and the admin API, not in what the client is told.
    #[error("the room policy `{0}` failed to load; the server log and GET /api/policies say why")]
    PolicyBroken(String),
    #[error("this server runs without a media plane ([media] enabled = false)")]
    MediaOff,
    #[error("join a room before starting media")]
    JoinFirst,
    #[error("not in a room")]
    NotInRoom,
    #[error(transparent)]
    Media(#[from] MediaError),
    /// The room's own rules refused what authorization allowed; `decision`
    /// names the decision-log record (amended to say so).
    #[error("{error}")]
    Decided { decision: String, error: RoomError },
}
