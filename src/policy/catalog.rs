//! The versions of every script and plugin, loaded from disk and validated
//! before anything runs them.
//!
//! A version is named by a hash of the file's content, so "which version is
//! running" always has an answer: each room reports the hash it runs, and
//! [`Catalog::status`] lists every script and plugin with its current
//! version, load time and last error. A file that fails to load never
//! replaces a working version; a deleted file keeps its last good version
//! until the file comes back (the status says so).
//!
//! Rooms learn of new versions through [`Catalog::subscribe`], a generation
//! counter that bumps on every successful change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::FailureMode;
use super::lua::{HookError, LuaLimits, LuaPolicy, RoomIdentity};
use super::wasm::{Plugin, PluginHost, WasmLimits};
use crate::auth::glob_match;

/// A plugin's entry in the configuration (`[policy.plugins.<name>]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    /// What a failing plugin answers (default: deny).
    pub failure_mode: FailureMode,
    /// Handed to the plugin as `key=value` lines (arrays comma-joined).
    pub config: BTreeMap<String, toml_value::Value>,
}

/// A script-to-room binding rule (`[[policy.rules]]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Room-name pattern; `*` matches any run of characters.
    pub rooms: String,
    /// The policy (script name, without `.lua`) for matching rooms.
    pub policy: String,
}

/// `[policy]` in the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Where `<name>.lua` room policies live.
    pub scripts_dir: PathBuf,
    /// Where `.wasm` / `.wat` permission plugins live (files directly inside).
    pub plugins_dir: PathBuf,
    /// The policy of rooms no rule matches and whose creator named none.
    pub default: String,
    /// First match wins.
    pub rules: Vec<PolicyRule>,
    /// What a failing Lua hook answers.
    pub failure_mode: FailureMode,
    /// Watch the directories and reload changed files.
    pub watch: bool,
    /// Quiet time after a file event before reloading (editors write in bursts).
    #[serde(with = "humantime_serde")]
    pub debounce: std::time::Duration,
    pub lua: LuaLimits,
    pub wasm: WasmLimits,
    /// Per-plugin settings, by plugin name (the file stem).
    pub plugins: BTreeMap<String, PluginConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            scripts_dir: PathBuf::from("scripts"),
            plugins_dir: PathBuf::from("plugins"),
            default: "default".into(),
            rules: Vec::new(),
            failure_mode: FailureMode::Deny,
            watch: true,
            debounce: std::time::Duration::from_millis(30),
            lua: LuaLimits::default(),
            wasm: WasmLimits::default(),
            plugins: BTreeMap::new(),
        }
    }
}

/// TOML values for plugin configuration, kept as TOML gives them.
pub mod toml_value {
    pub use figment::value::Value;
}

/// One version of a room policy script.
#[derive(Debug)]
pub struct Script {
    pub name: String,
    pub source: Arc<str>,
    /// First 12 hex digits of the SHA-256 of the source.
    pub hash: String,
    pub loaded_at_ms: i64,
    pub path: PathBuf,
}

impl Script {
    /// `name@hash`, how logs and the admin API name a version.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.hash)
    }

    /// The path as error messages show it.
    pub fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}

pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

struct Entry<T> {
    current: Option<Arc<T>>,
    last_error: Option<String>,
    deleted: bool,
}

// Not derived: that would demand `T: Default`.
impl<T> Default for Entry<T> {
    fn default() -> Self {
        Entry {
            current: None,
            last_error: None,
            deleted: false,
        }
    }
}

#[derive(Default)]
struct State {
    scripts: BTreeMap<String, Entry<Script>>,
    plugins: BTreeMap<String, Entry<Plugin>>,
    /// The loaded plugins in name order; rebuilt on every plugin change.
    plugin_set: Arc<Vec<Arc<Plugin>>>,
}

/// Every script and plugin, current and past.
pub struct Catalog {
    config: PolicyConfig,
    host: PluginHost,
    state: Mutex<State>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("scripts_dir", &self.config.scripts_dir)
            .field("plugins_dir", &self.config.plugins_dir)
            .finish()
    }
}

/// What the admin API shows for one script or plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionStatus {
    pub name: String,
    /// The version running for new rooms; `None` if none ever loaded.
    pub version: Option<String>,
    pub loaded_at: Option<i64>,
    pub path: Option<String>,
    /// The last failed load, cleared by the next good one.
    pub last_error: Option<String>,
    /// The file is gone; the last good version keeps running.
    pub deleted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogStatus {
    pub scripts: Vec<VersionStatus>,
    pub plugins: Vec<VersionStatus>,
}

/// What kind of file a path is, for the watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    Script(String),
    Plugin(String),
}

impl Catalog {
    /// Loads every script and plugin found. Broken files are recorded, not
    /// fatal: the server starts and reports them.
    pub fn open(config: PolicyConfig) -> Result<Arc<Catalog>, super::wasm::PluginError> {
        let host = PluginHost::new(config.wasm.clone())?;
        let catalog = Arc::new(Catalog {
            host,
            state: Mutex::new(State::default()),
            generation: watch::channel(0).0,
            config,
        });
        for dir in [&catalog.config.scripts_dir, &catalog.config.plugins_dir] {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                catalog.reload_path(&path);
            }
        }
        Ok(catalog)
    }

    /// A catalog with no scripts and no plugins, watching nothing.
    pub fn empty() -> Result<Arc<Catalog>, super::wasm::PluginError> {
        Catalog::open(PolicyConfig {
            scripts_dir: PathBuf::new(),
            plugins_dir: PathBuf::new(),
            watch: false,
            ..PolicyConfig::default()
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Notified (with a new generation) after every successful change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether `path` is a script or plugin this catalog manages.
    pub fn classify(&self, path: &Path) -> Option<FileKind> {
        let stem = path.file_stem()?.to_str()?.to_owned();
        let ext = path.extension()?.to_str()?;
        let parent = path.parent()?;
        if ext == "lua" && same_dir(parent, &self.config.scripts_dir) {
            return Some(FileKind::Script(stem));
        }
        if (ext == "wasm" || ext == "wat") && same_dir(parent, &self.config.plugins_dir) {
            return Some(FileKind::Plugin(stem));
        }
        None
    }

    /// (Re)loads the file at `path` if it is a script or plugin; a missing
    /// file marks its entry deleted. Returns whether anything changed.
    pub fn reload_path(&self, path: &Path) -> bool {
        match self.classify(path) {
            Some(FileKind::Script(name)) => self.reload_script(&name, path),
            Some(FileKind::Plugin(name)) => self.reload_plugin(&name, path),
            None => false,
        }
    }

    fn reload_script(&self, name: &str, path: &Path) -> bool {
        let source = match std::fs::read_to_string(path) {
            Ok(source) => source,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.mark_deleted(|s| s.scripts.entry(name.into()).or_default(), name);
            }
            Err(e) => {
                self.record_error(
                    |s| s.scripts.entry(name.into()).or_default(),
                    name,
                    e.to_string(),
                );
                return false;
            }
        };
        let hash = short_hash(source.as_bytes());
        {
            let state = self.state.lock().expect("catalog lock poisoned");
            if let Some(entry) = state.scripts.get(name)
                && entry.current.as_ref().is_some_and(|c| c.hash == hash)
                && !entry.deleted
            {
                return false; // saved without changes
            }
        }
        let script = Arc::new(Script {
            name: name.into(),
            source: source.into(),
            hash,
            loaded_at_ms: crate::room::now().unix_ms,
            path: path.to_path_buf(),
        });
        // Validate in a throwaway state: compiles, runs, returns a table.
        let probe = LuaPolicy::new(
            script.clone(),
            RoomIdentity {
                name: "",
                channel_id: 0,
                custom_info: "",
            },
            &self.config.lua,
            None,
        );
        if let Err(e) = probe {
            self.record_error(
                |s| s.scripts.entry(name.into()).or_default(),
                name,
                e.message,
            );
            return false;
        }
        tracing::info!(script = %script.label(), "room policy loaded");
        let mut state = self.state.lock().expect("catalog lock poisoned");
        let entry = state.scripts.entry(name.into()).or_default();
        entry.current = Some(script);
        entry.last_error = None;
        entry.deleted = false;
        drop(state);
        self.bump();
        true
    }

    fn reload_plugin(&self, name: &str, path: &Path) -> bool {
        if !path.exists() {
            return self.mark_deleted(|s| s.plugins.entry(name.into()).or_default(), name);
        }
        let settings = self.config.plugins.get(name).cloned().unwrap_or_default();
        let config_text = plugin_config_text(&settings.config);
        match self
            .host
            .compile(name, path, &config_text, settings.failure_mode)
        {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                let mut state = self.state.lock().expect("catalog lock poisoned");
                let entry = state.plugins.entry(name.into()).or_default();
                if entry
                    .current
                    .as_ref()
                    .is_some_and(|c| c.hash == plugin.hash)
                    && !entry.deleted
                {
                    return false;
                }
                tracing::info!(plugin = %plugin.label(), "permission plugin loaded");
                entry.current = Some(plugin);
                entry.last_error = None;
                entry.deleted = false;
                rebuild_plugin_set(&mut state);
                drop(state);
                self.bump();
                true
            }
            Err(e) => {
                self.record_error(
                    |s| s.plugins.entry(name.into()).or_default(),
                    name,
                    e.to_string(),
                );
                false
            }
        }
    }

    fn mark_deleted<T>(&self, entry: impl FnOnce(&mut State) -> &mut Entry<T>, name: &str) -> bool {
        let mut state = self.state.lock().expect("catalog lock poisoned");
        let entry = entry(&mut state);
        if !entry.deleted {
            entry.deleted = true;
            tracing::warn!(name, "file deleted; its last good version keeps running");
        }
        false
    }

    fn record_error<T>(
        &self,
        entry: impl FnOnce(&mut State) -> &mut Entry<T>,
        name: &str,
        error: String,
    ) {
        tracing::error!(name, %error, "load failed; the previous version (if any) keeps running");
        let mut state = self.state.lock().expect("catalog lock poisoned");
        entry(&mut state).last_error = Some(error);
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// The current version of a script.
    pub fn script(&self, name: &str) -> Option<Arc<Script>> {
        let state = self.state.lock().expect("catalog lock poisoned");
        state.scripts.get(name).and_then(|e| e.current.clone())
    }

    /// The loaded plugins, in name order.
    pub fn plugins(&self) -> Arc<Vec<Arc<Plugin>>> {
        self.state
            .lock()
            .expect("catalog lock poisoned")
            .plugin_set
            .clone()
    }

    /// The policy a room gets: the first matching rule's, else the one its
    /// creator named, else the default. A creator may not override a rule:
    /// naming another policy for a room a rule covers is an error.
    pub fn policy_for(&self, room: &str, requested: Option<&str>) -> Result<String, String> {
        let ruled = self
            .config
            .rules
            .iter()
            .find(|r| glob_match(&r.rooms, room));
        match (ruled, requested) {
            (Some(rule), Some(name)) if rule.policy != name => Err(format!(
                "rooms named like `{}` use the policy `{}`",
                rule.rooms, rule.policy
            )),
            (Some(rule), _) => Ok(rule.policy.clone()),
            (None, Some(name)) => Ok(name.to_owned()),
            (None, None) => Ok(self.config.default.clone()),
        }
    }

    /// A fresh policy state for a new room, from `name`'s current version.
    /// `Ok(None)` if there is no such script.
    pub fn instantiate(
        &self,
        name: &str,
        room: RoomIdentity<'_>,
        kv: Option<Arc<dyn crate::store::kv::KvStore>>,
    ) -> Result<Option<LuaPolicy>, HookError> {
        match self.script(name) {
            Some(script) => LuaPolicy::new(script, room, &self.config.lua, kv).map(Some),
            None => Ok(None),
        }
    }

    pub fn status(&self) -> CatalogStatus {
        let state = self.state.lock().expect("catalog lock poisoned");
        fn list<T>(
            entries: &BTreeMap<String, Entry<T>>,
            describe: impl Fn(&T) -> (String, i64, String),
        ) -> Vec<VersionStatus> {
            entries
                .iter()
                .map(|(name, e)| {
                    let current = e.current.as_deref().map(&describe);
                    VersionStatus {
                        name: name.clone(),
                        version: current.as_ref().map(|c| c.0.clone()),
                        loaded_at: current.as_ref().map(|c| c.1),
                        path: current.map(|c| c.2),
                        last_error: e.last_error.clone(),
                        deleted: e.deleted,
                    }
                })
                .collect()
        }
        CatalogStatus {
            scripts: list(&state.scripts, |s| {
                (s.hash.clone(), s.loaded_at_ms, s.display_path())
            }),
            plugins: list(&state.plugins, |p| {
                (p.hash.clone(), p.loaded_at_ms, p.path.display().to_string())
            }),
        }
    }
}

fn rebuild_plugin_set(state: &mut State) {
    state.plugin_set = Arc::new(
        state
            .plugins
            .values()
            .filter_map(|e| e.current.clone())
            .collect(),
    );
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Renders a plugin's config table as the `key=value` lines the ABI passes.
pub fn plugin_config_text(config: &BTreeMap<String, toml_value::Value>) -> String {
    use figment::value::Value;
    fn render(value: &Value) -> String {
        match value {
            Value::String(_, s) => s.clone(),
            Value::Char(_, c) => c.to_string(),
            Value::Bool(_, b) => b.to_string(),
            // Environment overrides arrive as unsigned numbers, TOML ones
            // as signed: try both before falling back to a float.
            Value::Num(_, n) => n
                .to_i128()
                .map(|i| i.to_string())
                .or_else(|| n.to_u128().map(|u| u.to_string()))
                .or_else(|| n.to_f64().map(|f| f.to_string()))
                .unwrap_or_default(),
            Value::Array(_, items) => items.iter().map(render).collect::<Vec<_>>().join(","),
            Value::Empty(_, _) => String::new(),
            Value::Dict(_, _) => String::new(),
        }
    }
    config
        .iter()
        .map(|(k, v)| format!("{k}={}\n", render(v)))
        .collect()
}
