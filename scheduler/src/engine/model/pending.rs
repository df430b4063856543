//! The pending jobs' order: highest queue tier first, then highest
//! priority, then oldest submission.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::domain::{Job, JobId, UnixMillis};

/// Tier, priority, submission time, then (for an array's tasks, which share
/// the array's submission time) the task's index.
type Key = (Reverse<i32>, Reverse<i32>, UnixMillis, u32, JobId);

/// Pending jobs in the order they are considered for placement. A job keeps
/// its submission time as its position, so a requeued job goes back where it was.
#[derive(Debug, Default)]
pub struct Pending {
    order: BTreeSet<Key>,
    keys: HashMap<JobId, Key>,
}

impl Pending {
    /// Puts a job in its place, given its queue's tier (or moves it there).
    /// An array's own record never waits here: its tasks do.
    pub fn push(&mut self, job: &Job, tier: i32) {
        if job.is_array() {
            return;
        }
        let key = (
            Reverse(tier),
            Reverse(job.spec.priority),
            job.submitted_at,
            job.array_task.map_or(0, |t| t.index),
            job.id,
        );
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

    #[cfg(test)]
    pub fn contains(&self, id: &JobId) -> bool {
        self.keys.contains_key(id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Job ids in placement order.
    pub fn iter(&self) -> impl Iterator<Item = JobId> + '_ {
        self.order.iter().map(|(_, _, _, _, id)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(priority: i32, submitted: u64) -> Job {
        let mut j = Job::for_tests(JobId::new_v7());
        j.spec.priority = priority;
        j.submitted_at = UnixMillis(submitted);
        j
    }

    #[test]
    fn higher_tier_then_priority_then_older_and_a_requeued_job_keeps_its_place() {
        let (old, new, urgent) = (job(0, 10), job(0, 20), job(5, 30));
        let mut q = Pending::default();
        for j in [&new, &urgent, &old] {
            q.push(j, 0);
        }
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![urgent.id, old.id, new.id]);
        // Taken out (placed) and pushed back (requeued): the same place.
        assert!(q.remove(&old.id) && !q.contains(&old.id));
        assert!(!q.remove(&old.id), "a second remove finds nothing");
        q.push(&old, 0);
        q.push(&old, 0);
        assert_eq!(q.len(), 3, "a push of a queued job moves it, never doubles it");
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![urgent.id, old.id, new.id]);
        // A changed priority moves it.
        let mut demoted = urgent.clone();
        demoted.spec.priority = -1;
        q.push(&demoted, 0);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![old.id, new.id, urgent.id]);
        assert!(!q.is_empty());
        // A higher tier goes first, whatever the priority.
        q.push(&new, 1);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![new.id, old.id, urgent.id]);
    }
}
