//! The lua-language-server annotations in scripts/types/ against the host
//! that really runs the scripts.
//!
//! Editors read scripts/types/*.lua to complete and check room policies and
//! bots; nothing checks those files against conclave except this test. It
//! builds the real host through the crate's API (a policy state from the
//! catalog, a bot script state, a real server with members and a real bot),
//! has probe scripts report what they find (every global, every member of
//! `room`, `store`, `log`, `bot`, `os`, and the shape of every table each
//! hook receives), and fails, naming the name, when the host installs or
//! sends something the annotations lack or the annotations declare
//! something the host does not. It also checks that the annotation files
//! and `.luarc.json` are never taken for room policies.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::media::Participant;
use common::{PATIENCE, TestServer, eventually};
use conclave::bot::script::{BotAction, BotScript, View};
use conclave::bot::{self, BotConfig};
use conclave::policy::catalog::{Catalog, FileKind, PolicyConfig, PolicyRule};
use conclave::policy::lua::{Decision, LuaLimits, LuaPolicy, OwnedIdentity, RoomView};
use conclave::protocol::{MediaKind, Mode, Role, ServerMessage};
use conclave::status::{Failure, Status};
use serde_json::{Value, json};

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The annotation files a room policy's editor loads.
const POLICY_FILES: &[&str] = &["shared.lua", "policy.lua"];
/// The annotation files a bot's editor loads.
const BOT_FILES: &[&str] = &["shared.lua", "bot.lua"];

/// The globals of standard Lua 5.4, all of which lua-language-server offers
/// unless a library is switched off in `.luarc.json`.
const STANDARD: &[&str] = &[
    "_G",
    "_VERSION",
    "assert",
    "collectgarbage",
    "coroutine",
    "debug",
    "dofile",
    "error",
    "getmetatable",
    "io",
    "ipairs",
    "load",
    "loadfile",
    "math",
    "next",
    "os",
    "package",
    "pairs",
    "pcall",
    "print",
    "rawequal",
    "rawget",
    "rawlen",
    "rawset",
    "require",
    "select",
    "setmetatable",
    "string",
    "table",
    "tonumber",
    "tostring",
    "type",
    "utf8",
    "warn",
    "xpcall",
];

/// Type names lua-language-server knows without a declaration.
const BUILTIN_TYPES: &[&str] = &[
    "any", "nil", "boolean", "true", "false", "number", "integer", "string", "table", "function",
    "userdata", "thread", "unknown",
];

// ---------------------------------------------------------------------------
// The annotation files, read by simple line scanning.

#[derive(Debug, Clone)]
struct Field {
    name: String,
    optional: bool,
    ty: String,
    at: String,
}

#[derive(Debug, Default)]
struct Class {
    parents: Vec<String>,
    fields: Vec<Field>,
}

#[derive(Debug)]
struct Global {
    /// The class of a table global (`---@class RoomApi` above `room = {}`).
    class: Option<String>,
    function: bool,
    at: String,
}

#[derive(Debug, Default)]
struct Function {
    /// Parameter names as the declaration line writes them.
    params: Vec<String>,
    /// `---@param` names and types.
    documented: Vec<(String, String)>,
    returns: Vec<String>,
    at: String,
}

/// What a set of annotation files declares.
#[derive(Debug, Default)]
struct Annotations {
    classes: BTreeMap<String, Class>,
    aliases: BTreeMap<String, Vec<String>>,
    globals: BTreeMap<String, Global>,
    /// `room.members`, `array`, ...
    functions: BTreeMap<String, Function>,
    generics: BTreeSet<String>,
    /// Standard names the sandbox lacks (the `absent:` line of shared.lua).
    absent: BTreeSet<String>,
    /// Every type written anywhere, with where, for the resolution check.
    written: Vec<(String, String)>,
}

/// Splits `a|b|c` at the top level (not inside `<>`, `()` or quotes).
fn split_top(ty: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut current = String::new();
    for c in ty.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' | '(' if !quoted => depth += 1,
            '>' | ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                parts.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current.trim().to_owned());
    parts
}

/// The type at the start of `rest`: everything up to ` #` for a `fun(...)`
/// type, else the first word.
fn type_token(rest: &str) -> String {
    let rest = rest.trim();
    if rest.starts_with("fun(") {
        return rest.split(" #").next().unwrap_or(rest).trim().to_owned();
    }
    rest.split_whitespace().next().unwrap_or("").to_owned()
}

/// `name[?] type ...` of a `---@field` or `---@param` line.
fn name_and_type(rest: &str) -> (String, bool, String) {
    let rest = rest.trim();
    let (name, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let optional = name.ends_with('?');
    (
        name.trim_end_matches('?').to_owned(),
        optional,
        type_token(tail),
    )
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Annotations {
    fn read(files: &[&str]) -> Annotations {
        let mut ann = Annotations::default();
        for file in files {
            let path = scripts_dir().join("types").join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            ann.parse(&format!("scripts/types/{file}"), &text);
        }
        ann
    }

    fn parse(&mut self, file: &str, text: &str) {
        assert_eq!(
            text.lines().next(),
            Some("---@meta"),
            "{file} must start with `---@meta`, so that the language server never treats it as code"
        );
        // The doc block being read: its class, its alias, its params and returns.
        let mut class: Option<String> = None;
        let mut alias: Option<String> = None;
        let mut documented: Vec<(String, String)> = Vec::new();
        let mut returns: Vec<String> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{file}:{}", i + 1);
            let line = raw.trim_end();
            if let Some(doc) = line.strip_prefix("---") {
                if let Some(rest) = doc.strip_prefix("@class ") {
                    let (name, parents) = match rest.split_once(':') {
                        Some((name, parents)) => (
                            name.trim().to_owned(),
                            parents.split(',').map(|p| p.trim().to_owned()).collect(),
                        ),
                        None => (rest.trim().to_owned(), Vec::new()),
                    };
                    for parent in &parents {
                        self.written.push((parent.clone(), at.clone()));
                    }
                    let fresh = Class {
                        parents,
                        fields: Vec::new(),
                    };
                    assert!(
                        self.classes.insert(name.clone(), fresh).is_none(),
                        "{at}: class `{name}` is declared twice"
                    );
                    class = Some(name);
                    alias = None;
                } else if let Some(rest) = doc.strip_prefix("@field ") {
                    let owner = class
                        .as_ref()
                        .unwrap_or_else(|| panic!("{at}: `---@field` outside a class"));
                    let (name, optional, ty) = name_and_type(rest);
                    self.written.push((ty.clone(), at.clone()));
                    let fields = &mut self.classes.get_mut(owner).expect("declared").fields;
                    assert!(
                        fields.iter().all(|f| f.name != name),
                        "{at}: `{owner}.{name}` is declared twice"
                    );
                    fields.push(Field {
                        name,
                        optional,
                        ty,
                        at: at.clone(),
                    });
                } else if let Some(rest) = doc.strip_prefix("@alias ") {
                    let rest = rest.trim();
                    let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
                    let alternatives = if ty.trim().is_empty() {
                        Vec::new()
                    } else {
                        split_top(ty.trim())
                    };
                    for alt in &alternatives {
                        self.written.push((alt.clone(), at.clone()));
                    }
                    assert!(
                        self.aliases.insert(name.to_owned(), alternatives).is_none(),
                        "{at}: alias `{name}` is declared twice"
                    );
                    alias = Some(name.to_owned());
                    class = None;
                } else if let Some(rest) = doc.strip_prefix('|') {
                    let name = alias
                        .as_ref()
                        .unwrap_or_else(|| panic!("{at}: `---|` outside an alias"));
                    let ty = type_token(rest);
                    self.written.push((ty.clone(), at.clone()));
                    self.aliases.get_mut(name).expect("declared").push(ty);
                } else if let Some(rest) = doc.strip_prefix("@param ") {
                    let (name, optional, ty) = name_and_type(rest);
                    self.written.push((ty.clone(), at.clone()));
                    let ty = if optional { format!("{ty}?") } else { ty };
                    documented.push((name, ty));
                } else if let Some(rest) = doc.strip_prefix("@return ") {
                    let ty = type_token(rest);
                    self.written.push((ty.clone(), at.clone()));
                    returns.push(ty);
                } else if let Some(rest) = doc.strip_prefix("@generic ") {
                    let name = rest.split(':').next().unwrap_or("").trim();
                    self.generics.insert(name.to_owned());
                } else if let Some(rest) = doc.strip_prefix("@type ") {
                    self.written.push((type_token(rest), at.clone()));
                }
                continue;
            }
            // Not a doc line: it ends the block, after declaring what it declares.
            if let Some(signature) = line.strip_prefix("function ") {
                let (name, params) = signature
                    .split_once('(')
                    .unwrap_or_else(|| panic!("{at}: unreadable function line"));
                let params = params.split(')').next().unwrap_or("");
                let function = Function {
                    params: params
                        .split(',')
                        .map(|p| p.trim().to_owned())
                        .filter(|p| !p.is_empty())
                        .collect(),
                    documented: std::mem::take(&mut documented),
                    returns: std::mem::take(&mut returns),
                    at: at.clone(),
                };
                if !name.contains('.') {
                    self.globals.insert(
                        name.to_owned(),
                        Global {
                            class: None,
                            function: true,
                            at: at.clone(),
                        },
                    );
                }
                assert!(
                    self.functions.insert(name.to_owned(), function).is_none(),
                    "{at}: `{name}` is declared twice"
                );
            } else if let Some((name, _)) = line.split_once(" = ")
                && is_identifier(name)
            {
                let global = Global {
                    class: class.clone(),
                    function: false,
                    at: at.clone(),
                };
                assert!(
                    self.globals.insert(name.to_owned(), global).is_none(),
                    "{at}: global `{name}` is declared twice"
                );
            } else if let Some(list) = line.trim_start_matches('-').trim().strip_prefix("absent:") {
                self.absent
                    .extend(list.split_whitespace().map(str::to_owned));
            }
            class = None;
            alias = None;
            documented.clear();
            returns.clear();
        }
    }

    /// Every field of `class`, its parents' included, with the class that
    /// declares it.
    fn fields(&self, class: &str) -> Vec<(String, Field)> {
        let Some(c) = self.classes.get(class) else {
            return Vec::new();
        };
        let mut all: Vec<(String, Field)> = c
            .fields
            .iter()
            .map(|f| (class.to_owned(), f.clone()))
            .collect();
        for parent in &c.parents {
            all.extend(self.fields(parent));
        }
        all
    }

    fn field(&self, class: &str, name: &str) -> Option<(String, Field)> {
        self.fields(class).into_iter().find(|(_, f)| f.name == name)
    }

    /// The members of table global `global`: its class's fields and the
    /// `function global.name(` declarations, with whether each is a function
    /// and its type.
    fn members(&self, global: &str) -> BTreeMap<String, (bool, String, String)> {
        let mut members = BTreeMap::new();
        if let Some(class) = self.globals.get(global).and_then(|g| g.class.as_ref()) {
            for (_, f) in self.fields(class) {
                members.insert(
                    f.name.clone(),
                    (f.ty.starts_with("fun("), f.ty.clone(), f.at.clone()),
                );
            }
        }
        let prefix = format!("{global}.");
        for (name, f) in &self.functions {
            if let Some(member) = name.strip_prefix(&prefix) {
                members.insert(member.to_owned(), (true, "function".into(), f.at.clone()));
            }
        }
        members
    }

    /// What the hook `hook` of the hooks class `hooks` takes: the type of the
    /// first parameter of its `fun(...)` type.
    fn hook_argument(&self, hooks: &str, hook: &str) -> Option<String> {
        let (_, field) = self.field(hooks, hook)?;
        let inner = field.ty.strip_prefix("fun(")?;
        let params = &inner[..inner.find(')')?];
        let (_, ty) = params.split(',').next()?.split_once(':')?;
        Some(ty.trim().to_owned())
    }

    /// The leaves of a type, through aliases: `Decision|JoinTerms` gives
    /// `nil`, `true`, ..., `JoinTerms`.
    fn leaves(&self, ty: &str) -> Vec<String> {
        let ty = ty.trim();
        let alternatives = split_top(ty);
        if alternatives.len() > 1 {
            return alternatives.iter().flat_map(|a| self.leaves(a)).collect();
        }
        match self.aliases.get(ty) {
            Some(alternatives) => alternatives.iter().flat_map(|a| self.leaves(a)).collect(),
            None => vec![ty.to_owned()],
        }
    }

    /// Identifiers in a written type that must name a type: not parameter
    /// names, literals or `fun`.
    fn type_names(ty: &str) -> Vec<String> {
        let mut names = Vec::new();
        let chars: Vec<char> = ty.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += 1;
                }
                i += 1;
            } else if c.is_ascii_alphabetic() || c == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let param = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&':');
                if word != "fun" && !param {
                    names.push(word);
                }
            } else if c.is_ascii_digit() {
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        names
    }

    /// Problems within the files themselves: types that name nothing, and
    /// `---@param` lines that do not match the function they document.
    fn self_check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (ty, at) in &self.written {
            for name in Self::type_names(ty) {
                let known = BUILTIN_TYPES.contains(&name.as_str())
                    || self.classes.contains_key(&name)
                    || self.aliases.contains_key(&name)
                    || self.generics.contains(&name);
                if !known {
                    problems.push(format!("{at}: the type `{name}` is declared nowhere"));
                }
            }
        }
        for (name, f) in &self.functions {
            let documented: Vec<&str> = f.documented.iter().map(|(n, _)| n.as_str()).collect();
            if documented != f.params.iter().map(String::as_str).collect::<Vec<_>>() {
                problems.push(format!(
                    "{}: `{name}` takes ({}) but its `---@param` lines document ({})",
                    f.at,
                    f.params.join(", "),
                    documented.join(", ")
                ));
            }
        }
        problems
    }
}

// ---------------------------------------------------------------------------
// What the probes report, and whether it fits the declared types.

/// The shape of a value a probe saw: its Lua type, or a table's string-keyed
/// fields and the shape of its first array item.
#[derive(Debug, Clone)]
enum Shape {
    Scalar(String),
    Table {
        fields: BTreeMap<String, Shape>,
        item: Option<Box<Shape>>,
    },
}

impl Shape {
    fn from_json(v: &Value) -> Shape {
        match v {
            Value::String(s) => Shape::Scalar(s.clone()),
            Value::Object(o) => Shape::Table {
                fields: match o.get("fields") {
                    Some(Value::Object(f)) => f
                        .iter()
                        .map(|(k, v)| (k.clone(), Shape::from_json(v)))
                        .collect(),
                    _ => BTreeMap::new(),
                },
                item: o.get("item").map(|i| Box::new(Shape::from_json(i))),
            },
            other => panic!("a probe reported an unreadable shape: {other}"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Shape::Scalar(t) => format!("a {t}"),
            Shape::Table { fields, item } => {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                let item = if item.is_some() {
                    " with array items"
                } else {
                    ""
                };
                format!("a table {{{}}}{item}", names.join(", "))
            }
        }
    }

    fn is_table(&self) -> bool {
        matches!(self, Shape::Table { .. }) || matches!(self, Shape::Scalar(t) if t == "table")
    }
}

/// What a successful match saw: the (class, field) pairs present, and the
/// classes entered.
#[derive(Default)]
struct Trace {
    fields: BTreeSet<(String, String)>,
    classes: BTreeSet<String>,
}

impl Trace {
    fn merge(&mut self, other: Trace) {
        self.fields.extend(other.fields);
        self.classes.extend(other.classes);
    }
}

impl Annotations {
    /// Whether `shape` is a value of type `ty`; `at` names it in problems.
    fn conform(&self, ty: &str, shape: &Shape, at: &str) -> Result<Trace, Vec<String>> {
        let ty = ty.trim();
        if let Some(inner) = ty.strip_suffix('?') {
            if matches!(shape, Shape::Scalar(t) if t == "nil") {
                return Ok(Trace::default());
            }
            return self.conform(inner, shape, at);
        }
        let alternatives = split_top(ty);
        if alternatives.len() > 1 {
            let mut why = Vec::new();
            for alt in &alternatives {
                match self.conform(alt, shape, at) {
                    Ok(trace) => return Ok(trace),
                    Err(e) => why.extend(e),
                }
            }
            return Err(vec![format!(
                "{at}: the host gave {}, which is none of `{ty}` ({})",
                shape.describe(),
                why.join("; ")
            )]);
        }
        let scalar = |lua_type: &str| match shape {
            Shape::Scalar(t) if t == lua_type => Ok(Trace::default()),
            _ => Err(vec![format!(
                "{at}: declared `{ty}`, but the host gave {}",
                shape.describe()
            )]),
        };
        match ty {
            "any" => return Ok(Trace::default()),
            "string" | "boolean" | "function" | "userdata" | "nil" => return scalar(ty),
            "true" | "false" => return scalar("boolean"),
            "number" | "integer" => return scalar("number"),
            "table" => {
                return if shape.is_table() {
                    Ok(Trace::default())
                } else {
                    scalar("table")
                };
            }
            _ => {}
        }
        if ty.starts_with('"') {
            return scalar("string");
        }
        if ty.parse::<f64>().is_ok() {
            return scalar("number");
        }
        if ty.starts_with("fun(") {
            return scalar("function");
        }
        if ty.starts_with("table<") {
            return if shape.is_table() {
                Ok(Trace::default())
            } else {
                scalar("table")
            };
        }
        if let Some(item_type) = ty.strip_suffix("[]") {
            return match shape {
                Shape::Scalar(t) if t == "table" => Ok(Trace::default()),
                Shape::Table { fields, item } => {
                    if let Some(key) = fields.keys().next() {
                        return Err(vec![format!(
                            "{at}: declared the array `{ty}`, but the host's table has the key `{key}`"
                        )]);
                    }
                    match item {
                        Some(item) => self.conform(item_type, item, &format!("{at}[1]")),
                        None => Ok(Trace::default()),
                    }
                }
                Shape::Scalar(_) => scalar("table"),
            };
        }
        if let Some(alternatives) = self.aliases.get(ty) {
            return self.conform(&alternatives.join("|"), shape, at);
        }
        if self.classes.contains_key(ty) {
            return self.conform_class(ty, shape, at);
        }
        Err(vec![format!("{at}: `{ty}` is declared nowhere")])
    }

    fn conform_class(&self, class: &str, shape: &Shape, at: &str) -> Result<Trace, Vec<String>> {
        let (fields, item) = match shape {
            Shape::Table { fields, item } => (fields, item),
            Shape::Scalar(t) if t == "table" => return Ok(Trace::default()),
            Shape::Scalar(_) => {
                return Err(vec![format!(
                    "{at}: declared the table `{class}`, but the host gave {}",
                    shape.describe()
                )]);
            }
        };
        let mut trace = Trace::default();
        let mut problems = Vec::new();
        trace.classes.insert(class.to_owned());
        let mut ancestors = vec![class.to_owned()];
        while let Some(c) = ancestors.pop() {
            if let Some(c) = self.classes.get(&c) {
                trace.classes.extend(c.parents.iter().cloned());
                ancestors.extend(c.parents.iter().cloned());
            }
        }
        if item.is_some() {
            problems.push(format!(
                "{at}: the host gave an array where the table `{class}` is declared"
            ));
        }
        for (name, sub) in fields {
            match self.field(class, name) {
                None => problems.push(format!(
                    "{at}: the host sends the field `{name}` ({}), which `{class}` does not declare",
                    sub.describe()
                )),
                Some((owner, field)) => {
                    trace.fields.insert((owner, name.clone()));
                    match self.conform(&field.ty, sub, &format!("{at}.{name}")) {
                        Ok(t) => trace.merge(t),
                        Err(e) => problems.extend(e),
                    }
                }
            }
        }
        for (owner, field) in self.fields(class) {
            if !field.optional && !fields.contains_key(&field.name) {
                problems.push(format!(
                    "{at}: `{owner}.{}` is declared as always there (no `?`), but the host sent a table without it",
                    field.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(trace)
        } else {
            Err(problems)
        }
    }
}

/// What a probe recorded, by hook (or read such as `room.members`): the
/// distinct shapes of the argument (or result) it saw.
fn observations(report: &Value) -> BTreeMap<String, Vec<Shape>> {
    let report = report
        .as_object()
        .unwrap_or_else(|| panic!("a probe report is a table: {report}"));
    report
        .iter()
        .map(|(what, variants)| {
            let shapes = match variants {
                Value::Object(v) => v.values().map(Shape::from_json).collect(),
                Value::Array(v) => v.iter().map(Shape::from_json).collect(),
                other => panic!("unreadable variants of `{what}`: {other}"),
            };
            (what.clone(), shapes)
        })
        .collect()
}

/// Checks what the hooks of `hooks_class` (every one of `hooks`) and the
/// reads a probe called were seen to receive or return, then that every
/// field of every class involved was seen at least once.
fn check_observations(
    ann: &Annotations,
    hooks_class: &str,
    hooks: &[&str],
    seen: &BTreeMap<String, Vec<Shape>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut trace = Trace::default();
    for (what, shapes) in seen {
        let (ty, place) = if hooks.contains(&what.as_str()) {
            match ann.hook_argument(hooks_class, what) {
                Some(ty) => (ty, format!("`{what}`'s argument")),
                None => {
                    problems.push(format!(
                        "`{hooks_class}.{what}` is not declared as a `fun(arg: Type)` field"
                    ));
                    continue;
                }
            }
        } else {
            match ann.functions.get(what).and_then(|f| f.returns.first()) {
                Some(ty) => (ty.clone(), format!("what `{what}()` returned")),
                None => {
                    problems.push(format!("`{what}` has no `---@return` in scripts/types/"));
                    continue;
                }
            }
        };
        for shape in shapes {
            match ann.conform(&ty, shape, &place) {
                Ok(t) => trace.merge(t),
                Err(e) => problems.extend(e),
            }
        }
    }
    for hook in hooks {
        if !seen.contains_key(*hook) {
            problems.push(format!(
                "the host never called `{hook}` in this test, so its argument went unchecked"
            ));
        }
    }
    for class in &trace.classes {
        for field in &ann.classes[class].fields {
            if !trace.fields.contains(&(class.clone(), field.name.clone())) {
                problems.push(format!(
                    "{}: `{class}.{}` is declared, but the host never sent it here",
                    field.at, field.name
                ));
            }
        }
    }
    problems
}

/// The `.luarc.json` beside the scripts of one kind.
fn luarc(dir: &Path) -> Value {
    let path = dir.join(".luarc.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a probe found of the host's API: every global with its type, and
/// the members of every table global.
struct Surface {
    globals: BTreeMap<String, String>,
    tables: BTreeMap<String, BTreeMap<String, String>>,
    version: String,
}

impl Surface {
    fn from_json(report: &Value) -> Surface {
        let strings = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Surface {
            globals: strings(&report["globals"]),
            tables: report["tables"]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
                .unwrap_or_default(),
            version: report["version"].as_str().unwrap_or("?").to_owned(),
        }
    }
}

/// Lua that reports the surface: the value of a `return` or an argument.
const SURFACE: &str = r#"
local function kinds(t)
  local out = {}
  for k, v in pairs(t) do
    if type(k) == "string" then out[k] = type(v) end
  end
  return out
end

local function surface()
  local tables = {}
  for name, value in pairs(_G) do
    if type(value) == "table" and name ~= "_G" then tables[name] = kinds(value) end
  end
  return { globals = kinds(_G), tables = tables, version = _VERSION }
end
"#;

/// Compares the host's surface with the annotations and `.luarc.json`.
fn check_surface(ann: &Annotations, host: &Surface, luarc: &Value, kind: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let whom = if kind == "bot" {
        "bots"
    } else {
        "room policies"
    };
    let version = luarc["runtime"]["version"].as_str().unwrap_or("(none)");
    if version != host.version {
        problems.push(format!(
            "the {kind} .luarc.json says runtime.version {version}, the host runs {}",
            host.version
        ));
    }
    let disabled: BTreeSet<String> = luarc["runtime"]["builtin"]
        .as_object()
        .map(|b| {
            b.iter()
                .filter(|(_, v)| *v == "disable")
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();

    for (name, ty) in &host.globals {
        match ann.globals.get(name) {
            Some(g) => {
                let expected = if g.function {
                    Some("function")
                } else if g.class.is_some() {
                    Some("table")
                } else {
                    None
                };
                if let Some(expected) = expected
                    && expected != ty
                {
                    problems.push(format!(
                        "{}: `{name}` is declared as a {expected}, but the host's is a {ty}",
                        g.at
                    ));
                }
                if ty == "function" && !g.function {
                    problems.push(format!(
                        "{}: the host's `{name}` is a function; declare it with `function {name}(...)`",
                        g.at
                    ));
                }
            }
            None if !STANDARD.contains(&name.as_str()) => problems.push(format!(
                "the host installs the global `{name}` ({ty}) for {whom}, which scripts/types/ does not declare"
            )),
            None => {}
        }
    }
    for (name, g) in &ann.globals {
        if !host.globals.contains_key(name) {
            problems.push(format!(
                "{}: the global `{name}` is declared, but the host does not install it for {whom}",
                g.at
            ));
        }
    }

    // The members of every declared table global.
    for (name, g) in &ann.globals {
        if g.class.is_none() {
            continue;
        }
        let Some(installed) = host.tables.get(name) else {
            continue;
        };
        let declared = ann.members(name);
        for (member, ty) in installed {
            match declared.get(member) {
                None => problems.push(format!(
                    "the host installs `{name}.{member}` ({ty}), which scripts/types/ does not declare"
                )),
                Some((function, declared_ty, at)) => {
                    if *function != (ty == "function") {
                        problems.push(format!(
                            "{at}: `{name}.{member}` is declared as `{declared_ty}`, but the host's is a {ty}"
                        ));
                    } else if !*function
                        && let Err(e) =
                            ann.conform(declared_ty, &Shape::Scalar(ty.clone()), &format!("`{name}.{member}`"))
                    {
                        problems.extend(e.into_iter().map(|e| format!("{at}: {e}")));
                    }
                }
            }
        }
        for (member, (_, _, at)) in &declared {
            if !installed.contains_key(member) {
                problems.push(format!(
                    "{at}: `{name}.{member}` is declared, but the host does not install it"
                ));
            }
        }
    }

    // What the language server offers and the sandbox lacks.
    for name in STANDARD {
        let name = name.to_string();
        if !host.globals.contains_key(&name)
            && !ann.absent.contains(&name)
            && !disabled.contains(&name)
        {
            problems.push(format!(
                "the {kind} sandbox has no `{name}`, which lua-language-server offers: list it on the \
                 `absent:` line of shared.lua, or disable its library in the {kind} .luarc.json"
            ));
        }
    }
    for name in &ann.absent {
        if host.globals.contains_key(name) {
            problems.push(format!(
                "shared.lua lists `{name}` as absent, but the host installs it for {whom}"
            ));
        }
        if !STANDARD.contains(&name.as_str()) {
            problems.push(format!(
                "shared.lua lists `{name}` as absent, but it is no standard Lua global"
            ));
        }
    }
    for lib in &disabled {
        if host.globals.contains_key(lib) && !ann.globals.contains_key(lib) {
            problems.push(format!(
                "the {kind} .luarc.json disables the library `{lib}`, which the host provides: \
                 enable it, or declare the host's `{lib}` in scripts/types/"
            ));
        }
    }
    problems
}

/// The `.luarc.json` beside the scripts of one kind loads exactly `files`.
fn check_library(luarc: &Value, dir: &Path, files: &[&str], kind: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let library: Vec<PathBuf> = luarc["workspace"]["library"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(|p| dir.join(p))
                .collect()
        })
        .unwrap_or_default();
    let wanted: BTreeSet<PathBuf> = files
        .iter()
        .map(|f| {
            scripts_dir()
                .join("types")
                .join(f)
                .canonicalize()
                .expect("annotation file")
        })
        .collect();
    let mut loaded = BTreeSet::new();
    for path in &library {
        match path.canonicalize() {
            Ok(p) => {
                loaded.insert(p);
            }
            Err(_) => problems.push(format!(
                "the {kind} .luarc.json loads {}, which does not exist",
                path.display()
            )),
        }
    }
    if loaded != wanted {
        problems.push(format!(
            "the {kind} .luarc.json's workspace.library should load exactly {files:?}, it loads {library:?}"
        ));
    }
    problems
}

/// Member accesses `global.name` in a script's code (comments dropped).
fn uses(text: &str, global: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let needle = format!("{global}.");
    for (i, line) in text.lines().enumerate() {
        let code = line.split("--").next().unwrap_or("");
        let mut from = 0;
        while let Some(pos) = code[from..].find(&needle) {
            let start = from + pos;
            let before = code[..start].chars().next_back();
            from = start + needle.len();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == ':')
            {
                continue;
            }
            let member: String = code[from..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !member.is_empty() {
                found.push((member, i + 1));
            }
        }
    }
    found
}

/// Every `global.member` the shipped scripts in `dir` use is declared.
fn check_shipped(ann: &Annotations, dir: &Path, globals: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("scripts directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "lua"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scripts in {}", dir.display());
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("shipped script");
        for global in globals {
            let declared = ann.members(global);
            for (member, line) in uses(&text, global) {
                if !declared.contains_key(&member) {
                    problems.push(format!(
                        "{}:{line}: uses `{global}.{member}`, which scripts/types/ does not declare",
                        path.display()
                    ));
                }
            }
        }
    }
    problems
}

fn fail_on(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "scripts/types/ is out of step with the host:\n  - {}",
        problems.join("\n  - ")
    );
}

/// A Lua list literal of `names`.
fn lua_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("{{ {} }}", quoted.join(", "))
}

fn limits() -> LuaLimits {
    LuaLimits {
        time: Duration::from_secs(5),
        ..LuaLimits::default()
    }
}

// ---------------------------------------------------------------------------
// The files themselves.

#[test]
fn the_annotation_files_are_for_editors_only() {
    let dir = scripts_dir();
    let config = PolicyConfig {
        scripts_dir: dir.clone(),
        plugins_dir: PathBuf::new(),
        watch: false,
        lua: limits(),
        ..PolicyConfig::default()
    };
    let catalog = Catalog::open(config).expect("catalog");

    // The server loads `<scripts_dir>/*.lua` and nothing else.
    let mut policies: Vec<String> = std::fs::read_dir(&dir)
        .expect("scripts/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "lua"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    policies.sort();
    let loaded: Vec<String> = catalog
        .status()
        .scripts
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        loaded, policies,
        "the catalog loads the policies in scripts/, and only those"
    );
    for types in std::fs::read_dir(dir.join("types"))
        .expect("scripts/types/")
        .flatten()
    {
        let path = types.path();
        assert_eq!(
            catalog.classify(&path),
            None,
            "{} would be taken for a room policy",
            path.display()
        );
    }
    for other in [
        dir.join(".luarc.json"),
        dir.join("bots/.luarc.json"),
        dir.join("bots/greeter.lua"),
    ] {
        assert!(other.exists(), "{}", other.display());
        assert_eq!(catalog.classify(&other), None, "{}", other.display());
    }
    assert_eq!(
        catalog.classify(&dir.join("default.lua")),
        Some(FileKind::Script("default".into())),
        "a policy file is still one"
    );

    // Each kind's editor loads its own files, and the policies' does not
    // wander into the bots' (whose globals differ).
    let policy_luarc = luarc(&dir);
    let bot_luarc = luarc(&dir.join("bots"));
    let mut problems = check_library(&policy_luarc, &dir, POLICY_FILES, "policy");
    problems.extend(check_library(
        &bot_luarc,
        &dir.join("bots"),
        BOT_FILES,
        "bot",
    ));
    let ignored: Vec<&str> = policy_luarc["workspace"]["ignoreDir"]
        .as_array()
        .map(|i| i.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for needed in ["bots", "types/bot.lua"] {
        if !ignored.contains(&needed) {
            problems.push(format!(
                "scripts/.luarc.json must ignore `{needed}`, or policies would see the bots' globals"
            ));
        }
    }
    for files in [POLICY_FILES, BOT_FILES] {
        problems.extend(Annotations::read(files).self_check());
    }
    fail_on(problems);
}

// ---------------------------------------------------------------------------
// Room policies.

/// A policy whose `can_send` reports the surface for "surface", returns
/// nothing for "nothing", `first, second` for `{first, second}`, and
/// otherwise returns the payload itself as its answer.
fn api_probe() -> String {
    format!(
        r#"{SURFACE}
local policy = {{}}
function policy.can_send(req)
  local p = req.payload
  if p == "surface" then return {{ payload = surface() }} end
  if p == "nothing" then return end
  if type(p) == "table" and p.second ~= nil then return p.first, p.second end
  return p
end
return policy
"#
    )
}

/// What a sample value of type `ty` is, as JSON (the first alternative of
/// a union or alias).
fn sample(ann: &Annotations, ty: &str) -> Value {
    let leaf = ann.leaves(ty.trim_end_matches('?')).remove(0);
    let leaf = leaf.trim_end_matches('?');
    if let Some(literal) = leaf.strip_prefix('"') {
        return Value::String(literal.trim_end_matches('"').to_owned());
    }
    if let Ok(n) = leaf.parse::<u64>() {
        return json!(n);
    }
    match leaf {
        "true" | "boolean" => json!(true),
        "false" => json!(false),
        "string" => json!("why"),
        "integer" | "number" => json!(1),
        _ => json!({ "sample": 1 }),
    }
}

#[tokio::test]
async fn the_policy_api_is_what_the_host_installs() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("probe.lua"), api_probe()).expect("write probe");
    let catalog = Catalog::open(PolicyConfig {
        scripts_dir: dir.path().to_path_buf(),
        plugins_dir: PathBuf::new(),
        watch: false,
        lua: limits(),
        ..PolicyConfig::default()
    })
    .expect("catalog");
    let identity = OwnedIdentity {
        name: "probe-room".into(),
        channel_id: 7,
        custom_info: "k=v".into(),
    };
    let mut policy: LuaPolicy = catalog
        .instantiate("probe", identity, None)
        .await
        .expect("the probe loads")
        .expect("the probe is in the catalog");
    let view = Arc::new(RoomView::default());
    let mut answer = |payload: Value| {
        let request = json!({ "user": "u", "admin": false, "payload": payload });
        policy
            .decide("can_send", &view, &request, &mut Vec::new())
            .expect("the probe answers")
    };

    let ann = Annotations::read(POLICY_FILES);
    let Decision::Payload(report) = answer(json!("surface")) else {
        panic!("the probe reports its surface as a payload");
    };
    let host = Surface::from_json(&report);
    let mut problems = check_surface(&ann, &host, &luarc(&scripts_dir()), "policy");

    // Every hook the host knows, and only those, is declared, and optional.
    let hooks = conclave::policy::lua::HOOKS;
    problems.extend(hook_problems(&ann, "Policy", hooks));

    // Every form of answer the annotations declare means to the host what
    // docs/scripting.md §5 says; each optional field may be left out.
    let expected = |form: &str, fields: &serde_json::Map<String, Value>| -> Option<Decision> {
        Some(match form {
            "nil" => Decision::Pass,
            "true" | "Allowance" => Decision::Allow,
            "false" => Decision::Deny(Failure::new(
                Status::Forbidden,
                "refused by the room policy `probe`",
            )),
            "Refusal" => Decision::Deny(Failure::new(
                fields
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| Status::from_code(c as u16))
                    .unwrap_or(Status::Forbidden),
                fields
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("refused by the room policy `probe`"),
            )),
            "JoinTerms" => Decision::Join {
                role: fields
                    .get("role")
                    .and_then(Value::as_str)
                    .map(|r| r.parse().expect("a role")),
                muted: fields.get("muted") == Some(&json!(true)),
            },
            "Rewrite" => Decision::Payload(fields["payload"].clone()),
            "Handled" => Decision::Handled,
            _ => return None,
        })
    };
    let forms = ann.leaves("DecideResult");
    for form in &forms {
        let full: serde_json::Map<String, Value> = ann
            .fields(form)
            .iter()
            .map(|(_, f)| (f.name.clone(), sample(&ann, &f.ty)))
            .collect();
        let Some(want) = expected(form, &full) else {
            problems.push(format!(
                "`DecideResult` has the form `{form}`, which this test does not know: \
                 say in tests/lua_types.rs what the host makes of it"
            ));
            continue;
        };
        let got = match form.as_str() {
            "nil" => answer(json!("nothing")),
            "true" => answer(json!(true)),
            "false" => answer(json!(false)),
            _ => answer(Value::Object(full.clone())),
        };
        if got != want {
            problems.push(format!(
                "the decide answer `{form}` ({}) gave {got:?}, not {want:?}",
                Value::Object(full.clone())
            ));
        }
        for (_, field) in ann.fields(form) {
            if !field.optional {
                continue;
            }
            let mut less = full.clone();
            less.remove(&field.name);
            let want = expected(form, &less).expect("known form");
            let got = answer(Value::Object(less.clone()));
            if got != want {
                problems.push(format!(
                    "{}: without `{}`, the decide answer `{form}` gave {got:?}, not {want:?}",
                    field.at, field.name
                ));
            }
        }
    }
    for known in [
        "nil",
        "true",
        "false",
        "Refusal",
        "Allowance",
        "JoinTerms",
        "Rewrite",
        "Handled",
    ] {
        if !forms.iter().any(|f| f == known) {
            problems.push(format!(
                "`DecideResult` lacks the form `{known}`, which decide hooks may return"
            ));
        }
    }
    let refused = answer(json!({ "first": false, "second": "a reason" }));
    if refused != Decision::Deny(Failure::new(Status::Forbidden, "a reason")) {
        problems.push(format!("`false, reason` gave {refused:?}"));
    }

    // The status codes a refusal may carry.
    let codes: BTreeSet<u16> = ann
        .leaves("StatusCode")
        .iter()
        .map(|c| c.parse().expect("StatusCode lists numbers"))
        .collect();
    for status in Status::ALL {
        let code = status.code();
        let got = answer(json!({ "allow": false, "code": code }));
        let kept = matches!(&got, Decision::Deny(f) if f.status == status);
        if kept && status != Status::Ok && !codes.contains(&code) {
            problems.push(format!(
                "the host keeps the refusal code {code}, which `StatusCode` does not list"
            ));
        }
        if !kept && codes.contains(&code) {
            problems.push(format!(
                "`StatusCode` lists {code}, but the host turns it into {got:?}"
            ));
        }
    }

    problems.extend(check_shipped(
        &ann,
        &scripts_dir(),
        &["room", "store", "log", "os"],
    ));
    fail_on(problems);
}

/// The hooks class declares exactly `hooks`, each optional and a function.
fn hook_problems(ann: &Annotations, class: &str, hooks: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let declared = ann.fields(class);
    for hook in hooks {
        match declared.iter().find(|(_, f)| f.name == *hook) {
            None => problems.push(format!(
                "the host calls the hook `{hook}`, which `{class}` does not declare"
            )),
            Some((_, f)) if !f.optional || !f.ty.starts_with("fun(") => problems.push(format!(
                "{}: `{class}.{hook}` should be an optional function (`{hook}? fun(...)`)",
                f.at
            )),
            Some(_) => {}
        }
    }
    for (_, f) in &declared {
        if !hooks.contains(&f.name.as_str()) {
            problems.push(format!(
                "{}: `{class}.{}` is declared, but the host has no such hook",
                f.at, f.name
            ));
        }
    }
    problems
}

/// Lua that records shapes: `shape(v, depth)` and a canonical `key(shape)`.
const SHAPES: &str = r#"
local NULL = rawget(_G, "null")

local function shape(v, depth)
  if NULL ~= nil and rawequal(v, NULL) then return "null" end
  if type(v) ~= "table" then return type(v) end
  if depth == 0 then return "table" end
  local fields = {}
  for k, x in pairs(v) do
    if type(k) == "string" then fields[k] = shape(x, depth - 1) end
  end
  local item = nil
  if rawget(v, 1) ~= nil then item = shape(rawget(v, 1), depth - 1) end
  return { fields = fields, item = item }
end

local function key(s)
  if type(s) ~= "table" then return s end
  local names = {}
  for k in pairs(s.fields) do names[#names + 1] = k end
  table.sort(names)
  local parts = {}
  for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. key(s.fields[k]) end
  local text = "{" .. table.concat(parts, ",") .. "}"
  if s.item ~= nil then text = text .. "[" .. key(s.item) .. "]" end
  return text
end
"#;

/// A policy that defines every hook the host knows and keeps, in the store,
/// the distinct shapes of what each received (and of what the room's reads
/// returned); a data message "report" asks for all of it.
fn hook_probe(version: &str) -> String {
    let hooks = lua_list(conclave::policy::lua::HOOKS);
    format!(
        r#"-- probe {version}
{SHAPES}
local function record(what, value)
  local seen = store.get("seen") or {{}}
  local variants = seen[what] or {{}}
  local s = shape(value, 4)
  variants[key(s)] = s
  seen[what] = variants
  store.set("seen", seen)
end

local extra = {{}}

function extra.on_joined(member)
  record("room.members", room.members())
  record("room.member", room.member(member.user))
  record("room.count", room.count())
  record("room.metadata", room.metadata())
  if not room.state.timer_set then
    room.state.timer_set = true
    room.after(0, "probe")
  end
end

function extra.on_speaking()
  if not room.state.spoke then
    room.state.spoke = true
    room.set_metadata("spoke", true)
  end
end

function extra.on_reload()
  room.set_metadata("reloaded", true)
end

function extra.can_send(req)
  if req.payload == "report" then
    room.send(req.user, store.get("seen"))
    return {{ handled = true }}
  end
end

local policy = {{}}
for _, hook in ipairs({hooks}) do
  policy[hook] = function(arg)
    record(hook, arg)
    if extra[hook] then return extra[hook](arg) end
  end
end
return policy
"#
    )
}

/// The room's metadata, as the admin API shows it.
async fn metadata(srv: &TestServer, room: &str) -> Value {
    let (_, body) = srv
        .get(&format!("/api/rooms/{room}"), Some(&srv.admin_token()))
        .await;
    body["metadata"].clone()
}

#[tokio::test]
async fn policy_hooks_get_the_tables_the_annotations_declare() {
    let srv = TestServer::start_with(|c| {
        c.policy.rules = vec![PolicyRule {
            rooms: "channel:*".into(),
            policy: "probe".into(),
        }];
    })
    .await;
    srv.script("probe", &hook_probe("1")).await;

    // can_create, then two members with media: can_join, on_joined, on_timer.
    let owner = srv.client("owner").await;
    owner
        .create_with_policy("r", "k=v", Some("probe"))
        .await
        .expect("create");
    let alice = Participant::join(&srv, "alice", "r", Mode::Video, Role::Interactor).await;
    let bob = Participant::join(&srv, "bob", "r", Mode::Video, Role::Interactor).await;

    // on_speaking: Alice speaks until the policy has heard her.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut n = 0u32;
    while metadata(&srv, "r").await["spoke"] != json!(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "on_speaking never ran"
        );
        for _ in 0..5 {
            alice
                .media
                .send_audio(format!("loud:{n}").as_bytes(), n * 960, 10)
                .await
                .expect("send audio");
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Each decide hook with and without a target; the refusals of the room
    // rules (no admin grant) come after the hook has run.
    let (a, b) = (&alice.client, &bob.client);
    b.share_screen(true, None).await.expect("bob shares");
    let _ = a.share_screen(false, Some("bob")).await;
    b.mute(MediaKind::Audio, true, None).await.expect("mute");
    let _ = b.mute(MediaKind::Audio, false, None).await;
    let _ = a.mute(MediaKind::Audio, true, Some("bob")).await;
    let _ = a.mute_all(MediaKind::Video, true).await;
    b.set_role(Role::Audience, None)
        .await
        .expect("bob steps down");
    let _ = a.set_role(Role::Interactor, Some("bob")).await;
    let _ = a.kick("bob").await;
    a.send_data(json!({ "x": 1 }), None).await.expect("send");
    a.send_data(json!([1, 2]), Some("bob"))
        .await
        .expect("send to");

    // on_reload: a new version of the probe.
    srv.script("probe", &hook_probe("2")).await;
    eventually("the room to switch to the new version", || async {
        metadata(&srv, "r").await["reloaded"] == json!(true)
    })
    .await;

    // on_left, then on_closing.
    b.leave().await.expect("bob leaves");
    let (status, _) = srv.delete("/api/rooms/r", Some(&srv.admin_token())).await;
    assert_eq!(status, 200);

    // A community media channel's room: requests carry `community`.
    let server = srv.community("olivia", &["ann"]).await;
    let channel = srv.media_channel(server, "hall").await;
    let crew = srv
        .role(server, "crew", 10, common::community::allow(&[]))
        .await;
    srv.give(server, "ann", crew).await;
    let ann = srv.client("ann").await;
    ann.connect_channel(server, channel, None)
        .await
        .expect("ann connects");
    ann.send_data(json!("hi"), None).await.expect("ann sends");

    // The report, once everything has been recorded.
    let mut reporter = srv.client("reporter").await;
    reporter
        .create_with_policy("report", "", Some("probe"))
        .await
        .expect("create the report room");
    reporter
        .join("report", Mode::Audio, None)
        .await
        .expect("join the report room");
    let hooks = conclave::policy::lua::HOOKS;
    let deadline = std::time::Instant::now() + PATIENCE;
    let seen = loop {
        reporter
            .send_data(json!("report"), None)
            .await
            .expect("ask for the report");
        let report = common::event_where(&mut reporter, |e| match e {
            ServerMessage::Data { from, payload, .. } if from == "policy:probe" => {
                Some(payload.clone())
            }
            _ => None,
        })
        .await;
        let seen = observations(&report);
        if hooks.iter().all(|h| seen.contains_key(*h)) || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(alice);
    drop(bob);

    let annotations = Annotations::read(POLICY_FILES);
    fail_on(check_observations(&annotations, "Policy", hooks, &seen));
    srv.shutdown().await;
}

// ---------------------------------------------------------------------------
// Bots.

#[test]
fn the_bot_api_is_what_the_host_installs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("probe.lua");
    let source = format!(
        "{SURFACE}\nlocal probe = {{}}\nfunction probe.on_joined() bot.send_data(surface()) end\nreturn probe\n"
    );
    std::fs::write(&path, source).expect("write probe");
    let mut options = serde_json::Map::new();
    options.insert("greeting".into(), json!("hi"));
    let mut script = BotScript::load(
        &path,
        &limits(),
        &options,
        Arc::new(Mutex::new(View::default())),
    )
    .expect("the probe loads");
    script
        .call("on_joined", &json!({ "room": "r" }))
        .expect("the probe runs");
    let (actions, _, _) = script.take();
    let [BotAction::SendData { payload, .. }] = actions.as_slice() else {
        panic!("the probe sends one report: {actions:?}");
    };
    let host = Surface::from_json(payload);

    let ann = Annotations::read(BOT_FILES);
    let mut problems = check_surface(&ann, &host, &luarc(&scripts_dir().join("bots")), "bot");
    problems.extend(hook_problems(
        &ann,
        "BotScript",
        conclave::bot::script::HOOKS,
    ));
    problems.extend(check_shipped(
        &ann,
        &scripts_dir().join("bots"),
        &["bot", "os"],
    ));
    fail_on(problems);
}

/// A bot that defines every hook the host knows and keeps the distinct
/// shapes of what each received (and of what its reads returned); a data
/// message "report" asks for them, and it sends them all as it leaves.
fn bot_probe() -> String {
    let hooks = lua_list(conclave::bot::script::HOOKS);
    format!(
        r#"{SHAPES}
local seen = {{}}
local function record(what, value)
  local s = shape(value, 4)
  seen[what] = seen[what] or {{}}
  seen[what][key(s)] = s
end

local extra = {{}}

function extra.on_joined()
  local me = bot.me()
  record("bot.me", me)
  record("bot.members", bot.members())
  record("bot.member", bot.member(me.user))
  record("bot.playing", bot.playing())
  record("bot.recording", bot.recording())
  record("bot.now", bot.now())
  record("bot.after", bot.after(600000, function() end))
  record("bot.every", bot.every(600000, function() end))
  bot.kick("nobody-here")   -- refused (no admin grant): on_error
  bot.play("beep.ogg")      -- speaking while it plays, on_play_ended after
end

function extra.on_data(event)
  if event.payload == "report" then bot.send_data({{ report = seen }}, event.from) end
end

function extra.on_left()
  bot.send_data({{ final = seen }})
end

local probe = {{}}
for _, hook in ipairs({hooks}) do
  probe[hook] = function(event)
    record(hook, event)
    if extra[hook] then extra[hook](event) end
  end
end
return probe
"#
    )
}

/// The next data message from `user` whose payload has `key`.
async fn data_from(client: &mut conclave::client::SignalClient, user: &str, key: &str) -> Value {
    common::event_where(client, |e| match e {
        ServerMessage::Data { from, payload, .. } if from == user && payload.get(key).is_some() => {
            Some(payload[key].clone())
        }
        _ => None,
    })
    .await
}

#[tokio::test]
async fn bot_hooks_get_the_tables_the_annotations_declare() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let beep: Vec<f32> = {
        let mut tone = conclave::audio::Tone::new(660.0, 0.3);
        (0..50).flat_map(|_| tone.next_frame()).collect()
    };
    conclave::audio::encode_ogg_opus(&dir.path().join("beep.ogg"), &beep).expect("write beep");
    let script = dir.path().join("probe.lua");
    std::fs::write(&script, bot_probe()).expect("write probe");

    let mut watch = srv.client("watch").await;
    watch.create("b", "").await.expect("create");
    watch.join("b", Mode::Audio, None).await.expect("join");

    let mut config = BotConfig::new(&srv.ws_url(), &srv.user_token("probe-bot"), "b", &script);
    config.media_dir = dir.path().to_path_buf();
    config.record_dir = dir.path().join("recordings");
    config.bind = "127.0.0.1:0".parse().expect("literal address");
    config.limits.time = Duration::from_secs(5);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bot::run(config, async move {
        let _ = stopped.await;
    }));
    eventually("the bot to join", || async {
        let (_, body) = srv
            .get("/api/rooms/b/members", Some(&srv.admin_token()))
            .await;
        body["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["user"] == "probe-bot"))
    })
    .await;

    // on_member_joined, on_mute_changed, on_role_changed, on_member_left.
    let other = srv.client("other").await;
    other.join("b", Mode::Audio, None).await.expect("join");
    let _ = watch.mute(MediaKind::Audio, true, None).await;
    let _ = watch.mute(MediaKind::Audio, false, None).await;
    watch
        .set_role(Role::Audience, None)
        .await
        .expect("step down");
    other.leave().await.expect("leave");

    // on_data (and, meanwhile, on_speaking, on_play_ended and on_error).
    let hooks = conclave::bot::script::HOOKS;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        watch
            .send_data(json!("report"), Some("probe-bot"))
            .await
            .expect("ask for the report");
        let seen = observations(&data_from(&mut watch, "probe-bot", "report").await);
        let all = hooks
            .iter()
            .all(|h| *h == "on_left" || seen.contains_key(*h));
        if all || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // on_left, as the bot is stopped: it sends everything it saw.
    let _ = stop.send(());
    let seen = observations(&data_from(&mut watch, "probe-bot", "final").await);
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the bot ends")
        .expect("the bot task does not panic")
        .expect("the bot ran");

    let annotations = Annotations::read(BOT_FILES);
    fail_on(check_observations(&annotations, "BotScript", hooks, &seen));
    srv.shutdown().await;
}
