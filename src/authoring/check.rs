//! `conclave policy check FILE...`: compile each script and run its chunk
//! within the limits, as the server would, then say what it defines and
//! what it probably does not mean. Nothing is served and nothing is sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::policy::catalog::{Script, short_hash};
use crate::policy::lua::{LuaLimits, LuaPolicy};
use crate::script::{HookInfo, Warning};
use crate::store::kv::SqliteKv;

/// What `check` found in one file.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub file: PathBuf,
    /// `name@hash`, as the server would label this version.
    pub version: Option<String>,
    pub ok: bool,
    pub hooks: Vec<HookInfo>,
    pub warnings: Vec<Warning>,
    /// Why the file cannot run, with the line where Lua says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes its state held after the chunk ran.
    pub memory: usize,
}

/// Reads a script file into the version the catalog would make of it.
pub fn read_script(path: &Path) -> Result<Script, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("script")
        .to_owned();
    Ok(Script {
        name,
        hash: short_hash(source.as_bytes()),
        source: source.into(),
        loaded_at_ms: 0,
        path: path.to_path_buf(),
    })
}

/// Checks one file within `limits`.
pub fn check_file(path: &Path, limits: &LuaLimits) -> FileReport {
    let mut report = FileReport {
        file: path.to_path_buf(),
        version: None,
        ok: false,
        hooks: Vec::new(),
        warnings: Vec::new(),
        error: None,
        memory: 0,
    };
    let script = match read_script(path) {
        Ok(script) => script,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    report.version = Some(script.label());
    // A store of its own, in memory: a chunk may read or write it.
    let kv = SqliteKv::in_memory()
        .ok()
        .map(|kv| Arc::new(kv) as Arc<dyn crate::store::kv::KvStore>);
    match LuaPolicy::inspect(&script, limits, kv) {
        Ok(inspection) => {
            report.ok = true;
            report.hooks = inspection.hooks;
            report.warnings = inspection.warnings;
            report.memory = inspection.memory;
        }
        Err(e) => report.error = Some(format!("{} ({:?})", e.message, e.kind)),
    }
    report
}

/// The report as people read it: one line per file, then its warnings
/// and error at `file:line`.
pub fn render(report: &FileReport) -> String {
    let file = report.file.display();
    let mut out = String::new();
    if report.ok {
        let hooks: Vec<String> = report
            .hooks
            .iter()
            .map(|h| match h.line {
                Some(line) => format!("{} (line {line})", h.name),
                None => h.name.clone(),
            })
            .collect();
        let defines = if hooks.is_empty() {
            "no hooks".to_owned()
        } else {
            hooks.join(", ")
        };
        out.push_str(&format!("{file}: ok, defines {defines}\n"));
    }
    for warning in &report.warnings {
        match warning.line {
            Some(line) => out.push_str(&format!("{file}:{line}: warning: {}\n", warning.message)),
            None => out.push_str(&format!("{file}: warning: {}\n", warning.message)),
        }
    }
    if let Some(error) = &report.error {
        // Lua's own messages already start with `file:line:`.
        if error.starts_with(&file.to_string()) {
            out.push_str(&format!("error: {error}\n"));
        } else {
            out.push_str(&format!("{file}: error: {error}\n"));
        }
    }
    out
}
