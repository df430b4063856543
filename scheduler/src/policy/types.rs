//! The host's own types: what a plugin is asked and what it answers, in
//! plain Rust. Nothing here names wasmtime or a WIT version; the versioned
//! bindings (`wit/`) convert to and from these.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::money::{Currency, Money};
use crate::domain::{JobSpec, MiB, MigProfile, Millis, ProjectName, Share, TenantName, UnixMillis};

pub use crate::domain::plugin::{
    BindingRecord, ExtensionPoint, Layer, Owner, PluginRecord, PluginRef, WitVersion,
};

// --- requests: what a plugin is asked --------------------------------------

/// What a tenant, or one of its projects, holds now and has used in the
/// current period (the WIT record `usage` of world `quota`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// GPUs held now by starting and running jobs, exactly (a 1g MIG slice
    /// counts 1/7). May exceed 1.
    pub gpus_held: Share,
    /// GPU memory held now.
    pub gpu_memory_held: MiB,
    /// Jobs placed and not yet ended.
    pub running_jobs: u32,
    /// Jobs waiting to be placed, the one being checked included.
    pub pending_jobs: u32,
    /// GPU-time since the period's start, in GPU-milliseconds rounded down.
    pub gpu_ms_in_period: u64,
    /// What that GPU-time cost.
    pub spend_in_period: Money,
}

impl Usage {
    /// Nothing held, nothing used.
    pub fn zero(currency: Currency) -> Usage {
        Usage {
            gpus_held: Share::ZERO,
            gpu_memory_held: MiB(0),
            running_jobs: 0,
            pending_jobs: 0,
            gpu_ms_in_period: 0,
            spend_in_period: Money { minor: 0, currency },
        }
    }
}

/// A job about to be placed, and its tenant's usage (the WIT record
/// `quota-request`). The tenant and project are the job's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaInput {
    /// The job's validated spec.
    pub job: JobSpec,
    /// The GPUs the job will hold once placed, counted like
    /// [`Usage::gpus_held`] (zero for a CPU-only job).
    pub job_gpus: Share,
    /// The time of the check, by the controller's clock.
    pub now: UnixMillis,
    /// The start of the current period (00:00 UTC on the 1st of the month).
    pub period_start: UnixMillis,
    /// The whole tenant's usage.
    pub tenant_usage: Usage,
    /// Each of the tenant's projects with any usage or job; the job's own
    /// project must be present. Sent sorted by name.
    pub projects: BTreeMap<ProjectName, Usage>,
}

/// One piece of one lease within one UTC hour (the WIT record
/// `pricing-request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceInput {
    pub tenant: TenantName,
    pub project: ProjectName,
    /// The GPU's model, as `allot nodes` names it.
    pub gpu_model: String,
    /// The MIG profile when the device is a MIG slice.
    pub mig_profile: Option<MigProfile>,
    /// The share of the GPU held.
    pub share: Share,
    /// The start of the piece.
    pub start: UnixMillis,
    /// Its length; `start + duration` is at most the next whole UTC hour.
    pub duration: Millis,
    pub preemptible: bool,
    /// The job's tags.
    pub tags: BTreeMap<String, String>,
    /// The billing currency.
    pub currency: Currency,
    /// What the built-in rate card charges for the piece, in minor units:
    /// the fallback when the plugin fails.
    pub list_price_minor: u64,
    /// What the rate card charges for the piece before its preemptible
    /// discount (the list price when there is none).
    pub undiscounted_price_minor: u64,
}

// --- decisions: what a plugin answers --------------------------------------

/// An admission decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdmissionDecision {
    /// Queue the job as submitted.
    Accept,
    /// Refuse it, with the plugin's message for the user.
    Reject(String),
    /// Queue this spec instead: already validated like a submission.
    Modify(Box<JobSpec>),
}

/// A quota decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaDecision {
    /// Place the job if it fits.
    Allow,
    /// End the job without running it, with this reason.
    Deny(String),
    /// Keep it pending with this reason; ask again on a later pass.
    Hold(String),
}

/// Who made a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecidedBy {
    /// No plugin is bound at this point for the tenant: the built-in default
    /// (accept, allow, the list price).
    Default,
    /// The bound plugin decided.
    Plugin(PluginRef),
    /// The bound plugin failed; the point's failure policy decided. The
    /// failure is recorded against the plugin.
    FailurePolicy {
        plugin: PluginRef,
        failure: PluginFailure,
    },
}

impl DecidedBy {
    /// The plugin that was called, if any.
    pub fn plugin(&self) -> Option<&PluginRef> {
        match self {
            DecidedBy::Default => None,
            DecidedBy::Plugin(p) | DecidedBy::FailurePolicy { plugin: p, .. } => Some(p),
        }
    }
}

/// A decision and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<D> {
    pub decision: D,
    pub decided_by: DecidedBy,
}

/// The outcome of an admission call.
pub type AdmissionOutcome = Outcome<AdmissionDecision>;
/// The outcome of a quota call.
pub type QuotaOutcome = Outcome<QuotaDecision>;
/// The outcome of a pricing call: the price in minor units of the request's
/// currency.
pub type PriceOutcome = Outcome<u64>;

// --- failures ----------------------------------------------------------------

/// How a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// It trapped: a panic, `unreachable`, a stack overflow, a bad memory
    /// access.
    Trap,
    /// It ran past its CPU budget.
    Timeout,
    /// It asked for more memory than its limit.
    Memory,
    /// What it returned (or logged) was larger than allowed.
    Oversized,
    /// What it returned is not a valid answer (an invalid job, a zero
    /// denominator).
    InvalidResult,
    /// It returned an error of its own (a pricing plugin's `err`).
    PluginError,
    /// It could not be instantiated, or not loaded at all.
    Instantiate,
    /// The tenant's own plugin slots stayed busy (its own calls were slow)
    /// past the wait allowed.
    Busy,
    /// The host's plugin slots, shared by every tenant, stayed busy: not the
    /// plugin's failure, and not recorded against it (the failure policy
    /// still decides the call).
    HostBusy,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Oversized => "oversized",
            FailureKind::InvalidResult => "invalid_result",
            FailureKind::PluginError => "plugin_error",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Busy => "busy",
            FailureKind::HostBusy => "host_busy",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed plugin call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct PluginFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl PluginFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        PluginFailure {
            kind,
            message: message.into(),
        }
    }
}

/// One recorded failure, as `allot plugin show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    pub at: UnixMillis,
    /// The plugin's SHA-256 (hex) at the time.
    pub sha256: String,
    pub point: ExtensionPoint,
    /// The tenant whose job it ran for.
    pub tenant: TenantName,
    pub kind: FailureKind,
    pub message: String,
}

/// Counters and recent failures of one plugin since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginStats {
    pub calls: u64,
    pub failures: u64,
    /// Failures by kind, since the server started.
    pub failures_by_kind: BTreeMap<FailureKind, u64>,
    /// The most recent failures, newest last.
    pub recent_errors: Vec<ErrorRecord>,
    /// How long the most recent calls took ([`LATENCY_SAMPLES`] at most),
    /// in microseconds, waits for a slot included: what the caller waited.
    pub latencies_us: std::collections::VecDeque<u64>,
}

/// Calls whose latency a plugin's stats keep.
pub const LATENCY_SAMPLES: usize = 1024;

impl PluginStats {
    /// Records a call's latency, dropping the oldest past [`LATENCY_SAMPLES`].
    pub fn record_latency(&mut self, took: std::time::Duration) {
        if self.latencies_us.len() >= LATENCY_SAMPLES {
            self.latencies_us.pop_front();
        }
        self.latencies_us
            .push_back(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// The `q`-quantile (0 to 1) of the recent calls' latencies, in µs
    /// (nearest rank); `None` before any call.
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut sorted: Vec<u64> = self.latencies_us.iter().copied().collect();
        sorted.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}
