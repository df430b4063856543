//! The sandbox: one wasmtime [`Engine`] for the process, components checked
//! and compiled once, and every call in a [`Store`] with hard bounds.
//!
//! - **Engine.** Component model on; threads, relaxed SIMD and the rest of
//!   what could make a decision depend on the machine off; NaNs
//!   canonicalised. The pooling allocator keeps a bounded set of
//!   pre-reserved instance slots, and copy-on-write memory images make a
//!   fresh instance a few page mappings rather than a copy.
//! - **CPU budget: epochs, not fuel.** A ticker thread increments the
//!   engine's epoch every [`EPOCH_TICK`] while any call runs (it sleeps
//!   otherwise); each store's deadline is the budget in ticks. When it
//!   comes, the store's deadline callback reads the CPU time the call's
//!   thread has used (`CLOCK_THREAD_CPUTIME_ID`): under the budget, the
//!   call goes on for the rest of it; at the budget, it traps. So a call is
//!   charged the CPU it used, not the time it waited for a core while
//!   other tenants' calls ran, and a loop still traps within one tick of
//!   its budget. A call also traps at [`WALL_FACTOR`] times its budget of
//!   wall time, however little CPU it got. Fuel would count instructions
//!   exactly (and so be deterministic), but instruments every basic block,
//!   which costs the well-behaved calls a double-digit percentage; the
//!   epoch check is one load and compare at function entries and loop
//!   headers.
//! - **Memory.** [`CallState`] is the store's resource limiter: a memory may
//!   not grow past the configured limit, and trying traps (recorded as a
//!   memory failure, not a generic trap).
//! - **WASI.** Rust guests built for `wasm32-wasip2` import `wasi:cli`,
//!   `wasi:io`, … through their standard library; they are linked to an
//!   empty context: no directories, environment, arguments, network or
//!   stdin; clocks fixed at the Unix epoch, randomness a constant stream, so
//!   a decision can be replayed. Standard error goes to a small in-memory
//!   buffer whose end is kept with a failure (a Rust panic's message).
//! - **Instances.** A call runs on an instance of the plugin kept for its
//!   tenant, or on a fresh one. An instance serves one tenant only (a
//!   global plugin gets one per tenant, so nothing one tenant's request put
//!   in its memory reaches another's decision), at most
//!   `calls_per_instance` calls, and is thrown away after any failure or
//!   write to standard error; at most `warm_instances` are kept, least
//!   recently used first out, and no more than [`WARM_MEMORY`] of linear
//!   memory in all. A call that fails on a kept instance runs again on a
//!   fresh one (but for a timeout: a loop is a loop), so what a plugin left
//!   behind can cost time, never a decision: the bounds, and every failure
//!   recorded, are those of a fresh instance. Fresh instances come from the
//!   pooling allocator, whose slots keep up to [`KEEP_RESIDENT`] of each
//!   memory resident and reset only the pages a call dirtied (Linux's
//!   `PAGEMAP_SCAN`), so even they cost microseconds.
//! - **Artifacts.** [`Sandbox::validate`] compiles a component once and
//!   returns the serialized artifact; [`Sandbox::load_artifact`]
//!   deserializes only artifacts this host produced (the registry keys them
//!   by the component's SHA-256 and [`Sandbox::compatibility_key`]).

use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable, types::ComponentItem};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::config::PolicyConfig;
use super::tail::TailPipe;
use super::types::{ExtensionPoint, FailureKind, PluginFailure, WitVersion};
use super::wit::{self, Bindings, CallError, Instance};

mod call;

pub use self::call::{
    CallState, LogLevel, LogLine, NICE_AFTER, PLUGIN_NICE, WALL_FACTOR, niced, release_freed_memory, truncate,
};
use self::call::{EpochClock, keep_end, thread_cpu};

/// How often the epoch advances: the granularity of the CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The most a component file may weigh (the Python example is ~18 MB).
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;
/// What is kept of a call's standard error.
const STDERR_CAPACITY: usize = 4096;
/// Log lines kept (and forwarded to the server's log) per call.
pub const MAX_LOG_LINES: usize = 32;
/// A longer log line is cut here.
pub const MAX_LOG_LINE_BYTES: usize = 1024;
/// The native stack a plugin's WebAssembly may use; past it, a stack
/// overflow trap (deep recursion).
const MAX_WASM_STACK: usize = 512 * 1024;
/// Elements a table may grow to (a Python interpreter needs some 10^4).
const MAX_TABLE_ELEMENTS: usize = 200_000;
/// Core instances, memories and tables one component may create: enough for
/// componentize-py's dynamically linked interpreter.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
const MAX_TABLES_PER_COMPONENT: u32 = 32;
/// Pool slots beyond the configured concurrent calls, for uploads being
/// validated (each instantiates its component once).
const VALIDATION_SLOTS: u32 = 2;
/// What a pool slot keeps resident of each memory and table after an
/// instance is dropped, to reset with `memset` (only the dirtied pages, where
/// the kernel has `PAGEMAP_SCAN`) instead of unmapping it: the next instance
/// then takes no page faults. A Rust plugin's memory is ~1 MiB.
pub const KEEP_RESIDENT: usize = 4 << 20;
/// The most linear memory kept instances may hold in all.
pub const WARM_MEMORY: usize = 256 << 20;

/// Why an upload is not a plugin this host can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {0} bytes; a plugin may be at most {MAX_COMPONENT_BYTES} bytes")]
    TooLarge(usize),
    #[error("not a WebAssembly file (it does not start with \\0asm)")]
    NotWasm,
    #[error(
        "a WebAssembly core module, not a component: build with `cargo build --target wasm32-wasip2`, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("not a plugin of any allot world: {0}")]
    WrongWorld(String),
    #[error(
        "built for allot:plugin@{0}, which this server does not support (it supports {supported})",
        supported = supported_versions()
    )]
    UnsupportedVersion(WitVersion),
    #[error("cannot be instantiated: {0}")]
    Instantiate(String),
}

fn supported_versions() -> String {
    wit::SUPPORTED
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A plugin ready to call: its world, its version, its typed template.
pub struct Loaded {
    /// Tells this load apart from every other one in the process (the key of
    /// its kept instances).
    id: u64,
    pub point: ExtensionPoint,
    /// The version the component was built for.
    pub built_for: WitVersion,
    /// The host bindings it runs on.
    pub host_version: WitVersion,
    bindings: Bindings,
}

/// A component that passed validation.
pub struct Validated {
    pub sha256: String,
    /// The serialized artifact, to store beside the component.
    pub artifact: Vec<u8>,
    pub plugin: Arc<Loaded>,
}

/// What came of one call.
pub struct CallReport<R> {
    pub result: Result<R, PluginFailure>,
    /// What the plugin logged.
    pub logs: Vec<LogLine>,
    /// Log lines past [`MAX_LOG_LINES`], dropped.
    pub dropped_lines: usize,
    /// From the start of instantiation to the answer.
    pub elapsed: Duration,
}

/// An instance between calls: its store, what it has served, for whom.
struct Warm {
    /// The [`Loaded::id`] it is an instance of.
    plugin: u64,
    tenant: Arc<str>,
    store: Store<CallState>,
    instance: Instance,
    stderr: TailPipe,
    calls: u32,
}

/// Kept instances, least recently used first, and their memory in all.
#[derive(Default)]
struct WarmSet {
    idle: VecDeque<Warm>,
    memory: usize,
}

/// The engine, the linker, the per-call bounds and the kept instances.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<CallState>,
    config: PolicyConfig,
    warm: Mutex<WarmSet>,
    /// Calls and instantiations running now; the epoch ticker runs only
    /// while there are any.
    running: Arc<AtomicUsize>,
    ticker: std::thread::Thread,
}

/// Counts a running call for the epoch ticker, for as long as it lives.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A `Hasher` over SHA-256, for a stable engine compatibility key.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Sandbox {
    /// Builds the engine and linker, and starts the epoch ticker (which
    /// stops when the engine is dropped).
    pub fn new(config: &PolicyConfig) -> anyhow::Result<Sandbox> {
        // Every call running, every instance kept, every upload validated.
        let slots = u32::try_from(config.max_concurrent_calls + config.warm_instances)
            .unwrap_or(u32::MAX)
            .saturating_add(VALIDATION_SLOTS);
        let memory_limit = usize::try_from(config.memory_limit_bytes())?;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * MAX_CORE_INSTANCES_PER_COMPONENT)
            .total_memories(slots * MAX_MEMORIES_PER_COMPONENT)
            .total_tables(slots * MAX_TABLES_PER_COMPONENT)
            .total_stacks(0)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_memories_per_module(1)
            .max_tables_per_module(4)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_memory_size(memory_limit)
            .max_core_instance_size(1 << 20)
            .max_component_instance_size(1 << 20)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut c = Config::new();
        // Threads are not even compiled in (the `threads` feature is off).
        c.wasm_component_model(true)
            .wasm_relaxed_simd(false)
            .wasm_memory64(false)
            .cranelift_nan_canonicalization(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .memory_init_cow(true)
            // An upload compiles on its one (niced) thread, not on every
            // core: it must not slow the scheduling of other tenants.
            .parallel_compilation(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(|e| anyhow::anyhow!("cannot start the plugin engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| wit::add_to_linker(&mut linker))
            .map_err(|e| anyhow::anyhow!("cannot link the plugin host functions: {e}"))?;
        let weak = engine.weak();
        let running = Arc::new(AtomicUsize::new(0));
        let counted = running.clone();
        let ticker = std::thread::Builder::new()
            .name("allot-plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    if counted.load(Ordering::Acquire) == 0 {
                        // Nothing running: no need to wake a thousand times a
                        // second. A call unparks it; the timeout notices the
                        // engine is gone.
                        drop(engine);
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?
            .thread()
            .clone();
        Ok(Sandbox {
            engine,
            linker,
            config: config.clone(),
            warm: Mutex::default(),
            running,
            ticker,
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Identifies the engine's compilation settings: an artifact compiled
    /// under another key (another wasmtime or other settings) is not loaded.
    pub fn compatibility_key(&self) -> String {
        let mut h = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut h);
        format!("{:016x}", h.finish())
    }

    /// Checks that `bytes` is a component of one of our worlds, in a
    /// supported version, that links and instantiates; compiles it once.
    pub fn validate(&self, bytes: &[u8]) -> Result<Validated, ValidationError> {
        check_header(bytes)?;
        let component =
            Component::new(&self.engine, bytes).map_err(|e| ValidationError::Invalid(first_line(&e)))?;
        let plugin = self.prepare(&component)?;
        self.instantiate(&plugin)
            .map_err(|failure| ValidationError::Instantiate(failure.to_string()))?;
        let artifact = component
            .serialize()
            .map_err(|e| ValidationError::Invalid(format!("cannot serialize the compiled component: {e}")))?;
        Ok(Validated {
            sha256: sha256_hex(bytes),
            artifact,
            plugin: Arc::new(plugin),
        })
    }

    /// Loads an artifact that [`validate`](Self::validate) produced with the
    /// same [`compatibility_key`](Self::compatibility_key).
    pub fn load_artifact(&self, artifact: &[u8]) -> anyhow::Result<Loaded> {
        // SAFETY: `Component::deserialize` trusts its input to be wasmtime's
        // own output. The registry stores only artifacts `validate` produced,
        // keyed by this engine's compatibility key, in the server's ledger;
        // uploaded bytes never reach here.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }
            .map_err(|e| anyhow::anyhow!("cannot load the compiled plugin: {e}"))?;
        self.prepare(&component).map_err(anyhow::Error::new)
    }

    /// Finds the world (by the one function exported) and the version (by the
    /// `allot:plugin` interfaces imported), links, and type-checks.
    fn prepare(&self, component: &Component) -> Result<Loaded, ValidationError> {
        let ty = component.component_type();
        let mut exported = Vec::new();
        let mut points = Vec::new();
        for (name, item) in ty.exports(&self.engine) {
            exported.push(name.to_string());
            if let (Some(point), ComponentItem::ComponentFunc(_)) =
                (ExtensionPoint::from_export(name), item.ty)
            {
                points.push(point);
            }
        }
        let point = match points.as_slice() {
            [point] => *point,
            [] => {
                return Err(ValidationError::WrongWorld(format!(
                    "it exports {}; a plugin exports one function: admit (admission), check (quota) or price (pricing)",
                    if exported.is_empty() {
                        "nothing".to_string()
                    } else {
                        exported.join(", ")
                    }
                )));
            }
            several => {
                return Err(ValidationError::WrongWorld(format!(
                    "it exports {} of admit, check and price; a plugin targets exactly one world",
                    several.len()
                )));
            }
        };
        let mut versions: Vec<WitVersion> = Vec::new();
        for (name, _) in ty.imports(&self.engine) {
            if let Some(version) = allot_import_version(name)?
                && !versions.contains(&version)
            {
                versions.push(version);
            }
        }
        let built_for = match versions.as_slice() {
            [v] => *v,
            [] => {
                return Err(ValidationError::WrongWorld(
                    "it does not import allot:plugin/types: it was not built against the allot:plugin WIT"
                        .into(),
                ));
            }
            _ => {
                return Err(ValidationError::WrongWorld(format!(
                    "it imports allot:plugin at several versions ({})",
                    versions
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let host_version =
            wit::host_version_for(built_for).ok_or(ValidationError::UnsupportedVersion(built_for))?;
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            ValidationError::Instantiate(format!(
                "it imports something the host does not provide: {}",
                first_line(&e)
            ))
        })?;
        let bindings = Bindings::new(host_version, point, pre).map_err(|e| {
            ValidationError::WrongWorld(format!(
                "its export {} does not match the {point} world of allot:plugin@{host_version}: {}",
                point.export_name(),
                first_line(&e)
            ))
        })?;
        static LOADS: AtomicU64 = AtomicU64::new(0);
        Ok(Loaded {
            id: LOADS.fetch_add(1, Ordering::Relaxed),
            point,
            built_for,
            host_version,
            bindings,
        })
    }

    /// A fresh store with this host's bounds.
    fn store(&self, label: Arc<str>, tenant: Arc<str>, stderr: TailPipe) -> Store<CallState> {
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr)
            .wall_clock(EpochClock)
            .monotonic_clock(EpochClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0]))
            .insecure_random_seed(0)
            .build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            memory_limit: usize::try_from(self.config.memory_limit_bytes()).unwrap_or(usize::MAX),
            memory_refused: None,
            memory_bytes: 0,
            label,
            tenant,
            lines: Vec::new(),
            dropped_lines: 0,
            // A fresh store sets up its instance first, under its own
            // budget; each call then has the call budget (`begin`).
            cpu_budget: self.config.instantiate_budget.as_std(),
            cpu_start: thread_cpu(),
            wall_start: Instant::now(),
            niced_from: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        store.set_epoch_deadline(self.first_ticks());
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().deadline()));
        store
    }

    /// A fresh instance of `plugin` in a fresh store, for `tenant`.
    fn fresh(&self, plugin: &Loaded, label: &Arc<str>, tenant: &Arc<str>) -> Result<Warm, PluginFailure> {
        let stderr = TailPipe::new(STDERR_CAPACITY);
        let mut store = self.store(label.clone(), tenant.clone(), stderr.clone());
        match plugin.bindings.instantiate(&mut store) {
            Ok(instance) => Ok(Warm {
                plugin: plugin.id,
                tenant: tenant.clone(),
                store,
                instance,
                stderr,
                calls: 0,
            }),
            Err(e) => Err(classify(
                &e,
                FailureKind::Instantiate,
                store.data(),
                &stderr.tail().0,
            )),
        }
    }

    /// The ticks until a call's first deadline: the nice point (or the
    /// budget, if shorter).
    fn first_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        let first = NICE_AFTER.min(self.config.cpu_budget.as_std());
        (first.as_micros().div_ceil(tick) as u64).max(1)
    }

    /// Instantiates `plugin` in a fresh store and drops it, without a call:
    /// what a call on a fresh instance pays before the plugin runs.
    pub fn instantiate(&self, plugin: &Loaded) -> Result<(), PluginFailure> {
        let _running = self.running();
        self.fresh(plugin, &"instantiate".into(), &"-".into()).map(drop)
    }

    /// Starts the epoch ticker, if it is parked, for as long as the guard
    /// lives: a store's deadline is counted in its ticks.
    fn running(&self) -> Running<'_> {
        if self.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.ticker.unpark();
        }
        Running(&self.running)
    }

    /// Runs `call` for `tenant` on a kept instance of `plugin`, or a fresh
    /// one; classifies any failure. A call that fails on a kept instance
    /// runs again on a fresh one, unless it ran out of time. Blocking: run
    /// it off the async runtime's workers.
    pub fn call<R>(
        &self,
        plugin: &Loaded,
        label: Arc<str>,
        tenant: Arc<str>,
        call: impl Fn(&Instance, &mut Store<CallState>, usize) -> Result<R, CallError>,
    ) -> CallReport<R> {
        let started = Instant::now();
        let _running = self.running();
        let mut kept = self.take(plugin, &tenant);
        loop {
            let reused = kept.is_some();
            let mut w = match kept.take() {
                Some(w) => w,
                None => match self.fresh(plugin, &label, &tenant) {
                    Ok(w) => w,
                    Err(failure) => {
                        return CallReport {
                            result: Err(failure),
                            logs: Vec::new(),
                            dropped_lines: 0,
                            elapsed: started.elapsed(),
                        };
                    }
                },
            };
            w.store.data_mut().begin(&label, self.config.cpu_budget.as_std());
            w.store.set_epoch_deadline(self.first_ticks());
            let result = call(&w.instance, &mut w.store, self.config.max_result_bytes)
                .map_err(|e| self.failure(e, &w))
                .and_then(|answer| match w.store.data().past_budget() {
                    Some(failure) => Err(failure),
                    None => Ok(answer),
                });
            w.store.data_mut().end();
            if let Err(failure) = &result
                && reused
                && failure.kind != FailureKind::Timeout
            {
                tracing::debug!(plugin = %label, tenant = %tenant, "a kept instance failed ({failure}); the call runs again on a fresh one");
                continue;
            }
            let state = w.store.data_mut();
            let logs = std::mem::take(&mut state.lines);
            let dropped_lines = state.dropped_lines;
            if result.is_ok() {
                self.keep(w);
            }
            return CallReport {
                result,
                logs,
                dropped_lines,
                elapsed: started.elapsed(),
            };
        }
    }

    /// What a failed call's error says, for the operator.
    fn failure(&self, e: CallError, w: &Warm) -> PluginFailure {
        match e {
            CallError::Oversized(size) => PluginFailure::new(
                FailureKind::Oversized,
                format!(
                    "the answer's strings and lists hold more than the limit of {} bytes (refused, uncopied, at {size})",
                    self.config.max_result_bytes
                ),
            ),
            // An error of a call that is not a trap is the host refusing
            // what the plugin returned (bad UTF-8, a pointer out of bounds, a
            // bad discriminant, a realloc that misbehaved): its answer.
            CallError::Wasm(e) => {
                classify(&e, FailureKind::InvalidResult, w.store.data(), &w.stderr.tail().0)
            }
        }
    }

    /// The most recently kept instance of `plugin` for `tenant`, if any.
    fn take(&self, plugin: &Loaded, tenant: &str) -> Option<Warm> {
        let mut set = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        let i = set
            .idle
            .iter()
            .rposition(|w| w.plugin == plugin.id && &*w.tenant == tenant)?;
        let w = set.idle.remove(i)?;
        set.memory -= w.store.data().memory_bytes;
        Some(w)
    }

    /// Keeps an instance that answered, unless it has served its calls,
    /// wrote to standard error (a panic's message, or noise that would fill
    /// the buffer), or is too large to keep; drops the least recently used
    /// ones past the bounds.
    fn keep(&self, mut w: Warm) {
        w.calls += 1;
        let memory = w.store.data().memory_bytes;
        if w.calls >= self.config.calls_per_instance
            || self.config.warm_instances == 0
            || memory > WARM_MEMORY
            || !w.stderr.is_empty()
        {
            return;
        }
        let mut evicted = Vec::new();
        let mut set = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        set.memory += memory;
        set.idle.push_back(w);
        while set.idle.len() > self.config.warm_instances || set.memory > WARM_MEMORY {
            let Some(old) = set.idle.pop_front() else { break };
            set.memory -= old.store.data().memory_bytes;
            evicted.push(old);
        }
        drop(set);
        // Dropping a store frees its pool slot: outside the lock.
        drop(evicted);
    }

    /// Drops every kept instance of `plugin` (replaced or removed).
    pub fn forget(&self, plugin: &Loaded) {
        let mut set = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, kept): (Vec<Warm>, Vec<Warm>) = set.idle.drain(..).partition(|w| w.plugin == plugin.id);
        set.idle = kept.into();
        set.memory = set.idle.iter().map(|w| w.store.data().memory_bytes).sum();
        drop(set);
        drop(gone);
    }

    /// How many instances are kept between calls now.
    pub fn warm_instances(&self) -> usize {
        self.warm.lock().unwrap_or_else(|e| e.into_inner()).idle.len()
    }
}

/// The version of an `allot:plugin/<interface>@<version>` import; `None`
/// for other imports (WASI).
fn allot_import_version(name: &str) -> Result<Option<WitVersion>, ValidationError> {
    let Some(rest) = name.strip_prefix("allot:plugin/") else {
        return Ok(None);
    };
    let Some((_, version)) = rest.split_once('@') else {
        return Err(ValidationError::WrongWorld(format!(
            "it imports {name} without a version"
        )));
    };
    version
        .parse()
        .map(Some)
        .map_err(|e| ValidationError::WrongWorld(format!("it imports {name}: {e}")))
}

/// A component starts with `\0asm` and the component layer's version
/// `0d 00 01 00`; a core module has `01 00 00 00`.
fn check_header(bytes: &[u8]) -> Result<(), ValidationError> {
    if bytes.is_empty() {
        return Err(ValidationError::Empty);
    }
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(ValidationError::TooLarge(bytes.len()));
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(ValidationError::NotWasm);
    }
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Err(ValidationError::CoreModule);
    }
    Ok(())
}

/// The first line of an error's message (wasmtime appends backtraces).
fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// What kind of failure `e` is, with a message for the operator: the trap,
/// and the end of what the plugin wrote to standard error (a panic message).
/// An error that is not a trap is `otherwise` (an instantiation that failed,
/// or an answer the host could not read).
fn classify(e: &wasmtime::Error, otherwise: FailureKind, state: &CallState, stderr: &str) -> PluginFailure {
    let mut failure = if let Some(asked) = state.memory_refused {
        PluginFailure::new(
            FailureKind::Memory,
            format!(
                "asked for {} MiB of linear memory; the limit is {} MiB",
                asked.div_ceil(1 << 20),
                state.memory_limit >> 20
            ),
        )
    } else {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                let (cpu, wall) = (
                    thread_cpu().saturating_sub(state.cpu_start),
                    state.wall_start.elapsed(),
                );
                PluginFailure::new(
                    FailureKind::Timeout,
                    if cpu >= state.cpu_budget {
                        format!(
                            "ran past its CPU budget{} and was stopped ({:.1} ms of CPU in {:.1} ms; the budget is {} ms)",
                            if otherwise == FailureKind::Instantiate {
                                " for instantiation"
                            } else {
                                ""
                            },
                            cpu.as_secs_f64() * 1e3,
                            wall.as_secs_f64() * 1e3,
                            state.cpu_budget.as_millis()
                        )
                    } else {
                        format!(
                            "ran past {WALL_FACTOR} × its CPU budget of wall time and was stopped ({:.1} ms of CPU in {:.1} ms; the machine is too busy to run it)",
                            cpu.as_secs_f64() * 1e3,
                            wall.as_secs_f64() * 1e3
                        )
                    },
                )
            }
            Some(Trap::StackOverflow) => PluginFailure::new(
                FailureKind::Trap,
                "stack overflow (recursion too deep)".to_string(),
            ),
            Some(trap) => PluginFailure::new(FailureKind::Trap, trap.to_string()),
            None if otherwise == FailureKind::InvalidResult => PluginFailure::new(
                otherwise,
                format!("returned an answer the host cannot read: {}", first_line(e)),
            ),
            None => PluginFailure::new(otherwise, first_line(e)),
        }
    };
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        let mut tail: String = stderr
            .lines()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        keep_end(&mut tail, 512);
        failure.message = format!("{}; stderr: {tail}", failure.message);
    }
    failure
}
