//! The pending queue: highest priority first, then oldest submission first.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::domain::{Job, JobId, UnixMillis};

type Key = (Reverse<i32>, UnixMillis, JobId);

/// Pending jobs in the order they are considered for placement. A job keeps
/// its submission time as its position, so a requeued job goes back where it was.
#[derive(Debug, Default)]
pub struct Queue {
    order: BTreeSet<Key>,
    keys: HashMap<JobId, Key>,
}

impl Queue {
    pub fn push(&mut self, job: &Job) {
        let key = (Reverse(job.spec.priority), job.submitted_at, job.id);
        if let Some(old) = self.keys.insert(job.id, key) {
            self.order.remove(&old);
        }
        self.order.insert(key);
    }

    pub fn remove(&mut self, id: &JobId) -> bool {
        match self.keys.remove(id) {
            Some(key) => self.order.remove(&key),
            None => false,
        }
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.keys.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Job ids in placement order.
    pub fn iter(&self) -> impl Iterator<Item = JobId> + '_ {
        self.order.iter().map(|(_, _, id)| *id)
    }
}
