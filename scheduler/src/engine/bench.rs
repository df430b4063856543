//! One scheduling pass, for the benchmarks (`benches/pass.rs`): the pass
//! the engine runs, over jobs and a cluster a benchmark builds, without an
//! engine, a ledger or a clock (the same pass `allot sim --batch` replays,
//! through [`Replay`]). Not part of the API.

use super::replay::Replay;
use crate::domain::{Job, JobState, QueueDef, UnixMillis};
use crate::placement::{Cluster, Placer, Profile};

#[doc(hidden)]
pub struct PassBench {
    replay: Replay,
    placer: Placer,
    now: UnixMillis,
    pending: usize,
}

impl PassBench {
    /// `jobs`: pending ones, and placed ones (already allocated in the
    /// cluster the passes are given).
    pub fn new(
        jobs: Vec<Job>,
        queues: Vec<QueueDef>,
        profile: Profile,
        now: UnixMillis,
        depth: usize,
    ) -> Self {
        let mut replay = Replay::new(queues, depth);
        let pending = jobs.iter().filter(|j| j.state == JobState::Pending).count();
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| (j.spec.tenant.clone(), j.spec.project.clone()))
            .collect();
        replay.fairshare.refresh(keys.iter().map(|(t, p)| (t, p)));
        for j in jobs {
            replay.submit(j);
        }
        PassBench {
            replay,
            placer: Placer::new(profile),
            now,
            pending,
        }
    }

    /// How many jobs wait.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// One pass over `cluster` (changed: what it places is allocated);
    /// returns how many decisions it made.
    pub fn pass(&mut self, cluster: &mut Cluster) -> usize {
        self.replay
            .plan(cluster, &mut self.placer, self.now)
            .decisions
            .len()
    }
}
