//! `conclave plugin check FILE`: load a plugin exactly as the server would
//! (compile, link against the host's imports, check the ABI version,
//! configure it), then ask it one sample question per action under the
//! limits and show each answer and how long it took.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::model::{MediaKind, Role};
use crate::policy::wasm::{ABI_VERSION, PluginHost, Verdict, WasmLimits};
use crate::policy::{Action, Check, FailureMode};

/// What `plugin check` found.
#[derive(Clone, Debug, Serialize)]
pub struct PluginReport {
    pub file: PathBuf,
    pub ok: bool,
    /// `name@hash`, as the server would label this version.
    pub version: Option<String>,
    /// The ABI version the host speaks (the plugin must say the same).
    pub abi: i32,
    pub bytes: usize,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub samples: Vec<Sample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One sample question and the plugin's answer.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub action: &'static str,
    /// `abstain`, `allow`, `deny <code>: <reason>` or `failed: <why>`.
    pub verdict: String,
    pub micros: f64,
}

/// The questions asked: one per action, as a plain member `user` of
/// `room` would ask them.
fn samples<'a>(user: &'a str, room: &'a str) -> Vec<Check<'a>> {
    let mut out = Vec::new();
    for action in [
        Action::CreateRoom,
        Action::Join,
        Action::PublishAudio,
        Action::PublishVideo,
        Action::ShareScreen,
        Action::MuteOther,
        Action::MuteEveryone,
        Action::Kick,
        Action::SetRole,
        Action::SendData,
        Action::StopScreenShare,
    ] {
        let mut check = Check::new(action, room, user);
        match action {
            Action::Join => {
                check.role = Some(Role::Interactor);
                check.kind = Some(MediaKind::Audio);
            }
            Action::SetRole => check.role = Some(Role::Audience),
            Action::PublishAudio | Action::MuteEveryone => check.kind = Some(MediaKind::Audio),
            Action::PublishVideo => check.kind = Some(MediaKind::Video),
            Action::MuteOther => {
                check.kind = Some(MediaKind::Audio);
                check.muted = true;
                check.target = "other-user";
            }
            Action::Kick | Action::StopScreenShare => check.target = "other-user",
            _ => {}
        }
        out.push(check);
    }
    out
}

/// Checks `file` with the default limits and `config` as its
/// `key=value` configuration, asking about `user` in `room`.
pub fn check(file: &Path, config: &str, user: &str, room: &str) -> PluginReport {
    let mut report = PluginReport {
        file: file.to_path_buf(),
        ok: false,
        version: None,
        abi: ABI_VERSION,
        bytes: 0,
        exports: Vec::new(),
        imports: Vec::new(),
        samples: Vec::new(),
        error: None,
    };
    let limits = WasmLimits::default();
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            report.error = Some(format!("cannot read {}: {e}", file.display()));
            return report;
        }
    };
    report.bytes = bytes.len();
    if bytes.len() > limits.module_bytes {
        report.error = Some(format!(
            "the file is larger than {} bytes (policy.wasm.module_bytes): the server would not load it",
            limits.module_bytes
        ));
        return report;
    }
    let host = match PluginHost::new(limits) {
        Ok(host) => host,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    match host.shape(file, &bytes) {
        Ok(shape) => {
            report.exports = shape.exports;
            report.imports = shape.imports;
        }
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    }
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let plugin = match host.compile(name, file, &bytes, config, FailureMode::Deny, 0) {
        Ok(plugin) => plugin,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.version = Some(plugin.label());
    let mut instance = match plugin.instantiate() {
        Ok(instance) => instance,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let mut failed = false;
    for check in samples(user, room) {
        // The first call pays for page faults; the one shown is the best
        // of a few, as a room's warm instance would answer.
        let mut best = f64::MAX;
        let mut verdict = Verdict::Abstain;
        for _ in 0..5 {
            let started = Instant::now();
            verdict = instance.check(&check);
            best = best.min(started.elapsed().as_secs_f64() * 1e6);
            if matches!(verdict, Verdict::Failed(_)) {
                break;
            }
        }
        let text = match verdict {
            Verdict::Abstain => "abstain".to_owned(),
            Verdict::Allow => "allow".to_owned(),
            Verdict::Deny(f) => format!("deny {}: {}", f.status.code(), f.message),
            Verdict::Failed(why) => {
                failed = true;
                // A trapped instance may hold broken state: start over.
                if let Ok(fresh) = plugin.instantiate() {
                    instance = fresh;
                }
                format!("failed: {why}")
            }
        };
        report.samples.push(Sample {
            action: check.action.as_str(),
            verdict: text,
            micros: best,
        });
    }
    if failed {
        report.error = Some(
            "a sample check failed: in a room it would decide by the plugin's failure mode".into(),
        );
    }
    report.ok = !failed;
    report
}

pub fn render(report: &PluginReport) -> String {
    let mut out = format!("{}: ", report.file.display());
    match (&report.version, report.ok) {
        (Some(version), true) => out.push_str(&format!(
            "ok, {version}, ABI version {}, {} bytes\n",
            report.abi, report.bytes
        )),
        (Some(version), false) => out.push_str(&format!("loads as {version}, but:\n")),
        (None, _) => out.push_str("does not load\n"),
    }
    if !report.exports.is_empty() {
        out.push_str(&format!("  exports: {}\n", report.exports.join(", ")));
        out.push_str(&format!(
            "  imports: {}\n",
            if report.imports.is_empty() {
                "none".to_owned()
            } else {
                report.imports.join(", ")
            }
        ));
    }
    for sample in &report.samples {
        out.push_str(&format!(
            "  {:<18} {:<40} {:>8.1} µs\n",
            sample.action, sample.verdict, sample.micros
        ));
    }
    if let Some(error) = &report.error {
        out.push_str(&format!("  error: {error}\n"));
    }
    out
}
