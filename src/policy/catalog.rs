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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::FailureMode;
use super::lua::{HookError, LuaLimits, LuaPolicy, OwnedIdentity, RoomIdentity};
use super::wasm::{Plugin, PluginHost, WasmLimits};
use crate::auth::glob_match;
use crate::script::ScriptError;
use crate::script::pool::Pool;

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
    /// What hooks may ask for: actions, sends, timers, metadata, store.
    pub effects: super::lua::EffectLimits,
    pub wasm: WasmLimits,
    /// Per-plugin settings, by plugin name (the file stem).
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Decisions each room keeps in its decision log (0: none).
    pub decision_log: usize,
    /// Candidate policies run as shadows in matching rooms (first match).
    pub shadows: Vec<PolicyRule>,
    /// Rooms whose policy inputs are recorded from their start (the
    /// `policy` field of these rules is not used).
    pub record: Vec<RecordRule>,
    /// Where recordings are written, `<room>-<channel id>.jsonl`; empty
    /// (the default): `<[server] data_dir>/recordings`.
    pub recordings_dir: PathBuf,
}

/// A `[[policy.record]]` rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRule {
    /// Room-name pattern; `*` matches any run of characters.
    pub rooms: String,
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
            effects: super::lua::EffectLimits::default(),
            wasm: WasmLimits::default(),
            plugins: BTreeMap::new(),
            decision_log: 256,
            shadows: Vec::new(),
            record: Vec::new(),
            recordings_dir: PathBuf::new(),
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
    /// Content hash of the last version that failed to load: the same broken
    /// file is compiled and reported once, not again at every file event.
    failed_hash: Option<String>,
    /// Where the file is (or was), as the configured directory names it.
    path: Option<PathBuf>,
    /// What the current version's load noticed (a function under a name
    /// that is no hook, say).
    warnings: Vec<String>,
    deleted: bool,
}

// Not derived: that would demand `T: Default`.
impl<T> Default for Entry<T> {
    fn default() -> Self {
        Entry {
            current: None,
            last_error: None,
            failed_hash: None,
            path: None,
            warnings: Vec::new(),
            deleted: false,
        }
    }
}

impl<T: Versioned> Entry<T> {
    /// Whether `hash` is already what this entry holds, good or broken.
    fn holds(&self, hash: &str) -> bool {
        if self.deleted {
            return false;
        }
        self.current.as_deref().is_some_and(|c| c.hash() == hash)
            || self.failed_hash.as_deref() == Some(hash)
    }
}

/// What the catalog keeps versions of: scripts and plugins.
trait Versioned: Sized {
    /// `script` or `plugin`, for logs and metrics.
    const KIND: &'static str;
    fn entries(state: &mut State) -> &mut BTreeMap<String, Entry<Self>>;
    fn hash(&self) -> &str;

    fn entry<'s>(state: &'s mut State, name: &str) -> &'s mut Entry<Self> {
        Self::entries(state).entry(name.to_owned()).or_default()
    }
}

impl Versioned for Script {
    const KIND: &'static str = "script";
    fn entries(state: &mut State) -> &mut BTreeMap<String, Entry<Self>> {
        &mut state.scripts
    }
    fn hash(&self) -> &str {
        &self.hash
    }
}

impl Versioned for Plugin {
    const KIND: &'static str = "plugin";
    fn entries(state: &mut State) -> &mut BTreeMap<String, Entry<Self>> {
        &mut state.plugins
    }
    fn hash(&self) -> &str {
        &self.hash
    }
}

/// How one read of a script or plugin file ended, for the
/// `conclave_policy_loads_total` metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabel {
    /// `script` or `plugin`.
    pub kind: &'static str,
    /// `loaded`, `failed`, `unchanged` (same content as before) or `deleted`.
    pub outcome: &'static str,
}

/// Which hook failed, and how, for `conclave_policy_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    /// A hook name, `load`, or `plugin`.
    pub hook: String,
    /// `error`, `budget`, `memory` or `plugin`.
    pub kind: &'static str,
}

/// The catalog's counters, and its rooms' policy failures; registered with
/// the server's metrics.
#[derive(Debug, Default)]
pub struct CatalogMetrics {
    pub loads: Family<LoadLabel, Counter>,
    pub failures: Family<FailureLabel, Counter>,
    /// Script API calls refused at a `[policy.effects]` limit.
    pub limits: super::lua::LimitHits,
    /// Shadow policies' decide hooks compared with the live ones, by outcome.
    pub shadow: super::shadow::ShadowCounts,
}

impl CatalogMetrics {
    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.loads.get_or_create(&LoadLabel { kind, outcome }).inc();
    }

    /// One failed hook or plugin check in some room.
    pub fn failed(&self, hook: &str, kind: &'static str) {
        self.failures
            .get_or_create(&FailureLabel {
                hook: hook.to_owned(),
                kind,
            })
            .inc();
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
    metrics: Arc<CatalogMetrics>,
    clock: crate::clock::Clock,
    /// Where every script runs, room states and probes alike.
    pool: Pool,
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
    /// What loading the current version noticed: functions returned under
    /// names that are no hook (`can_joni`: did you mean `can_join`?).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The file is gone; the last good version keeps running.
    pub deleted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogStatus {
    pub scripts: Vec<VersionStatus>,
    pub plugins: Vec<VersionStatus>,
}

/// Why a plugin could not be unloaded.
#[derive(Debug, thiserror::Error)]
pub enum UnloadError {
    #[error("no plugin named `{0}` is loaded")]
    NoSuchPlugin(String),
    #[error("{0} still exists: delete or move it first, or the next change to it loads it again")]
    StillOnDisk(String),
}

/// What kind of file a path is, for the watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    Script(String),
    Plugin(String),
}

/// The file's bytes, or `None` if it holds more than `cap`.
fn read_at_most(path: &Path, cap: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(cap as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() <= cap).then_some(bytes))
}

impl Catalog {
    /// Loads every script and plugin found. Broken files are recorded, not
    /// fatal: the server starts and reports them.
    pub fn open(config: PolicyConfig) -> Result<Arc<Catalog>, super::wasm::PluginError> {
        let pool = Pool::standalone(0).expect("the OS can start threads at startup");
        Self::open_with(config, Arc::default(), crate::clock::Clock::new(), pool)
    }

    /// [`Catalog::open`], counting into `metrics` (the server's), stamping
    /// versions with `clock` and running scripts on `pool`.
    pub fn open_with(
        config: PolicyConfig,
        metrics: Arc<CatalogMetrics>,
        clock: crate::clock::Clock,
        pool: Pool,
    ) -> Result<Arc<Catalog>, super::wasm::PluginError> {
        let host = PluginHost::new(config.wasm.clone())?;
        let catalog = Arc::new(Catalog {
            host,
            state: Mutex::new(State::default()),
            generation: watch::channel(0).0,
            config,
            metrics,
            clock,
            pool,
        });
        let scripts = &catalog.config.scripts_dir;
        if !scripts.as_os_str().is_empty() && !scripts.is_dir() {
            let absolute = std::path::absolute(scripts).unwrap_or_else(|_| scripts.clone());
            tracing::warn!(
                "no scripts directory at {} ({}): rooms run without a room policy. \
                 Start conclave from the directory that holds scripts/, or set [policy] scripts_dir",
                scripts.display(),
                absolute.display(),
            );
        }
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

    pub fn metrics(&self) -> &CatalogMetrics {
        &self.metrics
    }

    /// The clock versions are stamped with, and rooms' policies read.
    pub fn clock(&self) -> crate::clock::Clock {
        self.clock
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
        let Some(kind) = self.classify(path) else {
            return false;
        };
        // Named the way the configuration names its directory, whether the
        // path came from a directory listing or from the file watcher.
        let Some(file) = path.file_name() else {
            return false;
        };
        match kind {
            FileKind::Script(name) => {
                self.reload_script(&name, &self.config.scripts_dir.join(file))
            }
            FileKind::Plugin(name) => {
                self.reload_plugin(&name, &self.config.plugins_dir.join(file))
            }
        }
    }

    fn reload_script(&self, name: &str, path: &Path) -> bool {
        let source = match std::fs::read_to_string(path) {
            Ok(source) => source,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.mark_deleted::<Script>(name);
            }
            Err(e) => {
                self.record_error::<Script>(name, path, None, e.to_string());
                return false;
            }
        };
        let hash = short_hash(source.as_bytes());
        if self.holds::<Script>(name, &hash) {
            // Saved without changes, or the same broken text again.
            return false;
        }
        let script = Arc::new(Script {
            name: name.into(),
            source: source.into(),
            hash: hash.clone(),
            loaded_at_ms: self.clock.unix_ms(),
            path: path.to_path_buf(),
        });
        // Validate in a throwaway state: compiles, runs, returns a table. On
        // a script thread, like every run of a script: a chunk that never
        // returns costs a thread (replaced), not the reloads of everyone.
        let limits = self.config.lua.clone();
        let effects = self.config.effects.clone();
        let probe = {
            let script = script.clone();
            self.pool.run_blocking(self.call_limit(), move || {
                LuaPolicy::bounded(
                    script,
                    RoomIdentity {
                        name: "",
                        channel_id: 0,
                        custom_info: "",
                    },
                    &limits,
                    &effects,
                    Default::default(),
                    None,
                )
            })
        };
        let probe = probe
            .map_err(|overrun| {
                ScriptError::overran(&script.label(), "load", overrun, self.call_limit())
            })
            .and_then(|probe| probe);
        let probe = match probe {
            Ok(probe) => probe,
            Err(e) => {
                self.record_error::<Script>(name, path, Some(hash), e.message);
                return false;
            }
        };
        let warnings = probe.warnings().to_vec();
        for warning in &warnings {
            tracing::warn!(script = %script.label(), "{warning}");
        }
        tracing::info!(script = %script.label(), "room policy loaded");
        self.metrics.count(Script::KIND, "loaded");
        let mut state = self.state.lock().expect("catalog lock poisoned");
        let entry = Script::entry(&mut state, name);
        entry.current = Some(script);
        entry.last_error = None;
        entry.failed_hash = None;
        entry.path = Some(path.to_path_buf());
        entry.warnings = warnings;
        entry.deleted = false;
        drop(state);
        self.bump();
        true
    }

    fn reload_plugin(&self, name: &str, path: &Path) -> bool {
        let cap = self.config.wasm.module_bytes;
        let bytes = match read_at_most(path, cap) {
            Ok(Some(bytes)) => bytes,
            // Compiling is what costs memory and time, and both grow with
            // the module: a file past the cap is not even read whole.
            Ok(None) => {
                let message = format!(
                    "the plugin file is larger than {cap} bytes (policy.wasm.module_bytes); not loaded"
                );
                self.record_error::<Plugin>(name, path, None, message);
                return false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.mark_deleted::<Plugin>(name);
            }
            Err(e) => {
                self.record_error::<Plugin>(name, path, None, e.to_string());
                return false;
            }
        };
        let hash = short_hash(&bytes);
        if self.holds::<Plugin>(name, &hash) {
            return false;
        }
        let settings = self.config.plugins.get(name).cloned().unwrap_or_default();
        let config_text = plugin_config_text(&settings.config);
        match self.host.compile(
            name,
            path,
            &bytes,
            &config_text,
            settings.failure_mode,
            self.clock.unix_ms(),
        ) {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                tracing::info!(plugin = %plugin.label(), "permission plugin loaded");
                self.metrics.count(Plugin::KIND, "loaded");
                let mut state = self.state.lock().expect("catalog lock poisoned");
                let entry = Plugin::entry(&mut state, name);
                entry.current = Some(plugin);
                entry.last_error = None;
                entry.failed_hash = None;
                entry.path = Some(path.to_path_buf());
                entry.deleted = false;
                rebuild_plugin_set(&mut state);
                drop(state);
                self.bump();
                true
            }
            Err(e) => {
                self.record_error::<Plugin>(name, path, Some(hash), e.to_string());
                false
            }
        }
    }

    /// Whether the entry already holds the content with `hash` (counted as
    /// an `unchanged` read when it does).
    fn holds<T: Versioned>(&self, name: &str, hash: &str) -> bool {
        let mut state = self.state.lock().expect("catalog lock poisoned");
        let holds = T::entry(&mut state, name).holds(hash);
        if holds {
            self.metrics.count(T::KIND, "unchanged");
        }
        holds
    }

    fn mark_deleted<T: Versioned>(&self, name: &str) -> bool {
        self.metrics.count(T::KIND, "deleted");
        let mut state = self.state.lock().expect("catalog lock poisoned");
        let entry = T::entry(&mut state, name);
        if !entry.deleted {
            entry.deleted = true;
            tracing::warn!(name, "file deleted; its last good version keeps running");
        }
        false
    }

    fn record_error<T: Versioned>(
        &self,
        name: &str,
        path: &Path,
        hash: Option<String>,
        error: String,
    ) {
        self.metrics.count(T::KIND, "failed");
        tracing::error!(name, path = %path.display(), %error, "load failed; the previous version (if any) keeps running");
        let mut state = self.state.lock().expect("catalog lock poisoned");
        let entry = T::entry(&mut state, name);
        entry.last_error = Some(error);
        entry.failed_hash = hash;
        entry.path = Some(path.to_path_buf());
        entry.deleted = false;
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Unloads a plugin whose file is gone: rooms stop consulting it at their
    /// next event boundary. Deleting the file alone keeps the last good
    /// version running (a permission check should not vanish because a file
    /// did); this is the confirmation. Refused while the file exists, since
    /// the next change to it would load it again.
    pub fn unload_plugin(&self, name: &str) -> Result<(), UnloadError> {
        let mut state = self.state.lock().expect("catalog lock poisoned");
        let Some(entry) = state.plugins.get(name) else {
            return Err(UnloadError::NoSuchPlugin(name.to_owned()));
        };
        if let Some(path) = entry.path.as_ref().filter(|p| p.exists()) {
            return Err(UnloadError::StillOnDisk(path.display().to_string()));
        }
        state.plugins.remove(name);
        rebuild_plugin_set(&mut state);
        drop(state);
        tracing::info!(plugin = name, "permission plugin unloaded");
        self.bump();
        Ok(())
    }

    /// The current version of a script.
    pub fn script(&self, name: &str) -> Option<Arc<Script>> {
        let state = self.state.lock().expect("catalog lock poisoned");
        state.scripts.get(name).and_then(|e| e.current.clone())
    }

    /// Why a script that has no good version failed to load, if it did:
    /// the script exists but is broken, as opposed to missing.
    pub fn script_error(&self, name: &str) -> Option<String> {
        let state = self.state.lock().expect("catalog lock poisoned");
        state
            .scripts
            .get(name)
            .filter(|e| e.current.is_none())
            .and_then(|e| e.last_error.clone())
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
    /// naming another policy for a room a rule covers is refused with the
    /// rule's pattern and policy.
    pub fn policy_for(
        &self,
        room: &str,
        requested: Option<&str>,
    ) -> Result<String, (String, String)> {
        let ruled = self
            .config
            .rules
            .iter()
            .find(|r| glob_match(&r.rooms, room));
        match (ruled, requested) {
            (Some(rule), Some(name)) if rule.policy != name => {
                Err((rule.rooms.clone(), rule.policy.clone()))
            }
            (Some(rule), _) => Ok(rule.policy.clone()),
            (None, Some(name)) => Ok(name.to_owned()),
            (None, None) => Ok(self.config.default.clone()),
        }
    }

    /// The shadow policy a `[[policy.shadows]]` rule gives `room`, if any.
    pub fn shadow_for(&self, room: &str) -> Option<&str> {
        self.config
            .shadows
            .iter()
            .find(|r| glob_match(&r.rooms, room))
            .map(|r| r.policy.as_str())
    }

    /// Whether a `[[policy.record]]` rule records `room`.
    pub fn records(&self, room: &str) -> bool {
        self.config
            .record
            .iter()
            .any(|r| glob_match(&r.rooms, room))
    }

    /// Where a recording of the room instance `channel_id` is written.
    pub fn recording_path(&self, room: &str, channel_id: i64) -> PathBuf {
        self.config
            .recordings_dir
            .join(format!("{room}-{channel_id}.jsonl"))
    }

    /// A fresh policy state for a new room, from `name`'s current version,
    /// built on a script thread. `Ok(None)` if there is no such script.
    pub async fn instantiate(
        &self,
        name: &str,
        room: OwnedIdentity,
        kv: Option<Arc<dyn crate::store::kv::KvStore>>,
    ) -> Result<Option<LuaPolicy>, HookError> {
        let Some(script) = self.script(name) else {
            return Ok(None);
        };
        self.load(script, room, kv).await.map(Some)
    }

    /// A fresh state running `script`, built on a script thread.
    pub async fn load(
        &self,
        script: Arc<Script>,
        room: OwnedIdentity,
        kv: Option<Arc<dyn crate::store::kv::KvStore>>,
    ) -> Result<LuaPolicy, HookError> {
        let limits = self.config.lua.clone();
        let effects = self.config.effects.clone();
        let hits = self.metrics.limits.clone();
        let label = script.label();
        let state = self
            .pool
            .run(self.call_limit(), move || {
                LuaPolicy::bounded(script, room.borrowed(), &limits, &effects, hits, kv)
            })
            .await;
        state
            .map_err(|overrun| ScriptError::overran(&label, "load", overrun, self.call_limit()))
            .and_then(|state| state)
    }

    /// Where scripts run.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// How long one call may run on a script thread before the watchdog
    /// gives up on it: the time budget, and the pool's grace past it.
    pub fn call_limit(&self) -> std::time::Duration {
        self.config.lua.time + self.pool.config().grace
    }

    pub fn status(&self) -> CatalogStatus {
        let state = self.state.lock().expect("catalog lock poisoned");
        fn list<T>(
            entries: &BTreeMap<String, Entry<T>>,
            describe: impl Fn(&T) -> (String, i64),
        ) -> Vec<VersionStatus> {
            entries
                .iter()
                .map(|(name, e)| {
                    let current = e.current.as_deref().map(&describe);
                    VersionStatus {
                        name: name.clone(),
                        version: current.as_ref().map(|c| c.0.clone()),
                        loaded_at: current.as_ref().map(|c| c.1),
                        path: e.path.as_ref().map(|p| p.display().to_string()),
                        last_error: e.last_error.clone(),
                        warnings: e.warnings.clone(),
                        deleted: e.deleted,
                    }
                })
                .collect()
        }
        CatalogStatus {
            scripts: list(&state.scripts, |s| (s.hash.clone(), s.loaded_at_ms)),
            plugins: list(&state.plugins, |p| (p.hash.clone(), p.loaded_at_ms)),
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
