//! Lua room policies: one sandboxed Lua state per room.
//!
//! A policy is `scripts/<name>.lua`, a chunk that returns a table of hooks:
//!
//! ```lua
//! local policy = {}
//! function policy.can_join(req)          -- decide: nil/true allow, false deny
//!   if room.count() >= 10 then return false, "the room is full" end
//! end
//! function policy.on_joined(member)      -- react
//!   room.send(member.user, { text = "welcome, " .. member.name })
//! end
//! return policy
//! ```
//!
//! Each room runs its own state (no lock shared between rooms), created from
//! the policy's current version when the room is created. A reload runs the
//! new version's chunk *in the same state*, so `room.state` survives, then
//! calls `on_reload`. docs/scripting.md documents every hook and function.

pub mod api;
pub mod sandbox;

use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, MultiValue, RegistryKey, Table, Value};
use serde::Serialize;

pub use api::{Effect, MemberView, RoomView};
pub use sandbox::LuaLimits;

use crate::policy::catalog::Script;
use crate::signal::protocol::Role;
use crate::status::{Failure, Status};
use crate::store::kv::KvStore;

/// Every hook a room policy may define: decide hooks, then react hooks.
pub const HOOKS: &[&str] = &[
    "can_create",
    "can_join",
    "can_set_role",
    "can_mute",
    "can_mute_all",
    "can_kick",
    "can_share_screen",
    "can_send",
    "on_joined",
    "on_left",
    "on_mute_changed",
    "on_role_changed",
    "on_screen_share_changed",
    "on_closing",
    "on_timer",
    "on_reload",
    "on_speaking",
];

/// What a loaded chunk's table of hooks says that it may not mean: each
/// function under a name that is no hook, with the closest hook name when one
/// is near (`can_joni` → `can_join`). Non-function values are the script's
/// business and pass.
pub fn hook_warnings(hooks: &Table, known: &[&str]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, value) in hooks.pairs::<Value, Value>().flatten() {
        let (Value::String(name), Value::Function(_)) = (&key, &value) else {
            continue;
        };
        let name = name.to_string_lossy();
        if known.contains(&name.as_str()) {
            continue;
        }
        let nearest = known
            .iter()
            .map(|hook| (strsim::damerau_levenshtein(&name, hook), *hook))
            .min()
            .filter(|(distance, hook)| *distance <= 2.max(hook.len() / 4));
        warnings.push(match nearest {
            Some((_, hook)) => {
                format!("`{name}` is not a hook and is never called; did you mean `{hook}`?")
            }
            None => format!("`{name}` is not a hook and is never called"),
        });
    }
    warnings.sort();
    warnings
}

/// How a script failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookErrorKind {
    /// The script raised an error or returned something unreadable.
    Error,
    /// The instruction or time budget ran out.
    Budget,
    /// The memory cap was hit.
    Memory,
}

/// A failed hook call (or a failed load), with the script and line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{script}: `{hook}` failed ({kind:?}): {message}")]
pub struct HookError {
    /// `name@version`.
    pub script: String,
    pub hook: String,
    pub kind: HookErrorKind,
    /// The Lua message, `scripts/name.lua:LINE: ...` for runtime errors.
    pub message: String,
}

/// What a decide hook answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// `nil`: no objection.
    Pass,
    /// `true` or `{allow = true}`: allowed, explicitly. For actions on other
    /// members this grants what the token alone would not.
    Allow,
    Deny(Failure),
    /// `{role = "...", muted = true}` from `can_join`: join, with this role
    /// and/or with audio and video muted.
    Join {
        role: Option<Role>,
        muted: bool,
    },
    /// `{payload = ...}` from `can_send`: deliver this instead.
    Payload(serde_json::Value),
    /// `{handled = true}` from `can_send`: the script took care of the
    /// message; the sender gets 200 and nothing is delivered.
    Handled,
}

/// Identifies the room a state belongs to.
pub struct RoomIdentity<'a> {
    pub name: &'a str,
    pub channel_id: i64,
    pub custom_info: &'a str,
}

/// One room's policy state.
pub struct LuaPolicy {
    lua: Lua,
    budget: Arc<sandbox::Budget>,
    hooks: RegistryKey,
    script: Arc<Script>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for LuaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaPolicy")
            .field("script", &self.script.label())
            .finish()
    }
}

impl LuaPolicy {
    /// A new state for `room`, running `script`'s chunk.
    pub fn new(
        script: Arc<Script>,
        room: RoomIdentity<'_>,
        limits: &LuaLimits,
        kv: Option<Arc<dyn KvStore>>,
    ) -> Result<LuaPolicy, HookError> {
        let load_error = |e: mlua::Error| HookError {
            script: script.label(),
            hook: "load".into(),
            kind: HookErrorKind::Error,
            message: sandbox::error_text(&e),
        };
        let (lua, budget) = sandbox::new_state(limits).map_err(load_error)?;
        api::install(
            &lua,
            room.name,
            room.channel_id,
            room.custom_info,
            &script.name,
            kv.map(|kv| (kv, script.name.clone())),
        )
        .map_err(load_error)?;
        // A new room is empty while its script loads.
        let view = Arc::new(RoomView::default());
        let hooks = run_chunk(&lua, &budget, &script, &view)?;
        let warnings = hook_warnings(&hooks, HOOKS);
        let hooks = lua.create_registry_value(hooks).map_err(load_error)?;
        Ok(LuaPolicy {
            lua,
            budget,
            hooks,
            script,
            warnings,
        })
    }

    pub fn script(&self) -> &Arc<Script> {
        &self.script
    }

    /// What loading the current version noticed ([`hook_warnings`]).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Switches to another version of the script, keeping `room.state`; the
    /// chunk reads the room as `view`. On failure the old version stays.
    pub fn reload(&mut self, script: Arc<Script>, view: &Arc<RoomView>) -> Result<(), HookError> {
        let hooks = run_chunk(&self.lua, &self.budget, &script, view)?;
        let warnings = hook_warnings(&hooks, HOOKS);
        let hooks = self
            .lua
            .create_registry_value(hooks)
            .map_err(|e| self.error("load", &e))?;
        let old = std::mem::replace(&mut self.hooks, hooks);
        let _ = self.lua.remove_registry_value(old);
        self.script = script;
        self.warnings = warnings;
        Ok(())
    }

    /// Bytes the state holds now.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// Whether the script defines `hook`.
    pub fn has_hook(&self, hook: &str) -> bool {
        self.hooks_table()
            .and_then(|t| t.raw_get::<Value>(hook))
            .is_ok_and(|v| v.is_function())
    }

    fn hooks_table(&self) -> mlua::Result<Table> {
        self.lua.registry_value::<Table>(&self.hooks)
    }

    fn error(&self, hook: &str, e: &mlua::Error) -> HookError {
        let kind = if sandbox::is_memory_error(e) {
            HookErrorKind::Memory
        } else if self.budget.is_exhausted() {
            HookErrorKind::Budget
        } else {
            HookErrorKind::Error
        };
        HookError {
            script: self.script.label(),
            hook: hook.into(),
            kind,
            message: sandbox::error_text(e),
        }
    }

    /// Calls `hook` with `arg` (serialized to Lua) and returns its results
    /// and the effects it queued. A missing hook returns `Ok(None)`.
    fn call(
        &mut self,
        hook: &str,
        view: &Arc<RoomView>,
        args: impl FnOnce(&Lua) -> mlua::Result<MultiValue>,
        effects: &mut Vec<Effect>,
    ) -> Result<Option<MultiValue>, HookError> {
        let function = match self.hooks_table().and_then(|t| t.raw_get::<Value>(hook)) {
            Ok(Value::Function(f)) => f,
            Ok(Value::Nil) => return Ok(None),
            Ok(other) => {
                return Err(HookError {
                    script: self.script.label(),
                    hook: hook.into(),
                    kind: HookErrorKind::Error,
                    message: format!("`{hook}` is a {}, not a function", other.type_name()),
                });
            }
            Err(e) => return Err(self.error(hook, &e)),
        };
        self.lua.set_app_data(api::HookContext {
            view: view.clone(),
            effects: Vec::new(),
            actions: true,
        });
        self.budget.reset();
        let result = args(&self.lua).and_then(|args| function.call::<MultiValue>(args));
        let ctx = self.lua.remove_app_data::<api::HookContext>();
        match result {
            Ok(values) => {
                // Effects count only when the hook completed.
                if let Some(ctx) = ctx {
                    effects.extend(ctx.effects);
                }
                Ok(Some(values))
            }
            Err(e) => Err(self.error(hook, &e)),
        }
    }

    /// Runs a decide hook (`can_join`, `can_mute`, ...) on `request`.
    pub fn decide(
        &mut self,
        hook: &str,
        view: &Arc<RoomView>,
        request: &impl Serialize,
        effects: &mut Vec<Effect>,
    ) -> Result<Decision, HookError> {
        let values = self.call(
            hook,
            view,
            |lua| Ok(MultiValue::from_iter([lua.to_value(request)?])),
            effects,
        )?;
        let Some(values) = values else {
            return Ok(Decision::Pass);
        };
        self.read_decision(hook, values)
    }

    fn read_decision(&self, hook: &str, values: MultiValue) -> Result<Decision, HookError> {
        let unreadable = |message: String| HookError {
            script: self.script.label(),
            hook: hook.into(),
            kind: HookErrorKind::Error,
            message,
        };
        let default_reason = || format!("refused by the room policy `{}`", self.script.name);
        let mut values = values.into_iter();
        let first = values.next().unwrap_or(Value::Nil);
        match first {
            Value::Nil => Ok(Decision::Pass),
            Value::Boolean(true) => Ok(Decision::Allow),
            Value::Boolean(false) => {
                let reason = match values.next() {
                    Some(Value::String(s)) => s.to_string_lossy(),
                    _ => default_reason(),
                };
                Ok(Decision::Deny(Failure::new(Status::Forbidden, reason)))
            }
            Value::Table(t) => {
                let get = |key: &str| t.raw_get::<Value>(key).unwrap_or(Value::Nil);
                if let Value::Boolean(false) = get("allow") {
                    let reason = match get("reason") {
                        Value::String(s) => s.to_string_lossy(),
                        _ => default_reason(),
                    };
                    let status = match get("code") {
                        Value::Integer(code) => u16::try_from(code)
                            .ok()
                            .and_then(Status::from_code)
                            .filter(|s| *s != Status::Ok)
                            .unwrap_or(Status::Forbidden),
                        _ => Status::Forbidden,
                    };
                    return Ok(Decision::Deny(Failure::new(status, reason)));
                }
                if let Value::Boolean(true) = get("handled") {
                    return Ok(Decision::Handled);
                }
                let role = match get("role") {
                    Value::String(role) => Some(
                        api::parse_role(&role.to_string_lossy())
                            .map_err(|e| unreadable(sandbox::error_text(&e)))?,
                    ),
                    _ => None,
                };
                let muted = matches!(get("muted"), Value::Boolean(true));
                if role.is_some() || muted {
                    return Ok(Decision::Join { role, muted });
                }
                let payload = get("payload");
                if !payload.is_nil() {
                    let payload = self
                        .lua
                        .from_value(payload)
                        .map_err(|e| unreadable(e.to_string()))?;
                    return Ok(Decision::Payload(payload));
                }
                Ok(Decision::Allow)
            }
            other => Err(unreadable(format!(
                "`{hook}` returned a {}; expected nil, a boolean or a table",
                other.type_name()
            ))),
        }
    }

    /// Runs a react hook (`on_joined`, `on_left`, ...) with `args`.
    pub fn react(
        &mut self,
        hook: &str,
        view: &Arc<RoomView>,
        args: &[&dyn erased::ToLua],
        effects: &mut Vec<Effect>,
    ) -> Result<(), HookError> {
        self.call(
            hook,
            view,
            |lua| {
                args.iter()
                    .map(|a| a.to_lua(lua))
                    .collect::<mlua::Result<MultiValue>>()
            },
            effects,
        )
        .map(drop)
    }
}

/// Runs a script's chunk and checks it returned a table of hooks. The chunk
/// may read the room (`view`) but not act on it.
fn run_chunk(
    lua: &Lua,
    budget: &sandbox::Budget,
    script: &Script,
    view: &Arc<RoomView>,
) -> Result<Table, HookError> {
    budget.reset();
    lua.set_app_data(api::HookContext {
        view: view.clone(),
        effects: Vec::new(),
        actions: false,
    });
    let fail = |kind, message| HookError {
        script: script.label(),
        hook: "load".into(),
        kind,
        message,
    };
    let value = lua
        .load(&*script.source)
        .set_name(format!("@{}", script.display_path()))
        .set_mode(mlua::chunk::ChunkMode::Text)
        .eval::<Value>();
    lua.remove_app_data::<api::HookContext>();
    let value = value.map_err(|e| {
        let kind = if sandbox::is_memory_error(&e) {
            HookErrorKind::Memory
        } else if budget.is_exhausted() {
            HookErrorKind::Budget
        } else {
            HookErrorKind::Error
        };
        fail(kind, sandbox::error_text(&e))
    })?;
    match value {
        Value::Table(t) => Ok(t),
        other => Err(fail(
            HookErrorKind::Error,
            format!(
                "the script must return a table of hooks, not a {}",
                other.type_name()
            ),
        )),
    }
}

/// Hook arguments of different types, converted to Lua one by one.
pub mod erased {
    use mlua::{Lua, LuaSerdeExt, Value};
    use serde::Serialize;

    pub trait ToLua {
        fn to_lua(&self, lua: &Lua) -> mlua::Result<Value>;
    }

    impl<T: Serialize> ToLua for T {
        fn to_lua(&self, lua: &Lua) -> mlua::Result<Value> {
            lua.to_value(self)
        }
    }
}

#[cfg(test)]
mod tests;
