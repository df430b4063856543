//! A job's life in the engine: submission, cancellation, its end, its
//! leases' closing and pricing, and requeueing.

use super::*;

impl Engine {
    pub(in crate::engine) fn submit(
        &mut self,
        mut spec: JobSpec,
        request: Option<SubmitKey>,
        hold: bool,
    ) -> EngineResult<JobId> {
        let now = self.clock.now();
        // A retry of a submission already taken: the job it created (its
        // reply waits for the same flush as the first, if that is still on
        // its way to disk).
        if let Some(key) = &request
            && let Some(r) = self
                .requests
                .get(&(spec.tenant.clone(), key.request_id.clone()))
                .filter(|r| now.since(r.at) < REQUEST_ID_TTL)
        {
            if r.fingerprint != key.fingerprint {
                return Err(EngineError::RequestReused(format!(
                    "{} was used within the last day for a different submission (job {}); use a new request id",
                    crate::domain::validate::quote(&key.request_id),
                    r.job
                )));
            }
            info!(job = %r.job, request = %key.request_id, "submission retried; returning the job it created");
            return Ok(r.job);
        }
        self.check_array(&spec)?;
        self.take_into_queue(&mut spec)?;
        let mut job = Job::submitted(spec, now);
        arrays::array_record(&mut job);
        if hold {
            let h = crate::domain::Hold {
                by_admin: false,
                reason: "submitted held".into(),
            };
            job.reason = h.describe();
            job.hold = Some(h);
        }
        let id = job.id;
        self.take_dependency(&job)?;
        info!(job = %id, tenant = %job.spec.tenant, name = %job.spec.name, "job submitted");
        let record = request.map(|key| RequestRecord {
            tenant: job.spec.tenant.clone(),
            request_id: key.request_id,
            job: id,
            fingerprint: key.fingerprint,
            at: now,
        });
        self.note_submission(Request::of(&job.spec));
        self.pending.push(&job, self.queues.tier(&job.spec));
        // The job and its key in one transaction: a retry finds the job
        // exactly when the job exists.
        let _ = self.batch.write(Change::Job {
            job: &job,
            leases: &[],
            request: record.as_ref(),
        });
        self.effects.push(Effect::Event(Box::new(job.clone())));
        if let Some(r) = record {
            self.requests.insert((r.tenant.clone(), r.request_id.clone()), r);
        }
        if job.is_array() {
            self.arrays.insert(id);
        }
        self.jobs.admit(job, Vec::new());
        self.needs_pass = true;
        Ok(id)
    }

    /// Forgets idempotency keys older than a day (at most once a minute).
    pub(in crate::engine) fn expire_requests(&mut self, now: UnixMillis) {
        if now.since(self.requests_swept) < Millis::from_secs(60) {
            return;
        }
        self.requests_swept = now;
        let expired: Vec<RequestRecord> = self
            .requests
            .values()
            .filter(|r| now.since(r.at) >= REQUEST_ID_TTL)
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        for r in &expired {
            self.requests.remove(&(r.tenant.clone(), r.request_id.clone()));
        }
        let _ = self.batch.write(Change::ForgetRequests(&expired));
    }

    pub(in crate::engine) fn cancel(&mut self, id: JobId, reason: &str, force: bool) -> EngineResult<()> {
        if !self.jobs.contains(&id) {
            self.split_out(id);
        }
        if self.jobs.get(&id).is_some_and(|j| j.is_array()) {
            self.cancel_array(id, reason, force);
            return Ok(());
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return match self.ledger.get_job(&id) {
                Ok(Some(j)) => Err(EngineError::FailedPrecondition(format!(
                    "job {id} has already ended ({})",
                    j.state
                ))),
                Ok(None) => Err(EngineError::NotFound(format!("job {id}"))),
                Err(e) => Err(EngineError::Internal(e.to_string())),
            };
        };
        let why = if reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            format!("cancelled: {reason}")
        };
        match job.state {
            JobState::Pending => {
                self.pending.remove(&id);
                job.state = JobState::Cancelled;
                job.reason = why;
                job.ended_at = Some(self.clock.now());
                self.finish(id);
                info!(job = %id, "pending job cancelled");
            }
            _ if force => {
                // SIGKILL now, whether or not a stop is under way.
                job.cancel_requested = true;
                job.cancel_forced = true;
                job.reason = format!("{why}; killing (forced)");
                self.persist(id, &[]);
                self.stop_parts_with(id, StopReason::Cancelled, Some(Millis::ZERO));
                info!(job = %id, "forced cancel: killing the job");
            }
            _ => {
                if !job.cancel_requested {
                    job.cancel_requested = true;
                    job.reason = format!("{why}; stopping");
                    self.persist(id, &[]);
                    self.stop_parts(id, StopReason::Cancelled);
                    info!(job = %id, "cancel requested; stopping the job");
                }
            }
        }
        Ok(())
    }

    pub(in crate::engine) fn job_snapshot(&self, id: JobId) -> EngineResult<Job> {
        match self.jobs.get(&id) {
            Some(j) => Ok(j.clone()),
            None if let Some(task) = self.unsplit_view(id) => Ok(task),
            None => self
                .ledger
                .get_job(&id)
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .ok_or_else(|| EngineError::NotFound(format!("job {id}"))),
        }
    }

    /// Removes a job that reached a final state: closes its open leases with
    /// the matching end reason, releases its resources, writes it.
    pub(in crate::engine) fn finish(&mut self, id: JobId) {
        let now = self.clock.now();
        let Some(job) = self.jobs.get(&id) else { return };
        let state = job.state;
        self.close_leases(id, state, now);
        self.release_all(id);
        self.quota.forget(id);
        self.pending.remove(&id);
        // Whoever waits on it sees how it ended; it waits on nothing now.
        self.deps.ended(id, state);
        self.deps.done_waiting(id);
        self.orphaned.retain(|(j, _), _| *j != id);
        self.last_seen.retain(|(j, _), _| *j != id);
        // A preemptor that ends releases its reservation; a victim that ends
        // some other way is one fewer to wait for.
        self.nominations.remove(&id);
        if let Some(by) = self.jobs.get(&id).and_then(|j| j.preempted_by) {
            self.nominations.victim_gone(&by, id);
        }
        let touched = self.all_lease_ids(&id);
        self.persist(id, &touched);
        let task = self.jobs.remove(&id).and_then(|(j, _)| j.array_task);
        self.needs_pass = true;
        if let Some(task) = task {
            self.task_ended(task, state);
        }
    }

    /// When the leases on `node` of a job ending now end: when its part there
    /// ended (see `exit_time`), or now.
    pub(in crate::engine) fn part_end_time(&self, job: &Job, node: &NodeName, now: UnixMillis) -> UnixMillis {
        job.parts_exited
            .iter()
            .find(|e| &e.node == node)
            .and_then(|e| e.at)
            .unwrap_or(now)
            .min(now)
    }

    /// When a part that exited on `node` ended, by the controller's clock: when
    /// the agent says it ended (so long ago), else its start plus the runtime
    /// the agent measured; but never before the last time the controller saw
    /// it running, nor after now. (Agent times bound; they never bill.)
    /// Without either: now.
    pub(in crate::engine) fn exit_time(
        &self,
        id: JobId,
        node: &NodeName,
        exit: &JobExit,
        now: UnixMillis,
    ) -> UnixMillis {
        let started = self
            .jobs
            .leases(&id)
            .iter()
            .filter(|l| &l.node == node)
            .filter_map(|l| l.started_at)
            .min()
            .or_else(|| self.jobs.get(&id).and_then(|j| j.started_at));
        let estimate = match (exit.ended_ago, started, exit.runtime) {
            (Some(ago), _, _) => UnixMillis(now.0.saturating_sub(ago.0)),
            (None, Some(started), Some(runtime)) => started.plus(runtime),
            _ => return now,
        };
        let lower = started.map(|s| {
            self.last_seen
                .get(&(id, node.clone()))
                .copied()
                .unwrap_or(s)
                .max(s)
                .min(now)
        });
        estimate.clamp(lower.unwrap_or(UnixMillis(0)), now)
    }

    /// When a part lost with its node ended: the last time it was seen
    /// running there (or the node's last heartbeat), never after now.
    pub(in crate::engine) fn lost_time(&self, id: JobId, node: &NodeName, now: UnixMillis) -> UnixMillis {
        self.last_seen
            .get(&(id, node.clone()))
            .copied()
            .or_else(|| self.nodes.get(node).and_then(|m| m.last_heartbeat))
            .unwrap_or(now)
            .min(now)
    }

    pub(in crate::engine) fn close_leases(&mut self, id: JobId, state: JobState, now: UnixMillis) {
        self.close_leases_as(id, EndReason::for_final_state(state), now);
    }

    /// Closes the job's open leases: started ones with `end` (none: as
    /// released unstarted), reserved ones as released unstarted.
    pub(in crate::engine) fn close_leases_as(
        &mut self,
        id: JobId,
        ended_as: Option<EndReason>,
        now: UnixMillis,
    ) {
        let Some(job) = self.jobs.get(&id) else { return };
        // Its tenant's budget standing changes with what it has spent.
        self.budgets.spent(&job.spec.tenant);
        let ends: HashMap<NodeName, UnixMillis> = job
            .nodes()
            .map(|n| (n.clone(), self.part_end_time(job, n, now)))
            .collect();
        let runtimes: HashMap<NodeName, Millis> = job
            .parts_exited
            .iter()
            .filter_map(|e| e.runtime.map(|r| (e.node.clone(), r)))
            .collect();
        let Some(leases) = self.jobs.leases_mut(&id) else {
            return;
        };
        for lease in leases.iter_mut().filter(|l| l.state != LeaseState::Closed) {
            let end = ends.get(&lease.node).copied().unwrap_or(now);
            let reason = match (lease.state, ended_as) {
                (LeaseState::Reserved, _) | (_, None) => EndReason::ReleasedUnstarted,
                (_, Some(r)) => r,
            };
            lease.state = LeaseState::Closed;
            // Never before it started (a node last heard from before the
            // part's start report still ran it until then).
            lease.ended_at = Some(end.max(lease.started_at.unwrap_or(lease.reserved_at)));
            lease.end_reason = Some(reason);
            lease.agent_runtime = runtimes.get(&lease.node).copied();
        }
        self.ask_prices(id);
    }

    /// Leases of the job that closed just now, of a tenant with a pricing
    /// plugin, are priced by it: marked pending (the close writes the mark,
    /// so the roll-ups and exports wait for the price), then asked off the
    /// engine loop; the answers come back as `Command::Priced`.
    pub(in crate::engine) fn ask_prices(&mut self, id: JobId) {
        let Some(policy) = self.policy.clone() else { return };
        let Some(job) = self.jobs.get(&id) else { return };
        if !policy.bound(&job.spec.tenant, ExtensionPoint::Pricing) {
            return;
        }
        let preemptible = job.spec.preemptible;
        let mut asks = Vec::new();
        for lease in self.jobs.leases_mut(&id).into_iter().flatten() {
            if lease.state == LeaseState::Closed && lease.plugin_prices.is_none() {
                lease.plugin_prices = Some(PluginPrices {
                    pending: true,
                    ..PluginPrices::default()
                });
                asks.push(lease.clone());
            }
        }
        for lease in asks {
            self.spawn_pricing(policy.clone(), lease, preemptible);
        }
    }

    /// Asks the pricing plugin the price of each hour part of a closed lease.
    pub(in crate::engine) fn spawn_pricing(&self, policy: PolicyHost, lease: Lease, preemptible: bool) {
        let Some(me) = self.to_self.as_ref().and_then(|w| w.upgrade()) else {
            return;
        };
        tokio::spawn(async move {
            let prices = price_lease(&policy, &lease, preemptible).await;
            let _ = me
                .send(Command::Priced {
                    lease: lease.id,
                    prices,
                })
                .await;
        });
    }

    /// Puts a placed job that never started back in the queue.
    pub(in crate::engine) fn requeue_unstarted(&mut self, id: JobId, why: &str) {
        if !self.jobs.contains(&id) {
            return;
        }
        let now = self.clock.now();
        if let Some(leases) = self.jobs.leases_mut(&id) {
            for lease in leases.iter_mut().filter(|l| l.state != LeaseState::Closed) {
                lease.state = LeaseState::Closed;
                lease.ended_at = Some(now.max(lease.reserved_at));
                lease.end_reason = Some(EndReason::ReleasedUnstarted);
            }
        }
        self.ask_prices(id);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        let job = self.jobs.get_mut(&id).expect("checked above");
        job.next_attempt();
        job.reason = why.to_string();
        self.pending.push(job, self.queues.tier(&job.spec));
        self.orphaned.retain(|(j, _), _| *j != id);
        self.persist(id, &touched);
        self.jobs.forget_leases(&id);
        self.needs_pass = true;
    }
}

/// A closed lease priced hour part by hour part by the tenant's pricing
/// plugin (the list price where it fails or no plugin applies any more).
pub(super) async fn price_lease(policy: &PolicyHost, lease: &Lease, preemptible: bool) -> PluginPrices {
    let end = lease.ended_at.unwrap_or(lease.reserved_at);
    let rate = lease.rate.unwrap_or_default();
    let mut by_hour = BTreeMap::new();
    let mut plugin = String::new();
    let mut showback_by_hour = BTreeMap::new();
    let mut showback_plugin = String::new();
    for part in crate::accounting::hour_parts(lease, end, UnixMillis(0), UnixMillis(u64::MAX)) {
        let (list, undiscounted) = crate::accounting::pricing::list_prices(part.gpu_time, &rate);
        let input = PriceInput {
            tenant: lease.tenant.clone(),
            project: lease.project.clone(),
            gpu_model: lease.device.gpu_model.clone(),
            mig_profile: lease.device.mig_profile.clone(),
            share: lease.device.share,
            start: part.start,
            duration: Millis(part.end.0 - part.start.0),
            preemptible,
            tags: lease.tags.clone(),
            currency: rate.currency,
            list_price_minor: u64::try_from(list).unwrap_or(u64::MAX),
            undiscounted_price_minor: u64::try_from(undiscounted).unwrap_or(u64::MAX),
        };
        // What bills: the operator's plugin, else the rate card (no entry).
        let outcome = policy.price(&input).await;
        if let Some(p) = outcome.decided_by.plugin() {
            plugin = p.to_string();
            by_hour.insert(part.hour.0, i128::from(outcome.decision));
        }
        // Beside it, never billed: the tenant's own plugin's showback.
        if let Some(outcome) = policy.showback(&input).await
            && let Some(p) = outcome.decided_by.plugin()
        {
            showback_plugin = p.to_string();
            showback_by_hour.insert(part.hour.0, i128::from(outcome.decision));
        }
    }
    PluginPrices {
        plugin,
        pending: false,
        by_hour,
        showback_plugin,
        showback_by_hour,
    }
}

/// How a job ended: its final state, the reason shown, and the exit code
/// or signal that decided it (if one did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::engine) struct JobEnd {
    pub state: JobState,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl JobEnd {
    fn new(
        state: JobState,
        reason: impl Into<String>,
        exit_code: Option<i32>,
        signal: Option<i32>,
    ) -> JobEnd {
        JobEnd {
            state,
            reason: reason.into(),
            exit_code,
            signal,
        }
    }
}

/// How a job ended, from how its parts did: a cancel wins, then a lost node,
/// a part that could not start, a time limit, the first part that failed;
/// parts stopped because another failed do not count against the job.
pub(in crate::engine) fn verdict(job: &Job) -> JobEnd {
    let parts = &job.parts_exited;
    let several = job.placements.len() > 1;
    let on = |n: &NodeName| {
        if several {
            format!(" on {n}")
        } else {
            String::new()
        }
    };
    if job.cancel_requested {
        let reason = job
            .reason
            .trim_end_matches("; stopping")
            .trim_end_matches("; killing (forced)")
            .trim_end_matches("; stopping (cancel requested)")
            .to_string();
        let (code, signal) = parts
            .iter()
            .find_map(|e| match &e.outcome {
                ExitOutcome::Stopped { exit_code, signal } => Some((*exit_code, *signal)),
                ExitOutcome::Exited(c) => Some((Some(*c), None)),
                ExitOutcome::Signaled(s) => Some((None, Some(*s))),
                _ => None,
            })
            .unwrap_or((None, None));
        return JobEnd::new(JobState::Cancelled, reason, code, signal);
    }
    if let Some((e, msg)) = parts.iter().find_map(|e| match &e.outcome {
        ExitOutcome::Lost(m) => Some((e, m)),
        _ => None,
    }) {
        let _ = e;
        return JobEnd::new(JobState::NodeLost, msg.clone(), None, None);
    }
    if let Some((e, msg)) = parts.iter().find_map(|e| match &e.outcome {
        ExitOutcome::LaunchFailed(m) => Some((e, m)),
        _ => None,
    }) {
        return JobEnd::new(
            JobState::Failed,
            format!("could not start{}: {msg}", on(&e.node)),
            None,
            None,
        );
    }
    if let Some((e, code, signal)) = parts.iter().find_map(|e| match &e.outcome {
        ExitOutcome::TimedOut { exit_code, signal } => Some((e, *exit_code, *signal)),
        _ => None,
    }) {
        let limit = job.spec.time_limit.unwrap_or_default();
        let _ = e;
        return JobEnd::new(
            JobState::TimedOut,
            format!("stopped at its time limit of {limit}"),
            code,
            signal,
        );
    }
    for e in parts {
        match &e.outcome {
            ExitOutcome::Exited(0) => {}
            ExitOutcome::Exited(code) => {
                return JobEnd::new(
                    JobState::Failed,
                    format!("exited with code {code}{}", on(&e.node)),
                    Some(*code),
                    None,
                );
            }
            ExitOutcome::Signaled(sig) => {
                return JobEnd::new(
                    JobState::Failed,
                    format!("killed by signal {sig}{}", on(&e.node)),
                    None,
                    Some(*sig),
                );
            }
            ExitOutcome::Stopped { exit_code, signal } if !several => {
                return JobEnd::new(JobState::Failed, "stopped by its node", *exit_code, *signal);
            }
            _ => {}
        }
    }
    if parts.iter().any(|e| !e.outcome.is_success()) {
        return JobEnd::new(JobState::Failed, "stopped by its node", None, None);
    }
    JobEnd::new(JobState::Succeeded, "exited with code 0", Some(0), None)
}

/// The workload mix the fragmentation-aware policies keep room for.
impl Engine {
    /// Keeps a submitted request in the window the workload mix is built from.
    pub(in crate::engine) fn note_submission(&mut self, req: Request) {
        const WINDOW: usize = 2000;
        if self.mix_window.len() == WINDOW {
            self.mix_window.pop_front();
        }
        self.mix_window.push_back(req);
        self.since_mix += 1;
    }

    /// Rebuilds the workload mix from recent submissions now and then.
    pub(in crate::engine) fn refresh_mix(&mut self) {
        const EVERY: usize = 64;
        let stale =
            self.since_mix >= EVERY || (self.placer.profile().mix.is_empty() && !self.mix_window.is_empty());
        if self.placer.profile().policy.uses_mix() && stale {
            let mix = WorkloadMix::from_requests(self.mix_window.iter(), 95);
            self.placer.set_mix(std::sync::Arc::new(mix));
            self.since_mix = 0;
        }
    }
}
