//! Queues in the engine: taking a submission into its queue, and the
//! admin's create, update, delete and list.

use super::*;
use crate::domain::queue::Refusal;
use crate::domain::{QueueDef, QueueName, Share};
use crate::engine::model::queues::QueueError;
use crate::engine::{QueueUpdate, QueueView};

impl From<QueueError> for EngineError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound(m) => EngineError::NotFound(m),
            QueueError::AlreadyExists(m) => EngineError::AlreadyExists(m),
            QueueError::FailedPrecondition(m) => EngineError::FailedPrecondition(m),
        }
    }
}

/// A spec the queue does not take: the field at fault, or the tenant's.
impl From<Refusal> for EngineError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(v) => v.into(),
            Refusal::NotAllowed(m) => EngineError::PermissionDenied(m),
        }
    }
}

impl From<crate::domain::validate::Violation> for EngineError {
    fn from(v: crate::domain::validate::Violation) -> Self {
        EngineError::Invalid {
            field: v.field.into(),
            message: v.description,
        }
    }
}

impl Engine {
    /// Puts a submission in its queue (the one it names, or the default):
    /// refuses one the queue does not take, and gives it the queue's
    /// default time limit.
    pub(in crate::engine) fn take_into_queue(&self, spec: &mut JobSpec) -> EngineResult<()> {
        let queue = match &spec.queue {
            Some(name) => self.queues.get(name).ok_or_else(|| EngineError::Invalid {
                field: "spec.queue".into(),
                message: format!("there is no queue {name} (`allot queues` lists them)"),
            })?,
            None => self.queues.default_queue(),
        };
        queue.take(spec)?;
        if let Some(q) = &spec.qos
            && self.queues.qos_tier(q).is_none()
        {
            return Err(EngineError::Invalid {
                field: "spec.qos".into(),
                message: format!(
                    "there is no QOS {q} (this server has {})",
                    self.queues.qos_names().join(", ")
                ),
            });
        }
        if let Some(max) = queue.per_tenant.pending_jobs {
            let pending = self
                .jobs
                .of_tenant(&spec.tenant)
                .filter(|j| j.state == JobState::Pending && self.queues.name_of(&j.spec) == &queue.name)
                .count();
            if pending >= max as usize {
                return Err(EngineError::ResourceExhausted(format!(
                    "queue {} limit: tenant {} has {pending} pending jobs of at most {max}",
                    queue.name, spec.tenant
                )));
            }
        }
        Ok(())
    }

    pub(in crate::engine) fn create_queue(&mut self, mut def: QueueDef) -> EngineResult<QueueDef> {
        def.created_at = self.clock.now();
        let name = def.name.clone();
        let mut next = self.queues.clone();
        let writes = next.create(def)?;
        self.commit_queues(next, &writes, &[])?;
        info!(queue = %name, "queue created");
        Ok(self.queues.get(&name).cloned().expect("just made"))
    }

    pub(in crate::engine) fn update_queue(
        &mut self,
        name: QueueName,
        update: QueueUpdate,
    ) -> EngineResult<QueueDef> {
        let current = self
            .queues
            .get(&name)
            .ok_or_else(|| EngineError::NotFound(format!("queue {name}")))?;
        let def = update(current)?;
        let mut next = self.queues.clone();
        let writes = next.update(def)?;
        self.commit_queues(next, &writes, &[])?;
        info!(queue = %name, "queue updated");
        Ok(self.queues.get(&name).cloned().expect("just written"))
    }

    pub(in crate::engine) fn delete_queue(&mut self, name: QueueName) -> EngineResult<()> {
        let (mut pending, mut placed) = (0, 0);
        for job in self.jobs.iter().filter(|j| self.queues.name_of(&j.spec) == &name) {
            match job.state {
                JobState::Pending => pending += 1,
                _ => placed += 1,
            }
        }
        if self.queues.get(&name).is_some() && pending + placed > 0 {
            return Err(EngineError::FailedPrecondition(format!(
                "queue {name} holds {pending} pending and {placed} running job(s): cancel them, or let them end, first"
            )));
        }
        let mut next = self.queues.clone();
        next.delete(&name)?;
        self.commit_queues(next, &[], std::slice::from_ref(&name))?;
        info!(queue = %name, "queue deleted");
        Ok(())
    }

    /// Writes what a queue change made (a failed write stops the engine,
    /// as with a job), then takes the new set and puts pending jobs in
    /// their queue's new tier.
    fn commit_queues(
        &mut self,
        next: Queues,
        writes: &[QueueDef],
        removed: &[QueueName],
    ) -> EngineResult<()> {
        for def in writes {
            self.batch
                .write(Change::Queue {
                    name: &def.name,
                    def: Some(def),
                })
                .map_err(EngineError::Internal)?;
        }
        for name in removed {
            self.batch
                .write(Change::Queue { name, def: None })
                .map_err(EngineError::Internal)?;
        }
        self.queues = next;
        let pending: Vec<JobId> = self.pending.iter().collect();
        for id in pending {
            if let Some(job) = self.jobs.get(&id) {
                self.pending.push(job, self.queues.tier(&job.spec));
            }
        }
        self.needs_pass = true;
        Ok(())
    }

    /// Each queue with what its nodes hold and its jobs, like `sinfo -s`.
    pub(in crate::engine) fn queue_views(&self) -> Vec<QueueView> {
        let mut views: Vec<QueueView> = self
            .queues
            .iter()
            .map(|q| {
                let mut view = QueueView {
                    def: q.clone(),
                    nodes: 0,
                    gpus_total: 0,
                    gpus_in_use: 0,
                    gpus_idle: 0,
                    gpus_down: 0,
                    gpus_allocated: Share::ZERO,
                    jobs_pending: 0,
                    jobs_running: 0,
                };
                let selects = |labels: &BTreeMap<String, String>| {
                    q.node_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                };
                for node in self
                    .cluster
                    .nodes()
                    .iter()
                    .filter(|n| selects(&n.inventory.labels))
                {
                    view.nodes += 1;
                    let up = node.takes_work();
                    for gpu in node
                        .inventory
                        .gpus
                        .iter()
                        .filter(|g| q.gpu_models.is_empty() || q.gpu_models.contains(&g.model))
                    {
                        view.gpus_total += 1;
                        let allocated = gpu.allocated();
                        view.gpus_allocated = view
                            .gpus_allocated
                            .checked_add(allocated)
                            .unwrap_or(view.gpus_allocated);
                        if !allocated.is_zero() {
                            view.gpus_in_use += 1;
                        } else if up {
                            view.gpus_idle += 1;
                        } else {
                            view.gpus_down += 1;
                        }
                    }
                }
                view
            })
            .collect();
        let at: HashMap<QueueName, usize> = views
            .iter()
            .enumerate()
            .map(|(i, v)| (v.def.name.clone(), i))
            .collect();
        for job in self.jobs.iter() {
            if let Some(&i) = at.get(self.queues.name_of(&job.spec)) {
                match job.state {
                    JobState::Pending => views[i].jobs_pending += 1,
                    JobState::Starting | JobState::Running => views[i].jobs_running += 1,
                    _ => {}
                }
            }
        }
        views
    }
}
