//! Selection: the best-ranked node, ties broken by a seeded node order, and
//! the plan for the devices ranking chose there.

use super::cluster::{GpuMode, Node};
use super::feasible::share_memory;
use super::rank::{Choice, Policy, Scored};
use super::request::Request;
use crate::domain::{DeviceGrant, GpuRequest, Placement, Share};

/// A 64-bit mix (splitmix64's finaliser): a seeded, stable node order.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The order in which equally scored nodes are preferred (lower first):
/// registration order for first-fit, a seeded random order otherwise.
pub fn tie_rank(policy: Policy, seed: u64, ordinal: usize, node: &Node) -> u64 {
    match policy {
        Policy::FirstFit => ordinal as u64,
        _ => mix64(node.name_hash ^ mix64(seed)),
    }
}

/// Whether `a` beats `b`: higher score, then higher tie key, then lower rank.
pub fn better(a: (&Scored, u64), b: (&Scored, u64)) -> bool {
    (a.0.score, a.0.tie, std::cmp::Reverse(a.1)) > (b.0.score, b.0.tie, std::cmp::Reverse(b.1))
}

/// The placement for a chosen node and devices.
pub fn plan(node: &Node, req: &Request, choice: &Choice) -> Option<Placement> {
    let gpus = &node.inventory.gpus;
    let devices = match (&req.gpu, choice) {
        (GpuRequest::None, _) => Vec::new(),
        (GpuRequest::Whole(n), Choice::Whole(list)) if list.len() == n.get() as usize => list
            .iter()
            .map(|&i| {
                let g = &gpus[i as usize];
                DeviceGrant {
                    gpu_uuid: g.uuid.clone(),
                    device_uuid: g.uuid.clone(),
                    gpu_index: g.index,
                    gpu_model: g.model.clone(),
                    mig_profile: None,
                    share: Share::ONE,
                    gpu_memory: g.memory,
                }
            })
            .collect(),
        (GpuRequest::Fraction { share, memory }, Choice::Share(i)) => {
            let g = &gpus[*i as usize];
            vec![DeviceGrant {
                gpu_uuid: g.uuid.clone(),
                device_uuid: g.uuid.clone(),
                gpu_index: g.index,
                gpu_model: g.model.clone(),
                mig_profile: None,
                share: *share,
                gpu_memory: share_memory(*share, *memory, g.memory),
            }]
        }
        (GpuRequest::Mig(profile), Choice::Slice(gi, si)) => {
            let g = &gpus[*gi as usize];
            let GpuMode::Mig { slices } = &g.mode else {
                return None;
            };
            let s = &slices[*si as usize];
            vec![DeviceGrant {
                gpu_uuid: g.uuid.clone(),
                device_uuid: s.uuid.clone(),
                gpu_index: g.index,
                gpu_model: g.model.clone(),
                mig_profile: Some(profile.clone()),
                share: profile.share(),
                gpu_memory: s.memory,
            }]
        }
        _ => return None,
    };
    Some(Placement {
        node: node.name().clone(),
        devices,
        cpu: req.cpu,
        memory: req.memory,
    })
}
