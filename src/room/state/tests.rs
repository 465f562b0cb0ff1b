//! Every room rule, stepped with synthetic time: no sockets, no sleeping.

use std::time::{Duration, Instant};

use super::*;

struct Clock {
    start: Instant,
    offset: Duration,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
            offset: Duration::ZERO,
        }
    }
    fn now(&self) -> Now {
        Now {
            at: self.start + self.offset,
            unix_ms: 1_700_000_000_000 + self.offset.as_millis() as i64,
        }
    }
    fn advance(&mut self, d: Duration) -> Now {
        self.offset += d;
        self.now()
    }
}

/// Joins as authorization would let `user` in: with the role asked for,
/// else as an interactor.
trait JoinAs {
    fn join_as(
        &mut self,
        now: Now,
        conn: ConnId,
        user: &str,
        mode: Mode,
        role: Option<Role>,
    ) -> Result<JoinOk, RoomError>;
}

impl JoinAs for Room {
    fn join_as(
        &mut self,
        now: Now,
        conn: ConnId,
        user: &str,
        mode: Mode,
        role: Option<Role>,
    ) -> Result<JoinOk, RoomError> {
        let user = UserId::from(user);
        let name = format!("{user}'s name");
        self.join(
            now,
            conn,
            Joiner {
                user: &user,
                name: &name,
                mode,
                role: role.unwrap_or(Role::Interactor),
                muted: false,
            },
        )
    }
}

fn settings() -> RoomSettings {
    RoomSettings {
        empty_timeout: Duration::from_secs(60),
        reconnect_grace: Duration::from_secs(10),
    }
}

fn room(clock: &Clock) -> Room {
    Room::new(
        RoomName::new("r").unwrap(),
        ChannelId(77),
        "hello all".into(),
        settings(),
        clock.now(),
    )
}

fn drain(room: &mut Room) -> Vec<Output> {
    std::iter::from_fn(|| room.poll_output()).collect()
}

/// The messages broadcast, in order, with who was excluded.
fn broadcasts(outputs: &[Output]) -> Vec<(Recipients, ServerMessage)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn records(outputs: &[Output]) -> Vec<RecordOp> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Record(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

const A: ConnId = ConnId(1);
const B: ConnId = ConnId(2);
const C: ConnId = ConnId(3);

#[test]
fn first_join_starts_the_record_and_returns_custom_info() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let ok = r.join_as(clock.now(), A, "a", Mode::Video, None).unwrap();
    assert_eq!(ok.channel_id, ChannelId(77));
    assert_eq!(ok.custom_info, "hello all");
    assert_eq!(ok.role, Role::Interactor);
    assert!(!ok.resumed);
    assert_eq!(ok.members.len(), 1);
    assert!(!ok.members[0].audio_muted && !ok.members[0].video_muted);

    let out = drain(&mut r);
    let recs = records(&out);
    assert!(matches!(
        recs[0],
        RecordOp::Start {
            channel_id: ChannelId(77),
            ..
        }
    ));
    assert!(matches!(&recs[1], RecordOp::Join { user, .. } if user.as_str() == "a"));
    assert_eq!(
        broadcasts(&out)[0].0,
        Recipients::AllExcept(A),
        "the joiner is not told about itself"
    );
}

#[test]
fn others_see_member_joined_and_the_joiner_gets_everyone() {
    let clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    drain(&mut r);
    let ok = r
        .join_as(clock.now(), B, "b", Mode::Audio, Some(Role::Audience))
        .unwrap();
    let users: Vec<_> = ok.members.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, ["a", "b"]);
    let out = drain(&mut r);
    let (to, msg) = &broadcasts(&out)[0];
    assert_eq!(*to, Recipients::AllExcept(B));
    let ServerMessage::MemberJoined { member, .. } = msg else {
        panic!("expected member_joined, got {msg:?}");
    };
    assert_eq!(member.user.as_str(), "b");
    assert_eq!(member.role, Role::Audience);
    assert!(
        member.audio_muted && member.video_muted,
        "audience starts muted"
    );
    // Only the first join starts a record.
    assert!(
        !records(&out)
            .iter()
            .any(|r| matches!(r, RecordOp::Start { .. }))
    );
}

#[test]
fn audio_mode_has_no_video_to_unmute() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let ok = r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    assert!(ok.members[0].video_muted);
    assert_eq!(
        r.set_mute(&Operator::Member(A), None, MediaKind::Video, false),
        Err(RoomError::NoVideoInAudioMode)
    );
}

#[test]
fn leave_tells_others_and_the_last_leave_closes() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    r.join_as(clock.now(), B, "b", Mode::Audio, None).unwrap();
    drain(&mut r);

    r.leave(clock.advance(Duration::from_secs(3)), A).unwrap();
    let out = drain(&mut r);
    assert_eq!(
        broadcasts(&out),
        vec![(
            Recipients::All,
            ServerMessage::MemberLeft {
                room: RoomName::new("r").unwrap(),
                channel_id: ChannelId(77),
                user: "a".into(),
                reason: LeaveReason::Normal,
            }
        )]
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Remove { .. })));
    assert!(!r.is_closed());
    assert_eq!(
        r.leave(clock.now(), A),
        Err(RoomError::NotMember(RoomName::new("r").unwrap()))
    );

    r.leave(clock.now(), B).unwrap();
    let out = drain(&mut r);
    assert!(r.is_closed());
    assert_eq!(out.last(), Some(&Output::Closed(CloseReason::AllLeft)));
    assert!(
        records(&out)
            .iter()
            .any(|op| matches!(op, RecordOp::End { reason, .. } if reason == "all_left"))
    );
    assert!(r.join_as(clock.now(), C, "c", Mode::Audio, None).is_err());
}

#[test]
fn a_room_never_joined_expires_without_a_record() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    assert_eq!(
        r.poll_timeout(),
        Some(clock.now().at + Duration::from_secs(60))
    );
    r.handle_timeout(clock.advance(Duration::from_secs(59)));
    assert!(!r.is_closed());
    r.handle_timeout(clock.advance(Duration::from_secs(1)));
    assert!(r.is_closed());
    let out = drain(&mut r);
    assert_eq!(out, vec![Output::Closed(CloseReason::Expired)]);
}

#[test]
fn a_joined_room_does_not_expire() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    assert_eq!(r.poll_timeout(), None);
    r.handle_timeout(clock.advance(Duration::from_secs(3600)));
    assert!(!r.is_closed());
}

#[test]
fn lost_connection_leaves_with_timeout_after_the_grace_window() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    r.join_as(clock.now(), B, "b", Mode::Audio, None).unwrap();
    drain(&mut r);

    r.disconnected(clock.now(), A);
    assert!(
        drain(&mut r).is_empty(),
        "nobody is told during the grace window"
    );
    assert_eq!(r.member_count(), 2);
    assert_eq!(
        r.poll_timeout(),
        Some(clock.now().at + Duration::from_secs(10))
    );

    r.handle_timeout(clock.advance(Duration::from_secs(10)));
    let out = drain(&mut r);
    let left: Vec<_> = broadcasts(&out)
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::MemberLeft { user, reason, .. } => Some((user, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(left, vec![(UserId::from("a"), LeaveReason::Timeout)]);
    assert!(records(&out).iter().any(|op| matches!(
        op,
        RecordOp::Leave {
            reason: LeaveReason::Timeout,
            ..
        }
    )));
    assert_eq!(r.member_count(), 1);
}

#[test]
fn reconnect_inside_the_grace_window_resumes_silently() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Video, Some(Role::Audience))
        .unwrap();
    r.join_as(clock.now(), B, "b", Mode::Audio, None).unwrap();
    drain(&mut r);

    r.disconnected(clock.now(), A);
    let ok = r
        .join_as(
            clock.advance(Duration::from_secs(9)),
            C,
            "a",
            Mode::Audio,
            None,
        )
        .unwrap();
    assert!(ok.resumed);
    assert_eq!(ok.role, Role::Audience, "the membership keeps its role");
    assert_eq!(ok.mode, Mode::Video, "and its mode");
    assert!(drain(&mut r).is_empty(), "others see nothing");
    assert_eq!(r.poll_timeout(), None, "no timeout pending any more");
    r.handle_timeout(clock.advance(Duration::from_secs(60)));
    assert_eq!(r.member_count(), 2);
    assert_eq!(r.user_of(C).map(|u| u.as_str()), Some("a"));
}

#[test]
fn a_second_connection_of_the_same_user_replaces_the_first() {
    let clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    drain(&mut r);
    let ok = r.join_as(clock.now(), B, "a", Mode::Audio, None).unwrap();
    assert!(ok.resumed);
    let out = drain(&mut r);
    assert_eq!(out.len(), 1);
    let Output::Remove { conn, msg } = &out[0] else {
        panic!("expected the old connection removed, got {out:?}");
    };
    assert_eq!(*conn, A);
    assert!(matches!(
        msg,
        ServerMessage::Disconnected {
            reason: LeaveReason::Replaced,
            code: Status::Disconnected,
            ..
        }
    ));
    assert_eq!(r.user_of(A), None);
    // The old connection's late disconnect must not start a grace window.
    r.disconnected(clock.now(), A);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn mute_changes_reach_everyone_with_the_operator() {
    let clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Video, None).unwrap();
    r.join_as(clock.now(), B, "b", Mode::Video, None).unwrap();
    drain(&mut r);

    r.set_mute(&Operator::Member(A), None, MediaKind::Video, true)
        .unwrap();
    let out = drain(&mut r);
    assert_eq!(
        broadcasts(&out),
        vec![(
            Recipients::All,
            ServerMessage::MuteChanged {
                room: RoomName::new("r").unwrap(),
                channel_id: ChannelId(77),
                user: "a".into(),
                kind: MediaKind::Video,
                muted: true,
                operate_by: "a".into(),
            }
        )]
    );
    // Muting what is already muted is accepted and says nothing.
    r.set_mute(&Operator::Member(A), None, MediaKind::Video, true)
        .unwrap();
    assert!(drain(&mut r).is_empty());
    assert!(r.members()[0].video_muted);
}

#[test]
fn a_member_acts_on_others_only_as_a_moderator() {
    let clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    r.join_as(clock.now(), B, "boss", Mode::Audio, None)
        .unwrap();
    drain(&mut r);
    let a: UserId = "a".into();
    let boss: UserId = "boss".into();

    assert_eq!(
        r.set_mute(&Operator::Member(A), Some(&boss), MediaKind::Audio, true),
        Err(RoomError::NotPermitted)
    );
    assert_eq!(
        r.kick(clock.now(), &Operator::Member(A), &boss),
        Err(RoomError::KickNotPermitted)
    );
    let a_id: UserId = "a".into();
    assert_eq!(
        r.kick(clock.now(), &Operator::Member(A), &a_id),
        Err(RoomError::KickNotPermitted),
        "not even oneself"
    );
    assert_eq!(
        r.set_role(&Operator::Member(A), Some(&boss), Role::Audience),
        Err(RoomError::NotPermitted)
    );
    assert!(drain(&mut r).is_empty());

    // Authorization let B act on others (its admin grant, say): a moderator.
    assert_eq!(
        r.set_mute(&Operator::Member(B), Some(&a), MediaKind::Audio, true),
        Err(RoomError::NotPermitted),
        "a plain member never acts on others, whoever it is"
    );
    r.set_mute(&Operator::Moderator(B), Some(&a), MediaKind::Audio, true)
        .unwrap();
    let out = drain(&mut r);
    assert!(
        matches!(&broadcasts(&out)[0].1, ServerMessage::MuteChanged { user, operate_by, .. } if user.as_str() == "a" && operate_by == "boss")
    );

    let nobody: UserId = "nobody".into();
    assert_eq!(
        r.set_mute(
            &Operator::Moderator(B),
            Some(&nobody),
            MediaKind::Audio,
            true
        ),
        Err(RoomError::NoSuchMember(nobody))
    );
}

#[test]
fn audience_cannot_unmute_and_becoming_audience_mutes() {
    let clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Video, None).unwrap();
    drain(&mut r);

    r.set_role(&Operator::Member(A), None, Role::Audience)
        .unwrap();
    let out = drain(&mut r);
    let kinds: Vec<_> = broadcasts(&out)
        .into_iter()
        .map(|(_, m)| match m {
            ServerMessage::RoleChanged { role, .. } => format!("role:{}", role.as_str()),
            ServerMessage::MuteChanged { kind, muted, .. } => {
                format!("mute:{}:{muted}", kind.as_str())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["role:audience", "mute:audio:true", "mute:video:true"]
    );
    assert!(records(&out).iter().any(|op| matches!(
        op,
        RecordOp::Role {
            role: Role::Audience,
            ..
        }
    )));

    assert_eq!(
        r.set_mute(&Operator::Member(A), None, MediaKind::Audio, false),
        Err(RoomError::AudienceCannotUnmute)
    );
    // Back to interactor: still muted until the member unmutes.
    r.set_role(&Operator::Member(A), None, Role::Interactor)
        .unwrap();
    assert!(r.members()[0].audio_muted);
    r.set_mute(&Operator::Member(A), None, MediaKind::Audio, false)
        .unwrap();
    assert!(!r.members()[0].audio_muted);
}

#[test]
fn kick_removes_with_its_own_message_to_the_kicked() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    r.join_as(clock.now(), B, "b", Mode::Audio, None).unwrap();
    drain(&mut r);

    r.kick(
        clock.advance(Duration::from_secs(1)),
        &Operator::Admin("ops".into()),
        &"a".into(),
    )
    .unwrap();
    let out = drain(&mut r);
    let Output::Remove { conn, msg } = &out[0] else {
        panic!("the kicked connection is told first: {out:?}");
    };
    assert_eq!(*conn, A);
    assert!(matches!(
        msg,
        ServerMessage::Disconnected {
            reason: LeaveReason::Kicked,
            ..
        }
    ));
    assert!(matches!(
        &broadcasts(&out)[0].1,
        ServerMessage::MemberLeft {
            reason: LeaveReason::Kicked,
            ..
        }
    ));
    assert_eq!(r.connections().collect::<Vec<_>>(), vec![B]);
}

#[test]
fn close_evicts_everyone_and_ends_the_record() {
    let clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    r.join_as(clock.now(), B, "b", Mode::Audio, None).unwrap();
    drain(&mut r);
    r.close(clock.now(), CloseReason::Shutdown);
    let out = drain(&mut r);
    let removed: Vec<ConnId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Remove {
                conn,
                msg:
                    ServerMessage::Disconnected {
                        reason: LeaveReason::Shutdown,
                        ..
                    },
            } => Some(*conn),
            _ => None,
        })
        .collect();
    assert_eq!(removed, vec![A, B]);
    let leaves = records(&out)
        .iter()
        .filter(|op| {
            matches!(
                op,
                RecordOp::Leave {
                    reason: LeaveReason::Shutdown,
                    ..
                }
            )
        })
        .count();
    assert_eq!(leaves, 2);
    assert!(
        records(&out)
            .iter()
            .any(|op| matches!(op, RecordOp::End { reason, .. } if reason == "shutdown"))
    );
    assert_eq!(out.last(), Some(&Output::Closed(CloseReason::Shutdown)));
}

#[test]
fn rejoining_after_leaving_is_a_new_membership() {
    let clock = Clock::new();
    let mut r = room(&clock);
    r.join_as(clock.now(), A, "a", Mode::Audio, None).unwrap();
    r.join_as(clock.now(), B, "b", Mode::Audio, None).unwrap();
    r.leave(clock.now(), A).unwrap();
    drain(&mut r);
    let ok = r.join_as(clock.now(), C, "a", Mode::Audio, None).unwrap();
    assert!(!ok.resumed);
    let out = drain(&mut r);
    assert!(matches!(
        &broadcasts(&out)[0].1,
        ServerMessage::MemberJoined { .. }
    ));
    assert_eq!(records(&out).len(), 1, "one new member row, no new record");
}
