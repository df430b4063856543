//! Nodes and their agents: sessions, drains, what agents report (starts,
//! exits, idle devices, logs), and the periodic tick.

use super::jobs::{JobEnd, verdict};
use super::*;

impl Engine {
    pub(in crate::engine) fn node_view(&self, name: &NodeName) -> NodeView {
        let node = self.cluster.node(name.as_str()).expect("known node").clone();
        let meta = self.nodes.get(name);
        NodeView {
            node,
            last_heartbeat: meta.and_then(|m| m.last_heartbeat),
            utilization: meta.map(|m| m.utilization.clone()).unwrap_or_default(),
            discovery: meta.map(|m| m.discovery.clone()).unwrap_or_default(),
            agent_version: meta.map(|m| m.agent_version.clone()).unwrap_or_default(),
        }
    }

    pub(in crate::engine) fn drain(
        &mut self,
        node: NodeName,
        reason: Option<String>,
    ) -> EngineResult<NodeView> {
        if self.cluster.node(node.as_str()).is_none() {
            return Err(EngineError::NotFound(format!("node {node}")));
        }
        self.batch
            .write(Change::Drain {
                node: &node,
                reason: reason.as_deref(),
            })
            .map_err(EngineError::Internal)?;
        match &reason {
            Some(r) => {
                self.drained.insert(node.clone(), r.clone());
                info!(%node, reason = %r, "node drained");
            }
            None => {
                self.drained.remove(&node);
                self.needs_pass = true;
                info!(%node, "node undrained");
            }
        }
        self.cluster.set_drain(node.as_str(), reason);
        Ok(self.node_view(&node))
    }

    pub(in crate::engine) fn agent_connected(
        &mut self,
        conn: u64,
        reg: Registration,
        orders: mpsc::UnboundedSender<AgentOrder>,
    ) -> EngineResult<()> {
        let name = reg.inventory.name.clone();
        let now = self.clock.now();
        if self.agents.contains_key(&name) {
            // A second agent for a node whose agent is alive (heard from
            // within two heartbeats) is refused: two machines with one
            // name, or one token used twice. A silent connection is a dead
            // one not noticed yet: the new one replaces it.
            let heard = self.nodes.get(&name).and_then(|m| m.last_heartbeat);
            if let Some(at) = heard
                && now.since(at).0 < 2 * self.config.heartbeat_interval.0
            {
                return Err(EngineError::AlreadyExists(format!(
                    "node {name} is connected (its agent was heard from {} ago); a second agent cannot register it",
                    now.since(at)
                )));
            }
            warn!(node = %name, "agent reconnected; replacing its previous, silent connection");
        }
        self.agents.insert(name.clone(), AgentLink { conn, orders });
        // Exits that happened while the agent was away come first.
        for exit in &reg.exited {
            self.job_exited(&name, exit.clone());
        }
        self.cluster.upsert_node(reg.inventory.clone());
        self.cluster.set_status(name.as_str(), NodeStatus::Ready);
        self.cluster
            .set_drain(name.as_str(), self.drained.get(&name).cloned());
        let meta = self.nodes.entry(name.clone()).or_default();
        meta.discovery = reg.discovery.clone();
        meta.agent_version = reg.agent_version.clone();
        meta.lost_deadline = None;
        info!(node = %name, gpus = reg.inventory.gpus.len(), discovery = %reg.discovery, "agent registered");

        // Reconcile the jobs placed on this node with what the agent runs.
        let running: HashMap<JobId, (u32, Option<Millis>)> = reg
            .running
            .iter()
            .map(|p| (p.job, (p.attempt, p.running_for)))
            .collect();
        let here: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|j| j.runs_on(&name))
            .map(|j| j.id)
            .collect();
        for id in here {
            let job = &self.jobs[&id];
            let part = job
                .placements
                .iter()
                .find(|p| p.node == name)
                .cloned()
                .expect("filtered on runs_on");
            let reported = running.get(&id).is_some_and(|(a, _)| *a == job.attempt);
            let ended_here = job.parts_exited.iter().any(|e| e.node == name);
            self.orphaned.remove(&(id, name.clone()));
            if reported || ended_here {
                // The node's inventory was replaced: the part holds its devices again.
                if let Err(e) = self.cluster.allocate(id, &part) {
                    error!(job = %id, error = %e, "a running job no longer fits its node's inventory");
                }
            }
            if reported {
                // Started no earlier than the agent says it launched it.
                let since = running
                    .get(&id)
                    .and_then(|(_, ms)| *ms)
                    .map(|ms| UnixMillis(now.0.saturating_sub(ms.0)))
                    .unwrap_or(now);
                self.part_started(id, &name, since);
                // Stop orders sent while the node was away may never have
                // arrived: send them again.
                let job = &self.jobs[&id];
                let stop = if job.cancel_requested {
                    Some(StopReason::Cancelled)
                } else if job.preempted_by.is_some() {
                    Some(StopReason::Preempted)
                } else if job.requeue_requested {
                    Some(StopReason::Requeued)
                } else {
                    None
                };
                if let Some(reason) = stop {
                    let grace = if job.cancel_forced {
                        Millis::ZERO
                    } else {
                        self.grace_of(job)
                    };
                    self.effects.push(Effect::Order(
                        name.clone(),
                        AgentOrder::Stop {
                            job: id,
                            attempt: job.attempt,
                            grace,
                            reason,
                        },
                    ));
                }
            } else if ended_here {
                // Its part here is over; the job waits for its other parts.
            } else if job.state == JobState::Starting && job.parts_started.is_empty() && !job.cancel_requested
            {
                self.requeue_unstarted(id, "requeued: its node restarted before the job started");
            } else {
                warn!(job = %id, node = %name, "job part lost: its agent does not run it");
                let message = format!("node {name} no longer runs this job (agent restarted)");
                let at = self.lost_time(id, &name, now);
                self.part_ended(id, name.clone(), ExitOutcome::Lost(message), at, None);
            }
        }
        // Lost jobs above closed their leases at the previous heartbeat; from
        // here on the node is live (and a restarted controller knows it).
        if let Some(meta) = self.nodes.get_mut(&name) {
            meta.last_heartbeat = Some(now);
        }
        let _ = self.batch.write(Change::NodeSeen { node: &name, at: now });
        // Processes the agent runs that the controller does not know: stop them.
        for RunningPart { job: id, attempt, .. } in reg.running {
            let known = self.jobs.get(&id).is_some_and(|j| j.attempt == attempt);
            if !known {
                self.effects.push(Effect::Order(
                    name.clone(),
                    AgentOrder::Stop {
                        job: id,
                        attempt,
                        grace: Millis(0),
                        reason: StopReason::UnknownJob,
                    },
                ));
            }
        }
        self.needs_pass = true;
        Ok(())
    }

    /// Idle time from a utilisation reading: the interval since the node's
    /// previous reading (at most two heartbeats back) counts as idle for
    /// every lease on a GPU that reads 0 % now. MIG slices get no readings
    /// (NVML gives none per slice), so their idle time stays unknown.
    pub(in crate::engine) fn count_idle(
        &mut self,
        node: &NodeName,
        readings: &BTreeMap<String, u32>,
        now: UnixMillis,
    ) {
        let Some(meta) = self.nodes.get_mut(node) else {
            return;
        };
        if readings.is_empty() {
            return;
        }
        let floor = UnixMillis(now.0.saturating_sub(2 * self.config.heartbeat_interval.0));
        let since = meta.last_reading.map(|t| t.max(floor));
        meta.last_reading = Some(now);
        for lease in self
            .jobs
            .all_leases_mut()
            .filter(|l| &l.node == node && l.state != LeaseState::Closed && l.device.mig_profile.is_none())
        {
            let Some(&pct) = readings.get(&lease.device.gpu_uuid) else {
                continue;
            };
            let idle = lease.idle.get_or_insert_with(BTreeMap::new);
            let (Some(since), 0) = (since, pct) else { continue };
            // Split at hour boundaries, from when the lease holds the GPU.
            let mut t = since.max(lease.reserved_at);
            while t < now {
                let hour = t.0 - t.0 % crate::accounting::HOUR_MS;
                let stop = (hour + crate::accounting::HOUR_MS).min(now.0);
                *idle.entry(hour).or_default() += stop - t.0;
                t = UnixMillis(stop);
            }
        }
    }

    pub(in crate::engine) fn agent_gone(&mut self, node: &NodeName, why: &str) {
        self.agents.remove(node);
        // The grace runs from the last time the node was heard from: its
        // agent's fence (shorter) runs from the last heartbeat it had
        // acknowledged, so its jobs have stopped by then.
        let now = self.clock.now();
        let seen = self
            .nodes
            .get(node)
            .and_then(|m| m.last_heartbeat)
            .unwrap_or(now)
            .min(now);
        let deadline = seen.plus(self.config.node_lost_grace);
        if let Some(meta) = self.nodes.get_mut(node) {
            meta.lost_deadline = Some(deadline);
        }
        self.cluster.set_status(node.as_str(), NodeStatus::Down);
        for job in self.jobs.iter() {
            if job.live_nodes().contains(node) {
                self.orphaned.insert((job.id, node.clone()), deadline);
            }
        }
        // Log reads waiting on this node will not be answered.
        let waiting: Vec<u64> = self
            .pending_logs
            .iter()
            .filter(|(_, (_, n, _))| n == node)
            .map(|(k, _)| *k)
            .collect();
        for k in waiting {
            if let Some((_, _, tx)) = self.pending_logs.remove(&k) {
                let e = EngineError::Unavailable(format!("node {node} disconnected"));
                self.effects.push(reply(tx, Err(e)));
            }
        }
        warn!(%node, why, grace = %self.config.node_lost_grace, "node down");
    }

    pub(in crate::engine) fn agent_event(&mut self, node: &NodeName, event: AgentEvent) {
        let now = self.clock.now();
        if let Some(meta) = self.nodes.get_mut(node) {
            meta.last_heartbeat = Some(now);
        }
        match event {
            AgentEvent::Heartbeat {
                utilization,
                running,
                seq,
            } => {
                // Straight back, not after a flush: the ack says the engine
                // has seen the node alive now (its fence rests on it), and a
                // heartbeat writes nothing that must be durable first.
                if let Some(link) = self.agents.get(node) {
                    let _ = link.orders.send(AgentOrder::HeartbeatAck { seq });
                }
                self.count_idle(node, &utilization, now);
                if let Some(meta) = self.nodes.get_mut(node) {
                    meta.utilization = utilization;
                }
                // Kept so that a controller restarted later still knows when
                // the node's jobs were last seen running. Not flushed on its
                // own: sled writes it out within its flush interval.
                let _ = self.batch.write(Change::NodeSeen { node, at: now });
                for (job, attempt) in running {
                    if self
                        .jobs
                        .get(&job)
                        .is_some_and(|j| j.attempt == attempt && j.runs_on(node))
                    {
                        self.last_seen.insert((job, node.clone()), now);
                    }
                }
            }
            AgentEvent::Started { job, attempt, pid } => {
                match self.jobs.get(&job) {
                    Some(j) if j.attempt == attempt && j.runs_on(node) => {
                        debug!(%job, %node, pid, "job part started");
                        self.part_started(job, node, now);
                    }
                    _ => {
                        // Not ours (any more): make sure it does not run.
                        self.effects.push(Effect::Order(
                            node.clone(),
                            AgentOrder::Stop {
                                job,
                                attempt,
                                grace: Millis(0),
                                reason: StopReason::UnknownJob,
                            },
                        ));
                    }
                }
            }
            AgentEvent::Exited(exit) => self.job_exited(node, exit),
            AgentEvent::LogChunk { request_id, result } => {
                if let Some((job, node, tx)) = self.pending_logs.remove(&request_id) {
                    let complete = !self.jobs.contains(&job);
                    let r = result
                        .map(|(data, next_offset, path)| LogSlice {
                            complete: complete && data.is_empty(),
                            data,
                            next_offset,
                            path,
                            node,
                        })
                        .map_err(EngineError::Unavailable);
                    let _ = tx.send(r);
                }
            }
        }
    }

    /// Every part has started: the job runs. (Each part's leases became
    /// active when it started; the caller writes the job.)
    pub(in crate::engine) fn mark_running(&mut self, id: JobId) {
        let now = self.clock.now();
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.state = JobState::Running;
        job.started_at = Some(now);
        // A cancel under way keeps its reason (the job ends with it).
        if !job.cancel_requested {
            let nodes: Vec<String> = job.nodes().map(|n| n.to_string()).collect();
            job.reason = format!("running on {}", nodes.join(", "));
        }
    }

    pub(in crate::engine) fn job_exited(&mut self, node: &NodeName, exit: JobExit) {
        // Acknowledged after this turn's flush, whether or not it changed anything:
        // a report re-sent after a reconnect changes nothing the second time.
        self.effects.push(Effect::Order(
            node.clone(),
            AgentOrder::AckExit {
                job: exit.job,
                attempt: exit.attempt,
            },
        ));
        let Some(job) = self.jobs.get(&exit.job) else {
            return;
        };
        if job.attempt != exit.attempt || !job.runs_on(node) {
            return;
        }
        let now = self.clock.now();
        // A part whose start report was lost (the controller restarted
        // before it was written) ran all the same: it started `runtime`
        // before it ended.
        let unstarted = !job.parts_started.contains(node);
        if unstarted && exit.runtime.is_some() && !matches!(exit.outcome, ExitOutcome::LaunchFailed(_)) {
            let ended = exit
                .ended_ago
                .map(|ago| UnixMillis(now.0.saturating_sub(ago.0)))
                .unwrap_or(now);
            let began = UnixMillis(ended.0.saturating_sub(exit.runtime.unwrap_or_default().0));
            self.part_started(exit.job, node, began);
        }
        let at = self.exit_time(exit.job, node, &exit, now);
        self.part_ended(exit.job, node.clone(), exit.outcome, at, exit.runtime);
    }

    /// A part reported it started; the job runs once every part has.
    /// `at` is when it started by the controller's clock (now, or earlier
    /// when the report comes late), never before the lease was reserved.
    pub(in crate::engine) fn part_started(&mut self, id: JobId, node: &NodeName, at: UnixMillis) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.parts_started.contains(node) {
            return;
        }
        job.parts_started.push(node.clone());
        let all = job.nodes().all(|n| job.parts_started.contains(n));
        // The leases on this node start with this part.
        let mut touched = Vec::new();
        if let Some(leases) = self.jobs.leases_mut(&id) {
            for lease in leases
                .iter_mut()
                .filter(|l| &l.node == node && l.state == LeaseState::Reserved)
            {
                lease.state = LeaseState::Active;
                lease.started_at = Some(at.max(lease.reserved_at));
                touched.push(lease.id);
            }
        }
        if all && self.jobs[&id].state == JobState::Starting {
            self.mark_running(id);
        }
        self.persist(id, &touched);
    }

    /// One part of the job ended. While others still run, a bad ending stops
    /// them (a gang lives and dies together); the last ending decides the job.
    pub(in crate::engine) fn part_ended(
        &mut self,
        id: JobId,
        node: NodeName,
        outcome: ExitOutcome,
        at: UnixMillis,
        runtime: Option<Millis>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.parts_exited.iter().any(|e| e.node == node) {
            return;
        }
        let bad = !outcome.is_success();
        job.parts_exited.push(crate::domain::PartExit {
            node: node.clone(),
            outcome,
            at: Some(at),
            runtime,
        });
        let live = job.live_nodes();
        if !live.is_empty() {
            let first_bad = bad
                && job
                    .parts_exited
                    .iter()
                    .filter(|e| !e.outcome.is_success())
                    .count()
                    == 1;
            if first_bad && !job.cancel_requested && job.preempted_by.is_none() && !job.requeue_requested {
                job.reason = format!("its part on {node} ended badly; stopping the others");
                self.persist(id, &[]);
                self.stop_parts(id, StopReason::Gang);
            } else {
                self.persist(id, &[]);
            }
            return;
        }
        let now = self.clock.now();
        let job = self.jobs.get_mut(&id).expect("present");
        if job.requeue_requested && !job.cancel_requested {
            self.requeued(id);
            return;
        }
        if let Some(by) = job.preempted_by
            && !job.cancel_requested
            && job
                .parts_exited
                .iter()
                .all(|e| matches!(e.outcome, ExitOutcome::Stopped { .. } | ExitOutcome::Signaled(_)))
        {
            if let Some(ExitOutcome::Stopped { exit_code, signal }) =
                job.parts_exited.last().map(|e| &e.outcome)
            {
                job.exit_code = *exit_code;
                job.signal = *signal;
            }
            self.preempted(id, by);
            return;
        }
        let JobEnd {
            state,
            reason,
            exit_code: code,
            signal,
        } = verdict(job);
        if state == JobState::NodeLost
            && !job.cancel_requested
            && job.node_lost_requeues < job.spec.node_lost_retries
        {
            self.requeue_lost(id, reason);
            return;
        }
        job.state = state;
        job.reason = reason;
        job.exit_code = code;
        job.signal = signal;
        job.ended_at = Some(now);
        if job.started_at.is_none() && state != JobState::Failed {
            job.started_at = Some(now);
        }
        info!(job = %id, state = %state, "job ended");
        self.finish(id);
    }

    pub(in crate::engine) fn read_logs(
        &mut self,
        id: JobId,
        node: Option<NodeName>,
        offset: u64,
        limit: u32,
        tx: oneshot::Sender<EngineResult<LogSlice>>,
    ) {
        // Replies and the order go out as effects, after this turn (and
        // every turn before it) is durable: the agent hears of the read after
        // the launch of a job placed a turn ago, never before.
        let job = match self.job_snapshot(id) {
            Ok(j) => j,
            Err(e) => return self.effects.push(reply(tx, Err(e))),
        };
        if let Some(n) = &node
            && !job.runs_on(n)
        {
            let e = EngineError::FailedPrecondition(format!("job {id} does not run on node {n}"));
            return self.effects.push(reply(tx, Err(e)));
        }
        let Some(node) = node.or_else(|| job.nodes().next().cloned()) else {
            let e = EngineError::FailedPrecondition(format!(
                "job {id} has not been placed on a node yet: no output"
            ));
            return self.effects.push(reply(tx, Err(e)));
        };
        if !self.agents.contains_key(&node) {
            let e = EngineError::Unavailable(format!(
                "node {node}, which holds the output of job {id}, is not connected"
            ));
            return self.effects.push(reply(tx, Err(e)));
        }
        let request_id = self.next_request;
        self.next_request += 1;
        self.effects.push(Effect::Order(
            node.clone(),
            AgentOrder::ReadLog {
                request_id,
                job: id,
                offset,
                limit,
            },
        ));
        self.pending_logs.insert(request_id, (id, node, tx));
    }

    pub(in crate::engine) fn on_tick(&mut self) {
        let now = self.clock.now();
        self.expire_requests(now);
        self.read_usage_if_stale(now);
        // Log reads whose caller has gone (timed out, cancelled) are not
        // waited for any longer.
        self.pending_logs.retain(|_, (_, _, tx)| !tx.is_closed());
        // Agents that went silent without closing their stream.
        let silent: Vec<NodeName> = self
            .agents
            .keys()
            .filter(|n| {
                self.nodes
                    .get(*n)
                    .and_then(|m| m.last_heartbeat)
                    .is_some_and(|t| now.since(t) > self.config.heartbeat_timeout)
            })
            .cloned()
            .collect();
        for node in silent {
            self.agent_gone(&node, "no heartbeat");
        }
        // Parts whose node stayed away past the grace period.
        let lost: Vec<(JobId, NodeName)> = self
            .orphaned
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (id, node) in lost {
            self.orphaned.remove(&(id, node.clone()));
            warn!(job = %id, %node, "job part lost with its node");
            let message = format!(
                "node {node} did not come back within {}",
                self.config.node_lost_grace
            );
            let at = self.lost_time(id, &node, now);
            self.part_ended(id, node, ExitOutcome::Lost(message), at, None);
        }
    }
}
