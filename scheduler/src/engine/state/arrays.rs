//! Job arrays in the engine: a submission with `--array` is one record
//! (an active job that never waits or runs itself); its tasks are split
//! off in batches before each pass (see `model/arrays.rs`), each a job of
//! its own with an id derived from the array's. A task's end is counted in
//! the array's record; the array ends when its last task has, succeeded
//! only if every task did (so `afterok:ARRAY` waits for all of them).
//! Cancel, hold, release and update of the array reach its tasks; one task
//! named before its turn (`ID_7`) is split off then.

use super::*;
use crate::domain::array::{ArrayProgress, ArrayTask};
use crate::engine::cycle::{Verdict, dependency_verdict};

/// Rounds of split-then-place per pass while the cluster takes whole
/// batches (batches grow ×8 a round: 1 + 8 + 64 + 512 tasks).
pub(in crate::engine) const ARRAY_ROUNDS: usize = 4;

impl Engine {
    /// Takes an array submission: its size within the server's limit, one
    /// record for all of its tasks.
    pub(in crate::engine) fn check_array(&self, spec: &JobSpec) -> EngineResult<()> {
        let Some(array) = &spec.array else {
            return Ok(());
        };
        let max = u64::from(self.config.max_array_size);
        if array.len() > max {
            return Err(EngineError::Invalid {
                field: "spec.array".into(),
                message: format!(
                    "{} tasks is more than this server allows in one array ({max}; --max-array-size)",
                    array.len()
                ),
            });
        }
        Ok(())
    }

    /// A task as it is split off `array`: the array's spec (less the array),
    /// its own id, env and place in the queue (the array's).
    fn task_job(&self, array: &Job, index: u32) -> Job {
        let mut spec = array.spec.clone();
        let indices = spec.array.take().expect("an array's record");
        let (id, idx) = (array.id.to_string(), index.to_string());
        let first = indices.first().unwrap_or_default().to_string();
        let last = indices.last().unwrap_or_default().to_string();
        for (k, v) in [
            ("ALLOT_ARRAY_JOB_ID", id.clone()),
            ("ALLOT_ARRAY_TASK_ID", idx.clone()),
            ("ALLOT_ARRAY_TASK_COUNT", indices.len().to_string()),
            ("SLURM_ARRAY_JOB_ID", id),
            ("SLURM_ARRAY_TASK_ID", idx),
            ("SLURM_ARRAY_TASK_COUNT", indices.len().to_string()),
            ("SLURM_ARRAY_TASK_MIN", first),
            ("SLURM_ARRAY_TASK_MAX", last),
        ] {
            spec.env.entry(k.to_string()).or_insert(v);
        }
        let now = self.clock.now();
        let reason = match &array.hold {
            Some(h) => h.describe(),
            None => "waiting for the scheduler".to_string(),
        };
        Job {
            id: array.id.task(index),
            submitted_at: array.submitted_at,
            hold: array.hold.clone(),
            array_task: Some(ArrayTask {
                array: array.id,
                index,
            }),
            reason,
            ..Job::submitted(spec, now)
        }
    }

    /// Splits task `index` off array `id` into the queue.
    fn split_task(&mut self, id: JobId, index: u32) -> JobId {
        let task = self.task_job(&self.jobs[&id], index);
        let tid = task.id;
        if let Some(dep) = &task.spec.dependency {
            // The array's own dependency holds for each task.
            self.deps.add(tid, dep);
        }
        self.pending.push(&task, self.queues.tier(&task.spec));
        let _ = self.batch.write(Change::Job {
            job: &task,
            leases: &[],
            request: None,
        });
        self.effects.push(Effect::Event(Box::new(task.clone())));
        self.jobs.admit(task, Vec::new());
        if let Some(run) = self.arrays.get_mut(&id) {
            run.live += 1;
        }
        tid
    }

    /// Splits the next batch of tasks off every array that may start some:
    /// not held or cancelled, its dependency met, the last batch placed,
    /// within its throttle. Returns how many tasks were split.
    pub(in crate::engine) fn split_arrays(&mut self) -> u64 {
        if self.arrays.is_empty() {
            return 0;
        }
        let mut split = 0;
        for id in self.arrays.ids() {
            let Some(array) = self.jobs.get(&id) else {
                self.arrays.remove(&id);
                continue;
            };
            let (Some(spec), Some(progress)) = (&array.spec.array, &array.array) else {
                continue;
            };
            let unsplit = progress.unsplit(spec);
            if array.hold.is_some() || array.cancel_requested || unsplit == 0 {
                continue;
            }
            match dependency_verdict(array, self.jobs.by_id(), &self.deps) {
                Verdict::Go => {}
                Verdict::Never(why) => {
                    self.abandon_array(id, JobState::DependencyNeverSatisfied, why);
                    continue;
                }
                Verdict::Wait(why) => {
                    let why = format!("{unsplit} tasks {why}");
                    if array.reason != why {
                        self.jobs.get_mut(&id).expect("found").reason = why;
                        self.persist(id, &[]);
                    }
                    continue;
                }
                _ => continue,
            }
            let throttle = spec.throttle;
            let run = self.arrays.get_mut(&id).expect("listed");
            let waiting = run
                .batch
                .iter()
                .filter(|t| self.jobs.get(t).is_some_and(|j| j.state == JobState::Pending))
                .count();
            let n = run.next_batch(waiting, throttle, unsplit);
            if n == 0 {
                continue;
            }
            let mut batch = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let array = self.jobs.get_mut(&id).expect("found");
                let (Some(spec), Some(progress)) = (&array.spec.array, &mut array.array) else {
                    break;
                };
                let Some(index) = progress.take_next(spec) else {
                    break;
                };
                batch.push(self.split_task(id, index));
            }
            split += batch.len() as u64;
            self.arrays.get_mut(&id).expect("listed").batch = batch;
            self.describe_array(id);
            self.persist(id, &[]);
        }
        split
    }

    /// The array's "why pending": its tasks' standing.
    fn describe_array(&mut self, id: JobId) {
        let live = self.arrays.get(&id).map_or(0, |r| r.live);
        let Some(array) = self.jobs.get_mut(&id) else {
            return;
        };
        let (Some(spec), Some(p)) = (&array.spec.array, &array.array) else {
            return;
        };
        array.reason = format!(
            "array of {}: {} not started, {live} started, {} ended",
            spec.len(),
            p.unsplit(spec),
            p.ended.total()
        );
    }

    /// The rest of an array is given up (cancelled, or its dependency can
    /// never be met): it ends once its started tasks have.
    fn abandon_array(&mut self, id: JobId, state: JobState, why: String) {
        let Some(array) = self.jobs.get_mut(&id) else {
            return;
        };
        let (Some(spec), Some(p)) = (&array.spec.array, &mut array.array) else {
            return;
        };
        let gone = p.abandon(spec);
        p.ended.add(state, gone);
        array.reason = why;
        info!(array = %id, tasks = gone, %state, "array's unstarted tasks given up");
        self.end_array_if_done(id, Some(state));
    }

    /// Ends the array if no task is left to split or running; `state`
    /// overrides what the tasks' ends say.
    fn end_array_if_done(&mut self, id: JobId, state: Option<JobState>) {
        let live = self.arrays.get(&id).map_or(0, |r| r.live);
        let Some(array) = self.jobs.get_mut(&id) else {
            return;
        };
        let (Some(spec), Some(p)) = (&array.spec.array, &array.array) else {
            return;
        };
        if live > 0 || p.unsplit(spec) > 0 {
            self.describe_array(id);
            self.persist(id, &[]);
            return;
        }
        let c = &p.ended;
        array.state = state.unwrap_or_else(|| c.final_state());
        if state.is_none() {
            array.reason = format!(
                "array of {}: {} succeeded, {} failed, {} cancelled",
                spec.len(),
                c.succeeded,
                c.failed,
                c.cancelled
            );
        }
        array.ended_at = Some(self.clock.now());
        info!(array = %id, state = %array.state, "array ended");
        self.arrays.remove(&id);
        self.finish(id);
    }

    /// A task ended (in `state`): counted in its array's record.
    pub(in crate::engine) fn task_ended(&mut self, task: ArrayTask, state: JobState) {
        let Some(array) = self.jobs.get_mut(&task.array) else {
            return;
        };
        let Some(p) = &mut array.array else { return };
        p.ended.count(state);
        if let Some(run) = self.arrays.get_mut(&task.array) {
            run.live = run.live.saturating_sub(1);
        }
        self.end_array_if_done(task.array, None);
    }

    /// A task that had ended runs again (`allot requeue ID_7`): its end is
    /// no longer counted. Refused once the array itself has ended.
    pub(in crate::engine) fn task_reopened(&mut self, task: ArrayTask, was: JobState) -> EngineResult<()> {
        let Some(array) = self.jobs.get_mut(&task.array) else {
            return Err(EngineError::FailedPrecondition(format!(
                "array {} has ended: its tasks cannot run again",
                task.array
            )));
        };
        if let Some(p) = &mut array.array {
            p.ended.uncount(was);
        }
        if let Some(run) = self.arrays.get_mut(&task.array) {
            run.live += 1;
        }
        self.describe_array(task.array);
        self.persist(task.array, &[]);
        Ok(())
    }

    /// A task named before its turn (`ID_7`, to cancel, hold, update it):
    /// split off now, so that it has a record of its own. False if `id` is
    /// no unsplit task.
    pub(in crate::engine) fn split_out(&mut self, id: JobId) -> bool {
        let Some((array, index)) = self.arrays.owner_of(&id) else {
            return false;
        };
        let Some(job) = self.jobs.get_mut(&array) else {
            return false;
        };
        let (Some(spec), Some(p)) = (&job.spec.array, &mut job.array) else {
            return false;
        };
        if !p.take(spec, index) {
            return false;
        }
        self.split_task(array, index);
        self.describe_array(array);
        self.persist(array, &[]);
        true
    }

    /// An unsplit task as it would be split off (for `allot job ID_7`).
    pub(in crate::engine) fn unsplit_view(&self, id: JobId) -> Option<Job> {
        let (array, index) = self.arrays.owner_of(&id)?;
        let job = self.jobs.get(&array)?;
        let (spec, p) = (job.spec.array.as_ref()?, job.array.as_ref()?);
        p.is_unsplit(spec, index).then(|| {
            let mut task = self.task_job(job, index);
            task.reason = format!("not started yet: waits in array {array} ({})", job.reason);
            task
        })
    }

    /// The active tasks of an array.
    pub(in crate::engine) fn tasks_of(&self, array: JobId) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|j| j.array_task.is_some_and(|t| t.array == array))
            .map(|j| j.id)
            .collect()
    }

    /// Cancels an array: its unstarted tasks are given up, its started
    /// ones cancelled; it ends when the last of them has.
    pub(in crate::engine) fn cancel_array(&mut self, id: JobId, reason: &str, force: bool) {
        let tasks = self.tasks_of(id);
        if let Some(a) = self.jobs.get_mut(&id) {
            a.cancel_requested = true;
        }
        for t in tasks {
            let _ = self.cancel(t, reason, force);
        }
        let why = if reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            format!("cancelled: {reason}")
        };
        self.abandon_array(id, JobState::Cancelled, why);
    }

    /// A hold, release or update of an array: the array's record, then
    /// each of its pending tasks.
    pub(in crate::engine) fn control_array(&mut self, id: JobId, change: &crate::engine::JobControl) {
        let tasks: Vec<JobId> = self
            .tasks_of(id)
            .into_iter()
            .filter(|t| self.jobs.get(t).is_some_and(|j| j.state == JobState::Pending))
            .collect();
        for t in tasks {
            // A task not held (on a release) or one an admin holds is left.
            let _ = self.control(t, change.clone());
        }
        self.needs_pass = true;
    }

    /// At start: each array not ended, with its tasks' count.
    pub(in crate::engine) fn rebuild_arrays(&mut self) {
        let arrays: Vec<JobId> = self.jobs.iter().filter(|j| j.is_array()).map(|j| j.id).collect();
        for id in arrays {
            self.arrays.insert(id);
        }
        let tasks: Vec<JobId> = self
            .jobs
            .iter()
            .filter_map(|j| j.array_task)
            .map(|t| t.array)
            .collect();
        for array in tasks {
            if let Some(run) = self.arrays.get_mut(&array) {
                run.live += 1;
            }
        }
    }
}

/// An array's record as submitted.
pub(in crate::engine) fn array_record(job: &mut Job) {
    if job.spec.array.is_some() {
        job.array = Some(ArrayProgress::default());
        let n = job.spec.array.as_ref().map_or(0, |a| a.len());
        job.reason = format!("array of {n}: waiting for the scheduler");
    }
}
