//! The sandbox, the budget and the decision protocol, on real Lua.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::policy::catalog::{Script, short_hash};

fn script(source: &str) -> Arc<Script> {
    Arc::new(Script {
        name: "test".into(),
        source: source.into(),
        hash: short_hash(source.as_bytes()),
        loaded_at_ms: 0,
        path: "scripts/test.lua".into(),
    })
}

fn limits() -> LuaLimits {
    LuaLimits {
        memory_bytes: 2 * 1024 * 1024,
        instructions: 200_000,
        time: Duration::from_secs(5),
    }
}

fn policy(source: &str) -> LuaPolicy {
    LuaPolicy::new(
        script(source),
        RoomIdentity {
            name: "r",
            channel_id: 7,
            custom_info: "info",
        },
        &limits(),
        None,
    )
    .expect("script loads")
}

fn view() -> Arc<RoomView> {
    Arc::new(RoomView::default())
}

fn decide(p: &mut LuaPolicy, hook: &str) -> Result<Decision, HookError> {
    p.decide(hook, &view(), &json!({"user": "u"}), &mut Vec::new())
}

#[test]
fn dangerous_globals_are_absent() {
    let mut p = policy(
        r#"
        local policy = {}
        function policy.can_join()
          local seen = {}
          for _, name in ipairs({"io", "debug", "package", "require", "load", "loadfile",
                                  "dofile", "collectgarbage", "coroutine", "xpcall"}) do
            if _G[name] ~= nil then table.insert(seen, name) end
          end
          if os.execute or os.getenv or os.remove then table.insert(seen, "os.*") end
          if #seen > 0 then return false, table.concat(seen, ",") end
          if type(os.time()) ~= "number" or type(os.clock()) ~= "number" then
            return false, "no clock"
          end
          return true
        end
        return policy
        "#,
    );
    assert_eq!(decide(&mut p, "can_join").unwrap(), Decision::Allow);
}

#[test]
fn decisions_read_every_form() {
    let mut p = policy(
        r#"
        return {
          a = function() end,
          b = function() return true end,
          c = function() return false end,
          d = function() return false, "not today" end,
          e = function() return { allow = false, reason = "busy", code = 429 } end,
          f = function() return { role = "audience" } end,
          g = function() return { payload = { text = "hi" } } end,
          h = function() return 42 end,
          i = function() return { role = "king" } end,
          j = function() return { handled = true } end,
          k = function() return { muted = true } end,
        }
        "#,
    );
    assert_eq!(decide(&mut p, "a").unwrap(), Decision::Pass);
    assert_eq!(decide(&mut p, "b").unwrap(), Decision::Allow);
    match decide(&mut p, "c").unwrap() {
        Decision::Deny(f) => {
            assert_eq!(f.status, Status::Forbidden);
            assert!(f.message.contains("`test`"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decide(&mut p, "d").unwrap(),
        Decision::Deny(Failure::new(Status::Forbidden, "not today"))
    );
    assert_eq!(
        decide(&mut p, "e").unwrap(),
        Decision::Deny(Failure::new(Status::RateLimited, "busy"))
    );
    assert_eq!(
        decide(&mut p, "f").unwrap(),
        Decision::Join {
            role: Some(Role::Audience),
            muted: false
        }
    );
    assert_eq!(
        decide(&mut p, "k").unwrap(),
        Decision::Join {
            role: None,
            muted: true
        }
    );
    assert_eq!(
        decide(&mut p, "g").unwrap(),
        Decision::Payload(json!({"text": "hi"}))
    );
    let err = decide(&mut p, "h").unwrap_err();
    assert!(
        err.message.contains("returned a integer"),
        "{}",
        err.message
    );
    let err = decide(&mut p, "i").unwrap_err();
    assert!(
        err.message.contains("unknown role `king`"),
        "{}",
        err.message
    );
    assert_eq!(decide(&mut p, "j").unwrap(), Decision::Handled);
    assert_eq!(decide(&mut p, "missing").unwrap(), Decision::Pass);
}

#[test]
fn an_infinite_loop_is_stopped_by_the_budget() {
    let mut p = policy("return { can_join = function() while true do end end }");
    let err = decide(&mut p, "can_join").unwrap_err();
    assert_eq!(err.kind, HookErrorKind::Budget);
    assert!(err.message.contains("budget"), "{}", err.message);
    // The state is still usable afterwards.
    let err = decide(&mut p, "can_join").unwrap_err();
    assert_eq!(err.kind, HookErrorKind::Budget);
}

#[test]
fn pcall_cannot_swallow_the_budget() {
    let mut p = policy(
        r#"return { can_join = function()
             while true do pcall(function() while true do end end) end
           end }"#,
    );
    assert_eq!(
        decide(&mut p, "can_join").unwrap_err().kind,
        HookErrorKind::Budget
    );
}

#[test]
fn pcall_still_catches_ordinary_errors() {
    let mut p = policy(
        r#"return { can_join = function()
             local ok, err = pcall(function() error("boom") end)
             return ok == false and err:find("boom") ~= nil
           end }"#,
    );
    assert_eq!(decide(&mut p, "can_join").unwrap(), Decision::Allow);
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let mut p = policy(
        r#"return { can_join = function()
             local t = {}
             for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end
           end }"#,
    );
    let err = decide(&mut p, "can_join").unwrap_err();
    assert_eq!(err.kind, HookErrorKind::Memory, "{err}");
}

#[test]
fn runaway_recursion_is_an_error() {
    let mut p = policy(
        r#"local function f(n) return f(n + 1) + 1 end
           return { can_join = function() return f(1) end, ok = function() return true end }"#,
    );
    // Stopped by whichever limit it meets first (stack, memory or budget).
    assert!(decide(&mut p, "can_join").is_err());
    assert_eq!(
        decide(&mut p, "ok").unwrap(),
        Decision::Allow,
        "the state still works"
    );
}

#[test]
fn errors_name_the_script_and_line() {
    let mut p = policy("return {\n  can_join = function()\n    error('nope')\n  end\n}\n");
    let err = decide(&mut p, "can_join").unwrap_err();
    assert_eq!(err.kind, HookErrorKind::Error);
    assert!(
        err.message.contains("scripts/test.lua:3:"),
        "{}",
        err.message
    );
    assert!(err.script.starts_with("test@"));
}

#[test]
fn loading_refuses_scripts_that_are_not_policies() {
    for (source, needle) in [
        ("return 5", "must return a table"),
        ("this is not lua", "scripts/test.lua:1:"),
        ("while true do end", "budget"),
    ] {
        let err = LuaPolicy::new(
            script(source),
            RoomIdentity {
                name: "r",
                channel_id: 1,
                custom_info: "",
            },
            &limits(),
            None,
        )
        .unwrap_err();
        assert!(err.message.contains(needle), "{source}: {}", err.message);
    }
}

#[test]
fn actions_are_queued_as_effects_and_state_survives_reload() {
    let mut p = policy(
        r#"return {
             on_joined = function(member)
               room.state.count = (room.state.count or 0) + 1
               room.send(member.user, { n = room.state.count, room = room.name })
               room.mute(member.user, "audio")
               room.after(100, "tick")
             end
           }"#,
    );
    let mut effects = Vec::new();
    p.react(
        "on_joined",
        &view(),
        &[&json!({"user": "ann"})],
        &mut effects,
    )
    .unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::Send {
                to: Some("ann".into()),
                payload: json!({"n": 1, "room": "r"})
            },
            Effect::Mute {
                user: "ann".into(),
                kind: crate::model::MediaKind::Audio,
                muted: true
            },
            Effect::Timer {
                name: "tick".into(),
                after_ms: 100,
                repeat: false
            },
        ]
    );

    p.reload(
        script(
            r#"return { on_joined = function(member)
             room.state.count = room.state.count + 10
             room.send(nil, room.state.count)
           end }"#,
        ),
        &view(),
    )
    .unwrap();
    let mut effects = Vec::new();
    p.react(
        "on_joined",
        &view(),
        &[&json!({"user": "bob"})],
        &mut effects,
    )
    .unwrap();
    assert_eq!(
        effects,
        vec![Effect::Send {
            to: None,
            payload: json!(11)
        }]
    );
}

#[test]
fn a_failed_reload_keeps_the_old_version() {
    let mut p = policy("return { can_join = function() return false, 'v1' end }");
    let before = p.script().hash.clone();
    assert!(p.reload(script("syntax error here"), &view()).is_err());
    assert_eq!(p.script().hash, before);
    assert_eq!(
        decide(&mut p, "can_join").unwrap(),
        Decision::Deny(Failure::new(Status::Forbidden, "v1"))
    );
}

#[test]
fn effects_of_a_failed_hook_are_dropped() {
    let mut p = policy("return { on_joined = function() room.kick('x'); error('late') end }");
    let mut effects = Vec::new();
    assert!(p.react("on_joined", &view(), &[], &mut effects).is_err());
    assert!(effects.is_empty());
}

#[test]
fn an_idle_state_is_small() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/classroom.lua"
    ))
    .unwrap_or_else(|_| "return {}".into());
    let p = policy(&source);
    // The target is 200 KiB per idle room, Lua state included.
    assert!(p.used_memory() < 200 * 1024, "{} bytes", p.used_memory());
}

#[test]
fn the_chunk_reads_the_room_but_cannot_act_on_it() {
    // Reads work at load: a new room is empty.
    let mut p = policy(
        "local at_load = room.count()\n\
         return { can_join = function() return false, 'loaded with ' .. at_load end }",
    );
    assert_eq!(
        decide(&mut p, "can_join").unwrap(),
        Decision::Deny(Failure::new(Status::Forbidden, "loaded with 0"))
    );
    // Acting at load is refused with the file and line, and why.
    let err = LuaPolicy::new(
        script("local x = 1\nroom.kick('bob')\nreturn {}"),
        RoomIdentity {
            name: "r",
            channel_id: 7,
            custom_info: "",
        },
        &limits(),
        None,
    )
    .unwrap_err();
    assert!(
        err.message
            .starts_with("scripts/test.lua:2: room.kick acts on the room"),
        "{err}"
    );
    assert!(err.message.contains("only possible inside a hook"), "{err}");
}

#[test]
fn api_errors_name_the_line_that_called() {
    let mut p = policy("return {\n can_join = function()\n  room.mute('u', 'smell')\n end }");
    let err = decide(&mut p, "can_join").unwrap_err();
    assert_eq!(err.kind, HookErrorKind::Error);
    assert!(
        err.message
            .starts_with("scripts/test.lua:3: unknown media kind `smell`"),
        "{err}"
    );
    let mut p = policy("return {\n on_joined = function()\n\n  room.set_role('u', 'king')\n end }");
    let err = p
        .react("on_joined", &view(), &[], &mut Vec::new())
        .unwrap_err();
    assert!(
        err.message
            .starts_with("scripts/test.lua:4: unknown role `king`"),
        "{err}"
    );
}

#[test]
fn repeating_timers_run_no_faster_than_the_floor() {
    let mut p = policy("return { on_joined = function() room.every(0, 't') end }");
    let mut effects = Vec::new();
    p.react("on_joined", &view(), &[], &mut effects).unwrap();
    assert_eq!(
        effects,
        vec![Effect::Timer {
            name: "t".into(),
            after_ms: crate::script::MIN_REPEAT.as_millis() as u64,
            repeat: true
        }]
    );
}

#[test]
fn functions_under_names_that_are_no_hook_are_reported() {
    let p = policy(
        "return { can_joni = function() end, on_joined = function() end,\n\
         helper = function() end, settings = { x = 1 } }",
    );
    assert_eq!(
        p.warnings(),
        [
            "`can_joni` is not a hook and is never called; did you mean `can_join`?",
            "`helper` is not a hook and is never called",
        ]
    );
    assert!(
        policy("return { on_left = function() end }")
            .warnings()
            .is_empty()
    );
}

/// A state bounded by small effect limits, counting hits in the returned
/// family.
fn bounded(
    source: &str,
    effects: EffectLimits,
    kv: Option<Arc<dyn KvStore>>,
) -> (LuaPolicy, LimitHits) {
    let hits = LimitHits::default();
    let p = LuaPolicy::bounded(
        script(source),
        RoomIdentity {
            name: "r",
            channel_id: 7,
            custom_info: "info",
        },
        &limits(),
        &effects,
        hits.clone(),
        kv,
    )
    .expect("script loads");
    (p, hits)
}

fn hits(family: &LimitHits, limit: &'static str) -> u64 {
    family.get_or_create(&api::LimitLabel { limit }).get()
}

#[test]
fn every_side_effect_has_a_limit_with_an_error_at_the_line_and_a_count() {
    let small = EffectLimits {
        actions_per_call: 3,
        message_bytes_per_call: 100,
        timers_per_room: 2,
        metadata_bytes: 50,
        store_keys: 2,
        store_bytes: 1000,
    };
    let (mut p, counted) = bounded(
        r#"return {
             on_actions = function() for i = 1, 4 do room.kick("u" .. i) end end,
             on_sends = function() room.send(nil, { text = string.rep("x", 60) })
                                   room.send(nil, { text = string.rep("x", 60) }) end,
             on_timers = function() room.after(10, "a") room.every(30, "b") room.after(40, "c") end,
             on_metadata = function() room.set_metadata("k", string.rep("y", 60)) end,
             on_metadata_small = function() room.set_metadata("k", "y") end,
           }"#,
        small.clone(),
        None,
    );
    let call = |p: &mut LuaPolicy, hook: &str| {
        let mut effects = Vec::new();
        let result = p.react(hook, &view(), &[], &mut effects);
        (result, effects)
    };
    for (hook, limit, line, needle) in [
        ("on_actions", "actions_per_call", 2, "at most 3 actions"),
        ("on_sends", "message_bytes_per_call", 4, "at most 100 bytes"),
        ("on_timers", "timers_per_room", 5, "at most 2 timers"),
        ("on_metadata", "metadata_bytes", 6, "at most 50 bytes"),
    ] {
        let (result, effects) = call(&mut p, hook);
        let err = result.unwrap_err();
        assert_eq!(err.kind, HookErrorKind::Error, "{err}");
        assert!(
            err.message
                .starts_with(&format!("scripts/test.lua:{line}:")),
            "{hook}: {err}"
        );
        assert!(err.message.contains(needle), "{hook}: {err}");
        assert!(
            err.message.contains(&format!("policy.effects.{limit}")),
            "{err}"
        );
        assert!(effects.is_empty(), "a failed hook's actions are dropped");
        assert_eq!(hits(&counted, limit), 1, "{limit}");
    }
    // Within the limits, the same call goes through.
    let (result, effects) = call(&mut p, "on_metadata_small");
    result.unwrap();
    assert_eq!(effects.len(), 1);

    // Timers the room already has count; a same-name timer replaces one
    // rather than adding.
    let with_timers = Arc::new(RoomView {
        timers: ["x".to_owned(), "y".to_owned()].into(),
        ..RoomView::default()
    });
    let (mut p, _) = bounded(
        r#"return { on_reload = function() room.after(5, "x") room.after(5, "z") end }"#,
        small.clone(),
        None,
    );
    let err = p
        .react("on_reload", &with_timers, &[], &mut Vec::new())
        .unwrap_err();
    assert!(err.message.starts_with("scripts/test.lua:1:"), "{err}");
    assert!(err.message.contains("at most 2 timers"), "{err}");

    // The store: keys and bytes per policy, across calls and states.
    let kv: Arc<dyn KvStore> = Arc::new(crate::store::kv::SqliteKv::in_memory().unwrap());
    let (mut p, counted) = bounded(
        r#"return { on_reload = function(n) store.set("k" .. n, string.rep("v", 10)) end,
                    on_closing = function() store.set("k1", string.rep("v", 2000)) end }"#,
        small,
        Some(kv),
    );
    p.react("on_reload", &view(), &[&1], &mut Vec::new())
        .unwrap();
    p.react("on_reload", &view(), &[&2], &mut Vec::new())
        .unwrap();
    let err = p
        .react("on_reload", &view(), &[&3], &mut Vec::new())
        .unwrap_err();
    assert!(err.message.contains("holds 2 keys"), "{err}");
    assert_eq!(hits(&counted, "store_keys"), 1);
    // Overwriting an existing key is fine; a value past the bytes is not.
    p.react("on_reload", &view(), &[&2], &mut Vec::new())
        .unwrap();
    let err = p
        .react("on_closing", &view(), &[], &mut Vec::new())
        .unwrap_err();
    assert!(err.message.contains("at most 1000 bytes"), "{err}");
    assert_eq!(hits(&counted, "store_bytes"), 1);
}
