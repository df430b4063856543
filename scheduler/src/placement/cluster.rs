//! The cluster as placement sees it: nodes, their devices and who holds what.
//!
//! Plain data owned by the engine and read by `place`. Every change goes
//! through `allocate` / `release`, which refuse to over-commit anything.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{DeviceGrant, JobId, MiB, MigProfile, MilliCpu, NodeName, Placement, Share};

/// Whether a node's agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Ready,
    /// Its agent is not connected.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub job: JobId,
    pub share: Share,
    pub memory: MiB,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigSlice {
    pub uuid: String,
    pub profile: MigProfile,
    pub start: u8,
    pub memory: MiB,
    pub holder: Option<JobId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuMode {
    /// Allocatable whole, or as fractional shares.
    Whole { holders: Vec<Holder> },
    /// Partitioned into MIG slices; each slice goes to one job.
    Mig { slices: Vec<MigSlice> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory: MiB,
    pub mode: GpuMode,
}

impl Gpu {
    /// The sum of the shares held on this GPU.
    pub fn allocated(&self) -> Share {
        match &self.mode {
            GpuMode::Whole { holders } => holders
                .iter()
                .fold(Share::ZERO, |a, h| a.checked_add(h.share).unwrap_or(Share::ONE)),
            GpuMode::Mig { slices } => slices
                .iter()
                .filter(|s| s.holder.is_some())
                .fold(Share::ZERO, |a, s| {
                    a.checked_add(s.profile.share()).unwrap_or(Share::ONE)
                }),
        }
    }

    /// GPU memory held by fractional holders.
    pub fn memory_allocated(&self) -> MiB {
        match &self.mode {
            GpuMode::Whole { holders } => MiB(holders.iter().map(|h| h.memory.0).sum()),
            GpuMode::Mig { slices } => MiB(slices
                .iter()
                .filter(|s| s.holder.is_some())
                .map(|s| s.memory.0)
                .sum()),
        }
    }

    /// A whole-mode GPU nobody holds any part of.
    pub fn is_free_whole(&self) -> bool {
        matches!(&self.mode, GpuMode::Whole { holders } if holders.is_empty())
    }
}

/// A node's inventory, as its agent registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInventory {
    pub name: NodeName,
    pub labels: BTreeMap<String, String>,
    pub cpu: MilliCpu,
    pub memory: MiB,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub inventory: NodeInventory,
    pub status: NodeStatus,
    /// An operator drained it (with this reason): it takes no new jobs.
    pub drained: Option<String>,
    pub cpu_used: MilliCpu,
    pub memory_used: MiB,
    /// What each job placed here holds.
    pub jobs: BTreeMap<JobId, Placement>,
}

impl Node {
    pub fn name(&self) -> &NodeName {
        &self.inventory.name
    }

    pub fn free_cpu(&self) -> MilliCpu {
        MilliCpu(self.inventory.cpu.0.saturating_sub(self.cpu_used.0))
    }

    pub fn free_memory(&self) -> MiB {
        MiB(self.inventory.memory.0.saturating_sub(self.memory_used.0))
    }
}

/// Why an allocation was refused. Reaching this is a bug in the caller: the
/// plan it applies was not made against the current cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("node {0} is unknown")]
    UnknownNode(NodeName),
    #[error("job {0} already holds resources on node {1}")]
    AlreadyPlaced(JobId, NodeName),
    #[error("node {node} has {free} CPU free, {wanted} wanted")]
    Cpu {
        node: NodeName,
        free: MilliCpu,
        wanted: MilliCpu,
    },
    #[error("node {node} has {free} memory free, {wanted} wanted")]
    Memory { node: NodeName, free: MiB, wanted: MiB },
    #[error("device {uuid} on node {node} cannot take {share} more")]
    Device {
        node: NodeName,
        uuid: String,
        share: Share,
    },
}

/// Nodes by dense ordinal; names are mapped at the edge.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    nodes: Vec<Node>,
    by_name: HashMap<NodeName, usize>,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    /// Adds a node, or replaces its inventory. Replacing drops every holder on
    /// it: the caller re-applies the placements that survive.
    pub fn upsert_node(&mut self, inventory: NodeInventory) {
        let node = Node {
            inventory,
            status: NodeStatus::Ready,
            drained: None,
            cpu_used: MilliCpu(0),
            memory_used: MiB(0),
            jobs: BTreeMap::new(),
        };
        match self.by_name.get(node.name()) {
            Some(&i) => {
                let drained = self.nodes[i].drained.take();
                self.nodes[i] = Node { drained, ..node };
            }
            None => {
                self.by_name.insert(node.name().clone(), self.nodes.len());
                self.nodes.push(node);
            }
        }
    }

    pub fn set_status(&mut self, name: &str, status: NodeStatus) -> bool {
        match self.by_name.get(name) {
            Some(&i) => {
                self.nodes[i].status = status;
                true
            }
            None => false,
        }
    }

    /// Drains a node (`Some(reason)`) or undrains it (`None`).
    pub fn set_drain(&mut self, name: &str, reason: Option<String>) -> bool {
        match self.by_name.get(name) {
            Some(&i) => {
                self.nodes[i].drained = reason;
                true
            }
            None => false,
        }
    }

    /// Applies a placement, checking every capacity first: all or nothing.
    pub fn allocate(&mut self, job: JobId, placement: &Placement) -> Result<(), Conflict> {
        let &i = self
            .by_name
            .get(&placement.node)
            .ok_or_else(|| Conflict::UnknownNode(placement.node.clone()))?;
        let node = &self.nodes[i];
        if node.jobs.contains_key(&job) {
            return Err(Conflict::AlreadyPlaced(job, placement.node.clone()));
        }
        if placement.cpu > node.free_cpu() {
            return Err(Conflict::Cpu {
                node: placement.node.clone(),
                free: node.free_cpu(),
                wanted: placement.cpu,
            });
        }
        if placement.memory > node.free_memory() {
            return Err(Conflict::Memory {
                node: placement.node.clone(),
                free: node.free_memory(),
                wanted: placement.memory,
            });
        }
        for grant in &placement.devices {
            check_grant(node, grant).map_err(|()| Conflict::Device {
                node: placement.node.clone(),
                uuid: grant.device_uuid.clone(),
                share: grant.share,
            })?;
        }
        // Two grants on the same device in one plan would pass the per-grant
        // check; placement never makes such plans, but refuse them anyway.
        let mut uuids: Vec<&str> = placement.devices.iter().map(|g| g.device_uuid.as_str()).collect();
        uuids.sort_unstable();
        if let Some(w) = uuids.windows(2).find(|w| w[0] == w[1]) {
            return Err(Conflict::Device {
                node: placement.node.clone(),
                uuid: w[0].to_string(),
                share: Share::ONE,
            });
        }
        let node = &mut self.nodes[i];
        node.cpu_used.0 += placement.cpu.0;
        node.memory_used.0 += placement.memory.0;
        for grant in &placement.devices {
            apply_grant(node, job, grant);
        }
        node.jobs.insert(job, placement.clone());
        Ok(())
    }

    /// Frees what `job` holds; returns its placement if it held anything.
    pub fn release(&mut self, job: JobId, node: &str) -> Option<Placement> {
        let &i = self.by_name.get(node)?;
        let node = &mut self.nodes[i];
        let placement = node.jobs.remove(&job)?;
        node.cpu_used.0 = node.cpu_used.0.saturating_sub(placement.cpu.0);
        node.memory_used.0 = node.memory_used.0.saturating_sub(placement.memory.0);
        for gpu in &mut node.inventory.gpus {
            match &mut gpu.mode {
                GpuMode::Whole { holders } => holders.retain(|h| h.job != job),
                GpuMode::Mig { slices } => {
                    for s in slices.iter_mut().filter(|s| s.holder == Some(job)) {
                        s.holder = None;
                    }
                }
            }
        }
        Some(placement)
    }
}

fn check_grant(node: &Node, grant: &DeviceGrant) -> Result<(), ()> {
    let gpu = node
        .inventory
        .gpus
        .iter()
        .find(|g| g.uuid == grant.gpu_uuid)
        .ok_or(())?;
    match &gpu.mode {
        GpuMode::Whole { .. } => {
            if grant.mig_profile.is_some() || grant.device_uuid != gpu.uuid {
                return Err(());
            }
            let total = gpu.allocated().checked_add(grant.share).ok_or(())?;
            let memory = gpu.memory_allocated().0 + grant.gpu_memory.0;
            if total > Share::ONE || memory > gpu.memory.0 {
                return Err(());
            }
            Ok(())
        }
        GpuMode::Mig { slices } => {
            let slice = slices.iter().find(|s| s.uuid == grant.device_uuid).ok_or(())?;
            if slice.holder.is_some() || Some(&slice.profile) != grant.mig_profile.as_ref() {
                return Err(());
            }
            Ok(())
        }
    }
}

fn apply_grant(node: &mut Node, job: JobId, grant: &DeviceGrant) {
    let Some(gpu) = node.inventory.gpus.iter_mut().find(|g| g.uuid == grant.gpu_uuid) else {
        return;
    };
    match &mut gpu.mode {
        GpuMode::Whole { holders } => holders.push(Holder {
            job,
            share: grant.share,
            memory: grant.gpu_memory,
        }),
        GpuMode::Mig { slices } => {
            if let Some(s) = slices.iter_mut().find(|s| s.uuid == grant.device_uuid) {
                s.holder = Some(job);
            }
        }
    }
}
