//! The jobs not in a final state, each with the leases of its current
//! attempt that the engine still tracks.
//!
//! Invariants: a job and its leases enter and leave together (a job that
//! is here has a lease list, maybe empty, and a lease list belongs to a job
//! that is here); a new attempt starts with none, its earlier attempt's
//! leases having been closed and written.

use std::collections::HashMap;
use std::ops::Index;

use crate::domain::{Job, JobId, Lease, LeaseId, TenantName};

#[derive(Default)]
pub struct ActiveJobs {
    jobs: HashMap<JobId, Job>,
    leases: HashMap<JobId, Vec<Lease>>,
}

impl ActiveJobs {
    /// Takes `job` in with `leases` (those of its attempt that are open,
    /// after a restart; none for a new job). A job already here is
    /// replaced, leases and all.
    pub fn admit(&mut self, job: Job, leases: Vec<Lease>) {
        self.leases.insert(job.id, leases);
        self.jobs.insert(job.id, job);
    }

    /// Lets the job go (it reached a final state), with its leases.
    pub fn remove(&mut self, id: &JobId) -> Option<(Job, Vec<Lease>)> {
        let job = self.jobs.remove(id)?;
        let leases = self.leases.remove(id).unwrap_or_default();
        Some((job, leases))
    }

    pub fn get(&self, id: &JobId) -> Option<&Job> {
        self.jobs.get(id)
    }

    pub fn get_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        self.jobs.get_mut(id)
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.jobs.contains_key(id)
    }

    /// Every active job, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// The active jobs of `tenant`.
    pub fn of_tenant<'a>(&'a self, tenant: &'a TenantName) -> impl Iterator<Item = &'a Job> + 'a {
        self.jobs.values().filter(move |j| &j.spec.tenant == tenant)
    }

    /// The jobs by id, as the placement pass reads them.
    pub fn by_id(&self) -> &HashMap<JobId, Job> {
        &self.jobs
    }

    /// The job's leases (none for a job that is not here).
    pub fn leases(&self, id: &JobId) -> &[Lease] {
        self.leases.get(id).map_or(&[], Vec::as_slice)
    }

    pub fn leases_mut(&mut self, id: &JobId) -> Option<&mut Vec<Lease>> {
        self.leases.get_mut(id)
    }

    /// The ids of the job's leases.
    pub fn lease_ids(&self, id: &JobId) -> Vec<LeaseId> {
        self.leases(id).iter().map(|l| l.id).collect()
    }

    /// The job's leases are now `leases` (a placement opened them); for a
    /// job that is not here, nothing.
    pub fn set_leases(&mut self, id: &JobId, leases: Vec<Lease>) {
        if let Some(slot) = self.leases.get_mut(id) {
            *slot = leases;
        }
    }

    /// The job's next attempt starts with no leases (the last attempt's
    /// are closed and written).
    pub fn forget_leases(&mut self, id: &JobId) {
        self.set_leases(id, Vec::new());
    }

    /// Every tracked lease of every active job.
    pub fn all_leases_mut(&mut self) -> impl Iterator<Item = &mut Lease> {
        self.leases.values_mut().flatten()
    }
}

impl Index<&JobId> for ActiveJobs {
    type Output = Job;

    /// The job, which the caller knows is active.
    fn index(&self, id: &JobId) -> &Job {
        &self.jobs[id]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobState;

    fn job(tenant: &str, state: JobState) -> Job {
        let mut job = Job::for_tests(JobId::new_v7());
        job.spec.tenant = tenant.parse().unwrap();
        job.state = state;
        job
    }

    #[test]
    fn a_job_and_its_leases_enter_and_leave_together() {
        let mut jobs = ActiveJobs::default();
        let a = job("t1", JobState::Pending);
        let id = a.id;
        // Leases of a job that is not here are not kept.
        jobs.set_leases(&id, vec![]);
        assert!(jobs.leases_mut(&id).is_none());
        jobs.admit(a, Vec::new());
        assert!(jobs.contains(&id) && jobs.leases(&id).is_empty());
        assert!(jobs.leases_mut(&id).is_some());
        let (gone, leases) = jobs.remove(&id).unwrap();
        assert_eq!((gone.id, leases.len()), (id, 0));
        assert!(!jobs.contains(&id) && jobs.leases_mut(&id).is_none());
        assert!(jobs.remove(&id).is_none());
        assert_eq!(jobs.iter().count(), 0);
    }

    #[test]
    fn a_tenants_jobs_are_its_own() {
        let mut jobs = ActiveJobs::default();
        for (tenant, state) in [
            ("t1", JobState::Pending),
            ("t1", JobState::Running),
            ("t2", JobState::Pending),
        ] {
            jobs.admit(job(tenant, state), Vec::new());
        }
        let t1: TenantName = "t1".parse().unwrap();
        let mut states: Vec<JobState> = jobs.of_tenant(&t1).map(|j| j.state).collect();
        states.sort_by_key(|s| s.as_str());
        assert_eq!(states, [JobState::Pending, JobState::Running]);
        assert_eq!(jobs.iter().count(), 3);
    }
}
