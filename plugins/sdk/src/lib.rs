//! Guest SDK for conclave permission plugins, ABI version 1.
//!
//! A plugin is a `wasm32-unknown-unknown` module that answers one question,
//! many times: may this action happen? It implements [`Plugin`] and exports
//! itself with [`export_plugin!`]; the SDK does the ABI (docs/plugins.md):
//!
//! ```ignore
//! use conclave_plugin::{export_plugin, Action, Plugin, Request, Verdict};
//!
//! #[derive(Default)]
//! struct NoVideo;
//!
//! impl Plugin for NoVideo {
//!     fn check(&mut self, req: &Request<'_>) -> Verdict<'_> {
//!         match req.action {
//!             Action::PublishVideo => Verdict::deny(403, "video is off on this server"),
//!             _ => Verdict::Abstain,
//!         }
//!     }
//! }
//!
//! export_plugin!(NoVideo);
//! ```
//!
//! A plugin is plain Rust, so its logic can be tested natively with
//! `cargo test` (no wasm target needed): build requests with
//! [`Request::new`] and call `check` directly.
//!
//! No dependencies beyond `core` and `alloc`, so it builds with any Rust from
//! 1.63 on. Nothing here allocates on the per-check path.

#![no_std]

extern crate alloc;

/// The ABI version this SDK speaks; the host refuses any other.
pub const ABI_VERSION: i32 = 1;

/// Size of the fixed request header, in bytes.
pub const HEADER_LEN: usize = 36;

/// What is being attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    CreateRoom,
    Join,
    PublishAudio,
    PublishVideo,
    ShareScreen,
    MuteOther,
    MuteEveryone,
    Kick,
    SetRole,
    SendData,
    /// Stop another member's screen share.
    StopScreenShare,
    /// An action this SDK does not know (a newer host); abstaining is safe.
    Other(u32),
}

impl Action {
    pub fn from_code(code: u32) -> Action {
        match code {
            1 => Action::CreateRoom,
            2 => Action::Join,
            3 => Action::PublishAudio,
            4 => Action::PublishVideo,
            5 => Action::ShareScreen,
            6 => Action::MuteOther,
            7 => Action::MuteEveryone,
            8 => Action::Kick,
            9 => Action::SetRole,
            10 => Action::SendData,
            11 => Action::StopScreenShare,
            other => Action::Other(other),
        }
    }
}

/// A member role, where the action involves one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    None,
    Interactor,
    Audience,
}

/// A media kind, where the action involves one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    None,
    Audio,
    Video,
}

/// One permission question, borrowed from the host's request buffer.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub action: Action,
    /// The role asked for (join, set_role).
    pub role: Role,
    /// The media kind (publish, mute); for a join, the mode's: `Video` for a
    /// join in video mode, `Audio` for one in audio mode.
    pub kind: Kind,
    /// For mute actions: true to mute, false to unmute.
    pub muted: bool,
    /// The acting user holds the admin grant.
    pub admin: bool,
    /// Effective community permissions of the actor, as bits (0 when the
    /// room is not a community channel).
    pub permissions: u64,
    pub room: &'a str,
    /// Who acts.
    pub user: &'a str,
    /// Whom the action is aimed at; empty when nobody.
    pub target: &'a str,
    /// The actor's token attributes, one `key=value` line each (strings as
    /// they are, other values as JSON); empty when there are none. Read one
    /// with [`Request::attr`].
    pub attrs: &'a str,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

impl<'a> Request<'a> {
    /// A request with nothing but its action, room and user set: for tests
    /// that call a plugin's `check` natively. Set the other fields with
    /// struct update syntax:
    ///
    /// ```
    /// use conclave_plugin::{Action, Kind, Request};
    /// let req = Request { kind: Kind::Video, ..Request::new(Action::Join, "lobby", "alice") };
    /// assert_eq!(req.attr("vip"), None);
    /// ```
    pub fn new(action: Action, room: &'a str, user: &'a str) -> Request<'a> {
        Request {
            action,
            role: Role::None,
            kind: Kind::None,
            muted: false,
            admin: false,
            permissions: 0,
            room,
            user,
            target: "",
            attrs: "",
        }
    }

    /// The value of the token attribute `key`, if the actor's token has it.
    pub fn attr(&self, key: &str) -> Option<&'a str> {
        config_entries(self.attrs).find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Decodes a request; `None` if the bytes are not a valid v1 request.
    pub fn decode(bytes: &'a [u8]) -> Option<Request<'a>> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let room_len = u32_at(bytes, 24) as usize;
        let user_len = u32_at(bytes, 28) as usize;
        let target_len = u32_at(bytes, 32) as usize;
        let room_end = HEADER_LEN.checked_add(room_len)?;
        let user_end = room_end.checked_add(user_len)?;
        let target_end = user_end.checked_add(target_len)?;
        if target_end > bytes.len() {
            return None;
        }
        let text = |from: usize, to: usize| core::str::from_utf8(&bytes[from..to]).ok();
        // The attributes block follows the strings; hosts before it sent none.
        let attrs = match bytes.len().checked_sub(target_end) {
            Some(rest) if rest >= 4 => {
                let len = u32_at(bytes, target_end) as usize;
                let end = (target_end + 4).checked_add(len)?;
                if end > bytes.len() {
                    return None;
                }
                text(target_end + 4, end)?
            }
            _ => "",
        };
        let flags = u32_at(bytes, 12);
        Some(Request {
            action: Action::from_code(u32_at(bytes, 0)),
            role: match u32_at(bytes, 4) {
                1 => Role::Interactor,
                2 => Role::Audience,
                _ => Role::None,
            },
            kind: match u32_at(bytes, 8) {
                1 => Kind::Audio,
                2 => Kind::Video,
                _ => Kind::None,
            },
            muted: flags & 1 != 0,
            admin: flags & 2 != 0,
            permissions: u64_at(bytes, 16),
            room: text(HEADER_LEN, room_end)?,
            user: text(room_end, user_end)?,
            target: text(user_end, target_end)?,
            attrs,
        })
    }
}

/// A plugin's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'r> {
    /// No opinion: other plugins and the room policy decide.
    Abstain,
    Allow,
    /// Refuse with a protocol status code (usually 403) and a reason the
    /// client is shown.
    Deny(u16, &'r str),
}

impl<'r> Verdict<'r> {
    pub fn deny(code: u16, reason: &'r str) -> Verdict<'r> {
        Verdict::Deny(code, reason)
    }
}

/// A permission plugin. One instance lives per room, so `&mut self` state
/// (counters, say) is per room and survives between checks.
pub trait Plugin {
    /// Receives the plugin's configuration from conclave's config, once,
    /// before any check. Return an error message to refuse to load.
    fn configure(&mut self, _config: &str) -> Result<(), &'static str> {
        Ok(())
    }

    /// Answers one request.
    fn check(&mut self, request: &Request<'_>) -> Verdict<'_>;
}

/// Host functions, imported from the `conclave` module.
pub mod host {
    #[link(wasm_import_module = "conclave")]
    extern "C" {
        #[link_name = "now_ms"]
        fn host_now_ms() -> i64;
        #[link_name = "deny_reason"]
        fn host_deny_reason(ptr: *const u8, len: usize);
        #[link_name = "log"]
        fn host_log(level: i32, ptr: *const u8, len: usize);
    }

    /// Wall-clock time, Unix milliseconds (the host's clock: a plugin has no other).
    pub fn now_ms() -> i64 {
        // SAFETY: a plain import with no pointers.
        unsafe { host_now_ms() }
    }

    /// Logs through the host's `tracing` (0 error, 1 warn, 2 info, 3 debug).
    pub fn log(level: i32, message: &str) {
        // SAFETY: the host copies `len` bytes from `ptr` before returning.
        unsafe { host_log(level, message.as_ptr(), message.len()) }
    }

    #[doc(hidden)]
    pub fn deny_reason(reason: &str) {
        // SAFETY: as for `log`.
        unsafe { host_deny_reason(reason.as_ptr(), reason.len()) }
    }
}

/// Turns a verdict into the ABI's return value: 0 abstain, 1 allow, a
/// status code (>= 100) to deny, after handing the reason to the host.
#[doc(hidden)]
pub fn encode_verdict(verdict: Verdict<'_>) -> i32 {
    match verdict {
        Verdict::Abstain => 0,
        Verdict::Allow => 1,
        Verdict::Deny(code, reason) => {
            host::deny_reason(reason);
            // A code under 100 would read as abstain or allow: clamp to 403.
            if code < 100 {
                403
            } else {
                i32::from(code)
            }
        }
    }
}

/// The plugin's configuration as `key=value` lines (conclave writes each
/// entry of the plugin's `config` table on its own line; arrays become
/// comma-separated values). Blank lines and lines without `=` are skipped.
pub fn config_entries(config: &str) -> impl Iterator<Item = (&str, &str)> {
    config.lines().filter_map(|line| {
        let mut parts = line.splitn(2, '=');
        let key = parts.next()?.trim();
        let value = parts.next()?.trim();
        if key.is_empty() {
            None
        } else {
            Some((key, value))
        }
    })
}

/// Matches `text` against `pattern`, where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    if !text.starts_with(first) {
        return false;
    }
    let mut rest = &text[first.len()..];
    let mut last: Option<&str> = None;
    for part in parts {
        if let Some(previous) = last {
            match rest.find(previous) {
                Some(at) => rest = &rest[at + previous.len()..],
                None => return false,
            }
        }
        last = Some(part);
    }
    match last {
        None => rest.is_empty(),
        Some(tail) => rest.ends_with(tail),
    }
}

/// Allocates guest memory for the host (the request buffer and the
/// configuration, once each per instance).
#[doc(hidden)]
pub fn alloc_for_host(size: i32) -> i32 {
    let size = if size <= 0 { 1 } else { size as usize };
    match core::alloc::Layout::from_size_align(size, 8) {
        // SAFETY: the layout has a non-zero size.
        Ok(layout) => unsafe { alloc::alloc::alloc(layout) as i32 },
        Err(_) => 0,
    }
}

/// Holds the plugin instance. Wasm modules run on one thread, which is what
/// makes the `Sync` claim below sound.
#[doc(hidden)]
pub struct Slot<T>(pub core::cell::UnsafeCell<Option<T>>);

// SAFETY: wasm32-unknown-unknown instances are single-threaded.
unsafe impl<T> Sync for Slot<T> {}

impl<T: Default> Slot<T> {
    pub const fn new() -> Slot<T> {
        Slot(core::cell::UnsafeCell::new(None))
    }

    /// The instance, created on first use.
    #[allow(clippy::mut_from_ref)]
    pub fn get(&self) -> &mut T {
        // SAFETY: single-threaded, and the host never re-enters a plugin
        // while it runs, so no two references are live at once.
        let slot = unsafe { &mut *self.0.get() };
        if slot.is_none() {
            *slot = Some(T::default());
        }
        match slot {
            Some(plugin) => plugin,
            None => unreachable!(),
        }
    }
}

/// Exports a [`Plugin`] type (which must implement `Default`) with the ABI.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        static CONCLAVE_PLUGIN: $crate::Slot<$plugin> = $crate::Slot::new();

        #[no_mangle]
        pub extern "C" fn conclave_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[no_mangle]
        pub extern "C" fn conclave_alloc(size: i32) -> i32 {
            $crate::alloc_for_host(size)
        }

        #[no_mangle]
        pub extern "C" fn conclave_configure(ptr: i32, len: i32) -> i32 {
            // SAFETY: the host wrote `len` bytes at `ptr`, which it got from `conclave_alloc`.
            let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
            let text = match core::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => return 1,
            };
            match $crate::Plugin::configure(CONCLAVE_PLUGIN.get(), text) {
                Ok(()) => 0,
                Err(message) => {
                    $crate::host::log(0, message);
                    1
                }
            }
        }

        #[no_mangle]
        pub extern "C" fn conclave_check(ptr: i32, len: i32) -> i32 {
            // SAFETY: as in `conclave_configure`.
            let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
            match $crate::Request::decode(bytes) {
                Some(request) => {
                    $crate::encode_verdict($crate::Plugin::check(CONCLAVE_PLUGIN.get(), &request))
                }
                None => 0,
            }
        }
    };
}
