//! The order in which a pass considers pending jobs.

use super::Snapshot;
use crate::domain::JobId;

/// The order a placement pass tries pending jobs in. A job that does not
/// fit does not stop the pass, so the order decides who gets a contested
/// device first, not who may start at all.
pub trait QueueOrder {
    fn order(&self, snapshot: &Snapshot<'_>) -> Vec<JobId>;
}

/// Highest queue tier first, then highest priority, then oldest submission
/// (a requeued job keeps its place): the pending jobs' own order.
pub struct PriorityThenAge;

impl QueueOrder for PriorityThenAge {
    fn order(&self, snapshot: &Snapshot<'_>) -> Vec<JobId> {
        snapshot.pending.iter().collect()
    }
}
