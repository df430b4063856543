//! Dependencies in the engine: what a submission may wait on, and the
//! graph rebuilt at start from the pending jobs' specs.

use super::*;

impl Engine {
    /// The state of a job a dependency names, if the tenant may name it:
    /// active, or ended (from the ledger).
    fn dependency_state(&self, tenant: &TenantName, id: &JobId) -> crate::ledger::Result<Option<JobState>> {
        if let Some(j) = self.jobs.get(id) {
            return Ok((&j.spec.tenant == tenant).then_some(j.state));
        }
        let stored = self.ledger.get_job(id)?;
        Ok(stored.filter(|j| &j.spec.tenant == tenant).map(|j| j.state))
    }

    /// Checks a new job's dependency (every job it names exists and is its
    /// tenant's; no cycle) and enters it in the graph.
    pub(in crate::engine) fn take_dependency(&mut self, job: &Job) -> EngineResult<()> {
        let Some(dep) = &job.spec.dependency else {
            return Ok(());
        };
        let mut ended = Vec::new();
        for on in dep.jobs() {
            let state = self
                .dependency_state(&job.spec.tenant, on)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            match state {
                // Another tenant's job is as unknown as a missing one.
                None => {
                    return Err(EngineError::Invalid {
                        field: "spec.dependency".into(),
                        message: format!("no job {on} of tenant {}", job.spec.tenant),
                    });
                }
                Some(s) if s.is_final() => ended.push((*on, s)),
                Some(_) => {}
            }
        }
        if let Some(via) = self.deps.cycle(job.id, dep) {
            return Err(EngineError::Invalid {
                field: "spec.dependency".into(),
                message: format!("waiting on job {via} would make a cycle"),
            });
        }
        self.deps.add(job.id, dep);
        for (on, s) in ended {
            self.deps.ended(on, s);
        }
        Ok(())
    }

    /// The graph from the pending jobs' dependencies, with the final
    /// states of the ended jobs they name.
    pub(in crate::engine) fn rebuild_dependencies(&mut self) -> crate::ledger::Result<()> {
        let waiting: Vec<(JobId, TenantName, crate::domain::dependency::Dependency)> = self
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Pending)
            .filter_map(|j| {
                j.spec
                    .dependency
                    .clone()
                    .map(|d| (j.id, j.spec.tenant.clone(), d))
            })
            .collect();
        for (id, tenant, dep) in waiting {
            self.deps.add(id, &dep);
            for on in dep.jobs() {
                // One gone from the ledger: the gate finds no such job.
                if let Some(s) = self.dependency_state(&tenant, on)?
                    && s.is_final()
                {
                    self.deps.ended(*on, s);
                }
            }
        }
        Ok(())
    }
}
