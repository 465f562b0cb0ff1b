//! What a room script can call: the `room`, `store` and `log` globals.
//!
//! Reads come from a [`RoomView`] the room hands in for the duration of a
//! hook; actions are queued as [`Effect`]s and carried out by the room after
//! the hook returns (a script never re-enters the room mid-decision). Both
//! live in the state's app data as a [`HookContext`], present only while a
//! hook runs.

use std::collections::BTreeSet;
use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, Table, Value};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::ids::UserId;
use crate::model::{MediaKind, MemberInfo, Role};
use crate::store::kv::KvStore;

/// A member as a script sees it: the public info plus the token's attributes.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The names of the room's timers (for the timer limit).
    pub timers: BTreeSet<String>,
}

/// `[policy.effects]`: how much one hook call, one room and one policy's
/// store may ask for. Past a limit the API call raises an error at the
/// script's line (the hook fails, its actions are dropped) and
/// `conclave_policy_limits_total{limit}` counts it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EffectLimits {
    /// Actions (`room.kick`, `room.send`, timers, ...) one call may queue.
    pub actions_per_call: usize,
    /// Bytes of `room.send` payloads (as JSON) one call may queue.
    pub message_bytes_per_call: usize,
    /// Timers one room may have at once.
    pub timers_per_room: usize,
    /// Bytes the room's metadata (as JSON) may hold.
    pub metadata_bytes: usize,
    /// Keys one policy's store may hold.
    pub store_keys: usize,
    /// Bytes (keys and JSON values) one policy's store may hold.
    pub store_bytes: usize,
}

impl Default for EffectLimits {
    fn default() -> Self {
        EffectLimits {
            actions_per_call: 1_000,
            message_bytes_per_call: 256 * 1024,
            timers_per_room: 100,
            metadata_bytes: 64 * 1024,
            store_keys: 10_000,
            store_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// `conclave_policy_limits_total`, by limit.
pub type LimitHits = Family<LimitLabel, Counter>;

/// Set once per state: the limits and where to count hits.
struct Bounds {
    limits: EffectLimits,
    hits: LimitHits,
}

/// Raises the error of a limit, counting it.
fn over(lua: &Lua, limit: &'static str, message: String) -> mlua::Error {
    if let Some(bounds) = lua.app_data_ref::<Bounds>() {
        bounds.hits.get_or_create(&LimitLabel { limit }).inc();
    }
    located(lua, message)
}

fn limits(lua: &Lua) -> EffectLimits {
    lua.app_data_ref::<Bounds>()
        .map(|b| b.limits.clone())
        .unwrap_or_default()
}

/// Bytes of `value` as JSON, without building the text.
fn json_len(value: &Json) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
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
    /// Keep `user` out (and remove them if they are in).
    Ban {
        user: UserId,
        terms: crate::model::BanTerms,
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

impl HookContext {
    pub fn new(view: Arc<RoomView>, actions: bool) -> HookContext {
        HookContext {
            view,
            effects: Vec::new(),
            actions,
        }
    }

    /// Bytes of the `room.send` payloads queued so far.
    fn message_bytes(&self) -> usize {
        self.effects
            .iter()
            .map(|e| match e {
                Effect::Send { payload, .. } => json_len(payload),
                _ => 0,
            })
            .sum()
    }

    /// The room's metadata as it will be once this call's changes apply.
    fn metadata_after(&self, key: &str, value: &Json) -> serde_json::Map<String, Json> {
        let mut metadata = self.view.metadata.clone();
        let changes = self.effects.iter().filter_map(|e| match e {
            Effect::SetMetadata { key, value } => Some((key.as_str(), value)),
            _ => None,
        });
        for (k, v) in changes.chain([(key, value)]) {
            if v.is_null() {
                metadata.remove(k);
            } else {
                metadata.insert(k.to_owned(), v.clone());
            }
        }
        metadata
    }

    /// The room's timer names once this call's timer actions apply.
    fn timers_after(&self) -> BTreeSet<&str> {
        let mut names: BTreeSet<&str> = self.view.timers.iter().map(String::as_str).collect();
        for e in &self.effects {
            match e {
                Effect::Timer { name, .. } => {
                    names.insert(name);
                }
                Effect::CancelTimer { name } => {
                    names.remove(name.as_str());
                }
                _ => {}
            }
        }
        names
    }
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
/// (not a hook) calls it. Refused past the call's action limit, and for
/// sends, metadata and timers past theirs.
fn push(lua: &Lua, what: &str, effect: Effect) -> mlua::Result<()> {
    let limits = limits(lua);
    let refusal = with_context(lua, |ctx| {
        if !ctx.actions {
            return Some((
                "",
                format!(
                    "room.{what} acts on the room, which is only possible inside a hook, \
                     not while the script loads"
                ),
            ));
        }
        if ctx.effects.len() >= limits.actions_per_call {
            return Some((
                "actions_per_call",
                format!(
                    "room.{what}: one hook call may queue at most {} actions (policy.effects.actions_per_call)",
                    limits.actions_per_call
                ),
            ));
        }
        match &effect {
            Effect::Send { payload, .. } => {
                let bytes = ctx.message_bytes() + json_len(payload);
                if bytes > limits.message_bytes_per_call {
                    return Some((
                        "message_bytes_per_call",
                        format!(
                            "room.send: one hook call may send at most {} bytes of payloads (policy.effects.message_bytes_per_call); this one would make {bytes}",
                            limits.message_bytes_per_call
                        ),
                    ));
                }
            }
            Effect::SetMetadata { key, value } => {
                let bytes = json_len(&Json::Object(ctx.metadata_after(key, value)));
                if bytes > limits.metadata_bytes {
                    return Some((
                        "metadata_bytes",
                        format!(
                            "room.set_metadata: the room's metadata may hold at most {} bytes as JSON (policy.effects.metadata_bytes); this would make {bytes}",
                            limits.metadata_bytes
                        ),
                    ));
                }
            }
            Effect::Timer { name, .. } => {
                let mut names = ctx.timers_after();
                names.insert(name);
                if names.len() > limits.timers_per_room {
                    return Some((
                        "timers_per_room",
                        format!(
                            "room.{what}: a room may have at most {} timers (policy.effects.timers_per_room); cancel one, or reuse a name",
                            limits.timers_per_room
                        ),
                    ));
                }
            }
            _ => {}
        }
        ctx.effects.push(effect);
        None
    })?;
    match refusal {
        None => Ok(()),
        Some(("", message)) => Err(located(lua, message)),
        Some((limit, message)) => Err(over(lua, limit, message)),
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

/// Installs `room`, `store` and `log` into a fresh state, bounded by
/// `limits` (hits counted in `hits`).
#[allow(clippy::too_many_arguments)]
pub fn install(
    lua: &Lua,
    room: &str,
    channel_id: i64,
    custom_info: &str,
    script: &str,
    store: Option<(Arc<dyn KvStore>, String)>,
    limits: EffectLimits,
    hits: LimitHits,
) -> mlua::Result<()> {
    lua.set_app_data(Bounds { limits, hits });
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
        "ban",
        lua.create_function(
            |lua, (user, seconds, reason): (String, Option<f64>, Option<String>)| {
                let seconds = match seconds {
                    None => None,
                    Some(s) if s.is_finite() && s >= 1.0 => Some(s as u64),
                    Some(s) => {
                        return Err(located(
                            lua,
                            format!("room.ban: seconds must be 1 or more (or nil for the room's life), not {s}"),
                        ));
                    }
                };
                let terms = crate::model::BanTerms {
                    seconds,
                    reason: reason.unwrap_or_default(),
                };
                push(lua, "ban", Effect::Ban { user: UserId(user), terms })
            },
        )?,
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
            let limits = limits(lua);
            let quota = crate::store::kv::Quota {
                keys: limits.store_keys,
                bytes: limits.store_bytes,
            };
            let result = {
                let scope = lua.app_data_ref::<StoreScope>().ok_or_else(no_store)?;
                scope.kv.set(&scope.namespace, &key, value.as_ref(), &quota)
            };
            match result {
                Ok(()) => Ok(()),
                Err(crate::store::StoreError::Quota(why)) => {
                    let limit = if why.contains("keys") {
                        "store_keys"
                    } else {
                        "store_bytes"
                    };
                    Err(over(lua, limit, format!("store.set: {why}")))
                }
                Err(e) => Err(mlua::Error::RuntimeError(e.to_string())),
            }
        })?,
    )?;
    lua.globals().raw_set("store", store)
}

fn no_store() -> mlua::Error {
    mlua::Error::RuntimeError("no key-value store is configured".into())
}
