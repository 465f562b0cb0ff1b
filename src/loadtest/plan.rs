//! Who joins which room as what, with a token each.
//!
//! Names are predictable so a failure can be found in the server's logs:
//! room `lt-r3`, its publishers `lt-r3-p0`.., its subscribers `lt-r3-s0`..
//! (with the default prefix `lt`).

use std::time::Duration;

use crate::auth::{Auth, AuthError, Grants, claims_for};
use crate::model::Role;

/// One simulated participant.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub room: String,
    pub user: String,
    pub publisher: bool,
    pub token: String,
}

/// Everyone, publishers first, each with a token valid for `ttl`. Publishers
/// may create their room (the first to arrive does); subscribers may only
/// enter it as audience.
pub(crate) fn participants(
    auth: &Auth,
    prefix: &str,
    rooms: usize,
    publishers: usize,
    subscribers: usize,
    ttl: Duration,
) -> Result<Vec<Spec>, AuthError> {
    let mut specs = Vec::with_capacity(rooms * (publishers + subscribers));
    for publisher in [true, false] {
        let (count, letter) = if publisher {
            (publishers, 'p')
        } else {
            (subscribers, 's')
        };
        for r in 0..rooms {
            let room = format!("{prefix}-r{r}");
            for i in 0..count {
                let user = format!("{room}-{letter}{i}");
                let grants = Grants {
                    create: publisher,
                    rooms: vec![room.clone()],
                    roles: vec![if publisher {
                        Role::Interactor
                    } else {
                        Role::Audience
                    }],
                    admin: false,
                };
                let token = auth.mint(&claims_for(&user, "", grants, ttl))?;
                specs.push(Spec {
                    room: room.clone(),
                    user,
                    publisher,
                    token,
                });
            }
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_come_first_and_tokens_grant_what_each_needs() {
        let auth = Auth::dev();
        let specs = participants(&auth, "lt", 2, 1, 2, Duration::from_secs(60)).unwrap();
        let users: Vec<&str> = specs.iter().map(|s| s.user.as_str()).collect();
        assert_eq!(
            users,
            [
                "lt-r0-p0", "lt-r1-p0", "lt-r0-s0", "lt-r0-s1", "lt-r1-s0", "lt-r1-s1"
            ]
        );
        let publisher = auth.verify(&specs[0].token).unwrap();
        assert!(publisher.grants.create);
        assert_eq!(publisher.grants.rooms, ["lt-r0"]);
        let subscriber = auth.verify(&specs[5].token).unwrap();
        assert!(!subscriber.grants.create);
        assert_eq!(subscriber.grants.roles, [Role::Audience]);
    }
}
