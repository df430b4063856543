//! The placement pass: the queue in order through the gates (budget,
//! quota), placement and preemption, and committing what it placed.

use super::*;

impl Engine {
    /// Keeps a submitted request in the window the workload mix is built from.
    pub(super) fn remember(&mut self, req: Request) {
        const WINDOW: usize = 2000;
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(req);
        self.since_mix += 1;
    }

    /// Rebuilds the workload mix from recent submissions now and then.
    pub(super) fn refresh_mix(&mut self) {
        const EVERY: usize = 64;
        let stale =
            self.since_mix >= EVERY || (self.placer.profile().mix.is_empty() && !self.recent.is_empty());
        if self.placer.profile().policy.uses_mix() && stale {
            let mix = WorkloadMix::from_requests(self.recent.iter(), 95);
            self.placer.set_mix(std::sync::Arc::new(mix));
            self.since_mix = 0;
        }
    }

    pub(super) fn placement_pass(&mut self) {
        self.refresh_mix();
        self.holdings.clear();
        let order: Vec<JobId> = self.queue.iter().collect();
        let mut searches = 0;
        for id in order {
            let Some(job) = self.jobs.get(&id) else { continue };
            if let Some(why) = self.budget_hold(&job.spec.tenant.clone()) {
                let job = self.jobs.get_mut(&id).expect("present");
                let reason = format!("held: tenant {} {why}", job.spec.tenant);
                if job.reason != reason {
                    job.reason = reason;
                    self.persist(id, &[]);
                }
                continue;
            }
            match self.quota_gate(id) {
                Gate::Go => {}
                Gate::Asked => continue,
                Gate::Wait(reason) => {
                    let job = self.jobs.get_mut(&id).expect("present");
                    if job.reason != reason {
                        job.reason = reason;
                        self.persist(id, &[]);
                    }
                    continue;
                }
                Gate::Deny(reason) => {
                    self.queue.remove(&id);
                    let now = self.clock.now();
                    let job = self.jobs.get_mut(&id).expect("present");
                    job.state = JobState::Failed;
                    job.reason = reason;
                    job.ended_at = Some(now);
                    info!(job = %id, "job denied by its quota plugin");
                    self.finish(id);
                    continue;
                }
            }
            let Some(job) = self.jobs.get(&id) else { continue };
            let request = Request::of(&job.spec);
            let priority = job.spec.priority;
            // A node being emptied for a preemptor takes nothing of lower
            // priority meanwhile, or the preemptor would find it full again.
            let reserved: HashMap<&str, i32> = self
                .nominations
                .iter()
                .filter(|(n, _)| **n != id)
                .map(|(_, n)| (n.node.as_str(), n.priority))
                .collect();
            let placed = self.placer.place_job(&self.cluster, &request, |_, node| {
                match reserved.get(node.name().as_str()) {
                    Some(&p) if p >= priority => Some(Rejection::NodeReserved),
                    _ => None,
                }
            });
            match placed {
                Ok(parts) => {
                    self.nominations.remove(&id);
                    self.commit_placement(id, parts)
                }
                Err(why) => {
                    let mut reason = why.explain(&job.spec.resources.gpu);
                    // Every victim gone and it still does not fit (the cluster
                    // changed meanwhile): plan afresh.
                    if self.nominations.get(&id).is_some_and(|n| n.victims.is_empty()) {
                        self.nominations.remove(&id);
                    }
                    if let Some(n) = self.nominations.get(&id) {
                        reason = format!(
                            "waiting for {} preempted job{} to stop on {}",
                            n.victims.len(),
                            if n.victims.len() == 1 { "" } else { "s" },
                            n.node
                        );
                    } else if why.has_shortage() && searches < PREEMPTION_SEARCHES_PER_PASS {
                        searches += 1;
                        if let Some(r) = self.try_preempt(id, &request, priority) {
                            reason = r;
                        }
                    }
                    let job = self.jobs.get_mut(&id).expect("present");
                    if job.reason != reason {
                        job.reason = reason;
                        self.persist(id, &[]);
                    }
                }
            }
        }
    }

    /// Asks the tenant's quota plugin, off the engine, whether a pending job
    /// may be placed now; places it only on an answer that stands (see
    /// `engine/quota.rs`). Other tenants' jobs are placed meanwhile, whatever
    /// the plugin does.
    pub(super) fn quota_gate(&mut self, id: JobId) -> Gate {
        let Some(policy) = self.policy.clone() else {
            return Gate::Go;
        };
        let tenant = self.jobs[&id].spec.tenant.clone();
        if !policy.bound(&tenant, ExtensionPoint::Quota) {
            self.quota.forget(id);
            return Gate::Go;
        }
        let now = self.clock.now();
        const WAITING: &str = "waiting for the quota plugin's answer";
        match self.quota.standing(id, now) {
            QuotaStanding::Unknown => {}
            QuotaStanding::Asking => return Gate::Wait(WAITING.into()),
            QuotaStanding::AfterEarlier => {
                return Gate::Wait(
                    "allowed by the quota plugin; placed after the tenant's earlier jobs".into(),
                );
            }
            QuotaStanding::Allowed => return Gate::Go,
            QuotaStanding::Held { by, reason } => {
                return Gate::Wait(format!("held by quota plugin {by}: {reason}"));
            }
            QuotaStanding::Denied { by, reason } => {
                return Gate::Deny(format!("denied by quota plugin {by}: {reason}"));
            }
            QuotaStanding::DeniedIfTheyStart { by, reason, counted } => {
                return Gate::Wait(format!(
                    "held by quota plugin {by}: {reason} (counting {counted} job{} of the tenant allowed before it; asked again once they start)",
                    if counted == 1 { "" } else { "s" }
                ));
            }
        }
        let Some(me) = self.me.as_ref().and_then(|w| w.upgrade()) else {
            return Gate::Wait(WAITING.into());
        };
        let assumed = self.quota.outstanding(&tenant, id);
        let input = self.quota_input(id, now, &assumed);
        let ask = self.quota.asking(id, tenant, assumed);
        self.fresh_asks += 1;
        tokio::spawn(async move {
            let outcome = policy.quota(&input).await;
            let _ = me
                .send(Command::QuotaVerdict {
                    job: id,
                    ask,
                    outcome,
                })
                .await;
        });
        Gate::Asked
    }

    /// What a quota plugin is told: the job, and what its tenant and each of
    /// its projects hold now and used this month. The jobs in `assumed`
    /// (allowed, not placed yet) count as running, holding their GPUs and
    /// the most GPU memory they could be given.
    pub(super) fn quota_input(&mut self, id: JobId, now: UnixMillis, assumed: &[JobId]) -> QuotaInput {
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
        if !self.holdings.contains_key(&tenant) {
            let held = self.held_now(&tenant);
            self.holdings.insert(tenant.clone(), held);
        }
        let (mut total, mut projects) = self.holdings[&tenant].clone();
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
                add_held(u, gpus, memory);
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
    pub(super) fn held_now(&self, tenant: &TenantName) -> (PolicyUsage, BTreeMap<ProjectName, PolicyUsage>) {
        let currency = self.config.rate_card.currency;
        let mut total = PolicyUsage::zero(currency);
        let mut projects: BTreeMap<ProjectName, PolicyUsage> = BTreeMap::new();
        for j in self.jobs.values().filter(|j| &j.spec.tenant == tenant) {
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
                    for l in self.leases.get(&j.id).into_iter().flatten() {
                        if l.state != LeaseState::Closed {
                            add_held(&mut total, l.device.share, l.device.gpu_memory);
                            add_held(p, l.device.share, l.device.gpu_memory);
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
    /// `BUDGET_RECHECK`; a budget only stops new jobs, so a little
    /// staleness lets at most a few more start.
    pub(super) fn budget_hold(&mut self, tenant: &TenantName) -> Option<String> {
        let budget = self.budgets.get(tenant)?;
        let now = self.clock.now();
        if let Some((at, why)) = self.budget_holds.get(tenant)
            && now.since(*at) < BUDGET_RECHECK
            && *at <= now
        {
            return why.clone();
        }
        let month = UsageQuery::month_to_date(tenant, now, vec![]);
        let why = match self.ledger.usage(&month, now) {
            Ok(rows) => Standing::assess(Some(budget), budget.currency, &rows, &[], now).exhausted,
            Err(e) => {
                // Fail closed: a budget that cannot be read holds the jobs.
                error!(%tenant, error = %e, "cannot read the tenant's usage for its budget");
                Some("cannot be checked against its budget (ledger error)".to_string())
            }
        };
        self.budget_holds.insert(tenant.clone(), (now, why.clone()));
        why
    }

    /// The running jobs preemption may consider, with their cost.
    pub(super) fn preemption_candidates(&self, now: UnixMillis) -> Vec<Candidate> {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.preempted_by.is_none())
            .map(|j| {
                let ran = j.started_at.map(|s| now.since(s)).unwrap_or_default();
                let guard = j
                    .spec
                    .min_runtime
                    .unwrap_or_default()
                    .max(self.config.min_runtime);
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

    /// Plans a preemption for a pending job and orders the victims stopped.
    /// Returns the job's new "why pending", if it preempts.
    pub(super) fn try_preempt(&mut self, id: JobId, request: &Request, priority: i32) -> Option<String> {
        let now = self.clock.now();
        let candidates = self.preemption_candidates(now);
        if !candidates.iter().any(|c| c.preemptible && c.priority < priority) {
            return None;
        }
        // A node another preemptor is emptying is not ours to take.
        let reserved: std::collections::HashSet<&NodeName> = self
            .nominations
            .iter()
            .filter(|(n, _)| **n != id)
            .map(|(_, n)| &n.node)
            .collect();
        let plan = preempt::plan(
            &self.cluster,
            request,
            priority,
            &candidates,
            self.placer.profile(),
            |node| reserved.contains(node.name()),
        )?;
        info!(
            job = %id,
            node = %plan.node,
            victims = plan.victims.len(),
            cost_gpu_s = plan.cost / 1_000_000_000,
            "preempting to make room"
        );
        for &victim in &plan.victims {
            let Some(v) = self.jobs.get_mut(&victim) else {
                continue;
            };
            v.preempted_by = Some(id);
            v.reason = format!("being preempted for job {id} (higher priority)");
            self.persist(victim, &[]);
            self.stop_parts(victim, StopReason::Preempted);
        }
        let reason = format!(
            "preempting {} job{} on {}",
            plan.victims.len(),
            if plan.victims.len() == 1 { "" } else { "s" },
            plan.node
        );
        self.nominations.insert(
            id,
            Nomination {
                node: plan.node,
                priority,
                victims: plan.victims,
            },
        );
        Some(reason)
    }

    /// A victim stopped: its attempt ends `PREEMPTED` (leases closed as
    /// preempted), and the job goes back to the queue at its old position.
    pub(super) fn preempted(&mut self, id: JobId, by: JobId) {
        let now = self.clock.now();
        if let Some(n) = self.nominations.get_mut(&by) {
            n.victims.retain(|v| *v != id);
        }
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.state = JobState::Preempted;
        job.reason = format!("preempted for job {by}");
        job.ended_at = Some(now);
        self.close_leases(id, JobState::Preempted, now);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        self.persist(id, &touched);
        info!(job = %id, by = %by, "job preempted; requeued");
        let job = self.jobs.get_mut(&id).expect("present");
        job.next_attempt();
        job.reason = format!("requeued after preemption for job {by}");
        self.queue.push(job);
        self.persist(id, &[]);
        self.leases.insert(id, Vec::new());
        self.needs_pass = true;
    }

    /// A job that lost a node and has retries left: its leases close as
    /// node-lost and it goes back to the queue at its old position.
    pub(super) fn requeue_lost(&mut self, id: JobId, why: String) {
        let now = self.clock.now();
        self.close_leases(id, JobState::NodeLost, now);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        // A preemption victim lost with its node has nothing left to stop.
        if let Some(by) = self.jobs.get(&id).and_then(|j| j.preempted_by)
            && let Some(n) = self.nominations.get_mut(&by)
        {
            n.victims.retain(|v| *v != id);
        }
        self.nominations.remove(&id);
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.node_lost_requeues += 1;
        job.reason = format!(
            "requeued after {why} (retry {} of {})",
            job.node_lost_requeues, job.spec.node_lost_retries
        );
        warn!(job = %id, retry = job.node_lost_requeues, "job lost a node; requeued");
        job.next_attempt();
        self.queue.push(job);
        self.persist(id, &touched);
        self.leases.insert(id, Vec::new());
        self.orphaned.retain(|(j, _), _| *j != id);
        self.last_seen.retain(|(j, _), _| *j != id);
        self.needs_pass = true;
    }

    /// Makes a placement real: allocates every part, writes the leases and
    /// the job (durable at this turn's flush), then orders each node to launch.
    pub(super) fn commit_placement(&mut self, id: JobId, parts: Vec<crate::domain::Placement>) {
        if let Some(tenant) = self.jobs.get(&id).map(|j| j.spec.tenant.clone()) {
            self.quota.placed(&tenant, id);
            self.holdings.remove(&tenant);
        }
        for (k, p) in parts.iter().enumerate() {
            if let Err(e) = self.cluster.allocate(id, p) {
                // The plan was made against this very cluster; refusing it means a bug.
                error!(job = %id, error = %e, "placement refused by the cluster model");
                for done in &parts[..k] {
                    self.cluster.release(id, done.node.as_str());
                }
                return;
            }
        }
        let now = self.clock.now();
        let job = self.jobs.get_mut(&id).expect("queued jobs are active");
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
        self.leases.insert(id, leases);
        self.queue.remove(&id);
        // Leases durable first (this turn's flush), then the agents hear of it.
        self.persist(id, &touched);
        info!(job = %id, nodes = %nodes.join(","), "job placed");
        for (node, order) in orders {
            self.effects
                .push(Effect::Order(node, AgentOrder::Launch(Box::new(order))));
        }
    }

    /// Frees what the job holds on every node.
    pub(super) fn release_all(&mut self, id: JobId) {
        let nodes: Vec<NodeName> = self
            .jobs
            .get(&id)
            .map(|j| j.nodes().cloned().collect())
            .unwrap_or_default();
        for n in nodes {
            self.cluster.release(id, n.as_str());
        }
        if let Some(tenant) = self.jobs.get(&id).map(|j| &j.spec.tenant) {
            self.quota.released(tenant);
            self.holdings.remove(tenant);
        }
    }

    /// Orders every part of the job that has not ended to stop.
    pub(super) fn stop_parts(&mut self, id: JobId, reason: StopReason) {
        self.stop_parts_with(id, reason, None);
    }

    /// The grace a stop of `job` waits between SIGTERM and SIGKILL: its
    /// own, never more than the server's limit (a job stored before the
    /// limit, or under a higher one, is held to it too).
    pub(super) fn grace_of(&self, job: &Job) -> Millis {
        job.spec.grace_period.min(self.config.max_grace)
    }

    /// Orders every part of the job that has not ended to stop, after
    /// `grace` (default: the job's own, capped by the server's limit).
    pub(super) fn stop_parts_with(&mut self, id: JobId, reason: StopReason, grace: Option<Millis>) {
        let Some(job) = self.jobs.get(&id) else { return };
        let attempt = job.attempt;
        let grace = grace.unwrap_or_else(|| self.grace_of(job));
        for node in job.live_nodes() {
            self.effects.push(Effect::Order(
                node,
                AgentOrder::Stop {
                    job: id,
                    attempt,
                    grace,
                    reason,
                },
            ));
        }
    }
}

/// Counts `gpus` and `memory` as held in `u`.
pub(super) fn add_held(u: &mut PolicyUsage, gpus: Share, memory: MiB) {
    u.gpus_held = u.gpus_held.checked_add(gpus).unwrap_or(u.gpus_held);
    u.gpu_memory_held = MiB(u.gpu_memory_held.0 + memory.0);
}

/// The most GPU memory `gpu` could be given on any node of `cluster`.
pub(super) fn most_gpu_memory(cluster: &Cluster, gpu: &GpuRequest) -> MiB {
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
