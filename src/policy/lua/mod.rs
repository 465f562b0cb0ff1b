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

use std::sync::Arc;

use mlua::{LuaSerdeExt, MultiValue, Value};
use serde::Serialize;

pub use crate::script::{ErrorKind as HookErrorKind, LuaLimits, ScriptError as HookError};
use crate::script::{Source, Vm};
pub use api::{Effect, EffectLimits, LimitHits, MemberView, RoomView};

use crate::model::Role;
use crate::policy::catalog::Script;
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

/// [`RoomIdentity`] that can travel to a script thread.
#[derive(Clone, Debug, Default)]
pub struct OwnedIdentity {
    pub name: String,
    pub channel_id: i64,
    pub custom_info: String,
}

impl OwnedIdentity {
    pub fn borrowed(&self) -> RoomIdentity<'_> {
        RoomIdentity {
            name: &self.name,
            channel_id: self.channel_id,
            custom_info: &self.custom_info,
        }
    }
}

/// One room's policy state.
pub struct LuaPolicy {
    vm: Vm,
    script: Arc<Script>,
}

impl std::fmt::Debug for LuaPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaPolicy")
            .field("script", &self.script.label())
            .finish()
    }
}

/// How a script version is named in messages, and its text.
fn source<'a>(script: &'a Script, label: &'a str, path: &'a str) -> Source<'a> {
    Source {
        label,
        path,
        text: &script.source,
    }
}

/// What installs a policy's API (`room`, `store`, `log`) for `room`.
fn installer<'a>(
    script: &'a Script,
    room: RoomIdentity<'a>,
    effects: EffectLimits,
    hits: api::LimitHits,
    kv: Option<Arc<dyn KvStore>>,
) -> impl FnOnce(&mlua::Lua) -> mlua::Result<()> + 'a {
    move |lua| {
        api::install(
            lua,
            room.name,
            room.channel_id,
            room.custom_info,
            &script.name,
            kv.map(|kv| (kv, script.name.clone())),
            effects,
            hits,
        )
    }
}

/// The context of a load: the chunk reads the room as `view`, and may not act.
fn loading(view: &Arc<RoomView>) -> api::HookContext {
    api::HookContext {
        view: view.clone(),
        effects: Vec::new(),
        actions: false,
    }
}

impl LuaPolicy {
    /// A new state for `room`, running `script`'s chunk, with the default
    /// [`EffectLimits`] and nowhere to count their hits.
    pub fn new(
        script: Arc<Script>,
        room: RoomIdentity<'_>,
        limits: &LuaLimits,
        kv: Option<Arc<dyn KvStore>>,
    ) -> Result<LuaPolicy, HookError> {
        Self::bounded(
            script,
            room,
            limits,
            &EffectLimits::default(),
            api::LimitHits::default(),
            kv,
        )
    }

    /// A new state for `room`, running `script`'s chunk; what hooks may ask
    /// for is bounded by `effects`, and refusals are counted in `hits`.
    pub fn bounded(
        script: Arc<Script>,
        room: RoomIdentity<'_>,
        limits: &LuaLimits,
        effects: &EffectLimits,
        hits: api::LimitHits,
        kv: Option<Arc<dyn KvStore>>,
    ) -> Result<LuaPolicy, HookError> {
        let (label, path) = (script.label(), script.display_path());
        let source = source(&script, &label, &path);
        let install = installer(&script, room, effects.clone(), hits, kv);
        // A new room is empty while its script loads.
        let empty = Arc::new(RoomView::default());
        let vm = Vm::load(limits, install, &source, HOOKS, loading(&empty))?;
        Ok(LuaPolicy { vm, script })
    }

    /// What `conclave policy check` reports about `script`: its chunk run
    /// within `limits` in a state like a room's (named `check`, with an
    /// empty store), then looked at ([`crate::script::inspect`]).
    pub fn inspect(
        script: &Script,
        limits: &LuaLimits,
        kv: Option<Arc<dyn KvStore>>,
    ) -> Result<crate::script::Inspection, HookError> {
        let (label, path) = (script.label(), script.display_path());
        let source = source(script, &label, &path);
        let room = RoomIdentity {
            name: "check",
            channel_id: 0,
            custom_info: "",
        };
        let install = installer(
            script,
            room,
            EffectLimits::default(),
            Default::default(),
            kv,
        );
        let empty = Arc::new(RoomView::default());
        // Every hook is called with one table (or string) today.
        crate::script::inspect(limits, install, &source, HOOKS, |_| 1, loading(&empty))
    }

    pub fn script(&self) -> &Arc<Script> {
        &self.script
    }

    /// `room.state` as JSON (what `policy test` asserts on); a value JSON
    /// cannot hold (a function, say) is an error naming it.
    pub fn room_state(&self) -> Result<serde_json::Value, String> {
        let lua = self.vm.lua();
        let room: mlua::Table = lua.globals().raw_get("room").map_err(|e| e.to_string())?;
        let state: Value = room.raw_get("state").map_err(|e| e.to_string())?;
        lua.from_value(state).map_err(|e| e.to_string())
    }

    /// What loading the current version noticed (functions under names
    /// that are no hook).
    pub fn warnings(&self) -> &[String] {
        self.vm.warnings()
    }

    /// Switches to another version of the script, keeping `room.state`; the
    /// chunk reads the room as `view`. On failure the old version stays.
    pub fn reload(&mut self, script: Arc<Script>, view: &Arc<RoomView>) -> Result<(), HookError> {
        let (label, path) = (script.label(), script.display_path());
        self.vm
            .reload(&source(&script, &label, &path), HOOKS, loading(view))?;
        self.script = script;
        Ok(())
    }

    /// Bytes the state holds now.
    pub fn used_memory(&self) -> usize {
        self.vm.used_memory()
    }

    /// Whether the script defines `hook`.
    pub fn has_hook(&self, hook: &str) -> bool {
        self.vm.has_hook(hook)
    }

    /// Whether the script has anything under `hook`: a function, or a value
    /// that fails when called (and so must be called, to fail).
    pub fn defines(&self, hook: &str) -> bool {
        self.vm.defines(hook)
    }

    /// Calls `hook` with the arguments `args` builds; the effects it queued
    /// are added to `effects` only if it completed. A missing hook returns
    /// `Ok(None)`.
    fn call(
        &mut self,
        hook: &str,
        view: &Arc<RoomView>,
        args: impl FnOnce(&mlua::Lua) -> mlua::Result<MultiValue>,
        effects: &mut Vec<Effect>,
    ) -> Result<Option<MultiValue>, HookError> {
        let context = api::HookContext {
            view: view.clone(),
            effects: Vec::new(),
            actions: true,
        };
        let (context, result) = self.vm.call(hook, context, args);
        if result.as_ref().is_ok_and(Option::is_some) {
            effects.extend(context.effects);
        }
        result
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
                    Value::String(role) => {
                        Some(role.to_string_lossy().parse::<Role>().map_err(unreadable)?)
                    }
                    _ => None,
                };
                let muted = matches!(get("muted"), Value::Boolean(true));
                if role.is_some() || muted {
                    return Ok(Decision::Join { role, muted });
                }
                let payload = get("payload");
                if !payload.is_nil() {
                    let payload = self
                        .vm
                        .lua()
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
        args: &[&dyn crate::script::ToLua],
        effects: &mut Vec<Effect>,
    ) -> Result<(), HookError> {
        self.call(hook, view, crate::script::args(args), effects)
            .map(drop)
    }
}

#[cfg(test)]
mod tests;
