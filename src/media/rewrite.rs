//! Sequence-number rewriting for one forwarded track.
//!
//! A subscriber sees one continuous stream per track, though the SFU stops
//! forwarding while the publisher is muted or in the audience. Without
//! rewriting, the gap would look like thousands of lost packets: NACK storms
//! and a stalled jitter buffer. Timestamps are left alone: the pause really
//! did last that long.

/// Maps a publisher's sequence numbers onto a gap-free outgoing sequence.
#[derive(Debug, Default)]
pub(crate) struct SeqRewriter {
    offset: u16,
    /// Highest sequence number sent, once anything was.
    highest: Option<u16>,
    /// Next packet starts a new run: re-anchor after `highest`.
    resync: bool,
}

impl SeqRewriter {
    /// Marks a pause in forwarding: the next packet continues right after the
    /// last one sent, whatever its own number.
    pub(crate) fn pause(&mut self) {
        self.resync = true;
    }

    pub(crate) fn rewrite(&mut self, seq: u16) -> u16 {
        if self.resync || self.highest.is_none() {
            let next = self.highest.map_or(seq, |h| h.wrapping_add(1));
            self.offset = seq.wrapping_sub(next);
            self.resync = false;
        }
        let out = seq.wrapping_sub(self.offset);
        // Reordered packets keep their relative place; only a newer packet
        // (modulo 2^16) moves the high mark.
        match self.highest {
            Some(h) if out.wrapping_sub(h) >= 0x8000 => {}
            _ => self.highest = Some(out),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_a_continuous_run_through_unchanged() {
        let mut r = SeqRewriter::default();
        let out: Vec<u16> = (100..105).map(|s| r.rewrite(s)).collect();
        assert_eq!(out, vec![100, 101, 102, 103, 104]);
    }

    #[test]
    fn closes_the_gap_left_by_a_pause() {
        let mut r = SeqRewriter::default();
        assert_eq!(r.rewrite(10), 10);
        assert_eq!(r.rewrite(11), 11);
        r.pause();
        // The publisher kept sending while muted; 500 packets were dropped.
        assert_eq!(r.rewrite(512), 12);
        assert_eq!(r.rewrite(513), 13);
    }

    #[test]
    fn keeps_reordering_and_wraps() {
        let mut r = SeqRewriter::default();
        assert_eq!(r.rewrite(65534), 65534);
        assert_eq!(r.rewrite(0), 0);
        assert_eq!(r.rewrite(65535), 65535);
        assert_eq!(r.rewrite(1), 1);
        r.pause();
        assert_eq!(r.rewrite(40000), 2);
    }
}
