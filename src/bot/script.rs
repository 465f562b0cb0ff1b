//! A bot's Lua script: the same sandbox as room policies, a `bot` API table,
//! and hooks the runner calls as the room changes.
//!
//! Scripts never block the bot. API calls that act on the room (`send_data`,
//! `mute`, `play`, ...) only queue an [`Action`]; the runner carries the
//! queue out after the hook returns, in order, and reports failures through
//! the script's `on_error` hook. Reads (`bot.members()`, `bot.me`) see the
//! bot's view as of the event being handled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaSerdeExt, MultiValue, Table, Value};
use serde::Serialize;
use serde_json::Value as Json;

use crate::policy::lua::sandbox::{self, Budget, LuaLimits};
use crate::signal::protocol::{MediaKind, MemberInfo, Role};

/// Every hook a bot script may define.
pub const HOOKS: &[&str] = &[
    "on_joined",
    "on_member_joined",
    "on_member_left",
    "on_role_changed",
    "on_mute_changed",
    "on_speaking",
    "on_data",
    "on_play_ended",
    "on_error",
    "on_left",
];

/// Something a script asked the bot to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    SendData {
        payload: Json,
        to: Option<String>,
    },
    Mute {
        user: Option<String>,
        kind: MediaKind,
        muted: bool,
    },
    Kick {
        user: String,
    },
    SetRole {
        role: Role,
        user: Option<String>,
    },
    Play {
        source: Source,
        looped: bool,
    },
    Echo {
        delay: Duration,
        user: Option<String>,
    },
    Stop,
    Record {
        target: String,
        file: String,
    },
    StopRecording {
        target: Option<String>,
    },
    Leave,
}

impl Action {
    /// The API function that queued it, for error reports.
    pub fn name(&self) -> &'static str {
        match self {
            Action::SendData { .. } => "send_data",
            Action::Mute { .. } => "mute",
            Action::Kick { .. } => "kick",
            Action::SetRole { .. } => "set_role",
            Action::Play { .. } => "play",
            Action::Echo { .. } => "echo",
            Action::Stop => "stop",
            Action::Record { .. } => "record",
            Action::StopRecording { .. } => "stop_recording",
            Action::Leave => "leave",
        }
    }
}

/// What `bot.play` plays.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// An Ogg Opus file, by name inside the bot's media directory.
    File(String),
    /// A sine tone.
    Tone { frequency: f32, amplitude: f32 },
}

/// The bot as its script sees it: refreshed by the runner before each hook.
#[derive(Debug, Default)]
pub struct View {
    pub user: String,
    pub name: String,
    pub room: String,
    pub role: Option<Role>,
    pub members: Vec<MemberInfo>,
    pub playing: bool,
    pub recording: Vec<String>,
}

/// A timer a script set with `bot.after` or `bot.every`.
#[derive(Debug)]
pub struct Timer {
    pub id: u64,
    pub due: Instant,
    pub every: Option<Duration>,
}

#[derive(Default)]
struct Shared {
    actions: Vec<Action>,
    /// Timers set or cancelled during the current call.
    new_timers: Vec<Timer>,
    cancelled: Vec<u64>,
    next_timer: u64,
}

/// Why a script could not load, or a hook failed.
#[derive(Debug, thiserror::Error)]
#[error("{script}: {hook}: {message}")]
pub struct ScriptError {
    pub script: String,
    pub hook: String,
    pub message: String,
}

/// A loaded bot script.
pub struct BotScript {
    lua: Lua,
    budget: Arc<Budget>,
    hooks: Table,
    timers_table: Table,
    shared: Arc<Mutex<Shared>>,
    view: Arc<Mutex<View>>,
    label: String,
}

impl BotScript {
    /// Loads `path` with `options` (the `bot.options` table).
    pub fn load(
        path: &Path,
        limits: &LuaLimits,
        options: &serde_json::Map<String, Json>,
        view: Arc<Mutex<View>>,
    ) -> Result<BotScript, ScriptError> {
        let label = path.display().to_string();
        let fail = |message: String| ScriptError {
            script: label.clone(),
            hook: "load".into(),
            message,
        };
        let source = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let (lua, budget) = sandbox::new_state(limits).map_err(|e| fail(e.to_string()))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let timers_table = lua.create_table().map_err(|e| fail(e.to_string()))?;
        install_api(&lua, &shared, &view, options, &timers_table)
            .map_err(|e| fail(sandbox::error_text(&e)))?;
        budget.reset();
        let value = lua
            .load(&source)
            .set_name(format!("@{label}"))
            .set_mode(mlua::chunk::ChunkMode::Text)
            .eval::<Value>()
            .map_err(|e| fail(sandbox::error_text(&e)))?;
        let Value::Table(hooks) = value else {
            return Err(fail(format!(
                "the script must return a table of hooks, not a {}",
                value.type_name()
            )));
        };
        for warning in crate::policy::lua::hook_warnings(&hooks, HOOKS) {
            tracing::warn!(script = %label, "{warning}");
        }
        Ok(BotScript {
            lua,
            budget,
            hooks,
            timers_table,
            shared,
            view,
            label,
        })
    }

    pub fn view(&self) -> &Arc<Mutex<View>> {
        &self.view
    }

    /// True if the script defines `hook`.
    pub fn has(&self, hook: &str) -> bool {
        matches!(self.hooks.raw_get::<Value>(hook), Ok(Value::Function(_)))
    }

    /// Calls `hook` with `args` (each serialized to Lua) if the script has it.
    pub fn call(&mut self, hook: &str, args: &[&dyn ErasedArg]) -> Result<(), ScriptError> {
        let function = match self.hooks.raw_get::<Value>(hook) {
            Ok(Value::Function(f)) => f,
            Ok(Value::Nil) => return Ok(()),
            Ok(other) => {
                return Err(self.error(hook, format!("is a {}, not a function", other.type_name())));
            }
            Err(e) => return Err(self.error(hook, sandbox::error_text(&e))),
        };
        let lua = &self.lua;
        let values = args
            .iter()
            .map(|a| a.to_lua(lua))
            .collect::<mlua::Result<MultiValue>>()
            .map_err(|e| self.error(hook, sandbox::error_text(&e)))?;
        self.invoke(hook, &function, values)
    }

    /// Runs the timer `id`'s function; false if it no longer exists.
    pub fn fire_timer(&mut self, id: u64) -> Result<bool, ScriptError> {
        let function = match self.timers_table.raw_get::<Value>(id) {
            Ok(Value::Function(f)) => f,
            _ => return Ok(false),
        };
        self.invoke("timer", &function, MultiValue::new())?;
        Ok(true)
    }

    /// Forgets a one-shot timer after it fired.
    pub fn drop_timer(&self, id: u64) {
        let _ = self.timers_table.raw_set(id, Value::Nil);
    }

    fn invoke(&self, hook: &str, f: &Function, args: MultiValue) -> Result<(), ScriptError> {
        self.budget.reset();
        f.call::<()>(args).map_err(|e| {
            let message = if self.budget.is_exhausted() {
                format!("stopped: {}", sandbox::error_text(&e))
            } else {
                sandbox::error_text(&e)
            };
            self.error(hook, message)
        })
    }

    /// Takes what the last calls queued: actions, timers set, timers cancelled.
    pub fn take(&self) -> (Vec<Action>, Vec<Timer>, Vec<u64>) {
        let mut shared = self.shared.lock().expect("bot script state");
        (
            std::mem::take(&mut shared.actions),
            std::mem::take(&mut shared.new_timers),
            std::mem::take(&mut shared.cancelled),
        )
    }

    fn error(&self, hook: &str, message: String) -> ScriptError {
        ScriptError {
            script: self.label.clone(),
            hook: hook.to_owned(),
            message,
        }
    }
}

/// A hook argument of any serializable type.
pub trait ErasedArg: Sync {
    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value>;
}

impl<T: Serialize + Sync> ErasedArg for T {
    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value> {
        lua.to_value(self)
    }
}

fn install_api(
    lua: &Lua,
    shared: &Arc<Mutex<Shared>>,
    view: &Arc<Mutex<View>>,
    options: &serde_json::Map<String, Json>,
    timers: &Table,
) -> mlua::Result<()> {
    let bot = lua.create_table()?;
    bot.raw_set("options", lua.to_value(options)?)?;

    let queue = |shared: &Arc<Mutex<Shared>>| {
        let shared = shared.clone();
        move |action: Action| {
            shared
                .lock()
                .expect("bot script state")
                .actions
                .push(action)
        }
    };

    let push = queue(shared);
    bot.raw_set(
        "send_data",
        lua.create_function(move |lua, (payload, to): (Value, Option<String>)| {
            let payload: Json = lua.from_value(payload)?;
            push(Action::SendData { payload, to });
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "mute",
        lua.create_function(
            move |_, (user, kind, muted): (Option<String>, String, Option<bool>)| {
                let kind = media_kind(&kind)?;
                push(Action::Mute {
                    user,
                    kind,
                    muted: muted.unwrap_or(true),
                });
                Ok(())
            },
        )?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "kick",
        lua.create_function(move |_, user: String| {
            push(Action::Kick { user });
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "set_role",
        lua.create_function(move |_, (role, user): (String, Option<String>)| {
            let role: Role = role.parse().map_err(mlua::Error::RuntimeError)?;
            push(Action::SetRole { role, user });
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "play",
        lua.create_function(move |_, (source, opts): (Value, Option<Table>)| {
            let source = match source {
                Value::String(name) => Source::File(name.to_str()?.to_owned()),
                Value::Table(t) => {
                    let frequency: f32 = t.get("tone").map_err(|_| {
                        mlua::Error::RuntimeError(
                            "play takes a file name or { tone = HZ, amplitude = 0..1 }".into(),
                        )
                    })?;
                    let amplitude: Option<f32> = t.get("amplitude")?;
                    if !(20.0..=20_000.0).contains(&frequency) {
                        return Err(mlua::Error::RuntimeError(format!(
                            "tone {frequency} Hz is outside 20..20000"
                        )));
                    }
                    Source::Tone {
                        frequency,
                        amplitude: amplitude.unwrap_or(0.3).clamp(0.0, 1.0),
                    }
                }
                other => {
                    return Err(mlua::Error::RuntimeError(format!(
                        "play takes a file name or a tone table, not a {}",
                        other.type_name()
                    )));
                }
            };
            let looped = match opts {
                Some(t) => t.get::<Option<bool>>("loop")?.unwrap_or(false),
                None => false,
            };
            push(Action::Play { source, looped });
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "echo",
        lua.create_function(move |_, (delay_ms, user): (u64, Option<String>)| {
            push(Action::Echo {
                delay: Duration::from_millis(delay_ms.min(60_000)),
                user,
            });
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "stop",
        lua.create_function(move |_, ()| {
            push(Action::Stop);
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "record",
        lua.create_function(move |_, (target, file): (String, String)| {
            push(Action::Record { target, file });
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "stop_recording",
        lua.create_function(move |_, target: Option<String>| {
            push(Action::StopRecording { target });
            Ok(())
        })?,
    )?;

    let push = queue(shared);
    bot.raw_set(
        "leave",
        lua.create_function(move |_, ()| {
            push(Action::Leave);
            Ok(())
        })?,
    )?;

    // Reads of the bot's view.
    let v = view.clone();
    bot.raw_set(
        "members",
        lua.create_function(move |lua, ()| {
            let view = v.lock().expect("bot view");
            lua.to_value(&view.members)
        })?,
    )?;
    let v = view.clone();
    bot.raw_set(
        "member",
        lua.create_function(move |lua, user: String| {
            let view = v.lock().expect("bot view");
            match view.members.iter().find(|m| m.user.as_str() == user) {
                Some(m) => lua.to_value(m),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    let v = view.clone();
    bot.raw_set(
        "me",
        lua.create_function(move |lua, ()| {
            let view = v.lock().expect("bot view");
            let me = lua.create_table()?;
            me.raw_set("user", view.user.as_str())?;
            me.raw_set("name", view.name.as_str())?;
            me.raw_set("room", view.room.as_str())?;
            me.raw_set("role", view.role.map(Role::as_str))?;
            Ok(me)
        })?,
    )?;
    let v = view.clone();
    bot.raw_set(
        "playing",
        lua.create_function(move |_, ()| Ok(v.lock().expect("bot view").playing))?,
    )?;
    let v = view.clone();
    bot.raw_set(
        "recording",
        lua.create_function(move |lua, ()| {
            let view = v.lock().expect("bot view");
            lua.to_value(&view.recording)
        })?,
    )?;

    // Timers: the function lives in a Lua table by id, the schedule in Rust.
    for (name, repeat) in [("after", false), ("every", true)] {
        let shared = shared.clone();
        let timers = timers.clone();
        bot.raw_set(
            name,
            lua.create_function(move |_, (ms, f): (u64, Function)| {
                let ms = ms.max(if repeat { 10 } else { 0 });
                let mut s = shared.lock().expect("bot script state");
                s.next_timer += 1;
                let id = s.next_timer;
                timers.raw_set(id, f)?;
                let every = repeat.then(|| Duration::from_millis(ms));
                s.new_timers.push(Timer {
                    id,
                    due: Instant::now() + Duration::from_millis(ms),
                    every,
                });
                Ok(id)
            })?,
        )?;
    }
    let s = shared.clone();
    let t = timers.clone();
    bot.raw_set(
        "cancel",
        lua.create_function(move |_, id: Option<u64>| {
            if let Some(id) = id {
                t.raw_set(id, Value::Nil)?;
                s.lock().expect("bot script state").cancelled.push(id);
            }
            Ok(())
        })?,
    )?;

    let started = Instant::now();
    bot.raw_set(
        "now",
        lua.create_function(move |_, ()| Ok(started.elapsed().as_millis() as u64))?,
    )?;
    let log = lua.create_function(|_, args: MultiValue| {
        let line = args
            .iter()
            .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(target: "conclave::bot::script", "{line}");
        Ok(())
    })?;
    bot.raw_set("log", log)?;

    lua.globals().raw_set("bot", bot)?;
    Ok(())
}

fn media_kind(kind: &str) -> mlua::Result<MediaKind> {
    match kind {
        "audio" => Ok(MediaKind::Audio),
        "video" => Ok(MediaKind::Video),
        other => Err(mlua::Error::RuntimeError(format!(
            "unknown media kind `{other}`: use \"audio\" or \"video\""
        ))),
    }
}

/// A file name a script gave, checked to stay inside `dir`.
pub fn confined(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = Path::new(name);
    let plain = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if name.is_empty() || !plain {
        return Err(format!(
            "`{name}` must be a relative path inside the bot's directory (no `..`, no leading `/`)"
        ));
    }
    Ok(dir.join(path))
}

/// Parses `key=value` options (the value is JSON if it parses, else a string).
pub fn parse_options(pairs: &[String]) -> Result<serde_json::Map<String, Json>, String> {
    let mut out = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.to_owned()));
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

/// Per-user speaking state from `volume` events: which users changed.
#[derive(Debug, Default)]
pub struct Speaking {
    now: HashMap<String, bool>,
}

impl Speaking {
    /// Applies one `volume` entry; `Some(speaking)` when it changed.
    pub fn update(&mut self, user: &str, speaking: bool) -> Option<bool> {
        let before = self.now.insert(user.to_owned(), speaking).unwrap_or(false);
        (before != speaking).then_some(speaking)
    }

    pub fn forget(&mut self, user: &str) {
        self.now.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(source: &str) -> BotScript {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bot.lua");
        std::fs::write(&path, source).expect("write script");
        let mut options = serde_json::Map::new();
        options.insert("greeting".into(), Json::String("hi".into()));
        BotScript::load(
            &path,
            &LuaLimits::default(),
            &options,
            Arc::new(Mutex::new(View::default())),
        )
        .expect("script loads")
    }

    #[test]
    fn hooks_queue_actions_in_order() {
        let mut s = script(
            r#"
            local b = {}
            function b.on_member_joined(m)
              bot.send_data({ text = bot.options.greeting .. " " .. m.name }, m.user)
              bot.mute(m.user, "audio", true)
              bot.play({ tone = 440 }, { loop = true })
            end
            return b
            "#,
        );
        let member = serde_json::json!({ "user": "alice", "name": "Alice" });
        s.call("on_member_joined", &[&member]).expect("hook runs");
        let (actions, _, _) = s.take();
        assert_eq!(
            actions,
            vec![
                Action::SendData {
                    payload: serde_json::json!({ "text": "hi Alice" }),
                    to: Some("alice".into())
                },
                Action::Mute {
                    user: Some("alice".into()),
                    kind: MediaKind::Audio,
                    muted: true
                },
                Action::Play {
                    source: Source::Tone {
                        frequency: 440.0,
                        amplitude: 0.3
                    },
                    looped: true
                },
            ]
        );
    }

    #[test]
    fn a_runaway_hook_is_stopped_and_the_script_keeps_working() {
        let mut s = script(
            r#"
            local b = {}
            function b.on_data(from, payload) while true do end end
            function b.on_left() bot.leave() end
            return b
            "#,
        );
        let err = s.call("on_data", &[&"x", &1]).expect_err("budget stops it");
        assert!(err.message.contains("budget"), "{err}");
        s.call("on_left", &[]).expect("the next hook runs");
        assert_eq!(s.take().0, vec![Action::Leave]);
    }

    #[test]
    fn bad_arguments_name_the_problem() {
        let mut s = script(
            r#"
            local b = {}
            function b.on_joined() bot.mute(nil, "smell", true) end
            return b
            "#,
        );
        let err = s.call("on_joined", &[]).expect_err("bad kind");
        assert!(err.message.contains("unknown media kind `smell`"), "{err}");
        assert!(s.take().0.is_empty());
    }

    #[test]
    fn timers_are_scheduled_and_cancelled() {
        let mut s = script(
            r#"
            local b = {}
            function b.on_joined()
              local t = bot.after(100, function() bot.leave() end)
              bot.every(50, function() end)
              bot.cancel(t)
            end
            return b
            "#,
        );
        s.call("on_joined", &[]).expect("hook runs");
        let (_, timers, cancelled) = s.take();
        assert_eq!(timers.len(), 2);
        assert_eq!(timers[1].every, Some(Duration::from_millis(50)));
        assert_eq!(cancelled, vec![timers[0].id]);
        assert!(!s.fire_timer(timers[0].id).expect("no error"));
        assert!(s.fire_timer(timers[1].id).expect("runs"));
    }

    #[test]
    fn file_names_stay_inside_the_directory() {
        let dir = Path::new("/srv/rec");
        assert_eq!(
            confined(dir, "alice.ogg").expect("plain name"),
            Path::new("/srv/rec/alice.ogg")
        );
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            assert!(confined(dir, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn speaking_reports_only_changes() {
        let mut s = Speaking::default();
        assert_eq!(s.update("a", true), Some(true));
        assert_eq!(s.update("a", true), None);
        assert_eq!(s.update("a", false), Some(false));
        assert_eq!(s.update("b", false), None);
    }
}
