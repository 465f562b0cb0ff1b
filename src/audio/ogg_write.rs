//! Writing Ogg Opus files (RFC 7845), the format `opusenc` makes and every
//! player reads: how bots save what they heard.
//!
//! A recording must survive its writer being killed. So pages are short and
//! flushed as they are made: a page is closed after [`PACKETS_PER_PAGE`]
//! packets (one second of 20 ms packets, `opusenc`'s default too) and handed
//! to the operating system at once. A crash loses about that second, and
//! the reader accepts a file that stops without its end-of-stream page. A
//! page per packet would lose less but cost 28 bytes of header on every
//! ~80-byte packet; a page per second costs under 2%.

use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufWriter, Write};
use std::path::Path;

use ogg::{PacketWriteEndInfo, PacketWriter};

use super::ogg_read::with_path;
use super::{AudioError, Encoder, FRAME_SAMPLES, PRE_SKIP, SAMPLE_RATE, packet_samples};

/// Audio packets per Ogg page: one second at 20 ms.
const PACKETS_PER_PAGE: u64 = 50;

/// Writes one mono Opus stream into an Ogg file: `OpusHead` (version 1, one
/// channel, pre-skip [`PRE_SKIP`], input rate 48 kHz, mapping family 0) and
/// `OpusTags` (vendor "conclave") on pages of their own, then the audio
/// packets with granule positions counting their samples. Call
/// [`finish`](Self::finish) to mark the last page end-of-stream.
pub struct OggOpusWriter<W: Write> {
    ogg: PacketWriter<'static, W>,
    /// Random, as RFC 3533 asks, so files can be chained or multiplexed.
    serial: u32,
    /// The last packet given, with the granule position after it, written
    /// only when the next one arrives or at `finish`: the ogg crate sets a
    /// page's end-of-stream flag as it writes a packet, so the last packet is
    /// only known to be last when the stream ends. Starts as `OpusTags`, so
    /// that even a stream with no audio ends on a page marked end-of-stream.
    held: (Vec<u8>, u64),
    /// Samples in every packet given so far (the `held` one included).
    granule: u64,
    /// Audio packets given so far.
    packets: u64,
}

impl OggOpusWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes the headers.
    pub fn create(path: &Path) -> Result<Self, AudioError> {
        let file = File::create(path).map_err(|e| with_path(path, e.into()))?;
        OggOpusWriter::new(BufWriter::new(file)).map_err(|e| with_path(path, e))
    }
}

impl<W: Write> OggOpusWriter<W> {
    /// Writes the `OpusHead` page to `out` (and flushes it).
    pub fn new(out: W) -> Result<Self, AudioError> {
        let serial = RandomState::new().hash_one(std::time::SystemTime::now()) as u32;
        let mut ogg = PacketWriter::new(out);
        ogg.write_packet(opus_head(), serial, PacketWriteEndInfo::EndPage, 0)?;
        ogg.inner_mut().flush()?;
        Ok(OggOpusWriter {
            ogg,
            serial,
            held: (opus_tags(), 0),
            granule: 0,
            packets: 0,
        })
    }

    /// Appends one Opus packet. It must be a well-formed packet (its length,
    /// read from its TOC byte, goes into the granule positions).
    pub fn write_packet(&mut self, packet: &[u8]) -> Result<(), AudioError> {
        let samples = packet_samples(packet).ok_or_else(|| {
            AudioError::Codec(format!(
                "refusing to write a malformed {}-byte packet",
                packet.len()
            ))
        })?;
        self.granule += samples as u64;
        let previous = std::mem::replace(&mut self.held, (packet.to_vec(), self.granule));
        // `OpusTags` ends its page (RFC 7845 §3: audio starts on a fresh
        // page); audio pages end every PACKETS_PER_PAGE packets.
        let ends_page = self.packets.is_multiple_of(PACKETS_PER_PAGE);
        self.packets += 1;
        let end = if ends_page {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        self.ogg
            .write_packet(previous.0, self.serial, end, previous.1)?;
        if ends_page {
            self.ogg.inner_mut().flush()?;
        }
        Ok(())
    }

    /// Audio packets written so far (headers not counted).
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Writes the last page, marked end-of-stream, flushes, and returns the
    /// output. With no packets written the file is still valid: headers
    /// only, no audio.
    pub fn finish(self) -> Result<W, AudioError> {
        let granule = self.granule;
        self.end(granule)
    }

    /// Like [`finish`](Self::finish), but says the stream holds only its
    /// first `samples` samples (after pre-skip): players drop the rest of the
    /// last page, which is how a file ends mid-frame (RFC 7845 §4.5). Only
    /// the last packet can be trimmed; asking for more or less is clamped.
    pub fn finish_with_length(self, samples: u64) -> Result<W, AudioError> {
        let granule = if self.packets == 0 {
            0
        } else {
            let last_packet = packet_samples(&self.held.0).unwrap_or(0) as u64;
            let wanted = u64::from(PRE_SKIP) + samples;
            wanted.clamp(self.granule.saturating_sub(last_packet), self.granule)
        };
        self.end(granule)
    }

    fn end(mut self, granule: u64) -> Result<W, AudioError> {
        let (last, _) = self.held;
        self.ogg
            .write_packet(last, self.serial, PacketWriteEndInfo::EndStream, granule)?;
        let mut out = self.ogg.into_inner();
        out.flush()?;
        Ok(out)
    }
}

/// Encodes `pcm` (48 kHz mono) to an Ogg Opus file at `path`. The input is
/// padded with silence to whole frames, plus the encoder's look-ahead so its
/// last samples come out too, and the file's length says exactly
/// `pcm.len()` samples, so [`decode_ogg_opus`](super::decode_ogg_opus) gives
/// back as many as went in.
pub fn encode_ogg_opus(path: &Path, pcm: &[f32]) -> Result<(), AudioError> {
    let mut encoder = Encoder::new()?;
    let mut writer = OggOpusWriter::create(path)?;
    let frames = (pcm.len() + usize::from(PRE_SKIP)).div_ceil(FRAME_SAMPLES);
    let mut chunks = pcm.chunks(FRAME_SAMPLES);
    let mut encode = || -> Result<(), AudioError> {
        for _ in 0..frames {
            let mut frame = chunks.next().unwrap_or_default().to_vec();
            frame.resize(FRAME_SAMPLES, 0.0);
            writer.write_packet(&encoder.encode(&frame)?)?;
        }
        Ok(())
    };
    encode().map_err(|e| with_path(path, e))?;
    writer
        .finish_with_length(pcm.len() as u64)
        .map_err(|e| with_path(path, e))?;
    Ok(())
}

/// The identification header (RFC 7845 §5.1).
fn opus_head() -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&PRE_SKIP.to_le_bytes());
    head.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // input sample rate
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family 0: mono or stereo, no table
    head
}

/// The comment header (RFC 7845 §5.2): our vendor string, no comments.
fn opus_tags() -> Vec<u8> {
    const VENDOR: &[u8] = b"conclave";
    let mut tags = Vec::with_capacity(8 + 4 + VENDOR.len() + 4);
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(VENDOR.len() as u32).to_le_bytes());
    tags.extend_from_slice(VENDOR);
    tags.extend_from_slice(&0u32.to_le_bytes()); // comment count
    tags
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::audio::ogg_read::tests::{Page, pages};
    use crate::audio::read_ogg_opus_from;

    /// A valid 20 ms CELT packet for the writer (its content is not decoded).
    fn packet(n: u8) -> Vec<u8> {
        vec![0xF8, n, n.wrapping_mul(7), 3]
    }

    #[test]
    fn packets_round_trip_with_granules_pre_skip_and_flags() {
        let mut writer = OggOpusWriter::new(Vec::new()).unwrap();
        let sent: Vec<Vec<u8>> = (0..120).map(packet).collect();
        for p in &sent {
            writer.write_packet(p).unwrap();
        }
        assert_eq!(writer.packets(), 120);
        let bytes = writer.finish().unwrap();

        let file = read_ogg_opus_from(Cursor::new(&bytes)).unwrap();
        assert_eq!(file.channels, 1);
        assert_eq!(file.pre_skip, 312);
        assert_eq!(file.packets, sent);
        assert_eq!(file.granule_position, 120 * 960);

        // Head, tags, then audio pages of 50, 50 and 20 packets; the granule
        // of each counts every sample up to its last packet.
        let pages = pages(&bytes);
        let summary: Vec<(u8, u64, usize)> = pages
            .iter()
            .map(|p| (p.flags, p.granule, p.packets().len()))
            .collect();
        assert_eq!(
            summary,
            [
                (0x02, 0, 1),
                (0, 0, 1),
                (0, 50 * 960, 50),
                (0, 100 * 960, 50),
                (0x04, 120 * 960, 20)
            ]
        );
        assert!(pages.iter().all(|p| p.serial == pages[0].serial));
        assert!(
            pages
                .iter()
                .enumerate()
                .all(|(i, p)| p.sequence == i as u32)
        );

        let head = &pages[0].packets()[0];
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!(head[8..], [1, 1, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0]);
        let tags = &pages[1].packets()[0];
        assert_eq!(&tags[..], b"OpusTags\x08\0\0\0conclave\0\0\0\0");
    }

    #[test]
    fn a_file_with_no_audio_is_still_valid_and_ends() {
        let bytes = OggOpusWriter::new(Vec::new()).unwrap().finish().unwrap();
        let file = read_ogg_opus_from(Cursor::new(&bytes)).unwrap();
        assert!(file.packets.is_empty());
        assert_eq!(file.granule_position, 0);
        let flags: Vec<u8> = pages(&bytes).iter().map(|p: &Page| p.flags).collect();
        assert_eq!(flags, [0x02, 0x04]);
    }

    #[test]
    fn pages_reach_the_output_as_they_close() {
        let mut writer = OggOpusWriter::new(Vec::new()).unwrap();
        for n in 0..51 {
            writer.write_packet(&packet(n)).unwrap();
        }
        // Without `finish`, as after a crash: head, tags and one full second.
        let so_far = writer.ogg.inner().clone();
        let file = read_ogg_opus_from(Cursor::new(&so_far)).unwrap();
        assert_eq!(file.packets.len(), 50);
    }

    #[test]
    fn trimming_sets_the_last_granule_within_the_last_packet() {
        let trimmed = |packets: u8, samples: u64| {
            let mut writer = OggOpusWriter::new(Vec::new()).unwrap();
            for n in 0..packets {
                writer.write_packet(&packet(n)).unwrap();
            }
            let bytes = writer.finish_with_length(samples).unwrap();
            read_ogg_opus_from(Cursor::new(&bytes))
                .unwrap()
                .granule_position
        };
        assert_eq!(trimmed(3, 2000), 312 + 2000);
        assert_eq!(trimmed(3, 10_000), 3 * 960);
        assert_eq!(trimmed(3, 0), 2 * 960);
        assert_eq!(trimmed(0, 100), 0);
    }

    #[test]
    fn malformed_packets_are_refused() {
        let mut writer = OggOpusWriter::new(Vec::new()).unwrap();
        assert!(matches!(
            writer.write_packet(&[]),
            Err(AudioError::Codec(_))
        ));
        assert_eq!(writer.packets(), 0);
    }
}
