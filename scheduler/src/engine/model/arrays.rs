//! Job arrays in the engine: for each array not ended, how many of its
//! tasks are split off and not ended (`live`, for the `%N` throttle), and
//! the last batch split off with the size of the next. The array's own
//! record (its spec and [`ArrayProgress`]) is an active job like any other;
//! this is what is worked out again from the tasks at start.
//!
//! Tasks are split off in batches that grow while the cluster takes them
//! all (1, 8, 64, 512) and shrink to one when some of a batch wait: a
//! cluster with room starts an array's tasks within a few passes, a full
//! one holds a pending task or two per array (Slurm keeps one record for
//! the pending rest; so do we, on disk and in memory).
//!
//! [`ArrayProgress`]: crate::domain::array::ArrayProgress

use std::collections::HashMap;

use crate::domain::JobId;

/// The largest batch split off one array in one round.
pub const MAX_BATCH: u32 = 512;
/// How much a batch grows after one the cluster took whole.
const GROWTH: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayRun {
    /// Tasks split off and not ended.
    pub live: u64,
    /// The last batch split off.
    pub batch: Vec<JobId>,
    /// How many to split off next, once the last batch is placed.
    pub window: u32,
}

impl Default for ArrayRun {
    fn default() -> Self {
        ArrayRun {
            live: 0,
            batch: Vec::new(),
            window: 1,
        }
    }
}

impl ArrayRun {
    /// How many tasks to split off now, given how many of the last batch
    /// still wait and the throttle: the window while the cluster keeps up
    /// (which then grows), none while some of the last batch wait (and the
    /// window starts again at one).
    pub fn next_batch(&mut self, still_waiting: usize, throttle: Option<u32>, unsplit: u64) -> u64 {
        if still_waiting > 0 {
            self.window = 1;
            return 0;
        }
        let room = match throttle {
            Some(t) => u64::from(t).saturating_sub(self.live),
            None => u64::MAX,
        };
        let n = u64::from(self.window).min(room).min(unsplit);
        if n > 0 && n == u64::from(self.window) {
            self.window = (self.window * GROWTH).min(MAX_BATCH);
        }
        n
    }
}

/// The arrays not ended, by id.
#[derive(Debug, Default)]
pub struct Arrays {
    runs: HashMap<JobId, ArrayRun>,
}

impl Arrays {
    pub fn insert(&mut self, id: JobId) {
        self.runs.entry(id).or_default();
    }

    pub fn remove(&mut self, id: &JobId) {
        self.runs.remove(id);
    }

    pub fn get_mut(&mut self, id: &JobId) -> Option<&mut ArrayRun> {
        self.runs.get_mut(id)
    }

    pub fn get(&self, id: &JobId) -> Option<&ArrayRun> {
        self.runs.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The arrays' ids, in id (submission) order.
    pub fn ids(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.runs.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The array `task` belongs to (by its id alone), and the task's index.
    pub fn owner_of(&self, task: &JobId) -> Option<(JobId, u32)> {
        self.runs.keys().find_map(|a| task.task_index(a).map(|i| (*a, i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_grow_while_taken_whole_and_start_over_when_some_wait() {
        let mut r = ArrayRun::default();
        assert_eq!(r.next_batch(0, None, 10_000), 1);
        assert_eq!(r.next_batch(0, None, 10_000), 8);
        assert_eq!(r.next_batch(0, None, 10_000), 64);
        assert_eq!(r.next_batch(0, None, 10_000), 512);
        assert_eq!(r.next_batch(0, None, 10_000), 512, "capped");
        assert_eq!(r.next_batch(3, None, 10_000), 0, "some of the last wait");
        assert_eq!(r.next_batch(0, None, 10_000), 1, "and it starts over");
        assert_eq!(r.next_batch(0, None, 5), 5, "no more than are left");
    }

    #[test]
    fn the_throttle_counts_live_tasks() {
        let mut r = ArrayRun {
            live: 6,
            window: 64,
            ..ArrayRun::default()
        };
        assert_eq!(r.next_batch(0, Some(8), 100), 2);
        r.live = 8;
        assert_eq!(r.next_batch(0, Some(8), 100), 0);
    }

    #[test]
    fn a_task_is_found_by_its_id_alone() {
        let mut arrays = Arrays::default();
        let (a, b) = (JobId::new_v7(), JobId::new_v7());
        arrays.insert(a);
        arrays.insert(b);
        assert_eq!(arrays.owner_of(&b.task(41)), Some((b, 41)));
        assert_eq!(arrays.owner_of(&a), None);
        assert_eq!(arrays.owner_of(&JobId::new_v7()), None);
    }
}
