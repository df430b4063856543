//! Admission gates: what may keep a pending job from being placed, whatever
//! room there is. Each gate looks at one job and says go, wait (with the
//! job's "why pending"), asked (a plugin is being asked off the engine) or
//! deny (the job fails).

use super::{CycleState, Snapshot};
use crate::domain::dependency::Standing;
use crate::domain::{Job, JobId, JobState};
use crate::engine::model::QuotaStanding;

/// What a gate says about placing a job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Go,
    Wait(String),
    /// A quota plugin is to be asked (the engine sends the ask once the
    /// plan is applied). The answer usually comes within the turn, so the
    /// job's reason is written only if it still waits at a later pass.
    Asked(QuotaAsk),
    Deny(String),
    /// The job can never start (a dependency that cannot be met): it ends
    /// `DEPENDENCY_NEVER_SATISFIED`.
    Never(String),
}

/// An ask of a tenant's quota plugin about `job`, counting `assumed` (the
/// tenant's jobs allowed ahead, not placed yet) as held; `ask` is the id
/// its answer must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaAsk {
    pub job: JobId,
    pub ask: u64,
    pub assumed: Vec<JobId>,
}

/// One reason a pending job may have to wait. Gates run in order; the first
/// that does not say go decides.
pub trait Gate {
    fn check(&self, job: &Job, snapshot: &Snapshot<'_>, state: &mut CycleState<'_>) -> Verdict;
}

/// A job waits until its dependency is met, and ends when it never can be.
pub struct DependencyGate;

impl Gate for DependencyGate {
    fn check(&self, job: &Job, snapshot: &Snapshot<'_>, _: &mut CycleState<'_>) -> Verdict {
        dependency_verdict(job, snapshot.jobs, snapshot.deps)
    }
}

/// Where a job's dependency stands, from the active jobs and the final
/// states of ended ones (also what an array's tasks wait for).
pub fn dependency_verdict(
    job: &Job,
    jobs: &std::collections::HashMap<JobId, Job>,
    deps: &crate::engine::model::DependencyGraph,
) -> Verdict {
    let Some(dep) = &job.spec.dependency else {
        return Verdict::Go;
    };
    let state_of = |id: &JobId| jobs.get(id).map(|j| j.state).or_else(|| deps.ended_state(id));
    // Singleton: the earliest other active job of its tenant and name.
    let same_name = dep
        .has_singleton()
        .then(|| {
            jobs.values()
                .filter(|o| {
                    o.id != job.id
                        && o.spec.tenant == job.spec.tenant
                        && o.spec.name == job.spec.name
                        && !o.state.is_final()
                        // An array and its own tasks do not wait on each other.
                        && o.array_task.is_none_or(|t| t.array != job.id)
                        && job.array_task.is_none_or(|t| t.array != o.id)
                        && (o.state != JobState::Pending
                            || (o.submitted_at, o.id) < (job.submitted_at, job.id))
                })
                .min_by_key(|o| (o.submitted_at, o.id))
                .map(|o| (o.id, o.state))
        })
        .flatten();
    match dep.standing(state_of, same_name) {
        Standing::Met => Verdict::Go,
        Standing::Waiting(what) => Verdict::Wait(format!("waiting for {what}")),
        Standing::Never(why) => Verdict::Never(format!("dependency never satisfied: {why}")),
    }
}

/// A held job waits until it is released (`allot release`).
pub struct HoldGate;

impl Gate for HoldGate {
    fn check(&self, job: &Job, _: &Snapshot<'_>, _: &mut CycleState<'_>) -> Verdict {
        match &job.hold {
            Some(h) => Verdict::Wait(h.describe()),
            None => Verdict::Go,
        }
    }
}

/// A job waits while its queue is gone, or while its tenant holds what the
/// queue's per-tenant limits allow (GPUs, running jobs).
pub struct QueueGate;

impl Gate for QueueGate {
    fn check(&self, job: &Job, snapshot: &Snapshot<'_>, state: &mut CycleState<'_>) -> Verdict {
        match snapshot.queues.of(&job.spec) {
            None => Verdict::Wait(format!(
                "queue {} no longer exists; cancel the job and submit it to another",
                snapshot.queues.name_of(&job.spec)
            )),
            Some(queue) => match state.usage.over_limit(queue, &job.spec) {
                Some(why) => Verdict::Wait(why),
                None => Verdict::Go,
            },
        }
    }
}

/// A tenant whose monthly budget is spent gets no new placements.
pub struct BudgetGate;

impl Gate for BudgetGate {
    fn check(&self, job: &Job, snapshot: &Snapshot<'_>, _: &mut CycleState<'_>) -> Verdict {
        match snapshot.budget_holds.get(&job.spec.tenant) {
            Some(why) => Verdict::Wait(format!("held: tenant {} {why}", job.spec.tenant)),
            None => Verdict::Go,
        }
    }
}

/// A job of a tenant with a quota plugin is placed only on an answer that
/// stands (see `model/quota.rs`); other tenants' jobs are placed meanwhile,
/// whatever the plugin does.
pub struct QuotaGate;

const WAITING: &str = "waiting for the quota plugin's answer";

impl Gate for QuotaGate {
    fn check(&self, job: &Job, snapshot: &Snapshot<'_>, state: &mut CycleState<'_>) -> Verdict {
        let (id, tenant) = (job.id, &job.spec.tenant);
        if !snapshot.quota_bound.contains(tenant) {
            state.quota.forget(id);
            return Verdict::Go;
        }
        match state.quota.standing(id, snapshot.now) {
            QuotaStanding::Unknown => {}
            QuotaStanding::Asking => return Verdict::Wait(WAITING.into()),
            QuotaStanding::AfterEarlier => {
                return Verdict::Wait(
                    "allowed by the quota plugin; placed after the tenant's earlier jobs".into(),
                );
            }
            QuotaStanding::Allowed => return Verdict::Go,
            QuotaStanding::Held { by, reason } => {
                return Verdict::Wait(format!("held by quota plugin {by}: {reason}"));
            }
            QuotaStanding::Denied { by, reason } => {
                return Verdict::Deny(format!("denied by quota plugin {by}: {reason}"));
            }
            QuotaStanding::DeniedIfTheyStart { by, reason, counted } => {
                return Verdict::Wait(format!(
                    "held by quota plugin {by}: {reason} (counting {counted} job{} of the tenant allowed before it; asked again once they start)",
                    if counted == 1 { "" } else { "s" }
                ));
            }
        }
        if !snapshot.can_ask {
            return Verdict::Wait(WAITING.into());
        }
        let assumed = state.quota.outstanding(tenant, id);
        let ask = state.quota.asking(id, tenant.clone(), assumed.clone());
        Verdict::Asked(QuotaAsk {
            job: id,
            ask,
            assumed,
        })
    }
}
