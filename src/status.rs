//! Status codes of the protocol, in one place.
//!
//! The numbers are the NIM connect codes where one fits (200, 400, 401, 417,
//! 500, 101, 11001, 11002), plus HTTP-style 403, 404, 429 and 503 for cases
//! the seed has no code for. Every error type of the crate maps to one of these
//! through [`Status::from`] impls next to the error, so a client always gets a
//! number and a sentence.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// 200: success.
    Ok,
    /// 101: the room did not answer a request in time (it is overloaded or stuck).
    Timeout,
    /// 400: malformed message, missing or invalid field.
    BadRequest,
    /// 401: missing, forged or expired token, or a token that does not cover this room.
    Unauthorized,
    /// 403: the request is understood and authenticated but not permitted.
    Forbidden,
    /// 404: no such room, or no such member in it.
    NotFound,
    /// 417: a room of that name exists, the connection is already in a room,
    /// or `hello` was sent twice.
    Conflict,
    /// 429: too many requests on this connection.
    RateLimited,
    /// 500: the server failed; the request may be retried.
    Internal,
    /// 503: the server is shutting down or at capacity.
    Unavailable,
    /// 11001: the server ended this member's session (kicked, room closed, replaced, shutdown).
    Disconnected,
    /// 11002: the client's protocol version is not supported.
    VersionUnsupported,
    /// 11003: the community media channel holds its member limit.
    ChannelFull,
}

impl Status {
    pub const fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::Timeout => 101,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::Conflict => 417,
            Status::RateLimited => 429,
            Status::Internal => 500,
            Status::Unavailable => 503,
            Status::Disconnected => 11001,
            Status::VersionUnsupported => 11002,
            Status::ChannelFull => 11003,
        }
    }

    pub fn from_code(code: u16) -> Option<Status> {
        Self::ALL.iter().copied().find(|s| s.code() == code)
    }

    pub const ALL: [Status; 13] = [
        Status::Ok,
        Status::Timeout,
        Status::BadRequest,
        Status::Unauthorized,
        Status::Forbidden,
        Status::NotFound,
        Status::Conflict,
        Status::RateLimited,
        Status::Internal,
        Status::Unavailable,
        Status::Disconnected,
        Status::VersionUnsupported,
        Status::ChannelFull,
    ];
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.code())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(d)?;
        Status::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown status code {code}")))
    }
}

/// An error as the protocol carries it: a status and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status:?} ({}): {message}", status.code())]
pub struct Failure {
    pub status: Status,
    pub message: String,
    /// The id of the decision-log record that refused the request, when a
    /// room decided it (`GET /api/decisions/{id}` resolves it).
    pub decision: Option<String>,
}

impl Failure {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            decision: None,
        }
    }

    /// The same failure, naming the decision that refused it.
    pub fn decided(mut self, decision: Option<String>) -> Self {
        self.decision = decision;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        let mut codes: Vec<_> = Status::ALL.iter().map(|s| s.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Status::ALL.len());
        assert_eq!(Status::from_code(999), None);
    }
}
