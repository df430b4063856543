//! Selection: which feasible node, and which devices on it.
//!
//! First fit for now: the first feasible node in registration order, the
//! lowest-indexed devices on it. The fragmentation-aware policy replaces this
//! behind the same signature.

use super::cluster::{GpuMode, Node};
use super::feasible::{share_fits, share_memory};
use crate::domain::{DeviceGrant, GpuRequest, Placement, Resources, Share};

/// Devices for `req` on a node that passed feasibility.
pub fn pick_devices(node: &Node, req: &Resources) -> Option<Vec<DeviceGrant>> {
    let gpus = &node.inventory.gpus;
    match &req.gpu {
        GpuRequest::None => Some(Vec::new()),
        GpuRequest::Whole(n) => {
            let picked: Vec<DeviceGrant> = gpus
                .iter()
                .filter(|g| g.is_free_whole())
                .take(n.get() as usize)
                .map(|g| DeviceGrant {
                    gpu_uuid: g.uuid.clone(),
                    device_uuid: g.uuid.clone(),
                    gpu_index: g.index,
                    gpu_model: g.model.clone(),
                    mig_profile: None,
                    share: Share::ONE,
                    gpu_memory: g.memory,
                })
                .collect();
            (picked.len() == n.get() as usize).then_some(picked)
        }
        GpuRequest::Fraction { share, memory } => {
            let g = gpus.iter().find(|g| share_fits(g, *share, *memory))?;
            Some(vec![DeviceGrant {
                gpu_uuid: g.uuid.clone(),
                device_uuid: g.uuid.clone(),
                gpu_index: g.index,
                gpu_model: g.model.clone(),
                mig_profile: None,
                share: *share,
                gpu_memory: share_memory(*share, *memory, g.memory),
            }])
        }
        GpuRequest::Mig(profile) => gpus.iter().find_map(|g| match &g.mode {
            GpuMode::Mig { slices } => slices
                .iter()
                .find(|s| &s.profile == profile && s.holder.is_none())
                .map(|s| {
                    vec![DeviceGrant {
                        gpu_uuid: g.uuid.clone(),
                        device_uuid: s.uuid.clone(),
                        gpu_index: g.index,
                        gpu_model: g.model.clone(),
                        mig_profile: Some(profile.clone()),
                        share: profile.share(),
                        gpu_memory: s.memory,
                    }]
                }),
            GpuMode::Whole { .. } => None,
        }),
    }
}

/// The placement of `req` on `node`.
pub fn placement_on(node: &Node, req: &Resources) -> Option<Placement> {
    Some(Placement {
        node: node.name().clone(),
        devices: pick_devices(node, req)?,
        cpu: req.cpu,
        memory: req.memory,
    })
}
