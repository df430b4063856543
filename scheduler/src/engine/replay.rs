//! The scheduling pass over a replayed trace, for `allot sim --mode batch`:
//! the engine's own `cycle::plan` (queue order, gates, placement, backfill
//! reservations), over jobs and a cluster the simulator keeps, without an
//! engine, a ledger or a clock. Not part of the API.

use std::collections::HashMap;

use super::cycle::{self, CycleState, Decision, Snapshot};
use super::model::{DependencyGraph, FairShare, Nominations, Pending, QueueUsage, Queues, QuotaBook};
use crate::domain::{Job, JobId, JobState, Millis, Placement, ProjectName, QueueDef, TenantName, UnixMillis};
use crate::placement::{Cluster, Placer};

#[doc(hidden)]
pub struct Replay {
    pub(super) jobs: HashMap<JobId, Job>,
    pending: Pending,
    queues: Queues,
    deps: DependencyGraph,
    pub(super) fairshare: FairShare,
    depth: usize,
}

impl Replay {
    /// `backfill_depth` 0: no backfill. Fair share orders by the usage
    /// given to [`Replay::usage`] (none given: priority, then age).
    pub fn new(queues: Vec<QueueDef>, backfill_depth: usize) -> Self {
        Replay {
            jobs: HashMap::new(),
            pending: Pending::default(),
            queues: Queues::new(Vec::new(), queues).expect("valid queues"),
            deps: DependencyGraph::default(),
            fairshare: FairShare::default(),
            depth: backfill_depth,
        }
    }

    /// A job arrives: pending, or placed already (then allocated in the
    /// cluster the passes are given).
    pub fn submit(&mut self, job: Job) {
        if job.state == JobState::Pending {
            self.pending.push(&job, self.queues.tier(&job.spec));
        }
        self.jobs.insert(job.id, job);
    }

    /// Decayed GPU-hours by tenant and project now.
    pub fn usage(&mut self, usage: HashMap<(TenantName, ProjectName), f64>, now: UnixMillis) {
        self.fairshare.took_decayed(usage, now);
    }

    /// One pass at `now`: the jobs it placed (allocated in `cluster`
    /// already, and running from `now`).
    pub fn pass(&mut self, cluster: &mut Cluster, placer: &mut Placer, now: UnixMillis) -> Vec<JobId> {
        let keys: Vec<(TenantName, ProjectName)> = self
            .pending
            .iter()
            .filter_map(|id| self.jobs.get(&id))
            .map(|j| (j.spec.tenant.clone(), j.spec.project.clone()))
            .collect();
        self.fairshare.refresh(keys.iter().map(|(t, p)| (t, p)));
        let plan = self.plan(cluster, placer, now);
        let mut placed = Vec::new();
        for d in plan.decisions {
            if let Decision::Place { job, parts } = d {
                self.start(job, parts, now);
                placed.push(job);
            }
        }
        placed
    }

    /// The pass's plan at `now` over the jobs as they stand (what it places
    /// is allocated in `cluster`; the jobs are not changed).
    pub(super) fn plan(&self, cluster: &mut Cluster, placer: &mut Placer, now: UnixMillis) -> cycle::Plan {
        let snapshot = Snapshot {
            now,
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
            placer,
            quota: &mut quota,
            nominations: &mut nominations,
            usage: QueueUsage::count(&self.queues, self.jobs.values()),
        };
        cycle::plan(&snapshot, &mut state)
    }

    fn start(&mut self, id: JobId, parts: Vec<Placement>, now: UnixMillis) {
        self.pending.remove(&id);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.state = JobState::Running;
            j.started_at = Some(now);
            j.placements = parts;
        }
    }

    /// A running job ends: gone from the replay, its devices freed in
    /// `cluster`.
    pub fn end(&mut self, id: JobId, cluster: &mut Cluster) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        for p in &job.placements {
            cluster.release(id, p.node.as_str());
        }
        self.pending.remove(&id);
        Some(job)
    }

    /// Pending jobs, in the pending order (tier, priority, age).
    pub fn pending(&self) -> Vec<JobId> {
        self.pending.iter().collect()
    }

    /// Places a pending job outside a pass (for a baseline that places by
    /// its own rules).
    pub fn started(&mut self, id: JobId, parts: Vec<Placement>, now: UnixMillis) {
        self.start(id, parts, now);
    }

    pub fn job(&self, id: &JobId) -> Option<&Job> {
        self.jobs.get(id)
    }
}
