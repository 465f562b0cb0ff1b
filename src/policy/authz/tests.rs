//! The pipeline on real parts: real Lua policies, a real wasm plugin, and
//! tokens as `auth` verifies them.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::auth::Grants;
use crate::policy::catalog::{Catalog, PolicyConfig, Script, short_hash};
use crate::policy::lua::{LuaLimits, LuaPolicy, OwnedIdentity, RoomIdentity};

fn identity(user: &str, grants: Grants) -> Identity {
    Identity {
        user: user.into(),
        name: user.into(),
        grants,
        attrs: json!({}),
        jti: None,
    }
}

fn member(user: &str) -> Identity {
    identity(
        user,
        Grants {
            rooms: vec!["*".into()],
            ..Grants::default()
        },
    )
}

fn admin(user: &str) -> Identity {
    let mut id = member(user);
    id.grants.admin = true;
    id
}

/// A room's policy runtime with `script` (if any) and the plugins in `dir`.
fn policy(script: Option<&str>, plugins: Option<&std::path::Path>) -> RoomPolicy {
    let catalog = match plugins {
        Some(dir) => Catalog::open(PolicyConfig {
            scripts_dir: std::path::PathBuf::new(),
            plugins_dir: dir.to_path_buf(),
            watch: false,
            ..PolicyConfig::default()
        })
        .expect("catalog opens"),
        None => Catalog::empty().expect("empty catalog"),
    };
    let lua = script.map(|source| {
        let script = Arc::new(Script {
            name: "test".into(),
            source: source.into(),
            hash: short_hash(source.as_bytes()),
            loaded_at_ms: 0,
            path: "scripts/test.lua".into(),
        });
        LuaPolicy::new(
            script,
            RoomIdentity {
                name: "r",
                channel_id: 1,
                custom_info: "",
            },
            &LuaLimits::default(),
            None,
        )
        .expect("script loads")
    });
    RoomPolicy::new(catalog, "test".into(), OwnedIdentity::default(), None, lua)
}

fn ask(policy: &mut RoomPolicy, who: &Identity, ask: Ask<'_>) -> Result<Granted, Denial> {
    let access = Access {
        room: "r",
        identity: who,
        community: None,
        attr_lines: "",
        ask,
    };
    // Hooks run on the catalog's script threads; the pipeline awaits them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(policy.authorize(
        &access,
        None,
        &Arc::new(RoomView::default()),
        &mut Vec::new(),
    ))
}

fn join(role: Option<Role>) -> Ask<'static> {
    Ask::Join {
        mode: Mode::Audio,
        role,
        members: 0,
    }
}

#[test]
fn a_role_outside_the_token_is_refused() {
    let mut p = policy(None, None);
    let mut only_audience = member("a");
    only_audience.grants.roles = vec![Role::Audience];
    let denial = ask(&mut p, &only_audience, join(Some(Role::Interactor))).unwrap_err();
    assert_eq!(denial.status, Status::Forbidden);
    assert_eq!(denial.reason, "this token may not take the interactor role");
    assert_eq!(denial.by, Decider::Rules);
    let granted = ask(&mut p, &only_audience, join(None)).unwrap();
    assert_eq!(
        granted.join,
        Some(JoinTerms {
            role: Role::Audience,
            muted: false
        }),
        "the default is the first allowed role"
    );
    let switch = Ask::SetRole {
        target: None,
        role: Role::Interactor,
        current: Role::Audience,
    };
    let denial = ask(&mut p, &only_audience, switch).unwrap_err();
    assert_eq!(
        denial.reason, "this token may not take the interactor role",
        "switching oneself is held to the token too"
    );
    let mut no_role = member("n");
    no_role.grants.roles = Vec::new();
    let denial = ask(&mut p, &no_role, join(None)).unwrap_err();
    assert_eq!(denial.reason, "this token allows no role");
}

#[test]
fn acting_on_others_takes_the_admin_grant_or_the_policy() {
    let bob: UserId = "bob".into();
    let mute_bob = Ask::Mute {
        target: Some(&bob),
        kind: MediaKind::Audio,
        muted: true,
    };
    let mut p = policy(None, None);
    let denial = ask(&mut p, &member("alice"), mute_bob).unwrap_err();
    assert_eq!(
        (denial.status, denial.reason.as_str(), &denial.by),
        (
            Status::Forbidden,
            "acting on another member needs the admin grant",
            &Decider::Rules
        )
    );
    assert!(ask(&mut p, &admin("ops"), mute_bob).unwrap().elevated);
    // Muting oneself is no action on others: nothing to elevate.
    let mute_me = Ask::Mute {
        target: None,
        kind: MediaKind::Audio,
        muted: true,
    };
    assert!(!ask(&mut p, &member("alice"), mute_me).unwrap().elevated);
    // Kicking always acts on others, even naming oneself.
    let alice: UserId = "alice".into();
    let denial = ask(&mut p, &member("alice"), Ask::Kick { target: &alice }).unwrap_err();
    assert_eq!(
        denial.reason,
        "kicking needs the admin grant; to go, send `leave`"
    );

    // An explicit `true` from the decide hook grants it for this request.
    let mut p = policy(
        Some("return { can_mute = function(req) return req.user == 'host' end }"),
        None,
    );
    assert!(ask(&mut p, &member("host"), mute_bob).unwrap().elevated);
    assert!(ask(&mut p, &member("alice"), mute_bob).is_err());
}

#[test]
fn the_policy_may_choose_the_role_and_the_token_is_not_asked() {
    let mut p = policy(
        Some("return { can_join = function() return { role = 'interactor', muted = true } end }"),
        None,
    );
    let mut only_audience = member("a");
    only_audience.grants.roles = vec![Role::Audience];
    let granted = ask(&mut p, &only_audience, join(Some(Role::Audience))).unwrap();
    assert_eq!(
        granted.join,
        Some(JoinTerms {
            role: Role::Interactor,
            muted: true
        })
    );
}

#[test]
fn every_refusal_names_the_step_that_refused() {
    let mut p = policy(None, None);
    let creator = member("c");
    let denial = ask(&mut p, &creator, Ask::Create { custom_info: "" }).unwrap_err();
    assert_eq!(
        (denial.status, denial.by),
        (Status::Forbidden, Decider::Grants)
    );
    let mut elsewhere = member("e");
    elsewhere.grants.rooms = vec!["other-*".into()];
    let denial = ask(&mut p, &elsewhere, join(None)).unwrap_err();
    assert_eq!(
        (denial.status, denial.reason.as_str(), denial.by),
        (
            Status::Unauthorized,
            "this token does not cover room `r`",
            Decider::Grants
        )
    );

    let mut p = policy(
        Some(
            "return { can_join = function() return { allow = false, code = 429, reason = 'later' } end }",
        ),
        None,
    );
    let denial = ask(&mut p, &member("m"), join(None)).unwrap_err();
    assert_eq!(denial.status, Status::RateLimited);
    assert_eq!(denial.reason, "later");
    assert!(
        matches!(&denial.by, Decider::Policy { hook, script } if hook == "can_join" && script.starts_with("test@")),
        "{:?}",
        denial.by
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wall.wat"),
        r#"(module
             (import "conclave" "deny_reason" (func $reason (param i32 i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "no")
             (func (export "conclave_abi_version") (result i32) i32.const 1)
             (func (export "conclave_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "conclave_check") (param i32 i32) (result i32)
               i32.const 16 i32.const 2 call $reason i32.const 403))"#,
    )
    .unwrap();
    let mut p = policy(None, Some(dir.path()));
    let denial = ask(&mut p, &admin("ops"), join(None)).unwrap_err();
    assert_eq!(denial.reason, "no");
    assert!(
        matches!(&denial.by, Decider::Plugin { plugin } if plugin.starts_with("wall@")),
        "{:?}",
        denial.by
    );
}

#[test]
fn data_the_policy_rewrites_or_handles() {
    let payload = json!({ "text": "hi" });
    let send = Ask::Data {
        to: None,
        payload: &payload,
    };
    let mut p = policy(None, None);
    assert_eq!(
        ask(&mut p, &member("m"), send).unwrap().data,
        Some(DataTerms::Deliver(payload.clone()))
    );
    let mut p = policy(
        Some(
            "return { can_send = function(req) return { payload = { shout = req.payload.text } } end }",
        ),
        None,
    );
    assert_eq!(
        ask(&mut p, &member("m"), send).unwrap().data,
        Some(DataTerms::Deliver(json!({ "shout": "hi" })))
    );
    let mut p = policy(
        Some("return { can_send = function() return { handled = true } end }"),
        None,
    );
    assert_eq!(
        ask(&mut p, &member("m"), send).unwrap().data,
        Some(DataTerms::Handled)
    );
}

#[test]
fn every_rtc_key_has_its_action() {
    let mut keys: Vec<PermissionKey> = [
        (Action::Join, None),
        (Action::PublishAudio, None),
        (Action::PublishVideo, None),
        (Action::ShareScreen, None),
        (Action::MuteOther, Some(MediaKind::Audio)),
        (Action::MuteOther, Some(MediaKind::Video)),
        (Action::MuteEveryone, Some(MediaKind::Audio)),
        (Action::MuteEveryone, Some(MediaKind::Video)),
        (Action::Kick, None),
        (Action::StopScreenShare, None),
    ]
    .into_iter()
    .filter_map(|(action, kind)| key_for(action, kind))
    .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys, PermissionKey::ALL[..10]);
    assert_eq!(key_for(Action::SetRole, None), None);
    assert_eq!(key_for(Action::SendData, None), None);
}
