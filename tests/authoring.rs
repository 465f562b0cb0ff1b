//! The authoring toolkit through the real binary: `policy check`, `policy
//! test` (the shipped suites, and a suite of its own that fails where it
//! should, reloads and reads the store), `plugin check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn conclave(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_lists_hooks_and_warns_at_the_line_of_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sloppy.lua");
    std::fs::write(
        &file,
        "local p = {}\n\
         seen = 0\n\
         function p.can_joni(req) end\n\
         function p.can_join(req, extra)\n\
           seen = seen + 1\n\
         end\n\
         return p\n",
    )
    .unwrap();
    let out = conclave(&["policy", "check", "sloppy.lua"], dir.path());
    let report = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings are not errors: {report}"
    );
    assert!(
        report.contains("sloppy.lua: ok, defines can_join (line 4)"),
        "{report}"
    );
    assert!(
        report.contains("sloppy.lua:2: warning: the chunk sets the global `seen`"),
        "{report}"
    );
    assert!(
        report.contains("sloppy.lua:3: warning: `can_joni` is not a hook and is never called; did you mean `can_join`?"),
        "{report}"
    );
    assert!(
        report
            .contains("sloppy.lua:4: warning: `can_join` takes 2 parameters but is called with 1"),
        "{report}"
    );

    // JSON, one report per file, for editors.
    let out = conclave(&["policy", "check", "--json", "sloppy.lua"], dir.path());
    let json: serde_json::Value = serde_json::from_str(text(&out).trim()).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["hooks"][0]["name"], "can_join");
    assert_eq!(json["hooks"][0]["params"], 2);
    assert_eq!(json["warnings"].as_array().unwrap().len(), 3);
}

#[test]
fn check_fails_on_a_broken_script_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.lua"), "return {}\n").unwrap();
    std::fs::write(
        dir.path().join("broken.lua"),
        "local p = {}\nfunction p.can_join(req)\n  return req.user ..\nend\nreturn p\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("spins.lua"),
        "while true do end\nreturn {}\n",
    )
    .unwrap();
    let out = conclave(
        &["policy", "check", "good.lua", "broken.lua", "spins.lua"],
        dir.path(),
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("good.lua: ok, defines no hooks"),
        "{report}"
    );
    assert!(report.contains("error: broken.lua:4:"), "{report}");
    assert!(
        report.contains("spins.lua: error:") && report.contains("(Budget)"),
        "a chunk that never ends is stopped by the budget: {report}"
    );
}

#[test]
fn check_passes_the_shipped_policies() {
    let out = conclave(
        &[
            "policy",
            "check",
            "scripts/default.lua",
            "scripts/classroom.lua",
            "scripts/capacity.lua",
            "scripts/moderated.lua",
        ],
        &repo(),
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(!report.contains("warning"), "{report}");
}

#[test]
fn the_shipped_suites_pass() {
    let junit = tempfile::NamedTempFile::new().unwrap();
    let out = conclave(
        &[
            "policy",
            "test",
            "scripts/tests",
            "--junit",
            junit.path().to_str().unwrap(),
        ],
        &repo(),
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    for suite in ["classroom", "capacity", "moderated", "default"] {
        assert!(
            report.contains(&format!("scripts/tests/{suite}_test.lua")),
            "{report}"
        );
    }
    assert!(report.contains(" passed, 0 failed"), "{report}");
    let xml = std::fs::read_to_string(junit.path()).unwrap();
    assert_eq!(xml.matches("<testsuite ").count(), 4, "{xml}");
    assert!(!xml.contains("<failure"), "{xml}");
}

/// A policy with state, a timer and the store; a second version that
/// reports the reload.
const V1: &str = r#"
local p = {}
function p.can_join(req)
  room.state.joins = (room.state.joins or 0) + 1
  if req.user == "mallory" then return { allow = false, code = 403, reason = "no" } end
end
function p.on_joined(member)
  store.set("last", member.user)
  room.after(5000, "hello")
end
function p.on_timer(name)
  room.set_metadata("timer", name)
end
return p
"#;

const V2: &str = r#"
local p = {}
function p.can_join(req)
  return { allow = false, code = 403, reason = "closed for maintenance" }
end
function p.on_reload(previous)
  room.state.reloaded_from = previous
end
return p
"#;

const SUITE: &str = r#"
local t = {}

function t.test_state_store_and_timers()
  local room = sim.room { policy = "counter" }
  local alice = room:member { user = "alice" }
  assert_allowed(alice:join())
  assert_eq(room:state().joins, 1)
  assert_eq(room:store("last"), "alice")
  assert_eq(room:metadata().timer, nil)
  room:advance(4.9)
  assert_eq(room:metadata().timer, nil, "not before 5 s")
  room:advance(0.1)
  assert_eq(room:metadata().timer, "hello")
  local refused = room:member { user = "mallory" }:join()
  assert_refused(refused, 403, "^no$")
  assert_eq(refused.layer, "policy")
  assert_true(refused.decision ~= nil, "a refusal names its decision")
end

function t.test_reload_keeps_state_and_calls_on_reload()
  local room = sim.room { policy = "counter" }
  room:member { user = "alice" }:join()
  room:reload("counter_v2.lua")
  local state = room:state()
  assert_eq(state.joins, 1, "room.state survives the reload")
  assert_match(state.reloaded_from, "^counter@")
  assert_refused(room:member { user = "bob" }:join(), 403, "maintenance")
end

function t.test_this_one_fails()
  local room = sim.room { policy = "counter" }
  assert_eq(room:member { user = "carol" }:join().allowed, false, "carol is let in")
end

return t
"#;

#[test]
fn a_suite_reports_each_test_with_the_failing_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(scripts.join("tests")).unwrap();
    std::fs::write(scripts.join("counter.lua"), V1).unwrap();
    std::fs::write(scripts.join("counter_v2.lua"), V2).unwrap();
    std::fs::write(scripts.join("tests/counter_test.lua"), SUITE).unwrap();
    let junit = dir.path().join("junit.xml");
    let out = conclave(
        &["policy", "test", "scripts/tests", "--junit", "junit.xml"],
        dir.path(),
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("  ok    test_state_store_and_timers"),
        "{report}"
    );
    assert!(
        report.contains("  ok    test_reload_keeps_state_and_calls_on_reload"),
        "{report}"
    );
    assert!(report.contains("  FAIL  test_this_one_fails"), "{report}");
    let line = SUITE
        .lines()
        .position(|l| l.contains("carol is let in"))
        .unwrap()
        + 1;
    assert!(
        report.contains(&format!(
            "scripts/tests/counter_test.lua:{line}: carol is let in: expected false, got true"
        )),
        "{report}"
    );
    assert!(report.contains("2 passed, 1 failed"), "{report}");
    let xml = std::fs::read_to_string(junit).unwrap();
    assert!(xml.contains(r#"tests="3" failures="1""#), "{xml}");
    // Nothing of the simulated rooms is left in the scripts directory.
    assert_eq!(
        std::fs::read_to_string(scripts.join("counter.lua")).unwrap(),
        V1
    );
}

#[test]
fn plugin_check_shows_the_abi_exports_and_sample_verdicts() {
    let out = conclave(&["plugin", "check", "plugins/wat/audio_only.wat"], &repo());
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("ok, audio_only@"), "{report}");
    assert!(report.contains("ABI version 1"), "{report}");
    assert!(report.contains("conclave_check (function)"), "{report}");
    assert!(
        report.contains("conclave.deny_reason (function)"),
        "{report}"
    );
    let video = report
        .lines()
        .find(|l| l.trim_start().starts_with("publish_video"))
        .unwrap_or_default();
    assert!(
        video.contains("deny 403: video is disabled on this server") && video.contains("µs"),
        "{report}"
    );
    let audio = report
        .lines()
        .find(|l| l.trim_start().starts_with("publish_audio"))
        .unwrap_or_default();
    assert!(audio.contains("abstain"), "{report}");

    let out = conclave(
        &["plugin", "check", "--json", "plugins/wat/audio_only.wat"],
        &repo(),
    );
    let json: serde_json::Value = serde_json::from_str(text(&out).trim()).unwrap();
    assert_eq!(json["abi"], 1);
    assert_eq!(json["samples"].as_array().unwrap().len(), 11);
}

#[test]
fn plugin_check_fails_clearly_on_what_would_not_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm at all").unwrap();
    std::fs::write(
        dir.path().join("old.wat"),
        r#"(module (memory (export "memory") 1)
             (func (export "conclave_abi_version") (result i32) i32.const 0)
             (func (export "conclave_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "conclave_check") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    let out = conclave(&["plugin", "check", "junk.wasm"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("does not load"), "{}", text(&out));
    assert!(text(&out).contains("error:"), "{}", text(&out));
    let out = conclave(&["plugin", "check", "old.wat"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("ABI version 0 is not supported"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_test_api_annotations_declare_everything_the_runner_installs() {
    let root = repo();
    let runner = std::fs::read_to_string(root.join("src/authoring/suite.rs")).unwrap();
    let prelude = std::fs::read_to_string(root.join("src/authoring/prelude.lua")).unwrap();
    let types = std::fs::read_to_string(root.join("scripts/types/policy_test.lua")).unwrap();
    let mut missing = Vec::new();
    // Methods, by the userdata they are added to.
    let mut class = "";
    for line in runner.lines() {
        if line.contains("impl UserData for SimRoom") {
            class = "SimRoom";
        } else if line.contains("impl UserData for SimMember") {
            class = "SimMember";
        }
        if let Some(rest) = line.trim().strip_prefix("methods.add_method(\"") {
            let name = rest.split('"').next().unwrap();
            if !types.contains(&format!("function {class}:{name}(")) {
                missing.push(format!("{class}:{name}"));
            }
        }
    }
    for line in runner.lines() {
        if let Some(rest) = line.trim().strip_prefix("sim.set(") {
            let name = rest.trim_start_matches('"').split('"').next().unwrap();
            if !name.is_empty() && !types.contains(&format!("function sim.{name}(")) {
                missing.push(format!("sim.{name}"));
            }
        }
    }
    // The prelude's globals.
    for line in prelude.lines() {
        let Some(rest) = line.strip_prefix("function ") else {
            continue;
        };
        let name = rest.split('(').next().unwrap();
        if !types.contains(&format!("function {name}(")) {
            missing.push(name.to_owned());
        }
    }
    assert!(prelude.contains("show_value = show") && types.contains("function show_value("));
    assert!(
        runner.contains("\"room\",") && types.contains("function sim.room("),
        "sim.room is installed and declared"
    );
    assert!(
        missing.is_empty(),
        "not declared in scripts/types/policy_test.lua: {missing:?}"
    );
}

#[test]
fn a_suite_runs_with_the_configured_limits_and_room_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(scripts.join("tests")).unwrap();
    std::fs::write(
        scripts.join("greedy.lua"),
        "return { can_join = function(req) local t = {} for i = 1, 40000 do t[i] = i end end }\n",
    )
    .unwrap();
    std::fs::write(
        scripts.join("tests/config_test.lua"),
        r#"
local t = {}
function t.test_the_empty_room_closes_after_the_configured_timeout()
  local room = sim.room { policy = "greedy" }
  room:advance(9)
  assert_true(room:is_open())
  room:advance(2)
  assert_false(room:is_open(), "closed after [rooms] empty_timeout = 10s")
end
function t.test_the_configured_memory_cap_holds()
  local room = sim.room { policy = "greedy" }
  local refused = room:member { user = "a" }:join()
  assert_refused(refused, 403, "memory")
  assert_eq(room:policy().errors, 1)
end
return t
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conclave.toml"),
        "[rooms]\nempty_timeout = \"10s\"\n[policy.lua]\nmemory_bytes = 1048576\n",
    )
    .unwrap();
    let out = conclave(
        &[
            "policy",
            "test",
            "scripts/tests",
            "--config",
            "conclave.toml",
        ],
        dir.path(),
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("2 passed, 0 failed"), "{report}");
    // Without the file, the defaults (300 s, 4 MiB) hold and both fail.
    let out = conclave(&["policy", "test", "scripts/tests"], dir.path());
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("0 passed, 2 failed"), "{report}");
}
