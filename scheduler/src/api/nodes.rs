//! `allot.v1.NodeService`.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::share_pb;
use super::error::ApiError;
use super::{Api, caller};
use crate::auth::Caller;
use crate::domain::{JobId, NodeName};
use crate::engine::NodeView;
use crate::placement::{GpuMode, NodeStatus};

fn holder(
    caller: &Caller,
    visible: &dyn Fn(&JobId) -> bool,
    job: &JobId,
    share: crate::domain::Share,
    memory: u64,
) -> pb::Holder {
    pb::Holder {
        job_id: if caller.is_admin() || visible(job) {
            job.to_string()
        } else {
            String::new()
        },
        share: Some(share_pb(share)),
        gpu_memory_mib: memory,
    }
}

fn node_pb(caller: &Caller, view: &NodeView, visible: &dyn Fn(&JobId) -> bool) -> pb::Node {
    let n = &view.node;
    // Down says more than drained: a drained node that is also down shows
    // DOWN, with its drain reason kept.
    let state = match (n.status, &n.drained) {
        (NodeStatus::Down, _) => pb::NodeState::Down,
        (NodeStatus::Ready, Some(_)) => pb::NodeState::Drained,
        (NodeStatus::Ready, None) => pb::NodeState::Ready,
    };
    let drain_reason = n.drained.clone().unwrap_or_default();
    let gpus = n
        .inventory
        .gpus
        .iter()
        .map(|g| {
            let (holders, mig_slices) = match &g.mode {
                GpuMode::Whole { holders } => (
                    holders
                        .iter()
                        .map(|h| holder(caller, visible, &h.job, h.share, h.memory.0))
                        .collect(),
                    Vec::new(),
                ),
                GpuMode::Mig { slices } => (
                    Vec::new(),
                    slices
                        .iter()
                        .map(|s| pb::MigSlice {
                            uuid: s.uuid.clone(),
                            profile: s.profile.to_string(),
                            start: s.start as u32,
                            memory_mib: s.memory.0,
                            holder: s
                                .holder
                                .as_ref()
                                .map(|j| holder(caller, visible, j, s.profile.share(), s.memory.0)),
                        })
                        .collect(),
                ),
            };
            pb::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_mib: g.memory.0,
                mig_enabled: matches!(g.mode, GpuMode::Mig { .. }),
                holders,
                mig_slices,
                allocated: Some(share_pb(g.allocated())),
                utilization_pct: view.utilization.get(&g.uuid).copied(),
            }
        })
        .collect();
    pb::Node {
        name: n.name().to_string(),
        state: state as i32,
        drain_reason,
        labels: n.inventory.labels.clone().into_iter().collect(),
        cpu_millis: n.inventory.cpu.0 as i64,
        cpu_millis_allocated: n.cpu_used.0 as i64,
        memory_mib: n.inventory.memory.0 as i64,
        memory_mib_allocated: n.memory_used.0 as i64,
        gpus,
        last_heartbeat_unix_ms: view.last_heartbeat.map(|t| t.0 as i64).unwrap_or(0),
        discovery: view.discovery.clone(),
        agent_version: view.agent_version.clone(),
    }
}

impl Api {
    fn node_for(&self, caller: &Caller, view: &NodeView) -> pb::Node {
        let ledger = self.engine.ledger();
        let visible = |job: &JobId| -> bool {
            matches!(ledger.get_job(job), Ok(Some(j)) if caller.may_access(&j.spec.tenant))
        };
        node_pb(caller, view, &visible)
    }

    pub(super) fn admin_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
        if caller.is_admin() {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!("{what} needs an admin token")))
        }
    }
}

fn node_name(s: &str) -> Result<NodeName, ApiError> {
    s.trim().parse().map_err(|e| ApiError::invalid("name", e))
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for Api {
    #[instrument(skip(self, request))]
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = caller(&request)?;
        let views = self.engine.list_nodes().await.map_err(ApiError::from)?;
        let nodes = views.iter().map(|v| self.node_for(&caller, v)).collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    #[instrument(skip(self, request))]
    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "draining a node")?;
        let req = request.get_ref();
        let name = node_name(&req.name)?;
        let reason = match req.reason.trim() {
            "" => "drained by an operator".to_string(),
            r if r.len() > 1024 => {
                return Err(ApiError::invalid("reason", "must be at most 1024 bytes").into());
            }
            r => r.to_string(),
        };
        let view = self
            .engine
            .drain(name, Some(reason))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DrainNodeResponse {
            node: Some(self.node_for(&caller, &view)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn undrain_node(
        &self,
        request: Request<pb::UndrainNodeRequest>,
    ) -> Result<Response<pb::UndrainNodeResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "undraining a node")?;
        let name = node_name(&request.get_ref().name)?;
        let view = self.engine.drain(name, None).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::UndrainNodeResponse {
            node: Some(self.node_for(&caller, &view)),
        }))
    }
}
