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
//! - No code outside the budget's sight: `setmetatable` refuses `__gc`
//!   (finalizers run with hooks off), and the pattern functions of `string`
//!   are [`super::pattern`]'s, which charge their steps to the budget.
//!   docs/scripting.md has the audit of every function a script can reach.

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
        self.spend(CHECK_EVERY)
    }

    /// Charges `units` instructions' worth of work done outside the VM (a
    /// pattern match's steps, say) and checks the deadline; `Err` once
    /// either is exhausted, for the caller to raise.
    pub fn spend(&self, units: u32) -> Result<(), &'static str> {
        if self.is_exhausted() {
            return Err("budget exhausted");
        }
        let left = self
            .remaining
            .fetch_sub(i64::from(units), Ordering::Relaxed);
        if left <= i64::from(units) {
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

    refuse_finalizers(&lua)?;
    bound_library_loops(&lua, &budget)?;
    super::pattern::install(&lua, &budget, limits.memory_bytes)?;

    lua.set_memory_limit(limits.memory_bytes)?;
    Ok((lua, budget))
}

/// Wraps `setmetatable` so that a metatable holding `__gc` is refused.
///
/// Lua 5.4 runs finalizers with the VM's hooks off, so a `__gc` that loops
/// would be out of the budget's reach. An object is marked for finalization
/// only when `setmetatable` gives it a metatable that has a `__gc` field at
/// that moment (manual §2.5.3): a `__gc` added to the metatable later is
/// never called. Refusing the field here therefore means no script object
/// is ever finalized. (The only other way, `debug.setmetatable`, is not in
/// the sandbox.)
fn refuse_finalizers(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    let original: Function = globals.raw_get("setmetatable")?;
    let guarded = lua.create_function(move |lua, args: MultiValue| {
        if let Some(Value::Table(mt)) = args.get(1)
            && !mt.raw_get::<Value>("__gc")?.is_nil()
        {
            return Err(super::located(
                lua,
                "setmetatable: `__gc` finalizers are not allowed in scripts (they would run outside the budget)",
            ));
        }
        original.call::<MultiValue>(args)
    })?;
    globals.raw_set("setmetatable", guarded)
}

/// Puts the loops of the library functions whose length a script can make
/// arbitrary, without holding the memory it would take, under the budget.
/// Each runs inside one C call, where the count hook never fires:
///
/// - `string.rep("", n)` copies nothing `n` times: answered at once;
/// - `table.move(a, f, e, t)` moves `e - f + 1` slots, filled or not;
/// - `table.insert(t, pos, v)` and `table.remove(t, pos)` shift every slot
///   from `pos` to `#t`, and `__len` may claim any length.
///
/// The moves are charged to the call's instruction budget before the
/// original runs (a slot moved costs one instruction), so one call can do
/// no more than the budget allows. Everything else a library call does is
/// bounded by the memory cap (docs/scripting.md §9 has the audit).
fn bound_library_loops(lua: &Lua, budget: &Arc<Budget>) -> mlua::Result<()> {
    let string: mlua::Table = lua.globals().raw_get("string")?;
    let rep: Function = string.raw_get("rep")?;
    string.raw_set(
        "rep",
        lua.create_function(move |lua, args: MultiValue| {
            let empty = |v: Option<&Value>| match v {
                Some(Value::String(s)) => s.as_bytes().is_empty(),
                None | Some(Value::Nil) => true,
                _ => false,
            };
            if matches!(args.front(), Some(Value::String(_)))
                && empty(args.front())
                && empty(args.get(2))
            {
                return Ok(MultiValue::from_iter([Value::String(
                    lua.create_string("")?,
                )]));
            }
            rep.call::<MultiValue>(args)
        })?,
    )?;

    let table: mlua::Table = lua.globals().raw_get("table")?;
    let charge = |budget: &Arc<Budget>, moves: i64| -> mlua::Result<()> {
        if moves <= 0 {
            return Ok(());
        }
        let units = u32::try_from(moves).unwrap_or(u32::MAX);
        budget
            .spend(units)
            .map_err(|why| mlua::Error::RuntimeError(why.to_owned()))
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Integer(i)) => Some(*i),
        Some(Value::Number(n)) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    };

    let original: Function = table.raw_get("move")?;
    let b = budget.clone();
    table.raw_set(
        "move",
        lua.create_function(move |_, args: MultiValue| {
            if let (Some(f), Some(e)) = (int(args.get(1)), int(args.get(2))) {
                charge(&b, e.saturating_sub(f).saturating_add(1))?;
            }
            original.call::<MultiValue>(args)
        })?,
    )?;
    for name in ["insert", "remove"] {
        let original: Function = table.raw_get(name)?;
        let b = budget.clone();
        table.raw_set(
            name,
            lua.create_function(move |_, args: MultiValue| {
                // Only a position makes them loop: appending and removing the
                // last element move nothing.
                let positioned = args.len() >= if name == "insert" { 3 } else { 2 };
                if positioned
                    && let (Some(Value::Table(t)), Some(pos)) = (args.front(), int(args.get(1)))
                {
                    let len = t.len()?;
                    charge(&b, len.saturating_sub(pos).saturating_add(1))?;
                }
                original.call::<MultiValue>(args)
            })?,
        )?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizers_are_refused_and_a_late_gc_field_is_never_called() {
        let (lua, budget) = new_state(&LuaLimits::default()).unwrap();
        budget.reset();
        let err = lua
            .load("setmetatable({}, { __gc = function() while true do end end })")
            .set_name("@scripts/gc.lua")
            .exec()
            .unwrap_err();
        let text = error_text(&err);
        assert!(text.starts_with("scripts/gc.lua:1:"), "{text}");
        assert!(text.contains("`__gc` finalizers are not allowed"), "{text}");
        // Any value counts, since what is there at setmetatable time is what
        // marks the object.
        assert!(
            lua.load("setmetatable({}, { __gc = true })")
                .exec()
                .is_err()
        );

        // Lua 5.4 marks an object for finalization only if its metatable had
        // `__gc` when it was set: one added afterwards never runs.
        lua.load(
            "ran = false
             local mt = {}
             local t = setmetatable({}, mt)
             mt.__gc = function() ran = true end
             t = nil",
        )
        .exec()
        .unwrap();
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        assert!(!lua.globals().get::<bool>("ran").unwrap());

        // Everything else about setmetatable is as before.
        let v: i64 = lua
            .load("return setmetatable({}, { __index = function() return 7 end }).x")
            .eval()
            .unwrap();
        assert_eq!(v, 7);
        assert!(
            lua.load("setmetatable(setmetatable({}, { __metatable = 1 }), {})")
                .exec()
                .is_err(),
            "a protected metatable stays protected"
        );
    }

    #[test]
    fn library_loops_a_script_can_stretch_are_under_the_budget() {
        let (lua, budget) = new_state(&LuaLimits::default()).unwrap();
        for (source, stretched) in [
            ("table.move({}, 1, 1e15, 2)", true),
            (
                "table.insert(setmetatable({}, { __len = function() return 1e15 end }), 1, 'x')",
                true,
            ),
            (
                "table.remove(setmetatable({}, { __len = function() return 1e15 end }), 1)",
                true,
            ),
            (
                "local t = {1, 2, 3} table.move(t, 1, 3, 2) table.insert(t, 1, 0) table.remove(t, 1)",
                false,
            ),
            ("for i = 1, 1000 do table.insert({}, 'x') end", false),
        ] {
            budget.reset();
            let result = lua.load(source).exec();
            if stretched {
                let err = result.unwrap_err();
                assert!(
                    error_text(&err).contains("instruction budget exceeded"),
                    "{source}: {err}"
                );
                assert!(budget.is_exhausted(), "{source}: counted as the budget's");
            } else {
                result.unwrap();
            }
        }
        // Nothing repeated any number of times is nothing, at once.
        budget.reset();
        let empty: String = lua
            .load("return string.rep('', math.maxinteger) .. string.rep('', 1e15, '')")
            .eval()
            .unwrap();
        assert_eq!(empty, "");
        let kept: String = lua.load("return string.rep('ab', 3, ',')").eval().unwrap();
        assert_eq!(kept, "ab,ab,ab");
        budget.reset();
        assert!(
            lua.load("return string.rep('x', 1e12)").exec().is_err(),
            "a long result still meets the memory cap"
        );
    }
}
