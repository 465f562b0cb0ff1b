//! One room's share of the policy runtime: its Lua state, its plugin
//! instances, its timers, and which versions it runs. The authorization
//! pipeline that asks them is `authz`.
//!
//! Owned by the room's task. Plugins run here, on the room's task (a check
//! is bounded by the wasm engine's epoch deadline); every Lua call goes to a
//! script thread ([`crate::script::pool`]) and is awaited, so a script never
//! runs where connections, media or other rooms are served.
//!
//! Failures are turned into decisions here, in one place: a script or plugin
//! that errors, runs out of budget or memory, traps or answers garbage is
//! logged (with the script and line), remembered for the admin API, and
//! decides by its failure mode. A call the watchdog gave up on also
//! **quarantines** the room's Lua state: it may still be running, so it is
//! never touched again; later hooks are answered by the failure mode until a
//! new version of the script gives the room a fresh state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::authz::{Access, Decider, Denial};
use super::catalog::{Catalog, Script};
use super::decisions::{DecisionLog, DecisionRecord};
use super::lua::{Decision, Effect, HookError, LuaPolicy, OwnedIdentity, RoomView};
use super::recording::{Line, Recorder};
use super::shadow::{Shadow, ShadowStatus};
use super::wasm::{Plugin, PluginInstance, Verdict};
use super::{Check, FailureMode};
use crate::script::ScriptError;
use crate::status::Status;
use crate::store::kv::KvStore;

/// What the admin API shows about a room's policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The policy name the room is bound to.
    pub policy: String,
    /// `name@hash` of the script version running; `None` without a script.
    pub version: Option<String>,
    /// `name@hash` of each plugin version this room checks with.
    pub plugins: Vec<String>,
    /// Unix ms when the room started running its current script version.
    pub since: Option<i64>,
    /// Hook or plugin failures since the room opened.
    pub errors: u64,
    pub last_error: Option<String>,
    /// A call on the room's Lua state never returned: the state is set
    /// aside, and decide hooks answer by the failure mode until a new
    /// version of the script loads.
    #[serde(default)]
    pub quarantined: bool,
}

struct Timer {
    due: Instant,
    every: Option<Duration>,
}

/// A room's Lua state, shared with the script thread running a call on it.
/// Only ever locked by one call at a time: the room awaits each.
type Shared = Arc<Mutex<LuaPolicy>>;

/// The room's Lua state, or why there is none to call.
enum Lua {
    /// The room runs no script.
    None,
    Ready {
        state: Shared,
        script: Arc<Script>,
        /// The hooks it defined when last looked at (loaded or reloaded).
        hooks: Hooks,
    },
    /// A call on it never came back: set aside until a new version. Hooks
    /// it never defined still pass; the ones it did answer by the failure
    /// mode.
    Quarantined { script: Arc<Script>, hooks: Hooks },
}

/// The hook names a state defines.
type Hooks = Arc<[&'static str]>;

fn hooks_of(lua: &LuaPolicy) -> Hooks {
    crate::policy::lua::HOOKS
        .iter()
        .copied()
        .filter(|hook| lua.defines(hook))
        .collect()
}

impl Lua {
    fn ready(state: LuaPolicy) -> Lua {
        Lua::Ready {
            script: state.script().clone(),
            hooks: hooks_of(&state),
            state: Arc::new(Mutex::new(state)),
        }
    }
}

/// A room's policy state.
pub struct RoomPolicy {
    catalog: Arc<Catalog>,
    name: String,
    /// The room, as a fresh state for it needs it.
    room: OwnedIdentity,
    kv: Option<Arc<dyn KvStore>>,
    lua: Lua,
    plugins: Arc<Vec<Arc<Plugin>>>,
    instances: Vec<Option<PluginInstance>>,
    timers: BTreeMap<String, Timer>,
    status: PolicyStatus,
    decisions: DecisionLog,
    /// A candidate policy running beside the live one ([`super::shadow`]).
    shadow: Option<Shadow>,
    /// Where the room's policy inputs are being written, when they are.
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for RoomPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomPolicy")
            .field("status", &self.status)
            .finish()
    }
}

impl RoomPolicy {
    pub fn new(
        catalog: Arc<Catalog>,
        name: String,
        room: OwnedIdentity,
        kv: Option<Arc<dyn KvStore>>,
        lua: Option<LuaPolicy>,
    ) -> RoomPolicy {
        let plugins = catalog.plugins();
        let lua = lua.map_or(Lua::None, Lua::ready);
        let decisions =
            DecisionLog::new(room.channel_id.to_string(), catalog.config().decision_log);
        let mut policy = RoomPolicy {
            decisions,
            shadow: None,
            recorder: None,
            catalog,
            room,
            kv,
            lua,
            instances: plugins.iter().map(|_| None).collect(),
            plugins,
            timers: BTreeMap::new(),
            status: PolicyStatus {
                policy: name.clone(),
                ..PolicyStatus::default()
            },
            name,
        };
        policy.refresh_labels();
        policy.status.since = Some(policy.catalog.clock().unix_ms());
        policy
    }

    /// The room's decision log.
    pub fn decisions(&self) -> &DecisionLog {
        &self.decisions
    }

    pub fn decisions_mut(&mut self) -> &mut DecisionLog {
        &mut self.decisions
    }

    /// Writes one decision of the pipeline down; returns its id.
    pub fn record_decision(
        &mut self,
        access: &Access<'_>,
        allowed: bool,
        code: u16,
        reason: Option<String>,
        by: Decider,
        micros: u64,
    ) -> String {
        if !self.decisions.keeps() && self.recorder.is_none() {
            // Nothing keeps it: the id alone, and no record is built.
            return self.decisions.skip();
        }
        let record = DecisionRecord {
            id: String::new(),
            at: self.catalog.clock().unix_ms(),
            room: access.room.to_owned(),
            action: access.ask.name().to_owned(),
            actor: access.identity.user.to_string(),
            target: access.ask.target().map(|t| t.to_string()),
            allowed,
            code,
            reason,
            by,
            policy: self.status.version.clone(),
            plugins: self.status.plugins.clone(),
            micros,
        };
        if let Some(recorder) = &mut self.recorder {
            let mut record = record.clone();
            record.id = self.decisions.next_id();
            recorder.decision(&record);
        }
        self.decisions.push(record)
    }

    /// Runs `policy` (its current version, a fresh state) as this room's
    /// shadow, replacing any other. Its store is its own, in memory.
    pub async fn set_shadow(&mut self, policy: &str) -> Result<ShadowStatus, String> {
        let script =
            self.catalog
                .script(policy)
                .ok_or_else(|| match self.catalog.script_error(policy) {
                    Some(error) => format!("the policy `{policy}` does not load: {error}"),
                    None => format!("no room policy named `{policy}`"),
                })?;
        let kv = crate::store::kv::SqliteKv::in_memory()
            .map(|kv| Arc::new(kv) as Arc<dyn KvStore>)
            .ok();
        let lua = self
            .catalog
            .load(script, self.room.clone(), kv)
            .await
            .map_err(|e| format!("the shadow `{policy}` failed to load: {e}"))?;
        let counts = self.catalog.metrics().shadow.clone();
        let shadow = Shadow::start(self.catalog.clone(), policy.to_owned(), lua, counts);
        let status = shadow.status();
        tracing::info!(policy = %self.name, shadow = %status.version, "shadow policy started");
        self.shadow = Some(shadow);
        Ok(status)
    }

    pub fn clear_shadow(&mut self) -> Option<ShadowStatus> {
        self.shadow.take().map(|s| s.status())
    }

    pub fn shadow_status(&self) -> Option<ShadowStatus> {
        self.shadow.as_ref().map(Shadow::status)
    }

    /// Starts writing the room's policy inputs to `path`
    /// ([`super::recording`]).
    pub fn start_recording(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        let first = Line::Start {
            at: self.catalog.clock().unix_ms(),
            room: self.room.name.clone(),
            channel_id: self.room.channel_id,
            custom_info: self.room.custom_info.clone(),
            policy: self.status.version.clone(),
        };
        self.stop_recording();
        self.recorder = Some(Recorder::start(path, first)?);
        Ok(())
    }

    /// Stops the recording, if there is one; returns its file.
    pub fn stop_recording(&mut self) -> Option<std::path::PathBuf> {
        let recorder = self.recorder.take()?;
        let path = recorder.path().to_path_buf();
        recorder.finish(self.catalog.clock().unix_ms());
        Some(path)
    }

    pub fn recording(&self) -> Option<&std::path::Path> {
        self.recorder.as_ref().map(Recorder::path)
    }

    /// Whether a shadow or a recording wants to see hook calls.
    fn observed(&self) -> bool {
        self.shadow.is_some() || self.recorder.is_some()
    }

    /// Hands a decide hook's inputs and live verdict to the shadow and
    /// the recording.
    fn observe_decide(
        &mut self,
        hook: &'static str,
        view: &Arc<RoomView>,
        request: serde_json::Value,
        verdict: serde_json::Value,
    ) {
        let at = self.catalog.clock().unix_ms();
        let version = self.status.version.clone().unwrap_or_default();
        if let Some(recorder) = &mut self.recorder {
            recorder.decide(
                at,
                hook,
                view,
                request.clone(),
                verdict.clone(),
                version.clone(),
            );
        }
        if let Some(shadow) = &self.shadow {
            shadow.decide(at, hook, view, request, verdict, version);
        }
    }

    fn observe_react(&mut self, hook: &'static str, view: &Arc<RoomView>, arg: serde_json::Value) {
        let at = self.catalog.clock().unix_ms();
        if let Some(recorder) = &mut self.recorder {
            recorder.react(at, hook, view, arg.clone());
        }
        if let Some(shadow) = &self.shadow {
            shadow.react(hook, view, arg);
        }
    }

    /// Versions, failures and when the current script version started.
    pub fn status(&self) -> &PolicyStatus {
        &self.status
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    fn refresh_labels(&mut self) {
        self.status.version = self.script().map(|s| s.label());
        self.status.plugins = self.plugins.iter().map(|p| p.label()).collect();
    }

    /// Records a script failure of `hook` (or `load`): the log, the room's
    /// status and `conclave_policy_failures_total`.
    fn failed(&mut self, hook: &str, error: &HookError) {
        self.record(hook, error.kind.label(), error.to_string());
    }

    /// Records a failure of `hook` (or `plugin`, or `load`) of the given
    /// kind.
    fn record(&mut self, hook: &str, kind: &'static str, error: String) {
        tracing::warn!(policy = %self.name, hook, kind, %error, "policy failure");
        self.catalog.metrics().failed(hook, kind);
        self.status.errors += 1;
        self.status.last_error = Some(error);
    }

    /// Picks up new script and plugin versions; a new script's chunk reads
    /// the room as `view`. Returns the previous script label when the script
    /// changed (for `on_reload`). A quarantined room gets a fresh state
    /// from the new version instead (and no `on_reload`: nothing was kept).
    pub async fn sync(&mut self, view: &Arc<RoomView>) -> Option<String> {
        let plugins = self.catalog.plugins();
        if !Arc::ptr_eq(&plugins, &self.plugins) {
            // Instances are per version: a changed plugin starts fresh, the
            // others keep their instance (and its state).
            let mut old: Vec<(Arc<Plugin>, Option<PluginInstance>)> = self
                .plugins
                .iter()
                .cloned()
                .zip(self.instances.drain(..))
                .collect();
            self.instances = plugins
                .iter()
                .map(|p| {
                    old.iter_mut()
                        .find(|(q, _)| Arc::ptr_eq(p, q))
                        .and_then(|(_, instance)| instance.take())
                })
                .collect();
            self.plugins = plugins;
        }
        let mut reloaded = None;
        let before = self.status.version.clone();
        let newest = self.catalog.script(&self.name);
        match (&self.lua, newest) {
            (Lua::Ready { state, script, .. }, Some(newest)) if !Arc::ptr_eq(script, &newest) => {
                let old = script.label();
                let state = state.clone();
                let view = view.clone();
                let script = newest.clone();
                let answer = self
                    .on_thread("load", state, move |lua| {
                        lua.reload(script, &view)
                            .map(|()| (lua.script().clone(), hooks_of(lua)))
                    })
                    .await;
                match answer {
                    Ok((script, defined)) => {
                        if let Lua::Ready {
                            script: current,
                            hooks,
                            ..
                        } = &mut self.lua
                        {
                            *current = script;
                            *hooks = defined;
                        }
                        reloaded = Some(old);
                    }
                    // Validated by the catalog, so this is rare (the room's
                    // state differs from the probe's: memory already near
                    // its cap, say).
                    Err(e) => self.failed("load", &e),
                }
            }
            (Lua::Quarantined { script, .. }, Some(newest)) if !Arc::ptr_eq(script, &newest) => {
                let fresh = self
                    .catalog
                    .load(newest, self.room.clone(), self.kv.clone())
                    .await;
                match fresh {
                    Ok(state) => {
                        tracing::info!(policy = %self.name, "a fresh script state replaces the quarantined one");
                        self.lua = Lua::ready(state);
                        self.status.quarantined = false;
                    }
                    Err(e) => self.failed("load", &e),
                }
            }
            _ => {}
        }
        self.sync_shadow().await;
        self.refresh_labels();
        if self.status.version != before {
            self.status.since = Some(self.catalog.clock().unix_ms());
        }
        reloaded
    }

    /// A shadow follows its policy's newest version (a fresh state: the
    /// live policy's `on_reload` is its own business). A stopped shadow
    /// restarts this way too.
    async fn sync_shadow(&mut self) {
        let Some(shadow) = &self.shadow else { return };
        let status = shadow.status();
        let newest = self.catalog.script(&status.policy).map(|s| s.label());
        if newest.is_some()
            && newest.as_deref() != Some(status.version.as_str())
            && let Err(e) = self.set_shadow(&status.policy).await
        {
            tracing::warn!(policy = %self.name, "{e}");
        }
    }

    /// Runs `call` on the room's state on a script thread. A call the pool
    /// gave no answer for is an error of kind `Stuck` or `Busy`; a stuck one
    /// quarantines the state.
    async fn on_thread<T: Send + 'static>(
        &mut self,
        hook: &str,
        state: Shared,
        call: impl FnOnce(&mut LuaPolicy) -> Result<T, HookError> + Send + 'static,
    ) -> Result<T, HookError> {
        let limit = self.catalog.call_limit();
        let answer = self
            .catalog
            .pool()
            .run(limit, move || {
                let mut lua = state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                call(&mut lua)
            })
            .await;
        match answer {
            Ok(result) => result,
            Err(overrun) => {
                let (script, hooks) = match &self.lua {
                    Lua::Ready { script, hooks, .. } | Lua::Quarantined { script, hooks } => {
                        (script.clone(), hooks.clone())
                    }
                    Lua::None => unreachable!("only a room with a state calls it"),
                };
                let error = ScriptError::overran(&script.label(), hook, overrun, limit);
                if error.kind == crate::script::ErrorKind::Stuck {
                    tracing::error!(policy = %self.name, hook, "room script quarantined: {error}");
                    self.lua = Lua::Quarantined { script, hooks };
                    self.status.quarantined = true;
                }
                Err(error)
            }
        }
    }

    /// Asks every plugin; the first deny wins. A failing plugin decides by
    /// its own failure mode.
    pub fn check_plugins(&mut self, check: &Check<'_>) -> Result<(), Denial> {
        for i in 0..self.plugins.len() {
            let plugin = self.plugins[i].clone();
            if self.instances[i].is_none() {
                match plugin.instantiate() {
                    Ok(instance) => self.instances[i] = Some(instance),
                    Err(e) => {
                        let error = format!("plugin {}: {e}", plugin.label());
                        self.record("plugin", "plugin", error.clone());
                        if plugin.failure_mode == FailureMode::Deny {
                            return Err(Denial::new(
                                Status::Internal,
                                error,
                                Decider::Plugin {
                                    plugin: plugin.label(),
                                },
                            ));
                        }
                        continue;
                    }
                }
            }
            let Some(instance) = self.instances[i].as_mut() else {
                continue;
            };
            match instance.check(check) {
                Verdict::Abstain | Verdict::Allow => {}
                Verdict::Deny(refusal) => {
                    return Err(Denial::new(
                        refusal.status,
                        refusal.message,
                        Decider::Plugin {
                            plugin: plugin.label(),
                        },
                    ));
                }
                Verdict::Failed(why) => {
                    // A trapped instance may hold broken state: start over.
                    self.instances[i] = None;
                    let error = format!("plugin {}: {why}", plugin.label());
                    self.record("plugin", "plugin", error.clone());
                    if plugin.failure_mode == FailureMode::Deny {
                        return Err(Denial::new(
                            Status::Forbidden,
                            format!("permission check failed ({error})"),
                            Decider::Plugin {
                                plugin: plugin.label(),
                            },
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `room.state` as JSON; `Null` without a script (or once quarantined).
    pub async fn room_state(&mut self) -> Result<serde_json::Value, String> {
        let Lua::Ready { state, .. } = &self.lua else {
            return Ok(serde_json::Value::Null);
        };
        let state = state.clone();
        self.on_thread("state", state, |lua| Ok(lua.room_state()))
            .await
            .map_err(|e| e.to_string())?
    }

    pub fn has_script(&self) -> bool {
        !matches!(self.lua, Lua::None)
    }

    /// Whether the room's state was set aside after a call never returned.
    pub fn is_quarantined(&self) -> bool {
        matches!(self.lua, Lua::Quarantined { .. })
    }

    /// Runs a decide hook. A failing hook decides by the policy failure
    /// mode: a denial, or `Pass`. A refusal the hook returns is its answer,
    /// turned into a denial by the pipeline (`authz`). A quarantined state
    /// is not asked: the failure mode answers.
    pub async fn decide<R: Serialize + Send + 'static>(
        &mut self,
        hook: &'static str,
        view: &Arc<RoomView>,
        request: R,
        effects: &mut Vec<Effect>,
    ) -> Result<Decision, Denial> {
        let state = match &self.lua {
            Lua::Quarantined { hooks, .. } if !hooks.contains(&hook) => {
                return Ok(Decision::Pass);
            }
            Lua::Quarantined { script, .. } => {
                let script = script.label();
                return self.failure_answer(hook, script, crate::script::ErrorKind::Stuck);
            }
            // Asked only for a shadow's or a recording's sake (the live
            // state lacks the hook: `wants` let it through for them): the
            // live answer is "no objection", and no thread is asked for it.
            // The hook list is the one taken at load, so the live state is
            // not touched from this thread.
            Lua::Ready { hooks, .. } if self.observed() && !hooks.contains(&hook) => None,
            Lua::Ready { state, .. } => Some(state.clone()),
            Lua::None => None,
        };
        if state.is_none() && !self.observed() {
            return Ok(Decision::Pass);
        }
        // Only a shadow or a recording needs the request as data.
        let observed = self
            .observed()
            .then(|| serde_json::to_value(&request).unwrap_or_default());
        let shared = view.clone();
        let answer = match state {
            Some(state) => {
                self.on_thread(hook, state, move |lua| {
                    let mut queued = Vec::new();
                    lua.decide(hook, &shared, &request, &mut queued)
                        .map(|decision| (decision, queued))
                })
                .await
            }
            None => Ok((Decision::Pass, Vec::new())),
        };
        if let Some(request) = observed {
            let verdict = super::shadow::verdict(
                &answer
                    .as_ref()
                    .map(|(d, _)| d.clone())
                    .map_err(Clone::clone),
            );
            self.observe_decide(hook, view, request, verdict);
        }
        match answer {
            Ok((decision, queued)) => {
                effects.extend(queued);
                Ok(decision)
            }
            Err(e) => {
                self.failed(hook, &e);
                self.failure_answer(hook, e.script, e.kind)
            }
        }
    }

    /// What a failed (or unasked) decide hook answers: the failure mode.
    /// The client learns what kind of failure; the script, line and message
    /// go to the log and the admin API only.
    fn failure_answer(
        &self,
        hook: &str,
        script: String,
        kind: crate::script::ErrorKind,
    ) -> Result<Decision, Denial> {
        match self.catalog.config().failure_mode {
            FailureMode::Deny => Err(Denial::new(
                Status::Forbidden,
                format!("the room policy `{}` failed ({})", self.name, kind.told()),
                Decider::Policy {
                    script,
                    hook: hook.to_owned(),
                },
            )),
            FailureMode::Allow => Ok(Decision::Pass),
        }
    }

    /// Runs a react hook with `arg`; a failure is reported and otherwise
    /// ignored. Returns the effects it queued.
    pub async fn react<A: Serialize + Send + 'static>(
        &mut self,
        hook: &'static str,
        view: &Arc<RoomView>,
        arg: A,
    ) -> Vec<Effect> {
        if self.observed() {
            let arg = serde_json::to_value(&arg).unwrap_or_default();
            self.observe_react(hook, view, arg);
        }
        let state = match &self.lua {
            Lua::Ready { hooks, .. } if self.observed() && !hooks.contains(&hook) => {
                return Vec::new();
            }
            Lua::Ready { state, .. } => state.clone(),
            _ => return Vec::new(),
        };
        let view = view.clone();
        let answer = self
            .on_thread(hook, state, move |lua| {
                let mut queued = Vec::new();
                lua.react(hook, &view, &[&arg], &mut queued)
                    .map(|()| queued)
            })
            .await;
        answer.unwrap_or_else(|e| {
            self.failed(hook, &e);
            Vec::new()
        })
    }

    /// Whether the script defines `hook` (so nothing is built, and no
    /// thread asked, for a hook that is not there). A quarantined state is
    /// not looked at: the hooks it defined answer by the failure mode.
    /// A shadow or a recording wants every hook, defined live or not: the
    /// candidate may define what the live policy does not.
    pub fn wants(&self, hook: &str) -> bool {
        self.observed()
            || match &self.lua {
                Lua::Quarantined { hooks, .. } => hook.starts_with("can_") && hooks.contains(&hook),
                _ => self.live_defines(hook),
            }
    }

    /// Whether the live state is ready and defines `hook`.
    fn live_defines(&self, hook: &str) -> bool {
        match &self.lua {
            Lua::Ready { state, .. } => state.try_lock().map_or(true, |l| l.defines(hook)),
            _ => false,
        }
    }

    pub fn set_timer(&mut self, name: String, after: Duration, repeat: bool, now: Instant) {
        self.timers.insert(
            name,
            Timer {
                due: now + after,
                every: repeat.then_some(after),
            },
        );
    }

    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// The names of the room's timers.
    pub fn timer_names(&self) -> std::collections::BTreeSet<String> {
        self.timers.keys().cloned().collect()
    }

    pub fn cancel_timer(&mut self, name: &str) {
        self.timers.remove(name);
    }

    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.values().map(|t| t.due).min()
    }

    /// Timers due at `now`, rescheduling repeating ones.
    pub fn due_timers(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        self.timers.retain(|name, timer| {
            if timer.due > now {
                return true;
            }
            due.push(name.clone());
            match timer.every {
                Some(every) => {
                    timer.due = now + every;
                    true
                }
                None => false,
            }
        });
        due
    }

    /// Memory held by the Lua state, in bytes (0 once quarantined: it is
    /// not the room's to look at any more).
    pub fn lua_memory(&self) -> usize {
        match &self.lua {
            Lua::Ready { state, .. } => state.try_lock().map_or(0, |l| l.used_memory()),
            _ => 0,
        }
    }

    pub fn script(&self) -> Option<&Arc<Script>> {
        match &self.lua {
            Lua::Ready { script, .. } | Lua::Quarantined { script, .. } => Some(script),
            Lua::None => None,
        }
    }

    /// The script's load failure, when a room could not get its state.
    pub fn load_failed(&mut self, error: &HookError) {
        self.failed("load", error);
    }
}
