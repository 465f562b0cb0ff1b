//! What the room's members last heard about who speaks.
//!
//! The media plane reports every speaking member's level each
//! `volume_interval`. Sending all of it to every member each time costs one
//! WebSocket write per member per interval (five a second, for as long as
//! anyone speaks), whether or not anything changed. So a `volume` event
//! carries only what a member would see change: someone starting or
//! stopping, or a level that moved by `volume_step` or more from the one
//! last announced. LiveKit's speaker updates work the same way (only
//! changed speakers, levels quantized). A connection that did not hear the
//! last announcement (it joined since) gets everyone speaking, once.

use std::collections::{HashMap, HashSet};

use crate::ids::{ConnId, UserId};
use crate::model::VolumeLevel;

#[derive(Debug, Default)]
pub(crate) struct Speakers {
    /// Each speaking member's level as last announced.
    levels: HashMap<UserId, u8>,
    /// The connections that heard the last announcement.
    listeners: HashSet<ConnId>,
}

/// One report's announcements.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Announcement {
    /// For the connections that heard the last one: what changed since.
    pub changes: Vec<VolumeLevel>,
    /// For the others: everyone speaking now.
    pub everyone: Vec<VolumeLevel>,
}

impl Speakers {
    /// Takes one report of the media plane and returns what to announce.
    /// The media plane reports each member speaking, every interval, and
    /// each stop once (a quiet interval, a mute, a track's end); a member it
    /// does not mention is as it was. `step` 0 announces every speaking
    /// member every time.
    pub fn report(&mut self, levels: &[VolumeLevel], step: u8) -> Announcement {
        let mut out = Announcement::default();
        for level in levels {
            if !level.speaking {
                // A stop is news only to those who heard the start.
                if self.levels.remove(&level.user).is_some() {
                    out.changes.push(level.clone());
                }
                continue;
            }
            out.everyone.push(level.clone());
            // Compared with what was announced, not with the last report:
            // a slow drift is announced once it adds up.
            let before = self.levels.get(&level.user);
            if before.is_none_or(|b| b.abs_diff(level.level) >= step) {
                out.changes.push(level.clone());
                self.levels.insert(level.user.clone(), level.level);
            }
        }
        out
    }

    /// Whether `conn` heard the last announcement.
    pub fn heard_last(&self, conn: ConnId) -> bool {
        self.listeners.contains(&conn)
    }

    /// Records who heard this announcement.
    pub fn heard_by(&mut self, conns: impl Iterator<Item = ConnId>) {
        self.listeners.clear();
        self.listeners.extend(conns);
    }

    /// A member left: if it comes back speaking, that is news.
    pub fn forget(&mut self, user: &UserId) {
        self.levels.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(user: &str, level: u8, speaking: bool) -> VolumeLevel {
        VolumeLevel {
            user: UserId::from(user),
            level,
            speaking,
        }
    }

    fn users(levels: &[VolumeLevel]) -> Vec<(&str, u8, bool)> {
        levels
            .iter()
            .map(|l| (l.user.as_str(), l.level, l.speaking))
            .collect()
    }

    #[test]
    fn a_steady_speaker_is_announced_once_and_its_stop_once() {
        let mut heard = Speakers::default();
        let first = heard.report(&[level("alice", 30, true)], 6);
        assert_eq!(users(&first.changes), [("alice", 30, true)]);
        for l in [32, 28, 33] {
            let again = heard.report(&[level("alice", l, true)], 6);
            assert!(again.changes.is_empty(), "{l} dB is within the step");
            assert_eq!(users(&again.everyone), [("alice", l, true)]);
        }
        let stop = heard.report(&[level("alice", 100, false)], 6);
        assert_eq!(users(&stop.changes), [("alice", 100, false)]);
        assert!(stop.everyone.is_empty());
    }

    #[test]
    fn levels_are_compared_with_the_announced_one() {
        let mut heard = Speakers::default();
        heard.report(&[level("alice", 30, true)], 6);
        // 2 dB a report: each within the step of the last, the third past
        // it from the announced 30.
        assert!(
            heard
                .report(&[level("alice", 32, true)], 6)
                .changes
                .is_empty()
        );
        assert!(
            heard
                .report(&[level("alice", 34, true)], 6)
                .changes
                .is_empty()
        );
        let moved = heard.report(&[level("alice", 36, true)], 6);
        assert_eq!(users(&moved.changes), [("alice", 36, true)]);
        assert!(
            heard
                .report(&[level("alice", 40, true)], 6)
                .changes
                .is_empty()
        );
    }

    #[test]
    fn a_zero_step_announces_every_report() {
        let mut heard = Speakers::default();
        for _ in 0..3 {
            let a = heard.report(&[level("alice", 30, true), level("bob", 50, true)], 0);
            assert_eq!(users(&a.changes), [("alice", 30, true), ("bob", 50, true)]);
        }
    }

    #[test]
    fn whoever_stopped_or_left_is_news_again() {
        let mut heard = Speakers::default();
        heard.report(&[level("alice", 30, true), level("bob", 40, true)], 6);
        // Bob muted: a report of his stop alone says nothing of alice.
        let muted = heard.report(&[level("bob", 127, false)], 6);
        assert_eq!(users(&muted.changes), [("bob", 127, false)]);
        let back = heard.report(&[level("alice", 30, true), level("bob", 40, true)], 6);
        assert_eq!(users(&back.changes), [("bob", 40, true)]);
        heard.forget(&UserId::from("alice"));
        let rejoined = heard.report(&[level("alice", 30, true), level("bob", 40, true)], 6);
        assert_eq!(users(&rejoined.changes), [("alice", 30, true)]);
        // A stop from someone never announced speaking is nobody's news.
        let unheard = heard.report(&[level("carol", 90, false)], 6);
        assert!(unheard.changes.is_empty());
    }

    #[test]
    fn only_the_last_announcements_listeners_heard_it() {
        let mut heard = Speakers::default();
        let (a, b) = (ConnId(1), ConnId(2));
        assert!(!heard.heard_last(a));
        heard.heard_by([a].into_iter());
        assert!(heard.heard_last(a) && !heard.heard_last(b));
        heard.heard_by([b].into_iter());
        assert!(!heard.heard_last(a) && heard.heard_last(b));
    }
}
