//! A Lua 5.4 state that a hostile script cannot escape or exhaust.
//!
//! - Libraries: `table`, `string`, `math`, `utf8` only. No `io`, `os`
//!   (beyond `os.time`/`os.clock`), `package`/`require`, `debug`,
//!   `coroutine`, `load`/`loadfile`/`dofile` or `collectgarbage`: nothing
//!   reaches the file system, loads code, or hides from the budget.
//! - Memory: a hard cap per state; an allocation past it raises an error.
//! - Time: an instruction budget and a wall-clock deadline per call, checked
//!   every [`CHECK_EVERY`] instructions by a VM hook.
//! - `pcall` is replaced by one that cannot catch a budget or memory error,
//!   so `while true do pcall(spin) end` still stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value, VmState};
use serde::{Deserialize, Serialize};

/// How often (in VM instructions) the budget is checked. Lower is more
/// precise and slower; 1,000 costs well under 1% on ordinary scripts.
pub const CHECK_EVERY: u32 = 1_000;

/// What one room's script may use.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LuaLimits {
    /// Memory one room's Lua state may hold, in bytes.
    pub memory_bytes: usize,
    /// VM instructions one hook call may run.
    pub instructions: u64,
    /// Wall-clock time one hook call may take.
    #[serde(with = "humantime_serde")]
    pub time: Duration,
}

impl Default for LuaLimits {
    fn default() -> Self {
        LuaLimits {
            memory_bytes: 4 * 1024 * 1024,
            instructions: 1_000_000,
            time: Duration::from_millis(50),
        }
    }
}

/// The running budget of the current call, shared with the VM hook.
#[derive(Debug)]
pub struct Budget {
    base: Instant,
    remaining: AtomicI64,
    deadline_ns: AtomicU64,
    exhausted: AtomicBool,
    instructions: u64,
    time: Duration,
}

impl Budget {
    fn new(limits: &LuaLimits) -> Arc<Budget> {
        Arc::new(Budget {
            base: Instant::now(),
            remaining: AtomicI64::new(0),
            deadline_ns: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
            instructions: limits.instructions,
            time: limits.time,
        })
    }

    /// Starts a fresh budget for one call.
    pub fn reset(&self) {
        self.remaining.store(
            self.instructions.min(i64::MAX as u64) as i64,
            Ordering::Relaxed,
        );
        let deadline = self.base.elapsed() + self.time;
        self.deadline_ns
            .store(deadline.as_nanos() as u64, Ordering::Relaxed);
        self.exhausted.store(false, Ordering::Relaxed);
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Called by the VM hook; `Err` stops the script.
    fn charge(&self) -> Result<(), &'static str> {
        if self.is_exhausted() {
            return Err("budget exhausted");
        }
        let left = self
            .remaining
            .fetch_sub(i64::from(CHECK_EVERY), Ordering::Relaxed);
        if left <= i64::from(CHECK_EVERY) {
            self.exhausted.store(true, Ordering::Relaxed);
            return Err("instruction budget exceeded");
        }
        if self.base.elapsed().as_nanos() as u64 > self.deadline_ns.load(Ordering::Relaxed) {
            self.exhausted.store(true, Ordering::Relaxed);
            return Err("time budget exceeded");
        }
        Ok(())
    }
}

/// True for errors a script must not be able to catch.
pub fn is_fatal(error: &mlua::Error, budget: &Budget) -> bool {
    budget.is_exhausted() || is_memory_error(error)
}

pub fn is_memory_error(error: &mlua::Error) -> bool {
    match error {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// A fresh sandboxed state and its budget.
pub fn new_state(limits: &LuaLimits) -> mlua::Result<(Lua, Arc<Budget>)> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
        LuaOptions::default(),
    )?;
    let globals = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "require",
        "collectgarbage",
        "xpcall",
        "print",
    ] {
        globals.raw_set(name, Value::Nil)?;
    }

    let budget = Budget::new(limits);
    let hook_budget = budget.clone();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(CHECK_EVERY),
        move |_, _| match hook_budget.charge() {
            Ok(()) => Ok(VmState::Continue),
            Err(why) => Err(mlua::Error::RuntimeError(why.to_owned())),
        },
    )?;

    let pcall_budget = budget.clone();
    let pcall = lua.create_function(move |lua, (f, args): (Function, MultiValue)| match f
        .call::<MultiValue>(args)
    {
        Ok(values) => {
            let mut out = MultiValue::with_capacity(values.len() + 1);
            out.push_back(Value::Boolean(true));
            out.extend(values);
            Ok(out)
        }
        Err(e) if is_fatal(&e, &pcall_budget) => Err(e),
        Err(e) => {
            let message = lua.create_string(error_text(&e))?;
            Ok(MultiValue::from_iter([
                Value::Boolean(false),
                Value::String(message),
            ]))
        }
    })?;
    globals.raw_set("pcall", pcall)?;

    let os = lua.create_table()?;
    os.raw_set(
        "time",
        lua.create_function(|_, ()| {
            Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0))
        })?,
    )?;
    let started = Instant::now();
    os.raw_set(
        "clock",
        lua.create_function(move |_, ()| Ok(started.elapsed().as_secs_f64()))?,
    )?;
    globals.raw_set("os", os)?;

    lua.set_memory_limit(limits.memory_bytes)?;
    Ok((lua, budget))
}

/// An error as a script author wants to read it: the innermost message,
/// which carries `script.lua:LINE:` for runtime errors.
pub fn error_text(error: &mlua::Error) -> String {
    match error {
        mlua::Error::CallbackError { cause, .. } => error_text(cause),
        mlua::Error::WithContext { cause, .. } => error_text(cause),
        mlua::Error::RuntimeError(message) | mlua::Error::SyntaxError { message, .. } => {
            message.clone()
        }
        mlua::Error::MemoryError(_) => "memory limit exceeded".to_owned(),
        other => other.to_string(),
    }
}
