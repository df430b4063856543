//! Feasibility: can this node take this request, and if not, why not.
//!
//! Every rejection has a name, and says whether waiting (or preempting) could
//! help: "does not fit now" versus "can never fit here".

use std::fmt;

use super::cluster::{GpuMode, Node, NodeStatus};
use crate::domain::{GpuRequest, Resources, Share};

/// Why a node was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// The node's agent is not connected.
    NodeDown,
    /// An operator drained the node.
    NodeDrained,
    /// The node has less CPU in total than asked.
    CpuCapacity,
    /// Not enough CPU free now.
    CpuBusy,
    MemoryCapacity,
    MemoryBusy,
    /// Fewer whole-mode GPUs in total than asked.
    GpuCapacity,
    /// Not enough free whole GPUs now.
    GpusBusy,
    /// No whole-mode GPU with enough memory for the share's cap.
    ShareCapacity,
    /// No GPU with that much share (and GPU memory) free now.
    ShareBusy,
    /// No MIG slice of that profile on this node.
    MigProfileAbsent,
    /// Every slice of that profile is taken.
    MigSliceBusy,
}

impl Rejection {
    /// Whether the node could take the request once others release resources.
    pub fn is_resolvable(self) -> bool {
        matches!(
            self,
            Rejection::CpuBusy
                | Rejection::MemoryBusy
                | Rejection::GpusBusy
                | Rejection::ShareBusy
                | Rejection::MigSliceBusy
                | Rejection::NodeDown
                | Rejection::NodeDrained
        )
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::NodeDown => "node down",
            Rejection::NodeDrained => "node drained",
            Rejection::CpuCapacity => "too little CPU in total",
            Rejection::CpuBusy => "insufficient free CPU",
            Rejection::MemoryCapacity => "too little memory in total",
            Rejection::MemoryBusy => "insufficient free memory",
            Rejection::GpuCapacity => "too few GPUs in total",
            Rejection::GpusBusy => "insufficient free GPUs",
            Rejection::ShareCapacity => "no GPU with enough memory for the share",
            Rejection::ShareBusy => "no GPU with that share free",
            Rejection::MigProfileAbsent => "no MIG slice of that profile",
            Rejection::MigSliceBusy => "all MIG slices of that profile in use",
        })
    }
}

/// The GPU memory a fractional request holds on a GPU of `gpu_memory`.
pub fn share_memory(
    share: Share,
    cap: Option<crate::domain::MiB>,
    gpu_memory: crate::domain::MiB,
) -> crate::domain::MiB {
    cap.unwrap_or(crate::domain::MiB(share.mul_floor(gpu_memory.0)))
}

/// Checks one node against one request.
pub fn check(node: &Node, req: &Resources) -> Result<(), Rejection> {
    // Capacity first: a node that can never fit reports that, not "busy".
    if req.cpu > node.inventory.cpu {
        return Err(Rejection::CpuCapacity);
    }
    if req.memory > node.inventory.memory {
        return Err(Rejection::MemoryCapacity);
    }
    check_gpu_capacity(node, &req.gpu)?;
    if node.status == NodeStatus::Down {
        return Err(Rejection::NodeDown);
    }
    if node.drained.is_some() {
        return Err(Rejection::NodeDrained);
    }
    if req.cpu > node.free_cpu() {
        return Err(Rejection::CpuBusy);
    }
    if req.memory > node.free_memory() {
        return Err(Rejection::MemoryBusy);
    }
    check_gpu_free(node, &req.gpu)
}

fn check_gpu_capacity(node: &Node, gpu: &GpuRequest) -> Result<(), Rejection> {
    let gpus = &node.inventory.gpus;
    match gpu {
        GpuRequest::None => Ok(()),
        GpuRequest::Whole(n) => {
            let whole = gpus
                .iter()
                .filter(|g| matches!(g.mode, GpuMode::Whole { .. }))
                .count();
            if (whole as u64) < n.get() as u64 {
                Err(Rejection::GpuCapacity)
            } else {
                Ok(())
            }
        }
        GpuRequest::Fraction { share, memory } => {
            let any = gpus.iter().any(|g| {
                matches!(g.mode, GpuMode::Whole { .. }) && share_memory(*share, *memory, g.memory) <= g.memory
            });
            if any {
                Ok(())
            } else {
                Err(Rejection::ShareCapacity)
            }
        }
        GpuRequest::Mig(profile) => {
            let any = gpus.iter().any(|g| match &g.mode {
                GpuMode::Mig { slices } => slices.iter().any(|s| &s.profile == profile),
                GpuMode::Whole { .. } => false,
            });
            if any {
                Ok(())
            } else {
                Err(Rejection::MigProfileAbsent)
            }
        }
    }
}

fn check_gpu_free(node: &Node, gpu: &GpuRequest) -> Result<(), Rejection> {
    let gpus = &node.inventory.gpus;
    match gpu {
        GpuRequest::None => Ok(()),
        GpuRequest::Whole(n) => {
            let free = gpus.iter().filter(|g| g.is_free_whole()).count();
            if (free as u64) < n.get() as u64 {
                Err(Rejection::GpusBusy)
            } else {
                Ok(())
            }
        }
        GpuRequest::Fraction { share, memory } => {
            if gpus.iter().any(|g| share_fits(g, *share, *memory)) {
                Ok(())
            } else {
                Err(Rejection::ShareBusy)
            }
        }
        GpuRequest::Mig(profile) => {
            let free = gpus.iter().any(|g| match &g.mode {
                GpuMode::Mig { slices } => slices.iter().any(|s| &s.profile == profile && s.holder.is_none()),
                GpuMode::Whole { .. } => false,
            });
            if free {
                Ok(())
            } else {
                Err(Rejection::MigSliceBusy)
            }
        }
    }
}

/// Whether a share with its memory cap fits on this GPU now.
pub fn share_fits(gpu: &super::cluster::Gpu, share: Share, cap: Option<crate::domain::MiB>) -> bool {
    if !matches!(gpu.mode, GpuMode::Whole { .. }) {
        return false;
    }
    let memory = share_memory(share, cap, gpu.memory);
    let share_ok = gpu
        .allocated()
        .checked_add(share)
        .is_some_and(|total| total <= Share::ONE);
    share_ok && gpu.memory_allocated().0 + memory.0 <= gpu.memory.0
}
