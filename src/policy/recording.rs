//! Recording a room's policy inputs, for `conclave policy replay`.
//!
//! With recording on, every hook call on the room's live policy is written
//! as one JSON line: decide hooks with their request and the verdict,
//! react hooks with their argument, each with its time and the room as
//! the hook saw it (a `view` line whenever it changed, not on every call),
//! and the decision log's records. Replaying the lines against another
//! version of the policy asks it exactly what the live one was asked.
//!
//! Lines go to a writer thread through a bounded queue: the room never
//! waits on the disk. When the disk falls behind, lines are dropped and
//! counted, and the file says so when it is closed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::decisions::DecisionRecord;
use super::lua::{MemberView, RoomView};

/// Lines queued before new ones are dropped.
const QUEUE: usize = 4096;

/// The room as hooks saw it, as a recording holds it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecordedView {
    pub generation: u64,
    pub members: Vec<MemberView>,
    pub metadata: serde_json::Map<String, Json>,
    pub timers: std::collections::BTreeSet<String>,
}

impl RecordedView {
    pub fn of(view: &RoomView) -> RecordedView {
        RecordedView {
            generation: view.generation,
            members: view.members.clone(),
            metadata: view.metadata.clone(),
            timers: view.timers.clone(),
        }
    }

    pub fn into_view(self) -> RoomView {
        RoomView {
            generation: self.generation,
            members: self.members,
            metadata: self.metadata,
            timers: self.timers,
        }
    }
}

/// One line of a recording.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// The first line: which room, and the policy version it ran.
    Start {
        at: i64,
        room: String,
        channel_id: i64,
        custom_info: String,
        policy: Option<String>,
    },
    /// The room changed; later hook lines read it.
    View {
        view: RecordedView,
    },
    Decide {
        at: i64,
        hook: String,
        request: Json,
        /// What the live policy answered (`shadow::verdict`).
        verdict: Json,
        /// The live policy's version when it answered.
        version: String,
    },
    React {
        at: i64,
        hook: String,
        arg: Json,
    },
    Decision {
        record: DecisionRecord,
    },
    /// The last line: how many lines were dropped because the disk fell
    /// behind.
    End {
        at: i64,
        dropped: u64,
    },
}

/// A recording in progress; dropping it closes the file.
pub struct Recorder {
    tx: Option<SyncSender<Line>>,
    path: PathBuf,
    dropped: Arc<AtomicU64>,
    last_view: u64,
}

impl Recorder {
    /// Starts writing to `path` (created, or truncated).
    pub fn start(path: &Path, first: Line) -> std::io::Result<Recorder> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Line>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        std::thread::Builder::new()
            .name("conclave-recorder".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(line) = rx.recv() {
                    let _ = serde_json::to_writer(&mut out, &line);
                    let _ = out.write_all(b"\n");
                    // Flushed whenever the queue is empty, so a reader
                    // sees whole lines soon after they happen.
                    let mut more = rx.try_iter();
                    for line in more.by_ref() {
                        let _ = serde_json::to_writer(&mut out, &line);
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
            })?;
        let mut recorder = Recorder {
            tx: Some(tx),
            path: path.to_path_buf(),
            dropped,
            last_view: u64::MAX,
        };
        recorder.write(first);
        Ok(recorder)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn write(&mut self, line: Line) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the view first if the room changed since the last line.
    fn view(&mut self, view: &RoomView) {
        if view.generation != self.last_view {
            self.last_view = view.generation;
            self.write(Line::View {
                view: RecordedView::of(view),
            });
        }
    }

    pub fn decide(
        &mut self,
        at: i64,
        hook: &str,
        view: &RoomView,
        request: Json,
        verdict: Json,
        version: String,
    ) {
        self.view(view);
        self.write(Line::Decide {
            at,
            hook: hook.to_owned(),
            request,
            verdict,
            version,
        });
    }

    pub fn react(&mut self, at: i64, hook: &str, view: &RoomView, arg: Json) {
        self.view(view);
        self.write(Line::React {
            at,
            hook: hook.to_owned(),
            arg,
        });
    }

    pub fn decision(&mut self, record: &DecisionRecord) {
        self.write(Line::Decision {
            record: record.clone(),
        });
    }

    /// Closes the file after everything queued is written.
    pub fn finish(mut self, at: i64) {
        let dropped = self.dropped();
        self.write(Line::End { at, dropped });
        self.close();
    }

    /// Lets the writer thread finish what is queued and end; the room
    /// does not wait for it (the `end` line marks a complete file).
    fn close(&mut self) {
        self.tx = None;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}
