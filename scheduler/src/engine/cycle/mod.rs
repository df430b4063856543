//! The scheduling pass, as a function of what the engine holds:
//! `plan(&Snapshot, &mut CycleState) -> Plan`.
//!
//! The pass takes the pending jobs in the queue order ([`QueueOrder`]),
//! puts each through the admission gates ([`Gate`]: hold, dependency, queue, budget, quota), then
//! places it with `placement/` or, when it does not fit for a shortage,
//! plans a preemption. It reads no clock (the snapshot's `now` is the
//! pass's time), does no I/O and sends nothing: what it decides comes back
//! as a [`Plan`], in queue order, which `engine/apply.rs` makes durable and
//! tells. What the pass must change as it goes, so that later jobs in the
//! same pass see it, is in the [`CycleState`]: the cluster mirror (a job
//! placed takes its devices), the quota book (an ask counts the asks made
//! before it; a placement makes answers that did not count it fall) and
//! the nominations (a node being emptied is reserved).
//!
//! The same commands and the same snapshot give the same plan, which is
//! what the tests below check without an engine.

mod backfill;
mod gates;
mod order;

use std::collections::{HashMap, HashSet};

use tracing::error;

pub use backfill::{Backfill, DEFAULT_DEPTH as DEFAULT_BACKFILL_DEPTH};
pub use gates::{
    BudgetGate, DependencyGate, Gate, HoldGate, QueueGate, QuotaAsk, QuotaGate, Verdict, dependency_verdict,
};
#[cfg(test)]
pub use order::PriorityThenAge;
pub use order::{FairShareThenAge, QueueOrder};

use super::model::{
    DependencyGraph, FairShare, Nomination, Nominations, Pending, QueueUsage, Queues, QuotaBook,
};
use crate::domain::{Job, JobId, JobState, Millis, NodeName, Placement, TenantName, UnixMillis};
use crate::placement::preempt::{self, Candidate};
use crate::placement::{Cluster, MICRO, Placer, Rejection, Request, Unplaceable};

/// Preemption searches per placement pass, at most: each scans the cluster.
pub const PREEMPTION_SEARCHES_PER_PASS: usize = 4;

/// What a pass reads: the engine's jobs and queue as they stand, and what
/// was worked out for it beforehand.
pub struct Snapshot<'a> {
    /// The pass's time.
    pub now: UnixMillis,
    /// The active jobs.
    pub jobs: &'a HashMap<JobId, Job>,
    /// The pending jobs, in order.
    pub pending: &'a Pending,
    pub queues: &'a Queues,
    /// Who waits on whom, and how ended jobs waited on ended.
    pub deps: &'a DependencyGraph,
    /// Tenants' and projects' fair-share factors.
    pub fairshare: &'a FairShare,
    /// The server's minimum runtime before a job may be preempted.
    pub min_runtime: Millis,
    /// Tenants whose monthly budget is spent, with why.
    pub budget_holds: HashMap<TenantName, String>,
    /// Tenants with a quota plugin bound.
    pub quota_bound: HashSet<TenantName>,
    /// Whether a plugin's answer can come back to the engine.
    pub can_ask: bool,
    /// How many top jobs that cannot start get a reservation (0: none).
    pub backfill_depth: usize,
}

/// What a pass changes as it goes (see the module's documentation).
pub struct CycleState<'a> {
    pub cluster: &'a mut Cluster,
    pub placer: &'a mut Placer,
    pub quota: &'a mut QuotaBook,
    pub nominations: &'a mut Nominations,
    /// What each tenant holds in each queue (for its per-tenant limits).
    pub usage: QueueUsage,
}

/// What a pass decided, in the order it decided it.
#[derive(Debug, Default)]
pub struct Plan {
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Place the job: its parts are allocated in the cluster mirror already.
    Place { job: JobId, parts: Vec<Placement> },
    /// The job waits, for a reason other than the one it shows; with a
    /// backfill reservation, from when it is expected to start.
    Wait {
        job: JobId,
        reason: String,
        expected_start: Option<UnixMillis>,
    },
    /// A gate denied the job: it ends in `state` (`FAILED`, or
    /// `DEPENDENCY_NEVER_SATISFIED`) without running.
    Deny {
        job: JobId,
        state: JobState,
        reason: String,
    },
    /// Stop `victims` to make room on `node` for `job` (nominated already);
    /// `reclaim`: for fair share (the job's tenant under its share, the
    /// victims' over theirs), not for priority.
    Preempt {
        job: JobId,
        node: NodeName,
        victims: Vec<JobId>,
        reclaim: bool,
    },
    /// Ask the job's quota plugin (recorded in the quota book already).
    Ask(QuotaAsk),
}

impl Plan {
    fn wait(&mut self, job: &Job, reason: String) {
        self.wait_until(job, reason, None);
    }

    fn wait_until(&mut self, job: &Job, reason: String, expected_start: Option<UnixMillis>) {
        if job.reason != reason || job.expected_start != expected_start {
            self.decisions.push(Decision::Wait {
                job: job.id,
                reason,
                expected_start,
            });
        }
    }
}

/// The pass with today's queue order and gates: tier, priority, fair
/// share, age; a
/// hold, dependencies, the queue (it exists, the tenant's limits in it), budget, then quota.
pub fn plan(snapshot: &Snapshot<'_>, state: &mut CycleState<'_>) -> Plan {
    plan_with(
        &FairShareThenAge,
        &[&HoldGate, &DependencyGate, &QueueGate, &BudgetGate, &QuotaGate],
        snapshot,
        state,
    )
}

/// The pass with a given queue order and gates.
pub fn plan_with(
    order: &dyn QueueOrder,
    gates: &[&dyn Gate],
    snapshot: &Snapshot<'_>,
    state: &mut CycleState<'_>,
) -> Plan {
    let mut plan = Plan::default();
    let mut searches = 0;
    // Jobs chosen as victims in this pass: not to be chosen again.
    let mut victims: HashSet<JobId> = HashSet::new();
    let mut backfill = Backfill::new(snapshot, snapshot.backfill_depth);
    let mut failed = Failed::default();
    'jobs: for id in order.order(snapshot) {
        let Some(job) = snapshot.jobs.get(&id) else {
            continue;
        };
        for gate in gates {
            match gate.check(job, snapshot, state) {
                Verdict::Go => {}
                Verdict::Wait(reason) => {
                    plan.wait(job, reason);
                    continue 'jobs;
                }
                Verdict::Asked(ask) => {
                    plan.decisions.push(Decision::Ask(ask));
                    continue 'jobs;
                }
                Verdict::Deny(reason) => {
                    let state = JobState::Failed;
                    plan.decisions.push(Decision::Deny {
                        job: id,
                        state,
                        reason,
                    });
                    continue 'jobs;
                }
                Verdict::Never(reason) => {
                    let state = JobState::DependencyNeverSatisfied;
                    plan.decisions.push(Decision::Deny {
                        job: id,
                        state,
                        reason,
                    });
                    continue 'jobs;
                }
            }
        }
        let mut request = Request::of(&job.spec);
        if let Some(queue) = snapshot.queues.of(&job.spec) {
            // The queue's nodes and GPU models, on top of the job's own.
            for (k, v) in &queue.node_labels {
                request.node_labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            request.gpu_models = queue.models_for(&request.gpu_models);
        }
        let priority = job.spec.priority;
        let nominations = &*state.nominations;
        // When its time limit ends it at the latest (never, without one).
        let end = job.spec.time_limit.map(|l| snapshot.now.plus(l));
        let reserved = &backfill;
        // A node being emptied for a preemptor takes nothing of lower
        // priority meanwhile, or the preemptor would find it full again;
        // a node reserved for a job ahead takes only what ends before.
        // Within a pass free resources only shrink and vetoes only grow, so
        // a request that failed for a job ending no later and ranking no
        // lower fails again: its answer is reused (a preemptor's own
        // nomination aside).
        let nominated = state.nominations.get(&id).is_some();
        let known = (!nominated)
            .then(|| failed.known(&request, end, priority))
            .flatten();
        let placed = match known {
            Some(why) => Err(why),
            None => state.placer.place_job(state.cluster, &request, |_, node| {
                nominations
                    .reserved_against(node.name(), id, priority)
                    .then_some(Rejection::NodeReserved)
                    .or_else(|| reserved.veto(node.name(), id, end))
            }),
        };
        if let Err(why) = &placed
            && !nominated
        {
            failed.note(&request, end, priority, why);
        }
        match placed {
            Ok(parts) => {
                if allocate(state.cluster, id, &parts) {
                    backfill.placed(id, end, &parts);
                    state.nominations.remove(&id);
                    state.quota.placed(&job.spec.tenant, id);
                    state.usage.placed(snapshot.queues.name_of(&job.spec), &job.spec);
                    plan.decisions.push(Decision::Place { job: id, parts });
                }
            }
            Err(why) => {
                let mut reason = why.explain(&job.spec.resources.gpu);
                // Every victim gone and it still does not fit (the cluster
                // changed meanwhile): plan afresh.
                if state.nominations.get(&id).is_some_and(|n| n.victims.is_empty()) {
                    state.nominations.remove(&id);
                }
                if let Some(n) = state.nominations.get(&id) {
                    reason = format!(
                        "waiting for {} preempted job{} to stop on {}",
                        n.victims.len(),
                        if n.victims.len() == 1 { "" } else { "s" },
                        n.node
                    );
                } else if why.has_shortage() && searches < PREEMPTION_SEARCHES_PER_PASS {
                    searches += 1;
                    if let Some((n, reclaim)) = preemption(job, &request, snapshot, state, &victims) {
                        reason = format!(
                            "preempting {} job{} on {}",
                            n.victims.len(),
                            if n.victims.len() == 1 { "" } else { "s" },
                            n.node
                        );
                        victims.extend(n.victims.iter().copied());
                        plan.decisions.push(Decision::Preempt {
                            job: id,
                            node: n.node.clone(),
                            victims: n.victims.clone(),
                            reclaim,
                        });
                        state.nominations.insert(id, n);
                    }
                }
                if state.nominations.get(&id).is_none()
                    && why.is_resolvable()
                    && let Some(r) = backfill.reserve(id, state.cluster, state.placer, &request)
                {
                    let at = r.at;
                    let nodes: Vec<&str> = r.nodes.iter().map(NodeName::as_str).collect();
                    reason = format!(
                        "{reason}; expected to start by {at} (backfill reservation on {})",
                        nodes.join(",")
                    );
                    plan.wait_until(job, reason, Some(at));
                    continue 'jobs;
                }
                plan.wait(job, reason);
            }
        }
    }
    plan
}

/// Requests that did not fit in this pass: for each, the (end, priority)
/// of the jobs that asked, with why. A job with the same request that ends
/// no earlier (no limit: never) and ranks no higher cannot fit either.
#[derive(Default)]
struct Failed {
    by_request: HashMap<Request, Vec<(Option<UnixMillis>, i32, Unplaceable)>>,
}

impl Failed {
    fn known(&self, request: &Request, end: Option<UnixMillis>, priority: i32) -> Option<Unplaceable> {
        let later = |e: Option<UnixMillis>| match (end, e) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a >= b,
        };
        self.by_request
            .get(request)?
            .iter()
            .find(|(e, p, _)| later(*e) && priority <= *p)
            .map(|(_, _, why)| why.clone())
    }

    fn note(&mut self, request: &Request, end: Option<UnixMillis>, priority: i32, why: &Unplaceable) {
        let seen = self.by_request.entry(request.clone()).or_default();
        // A few kinds per request are plenty; more only cost the lookups.
        if seen.len() < 8 && !seen.iter().any(|(e, p, _)| *e == end && *p == priority) {
            seen.push((end, priority, why.clone()));
        }
    }
}

/// Allocates every part of a placement in the cluster, or none.
fn allocate(cluster: &mut Cluster, id: JobId, parts: &[Placement]) -> bool {
    for (k, p) in parts.iter().enumerate() {
        if let Err(e) = cluster.allocate(id, p) {
            // The plan was made against this very cluster; refusing it means a bug.
            error!(job = %id, error = %e, "placement refused by the cluster model");
            for done in &parts[..k] {
                cluster.release(id, done.node.as_str());
            }
            return false;
        }
    }
    true
}

/// The cheapest preemption that makes room for `job`, if any, and whether
/// it reclaims for fair share: with reclaim on and the job's tenant under
/// its share, the preemptible jobs of tenants over their share count as
/// of lower priority whatever theirs (Kueue's fair-sharing preemption).
fn preemption(
    job: &Job,
    request: &Request,
    snapshot: &Snapshot<'_>,
    state: &CycleState<'_>,
    taken: &HashSet<JobId>,
) -> Option<(Nomination, bool)> {
    let priority = job.spec.priority;
    let fs = snapshot.fairshare;
    let reclaim = fs.config.reclaim && fs.under_share(&job.spec.tenant);
    let mut candidates = preemption_candidates(snapshot, taken);
    let mut reclaimable = HashSet::new();
    if reclaim {
        for c in candidates.iter_mut() {
            let Some(j) = snapshot.jobs.get(&c.job) else {
                continue;
            };
            if c.preemptible && c.priority >= priority && fs.over_share(&j.spec.tenant) {
                c.priority = i32::MIN;
                reclaimable.insert(c.job);
            }
        }
    }
    if !candidates.iter().any(|c| c.preemptible && c.priority < priority) {
        return None;
    }
    // A node another preemptor is emptying is not ours to take.
    let plan = preempt::plan(
        state.cluster,
        request,
        priority,
        &candidates,
        state.placer.profile(),
        |node| state.nominations.taken_by_other(node.name(), job.id),
    )?;
    tracing::info!(
        job = %job.id,
        node = %plan.node,
        victims = plan.victims.len(),
        cost_gpu_s = plan.cost / 1_000_000_000,
        "preempting to make room"
    );
    let reclaims = plan.victims.iter().any(|v| reclaimable.contains(v));
    Some((
        Nomination {
            node: plan.node,
            // A node emptied to reclaim is held against every other job,
            // the victims' higher priorities too (or they would take it back).
            priority: if reclaims { i32::MAX } else { priority },
            victims: plan.victims,
        },
        reclaims,
    ))
}

/// The running jobs preemption may consider, with their cost: GPU share ×
/// milliseconds since their last checkpoint. Jobs being stopped for a
/// preemptor already (or chosen in this pass) are not among them.
pub fn preemption_candidates(snapshot: &Snapshot<'_>, taken: &HashSet<JobId>) -> Vec<Candidate> {
    let now = snapshot.now;
    snapshot
        .jobs
        .values()
        .filter(|j| j.state == JobState::Running && j.preempted_by.is_none() && !taken.contains(&j.id))
        .map(|j| {
            let ran = j.started_at.map(|s| now.since(s)).unwrap_or_default();
            let guard = j.spec.min_runtime.unwrap_or_default().max(snapshot.min_runtime);
            let lost = match j.spec.checkpoint_interval {
                Some(every) if every.0 > 0 => ran.0 % every.0,
                _ => ran.0,
            };
            let share: u64 = j
                .placements
                .iter()
                .flat_map(|p| p.devices.iter())
                .map(|d| (d.share.numerator() * MICRO as u64).div_ceil(d.share.denominator()))
                .sum();
            Candidate {
                job: j.id,
                priority: j.spec.priority,
                preemptible: j.spec.preemptible,
                protected: ran < guard,
                cost: lost.saturating_mul(share.max(1)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
