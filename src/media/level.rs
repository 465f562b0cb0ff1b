//! Speaking detection from the RFC 6464 audio-level header extension: the
//! publisher's encoder measures each packet's level, so the SFU never decodes
//! audio to know who speaks.

/// The quietest level RFC 6464 can express (-127 dBov: silence).
pub(crate) const SILENT: u8 = 127;

/// One member's levels over the current interval.
#[derive(Debug, Default)]
pub(crate) struct LevelMeter {
    loudest: Option<u8>,
    voiced: u32,
    packets: u32,
    speaking: bool,
}

/// What one interval said about a member.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reading {
    pub level: u8,
    pub speaking: bool,
    /// Speaking state differs from the previous interval's.
    pub changed: bool,
}

impl LevelMeter {
    /// Records one packet's extension byte: the V (voice activity) bit and
    /// a 7-bit level.
    pub(crate) fn packet(&mut self, ext: u8) {
        let level = ext & 0x7f;
        self.loudest = Some(self.loudest.map_or(level, |l| l.min(level)));
        self.packets += 1;
        if ext & 0x80 != 0 {
            self.voiced += 1;
        }
    }

    /// Closes the interval. A member speaks when its loudest packet reached
    /// `threshold`; with no packets at all it is silent.
    pub(crate) fn close(&mut self, threshold: u8) -> Reading {
        let level = self.loudest.unwrap_or(SILENT);
        let speaking = level <= threshold;
        let changed = speaking != self.speaking;
        self.speaking = speaking;
        self.loudest = None;
        self.packets = 0;
        self.voiced = 0;
        Reading {
            level,
            speaking,
            changed,
        }
    }

    pub(crate) fn is_speaking(&self) -> bool {
        self.speaking
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loud_interval_speaks_and_a_quiet_one_stops() {
        let mut m = LevelMeter::default();
        m.packet(0x80 | 90);
        m.packet(0x80 | 25);
        let r = m.close(60);
        assert_eq!(
            r,
            Reading {
                level: 25,
                speaking: true,
                changed: true
            }
        );
        m.packet(100);
        let r = m.close(60);
        assert_eq!((r.level, r.speaking, r.changed), (100, false, true));
        let r = m.close(60);
        assert_eq!((r.level, r.speaking, r.changed), (SILENT, false, false));
    }
}
