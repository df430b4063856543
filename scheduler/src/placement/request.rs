//! What placement is asked: resources plus where they may come from.

use std::collections::BTreeMap;

use super::cluster::{Gpu, MICRO, Node};
use crate::domain::{GpuRequest, JobSpec, MiB, MilliCpu, NodeName, Resources};

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
    /// The only nodes it may use (sorted; empty: any), and those it must not.
    pub nodes: Vec<NodeName>,
    pub exclude_nodes: Vec<NodeName>,
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
            nodes: spec.constraints.nodes.clone(),
            exclude_nodes: spec.constraints.exclude_nodes.clone(),
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
            nodes: Vec::new(),
            exclude_nodes: Vec::new(),
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
            && self.accepts_name(node)
    }

    /// Whether the job's node list (if any) names the node, and its
    /// exclusions do not.
    pub fn accepts_name(&self, node: &Node) -> bool {
        let name = &node.inventory.name;
        (self.nodes.is_empty() || self.nodes.binary_search(name).is_ok())
            && self.exclude_nodes.binary_search(name).is_err()
    }
}
