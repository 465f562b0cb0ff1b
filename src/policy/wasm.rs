//! Wasm permission plugins (wasmtime), ABI version 1.
//!
//! One [`PluginHost`] per server: one `Engine` (epoch interruption, the
//! pooling allocator) and one `Linker` that offers only the `conclave`
//! imports, no WASI. Each plugin version is compiled once into an
//! `InstancePre`; each room instantiates it into a `Store` of its own, so a
//! plugin's state is per room and rooms never contend.
//!
//! The per-check path does no parsing and no allocation: the request is
//! written into a buffer the guest allocated once, in a fixed binary layout
//! (docs/plugins.md), and the answer is one `i32`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::{
    Caller, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, TypedFunc,
};

use super::{Check, FailureMode};
use crate::model::{MediaKind, Role};
use crate::status::{Failure, Status};
use crate::ticker::Ticker;

/// The ABI version this host speaks.
pub const ABI_VERSION: i32 = 1;
/// Bytes of the fixed request header.
pub const HEADER_LEN: usize = 36;
/// Size of the request buffer each instance allocates.
pub const REQUEST_CAP: usize = 4096;
/// Longest deny reason kept, in bytes.
const MAX_REASON: usize = 1024;
/// Epoch tick period: the granularity of the time budget.
const TICK: Duration = Duration::from_millis(1);
/// How long the epoch keeps ticking after the last plugin call, so a burst
/// of checks pays for one wake-up at most.
const EPOCH_LINGER: Duration = Duration::from_millis(200);

/// Limits for every plugin instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmLimits {
    /// Linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time one check may take (rounded up to whole milliseconds).
    #[serde(with = "humantime_serde")]
    pub time: Duration,
    /// Plugin instances that can exist at once (rooms x plugins).
    pub max_instances: u32,
    /// Largest plugin file (`.wasm` or `.wat`) that is compiled, in bytes:
    /// compiling takes memory and time in proportion to the module.
    pub module_bytes: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            memory_bytes: 16 * 1024 * 1024,
            time: Duration::from_millis(10),
            max_instances: 10_000,
            module_bytes: 1024 * 1024,
        }
    }
}

/// Why a plugin could not be loaded or instantiated.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Compile(String),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    #[error("missing export `{0}`")]
    MissingExport(&'static str),
    #[error("ABI version {0} is not supported; this host speaks {ABI_VERSION}")]
    AbiVersion(i32),
    #[error("the plugin refused its configuration")]
    Configure,
}

/// The host's state inside one instance's store.
struct HostState {
    limits: StoreLimits,
    reason: String,
    plugin: Arc<str>,
}

/// The engine and linker shared by every plugin.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    limits: WasmLimits,
    /// Moves the engine's epoch while a plugin runs (and only then).
    epoch: Ticker,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.limits)
            .finish()
    }
}

impl PluginHost {
    pub fn new(limits: WasmLimits) -> Result<PluginHost, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(limits.max_instances)
            .total_memories(limits.max_instances)
            .total_tables(limits.max_instances)
            .max_memory_size(limits.memory_bytes);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // Reserve only what an instance may use, so thousands of pooled
            // slots do not reserve terabytes of address space.
            .memory_reservation(limits.memory_bytes as u64)
            .memory_guard_size(64 * 1024)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| PluginError::Compile(e.to_string()))?;

        // The time budget: a coarse clock every store's deadline counts in,
        // moving only while some plugin code runs (an idle server pays no
        // wake-ups for it).
        let weak = engine.weak();
        let epoch = Ticker::spawn("conclave-wasm-epoch", TICK, EPOCH_LINGER, move || {
            if let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
            }
        })
        .map_err(|e| PluginError::Compile(format!("cannot start the epoch thread: {e}")))?;

        let mut linker = Linker::<HostState>::new(&engine);
        linker
            .func_wrap("conclave", "now_ms", || -> i64 {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            })
            .and_then(|l| {
                l.func_wrap(
                    "conclave",
                    "deny_reason",
                    |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
                        let text = read_guest(&mut caller, ptr, len);
                        caller.data_mut().reason = text;
                    },
                )
            })
            .and_then(|l| {
                l.func_wrap(
                    "conclave",
                    "log",
                    |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
                        let text = read_guest(&mut caller, ptr, len);
                        let plugin = caller.data().plugin.clone();
                        match level {
                            0 => tracing::error!(plugin = %plugin, "{text}"),
                            1 => tracing::warn!(plugin = %plugin, "{text}"),
                            2 => tracing::info!(plugin = %plugin, "{text}"),
                            _ => tracing::debug!(plugin = %plugin, "{text}"),
                        }
                    },
                )
            })
            .map_err(|e| PluginError::Compile(e.to_string()))?;
        Ok(PluginHost {
            engine,
            linker: Arc::new(linker),
            limits,
            epoch,
        })
    }

    /// Compiles a plugin file's `bytes` (WebAssembly binary for `.wasm`,
    /// text for `.wat`) and checks that it instantiates and accepts
    /// `config`; the result is ready for any number of rooms.
    pub fn compile(
        &self,
        name: &str,
        path: &Path,
        bytes: &[u8],
        config: &str,
        failure_mode: FailureMode,
        loaded_at_ms: i64,
    ) -> Result<Plugin, PluginError> {
        let text = path.extension().is_some_and(|e| e == "wat");
        let module = if text {
            Module::new(&self.engine, bytes)
                .map_err(|e| PluginError::Compile(format!("not valid WebAssembly text: {e:#}")))?
        } else {
            // A `.wasm` file is never read as text: a corrupt binary should
            // say so, not report a WAT syntax error at 1:1.
            Module::from_binary(&self.engine, bytes).map_err(|e| {
                PluginError::Compile(format!("not a valid WebAssembly binary: {e:#}"))
            })?
        };
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        let plugin = Plugin {
            name: name.into(),
            hash: super::catalog::short_hash(bytes),
            loaded_at_ms,
            path: path.to_path_buf(),
            config: config.into(),
            failure_mode,
            pre,
            host: self.clone(),
        };
        // Validate now, off any room's path: exports, ABI version, config.
        plugin.instantiate()?;
        Ok(plugin)
    }
}

/// What a module declares, as `conclave plugin check` lists it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ModuleShape {
    /// `name (kind)` of each export.
    pub exports: Vec<String>,
    /// `module.name (kind)` of each import.
    pub imports: Vec<String>,
}

impl PluginHost {
    /// The exports and imports of a plugin file's `bytes`, compiled as
    /// [`PluginHost::compile`] would but not instantiated.
    pub fn shape(&self, path: &Path, bytes: &[u8]) -> Result<ModuleShape, PluginError> {
        let module = if path.extension().is_some_and(|e| e == "wat") {
            Module::new(&self.engine, bytes)
        } else {
            Module::from_binary(&self.engine, bytes)
        }
        .map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        let kind = |ty: wasmtime::ExternType| match ty {
            wasmtime::ExternType::Func(_) => "function",
            wasmtime::ExternType::Memory(_) => "memory",
            wasmtime::ExternType::Table(_) => "table",
            wasmtime::ExternType::Global(_) => "global",
            _ => "other",
        };
        Ok(ModuleShape {
            exports: module
                .exports()
                .map(|e| format!("{} ({})", e.name(), kind(e.ty())))
                .collect(),
            imports: module
                .imports()
                .map(|i| format!("{}.{} ({})", i.module(), i.name(), kind(i.ty())))
                .collect(),
        })
    }

    pub fn limits(&self) -> &WasmLimits {
        &self.limits
    }
}

fn read_guest(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> String {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return String::new();
    };
    guest_text(memory.data(&caller), ptr, len)
}

/// The text at `ptr..ptr + len` of a guest's memory, at most
/// [`MAX_REASON`] bytes, lossily decoded; empty when out of bounds. The
/// pointer and length are the guest's, so anything may come.
pub fn guest_text(memory: &[u8], ptr: i32, len: i32) -> String {
    let start = ptr as u32 as usize;
    let len = (len as u32 as usize).min(MAX_REASON);
    match memory.get(start..start.saturating_add(len)) {
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        None => String::new(),
    }
}

/// One compiled plugin version.
pub struct Plugin {
    pub name: String,
    /// Content hash of the module file.
    pub hash: String,
    pub loaded_at_ms: i64,
    pub path: std::path::PathBuf,
    pub config: Arc<str>,
    pub failure_mode: FailureMode,
    pre: InstancePre<HostState>,
    host: PluginHost,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish()
    }
}

impl Plugin {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.hash)
    }

    /// A fresh instance with its own memory and state.
    pub fn instantiate(&self) -> Result<PluginInstance, PluginError> {
        // Its start-up code and `conclave_configure` run under the budget.
        let _ticking = self.host.epoch.begin();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.host.limits.memory_bytes)
            .instances(1)
            .build();
        let mut store = Store::new(
            &self.host.engine,
            HostState {
                limits,
                reason: String::new(),
                plugin: self.name.as_str().into(),
            },
        );
        store.limiter(|s| &mut s.limits);
        let ticks = budget_ticks(self.host.limits.time);
        store.set_epoch_deadline(ticks);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(PluginError::MissingExport("memory"))?;
        let typed = |store: &mut Store<HostState>, name: &'static str| {
            instance
                .get_typed_func::<(), i32>(&mut *store, name)
                .map_err(|_| PluginError::MissingExport(name))
        };
        let version = typed(&mut store, "conclave_abi_version")?
            .call(&mut store, ())
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        if version != ABI_VERSION {
            return Err(PluginError::AbiVersion(version));
        }
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "conclave_alloc")
            .map_err(|_| PluginError::MissingExport("conclave_alloc"))?;
        let check = instance
            .get_typed_func::<(i32, i32), i32>(&mut store, "conclave_check")
            .map_err(|_| PluginError::MissingExport("conclave_check"))?;
        let call_err = |e: wasmtime::Error| PluginError::Instantiate(format!("{e:#}"));
        store.set_epoch_deadline(ticks);
        let buffer = alloc
            .call(&mut store, REQUEST_CAP as i32)
            .map_err(call_err)?;
        if let Ok(configure) =
            instance.get_typed_func::<(i32, i32), i32>(&mut store, "conclave_configure")
        {
            let config = self.config.as_bytes();
            store.set_epoch_deadline(ticks);
            let at = alloc
                .call(&mut store, config.len().max(1) as i32)
                .map_err(call_err)?;
            memory
                .write(&mut store, at as u32 as usize, config)
                .map_err(|e| PluginError::Instantiate(format!("configuration: {e}")))?;
            store.set_epoch_deadline(ticks);
            if configure
                .call(&mut store, (at, config.len() as i32))
                .map_err(call_err)?
                != 0
            {
                return Err(PluginError::Configure);
            }
        }
        // The buffer must really be there, or every check would fail.
        if memory.data_size(&store) < buffer as u32 as usize + REQUEST_CAP {
            return Err(PluginError::Instantiate(
                "conclave_alloc returned a buffer outside memory".into(),
            ));
        }
        Ok(PluginInstance {
            store,
            memory,
            check,
            buffer: buffer as u32 as usize,
            ticks,
            scratch: Vec::with_capacity(REQUEST_CAP),
            epoch: self.host.epoch.clone(),
        })
    }
}

fn budget_ticks(time: Duration) -> u64 {
    // +1: the current tick may be about to end.
    (time.as_millis() as u64).max(1) + 1
}

/// A plugin's answer to one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Abstain,
    Allow,
    Deny(Failure),
    /// The plugin trapped, ran out of time or memory, or answered garbage;
    /// the caller applies the plugin's failure mode.
    Failed(String),
}

/// One plugin instantiated for one room.
pub struct PluginInstance {
    store: Store<HostState>,
    memory: Memory,
    check: TypedFunc<(i32, i32), i32>,
    buffer: usize,
    ticks: u64,
    scratch: Vec<u8>,
    epoch: Ticker,
}

impl PluginInstance {
    /// Asks the plugin about `check`.
    pub fn check(&mut self, check: &Check<'_>) -> Verdict {
        let _ticking = self.epoch.begin();
        encode(check, &mut self.scratch);
        if self
            .memory
            .write(&mut self.store, self.buffer, &self.scratch)
            .is_err()
        {
            return Verdict::Failed("request buffer is outside the plugin's memory".into());
        }
        self.store.set_epoch_deadline(self.ticks);
        self.store.data_mut().reason.clear();
        let answer = self.check.call(
            &mut self.store,
            (self.buffer as i32, self.scratch.len() as i32),
        );
        match answer {
            Ok(code) => verdict(code, std::mem::take(&mut self.store.data_mut().reason)),
            Err(e) => Verdict::Failed(trap_text(&e)),
        }
    }
}

/// What a plugin's answer `code` (with the reason it set) means: 0
/// abstain, 1 allow, a status code of 100 or more (not 200) deny, anything
/// else a failure.
pub fn verdict(code: i32, reason: String) -> Verdict {
    match code {
        0 => Verdict::Abstain,
        1 => Verdict::Allow,
        code => match u16::try_from(code).ok().filter(|c| *c >= 100 && *c != 200) {
            Some(code) => {
                // A code the protocol does not define still denies.
                let status = Status::from_code(code).unwrap_or(Status::Forbidden);
                let reason = if reason.is_empty() {
                    "refused by a permission plugin".to_owned()
                } else {
                    reason
                };
                Verdict::Deny(Failure::new(status, reason))
            }
            None => Verdict::Failed(format!("answered {code}, which is not a verdict")),
        },
    }
}

fn trap_text(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "time budget exceeded".into(),
        Some(trap) => format!("trapped: {trap}"),
        None => format!("{e:#}"),
    }
}

fn role_code(role: Option<Role>) -> u32 {
    match role {
        None => 0,
        Some(Role::Interactor) => 1,
        Some(Role::Audience) => 2,
    }
}

fn kind_code(kind: Option<MediaKind>) -> u32 {
    match kind {
        None => 0,
        Some(MediaKind::Audio) => 1,
        Some(MediaKind::Video) => 2,
    }
}

/// Writes a request in the ABI v1 layout; strings are cut to fit the buffer.
///
/// After the three strings comes the attributes block (`attrs_len: u32`,
/// then that many bytes of `key=value` lines), cut at a line boundary to
/// what is left of the buffer. Plugins that predate it read only what the
/// header describes and never see it.
pub fn encode(check: &Check<'_>, out: &mut Vec<u8>) {
    let room = check.room.as_bytes();
    let budget = REQUEST_CAP - HEADER_LEN - room.len().min(REQUEST_CAP / 4);
    let user = clip(check.user.as_bytes(), budget / 2);
    let target = clip(check.target.as_bytes(), budget / 2);
    let room = clip(room, REQUEST_CAP / 4);
    let flags = u32::from(check.muted) | (u32::from(check.admin) << 1);
    out.clear();
    for word in [
        check.action.code(),
        role_code(check.role),
        kind_code(check.kind),
        flags,
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&check.permissions.to_le_bytes());
    for len in [room.len(), user.len(), target.len()] {
        out.extend_from_slice(&(len as u32).to_le_bytes());
    }
    out.extend_from_slice(room);
    out.extend_from_slice(user);
    out.extend_from_slice(target);
    let room_left = REQUEST_CAP.saturating_sub(out.len() + 4);
    let attrs = clip_lines(check.attrs.as_bytes(), room_left);
    out.extend_from_slice(&(attrs.len() as u32).to_le_bytes());
    out.extend_from_slice(attrs);
}

/// Cuts `lines` to at most `max` bytes, after a whole line.
fn clip_lines(lines: &[u8], max: usize) -> &[u8] {
    if lines.len() <= max {
        return lines;
    }
    match lines[..max].iter().rposition(|b| *b == b'\n') {
        Some(end) => &lines[..=end],
        None => &[],
    }
}

/// Cuts `bytes` to at most `max` bytes on a UTF-8 boundary.
fn clip(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let mut end = max;
    while end > 0 && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Action;

    #[test]
    fn the_header_layout_is_stable() {
        let mut check = Check::new(Action::MuteOther, "room", "alice");
        check.target = "bob";
        check.kind = Some(MediaKind::Video);
        check.muted = true;
        check.admin = true;
        check.permissions = 0x0102;
        check.attrs = "vip=true\n";
        let mut out = Vec::new();
        encode(&check, &mut out);
        assert_eq!(out.len(), HEADER_LEN + 4 + 5 + 3 + 4 + 9);
        assert_eq!(&out[0..4], &6u32.to_le_bytes());
        assert_eq!(&out[8..12], &2u32.to_le_bytes());
        assert_eq!(&out[12..16], &3u32.to_le_bytes());
        assert_eq!(&out[16..24], &0x0102u64.to_le_bytes());
        assert_eq!(&out[24..28], &4u32.to_le_bytes());
        assert_eq!(&out[HEADER_LEN..HEADER_LEN + 12], b"roomalicebob");
        assert_eq!(&out[HEADER_LEN + 12..HEADER_LEN + 16], &9u32.to_le_bytes());
        assert_eq!(&out[HEADER_LEN + 16..], b"vip=true\n");
    }

    #[test]
    fn attributes_that_do_not_fit_are_cut_after_a_whole_line() {
        let user = "u".repeat(2000);
        // 55 bytes are left after the header and strings: the first line fits.
        let attrs = format!("a={}\nb={}\n", "x".repeat(40), "y".repeat(40));
        let mut check = Check::new(Action::Join, "r", &user);
        check.target = &user;
        check.attrs = &attrs;
        let mut out = Vec::new();
        encode(&check, &mut out);
        assert!(out.len() <= REQUEST_CAP, "{}", out.len());
        let at = HEADER_LEN + 1 + 2000 + 2000;
        let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(
            &out[at + 4..at + 4 + len],
            format!("a={}\n", "x".repeat(40)).as_bytes()
        );
    }

    #[test]
    fn long_strings_are_clipped_on_char_boundaries() {
        let user = "é".repeat(5000);
        let check = Check::new(Action::Join, "r", &user);
        let mut out = Vec::new();
        encode(&check, &mut out);
        assert!(out.len() <= REQUEST_CAP);
        let user_len = u32::from_le_bytes(out[28..32].try_into().unwrap()) as usize;
        assert!(std::str::from_utf8(&out[HEADER_LEN + 1..HEADER_LEN + 1 + user_len]).is_ok());
    }
}
