//! One scheduling pass, for the benchmarks (`benches/pass.rs`): the pass
//! the engine runs, over jobs and a cluster a benchmark builds, without an
//! engine, a ledger or a clock. Not part of the API.

use std::collections::HashMap;

use super::cycle::{self, CycleState, Snapshot};
use super::model::{DependencyGraph, FairShare, Nominations, Pending, QueueUsage, Queues, QuotaBook};
use crate::domain::{Job, JobId, JobState, Millis, QueueDef, UnixMillis};
use crate::placement::{Cluster, Placer, Profile};

#[doc(hidden)]
pub struct PassBench {
    jobs: HashMap<JobId, Job>,
    pending: Pending,
    queues: Queues,
    deps: DependencyGraph,
    fairshare: FairShare,
    placer: Placer,
    now: UnixMillis,
    depth: usize,
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
        let queues = Queues::new(Vec::new(), queues).expect("valid queues");
        let mut pending = Pending::default();
        for j in jobs.iter().filter(|j| j.state == JobState::Pending) {
            pending.push(j, queues.tier(&j.spec));
        }
        let mut fairshare = FairShare::default();
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| (j.spec.tenant.clone(), j.spec.project.clone()))
            .collect();
        fairshare.refresh(keys.iter().map(|(t, p)| (t, p)));
        PassBench {
            jobs: jobs.into_iter().map(|j| (j.id, j)).collect(),
            pending,
            queues,
            deps: DependencyGraph::default(),
            fairshare,
            placer: Placer::new(profile),
            now,
            depth,
        }
    }

    /// How many jobs wait.
    pub fn pending(&self) -> usize {
        self.pending.iter().count()
    }

    /// One pass over `cluster` (changed: what it places is allocated);
    /// returns how many decisions it made.
    pub fn pass(&mut self, cluster: &mut Cluster) -> usize {
        let snapshot = Snapshot {
            now: self.now,
            jobs: &self.jobs,
            pending: &self.pending,
            queues: &self.queues,
            deps: &self.deps,
            fairshare: &self.fairshare,
            min_runtime: Millis::ZERO,
            budget_holds: HashMap::new(),
            quota_bound: Default::default(),
            can_ask: false,
            backfill_depth: self.depth,
        };
        let mut quota = QuotaBook::default();
        let mut nominations = Nominations::default();
        let mut state = CycleState {
            cluster,
            placer: &mut self.placer,
            quota: &mut quota,
            nominations: &mut nominations,
            usage: QueueUsage::count(&self.queues, self.jobs.values()),
        };
        cycle::plan(&snapshot, &mut state).decisions.len()
    }
}
