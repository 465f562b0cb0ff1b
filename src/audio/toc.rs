//! How many samples an Opus packet holds, read from its TOC byte (RFC 6716
//! §3.1) without decoding it.
//!
//! The Ogg writer needs this for granule positions, the decoder to size its
//! output, and a receiver to count what it got; none of them should pay for a
//! decode, and all of them must survive a malformed packet.

/// Longest packet Opus allows: 120 ms (RFC 6716 §3.2.5).
const MAX_SAMPLES: usize = 5760;

/// Samples at 48 kHz in `packet`, from its TOC byte and (for code 3) its
/// frame-count byte; `None` if the packet is malformed: empty, a code 1
/// packet whose two frames cannot be equal halves, a code 2 or 3 packet
/// missing its length or count byte, zero frames, or over 120 ms.
pub fn packet_samples(packet: &[u8]) -> Option<usize> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame duration in units of 2.5 ms (120 samples at 48 kHz).
    let units = match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [4, 8][usize::from(config % 2)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frame = units * 120;
    let frames = match toc & 0x03 {
        0 => 1,
        // Two frames of equal size (RFC 6716 §3.2.2, rule R3).
        1 if (packet.len() - 1).is_multiple_of(2) => 2,
        1 => return None,
        // Two frames, the first one's length follows the TOC.
        2 if packet.len() >= 2 => 2,
        2 => return None,
        // An arbitrary number of frames, counted in the next byte's low bits.
        _ => match packet.get(1)? & 0x3F {
            0 => return None,
            n => usize::from(n),
        },
    };
    let total = frame * frames;
    (total <= MAX_SAMPLES).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TOC byte from its three fields.
    fn toc(config: u8, stereo: bool, code: u8) -> u8 {
        config << 3 | u8::from(stereo) << 2 | code
    }

    #[test]
    fn frame_durations_follow_the_config_table() {
        // SILK 10/20/40/60 ms (narrowband and wideband alike).
        assert_eq!(packet_samples(&[toc(0, false, 0)]), Some(480));
        assert_eq!(packet_samples(&[toc(1, false, 0)]), Some(960));
        assert_eq!(packet_samples(&[toc(2, false, 0)]), Some(1920));
        assert_eq!(packet_samples(&[toc(11, false, 0)]), Some(2880));
        // Hybrid fullband 10/20 ms.
        assert_eq!(packet_samples(&[toc(14, false, 0)]), Some(480));
        assert_eq!(packet_samples(&[toc(15, false, 0)]), Some(960));
        // CELT fullband 2.5/5/10/20 ms; the stereo bit changes nothing.
        assert_eq!(packet_samples(&[toc(28, false, 0)]), Some(120));
        assert_eq!(packet_samples(&[toc(29, true, 0)]), Some(240));
        assert_eq!(packet_samples(&[toc(31, true, 0), 1, 2]), Some(960));
    }

    #[test]
    fn frame_count_codes() {
        // Code 1: two equal frames, so the payload length must be even.
        assert_eq!(packet_samples(&[toc(31, false, 1), 1, 2]), Some(1920));
        assert_eq!(packet_samples(&[toc(31, false, 1), 1]), None);
        // Code 2: two frames, the first one's length byte must be there.
        assert_eq!(packet_samples(&[toc(31, false, 2), 0]), Some(1920));
        assert_eq!(packet_samples(&[toc(31, false, 2)]), None);
        // Code 3: the count is the low six bits of the second byte.
        assert_eq!(packet_samples(&[toc(31, false, 3), 3]), Some(2880));
        assert_eq!(packet_samples(&[toc(31, false, 3), 0x80 | 6]), Some(5760));
    }

    #[test]
    fn malformed_packets_have_no_length() {
        assert_eq!(packet_samples(&[]), None);
        // Code 3 without its count byte, or with zero frames.
        assert_eq!(packet_samples(&[toc(31, false, 3)]), None);
        assert_eq!(packet_samples(&[toc(31, false, 3), 0]), None);
        // 7 × 20 ms = 140 ms, over the 120 ms limit; 48 × 2.5 ms is fine.
        assert_eq!(packet_samples(&[toc(31, false, 3), 7]), None);
        assert_eq!(packet_samples(&[toc(28, false, 3), 48]), Some(5760));
        assert_eq!(packet_samples(&[toc(28, false, 3), 49]), None);
    }
}
