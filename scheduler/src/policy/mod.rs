//! Policy plugins: tenant- and operator-supplied WebAssembly components that
//! decide admission, quota and pricing (see `plugins/` for the contract and
//! `docs/plugins.md` for the walk-through).
//!
//! - [`runtime`] is the sandbox: one engine, components checked and compiled
//!   once, calls on bounded instances kept per plugin and tenant.
//! - [`wit`] holds the bindings of every supported WIT version.
//! - [`PolicyHost`] (here) is what the scheduler calls: it keeps the
//!   registry of plugins and bindings (in the ledger, mirrored in memory),
//!   resolves which plugin applies to a tenant (its own binding, else the
//!   global one), runs the call off the async runtime under a concurrency
//!   bound, records failures, and applies the extension point's failure
//!   policy.
//!
//! ```text
//!   api (SubmitJob) ──admit──▶ PolicyHost ──spawn_blocking──▶ Sandbox::call ──▶ the tenant's kept instance, or a fresh one
//!   engine (later)  ──quota / price──▶   │ resolve: tenant binding, else global
//!                                        │ failure policy, error records
//! ```

pub mod config;
mod registry;
pub mod runtime;
mod tail;
#[cfg(test)]
mod tests;
pub mod types;
pub mod wit;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tracing::warn;

pub use self::config::{AdmissionOnError, PolicyConfig, PricingOnError, QuotaOnError};
use self::runtime::{CallReport, CallState, Loaded, Sandbox};
pub use self::types::*;
use self::wit::{CallError, Instance, RawAdmission, RawQuota};
use crate::domain::validate::{self, RESERVED_TAG_PREFIX, Violation, reserved_tags};
use crate::domain::{JobSpec, PluginName, TenantName, UnixMillis};
use crate::ledger::Ledger;

/// The tag a job modified by an admission plugin carries: the plugin, as
/// `<tenant>/<name>` or `global/<name>`.
pub const MODIFIED_BY_TAG: &str = "allot.admission/modified-by";
/// Failures kept per plugin for `allot plugin show`.
pub const RECENT_ERRORS: usize = 20;

use self::registry::Registry;
pub use self::registry::RegistryError;

struct Inner {
    sandbox: Sandbox,
    ledger: Ledger,
    /// The sandbox's compatibility key, the second half of artifact keys.
    engine_key: String,
    registry: RwLock<Registry>,
    /// Loaded plugins by SHA-256: each compiled once, one template each.
    cache: Mutex<HashMap<String, Arc<Loaded>>>,
    stats: Mutex<HashMap<PluginRef, PluginStats>>,
    /// Plugin calls running at once, over every tenant.
    permits: tokio::sync::Semaphore,
    /// Each tenant's own slots (`max_concurrent_calls_per_tenant`).
    tenant_permits: Mutex<HashMap<TenantName, Arc<TenantSlots>>>,
    /// Registry changes one at a time (an upload compiles while holding it).
    changes: tokio::sync::Mutex<()>,
    /// When each plugin's failure was last logged, and how many since.
    logged: Mutex<HashMap<PluginRef, (Option<std::time::Instant>, u64)>>,
}

/// One tenant's plugin slots, and how many of its calls in a row ran out
/// of their CPU budget.
struct TenantSlots {
    permits: Arc<tokio::sync::Semaphore>,
    timeouts: std::sync::atomic::AtomicU32,
}

/// The longest a timed-out call keeps its tenant's slot (see
/// [`PolicyHost::run`]).
pub const MAX_TIMEOUT_HOLD: Duration = Duration::from_secs(10);

/// How long a tenant's slot stays taken after a call that ran out of its
/// CPU budget, the `n`-th such call in a row: one budget, doubling with
/// each further one, at most [`MAX_TIMEOUT_HOLD`].
pub fn timeout_hold(budget: Duration, n: u32) -> Duration {
    budget
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(MAX_TIMEOUT_HOLD.max(budget))
}

/// A failing plugin is logged at most once per this (its failures are all
/// recorded and counted; the log says how many it left out).
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The plugin host the scheduler calls. Cheap to clone.
#[derive(Clone)]
pub struct PolicyHost {
    inner: Arc<Inner>,
}

/// What a resolved, finished call returned.
enum Invoked<R> {
    /// No plugin is bound at the point for the tenant.
    Unbound,
    Called {
        plugin: PluginRef,
        result: Result<R, PluginFailure>,
    },
}

impl PolicyHost {
    /// Starts the sandbox and loads the registry from the ledger. Plugins are
    /// compiled lazily, on their first call (or at upload).
    pub fn new(ledger: Ledger, config: &PolicyConfig) -> anyhow::Result<PolicyHost> {
        let sandbox = Sandbox::new(config)?;
        let mut registry = Registry::default();
        for p in ledger.plugins()? {
            registry.plugins.insert(p.plugin_ref(), p);
        }
        for b in ledger.plugin_bindings()? {
            registry.insert(b);
        }
        Ok(PolicyHost {
            inner: Arc::new(Inner {
                engine_key: sandbox.compatibility_key(),
                permits: tokio::sync::Semaphore::new(config.max_concurrent_calls),
                tenant_permits: Mutex::new(HashMap::new()),
                sandbox,
                ledger,
                registry: RwLock::new(registry),
                cache: Mutex::new(HashMap::new()),
                stats: Mutex::new(HashMap::new()),
                changes: tokio::sync::Mutex::new(()),
                logged: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        self.inner.sandbox.config()
    }

    /// Whether a plugin applies at `point` to `tenant`'s jobs, in either
    /// layer.
    pub fn bound(&self, tenant: &TenantName, point: ExtensionPoint) -> bool {
        let registry = self.registry();
        [Layer::Operator, Layer::Tenant]
            .into_iter()
            .any(|layer| registry.resolve(tenant, point, layer).is_some())
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    // --- decisions -----------------------------------------------------------

    /// Asks the admission plugins bound for the spec's tenant about a
    /// submission (validated already): the tenant's own first, then the
    /// operator's on what the tenant's made of it. A tenant's plugin can so
    /// only reject, or change the job into one the tenant could have
    /// submitted itself, which the operator's plugin then judges: it cannot
    /// grant what the operator's policy refuses.
    ///
    /// A modified spec comes back validated like a submission and tagged
    /// [`MODIFIED_BY_TAG`] (the plugins that modified it, in order); an
    /// invalid one rejects the job (the contract says so) and is recorded
    /// as the plugin's failure. Other failures follow `admission_on_error`.
    pub async fn admit(&self, spec: &JobSpec, now: UnixMillis) -> AdmissionOutcome {
        let mut current: Option<JobSpec> = None;
        let mut decided_by = DecidedBy::Default;
        for layer in [Layer::Tenant, Layer::Operator] {
            let outcome = self.admit_in(layer, current.as_ref().unwrap_or(spec), now).await;
            match outcome.decision {
                AdmissionDecision::Reject(_) => return outcome,
                AdmissionDecision::Modify(modified) => current = Some(*modified),
                AdmissionDecision::Accept => {}
            }
            if outcome.decided_by != DecidedBy::Default {
                decided_by = outcome.decided_by;
            }
        }
        Outcome {
            decision: match current {
                Some(modified) if &modified != spec => AdmissionDecision::Modify(Box::new(modified)),
                _ => AdmissionDecision::Accept,
            },
            decided_by,
        }
    }

    /// [`admit`](Self::admit) by the plugin of one layer.
    async fn admit_in(&self, layer: Layer, spec: &JobSpec, now: UnixMillis) -> AdmissionOutcome {
        let submitted = spec.clone();
        let invoked = self
            .invoke(
                &spec.tenant,
                ExtensionPoint::Admission,
                layer,
                move |b, store, max| b.admit(store, &submitted, now, max),
            )
            .await;
        let (plugin, result) = match invoked {
            Invoked::Unbound => return default_outcome(AdmissionDecision::Accept),
            Invoked::Called { plugin, result } => (plugin, result),
        };
        let raw = match result {
            Ok(raw) => raw,
            Err(failure) => {
                let decision = match self.config().admission_on_error {
                    AdmissionOnError::Reject => AdmissionDecision::Reject(format!(
                        "admission plugin {plugin} failed ({failure}); submissions are refused while it fails"
                    )),
                    AdmissionOnError::Accept => AdmissionDecision::Accept,
                };
                return failed(plugin, failure, decision);
            }
        };
        let decision = match raw {
            RawAdmission::Accept => AdmissionDecision::Accept,
            RawAdmission::Reject(message) => AdmissionDecision::Reject(message),
            RawAdmission::Modify(wire) => {
                // Validated as the tenant's own submission would be.
                let checked = validate::job_spec(&wire, spec.tenant.clone()).and_then(|modified| {
                    // The host's own tags (`allot.` keys) are the host's: a
                    // plugin may neither set nor drop them.
                    if reserved_tags(&modified) == reserved_tags(spec) {
                        Ok(modified)
                    } else {
                        Err(Violation {
                            field: "spec.tags",
                            description: format!("tags with the reserved prefix {RESERVED_TAG_PREFIX:?} are the server's; a plugin cannot set or remove them"),
                        })
                    }
                });
                match checked {
                    Ok(modified) if &modified == spec => AdmissionDecision::Accept,
                    Ok(mut modified) => {
                        let by = match spec.tags.get(MODIFIED_BY_TAG) {
                            Some(before) => format!("{before},{plugin}"),
                            None => plugin.to_string(),
                        };
                        modified.tags.insert(MODIFIED_BY_TAG.into(), by);
                        AdmissionDecision::Modify(Box::new(modified))
                    }
                    Err(e) => {
                        let failure = PluginFailure::new(
                            FailureKind::InvalidResult,
                            format!("returned an invalid job: {e}"),
                        );
                        self.record_failure(
                            &plugin,
                            spec.tenant.clone(),
                            ExtensionPoint::Admission,
                            &failure,
                        );
                        let decision = AdmissionDecision::Reject(format!(
                            "admission plugin {plugin} returned an invalid job ({e})"
                        ));
                        return failed(plugin, failure, decision);
                    }
                }
            }
        };
        Outcome {
            decision,
            decided_by: DecidedBy::Plugin(plugin),
        }
    }

    /// Asks the quota plugins bound for the job's tenant whether the job
    /// may be placed now: the operator's, then (when it allows) the
    /// tenant's own, which can only hold or deny more. Failures follow
    /// `quota_on_error` (hold by default).
    pub async fn quota(&self, input: &QuotaInput) -> QuotaOutcome {
        let operator = self.quota_in(Layer::Operator, input).await;
        if operator.decision != QuotaDecision::Allow {
            return operator;
        }
        let own = self.quota_in(Layer::Tenant, input).await;
        if own.decision == QuotaDecision::Allow && own.decided_by == DecidedBy::Default {
            return operator;
        }
        own
    }

    async fn quota_in(&self, layer: Layer, input: &QuotaInput) -> QuotaOutcome {
        let request = input.clone();
        let invoked = self
            .invoke(
                &input.job.tenant,
                ExtensionPoint::Quota,
                layer,
                move |b, store, max| b.check(store, &request, max),
            )
            .await;
        match invoked {
            Invoked::Unbound => default_outcome(QuotaDecision::Allow),
            Invoked::Called {
                plugin,
                result: Ok(raw),
            } => Outcome {
                decision: match raw {
                    RawQuota::Allow => QuotaDecision::Allow,
                    RawQuota::Deny(reason) => QuotaDecision::Deny(reason),
                    RawQuota::Hold(reason) => QuotaDecision::Hold(reason),
                },
                decided_by: DecidedBy::Plugin(plugin),
            },
            Invoked::Called {
                plugin,
                result: Err(failure),
            } => {
                let reason = format!("quota plugin {plugin} failed ({failure})");
                let decision = match self.config().quota_on_error {
                    QuotaOnError::Hold => QuotaDecision::Hold(format!("{reason}; the job waits for it")),
                    QuotaOnError::Deny => QuotaDecision::Deny(reason),
                    QuotaOnError::Allow => QuotaDecision::Allow,
                };
                failed(plugin, failure, decision)
            }
        }
    }

    /// The price of one hour piece of a lease that bills and counts against
    /// budgets: the operator's pricing plugin's (bound for the lease's
    /// tenant, else globally), else the list price. A tenant's own pricing
    /// plugin never sets it (see [`showback`](Self::showback)). A plugin's
    /// error, an answer out of range or any failure charges the list price
    /// (`pricing_on_error`).
    pub async fn price(&self, input: &PriceInput) -> PriceOutcome {
        self.price_in(Layer::Operator, input)
            .await
            .unwrap_or_else(|| default_outcome(input.list_price_minor))
    }

    /// The tenant's own pricing plugin's price of a piece (its internal
    /// chargeback to its projects), recorded beside the bill and never
    /// billed: `None` without one. Its failures fall back to the list price
    /// like the operator's.
    pub async fn showback(&self, input: &PriceInput) -> Option<PriceOutcome> {
        self.price_in(Layer::Tenant, input).await
    }

    async fn price_in(&self, layer: Layer, input: &PriceInput) -> Option<PriceOutcome> {
        let request = input.clone();
        let invoked = self
            .invoke(
                &input.tenant,
                ExtensionPoint::Pricing,
                layer,
                move |b, store, max| b.price(store, &request, max),
            )
            .await;
        let PricingOnError::ListPrice = self.config().pricing_on_error;
        let (plugin, result) = match invoked {
            Invoked::Unbound => return None,
            Invoked::Called { plugin, result } => (plugin, result),
        };
        let failure = match result {
            Ok(Ok(price)) => match self.config().max_price(input.list_price_minor) {
                max if price <= max => {
                    return Some(Outcome {
                        decision: price,
                        decided_by: DecidedBy::Plugin(plugin),
                    });
                }
                max => PluginFailure::new(
                    FailureKind::InvalidResult,
                    format!(
                        "priced a piece at {price} minor units, above the most a plugin may charge for it: {max} ({} × its list price of {})",
                        self.config().max_price_factor,
                        input.list_price_minor
                    ),
                ),
            },
            Ok(Err(message)) => PluginFailure::new(FailureKind::PluginError, message),
            Err(failure) => return Some(failed(plugin, failure, input.list_price_minor)),
        };
        self.record_failure(&plugin, input.tenant.clone(), ExtensionPoint::Pricing, &failure);
        Some(failed(plugin, failure, input.list_price_minor))
    }

    /// Resolves the plugin for `tenant` at `point` in `layer` and runs `call` on it, on
    /// a blocking thread, within the concurrency bound; counts the call and
    /// records a failure.
    async fn invoke<R: Send + 'static>(
        &self,
        tenant: &TenantName,
        point: ExtensionPoint,
        layer: Layer,
        call: impl Fn(&Instance, &mut wasmtime::Store<CallState>, usize) -> Result<R, CallError> + Send + 'static,
    ) -> Invoked<R> {
        let Some(record) = self.registry().resolve(tenant, point, layer).cloned() else {
            return Invoked::Unbound;
        };
        let plugin = record.plugin_ref();
        let started = std::time::Instant::now();
        let result = self.run(&record, tenant, call).await;
        let took = started.elapsed();
        // The host's congestion is not the plugin's failure.
        if let Err(failure) = &result
            && failure.kind != FailureKind::HostBusy
        {
            self.record_failure(&plugin, tenant.clone(), point, failure);
        }
        self.count_call(&plugin, took);
        Invoked::Called { plugin, result }
    }

    async fn run<R: Send + 'static>(
        &self,
        record: &PluginRecord,
        tenant: &TenantName,
        call: impl Fn(&Instance, &mut wasmtime::Store<CallState>, usize) -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, PluginFailure> {
        // A queue longer than a few budgets means every slot is stuck on
        // slow plugins: fail this call rather than wait without end. The
        // tenant's own slots first: a tenant whose plugin is slow or loops
        // waits on its own calls; then one of the host's, which no tenant
        // can hold more of than its own slots.
        let wait = (self.config().cpu_budget_duration() * 10).max(Duration::from_millis(500));
        let own = self.tenant_slots(tenant);
        let _own = tokio::time::timeout(wait, own.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                PluginFailure::new(
                    FailureKind::Busy,
                    format!(
                        "the tenant's {} plugin slots stayed busy with its own calls for {} ms",
                        self.config().max_concurrent_calls_per_tenant,
                        wait.as_millis()
                    ),
                )
            })?;
        let permit = tokio::time::timeout(wait, self.inner.permits.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                PluginFailure::new(
                    FailureKind::HostBusy,
                    format!(
                        "every plugin slot of the host stayed busy for {} ms",
                        wait.as_millis()
                    ),
                )
            })?;
        let host = self.clone();
        let plugin = record.plugin_ref();
        let record = record.clone();
        let label: Arc<str> = plugin.to_string().into();
        let tenant: Arc<str> = tenant.as_str().into();
        let report = tokio::task::spawn_blocking(move || -> Result<CallReport<R>, PluginFailure> {
            let loaded = host.load(&record)?;
            Ok(host.inner.sandbox.call(&loaded, label, tenant, call))
        })
        .await
        .map_err(|e| {
            PluginFailure::new(
                FailureKind::Trap,
                format!("the plugin call panicked the host thread: {e}"),
            )
        });
        drop(permit);
        // A call that ran out of its CPU budget keeps its tenant's slot
        // for as long again, doubling with each such call in a row (at most
        // MAX_TIMEOUT_HOLD): a tenant whose plugin loops burns a few percent
        // of a core per slot, not a core, and its other calls wait on its
        // own slots (a wait, not a flood of refusals). Even a lowest-
        // priority spinner costs the other tenants' tail latency on a small
        // machine, so the host bounds how much it runs, not only its
        // priority.
        use std::sync::atomic::Ordering;
        let timed_out =
            matches!(&report, Ok(Ok(r)) if r.result.as_ref().is_err_and(|f| f.kind == FailureKind::Timeout));
        if timed_out {
            let n = own.timeouts.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            tokio::time::sleep(timeout_hold(self.config().cpu_budget_duration(), n)).await;
        } else if matches!(&report, Ok(Ok(_))) {
            own.timeouts.store(0, Ordering::Relaxed);
        }
        let report = report??;
        if report.dropped_lines > 0 {
            warn!(
                %plugin,
                dropped = report.dropped_lines,
                "plugin logged more than {} lines in one call; the rest were dropped",
                runtime::MAX_LOG_LINES
            );
        }
        report.result
    }

    /// A tenant's own plugin slots.
    fn tenant_slots(&self, tenant: &TenantName) -> Arc<TenantSlots> {
        self.inner
            .tenant_permits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(TenantSlots {
                    permits: Arc::new(tokio::sync::Semaphore::new(
                        self.config().max_concurrent_calls_per_tenant,
                    )),
                    timeouts: Default::default(),
                })
            })
            .clone()
    }

    /// The loaded plugin for a record: from the cache, else from its stored
    /// artifact, else compiled again from its stored component (another
    /// engine version wrote the artifact). Blocking.
    fn load(&self, record: &PluginRecord) -> Result<Arc<Loaded>, PluginFailure> {
        let sha = &record.sha256;
        if let Some(loaded) = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sha)
        {
            return Ok(loaded.clone());
        }
        let unavailable = |what: String| PluginFailure::new(FailureKind::Instantiate, what);
        let ledger = &self.inner.ledger;
        let loaded = match ledger
            .plugin_artifact(sha, &self.inner.engine_key)
            .map_err(|e| unavailable(format!("cannot read the compiled plugin: {e}")))?
        {
            Some(artifact) => Arc::new(
                self.inner
                    .sandbox
                    .load_artifact(&artifact)
                    .map_err(|e| unavailable(e.to_string()))?,
            ),
            None => {
                let wasm = ledger
                    .plugin_blob(sha)
                    .map_err(|e| unavailable(format!("cannot read the plugin: {e}")))?
                    .ok_or_else(|| unavailable(format!("the component {sha} is missing from the ledger")))?;
                let validated = self
                    .inner
                    .sandbox
                    .validate(&wasm)
                    .map_err(|e| unavailable(format!("no longer loads: {e}")))?;
                ledger
                    .put_plugin_artifact(sha, &self.inner.engine_key, &validated.artifact)
                    .map_err(|e| unavailable(format!("cannot store the compiled plugin: {e}")))?;
                validated.plugin
            }
        };
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha.clone(), loaded.clone());
        Ok(loaded)
    }

    fn count_call(&self, plugin: &PluginRef, took: Duration) {
        let mut stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(plugin.clone()).or_default();
        s.calls += 1;
        s.record_latency(took);
    }

    fn record_failure(
        &self,
        plugin: &PluginRef,
        tenant: TenantName,
        point: ExtensionPoint,
        failure: &PluginFailure,
    ) {
        {
            let mut logged = self.inner.logged.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            let entry = logged.entry(plugin.clone()).or_insert((None, 0));
            if entry
                .0
                .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_INTERVAL)
            {
                let more = std::mem::take(&mut entry.1);
                entry.0 = Some(now);
                if more > 0 {
                    warn!(%plugin, %tenant, %point, kind = %failure.kind, "plugin call failed: {} (and {more} more failures in the last {}s, not logged)", failure.message, FAILURE_LOG_INTERVAL.as_secs());
                } else {
                    warn!(%plugin, %tenant, %point, kind = %failure.kind, "plugin call failed: {}", failure.message);
                }
            } else {
                entry.1 += 1;
            }
        }
        let sha256 = self
            .registry()
            .plugins
            .get(plugin)
            .map(|p| p.sha256.clone())
            .unwrap_or_default();
        let mut stats = self.inner.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(plugin.clone()).or_default();
        s.failures += 1;
        *s.failures_by_kind.entry(failure.kind).or_default() += 1;
        let mut recent: VecDeque<ErrorRecord> = std::mem::take(&mut s.recent_errors).into();
        if recent.len() >= RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(ErrorRecord {
            at: UnixMillis::now(),
            sha256,
            point,
            tenant,
            kind: failure.kind,
            message: failure.message.clone(),
        });
        s.recent_errors = recent.into();
    }
}

fn default_outcome<D>(decision: D) -> Outcome<D> {
    Outcome {
        decision,
        decided_by: DecidedBy::Default,
    }
}

fn failed<D>(plugin: PluginRef, failure: PluginFailure, decision: D) -> Outcome<D> {
    Outcome {
        decision,
        decided_by: DecidedBy::FailurePolicy { plugin, failure },
    }
}
