//! One room's share of the policy runtime: its Lua state, its plugin
//! instances, its timers, and which versions it runs. The authorization
//! pipeline that asks them is `authz`.
//!
//! Owned by the room's task, so nothing here locks. Failures are turned into
//! decisions here, in one place: a script or plugin that errors, runs out of
//! budget or memory, traps or answers garbage is logged (with the script and
//! line), remembered for the admin API, and decides by its failure mode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::authz::{Decider, Denial};
use super::catalog::{Catalog, Script};
use super::lua::{Decision, Effect, HookError, HookErrorKind, LuaPolicy, RoomView};
use super::wasm::{Plugin, PluginInstance, Verdict};
use super::{Check, FailureMode};
use crate::status::Status;

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
}

struct Timer {
    due: Instant,
    every: Option<Duration>,
}

/// A room's policy state.
pub struct RoomPolicy {
    catalog: Arc<Catalog>,
    name: String,
    lua: Option<LuaPolicy>,
    plugins: Arc<Vec<Arc<Plugin>>>,
    instances: Vec<Option<PluginInstance>>,
    timers: BTreeMap<String, Timer>,
    status: PolicyStatus,
}

impl std::fmt::Debug for RoomPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomPolicy")
            .field("status", &self.status)
            .finish()
    }
}

impl RoomPolicy {
    pub fn new(catalog: Arc<Catalog>, name: String, lua: Option<LuaPolicy>) -> RoomPolicy {
        let plugins = catalog.plugins();
        let mut policy = RoomPolicy {
            catalog,
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

    /// Versions, failures and when the current script version started.
    pub fn status(&self) -> &PolicyStatus {
        &self.status
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn refresh_labels(&mut self) {
        self.status.version = self.lua.as_ref().map(|l| l.script().label());
        self.status.plugins = self.plugins.iter().map(|p| p.label()).collect();
    }

    /// Records a failure of `hook` (or `plugin`, or `load`) of the given
    /// kind: the log, the room's status and `conclave_policy_failures_total`.
    fn failed(&mut self, hook: &str, kind: &'static str, error: String) {
        tracing::warn!(policy = %self.name, hook, kind, %error, "policy failure");
        self.catalog.metrics().failed(hook, kind);
        self.status.errors += 1;
        self.status.last_error = Some(error);
    }

    /// Picks up new script and plugin versions; a new script's chunk reads
    /// the room as `view`. Returns the previous script label when the script
    /// changed (for `on_reload`).
    pub fn sync(&mut self, view: &Arc<RoomView>) -> Option<String> {
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
        if let Some(lua) = &mut self.lua
            && let Some(newest) = self.catalog.script(&self.name)
            && !Arc::ptr_eq(lua.script(), &newest)
        {
            let old = lua.script().label();
            match lua.reload(newest, view) {
                Ok(()) => reloaded = Some(old),
                // Validated by the catalog, so this is rare (the room's state
                // differs from the probe's: memory already near its cap, say).
                Err(e) => self.failed("load", kind_label(e.kind), e.to_string()),
            }
        }
        self.refresh_labels();
        if self.status.version != before {
            self.status.since = Some(self.catalog.clock().unix_ms());
        }
        reloaded
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
                        self.failed("plugin", "plugin", error.clone());
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
                    self.failed("plugin", "plugin", error.clone());
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

    pub fn has_script(&self) -> bool {
        self.lua.is_some()
    }

    /// Runs a decide hook. A failing hook decides by the policy failure
    /// mode: a denial, or `Pass`. A refusal the hook returns is its answer,
    /// turned into a denial by the pipeline (`authz`).
    pub fn decide(
        &mut self,
        hook: &str,
        view: &Arc<RoomView>,
        request: &impl Serialize,
        effects: &mut Vec<Effect>,
    ) -> Result<Decision, Denial> {
        let Some(lua) = &mut self.lua else {
            return Ok(Decision::Pass);
        };
        match lua.decide(hook, view, request, effects) {
            Ok(decision) => Ok(decision),
            Err(e) => {
                // The client learns what kind of failure; the script, line
                // and message go to the log and the admin API only.
                let kind = match e.kind {
                    super::lua::HookErrorKind::Error => "an error",
                    super::lua::HookErrorKind::Budget => "its time budget ran out",
                    super::lua::HookErrorKind::Memory => "its memory limit was hit",
                };
                self.failed(hook, kind_label(e.kind), e.to_string());
                match self.catalog.config().failure_mode {
                    FailureMode::Deny => Err(Denial::new(
                        Status::Forbidden,
                        format!("the room policy `{}` failed ({kind})", self.name),
                        Decider::Policy {
                            script: e.script,
                            hook: hook.to_owned(),
                        },
                    )),
                    FailureMode::Allow => Ok(Decision::Pass),
                }
            }
        }
    }

    /// Runs a react hook; a failure is reported and otherwise ignored.
    pub fn react(
        &mut self,
        hook: &str,
        view: &Arc<RoomView>,
        args: &[&dyn crate::script::ToLua],
        effects: &mut Vec<Effect>,
    ) {
        let Some(lua) = &mut self.lua else {
            return;
        };
        if !lua.has_hook(hook) {
            return;
        }
        if let Err(e) = lua.react(hook, view, args, effects) {
            self.failed(hook, kind_label(e.kind), e.to_string());
        }
    }

    /// Whether the script defines `hook` (so views need not be built for nothing).
    pub fn wants(&self, hook: &str) -> bool {
        self.lua.as_ref().is_some_and(|l| l.has_hook(hook))
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

    /// Memory held by the Lua state, in bytes.
    pub fn lua_memory(&self) -> usize {
        self.lua.as_ref().map_or(0, |l| l.used_memory())
    }

    pub fn script(&self) -> Option<&Arc<Script>> {
        self.lua.as_ref().map(|l| l.script())
    }

    /// The script's load failure, when a room could not get its state.
    pub fn load_failed(&mut self, error: &HookError) {
        self.failed("load", kind_label(error.kind), error.to_string());
    }
}

fn kind_label(kind: HookErrorKind) -> &'static str {
    match kind {
        HookErrorKind::Error => "error",
        HookErrorKind::Budget => "budget",
        HookErrorKind::Memory => "memory",
    }
}
