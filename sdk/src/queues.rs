//! Queues (Slurm's partitions): create, change, delete (admin), list.

use tonic::Code;

use crate::proto::queue_service_client::QueueServiceClient;
use crate::{Authed, Error, Result, proto};

/// Queue administration and listing.
#[derive(Clone)]
pub struct Queues(pub(crate) QueueServiceClient<Authed>);

impl Queues {
    /// Creates a queue (admin token). `ALREADY_EXISTS` when one has its name.
    pub async fn create(&self, queue: proto::Queue) -> Result<proto::Queue> {
        self.0
            .clone()
            .create_queue(proto::CreateQueueRequest { queue: Some(queue) })
            .await?
            .into_inner()
            .queue
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    /// Changes the fields of `queue.name` that `update_mask` names (by
    /// their names in `Queue`: "priority_tier", "per_tenant.gpus", …; empty:
    /// every field). Safe to retry.
    pub async fn update(&self, queue: proto::Queue, update_mask: Vec<String>) -> Result<proto::Queue> {
        self.0
            .clone()
            .update_queue(proto::UpdateQueueRequest {
                queue: Some(queue),
                update_mask,
            })
            .await?
            .into_inner()
            .queue
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    /// Deletes a queue that holds no jobs and is not the default.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.0
            .clone()
            .delete_queue(proto::DeleteQueueRequest { name: name.into() })
            .await?;
        Ok(())
    }

    /// Fair share as it stands (like `sshare`).
    pub async fn fairshare(&self) -> Result<proto::GetFairShareResponse> {
        Ok(self
            .0
            .clone()
            .get_fair_share(proto::GetFairShareRequest {})
            .await?
            .into_inner())
    }

    /// The queues the caller may submit to (an admin: all), by name, with
    /// their GPUs and jobs now.
    pub async fn list(&self) -> Result<Vec<proto::QueueStatus>> {
        Ok(self
            .0
            .clone()
            .list_queues(proto::ListQueuesRequest {})
            .await?
            .into_inner()
            .queues)
    }
}
