//! Who joins which room as what, with a token each.
//!
//! Names are predictable so a failure can be found in the server's logs:
//! room `lt-r3`, its publishers `lt-r3-p0`.., its subscribers `lt-r3-s0`..
//! (with the default prefix `lt`). Against several nodes, participants are
//! dealt over them in turn, in that order.

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
    /// Which of the run's signaling URLs this participant joins through.
    pub node: usize,
}

/// How many of what, and through how many nodes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub nodes: usize,
}

/// Everyone, publishers first, each with a token valid for `ttl` and a node
/// (`0..nodes`, in turn). Publishers may create their room (the first to
/// arrive does); subscribers may only enter it as audience.
pub(crate) fn participants(
    auth: &Auth,
    prefix: &str,
    shape: Shape,
    ttl: Duration,
) -> Result<Vec<Spec>, AuthError> {
    let Shape {
        rooms,
        publishers,
        subscribers,
        nodes,
    } = shape;
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
                    node: specs.len() % nodes.max(1),
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
        let shape = Shape {
            rooms: 2,
            publishers: 1,
            subscribers: 2,
            nodes: 1,
        };
        let specs = participants(&auth, "lt", shape, Duration::from_secs(60)).unwrap();
        assert!(specs.iter().all(|s| s.node == 0));
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

    #[test]
    fn participants_are_dealt_over_the_nodes_in_turn() {
        let shape = Shape {
            rooms: 1,
            publishers: 1,
            subscribers: 4,
            nodes: 3,
        };
        let specs = participants(&Auth::dev(), "lt", shape, Duration::from_secs(60)).unwrap();
        let nodes: Vec<usize> = specs.iter().map(|s| s.node).collect();
        assert_eq!(nodes, [0, 1, 2, 0, 1]);
    }
}
