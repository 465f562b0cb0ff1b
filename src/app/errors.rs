//! Every error a client (over the protocol or HTTP) can be told, mapped to
//! a protocol status and a sentence, here and nowhere else.
//!
//! The layers below return their own typed errors (`RoomError`, `Denial`,
//! `AuthError`, ...); the edges (`signal`, `http`) turn them into a
//! [`Failure`] with `Failure::from` at the moment they answer. A denial
//! carries the status the deciding step chose (a plugin's or a script's code,
//! 403 by default), so it maps to itself.

use crate::auth::AuthError;
use crate::community::CommunityError;
use crate::community::hub::HubError;
use crate::community::permissions::Refusal;
use crate::media::MediaError;
use crate::policy::authz::Denial;
use crate::policy::catalog::UnloadError;
use crate::room::{Error as RoomFailure, RoomError};
use crate::status::{Failure, Status};
use crate::store::StoreError;

fn failure(status: Status, e: impl std::fmt::Display) -> Failure {
    Failure::new(status, e.to_string())
}

impl From<RoomFailure> for Failure {
    fn from(e: RoomFailure) -> Failure {
        let status = match &e {
            RoomFailure::Rule(rule) => return Failure::from(rule.clone()),
            RoomFailure::Denied(denial) => return Failure::from(denial.clone()),
            RoomFailure::Decided { decision, error } => {
                return Failure::from(error.clone()).decided(Some(decision.clone()));
            }
            RoomFailure::Media(media) => return failure(media_status(media), media),
            RoomFailure::Closed(_)
            | RoomFailure::NoSuchRoom(_)
            | RoomFailure::JoinFirst
            | RoomFailure::NotInRoom => Status::NotFound,
            RoomFailure::NotAnswering(_) => Status::Timeout,
            RoomFailure::Taken(_) => Status::Conflict,
            RoomFailure::AtCapacity(_)
            | RoomFailure::ShuttingDown
            | RoomFailure::ClusterUnavailable(_)
            | RoomFailure::MediaOff => Status::Unavailable,
            RoomFailure::Reserved(_) | RoomFailure::RuleBinds { .. } => Status::Forbidden,
            RoomFailure::NoSuchPolicy(_) => Status::BadRequest,
            RoomFailure::PolicyBroken(_) => Status::Internal,
        };
        failure(status, e)
    }
}

impl From<RoomError> for Failure {
    fn from(e: RoomError) -> Failure {
        // The room's own refusals know their status (the decision log
        // records it): `RoomError::status`.
        failure(e.status(), e)
    }
}

impl From<Denial> for Failure {
    fn from(d: Denial) -> Failure {
        Failure::new(d.status, d.reason).decided(d.decision)
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Failure {
        failure(Status::Unauthorized, e)
    }
}

fn media_status(e: &MediaError) -> Status {
    match e {
        MediaError::Negotiation(_) | MediaError::NotStarted => Status::BadRequest,
        _ => Status::Internal,
    }
}

impl From<MediaError> for Failure {
    fn from(e: MediaError) -> Failure {
        failure(media_status(&e), e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        // A database that is away (a cluster's PostgreSQL) comes back; the
        // caller may retry. Anything else is a fault here.
        let status = if e.is_transient() {
            Status::Unavailable
        } else {
            Status::Internal
        };
        failure(status, e)
    }
}

impl From<UnloadError> for Failure {
    fn from(e: UnloadError) -> Failure {
        let status = match e {
            UnloadError::NoSuchPlugin(_) => Status::NotFound,
            UnloadError::StillOnDisk(_) => Status::Conflict,
        };
        failure(status, e)
    }
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Failure {
        let status = match &e {
            HubError::Model(m) => match m {
                CommunityError::NoSuchServer(_)
                | CommunityError::NoSuchRole(_)
                | CommunityError::NoSuchChannel(_)
                | CommunityError::NotAMember(_) => Status::NotFound,
                CommunityError::ServerExists(_)
                | CommunityError::RoleExists(_)
                | CommunityError::ChannelExists(_) => Status::Conflict,
                CommunityError::EveryoneRole(_)
                | CommunityError::OwnerCannotLeave
                | CommunityError::NotMedia(_)
                | CommunityError::InvalidSettings(_) => Status::BadRequest,
            },
            HubError::Refused(r) => refusal_status(r),
            HubError::Corrupt(_) => Status::Internal,
            HubError::Forbidden(_) => Status::Forbidden,
        };
        failure(status, e)
    }
}

fn refusal_status(r: &Refusal) -> Status {
    match r {
        Refusal::NoSuchRole(_) | Refusal::NoSuchChannel(_) => Status::NotFound,
        Refusal::NotAMember
        | Refusal::Missing(_)
        | Refusal::NotHeld(_)
        | Refusal::Outranked(_)
        | Refusal::RankTooHigh(_) => Status::Forbidden,
    }
}

impl From<CommunityError> for Failure {
    fn from(e: CommunityError) -> Failure {
        Failure::from(HubError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomName;

    #[test]
    fn each_kind_of_error_has_its_status() {
        let room = || RoomName::new("r").unwrap();
        let cases = [
            (RoomFailure::Closed(room()), Status::NotFound),
            (RoomFailure::NotAnswering(room()), Status::Timeout),
            (RoomFailure::Taken(room()), Status::Conflict),
            (RoomFailure::AtCapacity(3), Status::Unavailable),
            (RoomFailure::NoSuchPolicy("x".into()), Status::BadRequest),
            (RoomFailure::PolicyBroken("x".into()), Status::Internal),
            (RoomError::AudienceCannotUnmute.into(), Status::Forbidden),
            (RoomError::NoVideoInAudioMode.into(), Status::BadRequest),
            (MediaError::NotStarted.into(), Status::BadRequest),
        ];
        for (error, status) in cases {
            assert_eq!(Failure::from(error).status, status);
        }
        let denial = Denial::new(
            Status::RateLimited,
            "slow down",
            crate::policy::authz::Decider::Rules,
        );
        assert_eq!(
            Failure::from(RoomFailure::Denied(denial)),
            Failure::new(Status::RateLimited, "slow down")
        );
    }
}
