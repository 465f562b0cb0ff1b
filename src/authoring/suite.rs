//! `conclave policy test`: Lua test files run offline against simulated
//! rooms.
//!
//! A simulated room is the real thing without the network: the registry,
//! the room's task and state machine, the authorization pipeline with the
//! policy runtime and its limits, an in-memory store, all on a tokio
//! runtime whose clock stands still until a test moves it
//! (`room:advance(seconds)`: timers and grace windows fire in order). The
//! policy's hooks run on the test's own thread (an inline script pool), so
//! nothing moves behind the test's back. Members are connections without
//! sockets: their requests go to the room as a connection's would, and
//! what the room sends them is kept for the test to read.
//!
//! A test file returns a table; every function in it whose name starts
//! with `test` is a test, run in the order they are written, each in a
//! fresh state. docs/scripting.md ("Testing a policy") has the API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Lua, LuaSerdeExt, Table, UserData, UserDataMethods, Value};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{Grants, Identity};
use crate::clock::Clock;
use crate::ids::{ConnId, RoomName, UserId};
use crate::model::{BanTerms, MediaKind, Mode, Role};
use crate::policy::bans::Bans;
use crate::policy::catalog::{Catalog, PolicyConfig};
use crate::policy::decisions::DecisionQuery;
use crate::room::{
    Act, By, Outbound, RoomHandle, RoomMetrics, RoomServices, RoomSettings, Rooms, Sink,
};
use crate::script::pool::Pool;
use crate::status::Failure;
use crate::store::StoreHandle;
use crate::store::kv::{KvStore, SqliteKv};
use crate::store::sqlite::SqliteStore;

const PRELUDE: &str = include_str!("prelude.lua");

/// How tests are run.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Where the policies the tests name live (`<name>.lua`).
    pub scripts_dir: PathBuf,
    /// Limits, effects and failure mode, as the server's `[policy]`.
    pub policy: PolicyConfig,
    /// The empty-room timeout and reconnect grace, as `[rooms]`.
    pub rooms: RoomSettings,
}

/// One test's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    /// Why it failed, starting with `file:line:` when Lua knows it.
    pub message: Option<String>,
    pub elapsed: Duration,
}

/// The test files under `paths`: files as given, directories searched for
/// `*_test.lua` (recursively), sorted.
pub fn discover(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("_test.lua"))
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files);
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    files
}

/// Runs every test of `file`, calling `report` after each.
pub fn run_file(file: &Path, options: &SuiteOptions, report: &mut dyn FnMut(&Outcome)) {
    let broken = |message: String| Outcome {
        file: file.to_path_buf(),
        name: "(load)".into(),
        passed: false,
        message: Some(message),
        elapsed: Duration::ZERO,
    };
    let source = match std::fs::read_to_string(file) {
        Ok(source) => source,
        Err(e) => return report(&broken(format!("cannot read {}: {e}", file.display()))),
    };
    // The tests' names and order come from a first load.
    let names = match test_names(file, &source, options) {
        Ok(names) => names,
        Err(e) => return report(&broken(e)),
    };
    if names.is_empty() {
        return report(&broken(format!(
            "{}: the file returns no function whose name starts with `test`",
            file.display()
        )));
    }
    for name in names {
        let started = Instant::now();
        let result = run_one(file, &source, &name, options);
        report(&Outcome {
            file: file.to_path_buf(),
            name,
            passed: result.is_ok(),
            message: result.err(),
            elapsed: started.elapsed(),
        });
    }
}

/// A fresh test state with the prelude and `sim`, and the file's table.
fn load(file: &Path, source: &str, options: &SuiteOptions) -> Result<(Lua, Table), String> {
    let lua = Lua::new();
    lua.load(PRELUDE)
        .set_name("@prelude.lua")
        .exec()
        .map_err(|e| e.to_string())?;
    install_sim(&lua, options).map_err(|e| e.to_string())?;
    let table: Table = lua
        .load(source)
        .set_name(format!("@{}", file.display()))
        .eval()
        .map_err(|e| without_traceback(crate::script::error_text(&e)))?;
    Ok((lua, table))
}

fn test_names(file: &Path, source: &str, options: &SuiteOptions) -> Result<Vec<String>, String> {
    let (_lua, table) = load(file, source, options)?;
    let mut tests: Vec<(usize, String)> = table
        .pairs::<String, Value>()
        .flatten()
        .filter_map(|(name, value)| match value {
            Value::Function(f) if name.starts_with("test") => {
                Some((f.info().line_defined.unwrap_or(0), name))
            }
            _ => None,
        })
        .collect();
    tests.sort();
    Ok(tests.into_iter().map(|(_, name)| name).collect())
}

fn run_one(file: &Path, source: &str, name: &str, options: &SuiteOptions) -> Result<(), String> {
    let (_lua, table) = load(file, source, options)?;
    let test: mlua::Function = table.get(name).map_err(|e| e.to_string())?;
    test.call::<()>(())
        .map_err(|e| without_traceback(crate::script::error_text(&e)))
}

/// The message alone: the line it names is the test's, which is what an
/// author needs; the traceback shows the prelude's insides.
fn without_traceback(message: String) -> String {
    match message.find("\nstack traceback:") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// `sim`: the test's way to make rooms.
fn install_sim(lua: &Lua, options: &SuiteOptions) -> mlua::Result<()> {
    let sim = lua.create_table()?;
    let options = options.clone();
    sim.set(
        "room",
        lua.create_function(move |lua, spec: Option<Table>| {
            let spec = spec.unwrap_or(lua.create_table()?);
            SimRoom::open(lua, &options, &spec)
        })?,
    )?;
    lua.globals().set("sim", sim)
}

/// What one simulated room needs: its own clock, scripts and store.
struct Env {
    rt: tokio::runtime::Runtime,
    rooms: Rooms,
    catalog: Arc<Catalog>,
    kv: Arc<SqliteKv>,
    /// A copy of the scripts directory, so `reload` touches only this room.
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_scripts(from: &Path) -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("conclave-policy-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if let Ok(entries) = std::fs::read_dir(from) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "lua") && path.is_file() {
                std::fs::copy(&path, dir.join(entry.file_name()))?;
            }
        }
    }
    Ok(dir)
}

fn lua_error(e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::RuntimeError(e.to_string())
}

#[derive(Clone)]
struct SimRoom {
    env: Arc<Env>,
    handle: RoomHandle,
    policy: String,
}

impl SimRoom {
    fn open(lua: &Lua, options: &SuiteOptions, spec: &Table) -> mlua::Result<mlua::MultiValue> {
        let dir = copy_scripts(&options.scripts_dir).map_err(lua_error)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .map_err(lua_error)?;
        let config = PolicyConfig {
            scripts_dir: dir.clone(),
            plugins_dir: PathBuf::new(),
            watch: false,
            ..options.policy.clone()
        };
        let (catalog, rooms, kv) = {
            let _guard = rt.enter();
            let clock = Clock::new();
            let catalog = Catalog::open_with(config, Arc::default(), clock, Pool::inline())
                .map_err(lua_error)?;
            let (store, _worker) = StoreHandle::spawn(SqliteStore::in_memory().map_err(lua_error)?);
            let kv = Arc::new(SqliteKv::in_memory().map_err(lua_error)?);
            let rooms = Rooms::new(RoomServices {
                settings: options.rooms.clone(),
                max_rooms: 16,
                command_queue: 64,
                store,
                metrics: Arc::new(RoomMetrics::default()),
                catalog: catalog.clone(),
                kv: Some(kv.clone() as Arc<dyn KvStore>),
                media: None,
                clock,
                bans: Arc::new(Bans::new(Vec::new(), None)),
                claims: None,
            });
            (catalog, rooms, kv)
        };
        let name: String = spec.get::<Option<String>>("name")?.unwrap_or("room".into());
        let custom_info: String = spec
            .get::<Option<String>>("custom_info")?
            .unwrap_or_default();
        let policy: Option<String> = spec.get("policy")?;
        let creator = match spec.get::<Option<Table>>("creator")? {
            Some(t) => Some(identity(lua, &t)?),
            None => None,
        };
        if let Some(policy) = &policy
            && catalog.script(policy).is_none()
        {
            let why = catalog
                .script_error(policy)
                .unwrap_or_else(|| format!("no {policy}.lua in {}", options.scripts_dir.display()));
            return Err(lua_error(format!("policy `{policy}`: {why}")));
        }
        let room_name = RoomName::new(&name).map_err(lua_error)?;
        let created = rt.block_on(rooms.create(
            room_name,
            custom_info,
            policy.as_deref(),
            creator.as_deref(),
        ));
        let env = Arc::new(Env {
            rt,
            rooms,
            catalog: catalog.clone(),
            kv,
            dir,
        });
        match created {
            Ok(handle) => {
                let policy = catalog
                    .policy_for(&name, policy.as_deref())
                    .unwrap_or_default();
                let room = SimRoom {
                    env,
                    handle,
                    policy,
                };
                let ok = lua.to_value(&json!({ "allowed": true }))?;
                Ok(mlua::MultiValue::from_iter([
                    Value::UserData(lua.create_userdata(room)?),
                    ok,
                ]))
            }
            Err(e) => {
                let failure = Failure::from(e);
                let layer = failure.decision.as_deref().and_then(|id| {
                    env.rooms
                        .outside_decision(id)
                        .map(|r| serde_json::to_value(&r.by).unwrap_or_default())
                });
                let result = refusal(&failure, layer);
                Ok(mlua::MultiValue::from_iter([
                    Value::Nil,
                    lua.to_value(&result)?,
                ]))
            }
        }
    }

    /// Waits until the room has handled everything sent to it so far
    /// (its reactions included): one more round trip.
    async fn settle(handle: &RoomHandle) {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let _ = handle.info().await;
    }

    /// The answer to a member's request, as a test reads it.
    fn outcome(&self, lua: &Lua, result: Result<Json, crate::room::Error>) -> mlua::Result<Value> {
        match result {
            Ok(mut data) => {
                if !data.is_object() {
                    data = json!({});
                }
                data["allowed"] = json!(true);
                lua.to_value(&data)
            }
            Err(e) => {
                let failure = Failure::from(e);
                let layer = failure.decision.as_deref().and_then(|id| {
                    let handle = self.handle.clone();
                    let id = id.to_owned();
                    let found = self.env.rt.block_on(async move {
                        handle
                            .decisions(DecisionQuery::default())
                            .await
                            .ok()?
                            .into_iter()
                            .find(|r| r.id == id)
                    });
                    found.map(|r| serde_json::to_value(&r.by).unwrap_or_default())
                });
                lua.to_value(&refusal(&failure, layer))
            }
        }
    }
}

fn refusal(failure: &Failure, by: Option<Json>) -> Json {
    let by = by.unwrap_or(Json::Null);
    json!({
        "allowed": false,
        "code": failure.status.code(),
        "reason": failure.message,
        "decision": failure.decision,
        "layer": by.get("layer").cloned().unwrap_or(Json::Null),
        "hook": by.get("hook").cloned().unwrap_or(Json::Null),
        "plugin": by.get("plugin").cloned().unwrap_or(Json::Null),
    })
}

/// A member's identity from `{user=, name=, grants={...}, attrs={...}}`.
/// Grants default to what a plain member token gives: any room, both
/// roles, no create, no admin.
fn identity(lua: &Lua, spec: &Table) -> mlua::Result<Arc<Identity>> {
    let user: String = spec
        .get::<Option<String>>("user")?
        .ok_or_else(|| lua_error("a member needs `user`"))?;
    let name: String = spec.get::<Option<String>>("name")?.unwrap_or(user.clone());
    let grants = match spec.get::<Value>("grants")? {
        Value::Nil => Grants {
            rooms: vec!["*".into()],
            ..serde_json::from_value(json!({})).map_err(lua_error)?
        },
        value => {
            let mut json: Json = lua.from_value(value)?;
            if json.get("rooms").is_none() {
                json["rooms"] = json!(["*"]);
            }
            serde_json::from_value(json).map_err(|e| lua_error(format!("grants: {e}")))?
        }
    };
    let attrs: Json = match spec.get::<Value>("attrs")? {
        Value::Nil => json!({}),
        value => lua.from_value(value)?,
    };
    Ok(Arc::new(Identity {
        user: UserId::from(user.as_str()),
        name,
        grants,
        attrs,
        jti: None,
    }))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> mlua::Result<T> {
    serde_json::from_value(json!(text)).map_err(|_| lua_error(format!("unknown {what} `{text}`")))
}

fn opt_target(t: &Table) -> mlua::Result<Option<UserId>> {
    Ok(t.get::<Option<String>>("target")?
        .map(|u| UserId::from(u.as_str())))
}

impl UserData for SimRoom {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("member", |lua, room, spec: Table| {
            let identity = identity(lua, &spec)?;
            let (tx, rx) = mpsc::channel(1024);
            let member = SimMember {
                room: room.clone(),
                conn: ConnId::next(),
                identity,
                sink: Sink::new(tx, CancellationToken::new()),
                rx: Arc::new(Mutex::new(rx)),
            };
            lua.create_userdata(member)
        });
        methods.add_method("advance", |_, room, seconds: f64| {
            if !(seconds.is_finite() && seconds >= 0.0) {
                return Err(lua_error("advance takes a number of seconds, 0 or more"));
            }
            let handle = room.handle.clone();
            room.env.rt.block_on(async move {
                // With the clock paused, sleeping moves it from one pending
                // deadline to the next, so every timer due on the way fires,
                // in order.
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                SimRoom::settle(&handle).await;
            });
            Ok(())
        });
        methods.add_method("reload", |_, room, file: String| {
            // Another version of the room's policy: `file` (relative to the
            // scripts directory, or absolute) replaces it, as saving it over
            // the policy's file would.
            let from = if Path::new(&file).is_absolute() {
                PathBuf::from(&file)
            } else {
                room.env.dir.join(&file)
            };
            let text = std::fs::read_to_string(&from)
                .map_err(|e| lua_error(format!("cannot read {}: {e}", from.display())))?;
            let target = room.env.dir.join(format!("{}.lua", room.policy));
            std::fs::write(&target, text).map_err(lua_error)?;
            if !room.env.catalog.reload_path(&target)
                && let Some(error) = room.env.catalog.script_error(&room.policy)
            {
                return Err(lua_error(format!("the new version did not load: {error}")));
            }
            let handle = room.handle.clone();
            room.env.rt.block_on(SimRoom::settle(&handle));
            Ok(())
        });
        methods.add_method("metadata", |lua, room, ()| {
            let handle = room.handle.clone();
            let info = room.env.rt.block_on(handle.info()).map_err(lua_error)?;
            lua.to_value(&info.metadata)
        });
        methods.add_method("members", |lua, room, ()| {
            let handle = room.handle.clone();
            let info = room.env.rt.block_on(handle.info()).map_err(lua_error)?;
            lua.to_value(&info.member_list)
        });
        methods.add_method("policy", |lua, room, ()| {
            let handle = room.handle.clone();
            let info = room.env.rt.block_on(handle.info()).map_err(lua_error)?;
            lua.to_value(&info.policy)
        });
        methods.add_method("state", |lua, room, ()| {
            let handle = room.handle.clone();
            let state = room
                .env
                .rt
                .block_on(handle.script_state())
                .map_err(lua_error)?
                .map_err(lua_error)?;
            lua.to_value(&state)
        });
        methods.add_method("store", |lua, room, key: String| {
            let value = room
                .env
                .kv
                .get(&room.policy, &key)
                .map_err(lua_error)?
                .unwrap_or(Json::Null);
            lua.to_value(&value)
        });
        methods.add_method("decisions", |lua, room, ()| {
            let handle = room.handle.clone();
            let log = room
                .env
                .rt
                .block_on(handle.decisions(DecisionQuery::default()))
                .map_err(lua_error)?;
            lua.to_value(&log)
        });
        methods.add_method("close", |_, room, ()| {
            let handle = room.handle.clone();
            room.env.rt.block_on(async move {
                let _ = handle.close(crate::room::CloseReason::ClosedByAdmin).await;
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            });
            Ok(())
        });
        methods.add_method("is_open", |_, room, ()| {
            Ok(room.env.rooms.get(room.handle.name()).is_some())
        });
    }
}

struct SimMember {
    room: SimRoom,
    conn: ConnId,
    identity: Arc<Identity>,
    sink: Sink,
    rx: Arc<Mutex<mpsc::Receiver<Outbound>>>,
}

impl SimMember {
    fn act(&self, lua: &Lua, act: Act) -> mlua::Result<Value> {
        let handle = self.room.handle.clone();
        let conn = self.conn;
        let result = self.room.env.rt.block_on(async move {
            let result = handle.act(By::Member(conn), act).await;
            SimRoom::settle(&handle).await;
            result
        });
        self.room.outcome(lua, result.map(|()| json!({})))
    }
}

impl UserData for SimMember {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("join", |lua, me, spec: Option<Table>| {
            let mode = match spec
                .as_ref()
                .map(|t| t.get::<Option<String>>("mode"))
                .transpose()?
            {
                Some(Some(mode)) => parse::<Mode>("mode", &mode)?,
                _ => Mode::Audio,
            };
            let role = match spec
                .as_ref()
                .map(|t| t.get::<Option<String>>("role"))
                .transpose()?
            {
                Some(Some(role)) => Some(parse::<Role>("role", &role)?),
                _ => None,
            };
            let handle = me.room.handle.clone();
            let (conn, identity, sink) = (me.conn, me.identity.clone(), me.sink.clone());
            let user = me.identity.user.clone();
            let result = me.room.env.rt.block_on(async move {
                let joined = handle.join(conn, identity, mode, role, sink).await;
                SimRoom::settle(&handle).await;
                joined
            });
            let result = result.map(|ok| {
                let mine = ok.members.iter().find(|m| m.user == user);
                json!({
                    "role": ok.role,
                    "audio_muted": mine.map(|m| m.audio_muted),
                    "video_muted": mine.map(|m| m.video_muted),
                    "members": ok.members.len(),
                    "resumed": ok.resumed,
                })
            });
            me.room.outcome(lua, result)
        });
        methods.add_method("leave", |lua, me, ()| {
            let handle = me.room.handle.clone();
            let conn = me.conn;
            let result = me.room.env.rt.block_on(async move {
                let left = handle.leave(conn).await;
                SimRoom::settle(&handle).await;
                left
            });
            me.room.outcome(lua, result.map(|()| json!({})))
        });
        methods.add_method("disconnect", |_, me, ()| {
            let handle = me.room.handle.clone();
            let conn = me.conn;
            me.room.env.rt.block_on(async move {
                handle.disconnected(conn).await;
                SimRoom::settle(&handle).await;
            });
            Ok(())
        });
        methods.add_method("mute", |lua, me, t: Table| {
            let kind: String = t.get::<Option<String>>("kind")?.unwrap_or("audio".into());
            let muted: bool = t.get::<Option<bool>>("muted")?.unwrap_or(true);
            let act = Act::Mute {
                target: opt_target(&t)?,
                kind: parse::<MediaKind>("kind", &kind)?,
                muted,
            };
            me.act(lua, act)
        });
        methods.add_method("mute_all", |lua, me, t: Table| {
            let kind: String = t.get::<Option<String>>("kind")?.unwrap_or("audio".into());
            let muted: bool = t.get::<Option<bool>>("muted")?.unwrap_or(true);
            let act = Act::MuteAll {
                kind: parse::<MediaKind>("kind", &kind)?,
                muted,
            };
            me.act(lua, act)
        });
        methods.add_method("set_role", |lua, me, t: Table| {
            let role: String = t
                .get::<Option<String>>("role")?
                .ok_or_else(|| lua_error("set_role needs `role`"))?;
            let act = Act::SetRole {
                target: opt_target(&t)?,
                role: parse::<Role>("role", &role)?,
            };
            me.act(lua, act)
        });
        methods.add_method("share", |lua, me, t: Table| {
            let act = Act::ShareScreen {
                target: opt_target(&t)?,
                on: t.get::<Option<bool>>("on")?.unwrap_or(true),
            };
            me.act(lua, act)
        });
        methods.add_method("send", |lua, me, t: Table| {
            let payload: Json = lua.from_value(t.get::<Value>("payload")?)?;
            let act = Act::Data {
                to: t
                    .get::<Option<String>>("to")?
                    .map(|u| UserId::from(u.as_str())),
                payload,
            };
            me.act(lua, act)
        });
        methods.add_method("kick", |lua, me, t: Table| {
            let target: String = t
                .get::<Option<String>>("target")?
                .ok_or_else(|| lua_error("kick needs `target`"))?;
            let ban = match t.get::<Option<Table>>("ban")? {
                Some(b) => Some(BanTerms {
                    seconds: b.get("seconds")?,
                    reason: b.get::<Option<String>>("reason")?.unwrap_or_default(),
                }),
                None => None,
            };
            let act = Act::Kick {
                target: UserId::from(target.as_str()),
                ban,
            };
            me.act(lua, act)
        });
        methods.add_method("events", |lua, me, kind: Option<String>| {
            // Everything the room sent since the last call, oldest first
            // (only events of `kind` when given; the rest are kept).
            let mut rx = me.rx.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = Vec::new();
            while let Ok(message) = rx.try_recv() {
                let text = match message {
                    Outbound::Text(text) | Outbound::Removed { text, .. } => text,
                };
                all.push(serde_json::from_str::<Json>(&text).unwrap_or(Json::Null));
            }
            drop(rx);
            let events: Vec<Json> = match &kind {
                None => all,
                Some(kind) => all
                    .into_iter()
                    .filter(|e| e["type"].as_str() == Some(kind.as_str()))
                    .collect(),
            };
            lua.to_value(&events)
        });
        methods.add_method("user", |_, me, ()| Ok(me.identity.user.to_string()));
    }
}

/// The results as JUnit XML, one suite per file.
pub fn junit(outcomes: &[Outcome]) -> String {
    fn escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    }
    let mut files: Vec<&PathBuf> = outcomes.iter().map(|o| &o.file).collect();
    files.dedup();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for file in files {
        let cases: Vec<&Outcome> = outcomes.iter().filter(|o| &o.file == file).collect();
        let failures = cases.iter().filter(|o| !o.passed).count();
        let time: f64 = cases.iter().map(|o| o.elapsed.as_secs_f64()).sum();
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{time:.3}\">\n",
            escape(&file.display().to_string()),
            cases.len()
        ));
        for case in cases {
            xml.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                escape(&file.display().to_string()),
                escape(&case.name),
                case.elapsed.as_secs_f64()
            ));
            match &case.message {
                Some(message) if !case.passed => xml.push_str(&format!(
                    ">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                    escape(message)
                )),
                _ => xml.push_str("/>\n"),
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}
