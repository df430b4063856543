//! What placement is asked: resources plus where they may come from.

use std::collections::BTreeMap;

use super::cluster::{Gpu, MICRO, Node};
use crate::domain::{GpuRequest, JobSpec, MiB, MilliCpu, Resources};

/// One placement request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub gpu: GpuRequest,
    pub cpu: MilliCpu,
    pub memory: MiB,
    /// Accepted GPU models; empty: any.
    pub gpu_models: Vec<String>,
    /// Labels a node must carry.
    pub node_labels: BTreeMap<String, String>,
    /// A whole-GPU gang may span nodes.
    pub spread: bool,
}

impl Request {
    pub fn of(spec: &JobSpec) -> Request {
        Request {
            gpu: spec.resources.gpu.clone(),
            cpu: spec.resources.cpu,
            memory: spec.resources.memory,
            gpu_models: spec.constraints.gpu_models.clone(),
            node_labels: spec.constraints.node_labels.clone(),
            spread: spec.constraints.spread,
        }
    }

    /// A request with no constraints beyond its resources.
    pub fn resources(r: &Resources) -> Request {
        Request {
            gpu: r.gpu.clone(),
            cpu: r.cpu,
            memory: r.memory,
            gpu_models: Vec::new(),
            node_labels: BTreeMap::new(),
            spread: false,
        }
    }

    /// (share of each GPU in millionths, number of GPUs); (0, 0) for
    /// CPU-only and MIG requests.
    pub fn gpu_micro(&self) -> (u32, u32) {
        match &self.gpu {
            GpuRequest::None | GpuRequest::Mig(_) => (0, 0),
            GpuRequest::Whole(n) => (MICRO, n.get()),
            GpuRequest::Fraction { share, .. } => {
                let v = (share.numerator() as u128 * MICRO as u128).div_ceil(share.denominator() as u128);
                (v.min(MICRO as u128) as u32, 1)
            }
        }
    }

    /// Whether this GPU's model is one the request accepts.
    pub fn accepts_model(&self, gpu: &Gpu) -> bool {
        self.gpu_models.is_empty() || self.gpu_models.iter().any(|m| m == &gpu.model)
    }

    /// Whether the node carries every required label.
    pub fn accepts_labels(&self, node: &Node) -> bool {
        self.node_labels
            .iter()
            .all(|(k, v)| node.inventory.labels.get(k) == Some(v))
    }
}
