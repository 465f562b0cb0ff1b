//! What a room script can call: the `room`, `store` and `log` globals.
//!
//! Reads come from a [`RoomView`] the room hands in for the duration of a
//! hook; actions are queued as [`Effect`]s and carried out by the room after
//! the hook returns (a script never re-enters the room mid-decision). Both
//! live in the state's app data as a [`HookContext`], present only while a
//! hook runs.

use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, Table, Value};
use serde::Serialize;
use serde_json::Value as Json;

use crate::ids::UserId;
use crate::model::{MediaKind, MemberInfo, Role};
use crate::store::kv::KvStore;

/// A member as a script sees it: the public info plus the token's attributes.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    #[serde(flatten)]
    pub info: MemberInfo,
    pub attrs: Json,
}

/// The room as a script sees it during one hook call.
#[derive(Clone, Debug, Default)]
pub struct RoomView {
    /// Changes whenever the room does; lets a Lua state reuse the tables it
    /// built for the same view (see [`MembersCache`]).
    pub generation: u64,
    pub members: Vec<MemberView>,
    pub metadata: serde_json::Map<String, Json>,
}

/// The Lua tables last built for `room.members()`, kept across hook calls
/// until the room changes: building them is most of a hook's cost.
struct MembersCache {
    generation: u64,
    members: Table,
}

/// A member as a Lua table, built field by field (serde's `flatten` path is
/// several times slower).
pub fn member_table(lua: &Lua, member: &MemberView) -> mlua::Result<Table> {
    let info = &member.info;
    let t = lua.create_table_with_capacity(0, 9)?;
    t.raw_set("user", info.user.as_str())?;
    t.raw_set("name", info.name.as_str())?;
    t.raw_set("role", info.role.as_str())?;
    t.raw_set(
        "mode",
        match info.mode {
            crate::model::Mode::Audio => "audio",
            crate::model::Mode::Video => "video",
        },
    )?;
    t.raw_set("audio_muted", info.audio_muted)?;
    t.raw_set("video_muted", info.video_muted)?;
    t.raw_set("screen_sharing", info.screen_sharing)?;
    t.raw_set("joined_at", info.joined_at)?;
    t.raw_set("attrs", lua.to_value(&member.attrs)?)?;
    Ok(t)
}

/// `room.members()`: the cached array when the room has not changed.
fn members(lua: &Lua) -> mlua::Result<Table> {
    let view = with_context(lua, |ctx| ctx.view.clone())?;
    if let Some(cache) = lua.app_data_ref::<MembersCache>()
        && cache.generation == view.generation
    {
        return Ok(cache.members.clone());
    }
    let list = lua.create_table_with_capacity(view.members.len(), 0)?;
    for (i, member) in view.members.iter().enumerate() {
        list.raw_set(i + 1, member_table(lua, member)?)?;
    }
    list.set_metatable(Some(lua.array_metatable()))?;
    lua.set_app_data(MembersCache {
        generation: view.generation,
        members: list.clone(),
    });
    Ok(list)
}

/// An action a script asked for; applied by the room after the hook.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Kick {
        user: UserId,
    },
    Mute {
        user: UserId,
        kind: MediaKind,
        muted: bool,
    },
    MuteAll {
        kind: MediaKind,
        muted: bool,
    },
    SetRole {
        user: UserId,
        role: Role,
    },
    Send {
        to: Option<UserId>,
        payload: Json,
    },
    SetMetadata {
        key: String,
        value: Json,
    },
    Close,
    Timer {
        name: String,
        after_ms: u64,
        repeat: bool,
    },
    CancelTimer {
        name: String,
    },
}

/// Present in app data while a hook (or the chunk, at load) runs.
pub struct HookContext {
    pub view: Arc<RoomView>,
    pub effects: Vec<Effect>,
    /// False while the chunk itself runs: reads work, actions do not.
    pub actions: bool,
}

/// Set once per state: who the store belongs to.
pub(crate) struct StoreScope {
    pub kv: Arc<dyn KvStore>,
    pub namespace: String,
}

use crate::script::located;

fn with_context<R>(lua: &Lua, f: impl FnOnce(&mut HookContext) -> R) -> mlua::Result<R> {
    crate::script::with_context::<HookContext, R>(lua, f)
}

/// Queues an action; `what` names it for the error when the chunk itself
/// (not a hook) calls it.
fn push(lua: &Lua, what: &str, effect: Effect) -> mlua::Result<()> {
    let queued = with_context(lua, |ctx| {
        if ctx.actions {
            ctx.effects.push(effect);
        }
        ctx.actions
    })?;
    if queued {
        Ok(())
    } else {
        Err(located(
            lua,
            format!(
                "room.{what} acts on the room, which is only possible inside a hook, \
                 not while the script loads"
            ),
        ))
    }
}

/// A media kind from a script; a bad one is an error at the calling line.
pub fn parse_kind(lua: &Lua, kind: &str) -> mlua::Result<MediaKind> {
    kind.parse().map_err(|e: String| located(lua, e))
}

/// A role from a script; a bad one is an error at the calling line.
pub fn parse_role(lua: &Lua, role: &str) -> mlua::Result<Role> {
    role.parse().map_err(|e: String| located(lua, e))
}

/// Installs `room`, `store` and `log` into a fresh state.
pub fn install(
    lua: &Lua,
    room: &str,
    channel_id: i64,
    custom_info: &str,
    script: &str,
    store: Option<(Arc<dyn KvStore>, String)>,
) -> mlua::Result<()> {
    let globals = lua.globals();
    let api = lua.create_table()?;
    api.raw_set("name", room)?;
    api.raw_set("channel_id", channel_id)?;
    api.raw_set("custom_info", custom_info)?;
    // Survives reloads: it belongs to the state, not to a script version.
    api.raw_set("state", lua.create_table()?)?;

    api.raw_set("members", lua.create_function(|lua, ()| members(lua))?)?;
    api.raw_set(
        "member",
        lua.create_function(|lua, user: String| {
            let view = with_context(lua, |ctx| ctx.view.clone())?;
            match view.members.iter().find(|m| m.info.user.as_str() == user) {
                Some(member) => Ok(Value::Table(member_table(lua, member)?)),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    api.raw_set(
        "count",
        lua.create_function(|lua, ()| with_context(lua, |ctx| ctx.view.members.len()))?,
    )?;
    api.raw_set(
        "metadata",
        lua.create_function(|lua, ()| {
            let view = with_context(lua, |ctx| ctx.view.clone())?;
            lua.to_value(&view.metadata)
        })?,
    )?;
    api.raw_set(
        "kick",
        lua.create_function(|lua, user: String| {
            push(lua, "kick", Effect::Kick { user: UserId(user) })
        })?,
    )?;
    api.raw_set(
        "mute",
        lua.create_function(|lua, (user, kind, muted): (String, String, Option<bool>)| {
            let kind = parse_kind(lua, &kind)?;
            push(
                lua,
                "mute",
                Effect::Mute {
                    user: UserId(user),
                    kind,
                    muted: muted.unwrap_or(true),
                },
            )
        })?,
    )?;
    api.raw_set(
        "mute_all",
        lua.create_function(|lua, (kind, muted): (String, Option<bool>)| {
            let kind = parse_kind(lua, &kind)?;
            push(
                lua,
                "mute_all",
                Effect::MuteAll {
                    kind,
                    muted: muted.unwrap_or(true),
                },
            )
        })?,
    )?;
    api.raw_set(
        "set_role",
        lua.create_function(|lua, (user, role): (String, String)| {
            let role = parse_role(lua, &role)?;
            push(
                lua,
                "set_role",
                Effect::SetRole {
                    user: UserId(user),
                    role,
                },
            )
        })?,
    )?;
    api.raw_set(
        "send",
        lua.create_function(|lua, (to, payload): (Option<String>, Value)| {
            let payload: Json = lua.from_value(payload)?;
            push(
                lua,
                "send",
                Effect::Send {
                    to: to.map(UserId),
                    payload,
                },
            )
        })?,
    )?;
    api.raw_set(
        "set_metadata",
        lua.create_function(|lua, (key, value): (String, Value)| {
            let value: Json = lua.from_value(value)?;
            push(lua, "set_metadata", Effect::SetMetadata { key, value })
        })?,
    )?;
    api.raw_set(
        "close",
        lua.create_function(|lua, ()| push(lua, "close", Effect::Close))?,
    )?;
    api.raw_set(
        "after",
        lua.create_function(|lua, (ms, name): (u64, String)| {
            push(
                lua,
                "after",
                Effect::Timer {
                    name,
                    after_ms: ms,
                    repeat: false,
                },
            )
        })?,
    )?;
    api.raw_set(
        "every",
        lua.create_function(|lua, (ms, name): (u64, String)| {
            // Shorter intervals run at the floor, as in bots.
            let ms = ms.max(crate::script::MIN_REPEAT.as_millis() as u64);
            push(
                lua,
                "every",
                Effect::Timer {
                    name,
                    after_ms: ms,
                    repeat: true,
                },
            )
        })?,
    )?;
    api.raw_set(
        "cancel",
        lua.create_function(|lua, name: String| push(lua, "cancel", Effect::CancelTimer { name }))?,
    )?;
    globals.raw_set("room", api)?;

    // JSON null as scripts see it (in requests and `store.get` results).
    globals.raw_set("null", lua.null())?;

    // `array(t)` marks a table as a JSON array, so that an empty one is
    // sent as `[]` rather than `{}`.
    let array_mt = lua.array_metatable();
    globals.raw_set(
        "array",
        lua.create_function(move |lua, t: Option<Table>| {
            let t = match t {
                Some(t) => t,
                None => lua.create_table()?,
            };
            t.set_metatable(Some(array_mt.clone()))?;
            Ok(t)
        })?,
    )?;

    install_log(lua, script)?;
    if let Some((kv, namespace)) = store {
        lua.set_app_data(StoreScope { kv, namespace });
    }
    install_store(lua)?;
    Ok(())
}

fn install_log(lua: &Lua, script: &str) -> mlua::Result<()> {
    let log = lua.create_table()?;
    let script: Arc<str> = script.into();
    for level in ["error", "warn", "info", "debug"] {
        let script = script.clone();
        let f = lua.create_function(move |_, message: String| {
            match level {
                "error" => tracing::error!(script = %script, "{message}"),
                "warn" => tracing::warn!(script = %script, "{message}"),
                "info" => tracing::info!(script = %script, "{message}"),
                _ => tracing::debug!(script = %script, "{message}"),
            }
            Ok(())
        })?;
        log.raw_set(level, f)?;
    }
    lua.globals().raw_set("log", log)
}

fn install_store(lua: &Lua) -> mlua::Result<()> {
    let store: Table = lua.create_table()?;
    store.raw_set(
        "get",
        lua.create_function(|lua, key: String| {
            let value = {
                let scope = lua.app_data_ref::<StoreScope>().ok_or_else(no_store)?;
                scope
                    .kv
                    .get(&scope.namespace, &key)
                    .map_err(|e| mlua::Error::RuntimeError(e.to_string()))?
            };
            match value {
                Some(v) => lua.to_value(&v),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    store.raw_set(
        "set",
        lua.create_function(|lua, (key, value): (String, Value)| {
            let value: Option<Json> = match value {
                Value::Nil => None,
                other => Some(lua.from_value(other)?),
            };
            let scope = lua.app_data_ref::<StoreScope>().ok_or_else(no_store)?;
            scope
                .kv
                .set(&scope.namespace, &key, value.as_ref())
                .map_err(|e| mlua::Error::RuntimeError(e.to_string()))
        })?,
    )?;
    lua.globals().raw_set("store", store)
}

fn no_store() -> mlua::Error {
    mlua::Error::RuntimeError("no key-value store is configured".into())
}
