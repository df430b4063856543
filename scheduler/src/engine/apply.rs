//! Makes a pass's plan real. `placement_pass` works out what the pass
//! reads (budget standings, which tenants have a quota plugin), runs the
//! pure `cycle::plan` over the engine's state, and applies its decisions in
//! the order they were made: each changed job (and its new leases) is
//! written to the ledger for this turn's flush, and agent orders, quota
//! asks and events are queued as effects, so none goes out before it is
//! durable.
//!
//! Commands other than the pass (submit, cancel, agent reports) are still
//! applied where they are handled, in `state/`. Every write, theirs and
//! the pass's, is a `batch::Change` written through the turn's `Batch`.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracing::{error, info, warn};

use super::cycle::{self, CycleState, Decision, Plan, QuotaAsk, Snapshot};
use super::model::{Known, QueueUsage};
use super::state::{Effect, Engine};
use super::{AgentOrder, Command, LaunchOrder, StopReason};
use crate::accounting::budget::Standing;
use crate::accounting::usage::{Dimension, UsageQuery};
use crate::domain::{
    GpuRequest, JobId, JobState, Lease, LeaseId, LeaseState, MiB, Millis, NodeName, ProjectName, Share,
    TenantName, UnixMillis,
};
use crate::placement::{Cluster, GpuMode};
use crate::policy::types::{ExtensionPoint, QuotaInput, Usage as PolicyUsage};

/// How long a tenant's GPU-time and spend this month, read from the ledger
/// for its quota plugin, are used before they are read again: a read goes
/// over the leases of the current hour, so one per ask would grow with the
/// hour's jobs. (An answer stands for up to `quota::FRESH` anyway.)
const QUOTA_USAGE_FRESH: Millis = Millis::from_secs(1);

impl Engine {
    /// One placement pass: arrays' next tasks split off, a plan over the
    /// engine's state, the plan applied; again while arrays have whole
    /// batches taken (a few rounds at most: the next turn goes on).
    pub(super) fn placement_pass(&mut self) {
        for round in 0..super::state::ARRAY_ROUNDS {
            let split = self.split_arrays();
            if round > 0 && split == 0 {
                return;
            }
            self.plan_pass();
        }
        // Batches still growing: another pass next turn.
        self.needs_pass = true;
    }

    fn plan_pass(&mut self) {
        self.refresh_mix();
        let now = self.clock.now();
        self.refresh_fairshare();
        let (budget_holds, quota_bound) = self.gate_inputs(now);
        let snapshot = Snapshot {
            now,
            jobs: self.jobs.by_id(),
            pending: &self.pending,
            queues: &self.queues,
            deps: &self.deps,
            fairshare: &self.fairshare,
            min_runtime: self.config.min_runtime,
            budget_holds,
            quota_bound,
            can_ask: self.to_self.as_ref().is_some_and(|w| w.strong_count() > 0),
            backfill_depth: self.config.backfill_depth,
        };
        let mut state = CycleState {
            cluster: &mut self.cluster,
            placer: &mut self.placer,
            quota: &mut self.quota,
            nominations: &mut self.nominations,
            usage: QueueUsage::count(&self.queues, self.jobs.iter()),
        };
        let plan = cycle::plan(&snapshot, &mut state);
        self.apply_plan(plan);
    }

    /// What the gates read, worked out at `now` for the tenants with pending
    /// jobs: whose budget is spent, and who has a quota plugin bound.
    fn gate_inputs(&mut self, now: UnixMillis) -> (HashMap<TenantName, String>, HashSet<TenantName>) {
        let mut holds = HashMap::new();
        let mut bound = HashSet::new();
        if self.budgets.is_empty() && self.policy.is_none() {
            return (holds, bound);
        }
        let mut seen: HashSet<&TenantName> = HashSet::new();
        let tenants: Vec<TenantName> = self
            .pending
            .iter()
            .filter_map(|id| self.jobs.get(&id))
            .map(|j| &j.spec.tenant)
            .filter(|t| seen.insert(*t))
            .cloned()
            .collect();
        for tenant in tenants {
            if let Some(policy) = &self.policy
                && policy.bound(&tenant, ExtensionPoint::Quota)
            {
                bound.insert(tenant.clone());
            }
            if let Some(why) = self.budget_hold(&tenant, now) {
                holds.insert(tenant, why);
            }
        }
        (holds, bound)
    }

    /// Applies a pass's decisions, in order.
    pub(super) fn apply_plan(&mut self, plan: Plan) {
        self.held_this_pass.clear();
        for decision in plan.decisions {
            match decision {
                Decision::Place { job, parts } => self.commit_placement(job, parts),
                Decision::Wait {
                    job,
                    reason,
                    expected_start,
                } => {
                    if let Some(j) = self.jobs.get_mut(&job)
                        && (j.reason != reason || j.expected_start != expected_start)
                    {
                        j.reason = reason;
                        j.expected_start = expected_start;
                        self.persist(job, &[]);
                    }
                }
                Decision::Deny { job, state, reason } => {
                    self.pending.remove(&job);
                    let now = self.clock.now();
                    let Some(j) = self.jobs.get_mut(&job) else {
                        continue;
                    };
                    j.state = state;
                    j.reason = reason;
                    j.ended_at = Some(now);
                    info!(%job, %state, reason = %j.reason, "job ended by a gate without running");
                    self.finish(job);
                }
                Decision::Preempt {
                    job,
                    victims,
                    reclaim,
                    ..
                } => {
                    for victim in victims {
                        let Some(v) = self.jobs.get_mut(&victim) else {
                            continue;
                        };
                        v.preempted_by = Some(job);
                        v.reason = if reclaim {
                            format!(
                                "being preempted for job {job} (fair-share reclaim: its tenant is under its share, {} over)",
                                v.spec.tenant
                            )
                        } else {
                            format!("being preempted for job {job} (higher priority)")
                        };
                        self.persist(victim, &[]);
                        self.stop_parts(victim, StopReason::Preempted);
                    }
                }
                Decision::Ask(ask) => self.send_ask(ask),
            }
        }
    }

    /// Asks the tenant's quota plugin, off the engine, about a pending job;
    /// the answer comes back as a command.
    fn send_ask(&mut self, QuotaAsk { job, ask, assumed }: QuotaAsk) {
        let (Some(policy), Some(me)) = (
            self.policy.clone(),
            self.to_self.as_ref().and_then(|w| w.upgrade()),
        ) else {
            // Every handle is gone: the engine is stopping.
            self.quota.forget(job);
            return;
        };
        let now = self.clock.now();
        let input = self.quota_input(job, now, &assumed);
        self.asks_this_turn += 1;
        tokio::spawn(async move {
            let outcome = policy.quota(&input).await;
            let _ = me.send(Command::QuotaVerdict { job, ask, outcome }).await;
        });
    }

    /// What a quota plugin is told: the job, and what its tenant and each of
    /// its projects hold now and used this month. The jobs in `assumed`
    /// (allowed, not placed yet) count as running, holding their GPUs and
    /// the most GPU memory they could be given.
    fn quota_input(&mut self, id: JobId, now: UnixMillis, assumed: &[JobId]) -> QuotaInput {
        let tenant = self.jobs[&id].spec.tenant.clone();
        let read_at = self.month_usage.get(&tenant).map(|(at, _)| *at);
        if read_at.is_none_or(|at| {
            now.since(at) >= QUOTA_USAGE_FRESH || at > now || at.month_start() != now.month_start()
        }) {
            let month = UsageQuery::month_to_date(&tenant, now, vec![Dimension::Project]);
            let rows = self.ledger.usage(&month, now).unwrap_or_else(|e| {
                warn!(%tenant, error = %e, "cannot read the tenant's usage for its quota plugin");
                Vec::new()
            });
            self.month_usage.insert(tenant.clone(), (now, rows));
        }
        if !self.held_this_pass.contains_key(&tenant) {
            let held = self.tenant_holdings(&tenant);
            self.held_this_pass.insert(tenant.clone(), held);
        }
        let (mut total, mut projects) = self.held_this_pass[&tenant].clone();
        let job = &self.jobs[&id];
        let currency = self.config.rate_card.currency;
        projects
            .entry(job.spec.project.clone())
            .or_insert_with(|| PolicyUsage::zero(currency));
        for j in assumed.iter().filter_map(|a| self.jobs.get(a)) {
            if j.state != JobState::Pending {
                continue;
            }
            let gpus = j.spec.resources.gpu.gpus();
            let memory = most_gpu_memory(&self.cluster, &j.spec.resources.gpu);
            let p = projects
                .entry(j.spec.project.clone())
                .or_insert_with(|| PolicyUsage::zero(currency));
            for u in [&mut total, p] {
                u.pending_jobs = u.pending_jobs.saturating_sub(1);
                u.running_jobs += 1;
                count_held(u, gpus, memory);
            }
        }
        for r in &self.month_usage[&tenant].1 {
            let Some(project) = r.keys.first().and_then(|k| k.parse::<ProjectName>().ok()) else {
                continue;
            };
            let p = projects
                .entry(project)
                .or_insert_with(|| PolicyUsage::zero(currency));
            for u in [p, &mut total] {
                u.gpu_ms_in_period += r.gpu_time.gpu_ms_floor() as u64;
                if r.currency == currency {
                    u.spend_in_period.minor = u
                        .spend_in_period
                        .minor
                        .saturating_add(crate::accounting::minor_of(r.cost_micros));
                }
            }
        }
        QuotaInput {
            job: job.spec.clone(),
            job_gpus: job.spec.resources.gpu.gpus(),
            now,
            period_start: now.month_start(),
            tenant_usage: total,
            projects,
        }
    }

    /// What a tenant and each of its projects hold now (starting and
    /// running jobs, their open leases) and how many jobs wait: one walk over
    /// the active jobs, kept for the pass until the tenant's holdings change.
    fn tenant_holdings(&self, tenant: &TenantName) -> (PolicyUsage, BTreeMap<ProjectName, PolicyUsage>) {
        let currency = self.config.rate_card.currency;
        let mut total = PolicyUsage::zero(currency);
        let mut projects: BTreeMap<ProjectName, PolicyUsage> = BTreeMap::new();
        for j in self.jobs.of_tenant(tenant) {
            let p = projects
                .entry(j.spec.project.clone())
                .or_insert_with(|| PolicyUsage::zero(currency));
            match j.state {
                JobState::Pending => {
                    total.pending_jobs += 1;
                    p.pending_jobs += 1;
                }
                JobState::Starting | JobState::Running => {
                    total.running_jobs += 1;
                    p.running_jobs += 1;
                    for l in self.jobs.leases(&j.id) {
                        if l.state != LeaseState::Closed {
                            count_held(&mut total, l.device.share, l.device.gpu_memory);
                            count_held(p, l.device.share, l.device.gpu_memory);
                        }
                    }
                }
                _ => {}
            }
        }
        (total, projects)
    }

    /// Why a tenant gets no new placements: its monthly budget is spent.
    /// Worked out from the ledger's roll-ups at most every
    /// `BUDGET_RECHECK` (see `model/tenants.rs`).
    fn budget_hold(&mut self, tenant: &TenantName, now: UnixMillis) -> Option<String> {
        let budget = match self.budgets.known(tenant, now) {
            Known::NoBudget => return None,
            Known::Fresh(why) => return why.map(str::to_string),
            Known::Stale(budget) => budget,
        };
        let month = UsageQuery::month_to_date(tenant, now, vec![]);
        let why = match self.ledger.usage(&month, now) {
            Ok(rows) => Standing::assess(Some(budget), budget.currency, &rows, &[], now).exhausted,
            Err(e) => {
                // Fail closed: a budget that cannot be read holds the jobs.
                error!(%tenant, error = %e, "cannot read the tenant's usage for its budget");
                Some("cannot be checked against its budget (ledger error)".to_string())
            }
        };
        self.budgets.worked_out(tenant, now, why.clone());
        why
    }

    /// Makes a placement real (its parts are allocated in the cluster mirror
    /// by the pass): writes the leases and the job (durable at this turn's
    /// flush), then orders each node to launch.
    fn commit_placement(&mut self, id: JobId, parts: Vec<crate::domain::Placement>) {
        if let Some(tenant) = self.jobs.get(&id).map(|j| &j.spec.tenant) {
            self.held_this_pass.remove(tenant);
        }
        // It waits on nothing any more.
        self.deps.done_waiting(id);
        let now = self.clock.now();
        let job = self.jobs.get_mut(&id).expect("queued jobs are active");
        job.expected_start = None;
        let leases: Vec<Lease> = parts
            .iter()
            .flat_map(|p| p.devices.iter().map(move |d| (p, d)))
            .map(|(p, d)| Lease {
                rate: Some(self.config.rate_card.rate_for(&d.gpu_model, job.spec.preemptible)),
                tags: job.spec.tags.clone(),
                id: LeaseId::new_v7(),
                job_id: id,
                attempt: job.attempt,
                tenant: job.spec.tenant.clone(),
                project: job.spec.project.clone(),
                node: p.node.clone(),
                device: d.clone(),
                state: LeaseState::Reserved,
                reserved_at: now,
                started_at: None,
                ended_at: None,
                end_reason: None,
                agent_runtime: None,
                idle: None,
                plugin_prices: None,
            })
            .collect();
        let nodes: Vec<String> = parts.iter().map(|p| p.node.to_string()).collect();
        job.state = JobState::Starting;
        job.reason = format!("starting on {}", nodes.join(", "));
        job.lease_ids.extend(leases.iter().map(|l| l.id));
        job.unplace();
        job.placements = parts.clone();
        let orders: Vec<(NodeName, LaunchOrder)> = parts
            .iter()
            .enumerate()
            .map(|(rank, p)| {
                let lease_ids = leases
                    .iter()
                    .filter(|l| l.node == p.node)
                    .map(|l| l.id.to_string())
                    .collect();
                (
                    p.node.clone(),
                    LaunchOrder {
                        job: id,
                        attempt: job.attempt,
                        spec: job.spec.clone(),
                        devices: p.devices.clone(),
                        lease_ids,
                        nodes: nodes.clone(),
                        rank: rank as u32,
                    },
                )
            })
            .collect();
        let touched: Vec<LeaseId> = leases.iter().map(|l| l.id).collect();
        self.jobs.set_leases(&id, leases);
        self.pending.remove(&id);
        // Leases durable first (this turn's flush), then the agents hear of it.
        self.persist(id, &touched);
        info!(job = %id, nodes = %nodes.join(","), "job placed");
        for (node, order) in orders {
            self.effects
                .push(Effect::Order(node, AgentOrder::Launch(Box::new(order))));
        }
    }
}

/// Counts `gpus` and `memory` as held in `u`.
fn count_held(u: &mut PolicyUsage, gpus: Share, memory: MiB) {
    u.gpus_held = u.gpus_held.checked_add(gpus).unwrap_or(u.gpus_held);
    u.gpu_memory_held = MiB(u.gpu_memory_held.0 + memory.0);
}

/// The most GPU memory `gpu` could be given on any node of `cluster`.
fn most_gpu_memory(cluster: &Cluster, gpu: &GpuRequest) -> MiB {
    let gpus = || cluster.nodes().iter().flat_map(|n| &n.inventory.gpus);
    let largest = gpus().map(|g| g.memory).max().unwrap_or(MiB(0));
    match gpu {
        GpuRequest::None => MiB(0),
        GpuRequest::Whole(n) => MiB(largest.0 * u64::from(n.get())),
        GpuRequest::Fraction { memory: Some(m), .. } => *m,
        GpuRequest::Fraction { share, memory: None } => {
            MiB((u128::from(largest.0) * u128::from(share.numerator()))
                .div_ceil(u128::from(share.denominator())) as u64)
        }
        GpuRequest::Mig(profile) => gpus()
            .flat_map(|g| match &g.mode {
                GpuMode::Mig { slices } => slices.as_slice(),
                GpuMode::Whole { .. } => &[],
            })
            .filter(|s| &s.profile == profile)
            .map(|s| s.memory)
            .max()
            .unwrap_or(largest),
    }
}
