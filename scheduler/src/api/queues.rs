//! `allot.v1.QueueService`: queues (Slurm's partitions).

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::share_pb;
use super::error::ApiError;
use super::{Api, caller, tenant_scope};
use crate::domain::QueueName;
use crate::domain::queue::{self, QueueDef};
use crate::engine::QueueView;

fn status_pb(v: &QueueView) -> pb::QueueStatus {
    pb::QueueStatus {
        queue: Some(v.def.to_pb()),
        gpus_total: v.gpus_total,
        gpus_in_use: v.gpus_in_use,
        gpus_idle: v.gpus_idle,
        gpus_down: v.gpus_down,
        gpus_allocated: Some(share_pb(v.gpus_allocated)),
        jobs_pending: v.jobs_pending,
        jobs_running: v.jobs_running,
        nodes: v.nodes,
    }
}

fn queue_name(field: &str, s: &str) -> Result<QueueName, ApiError> {
    s.trim().parse().map_err(|e| ApiError::invalid(field, e))
}

#[tonic::async_trait]
impl pb::queue_service_server::QueueService for Api {
    #[instrument(skip(self, request))]
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "creating a queue")?;
        let q = request
            .get_ref()
            .queue
            .as_ref()
            .ok_or_else(|| ApiError::invalid("queue", "required"))?;
        let def = QueueDef::from_pb(q).map_err(ApiError::from)?;
        let def = self.engine.create_queue(def).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(def.to_pb()),
        }))
    }

    #[instrument(skip(self, request))]
    async fn update_queue(
        &self,
        request: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "changing a queue")?;
        let req = request.into_inner();
        let q = req.queue.ok_or_else(|| ApiError::invalid("queue", "required"))?;
        let name = queue_name("queue.name", &q.name)?;
        let mask = req.update_mask;
        // Checked before the engine is asked, so a bad mask is refused even
        // for a queue that is not there.
        queue::check_mask(&mask).map_err(ApiError::from)?;
        let def = self
            .engine
            .update_queue(name, Box::new(move |current| queue::updated(current, &q, &mask)))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::UpdateQueueResponse {
            queue: Some(def.to_pb()),
        }))
    }

    #[instrument(skip(self, request))]
    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "deleting a queue")?;
        let name = queue_name("name", &request.get_ref().name)?;
        self.engine.delete_queue(name).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn get_fair_share(
        &self,
        request: Request<pb::GetFairShareRequest>,
    ) -> Result<Response<pb::GetFairShareResponse>, Status> {
        // A tenant token sees its own rows; an admin's, all.
        let only = tenant_scope(&caller(&request)?, "", "fair share")?;
        let r = self.engine.fairshare().await.map_err(ApiError::from)?;
        let row = |tenant: &str, project: &str, s: &crate::engine::FairShareStanding| pb::FairShareStanding {
            tenant: tenant.into(),
            project: project.into(),
            weight: s.weight,
            share: s.share,
            usage_gpu_hours: s.usage_gpu_hours,
            usage_share: s.usage_share,
            factor: s.factor,
        };
        let visible = |t: &crate::domain::TenantName| only.as_ref().is_none_or(|o| o == t);
        Ok(Response::new(pb::GetFairShareResponse {
            half_life_ms: r.half_life.0 as i64,
            read_at_unix_ms: r.read_at.map_or(0, |t| t.0 as i64),
            tenants: r
                .tenants
                .iter()
                .filter(|(t, _)| visible(t))
                .map(|(t, s)| row(t.as_str(), "", s))
                .collect(),
            projects: r
                .projects
                .iter()
                .filter(|((t, _), _)| visible(t))
                .map(|((t, p), s)| row(t.as_str(), p.as_str(), s))
                .collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let tenant = tenant_scope(&caller(&request)?, "", "queues")?;
        let views = self.engine.list_queues().await.map_err(ApiError::from)?;
        // A tenant sees the queues it may submit to.
        let queues = views
            .iter()
            .filter(|v| tenant.as_ref().is_none_or(|t| v.def.admits(t)))
            .map(status_pb)
            .collect();
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }
}
