//! `conclave policy replay RECORDING --policy FILE`: ask another version of
//! a policy what a room's live policy was asked, in the same order, with
//! the room as it was each time, and list where the answers differ.
//!
//! The candidate runs in a state of its own (the real host and limits, an
//! empty in-memory store); what its hooks ask for is dropped, since the
//! recording already holds what the room did next. Timers fire as they
//! fired live (`on_timer` lines). `os.time()` reads today's clock, so a
//! policy deciding on the wall clock may differ for that reason alone.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value as Json;

use super::check::read_script;
use crate::policy::catalog::PolicyConfig;
use crate::policy::lua::{LuaPolicy, RoomIdentity, RoomView};
use crate::policy::recording::Line;
use crate::policy::shadow::{agree, verdict};
use crate::script::ToLua;

/// One decide hook on which the candidate differs from the recording.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    /// Line number in the recording.
    pub line: usize,
    pub at: i64,
    pub hook: String,
    pub request: Json,
    pub recorded: Json,
    pub replayed: Json,
    pub recorded_version: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    pub room: String,
    pub recorded_policy: Option<String>,
    pub candidate: String,
    pub decisions: usize,
    pub reactions: usize,
    /// React hooks that failed in the candidate.
    pub failures: usize,
    pub differences: Vec<Difference>,
    /// Lines the live room dropped while recording (the disk fell behind).
    pub dropped: u64,
}

/// Replays `recording` against the policy in `candidate`.
pub fn replay(
    recording: &Path,
    candidate: &Path,
    config: &PolicyConfig,
) -> Result<ReplayReport, String> {
    let script = Arc::new(read_script(candidate)?);
    let file = std::fs::File::open(recording)
        .map_err(|e| format!("cannot read {}: {e}", recording.display()))?;
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    let first = lines
        .next()
        .ok_or_else(|| format!("{} is empty", recording.display()))?;
    let (room, channel_id, custom_info, recorded_policy) =
        match parse(recording, 1, first.1.map_err(|e| e.to_string())?)? {
            Line::Start {
                room,
                channel_id,
                custom_info,
                policy,
                ..
            } => (room, channel_id, custom_info, policy),
            _ => {
                return Err(format!(
                    "{}:1: a recording starts with a `start` line",
                    recording.display()
                ));
            }
        };
    let kv = crate::store::kv::SqliteKv::in_memory()
        .ok()
        .map(|kv| Arc::new(kv) as Arc<dyn crate::store::kv::KvStore>);
    let mut lua = LuaPolicy::bounded(
        script.clone(),
        RoomIdentity {
            name: &room,
            channel_id,
            custom_info: &custom_info,
        },
        &config.lua,
        &config.effects,
        Default::default(),
        kv,
    )
    .map_err(|e| format!("{}: {e}", candidate.display()))?;
    let mut report = ReplayReport {
        room,
        recorded_policy,
        candidate: script.label(),
        decisions: 0,
        reactions: 0,
        failures: 0,
        differences: Vec::new(),
        dropped: 0,
    };
    let mut view = Arc::new(RoomView::default());
    for (index, text) in lines {
        let number = index + 1;
        let text = text.map_err(|e| e.to_string())?;
        if text.trim().is_empty() {
            continue;
        }
        let mut dropped = Vec::new();
        match parse(recording, number, text)? {
            Line::Start { .. } => {
                return Err(format!(
                    "{}:{number}: a second `start` line",
                    recording.display()
                ));
            }
            Line::View { view: v } => view = Arc::new(v.into_view()),
            Line::Decide {
                at,
                hook,
                request,
                verdict: recorded,
                version,
            } => {
                report.decisions += 1;
                let answer = lua.decide(&hook, &view, &request, &mut dropped);
                let replayed = verdict(&answer);
                if !agree(&recorded, &replayed) {
                    report.differences.push(Difference {
                        line: number,
                        at,
                        hook,
                        request,
                        recorded,
                        replayed,
                        recorded_version: version,
                    });
                }
            }
            Line::React { hook, arg, .. } => {
                report.reactions += 1;
                let args: [&dyn ToLua; 1] = [&arg];
                if lua.react(&hook, &view, &args, &mut dropped).is_err() {
                    report.failures += 1;
                }
            }
            Line::Decision { .. } => {}
            Line::End { dropped, .. } => report.dropped = dropped,
        }
    }
    Ok(report)
}

fn parse(recording: &Path, number: usize, text: String) -> Result<Line, String> {
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}:{number}: not a recording line: {e}",
            recording.display()
        )
    })
}

pub fn render(report: &ReplayReport) -> String {
    let mut out = String::new();
    for d in &report.differences {
        out.push_str(&format!(
            "line {}: {} {}\n  recorded ({}): {}\n  replayed ({}): {}\n",
            d.line, d.hook, d.request, d.recorded_version, d.recorded, report.candidate, d.replayed
        ));
    }
    out.push_str(&format!(
        "room {}: {} decisions and {} reactions replayed against {} (recorded with {}); {} differ",
        report.room,
        report.decisions,
        report.reactions,
        report.candidate,
        report.recorded_policy.as_deref().unwrap_or("no policy"),
        report.differences.len()
    ));
    if report.failures > 0 {
        out.push_str(&format!(", {} reactions failed", report.failures));
    }
    if report.dropped > 0 {
        out.push_str(&format!(
            "; the recording lost {} lines while the disk fell behind",
            report.dropped
        ));
    }
    out.push('\n');
    out
}
