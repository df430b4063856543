//! Jobs in the ledger: the job records, the active and per-tenant indexes,
//! and the idempotency keys of submissions.

use super::*;

impl Ledger {
    /// Writes a job and the given leases (new or changed) in one transaction.
    /// A lease closing joins the hour index and is marked for the roll-ups
    /// (once: writing a closed lease again adds nothing); `roll_up` adds the
    /// marked leases.
    pub fn put_job(&self, job: &Job, leases: &[&Lease]) -> Result<()> {
        self.put_job_for(job, leases, None)
    }

    /// `put_job` of a job created by a request with an idempotency key:
    /// the key is recorded in the same transaction, so a retried request
    /// finds the job whenever the job exists.
    pub fn put_job_for(&self, job: &Job, leases: &[&Lease], request: Option<&RequestRecord>) -> Result<()> {
        self.injected_fault()?;
        struct Write {
            id: LeaseId,
            bytes: Vec<u8>,
            /// Hour-index keys, if it is closed.
            closing: Option<Vec<[u8; 24]>>,
        }
        let job_bytes = encode(job);
        let request_write = request.map(|r| (r.key(), encode(r)));
        let writes: Vec<Write> = leases
            .iter()
            .map(|l| Write {
                id: l.id,
                bytes: encode(*l),
                closing: (l.state == LeaseState::Closed).then(|| {
                    Closing::of(l)
                        .parts
                        .iter()
                        .map(|(p, _)| hour_lease_key(p.hour, &l.id))
                        .collect()
                }),
            })
            .collect();
        let result: Result<(), TransactionError<&'static str>> = (
            &self.jobs,
            &self.jobs_active,
            &self.jobs_by_tenant,
            &self.leases,
            &self.leases_by_job,
            &self.leases_open,
            &self.lease_hours,
            &self.unrolled,
            &self.requests,
        )
            .transaction(
                |(jobs, active, by_tenant, lease_tree, by_job, open, hours, unrolled, requests)| {
                    if let Some((key, value)) = &request_write {
                        requests.insert(key.as_slice(), value.as_slice())?;
                    }
                    jobs.insert(job.id.as_bytes(), job_bytes.as_slice())?;
                    if job.state.is_final() {
                        active.remove(job.id.as_bytes())?;
                    } else {
                        active.insert(job.id.as_bytes(), &[])?;
                    }
                    by_tenant.insert(tenant_key(&job.spec.tenant, &job.id), &[])?;
                    for w in &writes {
                        let id = w.id.as_bytes();
                        // New, or open until now: closing it now counts.
                        let was_open = lease_tree.get(id)?.is_none() || open.get(id)?.is_some();
                        lease_tree.insert(id, w.bytes.as_slice())?;
                        by_job.insert(&job_lease_key(&job.id, &w.id), &[])?;
                        match &w.closing {
                            None => {
                                open.insert(id, &[])?;
                            }
                            Some(hour_keys) => {
                                open.remove(id)?;
                                if was_open {
                                    for k in hour_keys {
                                        hours.insert(k, &[])?;
                                    }
                                    unrolled.insert(id, &[])?;
                                }
                            }
                        }
                    }
                    Ok(())
                },
            );
        committed(result)
    }

    pub fn get_job(&self, id: &JobId) -> Result<Option<Job>> {
        self.jobs
            .get(id.as_bytes())?
            .map(|b| decode("jobs", &b))
            .transpose()
    }

    /// Jobs not in a final state, oldest first.
    pub fn active_jobs(&self) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        for kv in self.jobs_active.iter() {
            let (k, _) = kv?;
            if let Some(b) = self.jobs.get(&k)? {
                out.push(decode("jobs", &b)?);
            }
        }
        Ok(out)
    }

    /// One page of jobs, oldest first, starting after `after`. Returns the page
    /// and the id to continue after, if there may be more.
    pub fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<JobId>)> {
        let keep = |job: &Job| filter.states.is_empty() || filter.states.contains(&job.state);
        let mut out = Vec::new();
        let mut last = None;
        let mut push = |job: Job, out: &mut Vec<Job>| {
            last = Some(job.id);
            if keep(&job) {
                out.push(job);
            }
        };
        match &filter.tenant {
            Some(tenant) => {
                let mut prefix = tenant.as_str().as_bytes().to_vec();
                prefix.push(0);
                let start = match after {
                    Some(a) => {
                        let mut k = tenant_key(tenant, &a);
                        k.push(0);
                        k
                    }
                    None => prefix.clone(),
                };
                for kv in self.jobs_by_tenant.range(start..) {
                    let (k, _) = kv?;
                    if !k.starts_with(&prefix) || out.len() >= limit {
                        break;
                    }
                    let Some(id) = JobId::from_slice(&k[prefix.len()..]) else {
                        continue;
                    };
                    if let Some(b) = self.jobs.get(id.as_bytes())? {
                        push(decode("jobs", &b)?, &mut out);
                    }
                }
            }
            None => {
                let iter = match after {
                    Some(a) => {
                        let mut k = a.as_bytes().to_vec();
                        k.push(0);
                        self.jobs.range(k..)
                    }
                    None => self.jobs.iter(),
                };
                for kv in iter {
                    if out.len() >= limit {
                        break;
                    }
                    let (_, b) = kv?;
                    push(decode("jobs", &b)?, &mut out);
                }
            }
        }
        let more = out.len() >= limit;
        Ok((out, if more { last } else { None }))
    }

    /// Every job, oldest first.
    pub fn all_jobs(&self) -> Result<Vec<Job>> {
        self.jobs.iter().values().map(|b| decode("jobs", &b?)).collect()
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Every idempotency key on record.
    pub fn requests(&self) -> Result<Vec<RequestRecord>> {
        let mut out = Vec::new();
        for kv in self.requests.iter() {
            let (_, v) = kv?;
            out.push(decode("requests", &v)?);
        }
        Ok(out)
    }

    /// Forgets idempotency keys (they expire after a day).
    pub fn remove_requests(&self, expired: &[RequestRecord]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for r in expired {
            batch.remove(r.key());
        }
        Ok(self.requests.apply_batch(batch)?)
    }
}
