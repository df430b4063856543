//! The order in which a pass considers pending jobs.

use super::Snapshot;
use std::cmp::Reverse;

use crate::domain::JobId;

/// The order a placement pass tries pending jobs in. A job that does not
/// fit does not stop the pass, so the order decides who gets a contested
/// device first, not who may start at all.
pub trait QueueOrder {
    fn order(&self, snapshot: &Snapshot<'_>) -> Vec<JobId>;
}

/// Highest queue tier first, then highest priority, then the tenant's
/// fair-share factor, then its project's inside it (the less a tenant used
/// of its share lately, the sooner), then oldest submission: Slurm's
/// multifactor order, with tier and priority as hard levels above fair share.
/// An array's tasks go in index order.
pub struct FairShareThenAge;

impl QueueOrder for FairShareThenAge {
    fn order(&self, snapshot: &Snapshot<'_>) -> Vec<JobId> {
        let fs = snapshot.fairshare;
        let mut keyed: Vec<_> = snapshot
            .pending
            .iter()
            .filter_map(|id| snapshot.jobs.get(&id))
            .map(|j| {
                let (t, p) = fs.key(&j.spec.tenant, &j.spec.project);
                let tier = snapshot.queues.tier(&j.spec);
                (
                    (
                        Reverse(tier),
                        Reverse(j.spec.priority),
                        Reverse(t),
                        Reverse(p),
                        j.submitted_at,
                        // An array's tasks share its submission time.
                        j.array_task.map_or(0, |t| t.index),
                    ),
                    j.id,
                )
            })
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, id)| id).collect()
    }
}

/// Highest queue tier first, then highest priority, then oldest submission
/// (a requeued job keeps its place): the pending jobs' own order.
#[cfg(test)]
pub struct PriorityThenAge;

#[cfg(test)]
impl QueueOrder for PriorityThenAge {
    fn order(&self, snapshot: &Snapshot<'_>) -> Vec<JobId> {
        snapshot.pending.iter().collect()
    }
}
