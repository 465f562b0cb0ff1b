//! What each fuzz target feeds conclave, shared by the cargo-fuzz targets
//! (`tools/fuzz/fuzz_targets/`) and by `tests/fuzz_corpora.rs`, which
//! replays every saved input on stable Rust in `tools/test`.
//!
//! Each function takes arbitrary bytes and drives one parser a client, a
//! script or a plugin reaches, the way the server does. The property is the
//! same for all: a clear error or a value, never a panic, a hang or an
//! unbounded allocation.

/// A signaling text frame, as the connection hands it to the protocol.
pub fn signal_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(envelope) = conclave::protocol::parse_request(text) {
        // What parsed is a request the server can describe and answer.
        let _ = envelope.request.kind();
    }
}

/// A token, as `hello` hands it to the verifier (dev key).
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let auth = conclave::auth::Auth::dev();
    if let Ok(identity) = auth.verify(text) {
        assert!(
            !identity.user.as_str().is_empty(),
            "a verified token names a user"
        );
    }
}

/// An SDP answer, as `media_answer` hands it to rtc, and each of its
/// candidate lines, as `ice_candidate` does.
pub fn sdp(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = rtc::peer_connection::sdp::RTCSessionDescription::answer(text.to_owned());
    for line in text.lines() {
        let candidate = line.strip_prefix("a=").unwrap_or(line);
        let _ = rtc::ice::candidate::unmarshal_candidate(candidate);
    }
}

/// A plugin's answer: the verdict code and the reason it pointed at in its
/// memory. The first 8 bytes are the code and the pointer, the next 4 the
/// length, the rest the guest's memory.
pub fn plugin_verdict(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let word = |at: usize| i32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    let (code, ptr, len) = (word(0), word(4), word(8));
    let memory = &data[12..];
    let reason = conclave::policy::wasm::guest_text(memory, ptr, len);
    assert!(reason.len() <= 4 * 1024, "a reason is capped");
    let _ = conclave::policy::wasm::verdict(code, reason);
}

/// Values crossing between Lua and JSON: the bytes as JSON given to a
/// script and read back, and as a Lua expression whose value a script
/// would send (under the sandbox's limits).
pub fn lua_json(data: &[u8]) {
    use mlua::LuaSerdeExt;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = conclave::script::sandbox::LuaLimits {
        memory_bytes: 8 * 1024 * 1024,
        instructions: 100_000,
        time: std::time::Duration::from_secs(1),
    };
    let (lua, budget) = conclave::script::sandbox::new_state(&limits).expect("a sandbox");
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(text)
        && let Ok(value) = lua.to_value(&json)
    {
        let _ = lua.from_value::<serde_json::Value>(value);
    }
    budget.reset();
    if let Ok(value) = lua.load(format!("return {text}")).eval::<mlua::Value>() {
        let _ = lua.from_value::<serde_json::Value>(value);
    }
}

/// A configuration file, as `serve --config` reads it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = conclave::app::config::Config::from_toml(text);
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("signal_frame", signal_frame),
    ("token", token),
    ("sdp", sdp),
    ("plugin_verdict", plugin_verdict),
    ("lua_json", lua_json),
    ("config", config),
];
