//! Lua 5.4 string patterns, matched under the script's budget.
//!
//! Lua's own matcher is C: while it backtracks, the VM's count hook never
//! runs, so `("a"):rep(60000):find(".-.-.-b")` holds its thread for hours
//! whatever the budget says. The sandbox therefore replaces `string.find`,
//! `match`, `gmatch` and `gsub` with these, which implement the same
//! patterns (Lua 5.4 reference manual §6.4.1: classes, sets, the four
//! quantifiers, anchors, captures and position captures, `%b`, `%f` and back
//! references) and charge every step of the match to the call's instruction
//! budget and deadline, like any other instruction. No crate offers Lua
//! patterns with a step budget, which is why this one is conclave's own.
//!
//! The results and error messages are Lua's, so scripts cannot tell the
//! difference except by how long a hostile pattern is allowed to run.

use std::sync::{Arc, Mutex};

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::sandbox::Budget;

/// Steps between two charges to the budget.
const CHARGE_EVERY: u32 = 1_000;

/// Captures a pattern may have (Lua's `LUA_MAXCAPTURES`).
const MAX_CAPTURES: usize = 32;

/// Nesting of the matcher's recursion (Lua's `MAXCCALLS`): "pattern too
/// complex" past it.
const MAX_DEPTH: usize = 200;

const UNFINISHED: isize = -1;
const POSITION: isize = -2;

/// Why a match stopped.
#[derive(Debug)]
enum Stop {
    /// The pattern is malformed: Lua's message.
    Pattern(String),
    /// The budget ran out: the budget's message.
    Budget(&'static str),
}

type Step<T> = Result<T, Stop>;

#[derive(Clone, Copy)]
struct Capture {
    init: usize,
    len: isize,
}

/// One match attempt's state: the subject, the pattern and the captures.
struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [Capture; MAX_CAPTURES],
    depth: usize,
    steps: u32,
    budget: &'a Budget,
}

impl<'a> Matcher<'a> {
    fn new(src: &'a [u8], pat: &'a [u8], budget: &'a Budget) -> Matcher<'a> {
        Matcher {
            src,
            pat,
            level: 0,
            capture: [Capture { init: 0, len: 0 }; MAX_CAPTURES],
            depth: 0,
            steps: 0,
            budget,
        }
    }

    /// Starts a fresh attempt (captures cleared), keeping the step count.
    fn reset(&mut self) {
        self.level = 0;
        self.depth = 0;
    }

    fn step(&mut self) -> Step<()> {
        self.steps += 1;
        if self.steps >= CHARGE_EVERY {
            self.steps = 0;
            self.budget.spend(CHARGE_EVERY).map_err(Stop::Budget)?;
        }
        Ok(())
    }

    fn error<T>(&self, message: impl Into<String>) -> Step<T> {
        Err(Stop::Pattern(message.into()))
    }

    /// Where the single-character class starting at `p` ends.
    fn class_end(&self, mut p: usize) -> Step<usize> {
        let pat = self.pat;
        let c = pat[p];
        p += 1;
        if c == b'%' {
            if p >= pat.len() {
                return self.error("malformed pattern (ends with '%')");
            }
            return Ok(p + 1);
        }
        if c == b'[' {
            if pat.get(p) == Some(&b'^') {
                p += 1;
            }
            // The first character is part of the set, even a `]`.
            loop {
                if p >= pat.len() {
                    return self.error("malformed pattern (missing ']')");
                }
                let c = pat[p];
                p += 1;
                if c == b'%' && p < pat.len() {
                    p += 1;
                }
                match pat.get(p) {
                    Some(b']') => return Ok(p + 1),
                    Some(_) => {}
                    None => return self.error("malformed pattern (missing ']')"),
                }
            }
        }
        Ok(p)
    }

    /// Whether `c` is in the set `[...]` from `p` (the `[`) to `ec` (the `]`).
    fn bracket_class(&self, c: u8, p: usize, ec: usize) -> bool {
        let pat = self.pat;
        let mut i = p + 1;
        let mut sig = true;
        if pat[i] == b'^' {
            sig = false;
            i += 1;
        }
        while i < ec {
            if pat[i] == b'%' {
                i += 1;
                if class(c, pat[i]) {
                    return sig;
                }
                i += 1;
            } else if i + 2 < ec && pat[i + 1] == b'-' {
                if pat[i] <= c && c <= pat[i + 2] {
                    return sig;
                }
                i += 3;
            } else {
                if pat[i] == c {
                    return sig;
                }
                i += 1;
            }
        }
        !sig
    }

    /// Whether subject position `s` exists and matches the class `p..ep`.
    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            b'%' => class(c, self.pat[p + 1]),
            b'[' => self.bracket_class(c, p, ep - 1),
            literal => literal == c,
        }
    }

    /// Matches the pattern from `p` against the subject from `s`; the end
    /// of the match, if any.
    fn do_match(&mut self, mut s: usize, mut p: usize) -> Step<Option<usize>> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error("pattern too complex");
        }
        let result = loop {
            self.step()?;
            let pat = self.pat;
            if p == pat.len() {
                break Some(s);
            }
            match pat[p] {
                b'(' => {
                    break if pat.get(p + 1) == Some(&b')') {
                        self.start_capture(s, p + 2, POSITION)?
                    } else {
                        self.start_capture(s, p + 1, UNFINISHED)?
                    };
                }
                b')' => break self.end_capture(s, p + 1)?,
                b'$' if p + 1 == pat.len() => {
                    break (s == self.src.len()).then_some(s);
                }
                b'%' if pat.get(p + 1) == Some(&b'b') => match self.balance(s, p + 2)? {
                    Some(end) => {
                        s = end;
                        p += 4;
                        continue;
                    }
                    None => break None,
                },
                b'%' if pat.get(p + 1) == Some(&b'f') => {
                    p += 2;
                    if pat.get(p) != Some(&b'[') {
                        return self.error("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    let current = self.src.get(s).copied().unwrap_or(0);
                    if !self.bracket_class(previous, p, ep - 1)
                        && self.bracket_class(current, p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    break None;
                }
                b'%' if pat.get(p + 1).is_some_and(u8::is_ascii_digit) => {
                    match self.back_reference(s, pat[p + 1])? {
                        Some(end) => {
                            s = end;
                            p += 2;
                            continue;
                        }
                        None => break None,
                    }
                }
                _ => {}
            }
            let ep = self.class_end(p)?;
            let matched = self.single(s, p, ep);
            match pat.get(ep) {
                Some(b'?') => {
                    if matched && let Some(end) = self.do_match(s + 1, ep + 1)? {
                        break Some(end);
                    }
                    p = ep + 1;
                }
                Some(b'+') => {
                    break if matched {
                        self.max_expand(s + 1, p, ep)?
                    } else {
                        None
                    };
                }
                Some(b'*') => break self.max_expand(s, p, ep)?,
                Some(b'-') => break self.min_expand(s, p, ep)?,
                _ => {
                    if !matched {
                        break None;
                    }
                    s += 1;
                    p = ep;
                }
            }
        };
        self.depth -= 1;
        Ok(result)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Step<Option<usize>> {
        let mut i = 0;
        while self.single(s + i, p, ep) {
            self.step()?;
            i += 1;
        }
        loop {
            if let Some(end) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(end));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Step<Option<usize>> {
        loop {
            if let Some(end) = self.do_match(s, ep + 1)? {
                return Ok(Some(end));
            }
            if !self.single(s, p, ep) {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Step<Option<usize>> {
        if self.level >= MAX_CAPTURES {
            return self.error("too many captures");
        }
        self.capture[self.level] = Capture { init: s, len: what };
        self.level += 1;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.level -= 1;
        }
        Ok(result)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Step<Option<usize>> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].len == UNFINISHED)
        else {
            return self.error("invalid pattern capture");
        };
        self.capture[l].len = (s - self.capture[l].init) as isize;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.capture[l].len = UNFINISHED;
        }
        Ok(result)
    }

    fn balance(&mut self, s: usize, p: usize) -> Step<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return self.error("malformed pattern (missing arguments to '%b')");
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        if self.src.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        let mut i = s + 1;
        while i < self.src.len() {
            self.step()?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
            i += 1;
        }
        Ok(None)
    }

    fn back_reference(&mut self, s: usize, digit: u8) -> Step<Option<usize>> {
        let l = self.check_capture(digit)?;
        let Capture { init, len } = self.capture[l];
        let len = len as usize;
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            // Comparing is work too.
            for _ in 0..len / 64 {
                self.step()?;
            }
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    fn check_capture(&self, digit: u8) -> Step<usize> {
        let l = usize::from(digit.wrapping_sub(b'1'));
        if digit < b'1' || l >= self.level || self.capture[l].len == UNFINISHED {
            return self.error(format!(
                "invalid capture index %{} in pattern",
                l.wrapping_add(1)
            ));
        }
        Ok(l)
    }

    /// Capture `i` of a match `s..e` (the whole match when there are none).
    fn one_capture(&self, lua: &Lua, i: usize, s: usize, e: usize) -> mlua::Result<Value> {
        if i >= self.level {
            if i != 0 {
                return Err(rt(format!("invalid capture index %{}", i + 1)));
            }
            return Ok(Value::String(lua.create_string(&self.src[s..e])?));
        }
        let Capture { init, len } = self.capture[i];
        match len {
            UNFINISHED => Err(rt("unfinished capture")),
            POSITION => Ok(Value::Integer(init as i64 + 1)),
            len => Ok(Value::String(
                lua.create_string(&self.src[init..init + len as usize])?,
            )),
        }
    }

    /// Every capture of a match (or the whole match), as Lua values.
    fn captures(&self, lua: &Lua, s: usize, e: usize, whole: bool) -> mlua::Result<MultiValue> {
        let n = if self.level == 0 && whole {
            1
        } else {
            self.level
        };
        (0..n).map(|i| self.one_capture(lua, i, s, e)).collect()
    }
}

/// Lua's character classes, in the C locale.
fn class(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => c.is_ascii_whitespace() || c == 0x0b,
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        // Deprecated, and still in Lua 5.4.
        b'z' => c == 0,
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() { !res } else { res }
}

fn rt(message: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(message.into())
}

fn stopped(stop: Stop) -> mlua::Error {
    match stop {
        Stop::Pattern(message) => rt(message),
        Stop::Budget(why) => rt(why),
    }
}

/// A string argument as Lua's `luaL_checklstring` takes it (numbers too).
fn text(lua: &Lua, value: &Value, arg: usize, function: &str) -> mlua::Result<Vec<u8>> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(_) | Value::Number(_) => Ok(lua
            .coerce_string(value.clone())?
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default()),
        other => Err(bad_argument(arg, function, "string", other)),
    }
}

fn bad_argument(arg: usize, function: &str, expected: &str, got: &Value) -> mlua::Error {
    let got = if got.is_nil() {
        "no value"
    } else {
        got.type_name()
    };
    rt(format!(
        "bad argument #{arg} to '{function}' ({expected} expected, got {got})"
    ))
}

fn integer(value: &Value, arg: usize, function: &str, default: i64) -> mlua::Result<i64> {
    match value {
        Value::Nil => Ok(default),
        Value::Integer(i) => Ok(*i),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.2e18 => Ok(*n as i64),
        Value::Number(_) => Err(rt(format!(
            "bad argument #{arg} to '{function}' (number has no integer representation)"
        ))),
        Value::String(s) => s
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| bad_argument(arg, function, "number", value)),
        other => Err(bad_argument(arg, function, "number", other)),
    }
}

/// Lua's `posrelat` for `init`: 1-based, negative from the end; clamped.
fn start_at(init: i64, len: usize) -> Option<usize> {
    let len = len as i64;
    let init = if init > 0 {
        init
    } else if init == 0 || init < -len {
        1
    } else {
        len + init + 1
    };
    (init <= len + 1).then(|| (init - 1) as usize)
}

fn has_specials(pattern: &[u8]) -> bool {
    pattern.iter().any(|c| b"^$*+?.([%-".contains(c))
}

fn find_plain(haystack: &[u8], needle: &[u8], budget: &Budget) -> Result<Option<usize>, Stop> {
    if needle.is_empty() {
        return Ok(Some(0));
    }
    // The memchr-style scan is linear; charge it by the bytes it covers.
    budget
        .spend((haystack.len() / 64).min(u32::MAX as usize) as u32)
        .map_err(Stop::Budget)?;
    Ok(haystack.windows(needle.len()).position(|w| w == needle))
}

/// `string.find` and `string.match`.
fn find_or_match(
    lua: &Lua,
    budget: &Budget,
    args: MultiValue,
    find: bool,
) -> mlua::Result<MultiValue> {
    let name = if find { "find" } else { "match" };
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Nil);
    let src = text(lua, &arg(0), 1, name)?;
    let pat = text(lua, &arg(1), 2, name)?;
    let Some(init) = start_at(integer(&arg(2), 3, name, 1)?, src.len()) else {
        return Ok(MultiValue::from_iter([Value::Nil]));
    };
    let plain = find && !matches!(arg(3), Value::Nil | Value::Boolean(false));
    if find && (plain || !has_specials(&pat)) {
        return match find_plain(&src[init..], &pat, budget).map_err(stopped)? {
            Some(at) => Ok(MultiValue::from_iter([
                Value::Integer((init + at + 1) as i64),
                Value::Integer((init + at + pat.len()) as i64),
            ])),
            None => Ok(MultiValue::from_iter([Value::Nil])),
        };
    }
    let (anchor, p) = match pat.first() {
        Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut m = Matcher::new(&src, &pat, budget);
    let mut s = init;
    loop {
        m.reset();
        if let Some(e) = m.do_match(s, p).map_err(stopped)? {
            if find {
                let mut out =
                    MultiValue::from_iter([Value::Integer(s as i64 + 1), Value::Integer(e as i64)]);
                out.extend(m.captures(lua, s, e, false)?);
                return Ok(out);
            }
            return m.captures(lua, s, e, true);
        }
        s += 1;
        if anchor || s > src.len() {
            return Ok(MultiValue::from_iter([Value::Nil]));
        }
    }
}

/// What a `gmatch` iterator remembers between calls.
struct Iteration {
    src: Vec<u8>,
    pat: Vec<u8>,
    at: usize,
    last: Option<usize>,
}

fn gmatch(lua: &Lua, budget: &Arc<Budget>, args: MultiValue) -> mlua::Result<Function> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Nil);
    let src = text(lua, &arg(0), 1, "gmatch")?;
    let pat = text(lua, &arg(1), 2, "gmatch")?;
    let at = start_at(integer(&arg(2), 3, "gmatch", 1)?, src.len()).unwrap_or(src.len() + 1);
    let state = Mutex::new(Iteration {
        src,
        pat,
        at,
        last: None,
    });
    let budget = budget.clone();
    lua.create_function(move |lua, ()| {
        let mut state = state.lock().expect("gmatch state");
        let Iteration { src, pat, at, last } = &mut *state;
        let mut m = Matcher::new(src, pat, &budget);
        let mut s = *at;
        while s <= src.len() {
            m.reset();
            if let Some(e) = m.do_match(s, 0).map_err(stopped)?
                && Some(e) != *last
            {
                let out = m.captures(lua, s, e, true)?;
                *at = e;
                *last = Some(e);
                return Ok(out);
            }
            s += 1;
        }
        *at = s;
        Ok(MultiValue::from_iter([Value::Nil]))
    })
}

/// `string.gsub`. The result is built outside the Lua heap, so it is held
/// to the state's memory cap by hand.
fn gsub(lua: &Lua, budget: &Budget, cap: usize, args: MultiValue) -> mlua::Result<MultiValue> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Nil);
    let src = text(lua, &arg(0), 1, "gsub")?;
    let pat = text(lua, &arg(1), 2, "gsub")?;
    let repl = arg(2);
    match &repl {
        Value::String(_)
        | Value::Integer(_)
        | Value::Number(_)
        | Value::Table(_)
        | Value::Function(_) => {}
        other => {
            return Err(bad_argument(3, "gsub", "string/function/table", other));
        }
    }
    let repl_text = match &repl {
        Value::String(_) | Value::Integer(_) | Value::Number(_) => {
            Some(text(lua, &repl, 3, "gsub")?)
        }
        _ => None,
    };
    let max = integer(&arg(3), 4, "gsub", src.len() as i64 + 1)?;
    let (anchor, p) = match pat.first() {
        Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut m = Matcher::new(&src, &pat, budget);
    let mut out: Vec<u8> = Vec::new();
    let mut s = 0;
    let mut last = None;
    let mut n: i64 = 0;
    let grow = |out: &mut Vec<u8>, bytes: &[u8]| -> mlua::Result<()> {
        if out.len() + bytes.len() > cap {
            return Err(mlua::Error::MemoryError("not enough memory".into()));
        }
        out.extend_from_slice(bytes);
        Ok(())
    };
    while n < max {
        m.reset();
        let e = m.do_match(s, p).map_err(stopped)?;
        match e {
            Some(e) if Some(e) != last => {
                n += 1;
                let whole = &src[s..e];
                match &repl_text {
                    Some(r) => {
                        let mut i = 0;
                        while i < r.len() {
                            let c = r[i];
                            i += 1;
                            if c != b'%' {
                                grow(&mut out, &[c])?;
                                continue;
                            }
                            let Some(&d) = r.get(i) else {
                                return Err(rt("invalid use of '%' in replacement string"));
                            };
                            i += 1;
                            if d == b'%' {
                                grow(&mut out, b"%")?;
                            } else if d.is_ascii_digit() {
                                if d == b'0' {
                                    grow(&mut out, whole)?;
                                } else {
                                    let value = m.one_capture(lua, usize::from(d - b'1'), s, e)?;
                                    let bytes = lua
                                        .coerce_string(value)?
                                        .map(|s| s.as_bytes().to_vec())
                                        .unwrap_or_default();
                                    grow(&mut out, &bytes)?;
                                }
                            } else {
                                return Err(rt("invalid use of '%' in replacement string"));
                            }
                            m.step().map_err(stopped)?;
                        }
                    }
                    None => {
                        let first = m.one_capture(lua, 0, s, e)?;
                        let value = match &repl {
                            Value::Table(t) => t.get::<Value>(first)?,
                            Value::Function(f) => {
                                let all = m.captures(lua, s, e, true)?;
                                f.call::<MultiValue>(all)?
                                    .into_iter()
                                    .next()
                                    .unwrap_or(Value::Nil)
                            }
                            _ => unreachable!("checked above"),
                        };
                        match value {
                            Value::Nil | Value::Boolean(false) => grow(&mut out, whole)?,
                            Value::String(s) => grow(&mut out, &s.as_bytes())?,
                            v @ (Value::Integer(_) | Value::Number(_)) => {
                                let bytes = lua
                                    .coerce_string(v)?
                                    .map(|s| s.as_bytes().to_vec())
                                    .unwrap_or_default();
                                grow(&mut out, &bytes)?;
                            }
                            other => {
                                return Err(rt(format!(
                                    "invalid replacement value (a {})",
                                    other.type_name()
                                )));
                            }
                        }
                    }
                }
                s = e;
                last = Some(e);
            }
            _ if s < src.len() => {
                grow(&mut out, &src[s..s + 1])?;
                s += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    if s < src.len() {
        grow(&mut out, &src[s..])?;
    }
    Ok(MultiValue::from_iter([
        Value::String(lua.create_string(&out)?),
        Value::Integer(n),
    ]))
}

/// Puts the budgeted `find`, `match`, `gmatch` and `gsub` into `string`
/// (which is also every string's `__index`).
pub fn install(lua: &Lua, budget: &Arc<Budget>, memory_cap: usize) -> mlua::Result<()> {
    let string: Table = lua.globals().raw_get("string")?;
    let b = budget.clone();
    string.raw_set(
        "find",
        lua.create_function(move |lua, args: MultiValue| find_or_match(lua, &b, args, true))?,
    )?;
    let b = budget.clone();
    string.raw_set(
        "match",
        lua.create_function(move |lua, args: MultiValue| find_or_match(lua, &b, args, false))?,
    )?;
    let b = budget.clone();
    string.raw_set(
        "gmatch",
        lua.create_function(move |lua, args: MultiValue| gmatch(lua, &b, args))?,
    )?;
    let b = budget.clone();
    string.raw_set(
        "gsub",
        lua.create_function(move |lua, args: MultiValue| gsub(lua, &b, memory_cap, args))?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Differential tests: every case runs through Lua's own C matcher (a
    //! plain state) and through this one (a sandboxed state), and the
    //! results must be the same.

    use super::super::sandbox::{LuaLimits, new_state};
    use mlua::Lua;

    /// Runs `calls` (Lua expressions over `s` and `p`, one per line) on each
    /// case in `lua` and renders what each returned, or that it failed.
    fn outcomes(
        lua: &Lua,
        cases: &[(String, String)],
        calls: &[&str],
        before: &dyn Fn(),
    ) -> Vec<String> {
        before();
        let render = lua
            .load(
                r#"
                local calls = ...
                return function(s, p)
                  local out = {}
                  for _, call in ipairs(calls) do
                    local f = calls[call]
                    local ok, a, b, c, d = pcall(f, s, p)
                    if ok then
                      out[#out + 1] = call .. "=" .. tostring(a) .. "," .. tostring(b) .. "," .. tostring(c) .. "," .. tostring(d)
                    else
                      out[#out + 1] = call .. "=error"
                    end
                  end
                  return table.concat(out, " | ")
                end
                "#,
            )
            .call::<mlua::Function>(compile(lua, calls))
            .unwrap();
        cases
            .iter()
            .map(|(s, p)| {
                before();
                let s = lua.create_string(s).unwrap();
                let p = lua.create_string(p).unwrap();
                render.call::<String>((s, p)).unwrap()
            })
            .collect()
    }

    fn compile(lua: &Lua, calls: &[&str]) -> mlua::Table {
        let t = lua.create_table().unwrap();
        for (i, call) in calls.iter().enumerate() {
            let f = lua
                .load(format!("return function(s, p) return {call} end"))
                .eval::<mlua::Function>()
                .unwrap();
            t.raw_set(i + 1, *call).unwrap();
            t.raw_set(*call, f).unwrap();
        }
        t
    }

    const CALLS: &[&str] = &[
        "string.find(s, p)",
        "string.find(s, p, 3)",
        "string.find(s, p, -2)",
        "string.match(s, p)",
        "string.match(s, p, 2)",
        "string.gsub(s, p, '<%0>')",
        "string.gsub(s, p, '%1', 2)",
        "string.gsub(s, p, { a = 'A', [''] = 'E' })",
        "string.gsub(s, p, function(x, y) return y and (x .. y) or nil end)",
        "(function() local t = {} for a, b in string.gmatch(s, p) do t[#t + 1] = tostring(a) .. '/' .. tostring(b) end return table.concat(t, ';') end)()",
    ];

    fn compare(cases: &[(String, String)]) {
        let reference = Lua::new();
        let (ours, budget) = new_state(&LuaLimits {
            time: std::time::Duration::from_secs(60),
            ..LuaLimits::default()
        })
        .unwrap();
        let expected = outcomes(&reference, cases, CALLS, &|| {});
        let got = outcomes(&ours, cases, CALLS, &|| budget.reset());
        for ((case, want), have) in cases.iter().zip(&expected).zip(&got) {
            assert_eq!(have, want, "subject {:?}, pattern {:?}", case.0, case.1);
        }
    }

    fn cases(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(s, p)| (s.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn the_same_answers_as_lua_on_hand_picked_patterns() {
        compare(&cases(&[
            ("hello world", "o"),
            ("hello world", "o w"),
            ("hello world", "^h"),
            ("hello world", "^w"),
            ("hello world", "d$"),
            ("hello world", "l+"),
            ("hello world", "l*"),
            ("hello world", "l-o"),
            ("hello world", "lo?"),
            ("hello world", "(h)(e)"),
            ("hello world", "()ll()"),
            ("hello world", "(l)%1"),
            ("hello world", "%a+"),
            ("hello world", "%A"),
            ("key = value", "(%w+)%s*=%s*(%w+)"),
            ("THE (quick) fox", "%((%a+)%)"),
            ("f(a(b)c)d", "%b()"),
            ("f(a(b)c", "%b()"),
            ("THE (quick) fox", "%f[%a]%a+"),
            ("THE (quick) fox", "%f[%A]"),
            ("aaa", "a-"),
            ("aaa", "a-$"),
            ("", ""),
            ("", "x*"),
            ("abc", ""),
            ("abc", "[a-b]+"),
            ("abc", "[^a-b]+"),
            ("a]b", "[]]"),
            ("a-b", "[a-]"),
            ("a-b", "[%-]"),
            ("a^b", "[%^]"),
            ("a.b", "%."),
            ("a.b", "."),
            ("x = 1, y = 22", "(%w+) = (%d+)"),
            ("\0a\0", "%z"),
            ("\0a\0", "[%z]"),
            ("tab\there", "%s"),
            ("vt\x0bhere", "%s"),
            ("caf\u{e9}", "%a+"),
            ("12ab", "%x+"),
            ("punct!?", "%p+"),
            ("CamelCase", "%u%l+"),
            ("a.b.c", "%.(.)"),
            ("aaab", ".-b"),
            ("abcabc", "(abc)%1"),
            ("abc", "((a)(b))"),
            ("abc", "(a"),
            ("abc", "a)"),
            ("abc", "%"),
            ("abc", "[a"),
            ("abc", "[^"),
            ("abc", "%b"),
            ("abc", "%ba"),
            ("abc", "%f"),
            ("abc", "%fa"),
            ("abc", "%1"),
            ("abc", "(a)%2"),
            ("abc", "(()"),
            ("abc", "%g"),
            ("a b", "%G"),
            ("hello", "$"),
            ("hello", "^$"),
            ("hello", "^"),
            ("he$llo", "e$l"),
            ("aaa", "^a"),
            ("a+b", "a+b"),
            ("a+b", "a%+b"),
            ("hello world from lua", "%w+"),
            ("one two", "(%w+) (%w+)"),
        ]));
    }

    #[test]
    fn the_same_answers_as_lua_on_random_patterns() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        const ATOMS: &[&str] = &[
            "a", "b", ".", "%a", "%d", "%s", "%w", "[ab]", "[^a]", "[a-c]", "%%", "(", ")", "()",
            "%1", "%b()", "%f[%w]", "^", "$", "*", "+", "-", "?", "x", "[%d_]",
        ];
        const SUBJECT: &[u8] = b"aab b1(c)_ x ab";
        let mut list = Vec::new();
        for _ in 0..3000 {
            let pattern: String = (0..rng.random_range(1..7))
                .map(|_| ATOMS[rng.random_range(0..ATOMS.len())])
                .collect();
            let subject: String = (0..rng.random_range(0..12))
                .map(|_| SUBJECT[rng.random_range(0..SUBJECT.len())] as char)
                .collect();
            list.push((subject, pattern));
        }
        compare(&list);
    }

    #[test]
    fn a_backtracking_bomb_is_stopped_by_the_budget() {
        let (lua, budget) = new_state(&LuaLimits {
            time: std::time::Duration::from_secs(600),
            ..LuaLimits::default()
        })
        .unwrap();
        budget.reset();
        let err = lua
            .load(r#"return string.find(string.rep("a", 60000), ".-.-.-.-b")"#)
            .exec()
            .unwrap_err();
        assert!(
            err.to_string().contains("instruction budget exceeded"),
            "{err}"
        );
        // And by the deadline, when instructions are plentiful.
        let (lua, budget) = new_state(&LuaLimits {
            instructions: u64::MAX / 2,
            time: std::time::Duration::from_millis(50),
            ..LuaLimits::default()
        })
        .unwrap();
        budget.reset();
        let err = lua
            .load(r#"return ("a"):rep(60000):gsub(".-.-.-.-b", "")"#)
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains("time budget exceeded"), "{err}");
        // pcall cannot swallow it.
        budget.reset();
        let err = lua
            .load(r#"while true do pcall(string.match, ("a"):rep(60000), ".-.-.-.-b") end"#)
            .exec()
            .unwrap_err();
        assert!(err.to_string().contains("budget exceeded"), "{err}");
    }

    #[test]
    fn gsub_cannot_build_past_the_memory_cap() {
        let (lua, budget) = new_state(&LuaLimits::default()).unwrap();
        budget.reset();
        let err = lua
            .load(r#"local s = ("x"):rep(1000) return (s:gsub(".", ("y"):rep(10000)))"#)
            .exec()
            .unwrap_err();
        assert!(super::super::is_memory_error(&err), "{err}");
    }
}
