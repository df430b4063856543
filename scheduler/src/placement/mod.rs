//! The placement core: a pure function of the cluster and a request.
//!
//! No tokio, tonic or sled here. The stages, each in its own file, run in
//! this order:
//!
//! 1. **feasibility** (`feasible.rs`): every node is checked; a rejected node
//!    records a named reason, so "why is my job pending?" has an answer.
//!    Capacity and constraints come first, so a node that can never fit says
//!    so instead of "busy" (only "busy" is worth waiting or preempting for).
//! 2. **ranking** (`rank.rs`): each feasible node gets an integer score from
//!    the profile's policy, and the devices the job would take there.
//! 3. **selection** (`select.rs`): the best score wins; equal scores go to a
//!    seeded, stable node order, so the same inputs give the same plan.
//! 4. **preemption** (`preempt.rs`) is asked separately, when nothing fits.
//!
//! `Placer` memoises stages 1–2 per (request, node version): a node's answer
//! for a request only changes when the node does, so a decision costs one
//! pass over cached scores plus fresh work for the nodes that changed. The
//! memo never changes a result (a property test checks this).

pub mod cluster;
pub mod feasible;
pub mod frag;
pub mod preempt;
pub mod rank;
pub mod request;
pub mod select;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

pub use cluster::{
    Cluster, Conflict, Gpu, GpuMode, Holder, MICRO, MigSlice, Node, NodeInventory, NodeStatus,
};
pub use feasible::Rejection;
pub use frag::{TaskShape, WorkloadMix};
pub use rank::{Choice, Policy, Scored};
pub use request::Request;

use crate::domain::{GpuRequest, Placement};

/// How placement decides.
#[derive(Debug, Clone)]
pub struct Profile {
    pub policy: Policy,
    /// Seeds the tie-break order among equally scored nodes.
    pub seed: u64,
    /// The expected workload, for the fragmentation-aware policies.
    pub mix: Arc<WorkloadMix>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            policy: Policy::Allot,
            seed: 0,
            mix: Arc::new(WorkloadMix::default()),
        }
    }
}

impl Profile {
    pub fn new(policy: Policy, seed: u64) -> Self {
        Profile {
            policy,
            seed,
            ..Profile::default()
        }
    }
}

/// No node can take the request; says why, node by node, in aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    /// How many nodes were rejected for each reason.
    pub rejections: BTreeMap<Rejection, u32>,
    pub nodes: u32,
}

impl Unplaceable {
    /// Whether waiting for resources to free up could help (some node was
    /// rejected only for what is in use now).
    pub fn is_resolvable(&self) -> bool {
        self.rejections.keys().any(|r| r.is_resolvable())
    }

    /// Whether some node lacks only resources that running jobs hold.
    pub fn has_shortage(&self) -> bool {
        self.rejections.keys().any(|r| r.is_resource_shortage())
    }

    /// Why nothing fits, naming what was asked for:
    /// `no node can take 2 GPUs now (2 nodes: insufficient free GPUs; 1 node: node down)`.
    pub fn explain(&self, what: &dyn fmt::Display) -> String {
        if self.nodes == 0 {
            return format!("no nodes are registered to run {what}");
        }
        let mut parts: Vec<(u32, Rejection)> = self.rejections.iter().map(|(r, n)| (*n, *r)).collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let parts: Vec<String> = parts
            .iter()
            .map(|(n, r)| format!("{n} node{}: {r}", if *n == 1 { "" } else { "s" }))
            .collect();
        let when = if self.is_resolvable() { "now" } else { "at all" };
        format!("no node can take {what} {when} ({})", parts.join("; "))
    }
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain(&"it"))
    }
}

#[derive(Debug, Clone)]
struct Slot {
    version: u64,
    result: Result<Scored, Rejection>,
}

/// The memo is bounded: past this many distinct requests it starts over.
const MEMO_REQUESTS: usize = 1024;

/// Places requests under one profile, remembering per-node answers until
/// the node changes.
#[derive(Debug)]
pub struct Placer {
    profile: Profile,
    cluster_id: u64,
    memo: HashMap<Request, Vec<Option<Slot>>>,
    /// A node's fragmentation under the mix, by node version.
    frag: Vec<Option<(u64, f64)>>,
}

impl Placer {
    pub fn new(profile: Profile) -> Self {
        Placer {
            profile,
            cluster_id: 0,
            memo: HashMap::new(),
            frag: Vec::new(),
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Replaces the workload mix (and forgets what was scored against the old one).
    pub fn set_mix(&mut self, mix: Arc<WorkloadMix>) {
        self.profile.mix = mix;
        self.forget();
    }

    pub fn forget(&mut self) {
        self.memo.clear();
        self.frag.clear();
    }

    /// Places `req` on the best node.
    pub fn place(&mut self, cluster: &Cluster, req: &Request) -> Result<Placement, Unplaceable> {
        self.place_where(cluster, req, |_, _| None)
    }

    /// Places `req`, with `veto` rejecting nodes for reasons of the caller's
    /// (such as a reservation for a preempting job).
    pub fn place_where(
        &mut self,
        cluster: &Cluster,
        req: &Request,
        veto: impl Fn(usize, &Node) -> Option<Rejection>,
    ) -> Result<Placement, Unplaceable> {
        if self.cluster_id != cluster.id() {
            self.forget();
            self.cluster_id = cluster.id();
        }
        if self.memo.len() >= MEMO_REQUESTS && !self.memo.contains_key(req) {
            self.memo.clear();
        }
        let nodes = cluster.nodes();
        let ctx = rank::Context {
            policy: self.profile.policy,
            mix: &self.profile.mix,
            norms: rank::Norms::of(nodes),
        };
        let seed = self.profile.seed;
        let memory_aware = self.profile.policy == Policy::Allot;
        let frag = &mut self.frag;
        frag.resize(nodes.len(), None);
        let slots = self.memo.entry(req.clone()).or_default();
        slots.resize(nodes.len(), None);

        let mut rejections: BTreeMap<Rejection, u32> = BTreeMap::new();
        let mut best: Option<(usize, Scored, u64)> = None;
        for (i, node) in nodes.iter().enumerate() {
            if let Some(r) = veto(i, node) {
                *rejections.entry(r).or_default() += 1;
                continue;
            }
            let fresh = matches!(&slots[i], Some(s) if s.version == node.version);
            if !fresh {
                let result = feasible::check(node, req).map(|()| {
                    rank::score(&ctx, node, req, || match frag[i] {
                        Some((v, f)) if v == node.version => f,
                        _ => {
                            let f = frag::FragState::of(node).frag(&self.profile.mix, memory_aware);
                            frag[i] = Some((node.version, f));
                            f
                        }
                    })
                });
                slots[i] = Some(Slot {
                    version: node.version,
                    result,
                });
            }
            match &slots[i].as_ref().expect("filled above").result {
                Err(r) => *rejections.entry(*r).or_default() += 1,
                Ok(scored) => {
                    let rank = select::tie_rank(self.profile.policy, seed, i, node);
                    if best
                        .as_ref()
                        .is_none_or(|(_, b, br)| select::better((scored, rank), (b, *br)))
                    {
                        best = Some((i, scored.clone(), rank));
                    }
                }
            }
        }
        if let Some((i, scored, _)) = best
            && let Some(p) = select::plan(&nodes[i], req, &scored.choice)
        {
            return Ok(p);
        }
        Err(Unplaceable {
            rejections,
            nodes: nodes.len() as u32,
        })
    }
}

impl Placer {
    /// Places a job: on one node if any has room; a whole-GPU gang that may
    /// spread and fits on no single node goes on as few nodes as possible
    /// (the ones with the most free GPUs, ties in the seeded order), each
    /// part taking the node's CPU and memory request. Returns the parts in
    /// rank order.
    pub fn place_job(
        &mut self,
        cluster: &Cluster,
        req: &Request,
        veto: impl Fn(usize, &Node) -> Option<Rejection>,
    ) -> Result<Vec<Placement>, Unplaceable> {
        let single = self.place_where(cluster, req, &veto);
        let err = match single {
            Ok(p) => return Ok(vec![p]),
            Err(e) => e,
        };
        let GpuRequest::Whole(n) = req.gpu else {
            return Err(err);
        };
        if !req.spread {
            return Err(err);
        }
        // Each part is the same request with fewer GPUs: check nodes as for one GPU.
        let mut one = req.clone();
        one.gpu = GpuRequest::Whole(std::num::NonZeroU32::MIN);
        one.spread = false;
        let mut candidates: Vec<(u32, u64, usize)> = Vec::new();
        for (i, node) in cluster.nodes().iter().enumerate() {
            if veto(i, node).is_some() || feasible::check(node, &one).is_err() {
                continue;
            }
            let free = node
                .inventory
                .gpus
                .iter()
                .filter(|g| g.is_free_whole() && one.accepts_model(g))
                .count() as u32;
            candidates.push((
                free,
                select::tie_rank(self.profile.policy, self.profile.seed, i, node),
                i,
            ));
        }
        candidates.sort_by_key(|&(free, rank, _)| (std::cmp::Reverse(free), rank));
        let total: u32 = candidates.iter().map(|c| c.0).sum();
        if total < n.get() {
            // Across nodes the gang could fit once GPUs free up: say "busy",
            // not "too few in total", when the cluster has the GPUs at all.
            let capacity: u64 = cluster
                .nodes()
                .iter()
                .filter(|node| req.accepts_labels(node))
                .flat_map(|node| node.inventory.gpus.iter())
                .filter(|g| g.is_whole_mode() && req.accepts_model(g))
                .count() as u64;
            let mut err = err;
            if capacity >= n.get() as u64
                && let Some(k) = err.rejections.remove(&Rejection::GpuCapacity)
            {
                *err.rejections.entry(Rejection::GpusBusy).or_default() += k;
            }
            return Err(err);
        }
        let mut parts = Vec::new();
        let mut left = n.get();
        for (free, _, i) in candidates {
            if left == 0 {
                break;
            }
            let take = free.min(left);
            let mut part = one.clone();
            part.gpu = GpuRequest::Whole(std::num::NonZeroU32::new(take).expect("free >= 1"));
            let node = &cluster.nodes()[i];
            let choice = rank::Choice::Whole(
                node.inventory
                    .gpus
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.is_free_whole() && part.accepts_model(g))
                    .take(take as usize)
                    .map(|(k, _)| k as u16)
                    .collect(),
            );
            parts.push(select::plan(node, &part, &choice).ok_or_else(|| err.clone())?);
            left -= take;
        }
        Ok(parts)
    }
}

/// Places one request with a fresh placer: the pure form of [`Placer::place`].
pub fn place(cluster: &Cluster, req: &Request, profile: &Profile) -> Result<Placement, Unplaceable> {
    Placer::new(profile.clone()).place(cluster, req)
}

#[cfg(test)]
mod tests;
