//! Feasibility: can this node take this request, and if not, why not.
//!
//! Every rejection has a name, and says whether waiting (or preempting) could
//! help: "does not fit now" versus "can never fit here".

use std::fmt;

use super::cluster::{Gpu, GpuMode, Node, NodeStatus};
use super::request::Request;
use crate::domain::{GpuRequest, MiB, Share};

/// Why a node was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// The node's agent is not connected.
    NodeDown,
    /// An operator drained the node.
    NodeDrained,
    /// Held for a higher-priority job that is preempting work there.
    NodeReserved,
    /// Reserved (backfill) for a job ahead in the queue, from before this
    /// job's time limit would end it.
    BackfillReserved,
    /// The node lacks a required label.
    LabelMismatch,
    /// The job's node list leaves the node out, or excludes it.
    NodeNotListed,
    /// No GPU of an accepted model.
    ModelMismatch,
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
    /// Whether the node could take the request once others release resources
    /// (or it comes back, is undrained, or its reservation ends).
    pub fn is_resolvable(self) -> bool {
        self.is_resource_shortage()
            || matches!(
                self,
                Rejection::NodeDown
                    | Rejection::NodeDrained
                    | Rejection::NodeReserved
                    | Rejection::BackfillReserved
            )
    }

    /// Whether freeing resources held by jobs on this node could make room
    /// (what a preemption search may try; down and drained nodes excluded).
    pub fn is_resource_shortage(self) -> bool {
        matches!(
            self,
            Rejection::CpuBusy
                | Rejection::MemoryBusy
                | Rejection::GpusBusy
                | Rejection::ShareBusy
                | Rejection::MigSliceBusy
        )
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::NodeDown => "node down",
            Rejection::NodeDrained => "node drained",
            Rejection::NodeReserved => "reserved for a preempting job",
            Rejection::BackfillReserved => "reserved for a job ahead in the queue",
            Rejection::LabelMismatch => "missing node labels",
            Rejection::NodeNotListed => "not in the job's node list, or excluded by it",
            Rejection::ModelMismatch => "GPU model mismatch",
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
pub fn share_memory(share: Share, cap: Option<MiB>, gpu_memory: MiB) -> MiB {
    cap.unwrap_or(MiB(share.mul_floor(gpu_memory.0)))
}

/// Whether a share with its memory cap fits on this GPU now (exact).
pub fn share_fits(gpu: &Gpu, share: Share, cap: Option<MiB>) -> bool {
    if !gpu.is_whole_mode() {
        return false;
    }
    let memory = share_memory(share, cap, gpu.memory);
    let share_ok = gpu
        .allocated()
        .checked_add(share)
        .is_some_and(|total| total <= Share::ONE);
    share_ok && gpu.memory_allocated().0 + memory.0 <= gpu.memory.0
}

/// Checks one node against one request: capacity and constraints first (can
/// it ever fit?), then state (does it fit now?).
pub fn check(node: &Node, req: &Request) -> Result<(), Rejection> {
    if !req.accepts_name(node) {
        return Err(Rejection::NodeNotListed);
    }
    if !req.accepts_labels(node) {
        return Err(Rejection::LabelMismatch);
    }
    if req.cpu > node.inventory.cpu {
        return Err(Rejection::CpuCapacity);
    }
    if req.memory > node.inventory.memory {
        return Err(Rejection::MemoryCapacity);
    }
    check_gpu_capacity(node, req)?;
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
    check_gpu_free(node, req)
}

fn check_gpu_capacity(node: &Node, req: &Request) -> Result<(), Rejection> {
    let gpus = &node.inventory.gpus;
    match &req.gpu {
        GpuRequest::None => Ok(()),
        GpuRequest::Whole(n) => {
            let whole: Vec<&Gpu> = gpus.iter().filter(|g| g.is_whole_mode()).collect();
            let usable = whole.iter().filter(|g| req.accepts_model(g)).count();
            if usable == 0 && !whole.is_empty() && !req.gpu_models.is_empty() {
                return Err(Rejection::ModelMismatch);
            }
            if (usable as u64) < n.get() as u64 {
                return Err(Rejection::GpuCapacity);
            }
            Ok(())
        }
        GpuRequest::Fraction { share, memory } => {
            let whole: Vec<&Gpu> = gpus.iter().filter(|g| g.is_whole_mode()).collect();
            if !whole.is_empty() && !whole.iter().any(|g| req.accepts_model(g)) {
                return Err(Rejection::ModelMismatch);
            }
            let any = whole
                .iter()
                .filter(|g| req.accepts_model(g))
                .any(|g| share_memory(*share, *memory, g.memory) <= g.memory);
            if any {
                Ok(())
            } else {
                Err(Rejection::ShareCapacity)
            }
        }
        GpuRequest::Mig(profile) => {
            let with_profile: Vec<&Gpu> = gpus
                .iter()
                .filter(|g| match &g.mode {
                    GpuMode::Mig { slices } => slices.iter().any(|s| &s.profile == profile),
                    GpuMode::Whole { .. } => false,
                })
                .collect();
            if with_profile.is_empty() {
                return Err(Rejection::MigProfileAbsent);
            }
            if !with_profile.iter().any(|g| req.accepts_model(g)) {
                return Err(Rejection::ModelMismatch);
            }
            Ok(())
        }
    }
}

fn check_gpu_free(node: &Node, req: &Request) -> Result<(), Rejection> {
    let gpus = &node.inventory.gpus;
    match &req.gpu {
        GpuRequest::None => Ok(()),
        GpuRequest::Whole(n) => {
            let free = if req.gpu_models.is_empty() {
                node.free_whole as usize
            } else {
                gpus.iter()
                    .filter(|g| g.is_free_whole() && req.accepts_model(g))
                    .count()
            };
            if (free as u64) < n.get() as u64 {
                Err(Rejection::GpusBusy)
            } else {
                Ok(())
            }
        }
        GpuRequest::Fraction { share, memory } => {
            if gpus
                .iter()
                .any(|g| req.accepts_model(g) && share_fits(g, *share, *memory))
            {
                Ok(())
            } else {
                Err(Rejection::ShareBusy)
            }
        }
        GpuRequest::Mig(profile) => {
            let free = gpus
                .iter()
                .filter(|g| req.accepts_model(g))
                .any(|g| match &g.mode {
                    GpuMode::Mig { slices } => {
                        slices.iter().any(|s| &s.profile == profile && s.holder.is_none())
                    }
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
