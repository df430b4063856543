//! `allot.v1.JobService`: translate, check access, call the engine.

use std::pin::Pin;
use std::time::Duration;

use allot_proto::v1 as pb;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::{job_pb, job_spec, parse_job_id, state_from_pb};
use super::error::{ApiError, ApiResult};
use super::{Api, caller, page_size, tenant_scope};
use crate::auth::Caller;
use crate::domain::{Job, JobId};
use crate::ledger::JobFilter;

const MAX_LOG_CHUNK: u32 = 1 << 20;
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

impl Api {
    /// The job, if the caller may see it.
    pub(super) async fn visible_job(&self, caller: &Caller, id: JobId) -> ApiResult<Job> {
        let stored = self.read(move |ledger| Ok(ledger.get_job(&id)?)).await?;
        let job = match stored {
            Some(job) => job,
            // An array task not started yet has no record of its own.
            None => self.engine.job(id).await.map_err(|e| match e {
                crate::engine::EngineError::NotFound(_) => ApiError::NotFound(format!("job {id} not found")),
                e => ApiError::from(e),
            })?,
        };
        if !caller.may_access(&job.spec.tenant) {
            return Err(ApiError::PermissionDenied(format!(
                "job {id} belongs to another tenant"
            )));
        }
        Ok(job)
    }

    /// The wire form of a job with its leases (read off the async workers).
    pub(super) async fn job_with_leases(&self, job: Job) -> ApiResult<pb::Job> {
        let now = self.clock.now();
        self.read(move |ledger| {
            let leases = ledger.leases_of(&job.id)?;
            Ok(job_pb(&job, &leases, now))
        })
        .await
    }
}

/// A list page is cut short before its encoded size passes this (clients
/// refuse messages over 4 MiB by default); the next page goes on from there.
pub(super) const MAX_PAGE_BYTES: usize = 3 << 20;

/// Keeps items while their encoded size stays under [`MAX_PAGE_BYTES`]
/// (always at least one): whether the page was cut.
pub(super) fn cut_page<T: prost::Message>(items: &mut Vec<T>) -> bool {
    let mut total = 0;
    let keep = items
        .iter()
        .position(|m| {
            total += m.encoded_len() + 8;
            total > MAX_PAGE_BYTES
        })
        .map(|i| i.max(1))
        .unwrap_or(items.len());
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchJobResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for Api {
    #[instrument(skip(self, request))]
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = caller(&request)?;
        let request_id =
            crate::domain::validate::request_id(&request.get_ref().request_id).map_err(ApiError::from)?;
        let spec = job_spec(&caller, request.get_ref().spec.as_ref())?;
        crate::domain::validate::user_tags(&spec).map_err(ApiError::from)?;
        // What was asked, before admission: a retry asks the same.
        let key = request_id.map(|request_id| crate::engine::SubmitKey {
            request_id,
            fingerprint: {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(
                    serde_json::to_vec(&spec).expect("specs serialize"),
                ))
            },
        });
        if !self.auth.tenant_exists(&spec.tenant).map_err(ApiError::from)? {
            return Err(ApiError::invalid("spec.tenant", format!("unknown tenant {}", spec.tenant)).into());
        }
        // The tenant's admission plugin (else the global one), off the
        // runtime's workers; a refusal is FAILED_PRECONDITION naming it.
        let spec = self.admit(spec).await?;
        // Whatever admission made of it is held to every limit again,
        // the server's grace limit included.
        crate::domain::validate::spec(&spec, &self.engine.limits()).map_err(ApiError::from)?;
        let hold = request.get_ref().hold;
        let job = self
            .engine
            .submit_with(spec, key, hold)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(self.job_with_leases(job).await?),
        }))
    }

    #[instrument(skip(self, request))]
    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let caller = caller(&request)?;
        let id = parse_job_id("id", &request.get_ref().id)?;
        let job = self.visible_job(&caller, id).await?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(self.job_with_leases(job).await?),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let states = req
            .states
            .iter()
            .map(|s| state_from_pb("states", *s))
            .collect::<ApiResult<Vec<_>>>()?;
        let tenant = tenant_scope(&caller, &req.tenant, "jobs")?;
        let limit = page_size(req.page_size);
        let after = match req.page_token.trim() {
            "" => None,
            t => Some(parse_job_id("page_token", t)?),
        };
        let filter = JobFilter { tenant, states };
        let now = self.clock.now();
        let (mut jobs, mut next) = self
            .read(move |ledger| {
                let (jobs, next) = ledger.list_jobs(&filter, after, limit)?;
                let jobs = jobs
                    .iter()
                    .map(|j| Ok(job_pb(j, &ledger.leases_of(&j.id)?, now)))
                    .collect::<ApiResult<Vec<_>>>()?;
                Ok((jobs, next.map(|id| id.to_string())))
            })
            .await?;
        if cut_page(&mut jobs) {
            next = jobs.last().map(|j| j.id.clone());
        }
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let id = parse_job_id("id", &req.id)?;
        self.visible_job(&caller, id).await?;
        if req.reason.len() > crate::domain::validate::REASON_BYTES {
            return Err(ApiError::invalid(
                "reason",
                format!("must be at most {} bytes", crate::domain::validate::REASON_BYTES),
            )
            .into());
        }
        let job = self
            .engine
            .cancel(id, req.reason.trim().to_string(), req.force)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(self.job_with_leases(job).await?),
        }))
    }

    type WatchJobStream = WatchStream;

    #[instrument(skip(self, request))]
    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&request)?;
        let id = parse_job_id("id", &request.get_ref().id)?;
        // Subscribe before reading, so no change falls between the two.
        let mut events = self.engine.subscribe();
        let current = self.visible_job(&caller, id).await?;
        let api = self.clone();
        let stream = async_stream(move |tx| async move {
            let now = crate::domain::UnixMillis::now;
            let send = |job: Job, at: crate::domain::UnixMillis| {
                let api = api.clone();
                async move {
                    let job = api.job_with_leases(job).await?;
                    Ok::<_, Status>(pb::WatchJobResponse {
                        job: Some(job),
                        at_unix_ms: at.0 as i64,
                    })
                }
            };
            let mut last = current.clone();
            let done = current.state.is_final();
            if tx.send(send(current, now()).await).await.is_err() || done {
                return;
            }
            loop {
                // A client that has gone (cancelled, past its deadline)
                // ends the watch at once, not at the job's next change.
                let event = tokio::select! {
                    e = events.recv() => e,
                    _ = tx.closed() => return,
                };
                let (job, at) = match event {
                    Ok(ev) if ev.job.id == id => (ev.job, ev.at),
                    Ok(_) => continue,
                    // Fell behind: re-read the job rather than miss its end.
                    Err(RecvError::Lagged(_)) => match api.read(move |l| Ok(l.get_job(&id)?)).await {
                        Ok(Some(j)) => (j, now()),
                        _ => return,
                    },
                    Err(RecvError::Closed) => {
                        let _ = tx
                            .send(Err(Status::unavailable("the server is shutting down")))
                            .await;
                        return;
                    }
                };
                if job == last {
                    continue;
                }
                last = job.clone();
                let done = job.state.is_final();
                if tx.send(send(job, at).await).await.is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    #[instrument(skip(self, request))]
    async fn get_job_logs(
        &self,
        request: Request<pb::GetJobLogsRequest>,
    ) -> Result<Response<pb::GetJobLogsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let id = parse_job_id("id", &req.id)?;
        self.visible_job(&caller, id).await?;
        let limit = match req.limit {
            0 => MAX_LOG_CHUNK,
            n => n.min(MAX_LOG_CHUNK),
        };
        let node = match req.node.trim() {
            "" => None,
            n => Some(n.parse().map_err(|e| ApiError::invalid("node", e))?),
        };
        let slice = tokio::time::timeout(LOG_TIMEOUT, self.engine.read_logs(id, node, req.offset, limit))
            .await
            .map_err(|_| ApiError::Unavailable("the node holding the output did not answer in time".into()))?
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetJobLogsResponse {
            data: slice.data,
            next_offset: slice.next_offset,
            complete: slice.complete,
            path: slice.path,
            node: slice.node.to_string(),
        }))
    }
    #[instrument(skip(self, request))]
    async fn hold_job(
        &self,
        request: Request<pb::HoldJobRequest>,
    ) -> Result<Response<pb::HoldJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.hold(&caller, request.get_ref()).await?;
        Ok(Response::new(pb::HoldJobResponse { job: Some(job) }))
    }

    #[instrument(skip(self, request))]
    async fn release_job(
        &self,
        request: Request<pb::ReleaseJobRequest>,
    ) -> Result<Response<pb::ReleaseJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.release(&caller, request.get_ref()).await?;
        Ok(Response::new(pb::ReleaseJobResponse { job: Some(job) }))
    }

    #[instrument(skip(self, request))]
    async fn update_job(
        &self,
        request: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::UpdateJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.update(&caller, request.get_ref()).await?;
        Ok(Response::new(pb::UpdateJobResponse { job: Some(job) }))
    }

    #[instrument(skip(self, request))]
    async fn requeue_job(
        &self,
        request: Request<pb::RequeueJobRequest>,
    ) -> Result<Response<pb::RequeueJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.requeue(&caller, request.get_ref()).await?;
        Ok(Response::new(pb::RequeueJobResponse { job: Some(job) }))
    }
}

/// A response stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchJobResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
