//! A media channel's settings: how many may connect, and the audio and video
//! its room asks clients to send.
//!
//! The media plane reads these when it negotiates; the room itself enforces
//! only the member limit. Values are checked once, when set, so everything
//! downstream may trust them.

use serde::{Deserialize, Serialize};

/// Members a media channel admits unless told otherwise.
pub const DEFAULT_MEMBER_LIMIT: u32 = 99;
/// The largest member limit accepted: past this a room's fan-out of events
/// stops being cheap, and a channel should be split instead.
pub const MAX_MEMBER_LIMIT: u32 = 10_000;

/// The audio quality a channel asks for (NERTC's audio profiles).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioProfile {
    #[default]
    Default,
    Standard,
    StandardExtend,
    MiddleQuality,
    MiddleQualityStereo,
    HighQuality,
    HighQualityStereo,
}

/// What the audio is mostly for, which tunes processing on the clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioScenario {
    #[default]
    Default,
    Speech,
    Music,
    Chatroom,
}

/// The video a channel asks members to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl Default for VideoSettings {
    fn default() -> Self {
        VideoSettings {
            width: 640,
            height: 480,
            fps: 15,
        }
    }
}

/// Everything a media channel carries beyond permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSettings {
    /// Connecting past this many members answers 11003.
    pub member_limit: u32,
    pub audio_profile: AudioProfile,
    pub audio_scenario: AudioScenario,
    pub video: VideoSettings,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            member_limit: DEFAULT_MEMBER_LIMIT,
            audio_profile: AudioProfile::default(),
            audio_scenario: AudioScenario::default(),
            video: VideoSettings::default(),
        }
    }
}

impl MediaSettings {
    /// Why these settings cannot be used, as a sentence for the caller.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_MEMBER_LIMIT).contains(&self.member_limit) {
            return Err(format!(
                "member_limit must be 1 to {MAX_MEMBER_LIMIT}, not {}",
                self.member_limit
            ));
        }
        let VideoSettings { width, height, fps } = self.video;
        if !(16..=4096).contains(&width) || !(16..=4096).contains(&height) {
            return Err(format!(
                "video size must be 16 to 4096 pixels each way, not {width}x{height}"
            ));
        }
        if !(1..=60).contains(&fps) {
            return Err(format!("video fps must be 1 to 60, not {fps}"));
        }
        Ok(())
    }

    /// These settings with the fields `update` names changed.
    pub fn updated(mut self, update: &MediaSettingsUpdate) -> MediaSettings {
        if let Some(limit) = update.member_limit {
            self.member_limit = limit;
        }
        if let Some(profile) = update.audio_profile {
            self.audio_profile = profile;
        }
        if let Some(scenario) = update.audio_scenario {
            self.audio_scenario = scenario;
        }
        if let Some(video) = &update.video {
            self.video.width = video.width.unwrap_or(self.video.width);
            self.video.height = video.height.unwrap_or(self.video.height);
            self.video.fps = video.fps.unwrap_or(self.video.fps);
        }
        self
    }
}

/// A partial update of [`MediaSettings`]: fields left out keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSettingsUpdate {
    pub member_limit: Option<u32>,
    pub audio_profile: Option<AudioProfile>,
    pub audio_scenario: Option<AudioScenario>,
    pub video: Option<VideoUpdate>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoUpdate {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = MediaSettings::default();
        assert_eq!(s.member_limit, 99);
        assert_eq!((s.video.width, s.video.height, s.video.fps), (640, 480, 15));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn a_partial_update_keeps_the_rest_and_bad_values_are_named() {
        let update: MediaSettingsUpdate =
            serde_json::from_str(r#"{"member_limit": 2, "video": {"fps": 30}}"#).unwrap();
        let s = MediaSettings::default().updated(&update);
        assert_eq!(s.member_limit, 2);
        assert_eq!((s.video.width, s.video.fps), (640, 30));
        let bad = MediaSettings {
            member_limit: 0,
            ..s
        };
        assert!(bad.validate().unwrap_err().contains("member_limit"));
        assert!(serde_json::from_str::<MediaSettingsUpdate>(r#"{"limit": 2}"#).is_err());
    }
}
