//! One simulated participant, from join to leave, in one task.
//!
//! The task joins (holding one of the join slots, so joins are spread over
//! time instead of all handshaking at once), reports that it has, then waits
//! for the start signal; from then on publishers send on a tokio interval
//! while everyone records what arrives. At the stop signal sending ends and
//! receiving goes on until the packets still in flight have landed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::plan::Spec;
use super::source::{self, AudioLoop, VideoFrames};
use super::stats::{Live, TrackStats};
use crate::client::{Participant, ParticipantOptions};
use crate::ids::UserId;
use crate::model::{MediaKind, Mode, Role};

/// After the stop signal, receiving ends once nothing has arrived for this
/// long (packets in flight, retransmissions) ...
const DRAIN_IDLE: Duration = Duration::from_millis(300);
/// ... or after this long at most.
const DRAIN_MAX: Duration = Duration::from_secs(3);
/// How often the signaling side is looked at: events drained, closure noticed.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Leaving may take this long before the participant is simply dropped.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every participant shares: settings, media, counters.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The signaling URLs, one per node; a participant's `Spec::node` picks.
    pub urls: Vec<String>,
    pub video: bool,
    /// Local address for ICE.
    pub bind: SocketAddr,
    pub join_timeout: Duration,
    /// Joins in progress at once.
    pub join_slots: Semaphore,
    pub audio: AudioLoop,
    pub frames: VideoFrames,
    pub live: Live,
    /// Arrival times are measured from here.
    pub epoch: Instant,
}

/// When to start and stop sending; shared by every driver.
#[derive(Clone, Debug, Default)]
pub(crate) struct Signals {
    pub start: CancellationToken,
    pub stop: CancellationToken,
}

/// Packets a publisher sent, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sent {
    pub audio: u64,
    pub video: u64,
}

/// How one participant's run went.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub spec: Spec,
    /// How long joining took, or why it failed.
    pub join: Result<Duration, String>,
    pub sent: Sent,
    /// What this participant received, by sender and kind.
    pub tracks: HashMap<(UserId, MediaKind), TrackStats>,
    /// What went wrong after joining (the first failed send, a closed
    /// connection), if anything did.
    pub error: Option<String>,
}

/// Runs one participant. `joined` is told whether the join succeeded as
/// soon as it is known.
pub(crate) async fn drive(
    spec: Spec,
    shared: Arc<Shared>,
    joined: oneshot::Sender<bool>,
    signals: Signals,
) -> Outcome {
    let mut outcome = Outcome {
        spec,
        join: Err(String::new()),
        sent: Sent::default(),
        tracks: HashMap::new(),
        error: None,
    };
    let participant = match join(&outcome.spec, &shared).await {
        Ok((participant, took)) => {
            Live::add(&shared.live.joined, 1);
            outcome.join = Ok(took);
            participant
        }
        Err(cause) => {
            Live::add(&shared.live.join_failed, 1);
            outcome.join = Err(cause);
            let _ = joined.send(false);
            return outcome;
        }
    };
    let _ = joined.send(true);
    let mut participant = participant;
    run(&mut participant, &mut outcome, &shared, &signals).await;
    match tokio::time::timeout(LEAVE_TIMEOUT, participant.leave()).await {
        Ok(Ok(())) => {}
        // A connection that closed during the run shows here if nothing
        // noticed it earlier.
        Ok(Err(e)) => {
            outcome.error.get_or_insert_with(|| format!("leaving: {e}"));
        }
        Err(_) => {
            outcome
                .error
                .get_or_insert_with(|| format!("leaving took longer than {LEAVE_TIMEOUT:?}"));
        }
    }
    outcome
}

async fn join(spec: &Spec, shared: &Shared) -> Result<(Participant, Duration), String> {
    // The semaphore is never closed, so acquiring only waits.
    let _slot = shared
        .join_slots
        .acquire()
        .await
        .map_err(|_| "the run was cancelled".to_owned())?;
    let mut options = ParticipantOptions::new(&shared.urls[spec.node], &spec.token, &spec.room);
    options.mode = if shared.video {
        Mode::Video
    } else {
        Mode::Audio
    };
    options.role = Some(if spec.publisher {
        Role::Interactor
    } else {
        Role::Audience
    });
    options.create = spec.publisher;
    options.publish_audio = spec.publisher;
    options.publish_video = spec.publisher && shared.video;
    options.bind = shared.bind;
    options.timeout = shared.join_timeout;
    let started = Instant::now();
    let participant = Participant::join(options)
        .await
        .map_err(|e| e.to_string())?;
    Ok((participant, started.elapsed()))
}

/// Per publisher: where its audio and video streams are.
struct Sender {
    audio_frames: u64,
    video_frames: u64,
    audio_ts: u32,
    video_seq: u16,
    video_ts: u32,
}

fn interval(period: Duration) -> Interval {
    let mut tick = tokio::time::interval(period);
    // A late tick sends at once to catch up, so the rate over the run is
    // what was asked; lateness then shows as jitter at the receivers.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    tick
}

async fn run(
    participant: &mut Participant,
    outcome: &mut Outcome,
    shared: &Shared,
    signals: &Signals,
) {
    let publisher = outcome.spec.publisher;
    let mut audio_tick = interval(source::AUDIO_INTERVAL);
    let mut video_tick = interval(source::VIDEO_INTERVAL);
    let mut housekeeping = interval(HOUSEKEEPING);
    let mut sender = Sender {
        audio_frames: 0,
        video_frames: 0,
        audio_ts: rand::random(),
        video_seq: rand::random(),
        video_ts: rand::random(),
    };
    let (mut started, mut sending, mut stopping) = (false, false, false);
    // Armed at the stop signal.
    let drain_deadline = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(drain_deadline);
    loop {
        let idle = if stopping {
            DRAIN_IDLE
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = signals.start.cancelled(), if !started => {
                started = true;
                sending = publisher && !stopping;
                audio_tick = interval(source::AUDIO_INTERVAL);
                video_tick = interval(source::VIDEO_INTERVAL);
            }
            _ = signals.stop.cancelled(), if !stopping => {
                stopping = true;
                sending = false;
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_MAX);
            }
            _ = &mut drain_deadline, if stopping => break,
            _ = audio_tick.tick(), if sending => {
                let (payload, level) = shared.audio.frame(sender.audio_frames);
                sender.audio_frames += 1;
                let sent = participant.send_audio(payload, sender.audio_ts, *level).await;
                sender.audio_ts = sender.audio_ts.wrapping_add(source::AUDIO_TICKS);
                counted(sent, MediaKind::Audio, outcome, shared);
            }
            _ = video_tick.tick(), if sending && shared.video => {
                send_frame(participant, &mut sender, outcome, shared).await;
            }
            received = participant.next_packet(idle) => match received {
                Some(r) => {
                    let clock = match r.kind {
                        MediaKind::Audio => source::AUDIO_CLOCK,
                        MediaKind::Video => source::VIDEO_CLOCK,
                    };
                    let seq = r.packet.header.sequence_number;
                    let arrival = r.at.saturating_duration_since(shared.epoch);
                    outcome
                        .tracks
                        .entry((r.user, r.kind))
                        .or_insert_with(|| TrackStats::new(clock, seq))
                        .packet(seq, r.packet.header.timestamp, arrival);
                    Live::add(&shared.live.received, 1);
                }
                None if stopping => break,
                None => {}
            },
            _ = housekeeping.tick() => {
                // Events are not needed (offers are answered by the client);
                // drain them so they do not pile up.
                while participant.try_event().is_some() {}
                if let Some((code, reason)) = participant.signal().close_frame() {
                    outcome.error.get_or_insert_with(|| {
                        format!("the server closed the connection ({code}: {reason})")
                    });
                    break;
                }
            }
        }
    }
}

/// Sends one video frame as a few RTP packets, the last one marked.
async fn send_frame(
    participant: &Participant,
    sender: &mut Sender,
    outcome: &mut Outcome,
    shared: &Shared,
) {
    let payloads = shared.frames.frame(sender.video_frames);
    sender.video_frames += 1;
    let Some(media) = participant.media() else {
        return;
    };
    for (i, payload) in payloads.iter().enumerate() {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: i + 1 == payloads.len(),
                sequence_number: sender.video_seq,
                timestamp: sender.video_ts,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        sender.video_seq = sender.video_seq.wrapping_add(1);
        let sent = media.send_video(packet).await;
        counted(sent, MediaKind::Video, outcome, shared);
    }
    sender.video_ts = sender.video_ts.wrapping_add(source::VIDEO_TICKS);
}

/// Counts a send, or keeps the first failure as the participant's error.
fn counted(
    result: Result<(), crate::client::ClientError>,
    kind: MediaKind,
    outcome: &mut Outcome,
    shared: &Shared,
) {
    match result {
        Ok(()) => {
            match kind {
                MediaKind::Audio => outcome.sent.audio += 1,
                MediaKind::Video => outcome.sent.video += 1,
            }
            Live::add(&shared.live.sent, 1);
        }
        Err(e) => {
            Live::add(&shared.live.send_errors, 1);
            outcome.error.get_or_insert_with(|| format!("sending: {e}"));
        }
    }
}
