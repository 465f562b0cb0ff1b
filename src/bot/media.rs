//! A bot's audio: what it sends (a file, a tone, or an echo of what it
//! hears) and what it records. Every packet is handled here, in Rust; the
//! script only starts and stops things.

use std::collections::{HashMap, VecDeque};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

use crate::audio::{self, Decoder, Encoder, FRAME_SAMPLES, OggOpusWriter};
use crate::client::media::MediaSession;
use crate::model::MediaKind;

/// One frame interval: every source sends a 20 ms Opus frame per tick.
const FRAME: Duration = Duration::from_millis(20);

/// What the media side tells the runner (and so the script).
#[derive(Debug)]
pub enum MediaEvent {
    /// Playback of a file that does not loop reached its end.
    PlayEnded,
    /// Something failed outside a hook: the API call it belongs to and why.
    Failed {
        action: &'static str,
        message: String,
    },
}

/// A prepared packet: Opus bytes, its duration and its RFC 6464 level.
#[derive(Clone, Debug)]
pub struct Frame {
    opus: Vec<u8>,
    samples: u32,
    level: u8,
}

/// Loads an Ogg Opus file for playback, measuring each packet's level once.
pub fn load_file(path: &Path) -> Result<Vec<Frame>, String> {
    let ogg = audio::read_ogg_opus(path).map_err(|e| e.to_string())?;
    if ogg.channels != 1 {
        // Decoding to mono keeps the level honest; sending stereo Opus to a
        // mono track is still valid Opus, so only the level uses the decode.
        tracing::debug!(channels = ogg.channels, "playing a multi-channel file");
    }
    let mut decoder = Decoder::new().map_err(|e| e.to_string())?;
    let mut frames = Vec::with_capacity(ogg.packets.len());
    for packet in ogg.packets {
        let samples = audio::packet_samples(&packet)
            .ok_or_else(|| format!("{}: a packet is not valid Opus", path.display()))?;
        let pcm = decoder
            .decode(&packet)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let level = audio::audio_level(&pcm);
        frames.push(Frame {
            opus: packet,
            samples: samples as u32,
            level,
        });
    }
    if frames.is_empty() {
        return Err(format!("{}: the file holds no audio", path.display()));
    }
    Ok(frames)
}

/// Where outgoing frames come from.
pub enum Outgoing {
    File {
        frames: Vec<Frame>,
        looped: bool,
    },
    Tone(audio::Tone),
    /// Received packets, replayed after `delay`.
    Echo {
        delay: Duration,
        from: mpsc::Receiver<(Vec<u8>, Instant)>,
    },
}

/// The bot's media: the outgoing source and the recordings.
pub struct BotMedia {
    session: Arc<MediaSession>,
    me: String,
    record_dir: PathBuf,
    timestamp: Arc<AtomicU32>,
    sender: Option<JoinHandle<()>>,
    sinks: Arc<Mutex<Sinks>>,
    events: mpsc::Sender<MediaEvent>,
    tasks: Vec<JoinHandle<()>>,
}

/// What incoming packets feed. Shared with the receive task.
#[derive(Default)]
struct Sinks {
    recordings: HashMap<String, Recording>,
    mix: Option<Mix>,
    echo: Option<EchoSink>,
}

/// Whose audio to echo (everyone's when `None`) and where to queue it.
type EchoSink = (Option<String>, mpsc::Sender<(Vec<u8>, Instant)>);

struct Recording {
    writer: OggOpusWriter<BufWriter<std::fs::File>>,
    path: PathBuf,
}

/// The mix of everyone the bot hears, re-encoded into one file.
struct Mix {
    recording: Recording,
    decoders: HashMap<String, Decoder>,
    pending: HashMap<String, VecDeque<f32>>,
    encoder: Encoder,
}

impl BotMedia {
    pub fn new(
        session: Arc<MediaSession>,
        me: &str,
        record_dir: &Path,
        events: mpsc::Sender<MediaEvent>,
    ) -> BotMedia {
        let sinks: Arc<Mutex<Sinks>> = Arc::default();
        let receive = tokio::spawn(
            receive(
                session.clone(),
                me.to_owned(),
                sinks.clone(),
                events.clone(),
            )
            .in_current_span(),
        );
        let mixer = tokio::spawn(mix(sinks.clone(), events.clone()).in_current_span());
        BotMedia {
            session,
            me: me.to_owned(),
            record_dir: record_dir.to_path_buf(),
            timestamp: Arc::new(AtomicU32::new(rand::random())),
            sender: None,
            sinks,
            events,
            tasks: vec![receive, mixer],
        }
    }

    pub fn playing(&self) -> bool {
        self.sender.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Starts sending from `source`, replacing whatever was being sent.
    pub fn send(&mut self, source: Outgoing) {
        self.stop();
        let session = self.session.clone();
        let ts = self.timestamp.clone();
        let events = self.events.clone();
        self.sender = Some(tokio::spawn(
            async move {
                if let Err(message) = send(session, ts, source, &events).await {
                    let _ = events
                        .send(MediaEvent::Failed {
                            action: "play",
                            message,
                        })
                        .await;
                }
            }
            .in_current_span(),
        ));
    }

    /// Echoes `user`'s audio (anyone's but the bot's own if `None`) after `delay`.
    pub fn echo(&mut self, delay: Duration, user: Option<String>) {
        // A few seconds of 20 ms frames; more queued than that is dropped.
        let (tx, rx) = mpsc::channel(512);
        self.send(Outgoing::Echo { delay, from: rx });
        self.sinks.lock().expect("bot sinks").echo = Some((user, tx));
    }

    /// Stops sending.
    pub fn stop(&mut self) {
        if let Some(task) = self.sender.take() {
            task.abort();
        }
        self.sinks.lock().expect("bot sinks").echo = None;
    }

    /// Starts recording `target` (a member's user id, or `mix`) into `file`
    /// inside the record directory.
    pub fn record(&mut self, target: &str, file: &str) -> Result<PathBuf, String> {
        let path = super::script::confined(&self.record_dir, file)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let writer = OggOpusWriter::create(&path).map_err(|e| e.to_string())?;
        let recording = Recording {
            writer,
            path: path.clone(),
        };
        let mut sinks = self.sinks.lock().expect("bot sinks");
        if target == "mix" {
            let old = sinks.mix.replace(Mix {
                recording,
                decoders: HashMap::new(),
                pending: HashMap::new(),
                encoder: Encoder::new().map_err(|e| e.to_string())?,
            });
            if let Some(old) = old {
                finish(old.recording);
            }
        } else if let Some(old) = sinks.recordings.insert(target.to_owned(), recording) {
            finish(old);
        }
        Ok(path)
    }

    /// Stops recording `target`, or everything; the files are complete after this.
    pub fn stop_recording(&mut self, target: Option<&str>) {
        let mut sinks = self.sinks.lock().expect("bot sinks");
        match target {
            Some("mix") => {
                if let Some(mix) = sinks.mix.take() {
                    finish(mix.recording);
                }
            }
            Some(user) => {
                if let Some(r) = sinks.recordings.remove(user) {
                    finish(r);
                }
            }
            None => {
                for (_, r) in sinks.recordings.drain() {
                    finish(r);
                }
                if let Some(mix) = sinks.mix.take() {
                    finish(mix.recording);
                }
            }
        }
    }

    /// What is being recorded: user ids and `mix`.
    pub fn recording(&self) -> Vec<String> {
        let sinks = self.sinks.lock().expect("bot sinks");
        let mut out: Vec<String> = sinks.recordings.keys().cloned().collect();
        if sinks.mix.is_some() {
            out.push("mix".into());
        }
        out.sort();
        out
    }

    /// Stops everything and completes every file.
    pub fn close(&mut self) {
        self.stop();
        self.stop_recording(None);
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }
}

impl Drop for BotMedia {
    fn drop(&mut self) {
        self.close();
    }
}

fn finish(recording: Recording) {
    let path = recording.path;
    match recording.writer.finish() {
        Ok(_) => tracing::info!(path = %path.display(), "recording finished"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "recording incomplete"),
    }
}

/// Sends 20 ms frames from `source` on a steady clock until it ends.
async fn send(
    session: Arc<MediaSession>,
    ts: Arc<AtomicU32>,
    source: Outgoing,
    events: &mpsc::Sender<MediaEvent>,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(FRAME);
    // Late ticks are skipped, not bunched: a burst would arrive as jitter.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let send_one = |opus: Vec<u8>, samples: u32, level: u8| {
        let session = session.clone();
        let at = ts.fetch_add(samples, Ordering::Relaxed);
        async move {
            session
                .send_audio(&opus, at, level)
                .await
                .map_err(|e| e.to_string())
        }
    };
    match source {
        Outgoing::File { frames, looped } => loop {
            for frame in &frames {
                tick.tick().await;
                send_one(frame.opus.clone(), frame.samples, frame.level).await?;
            }
            if !looped {
                let _ = events.send(MediaEvent::PlayEnded).await;
                return Ok(());
            }
        },
        Outgoing::Tone(mut tone) => {
            let mut encoder = Encoder::new().map_err(|e| e.to_string())?;
            loop {
                tick.tick().await;
                let pcm = tone.next_frame();
                let level = audio::audio_level(&pcm);
                let opus = encoder.encode(&pcm).map_err(|e| e.to_string())?;
                send_one(opus, FRAME_SAMPLES as u32, level).await?;
            }
        }
        Outgoing::Echo { delay, mut from } => {
            let mut decoder = Decoder::new().map_err(|e| e.to_string())?;
            while let Some((opus, heard)) = from.recv().await {
                tokio::time::sleep_until((heard + delay).into()).await;
                // The level is measured, not copied: this is the bot speaking.
                let level = decoder
                    .decode(&opus)
                    .map(|pcm| audio::audio_level(&pcm))
                    .unwrap_or(127);
                let samples = audio::packet_samples(&opus).unwrap_or(FRAME_SAMPLES) as u32;
                send_one(opus, samples, level).await?;
            }
            Ok(())
        }
    }
}

/// Feeds received audio to recordings and the echo.
async fn receive(
    session: Arc<MediaSession>,
    me: String,
    sinks: Arc<Mutex<Sinks>>,
    events: mpsc::Sender<MediaEvent>,
) {
    loop {
        let Some(received) = session.recv().await else {
            return;
        };
        if received.kind != MediaKind::Audio || received.user.as_str() == me {
            continue;
        }
        let user = received.user.as_str();
        tracing::debug!(
            user,
            seq = received.packet.header.sequence_number,
            "bot heard"
        );
        let payload = &received.packet.payload;
        let mut failed = Vec::new();
        {
            let mut sinks = sinks.lock().expect("bot sinks");
            if let Some(r) = sinks.recordings.get_mut(user)
                && let Err(e) = r.writer.write_packet(payload)
            {
                failed.push(format!("{}: {e}", r.path.display()));
                sinks.recordings.remove(user);
            }
            if let Some(mix) = &mut sinks.mix {
                let decoder = match mix.decoders.entry(user.to_owned()) {
                    std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        Decoder::new().ok().map(|d| v.insert(d))
                    }
                };
                if let Some(pcm) = decoder.and_then(|d| d.decode(payload).ok()) {
                    let queue = mix.pending.entry(user.to_owned()).or_default();
                    queue.extend(pcm);
                    // Keep at most half a second queued per member.
                    let excess = queue.len().saturating_sub(24_000);
                    queue.drain(..excess);
                }
            }
            if let Some((only, tx)) = &sinks.echo
                && only.as_deref().is_none_or(|u| u == user)
            {
                let _ = tx.try_send((payload.to_vec(), received.at));
            }
        }
        for message in failed {
            let _ = events
                .send(MediaEvent::Failed {
                    action: "record",
                    message,
                })
                .await;
        }
    }
}

/// Every 20 ms, sums one frame from each member heard and writes it to the mix.
async fn mix(sinks: Arc<Mutex<Sinks>>, events: mpsc::Sender<MediaEvent>) {
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let failed = {
            let mut sinks = sinks.lock().expect("bot sinks");
            let Some(mix) = &mut sinks.mix else { continue };
            let mut frame = vec![0f32; FRAME_SAMPLES];
            for queue in mix.pending.values_mut() {
                for (out, s) in frame
                    .iter_mut()
                    .zip(queue.drain(..queue.len().min(FRAME_SAMPLES)))
                {
                    *out += s;
                }
            }
            for s in &mut frame {
                *s = s.clamp(-1.0, 1.0);
            }
            let written = mix
                .encoder
                .encode(&frame)
                .map_err(|e| e.to_string())
                .and_then(|opus| {
                    mix.recording
                        .writer
                        .write_packet(&opus)
                        .map_err(|e| e.to_string())
                });
            match written {
                Ok(()) => None,
                Err(e) => {
                    let path = mix.recording.path.display().to_string();
                    sinks.mix = None;
                    Some(format!("{path}: {e}"))
                }
            }
        };
        if let Some(message) = failed {
            let _ = events
                .send(MediaEvent::Failed {
                    action: "record",
                    message,
                })
                .await;
        }
    }
}
