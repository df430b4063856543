//! Hold, release, update and requeue (scontrol hold / release / update /
//! requeue): a job's owner or an admin changes a job after submission.

use super::*;
use crate::domain::{EndReason, Hold};
use crate::engine::{JobControl, JobUpdate};

fn not_pending(id: JobId, state: JobState, what: &str) -> EngineError {
    EngineError::FailedPrecondition(format!("job {id} is {state}: only a pending job can be {what}"))
}

impl Engine {
    pub(in crate::engine) fn control(&mut self, id: JobId, change: JobControl) -> EngineResult<()> {
        if !self.jobs.contains(&id) {
            self.split_out(id);
        }
        let array = self.jobs.get(&id).is_some_and(|j| j.is_array());
        if let JobControl::Requeue { hold } = change {
            if array || self.ledger_is_array(id)? {
                return Err(EngineError::FailedPrecondition(format!(
                    "job {id} is an array: requeue its tasks one at a time ({id}_INDEX)"
                )));
            }
            return self.requeue_on_request(id, hold);
        }
        if array {
            self.control_one(id, change.clone())?;
            self.control_array(id, &change);
            return Ok(());
        }
        self.control_one(id, change)
    }

    /// Whether an ended job is an array's record.
    fn ledger_is_array(&self, id: JobId) -> EngineResult<bool> {
        if self.jobs.contains(&id) {
            return Ok(false);
        }
        Ok(self
            .ledger
            .get_job(&id)
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .is_some_and(|j| j.is_array()))
    }

    fn control_one(&mut self, id: JobId, change: JobControl) -> EngineResult<()> {
        let Some(job) = self.jobs.get(&id) else {
            let ended = self.job_snapshot(id)?;
            return Err(EngineError::FailedPrecondition(format!(
                "job {id} has already ended ({}); `allot requeue` runs it again",
                ended.state
            )));
        };
        let state = job.state;
        match change {
            JobControl::Hold { by_admin, reason } => {
                if state != JobState::Pending {
                    return Err(not_pending(
                        id,
                        state,
                        "held (`allot requeue --hold` stops and holds a running one)",
                    ));
                }
                let job = self.jobs.get_mut(&id).expect("checked");
                // An admin's hold is not weakened by the owner's.
                if job.hold.as_ref().is_some_and(|h| h.by_admin) && !by_admin {
                    return Ok(());
                }
                let hold = Hold { by_admin, reason };
                job.reason = hold.describe();
                job.hold = Some(hold);
                info!(job = %id, by_admin, "job held");
                // A preemptor held gives up the nodes it was emptying.
                self.nominations.remove(&id);
                self.persist(id, &[]);
            }
            JobControl::Release { by_admin } => {
                let job = self.jobs.get_mut(&id).expect("checked");
                match &job.hold {
                    None => {
                        return Err(EngineError::FailedPrecondition(format!("job {id} is not held")));
                    }
                    Some(h) if h.by_admin && !by_admin => {
                        return Err(EngineError::PermissionDenied(format!(
                            "job {id} is held by an admin: only an admin may release it"
                        )));
                    }
                    Some(_) => {}
                }
                job.hold = None;
                job.reason = "released; waiting for the scheduler".into();
                info!(job = %id, "job released");
                self.persist(id, &[]);
                self.needs_pass = true;
            }
            JobControl::Update(update) => {
                if state != JobState::Pending {
                    return Err(not_pending(id, state, "updated"));
                }
                self.update_pending(id, update)?;
            }
            JobControl::Requeue { .. } => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Changes a pending job's priority, time limit or queue, held to its
    /// (new) queue as a submission is; nothing changes if any part is refused.
    fn update_pending(&mut self, id: JobId, update: JobUpdate) -> EngineResult<()> {
        let job = &self.jobs[&id];
        let mut spec = job.spec.clone();
        if let Some(p) = update.priority {
            spec.priority = p;
        }
        if let Some(t) = update.time_limit {
            spec.time_limit = t;
        }
        let moved = update
            .queue
            .as_ref()
            .is_some_and(|q| Some(q) != job.spec.queue.as_ref());
        if let Some(q) = update.queue {
            spec.queue = Some(q);
        }
        if moved {
            self.take_into_queue(&mut spec)?;
        } else if update.time_limit.is_some() {
            // The same queue: its time limits, not its pending limit (the
            // job is counted there already).
            let queue = self.queues.of(&spec).ok_or_else(|| {
                EngineError::FailedPrecondition(format!(
                    "job {id}'s queue {} no longer exists: move it with --queue",
                    self.queues.name_of(&spec)
                ))
            })?;
            queue.take(&mut spec)?;
        }
        let tier = self.queues.tier(&spec);
        let job = self.jobs.get_mut(&id).expect("checked");
        job.spec = spec;
        self.pending.push(job, tier);
        // A plugin's answer about the old spec no longer stands.
        self.quota.forget(id);
        self.nominations.remove(&id);
        info!(job = %id, "pending job updated");
        self.persist(id, &[]);
        self.needs_pass = true;
        Ok(())
    }

    /// `allot requeue`: a placed job is stopped and goes back to the queue
    /// (its leases end `requeued`); an ended one starts over as its next
    /// attempt.
    fn requeue_on_request(&mut self, id: JobId, hold: Option<Hold>) -> EngineResult<()> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return self.requeue_ended(id, hold);
        };
        match job.state {
            JobState::Pending => {
                return Err(EngineError::FailedPrecondition(format!(
                    "job {id} is pending already"
                )));
            }
            _ if job.cancel_requested => {
                return Err(EngineError::FailedPrecondition(format!(
                    "job {id} is being cancelled"
                )));
            }
            _ if job.preempted_by.is_some() => {
                return Err(EngineError::FailedPrecondition(format!(
                    "job {id} is being preempted: it goes back to the queue by itself"
                )));
            }
            _ => {}
        }
        if job.requeue_requested {
            return Ok(());
        }
        job.requeue_requested = true;
        job.hold = hold;
        job.reason = "requeue requested; stopping".into();
        info!(job = %id, "requeue requested; stopping the job");
        self.persist(id, &[]);
        self.stop_parts(id, StopReason::Requeued);
        Ok(())
    }

    /// Every part of a job being requeued has stopped: its attempt ends, its
    /// leases close as `requeued`, and it waits again at its old place.
    pub(in crate::engine) fn requeued(&mut self, id: JobId) {
        let now = self.clock.now();
        self.close_leases_as(id, Some(EndReason::Requeued), now);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        let Some(job) = self.jobs.get_mut(&id) else { return };
        let hold = job.hold.clone();
        job.next_attempt();
        job.reason = match &hold {
            Some(h) => h.describe(),
            None => "requeued by request".into(),
        };
        self.pending.push(job, self.queues.tier(&job.spec));
        self.orphaned.retain(|(j, _), _| *j != id);
        self.last_seen.retain(|(j, _), _| *j != id);
        info!(job = %id, "job requeued by request");
        self.persist(id, &touched);
        self.jobs.forget_leases(&id);
        self.needs_pass = true;
    }

    /// An ended job back to the queue, as its next attempt.
    fn requeue_ended(&mut self, id: JobId, hold: Option<Hold>) -> EngineResult<()> {
        let mut job = self.job_snapshot(id)?;
        let ended = job.state;
        if let Some(task) = job.array_task {
            self.task_reopened(task, ended)?;
        }
        job.next_attempt();
        job.cancel_requested = false;
        job.cancel_forced = false;
        job.reason = match &hold {
            Some(h) => h.describe(),
            None => format!("requeued by request (it had ended {ended})"),
        };
        job.hold = hold;
        self.pending.push(&job, self.queues.tier(&job.spec));
        // Who waits on it waits for its new attempt; what it waited on
        // is not asked again (it started once).
        self.deps.reopened(id);
        self.jobs.admit(job, Vec::new());
        info!(job = %id, was = %ended, "ended job requeued by request");
        self.persist(id, &[]);
        self.needs_pass = true;
        Ok(())
    }
}
