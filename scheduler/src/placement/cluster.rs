//! The cluster as placement sees it: nodes, their devices and who holds what.
//!
//! Plain data owned by the engine (or the simulator) and read by placement.
//! Every change goes through `allocate` / `release`, which refuse to
//! over-commit anything and keep the derived figures placement reads on its
//! hot path (free share per GPU, free whole GPUs, a version per node) exact.

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

/// Millionths of a GPU: the unit placement scores in. Exact for shares with
/// a denominator dividing 10^6 (all decimal shares up to six places); other
/// shares are rounded against the job (used up, free down). Feasibility is
/// always decided on exact shares.
pub const MICRO: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory: MiB,
    pub mode: GpuMode,
    used: Share,
    memory_used: MiB,
}

fn micro_ceil(s: Share) -> u32 {
    let v = (s.numerator() as u128 * MICRO as u128).div_ceil(s.denominator() as u128);
    v.min(MICRO as u128) as u32
}

impl Gpu {
    /// A GPU allocatable whole or in shares.
    pub fn whole(index: u32, uuid: impl Into<String>, model: impl Into<String>, memory: MiB) -> Gpu {
        Gpu {
            index,
            uuid: uuid.into(),
            model: model.into(),
            memory,
            mode: GpuMode::Whole { holders: Vec::new() },
            used: Share::ZERO,
            memory_used: MiB(0),
        }
    }

    /// A GPU partitioned into MIG slices.
    pub fn mig(
        index: u32,
        uuid: impl Into<String>,
        model: impl Into<String>,
        memory: MiB,
        slices: Vec<MigSlice>,
    ) -> Gpu {
        let mut g = Gpu {
            index,
            uuid: uuid.into(),
            model: model.into(),
            memory,
            mode: GpuMode::Mig { slices },
            used: Share::ZERO,
            memory_used: MiB(0),
        };
        g.recount();
        g
    }

    /// Recomputes the derived figures from the holders.
    fn recount(&mut self) {
        let (used, mem) = match &self.mode {
            GpuMode::Whole { holders } => holders.iter().fold((Share::ZERO, 0u64), |(s, m), h| {
                (s.checked_add(h.share).unwrap_or(Share::ONE), m + h.memory.0)
            }),
            GpuMode::Mig { slices } => {
                slices
                    .iter()
                    .filter(|s| s.holder.is_some())
                    .fold((Share::ZERO, 0u64), |(s, m), sl| {
                        (
                            s.checked_add(sl.profile.share()).unwrap_or(Share::ONE),
                            m + sl.memory.0,
                        )
                    })
            }
        };
        self.used = used;
        self.memory_used = MiB(mem);
    }

    /// The sum of the shares held on this GPU.
    pub fn allocated(&self) -> Share {
        self.used
    }

    /// GPU memory held.
    pub fn memory_allocated(&self) -> MiB {
        self.memory_used
    }

    /// Free share in millionths (rounded down).
    pub fn free_micro(&self) -> u32 {
        MICRO - micro_ceil(self.used)
    }

    pub fn is_whole_mode(&self) -> bool {
        matches!(self.mode, GpuMode::Whole { .. })
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
    /// Changes whenever anything placement reads changes; memo key.
    pub version: u64,
    /// A stable hash of the name, for seeded tie-breaks.
    pub name_hash: u64,
    /// Whole-mode GPUs nobody holds any part of.
    pub free_whole: u32,
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

    /// Ready and not drained.
    pub fn takes_work(&self) -> bool {
        self.status == NodeStatus::Ready && self.drained.is_none()
    }

    fn recount(&mut self) {
        self.free_whole = self.inventory.gpus.iter().filter(|g| g.is_free_whole()).count() as u32;
    }
}

/// FNV-1a: stable across runs and platforms, unlike std's hasher.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
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
#[derive(Debug)]
pub struct Cluster {
    /// Unique per instance (clones included), so memos keyed by node version
    /// never mix two clusters up.
    id: u64,
    nodes: Vec<Node>,
    by_name: HashMap<NodeName, usize>,
    next_version: u64,
}

static NEXT_CLUSTER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn new_cluster_id() -> u64 {
    NEXT_CLUSTER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            id: new_cluster_id(),
            nodes: Vec::new(),
            by_name: HashMap::new(),
            next_version: 0,
        }
    }
}

impl Clone for Cluster {
    fn clone(&self) -> Self {
        Cluster {
            id: new_cluster_id(),
            nodes: self.nodes.clone(),
            by_name: self.by_name.clone(),
            next_version: self.next_version,
        }
    }
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cluster of copies of these nodes, holders and all.
    pub fn of_nodes(nodes: Vec<Node>) -> Self {
        let mut c = Cluster::new();
        for n in nodes {
            c.by_name.insert(n.name().clone(), c.nodes.len());
            c.next_version = c.next_version.max(n.version);
            c.nodes.push(n);
        }
        c
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    pub fn ordinal(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn bump(&mut self, i: usize) {
        self.next_version += 1;
        self.nodes[i].version = self.next_version;
    }

    /// Adds a node, or replaces its inventory. Replacing drops every holder on
    /// it: the caller re-applies the placements that survive.
    pub fn upsert_node(&mut self, mut inventory: NodeInventory) {
        for g in &mut inventory.gpus {
            g.recount();
        }
        let mut node = Node {
            name_hash: stable_hash(inventory.name.as_str()),
            inventory,
            status: NodeStatus::Ready,
            drained: None,
            cpu_used: MilliCpu(0),
            memory_used: MiB(0),
            jobs: BTreeMap::new(),
            version: 0,
            free_whole: 0,
        };
        node.recount();
        let i = match self.by_name.get(node.name()) {
            Some(&i) => {
                let drained = self.nodes[i].drained.take();
                self.nodes[i] = Node { drained, ..node };
                i
            }
            None => {
                self.by_name.insert(node.name().clone(), self.nodes.len());
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.bump(i);
    }

    pub fn set_status(&mut self, name: &str, status: NodeStatus) -> bool {
        match self.by_name.get(name).copied() {
            Some(i) => {
                self.nodes[i].status = status;
                self.bump(i);
                true
            }
            None => false,
        }
    }

    /// Drains a node (`Some(reason)`) or undrains it (`None`).
    pub fn set_drain(&mut self, name: &str, reason: Option<String>) -> bool {
        match self.by_name.get(name).copied() {
            Some(i) => {
                self.nodes[i].drained = reason;
                self.bump(i);
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
        node.recount();
        self.bump(i);
        Ok(())
    }

    /// Frees what `job` holds; returns its placement if it held anything.
    pub fn release(&mut self, job: JobId, node: &str) -> Option<Placement> {
        let i = self.by_name.get(node).copied()?;
        let n = &mut self.nodes[i];
        let placement = n.jobs.remove(&job)?;
        n.cpu_used.0 = n.cpu_used.0.saturating_sub(placement.cpu.0);
        n.memory_used.0 = n.memory_used.0.saturating_sub(placement.memory.0);
        for gpu in &mut n.inventory.gpus {
            let touched = match &mut gpu.mode {
                GpuMode::Whole { holders } => {
                    let before = holders.len();
                    holders.retain(|h| h.job != job);
                    holders.len() != before
                }
                GpuMode::Mig { slices } => {
                    let mut t = false;
                    for s in slices.iter_mut().filter(|s| s.holder == Some(job)) {
                        s.holder = None;
                        t = true;
                    }
                    t
                }
            };
            if touched {
                gpu.recount();
            }
        }
        n.recount();
        self.bump(i);
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
    gpu.recount();
}
