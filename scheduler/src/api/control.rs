//! Hold, release, update and requeue (`JobService`'s HoldJob, ReleaseJob,
//! UpdateJob, RequeueJob): checked here, done by the engine.

use allot_proto::v1 as pb;
use tonic::Status;

use super::Api;
use super::convert::parse_job_id;
use super::error::ApiError;
use crate::auth::Caller;
use crate::domain::validate::REASON_BYTES;
use crate::domain::{Hold, Millis, QueueName};
use crate::engine::{JobControl, JobUpdate};

fn reason(r: &str) -> Result<String, ApiError> {
    if r.len() > REASON_BYTES {
        return Err(ApiError::invalid(
            "reason",
            format!("must be at most {REASON_BYTES} bytes"),
        ));
    }
    Ok(r.trim().to_string())
}

impl Api {
    /// Checks the caller may see the job, then has the engine change it.
    async fn control_job(&self, caller: &Caller, id: &str, change: JobControl) -> Result<pb::Job, Status> {
        let id = parse_job_id("id", id)?;
        self.visible_job(caller, id).await?;
        let job = self.engine.control(id, change).await.map_err(ApiError::from)?;
        Ok(self.job_with_leases(job).await?)
    }

    pub(super) async fn hold(&self, caller: &Caller, req: &pb::HoldJobRequest) -> Result<pb::Job, Status> {
        let change = JobControl::Hold {
            by_admin: caller.is_admin(),
            reason: reason(&req.reason)?,
        };
        self.control_job(caller, &req.id, change).await
    }

    pub(super) async fn release(
        &self,
        caller: &Caller,
        req: &pb::ReleaseJobRequest,
    ) -> Result<pb::Job, Status> {
        let change = JobControl::Release {
            by_admin: caller.is_admin(),
        };
        self.control_job(caller, &req.id, change).await
    }

    pub(super) async fn update(
        &self,
        caller: &Caller,
        req: &pb::UpdateJobRequest,
    ) -> Result<pb::Job, Status> {
        let time_limit = match req.time_limit_ms {
            None => None,
            Some(0) => Some(None),
            Some(ms) if ms < 0 => {
                return Err(ApiError::invalid("time_limit_ms", format!("must be >= 0, got {ms}")).into());
            }
            Some(ms) => Some(Some(Millis(ms as u64))),
        };
        let queue = req
            .queue
            .as_deref()
            .map(|q| {
                q.trim()
                    .parse::<QueueName>()
                    .map_err(|e| ApiError::invalid("queue", e))
            })
            .transpose()?;
        if req.priority.is_none() && time_limit.is_none() && queue.is_none() {
            return Err(ApiError::invalid(
                "id",
                "nothing to change: give a priority, a time limit or a queue",
            )
            .into());
        }
        let change = JobControl::Update(JobUpdate {
            priority: req.priority,
            time_limit,
            queue,
        });
        self.control_job(caller, &req.id, change).await
    }

    pub(super) async fn requeue(
        &self,
        caller: &Caller,
        req: &pb::RequeueJobRequest,
    ) -> Result<pb::Job, Status> {
        let reason = reason(&req.reason)?;
        let hold = req.hold.then(|| Hold {
            by_admin: caller.is_admin(),
            reason,
        });
        self.control_job(caller, &req.id, JobControl::Requeue { hold })
            .await
    }
}
