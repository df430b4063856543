//! Admission gates: what may keep a pending job from being placed, whatever
//! room there is. Each gate looks at one job and says go, wait (with the
//! job's "why pending"), asked (a plugin is being asked off the engine) or
//! deny (the job fails).

use super::{CycleState, Snapshot};
use crate::domain::{Job, JobId};
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
