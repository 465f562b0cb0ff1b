//! Reading Ogg Opus files (RFC 7845): what bots play into a room, and how a
//! test reads back what a bot recorded.
//!
//! The ogg crate reassembles packets from pages (many packets on a page, one
//! packet across pages); this file checks that the stream is Opus and keeps
//! its audio packets. Any failure names the file and what is wrong with it.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek};
use std::path::Path;

use ogg::{OggReadError, Packet, PacketReader};

use super::{AudioError, Decoder};

/// An Ogg Opus stream read whole: its header fields and its audio packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggOpus {
    /// 1 (mono) or 2 (stereo): only mapping family 0 is accepted.
    pub channels: u8,
    /// Samples to drop from the start of the decoded audio (RFC 7845 §4.2).
    pub pre_skip: u16,
    /// The audio packets, in order, headers excluded.
    pub packets: Vec<Vec<u8>>,
    /// The granule position of the last page: decoded samples including
    /// pre-skip. Less than the packets' total when the end is trimmed
    /// (RFC 7845 §4.5); 0 with no audio.
    pub granule_position: u64,
}

/// Reads the Ogg Opus file at `path` whole. Errors name the file.
pub fn read_ogg_opus(path: &Path) -> Result<OggOpus, AudioError> {
    let file = File::open(path).map_err(|e| with_path(path, e.into()))?;
    read_ogg_opus_from(BufReader::new(file)).map_err(|e| with_path(path, e))
}

/// Reads an Ogg Opus stream whole: checks `OpusHead`, skips `OpusTags`, and
/// collects the audio packets of that logical stream (pages of any other
/// stream multiplexed in are ignored). A stream cut off mid-page, as a crash
/// while recording leaves it, gives the packets before the cut.
pub fn read_ogg_opus_from(reader: impl Read + Seek) -> Result<OggOpus, AudioError> {
    let mut ogg = PacketReader::new(reader);
    let head = next_packet(&mut ogg)?
        .ok_or_else(|| not_opus("no Ogg page found (not an Ogg file, or empty)"))?;
    let serial = head.stream_serial();
    let (channels, pre_skip) = parse_opus_head(&head.data)?;
    let next_of_stream = |ogg: &mut PacketReader<_>| -> Result<Option<Packet>, AudioError> {
        while let Some(packet) = next_packet(ogg)? {
            if packet.stream_serial() == serial {
                return Ok(Some(packet));
            }
        }
        Ok(None)
    };

    let tags = next_of_stream(&mut ogg)?
        .ok_or_else(|| not_opus("stream ends after OpusHead, without OpusTags"))?;
    if !tags.data.starts_with(b"OpusTags") {
        return Err(not_opus(&format!(
            "second packet should be OpusTags, starts with \"{}\"",
            magic(&tags.data)
        )));
    }

    let mut packets = Vec::new();
    let mut granule_position = 0;
    loop {
        match next_of_stream(&mut ogg) {
            Ok(Some(packet)) => {
                granule_position = packet.absgp_page();
                packets.push(packet.data);
            }
            Ok(None) => break,
            Err(AudioError::NotOggOpus(why)) if why == TRUNCATED && !packets.is_empty() => {
                tracing::warn!(
                    packets = packets.len(),
                    "Ogg Opus stream is cut short mid-page"
                );
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(OggOpus {
        channels,
        pre_skip,
        packets,
        granule_position,
    })
}

/// Reads the Ogg Opus file at `path` and decodes it to 48 kHz mono (stereo is
/// downmixed), dropping the pre-skip samples at the start and any samples
/// past the end the granule position gives.
pub fn decode_ogg_opus(path: &Path) -> Result<Vec<f32>, AudioError> {
    let file = read_ogg_opus(path)?;
    let mut decoder = Decoder::new()?;
    let mut pcm = Vec::new();
    for (n, packet) in file.packets.iter().enumerate() {
        let samples = decoder
            .decode(packet)
            .map_err(|e| with_path(path, AudioError::Codec(format!("audio packet {n}: {e}"))))?;
        pcm.extend(samples);
    }
    let end = usize::try_from(file.granule_position)
        .unwrap_or(usize::MAX)
        .min(pcm.len());
    pcm.truncate(end);
    pcm.drain(..usize::from(file.pre_skip).min(pcm.len()));
    Ok(pcm)
}

/// The message for a stream that stops inside a page.
const TRUNCATED: &str = "stream cut off inside an Ogg page";

fn next_packet<R: Read + Seek>(ogg: &mut PacketReader<R>) -> Result<Option<Packet>, AudioError> {
    ogg.read_packet().map_err(|e| match e {
        OggReadError::NoCapturePatternFound => not_opus("no Ogg page found in the first 150 KiB"),
        OggReadError::InvalidStreamStructVer(v) => {
            not_opus(&format!("Ogg page of unknown structure version {v}"))
        }
        OggReadError::HashMismatch(..) => not_opus("corrupt Ogg page (CRC mismatch)"),
        OggReadError::InvalidData => not_opus("malformed Ogg page"),
        OggReadError::ReadError(e) if e.kind() == ErrorKind::UnexpectedEof => not_opus(TRUNCATED),
        OggReadError::ReadError(e) => AudioError::Io(e),
    })
}

/// Checks the identification header (RFC 7845 §5.1) and returns its channel
/// count and pre-skip.
fn parse_opus_head(head: &[u8]) -> Result<(u8, u16), AudioError> {
    if !head.starts_with(b"OpusHead") {
        return Err(not_opus(&format!(
            "first packet should be OpusHead, starts with \"{}\"",
            magic(head)
        )));
    }
    if head.len() < 19 {
        return Err(not_opus(&format!(
            "OpusHead is {} bytes, at least 19 expected",
            head.len()
        )));
    }
    let version = head[8];
    if version >> 4 != 0 {
        // The major version is the high nibble; minor versions stay readable.
        return Err(not_opus(&format!(
            "OpusHead version {version} is not supported"
        )));
    }
    let channels = head[9];
    let pre_skip = u16::from_le_bytes([head[10], head[11]]);
    let mapping_family = head[18];
    if mapping_family != 0 {
        return Err(not_opus(&format!(
            "channel mapping family {mapping_family} (multichannel) is not supported"
        )));
    }
    if !(1..=2).contains(&channels) {
        return Err(not_opus(&format!(
            "OpusHead says {channels} channels, mapping 0 allows 1 or 2"
        )));
    }
    Ok((channels, pre_skip))
}

fn not_opus(why: &str) -> AudioError {
    AudioError::NotOggOpus(why.to_owned())
}

/// The first bytes of a packet, printable, to show what it is instead.
fn magic(data: &[u8]) -> String {
    data[..data.len().min(8)].escape_ascii().to_string()
}

/// Puts `path` in front of an error's message, so it says which file.
pub(super) fn with_path(path: &Path, error: AudioError) -> AudioError {
    let path = path.display();
    match error {
        AudioError::NotOggOpus(why) => AudioError::NotOggOpus(format!("{path}: {why}")),
        AudioError::Codec(why) => AudioError::Codec(format!("{path}: {why}")),
        AudioError::Io(e) => AudioError::Io(std::io::Error::new(e.kind(), format!("{path}: {e}"))),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! A hand-rolled Ogg page builder and parser, independent of the ogg
    //! crate, so the tests check the bytes against RFC 3533 and not the crate
    //! against itself.

    use std::io::Cursor;

    use super::*;

    /// CRC-32 as Ogg computes it: polynomial 0x04C11DB7, not reflected, zero
    /// initial value and no final xor.
    fn crc(data: &[u8]) -> u32 {
        data.iter().fold(0u32, |mut crc, &byte| {
            crc ^= u32::from(byte) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    crc << 1 ^ 0x04C1_1DB7
                } else {
                    crc << 1
                };
            }
            crc
        })
    }

    /// One Ogg page, parsed.
    #[derive(Debug)]
    pub struct Page {
        pub flags: u8,
        pub granule: u64,
        pub serial: u32,
        pub sequence: u32,
        pub lacing: Vec<u8>,
        pub body: Vec<u8>,
    }

    impl Page {
        /// The packets that end on this page (whole, if none started earlier).
        pub fn packets(&self) -> Vec<Vec<u8>> {
            let (mut packets, mut current, mut at) = (Vec::new(), Vec::new(), 0);
            for &len in &self.lacing {
                current.extend_from_slice(&self.body[at..at + usize::from(len)]);
                at += usize::from(len);
                if len < 255 {
                    packets.push(std::mem::take(&mut current));
                }
            }
            packets
        }

        /// The page's bytes, with its checksum.
        pub fn to_bytes(&self) -> Vec<u8> {
            let mut bytes = b"OggS\0".to_vec();
            bytes.push(self.flags);
            bytes.extend_from_slice(&self.granule.to_le_bytes());
            bytes.extend_from_slice(&self.serial.to_le_bytes());
            bytes.extend_from_slice(&self.sequence.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            bytes.push(self.lacing.len() as u8);
            bytes.extend_from_slice(&self.lacing);
            bytes.extend_from_slice(&self.body);
            let crc = crc(&bytes);
            bytes[22..26].copy_from_slice(&crc.to_le_bytes());
            bytes
        }
    }

    /// Splits a stream into pages, checking each one's capture pattern and CRC.
    pub fn pages(mut bytes: &[u8]) -> Vec<Page> {
        let mut pages = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(&bytes[..5], b"OggS\0");
            let segments = usize::from(bytes[26]);
            let lacing = bytes[27..27 + segments].to_vec();
            let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let len = 27 + segments + body_len;
            let page = Page {
                flags: bytes[5],
                granule: u64::from_le_bytes(bytes[6..14].try_into().unwrap()),
                serial: u32::from_le_bytes(bytes[14..18].try_into().unwrap()),
                sequence: u32::from_le_bytes(bytes[18..22].try_into().unwrap()),
                lacing,
                body: bytes[27 + segments..len].to_vec(),
            };
            assert_eq!(
                page.to_bytes(),
                bytes[..len],
                "page {} checksum",
                page.sequence
            );
            pages.push(page);
            bytes = &bytes[len..];
        }
        pages
    }

    /// A page of whole packets.
    fn page(flags: u8, granule: u64, sequence: u32, packets: &[&[u8]]) -> Page {
        let mut lacing = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat_n(255, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        Page {
            flags,
            granule,
            serial: 7,
            sequence,
            lacing,
            body: packets.concat(),
        }
    }

    fn head(pre_skip: u16) -> Vec<u8> {
        let mut head = b"OpusHead\x01\x01".to_vec();
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        head
    }

    fn read(pages: &[Page]) -> Result<OggOpus, AudioError> {
        read_ogg_opus_from(Cursor::new(
            pages.iter().flat_map(Page::to_bytes).collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn many_packets_on_one_page_and_one_packet_across_pages() {
        let big: Vec<u8> = (0..700).map(|i| i as u8).collect();
        // The big packet: 510 bytes on page 3 (lacing 255, 255, no end),
        // the other 190 on page 4, flagged as a continuation.
        let mut split = page(0, 0, 3, &[]);
        split.lacing = vec![255, 255];
        split.body = big[..510].to_vec();
        let mut rest = page(0x01 | 0x04, 4 * 960, 4, &[]);
        rest.lacing = vec![190];
        rest.body = big[510..].to_vec();
        assert_eq!(rest.packets(), [big[510..].to_vec()]);

        let file = read(&[
            page(0x02, 0, 0, &[&head(120)]),
            page(0, 0, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]),
            page(0, 3 * 960, 2, &[&[0xF8, 1], &[0xF8, 2, 2], &[0xF8; 255]]),
            split,
            rest,
        ])
        .unwrap();
        assert_eq!(
            (file.channels, file.pre_skip, file.granule_position),
            (1, 120, 4 * 960)
        );
        assert_eq!(
            file.packets,
            [vec![0xF8, 1], vec![0xF8, 2, 2], vec![0xF8; 255], big]
        );
    }

    #[test]
    fn other_logical_streams_are_skipped() {
        let mut other = page(0x02, 0, 0, &[b"\x80theora"]);
        other.serial = 99;
        let file = read(&[
            page(0x02, 0, 0, &[&head(312)]),
            other,
            page(0, 0, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]),
            page(0x04, 960, 2, &[&[0xF8, 1]]),
        ])
        .unwrap();
        assert_eq!(file.packets, [vec![0xF8, 1]]);
    }

    #[test]
    fn garbage_is_not_ogg_opus_and_the_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("noise.opus");
        std::fs::write(
            &path,
            b"RIFF\x24\0\0\0WAVEfmt this is not an ogg file at all",
        )
        .unwrap();
        let err = read_ogg_opus(&path).unwrap_err();
        assert!(matches!(err, AudioError::NotOggOpus(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("noise.opus") && message.contains("no Ogg page"),
            "{message}"
        );

        let missing = dir.path().join("missing.opus");
        let err = read_ogg_opus(&missing).unwrap_err();
        assert!(matches!(err, AudioError::Io(_)) && err.to_string().contains("missing.opus"));
    }

    #[test]
    fn an_ogg_stream_that_is_not_opus_says_what_it_found() {
        let vorbis = read(&[page(0x02, 0, 0, &[b"\x01vorbis\0\0\0\0\x01"])]).unwrap_err();
        assert!(matches!(vorbis, AudioError::NotOggOpus(_)));
        let message = vorbis.to_string();
        assert!(
            message.contains("OpusHead") && message.contains("vorbis"),
            "{message}"
        );

        let mut v2 = head(312);
        v2[8] = 0x20;
        assert!(
            read(&[page(0x02, 0, 0, &[&v2])])
                .unwrap_err()
                .to_string()
                .contains("version 32")
        );
        assert!(
            read(&[page(0x02, 0, 0, &[&head(312)[..15]])])
                .unwrap_err()
                .to_string()
                .contains("19")
        );
        let mut surround = head(312);
        surround[9] = 6;
        surround[18] = 1;
        assert!(
            read(&[page(0x02, 0, 0, &[&surround])])
                .unwrap_err()
                .to_string()
                .contains("family 1")
        );
        let no_tags = read(&[page(0x02, 0, 0, &[&head(312)])]).unwrap_err();
        assert!(
            no_tags.to_string().contains("without OpusTags"),
            "{no_tags}"
        );
        let wrong_tags = read(&[page(0x02, 0, 0, &[&head(312)]), page(0, 0, 1, &[b"nope"])]);
        assert!(wrong_tags.unwrap_err().to_string().contains("OpusTags"));

        let mut corrupt = page(0x02, 0, 0, &[&head(312)]).to_bytes();
        corrupt[30] ^= 0xFF;
        let err = read_ogg_opus_from(Cursor::new(corrupt)).unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
    }

    #[test]
    fn a_stream_cut_mid_page_keeps_the_packets_before_the_cut() {
        let mut bytes: Vec<u8> = [
            page(0x02, 0, 0, &[&head(312)]),
            page(0, 0, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]),
            page(0, 960, 2, &[&[0xF8, 1]]),
            page(0x04, 1920, 3, &[&[0xF8, 2, 2, 2, 2, 2, 2, 2]]),
        ]
        .iter()
        .flat_map(Page::to_bytes)
        .collect();
        bytes.truncate(bytes.len() - 3);
        let file = read_ogg_opus_from(Cursor::new(bytes)).unwrap();
        assert_eq!(file.packets, [vec![0xF8, 1]]);
        assert_eq!(file.granule_position, 960);
    }
}
