//! The one Lua host: room policies and bots both run on it.
//!
//! A script is a chunk that returns a table of hooks. [`Vm`] owns one
//! sandboxed Lua state ([`sandbox`]): it installs the caller's API, runs the
//! chunk within the limits, checks the returned table (and warns about
//! functions under names that are no hook), and calls hooks by name with a
//! fresh budget each time. What a hook asks for is queued in a per-call
//! context the caller hands in ([`Vm::call`]) and takes back afterwards, so a
//! script never re-enters whatever runs it.
//!
//! Failures are [`ScriptError`]s naming the script, the hook, what kind of
//! failure it was (an error, the budget, the memory cap) and Lua's message
//! with file and line.

mod pattern;
pub mod pool;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, MultiValue, RegistryKey, Table, Value};
use serde::Serialize;

pub use sandbox::{Budget, LuaLimits, error_text, is_memory_error};

/// The shortest interval a repeating timer runs at, in policies and bots
/// alike: a shorter one is run at this interval.
pub const MIN_REPEAT: Duration = Duration::from_millis(10);

/// How a script failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The script raised an error or returned something unreadable.
    Error,
    /// The instruction or time budget ran out.
    Budget,
    /// The memory cap was hit.
    Memory,
    /// The call did not return within its time budget and grace: the
    /// watchdog gave up on it, and on the state it was running in.
    Stuck,
    /// No script thread was free to start the call in time.
    Busy,
}

impl ErrorKind {
    /// The `kind` label of `conclave_policy_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Error => "error",
            ErrorKind::Budget => "budget",
            ErrorKind::Memory => "memory",
            ErrorKind::Stuck => "stuck",
            ErrorKind::Busy => "busy",
        }
    }

    /// What a client is told about a failure of this kind.
    pub fn told(self) -> &'static str {
        match self {
            ErrorKind::Error => "an error",
            ErrorKind::Budget => "its time budget ran out",
            ErrorKind::Memory => "its memory limit was hit",
            ErrorKind::Stuck => "it stopped answering",
            ErrorKind::Busy => "the server is too busy to run it",
        }
    }
}

/// A failed hook call (or a failed load), with the script and line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{script}: `{hook}` failed ({kind:?}): {message}")]
pub struct ScriptError {
    /// How the script is named in logs: `name@version`, or its path.
    pub script: String,
    /// The hook, or `load` for the chunk itself.
    pub hook: String,
    pub kind: ErrorKind,
    /// The Lua message, `scripts/name.lua:LINE: ...` for runtime errors.
    pub message: String,
}

impl ScriptError {
    /// A call the pool gave no answer for ([`pool::Overrun`]).
    pub fn overran(
        script: &str,
        hook: &str,
        overrun: pool::Overrun,
        limit: Duration,
    ) -> ScriptError {
        let (kind, message) = match overrun {
            pool::Overrun::Stuck => (
                ErrorKind::Stuck,
                format!(
                    "did not return within {limit:?} (a long call into a library, or code the budget cannot see); \
                     the room's script state is set aside until the script is reloaded"
                ),
            ),
            pool::Overrun::Busy => (
                ErrorKind::Busy,
                "no script thread was free to run it in time".to_owned(),
            ),
            pool::Overrun::Panicked => (
                ErrorKind::Stuck,
                "the host failed while running it (a bug in conclave); the script state is set aside".to_owned(),
            ),
        };
        ScriptError {
            script: script.to_owned(),
            hook: hook.to_owned(),
            kind,
            message,
        }
    }
}

/// The text of a script and how to name it.
pub struct Source<'a> {
    /// `name@hash` or a path: what errors and logs call the script.
    pub label: &'a str,
    /// The chunk name Lua puts in messages (`scripts/name.lua`).
    pub path: &'a str,
    pub text: &'a str,
}

/// One sandboxed Lua state running one script.
pub struct Vm {
    lua: Lua,
    budget: Arc<Budget>,
    hooks: RegistryKey,
    label: String,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("script", &self.label).finish()
    }
}

impl Vm {
    /// A fresh state with `install`'s API, running `source`'s chunk while
    /// `context` is in the state's app data (so the chunk may read what the
    /// context offers). `known` lists the hook names the script may define.
    pub fn load<C: Send + 'static>(
        limits: &LuaLimits,
        install: impl FnOnce(&Lua) -> mlua::Result<()>,
        source: &Source<'_>,
        known: &[&str],
        context: C,
    ) -> Result<Vm, ScriptError> {
        let (lua, budget) = installed(limits, install, source)?;
        let (hooks, warnings) = run_chunk(&lua, &budget, source, known, context)?;
        let hooks = lua
            .create_registry_value(hooks)
            .map_err(|e| load_error(source, &e))?;
        Ok(Vm {
            lua,
            budget,
            hooks,
            label: source.label.to_owned(),
            warnings,
        })
    }

    /// Runs another version's chunk in this same state (globals and the
    /// script's own tables survive) and switches to the hooks it returns. On
    /// failure the old hooks stay.
    pub fn reload<C: Send + 'static>(
        &mut self,
        source: &Source<'_>,
        known: &[&str],
        context: C,
    ) -> Result<(), ScriptError> {
        let (hooks, warnings) = run_chunk(&self.lua, &self.budget, source, known, context)?;
        let hooks = self
            .lua
            .create_registry_value(hooks)
            .map_err(|e| self.error("load", &e))?;
        let old = std::mem::replace(&mut self.hooks, hooks);
        let _ = self.lua.remove_registry_value(old);
        self.label = source.label.to_owned();
        self.warnings = warnings;
        Ok(())
    }

    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// What loading the current version noticed ([`hook_warnings`]).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bytes the state holds now.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// Whether the script defines `hook`.
    pub fn has_hook(&self, hook: &str) -> bool {
        self.hooks()
            .and_then(|t| t.raw_get::<Value>(hook))
            .is_ok_and(|v| v.is_function())
    }

    /// Whether the script's table has anything under `hook` (a function,
    /// or something that will fail when called as one).
    pub fn defines(&self, hook: &str) -> bool {
        self.hooks()
            .and_then(|t| t.raw_get::<Value>(hook))
            .is_ok_and(|v| !v.is_nil())
    }

    fn hooks(&self) -> mlua::Result<Table> {
        self.lua.registry_value::<Table>(&self.hooks)
    }

    /// Calls `hook` with the arguments `args` builds, with `context` in the
    /// app data for the call's duration and a fresh budget. Returns the
    /// context (with whatever the hook queued in it) and the hook's results;
    /// `Ok(None)` when the script has no such hook.
    pub fn call<C: Send + 'static>(
        &mut self,
        hook: &str,
        context: C,
        args: impl FnOnce(&Lua) -> mlua::Result<MultiValue>,
    ) -> (C, Result<Option<MultiValue>, ScriptError>) {
        let function = match self.hooks().and_then(|t| t.raw_get::<Value>(hook)) {
            Ok(Value::Function(f)) => f,
            Ok(Value::Nil) => return (context, Ok(None)),
            Ok(other) => {
                let error = ScriptError {
                    script: self.label.clone(),
                    hook: hook.into(),
                    kind: ErrorKind::Error,
                    message: format!("`{hook}` is a {}, not a function", other.type_name()),
                };
                return (context, Err(error));
            }
            Err(e) => return (context, Err(self.error(hook, &e))),
        };
        let (context, result) = self.invoke(hook, &function, context, args);
        (context, result.map(Some))
    }

    /// Calls a function of the script's (a timer's, say) as [`Vm::call`]
    /// calls a hook; `what` names it in errors.
    pub fn invoke<C: Send + 'static>(
        &mut self,
        what: &str,
        function: &mlua::Function,
        context: C,
        args: impl FnOnce(&Lua) -> mlua::Result<MultiValue>,
    ) -> (C, Result<MultiValue, ScriptError>) {
        self.lua.set_app_data(context);
        self.budget.reset();
        let result = args(&self.lua).and_then(|args| function.call::<MultiValue>(args));
        let context = self
            .lua
            .remove_app_data::<C>()
            .expect("the context set above is still there: scripts cannot remove app data");
        (context, result.map_err(|e| self.error(what, &e)))
    }

    /// A script error for `hook`, classified by what stopped it.
    pub fn error(&self, hook: &str, e: &mlua::Error) -> ScriptError {
        classify(&self.label, hook, &self.budget, e)
    }
}

fn classify(label: &str, hook: &str, budget: &Budget, e: &mlua::Error) -> ScriptError {
    let kind = if is_memory_error(e) {
        ErrorKind::Memory
    } else if budget.is_exhausted() {
        ErrorKind::Budget
    } else {
        ErrorKind::Error
    };
    ScriptError {
        script: label.to_owned(),
        hook: hook.into(),
        kind,
        message: error_text(e),
    }
}

/// A fresh sandboxed state with `install`'s API, before any chunk runs.
fn installed(
    limits: &LuaLimits,
    install: impl FnOnce(&Lua) -> mlua::Result<()>,
    source: &Source<'_>,
) -> Result<(Lua, Arc<Budget>), ScriptError> {
    let (lua, budget) = sandbox::new_state(limits).map_err(|e| load_error(source, &e))?;
    install(&lua).map_err(|e| load_error(source, &e))?;
    Ok((lua, budget))
}

/// A failure of the host while loading `source` (not the chunk's own).
fn load_error(source: &Source<'_>, e: &mlua::Error) -> ScriptError {
    ScriptError {
        script: source.label.to_owned(),
        hook: "load".into(),
        kind: ErrorKind::Error,
        message: error_text(e),
    }
}

/// Runs a chunk within a fresh budget and checks that it returned a table
/// of hooks; returns the table and the warnings about it.
fn run_chunk<C: Send + 'static>(
    lua: &Lua,
    budget: &Budget,
    source: &Source<'_>,
    known: &[&str],
    context: C,
) -> Result<(Table, Vec<String>), ScriptError> {
    budget.reset();
    lua.set_app_data(context);
    let value = lua
        .load(source.text)
        .set_name(format!("@{}", source.path))
        .set_mode(mlua::chunk::ChunkMode::Text)
        .eval::<Value>();
    lua.remove_app_data::<C>();
    let value = value.map_err(|e| classify(source.label, "load", budget, &e))?;
    match value {
        Value::Table(t) => {
            let warnings = hook_warnings(&t, known);
            Ok((t, warnings))
        }
        other => Err(ScriptError {
            script: source.label.to_owned(),
            hook: "load".into(),
            kind: ErrorKind::Error,
            message: format!(
                "the script must return a table of hooks, not a {}",
                other.type_name()
            ),
        }),
    }
}

/// What `policy check` reports about one script: what it defines, and what
/// it may not mean.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Inspection {
    /// Every hook the chunk's table defines, in the order of `known`.
    pub hooks: Vec<HookInfo>,
    pub warnings: Vec<Warning>,
    /// Bytes the state held once the chunk ran.
    pub memory: usize,
}

/// One hook a script defines.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HookInfo {
    pub name: String,
    /// Where its definition starts.
    pub line: Option<usize>,
    pub params: u8,
    pub vararg: bool,
}

/// Something a script does that is legal and probably not meant.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Warning {
    pub line: Option<usize>,
    pub message: String,
}

/// Loads `source` as [`Vm::load`] would, then looks at it: the hooks it
/// defines and their parameters (more than `params(hook)` is a warning:
/// the extra ones are always nil), functions under names that are no hook,
/// and globals the chunk set (shared by every call, kept across reloads,
/// and easy to create by a missing `local`).
pub fn inspect<C: Send + 'static>(
    limits: &LuaLimits,
    install: impl FnOnce(&Lua) -> mlua::Result<()>,
    source: &Source<'_>,
    known: &[&str],
    params: impl Fn(&str) -> u8,
    context: C,
) -> Result<Inspection, ScriptError> {
    let (lua, budget) = installed(limits, install, source)?;
    let before: std::collections::BTreeSet<String> = global_names(&lua);
    let (table, _) = run_chunk(&lua, &budget, source, known, context)?;
    let line_of = |value: &Value| match value {
        Value::Function(f) => f.info().line_defined,
        _ => None,
    };
    let mut inspection = Inspection {
        memory: lua.used_memory(),
        ..Inspection::default()
    };
    for hook in known {
        let Ok(value) = table.raw_get::<Value>(*hook) else {
            continue;
        };
        match &value {
            Value::Nil => {}
            Value::Function(f) => {
                let info = f.info();
                let expected = params(hook);
                if info.num_params > expected {
                    inspection.warnings.push(Warning {
                        line: info.line_defined,
                        message: format!(
                            "`{hook}` takes {} parameters but is called with {expected}; the rest are always nil",
                            info.num_params
                        ),
                    });
                }
                inspection.hooks.push(HookInfo {
                    name: (*hook).to_owned(),
                    line: info.line_defined,
                    params: info.num_params,
                    vararg: info.is_vararg,
                });
            }
            other => inspection.warnings.push(Warning {
                line: None,
                message: format!(
                    "`{hook}` is a {}, not a function: calling it fails",
                    other.type_name()
                ),
            }),
        }
    }
    for message in hook_warnings(&table, known) {
        // `hook_warnings` names the function first, in backquotes.
        let name = message.split('`').nth(1).unwrap_or_default();
        let line = table.raw_get::<Value>(name).ok().and_then(|v| line_of(&v));
        inspection.warnings.push(Warning { line, message });
    }
    for name in global_names(&lua).difference(&before) {
        inspection.warnings.push(Warning {
            line: assignment_line(source.text, name),
            message: format!(
                "the chunk sets the global `{name}`: it is shared by every hook and kept across reloads; make it `local`, or keep the room's data in `room.state`"
            ),
        });
    }
    inspection.warnings.sort_by_key(|w| w.line.unwrap_or(0));
    inspection.hooks.sort_by_key(|h| h.line.unwrap_or(0));
    Ok(inspection)
}

fn global_names(lua: &Lua) -> std::collections::BTreeSet<String> {
    lua.globals()
        .pairs::<Value, Value>()
        .flatten()
        .filter_map(|(k, _)| match k {
            Value::String(s) => Some(s.to_string_lossy()),
            _ => None,
        })
        .collect()
}

/// The first line that assigns `name` or defines it as a function, if the
/// source says so plainly.
fn assignment_line(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = line.strip_prefix("function ").unwrap_or(line).trim_start();
            rest.strip_prefix(name).is_some_and(|after| {
                let after = after.trim_start();
                (after.starts_with('=') && !after.starts_with("==")) || after.starts_with('(')
            }) && !line.starts_with("local ")
        })
        .map(|i| i + 1)
}

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

/// An error raised from a Rust function, prefixed with the calling script's
/// file and line as Lua's own errors are (`scripts/a.lua:3: ...`).
pub fn located(lua: &Lua, message: impl std::fmt::Display) -> mlua::Error {
    let place = lua.inspect_stack(1, |d| {
        let line = d.current_line()?;
        let source = d.source().short_src?.into_owned();
        Some(format!("{source}:{line}: "))
    });
    mlua::Error::RuntimeError(format!("{}{message}", place.flatten().unwrap_or_default()))
}

/// Runs `f` on the context of type `C` the current call put in the state;
/// an error (with the calling line) when there is none, which is only ever
/// the case for code running outside any hook or load.
pub fn with_context<C: 'static, R>(lua: &Lua, f: impl FnOnce(&mut C) -> R) -> mlua::Result<R> {
    let mut context = lua
        .app_data_mut::<C>()
        .ok_or_else(|| located(lua, "this is only available inside a hook"))?;
    Ok(f(&mut context))
}

/// Hook arguments of different types, converted to Lua one by one.
pub trait ToLua {
    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value>;
}

impl<T: Serialize> ToLua for T {
    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value> {
        use mlua::LuaSerdeExt;
        lua.to_value(self)
    }
}

/// The arguments of a hook call, each serialized to Lua.
pub fn args<'a>(values: &'a [&'a dyn ToLua]) -> impl FnOnce(&Lua) -> mlua::Result<MultiValue> + 'a {
    move |lua| values.iter().map(|v| v.to_lua(lua)).collect()
}
