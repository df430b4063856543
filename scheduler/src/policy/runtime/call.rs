//! The store's data for one call ([`CallState`]): its WASI context, its
//! limits, its log lines, and the CPU time it has used, with the thread
//! priority and clock helpers the CPU budget runs on. The sandbox
//! ([`super::Sandbox`]) makes one per call.

use super::*;

/// A log line's importance, as the plugin gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

/// Cuts `s` to its last `max` bytes (at a character boundary), marking the
/// cut: the end of a plugin's standard error is what explains it.
pub(super) fn keep_end(s: &mut String, max: usize) {
    if s.len() > max {
        let mut start = s.len() - max;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        *s = format!("…{}", &s[start..]);
    }
}

/// The store's data for one call: the WASI context, the limits, and the
/// plugin's log lines.
pub struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory_limit: usize,
    /// Set when the plugin asked for more memory than its limit.
    pub(super) memory_refused: Option<usize>,
    /// The instance's linear memories, in all.
    pub(super) memory_bytes: usize,
    /// Who is logging, for the server's log.
    pub(super) label: Arc<str>,
    pub(super) tenant: Arc<str>,
    pub(super) lines: Vec<LogLine>,
    pub(super) dropped_lines: usize,
    /// The CPU budget of what runs now (the instantiation of a fresh
    /// instance, then each call), and the thread's CPU time and the wall
    /// clock when it began.
    pub(super) cpu_budget: Duration,
    pub(super) cpu_start: Duration,
    pub(super) wall_start: Instant,
    /// The thread's nice value before this call lowered it.
    pub(super) niced_from: Option<i32>,
}

/// How much lower than the server's own threads a plugin call that runs
/// long (past [`NICE_AFTER`]) runs from then on (a thread's nice value):
/// untrusted code that computes yields the cores to the scheduler's work
/// and to other tenants' short calls. Short calls, most of them, run at the
/// server's own priority.
pub const PLUGIN_NICE: i32 = 10;

/// When a call is niced: after this much of its CPU budget.
pub const NICE_AFTER: Duration = Duration::from_millis(2);

/// Whether a thread here can be put back to its nice value after being
/// niced (root, CAP_SYS_NICE or a RLIMIT_NICE that allows it). Plugin calls
/// run on the runtime's pooled blocking threads, which also serve ledger
/// reads: where a niced thread would stay niced, calls are not niced at all
/// (their tenant's slots and the hold after a timeout still bound them).
/// Tried once, on a thread of its own.
pub(super) fn can_unnice() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            // SAFETY: plain system calls on this thread.
            unsafe {
                let tid = nix::libc::gettid() as nix::libc::id_t;
                *nix::libc::__errno_location() = 0;
                let before = nix::libc::getpriority(nix::libc::PRIO_PROCESS, tid);
                if *nix::libc::__errno_location() != 0 || before >= PLUGIN_NICE {
                    return false;
                }
                nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, PLUGIN_NICE) == 0
                    && nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, before) == 0
            }
        })
        .join()
        .unwrap_or(false)
    })
}

/// Sets this thread's nice value; returns the one it had (`None`: left as
/// it was, or it could not be put back afterwards).
pub(super) fn renice(nice: i32) -> Option<i32> {
    if !can_unnice() {
        return None;
    }
    // SAFETY: plain system calls on this thread (Linux applies nice values
    // per thread, given its tid).
    unsafe {
        let tid = nix::libc::gettid() as nix::libc::id_t;
        *nix::libc::__errno_location() = 0;
        let before = nix::libc::getpriority(nix::libc::PRIO_PROCESS, tid);
        if *nix::libc::__errno_location() != 0 || before >= nice {
            return None;
        }
        (nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, nice) == 0).then_some(before)
    }
}

/// Runs `f` on this thread at [`PLUGIN_NICE`] (where the thread can be put
/// back afterwards, see [`can_unnice`]): compiling an upload yields the
/// cores to scheduling and to other tenants' calls.
pub fn niced<R>(f: impl FnOnce() -> R) -> R {
    let before = renice(PLUGIN_NICE);
    let r = f();
    if let Some(before) = before {
        unnice(before);
    }
    r
}

/// Hands the memory freed since to the kernel. Compiling a plugin (a Python
/// one most: ~300 MB at its peak) frees most of what it took, but glibc
/// keeps freed memory in its arenas; without this the server's RSS would
/// stay at the peak of the largest compile, per thread that compiled.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Puts this thread back to `before` (raising a priority back needs
/// CAP_SYS_NICE unless RLIMIT_NICE allows it: see [`can_unnice`]).
pub(super) fn unnice(before: i32) {
    // SAFETY: as above.
    unsafe {
        let tid = nix::libc::gettid() as nix::libc::id_t;
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, before);
    }
}

/// A call traps at this many times its CPU budget of wall time, however
/// little CPU it was given (a machine that busy serves no one).
pub const WALL_FACTOR: u32 = 20;

/// The CPU time this thread has used.
pub(super) fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

impl CallState {
    /// Readies an instance's state for the next call, with `cpu_budget`
    /// from now (a fresh instance's set-up had a budget of its own).
    pub(super) fn begin(&mut self, label: &Arc<str>, cpu_budget: Duration) {
        self.cpu_budget = cpu_budget;
        if !Arc::ptr_eq(&self.label, label) {
            self.label = label.clone();
        }
        self.memory_refused = None;
        self.lines.clear();
        self.dropped_lines = 0;
        self.cpu_start = thread_cpu();
        self.wall_start = Instant::now();
        self.niced_from = None;
    }

    /// After a call: the thread back to its priority.
    pub(super) fn end(&mut self) {
        if let Some(before) = self.niced_from.take() {
            unnice(before);
        }
    }

    /// A call that answered, but past its CPU budget once the host had
    /// read its answer: the copy of an answer counts in the call's time,
    /// like the plugin's own work.
    pub(super) fn past_budget(&self) -> Option<PluginFailure> {
        // A thread uses no more CPU than wall time: a call shorter than its
        // budget (nearly all) needs no read of the thread's CPU clock, which
        // is a system call, not a vDSO read.
        let wall = self.wall_start.elapsed();
        if wall <= self.cpu_budget {
            return None;
        }
        let cpu = thread_cpu().saturating_sub(self.cpu_start);
        (cpu > self.cpu_budget).then(|| {
            PluginFailure::new(
                FailureKind::Timeout,
                format!(
                    "answered past its CPU budget, the copy of its answer counted ({:.1} ms of CPU in {:.1} ms; the budget is {} ms)",
                    cpu.as_secs_f64() * 1e3,
                    wall.as_secs_f64() * 1e3,
                    self.cpu_budget.as_millis()
                ),
            )
        })
    }

    /// What the epoch deadline does: under the CPU budget, go on for the
    /// rest of it; else (or past the wall-time bound) stop the call.
    pub(super) fn deadline(&mut self) -> wasmtime::UpdateDeadline {
        let used = thread_cpu().saturating_sub(self.cpu_start);
        if self.niced_from.is_none() && used >= NICE_AFTER {
            self.niced_from = renice(PLUGIN_NICE);
        }
        if used >= self.cpu_budget || self.wall_start.elapsed() >= self.cpu_budget * WALL_FACTOR {
            return wasmtime::UpdateDeadline::Interrupt;
        }
        // Next look: at the nice point, or at the end of the budget.
        let next = if used < NICE_AFTER {
            NICE_AFTER - used
        } else {
            self.cpu_budget - used
        };
        let tick = EPOCH_TICK.as_micros().max(1);
        wasmtime::UpdateDeadline::Continue((next.as_micros().div_ceil(tick) as u64).max(1))
    }

    /// Keeps a log line (cut to [`MAX_LOG_LINE_BYTES`]) and forwards it to
    /// the server's log, tagged with the plugin and tenant; past
    /// [`MAX_LOG_LINES`] lines a call's lines are counted and dropped.
    pub fn log_line(&mut self, level: LogLevel, mut message: String) {
        if self.lines.len() >= MAX_LOG_LINES {
            self.dropped_lines += 1;
            return;
        }
        truncate(&mut message, MAX_LOG_LINE_BYTES);
        let (plugin, tenant) = (&*self.label, &*self.tenant);
        match level {
            LogLevel::Debug => tracing::debug!(plugin, tenant, "plugin: {message}"),
            LogLevel::Info => tracing::info!(plugin, tenant, "plugin: {message}"),
            LogLevel::Warn => tracing::warn!(plugin, tenant, "plugin: {message}"),
            LogLevel::Error => tracing::error!(plugin, tenant, "plugin: {message}"),
        }
        self.lines.push(LogLine { level, message });
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_refused = Some(desired);
            return Err(wasmtime::format_err!(
                "memory limit reached: asked for {desired} bytes, the limit is {}",
                self.memory_limit
            ));
        }
        self.memory_bytes += desired.saturating_sub(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The clock a plugin sees: always the Unix epoch. Decisions take their time
/// from the request.
pub(super) struct EpochClock;

impl HostWallClock for EpochClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for EpochClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
