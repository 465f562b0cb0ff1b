//! conclave's own interceptors in webrtc-rs's RTP/RTCP chain.
//!
//! webrtc-rs ends every chain with a terminus that drops all inbound RTCP
//! unless an interceptor marked the packet `Attribute::DeliverToApplication`
//! (rtc-interceptor 0.21, `NoopInterceptor::handle_read`), and none of its
//! stock interceptors marks anything. So without [`KeyframeRequests`] a
//! subscriber's PLI never leaves the chain and cannot be relayed to the
//! publisher; the same holds for a client that wants to hear keyframe
//! requests about what it publishes.
//!
//! - [`KeyframeRequests`] (both ends, application-most): lets PLI and FIR
//!   through to the application, alone. NACKs, receiver reports and
//!   transport feedback stay with the interceptors that act on them.
//! - [`SsrcGuard`] (server, wire-most): drops RTP whose SSRC was never bound
//!   to a receive stream, and counts it, before any interceptor spends work
//!   or state on it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use super::MediaMetrics;

/// After every stock interceptor, the jitter buffer (13 000) included: the
/// compound is cut down to its keyframe requests here, and everything
/// wire-ward must still see the whole of it.
pub(crate) const KEYFRAME_REQUESTS_SLOT: usize = 14_000;
/// Before the congestion controller (1 000), the first stock slot: a forged
/// stream should reach nothing that keeps per-packet state.
pub(crate) const SSRC_GUARD_SLOT: usize = 500;

pub(crate) fn keyframe_requests_slot() -> Slot {
    Slot::from(KEYFRAME_REQUESTS_SLOT)
}

pub(crate) fn ssrc_guard_slot() -> Slot {
    Slot::from(SSRC_GUARD_SLOT)
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Delivers inbound PLI and FIR to the application.
///
/// A compound that holds one is reduced to its keyframe requests: rtc files
/// delivered RTCP under the first packet's media SSRC
/// (`EndpointHandler::handle_rtcp_message`), and a browser's compound starts
/// with a receiver report whose first block may name another track, or none.
#[derive(Default)]
pub(crate) struct KeyframeRequests {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet
            && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
        {
            packets.retain(|p| is_keyframe_request(p.as_ref()));
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Drops inbound RTP on an SSRC no receive stream owns.
///
/// rtc binds a stream to the chain just before its first packet enters it
/// (`InterceptorHandler::ensure_remote_stream_bound`), from the SSRCs the
/// answer declared (or, with a single m-line, whatever arrives first). What
/// is still unbound here would be dropped silently by rtc's endpoint after
/// every interceptor had seen it; here it is dropped first and counted.
pub(crate) struct SsrcGuard {
    metrics: Arc<MediaMetrics>,
    bound: HashSet<u32>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl SsrcGuard {
    pub(crate) fn new(metrics: Arc<MediaMetrics>) -> SsrcGuard {
        SsrcGuard {
            metrics,
            bound: HashSet::new(),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for SsrcGuard {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtp(rtp) = &msg.message.packet
            && !self.bound.contains(&rtp.header.ssrc)
        {
            self.metrics.dropped("unknown_ssrc");
            return Ok(());
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for SsrcGuard {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        // rtc binds repair flows (RTX, FEC) as streams of their own too;
        // taking them from the primary's info as well costs nothing.
        self.bound.insert(info.ssrc);
        self.bound.extend(info.ssrc_rtx);
        self.bound.extend(info.ssrc_fec);
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.bound.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{AttributedPacket, Registry};
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::shared::TransportContext;

    fn tagged(packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    /// Everything the chain hands the application for one inbound packet.
    fn read_through(chain: &mut impl Interceptor, packet: Packet) -> Vec<Packet> {
        chain.handle_read(tagged(packet)).expect("read");
        let mut out = Vec::new();
        while let Some(p) = chain.poll_read() {
            out.push(p.message.packet);
        }
        out
    }

    fn compound(pli_for: Option<u32>) -> Packet {
        let mut packets: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(ReceiverReport {
            ssrc: 1,
            ..Default::default()
        })];
        if let Some(media_ssrc) = pli_for {
            packets.push(Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc,
            }));
        }
        Packet::Rtcp(packets)
    }

    #[test]
    fn a_stock_chain_delivers_no_rtcp_and_ours_delivers_only_the_pli() {
        // The behaviour this module exists for: the terminus eats the PLI.
        let mut stock = Registry::new().build();
        assert!(read_through(&mut stock, compound(Some(42))).is_empty());

        let mut ours = Registry::new()
            .with(keyframe_requests_slot(), KeyframeRequests::default())
            .build();
        let out = read_through(&mut ours, compound(Some(42)));
        let [Packet::Rtcp(packets)] = out.as_slice() else {
            panic!("expected one RTCP compound, got {out:?}");
        };
        assert_eq!(packets.len(), 1, "only the PLI is delivered");
        assert_eq!(packets[0].destination_ssrc(), vec![42]);
        // A report alone stays inside the chain.
        assert!(read_through(&mut ours, compound(None)).is_empty());
    }

    #[test]
    fn rtp_on_an_unbound_ssrc_is_dropped_and_counted() {
        let metrics = Arc::new(MediaMetrics::default());
        let mut chain = Registry::new()
            .with(ssrc_guard_slot(), SsrcGuard::new(metrics.clone()))
            .build();
        chain.bind_remote_stream(&StreamInfo {
            ssrc: 7,
            ..Default::default()
        });
        let rtp = |ssrc| {
            Packet::Rtp(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    ssrc,
                    ..Default::default()
                },
                payload: bytes::Bytes::from_static(b"x"),
            })
        };
        assert_eq!(read_through(&mut chain, rtp(7)).len(), 1);
        assert!(read_through(&mut chain, rtp(8)).is_empty());
        let dropped = metrics
            .dropped_packets
            .get_or_create(&crate::telemetry::ReasonLabel {
                reason: "unknown_ssrc",
            })
            .get();
        assert_eq!(dropped, 1);
    }
}
