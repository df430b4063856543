//! Stopping jobs, and what happens to a job stopped for a preemptor or lost
//! with its node: its attempt ends, and it goes back to the queue.

use super::*;

impl Engine {
    /// A victim stopped: its attempt ends `PREEMPTED` (leases closed as
    /// preempted), and the job goes back to the queue at its old position.
    pub(in crate::engine) fn preempted(&mut self, id: JobId, by: JobId) {
        let now = self.clock.now();
        self.nominations.victim_gone(&by, id);
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
        self.pending.push(job, self.queues.tier(&job.spec));
        self.persist(id, &[]);
        self.jobs.forget_leases(&id);
        self.needs_pass = true;
    }

    /// A job that lost a node and has retries left: its leases close as
    /// node-lost and it goes back to the queue at its old position.
    pub(in crate::engine) fn requeue_lost(&mut self, id: JobId, why: String) {
        let now = self.clock.now();
        self.close_leases(id, JobState::NodeLost, now);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        // A preemption victim lost with its node has nothing left to stop.
        if let Some(by) = self.jobs.get(&id).and_then(|j| j.preempted_by) {
            self.nominations.victim_gone(&by, id);
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
        self.pending.push(job, self.queues.tier(&job.spec));
        self.persist(id, &touched);
        self.jobs.forget_leases(&id);
        self.orphaned.retain(|(j, _), _| *j != id);
        self.last_seen.retain(|(j, _), _| *j != id);
        self.needs_pass = true;
    }

    /// Frees what the job holds on every node.
    pub(in crate::engine) fn release_all(&mut self, id: JobId) {
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
            self.held_this_pass.remove(tenant);
        }
    }

    /// Orders every part of the job that has not ended to stop.
    pub(in crate::engine) fn stop_parts(&mut self, id: JobId, reason: StopReason) {
        self.stop_parts_with(id, reason, None);
    }

    /// The grace a stop of `job` waits between SIGTERM and SIGKILL: its
    /// own, never more than the server's limit (a job stored before the
    /// limit, or under a higher one, is held to it too).
    pub(in crate::engine) fn grace_of(&self, job: &Job) -> Millis {
        job.spec.grace_period.min(self.config.max_grace)
    }

    /// Orders every part of the job that has not ended to stop, after
    /// `grace` (default: the job's own, capped by the server's limit).
    pub(in crate::engine) fn stop_parts_with(
        &mut self,
        id: JobId,
        reason: StopReason,
        grace: Option<Millis>,
    ) {
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
