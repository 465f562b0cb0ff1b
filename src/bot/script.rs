//! A bot's Lua script: the same host as room policies ([`crate::script`]),
//! a `bot` API table, and hooks the runner calls as the room changes. Hooks
//! take one event table each, as policy hooks do.
//!
//! Scripts never block the bot. API calls that act on the room (`send_data`,
//! `mute`, `play`, ...) only queue a [`BotAction`]; the runner carries the
//! queue out after the hook returns, in order, and reports failures through
//! the script's `on_error` hook. Reads (`bot.members()`, `bot.me`) see the
//! bot's view as of the event being handled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlua::{Function, Lua, LuaSerdeExt, Table, Value};
use serde_json::Value as Json;
use tokio::time::Instant;

use crate::model::{MediaKind, MemberInfo, Role};
use crate::script::{
    LuaLimits, ScriptError, Source as ScriptSource, ToLua, Vm, located, with_context,
};

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
pub enum BotAction {
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

impl BotAction {
    /// The API function that queued it, for error reports.
    pub fn name(&self) -> &'static str {
        match self {
            BotAction::SendData { .. } => "send_data",
            BotAction::Mute { .. } => "mute",
            BotAction::Kick { .. } => "kick",
            BotAction::SetRole { .. } => "set_role",
            BotAction::Play { .. } => "play",
            BotAction::Echo { .. } => "echo",
            BotAction::Stop => "stop",
            BotAction::Record { .. } => "record",
            BotAction::StopRecording { .. } => "stop_recording",
            BotAction::Leave => "leave",
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

/// What one call queues: actions, timers set, timers cancelled. In the
/// state's app data while a hook or timer runs.
#[derive(Default)]
struct Queued {
    actions: Vec<BotAction>,
    new_timers: Vec<Timer>,
    cancelled: Vec<u64>,
}

/// A loaded bot script.
pub struct BotScript {
    vm: Vm,
    timers_table: Table,
    view: Arc<Mutex<View>>,
    /// What calls queued since the runner last took it.
    pending: Queued,
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
        let text = std::fs::read_to_string(path).map_err(|e| ScriptError {
            script: label.clone(),
            hook: "load".into(),
            kind: crate::script::ErrorKind::Error,
            message: e.to_string(),
        })?;
        let source = ScriptSource {
            label: &label,
            path: &label,
            text: &text,
        };
        let mut timers_table = None;
        let install = |lua: &Lua| {
            let table = lua.create_table()?;
            install_api(lua, &view, options, &table)?;
            timers_table = Some(table);
            Ok(())
        };
        // The chunk may read the view; acting is for hooks (no queue yet).
        let vm = Vm::load(limits, install, &source, HOOKS, ())?;
        for warning in vm.warnings() {
            tracing::warn!(script = %label, "{warning}");
        }
        Ok(BotScript {
            vm,
            timers_table: timers_table.expect("install ran"),
            view,
            pending: Queued::default(),
        })
    }

    pub fn view(&self) -> &Arc<Mutex<View>> {
        &self.view
    }

    /// True if the script defines `hook`.
    pub fn has(&self, hook: &str) -> bool {
        self.vm.has_hook(hook)
    }

    /// Calls `hook` with `event` (an event table) if the script has it.
    pub fn call(&mut self, hook: &str, event: &dyn ToLua) -> Result<(), ScriptError> {
        let (queued, result) = self.vm.call(hook, Queued::default(), |lua| {
            Ok(mlua::MultiValue::from_iter([event.to_lua(lua)?]))
        });
        self.keep(queued, result.is_ok());
        result.map(drop)
    }

    /// Runs the timer `id`'s function; false if it no longer exists.
    pub fn fire_timer(&mut self, id: u64) -> Result<bool, ScriptError> {
        let function = match self.timers_table.raw_get::<Value>(id) {
            Ok(Value::Function(f)) => f,
            _ => return Ok(false),
        };
        let (queued, result) = self.vm.invoke("timer", &function, Queued::default(), |_| {
            Ok(Default::default())
        });
        self.keep(queued, result.is_ok());
        result.map(|_| true)
    }

    /// What a call queued counts only when the call completed; timer
    /// functions it registered are forgotten otherwise.
    fn keep(&mut self, queued: Queued, completed: bool) {
        if completed {
            self.pending.actions.extend(queued.actions);
            self.pending.new_timers.extend(queued.new_timers);
            self.pending.cancelled.extend(queued.cancelled);
        } else {
            for timer in queued.new_timers {
                self.drop_timer(timer.id);
            }
        }
    }

    /// Forgets a one-shot timer after it fired.
    pub fn drop_timer(&self, id: u64) {
        let _ = self.timers_table.raw_set(id, Value::Nil);
    }

    /// Takes what the last calls queued: actions, timers set, timers cancelled.
    pub fn take(&mut self) -> (Vec<BotAction>, Vec<Timer>, Vec<u64>) {
        let pending = std::mem::take(&mut self.pending);
        (pending.actions, pending.new_timers, pending.cancelled)
    }
}

/// Queues an action of the current hook.
fn push(lua: &Lua, action: BotAction) -> mlua::Result<()> {
    with_context::<Queued, _>(lua, |q| q.actions.push(action))
}

fn install_api(
    lua: &Lua,
    view: &Arc<Mutex<View>>,
    options: &serde_json::Map<String, Json>,
    timers: &Table,
) -> mlua::Result<()> {
    let bot = lua.create_table()?;
    bot.raw_set("options", lua.to_value(options)?)?;

    bot.raw_set(
        "send_data",
        lua.create_function(move |lua, (payload, to): (Value, Option<String>)| {
            let payload: Json = lua.from_value(payload)?;
            push(lua, BotAction::SendData { payload, to })?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "mute",
        lua.create_function(
            move |lua, (user, kind, muted): (Option<String>, String, Option<bool>)| {
                let kind = media_kind(lua, &kind)?;
                push(
                    lua,
                    BotAction::Mute {
                        user,
                        kind,
                        muted: muted.unwrap_or(true),
                    },
                )?;
                Ok(())
            },
        )?,
    )?;

    bot.raw_set(
        "kick",
        lua.create_function(move |lua, user: String| {
            push(lua, BotAction::Kick { user })?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "set_role",
        lua.create_function(move |lua, (role, user): (String, Option<String>)| {
            let role: Role = role.parse().map_err(|e: String| located(lua, e))?;
            push(lua, BotAction::SetRole { role, user })?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "play",
        lua.create_function(move |lua, (source, opts): (Value, Option<Table>)| {
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
            push(lua, BotAction::Play { source, looped })?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "echo",
        lua.create_function(move |lua, (delay_ms, user): (u64, Option<String>)| {
            push(
                lua,
                BotAction::Echo {
                    delay: Duration::from_millis(delay_ms.min(60_000)),
                    user,
                },
            )?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "stop",
        lua.create_function(move |lua, ()| {
            push(lua, BotAction::Stop)?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "record",
        lua.create_function(move |lua, (target, file): (String, String)| {
            push(lua, BotAction::Record { target, file })?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "stop_recording",
        lua.create_function(move |lua, target: Option<String>| {
            push(lua, BotAction::StopRecording { target })?;
            Ok(())
        })?,
    )?;

    bot.raw_set(
        "leave",
        lua.create_function(move |lua, ()| {
            push(lua, BotAction::Leave)?;
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
    let next_id = Arc::new(AtomicU64::new(0));
    for (name, repeat) in [("after", false), ("every", true)] {
        let timers = timers.clone();
        let next_id = next_id.clone();
        bot.raw_set(
            name,
            lua.create_function(move |lua, (ms, f): (u64, Function)| {
                let after = Duration::from_millis(ms);
                let after = if repeat {
                    after.max(crate::script::MIN_REPEAT)
                } else {
                    after
                };
                let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
                let timer = Timer {
                    id,
                    due: Instant::now() + after,
                    every: repeat.then_some(after),
                };
                with_context::<Queued, _>(lua, |q| q.new_timers.push(timer))?;
                timers.raw_set(id, f)?;
                Ok(id)
            })?,
        )?;
    }
    let t = timers.clone();
    bot.raw_set(
        "cancel",
        lua.create_function(move |lua, id: Option<u64>| {
            if let Some(id) = id {
                with_context::<Queued, _>(lua, |q| q.cancelled.push(id))?;
                t.raw_set(id, Value::Nil)?;
            }
            Ok(())
        })?,
    )?;

    let started = Instant::now();
    bot.raw_set(
        "now",
        lua.create_function(move |_, ()| Ok(started.elapsed().as_millis() as u64))?,
    )?;
    let log = lua.create_function(|_, args: mlua::MultiValue| {
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

fn media_kind(lua: &Lua, kind: &str) -> mlua::Result<MediaKind> {
    kind.parse().map_err(|e: String| located(lua, e))
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
        s.call("on_member_joined", &member).expect("hook runs");
        let (actions, _, _) = s.take();
        assert_eq!(
            actions,
            vec![
                BotAction::SendData {
                    payload: serde_json::json!({ "text": "hi Alice" }),
                    to: Some("alice".into())
                },
                BotAction::Mute {
                    user: Some("alice".into()),
                    kind: MediaKind::Audio,
                    muted: true
                },
                BotAction::Play {
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
            function b.on_data(e) while true do end end
            function b.on_left() bot.leave() end
            return b
            "#,
        );
        let event = serde_json::json!({ "from": "x", "payload": 1 });
        let err = s.call("on_data", &event).expect_err("budget stops it");
        assert_eq!(err.kind, crate::script::ErrorKind::Budget, "{err}");
        assert!(err.message.contains("budget"), "{err}");
        s.call("on_left", &serde_json::json!({}))
            .expect("the next hook runs");
        assert_eq!(s.take().0, vec![BotAction::Leave]);
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
        let err = s
            .call("on_joined", &serde_json::json!({}))
            .expect_err("bad kind");
        assert!(
            err.message
                .contains("bot.lua:3: unknown media kind `smell`"),
            "{err}"
        );
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
              bot.every(1, function() end)
              bot.cancel(t)
            end
            return b
            "#,
        );
        s.call("on_joined", &serde_json::json!({}))
            .expect("hook runs");
        let (_, timers, cancelled) = s.take();
        assert_eq!(timers.len(), 3);
        assert_eq!(timers[1].every, Some(Duration::from_millis(50)));
        // The same floor as room policies' timers.
        assert_eq!(timers[2].every, Some(crate::script::MIN_REPEAT));
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
