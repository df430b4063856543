//! Preemption planning: when a job cannot be placed, which preemptible jobs
//! of lower priority could make room, at the least cost.
//!
//! It plans; it does not kill. For each node short only of resources that
//! running jobs hold, victims are taken from the lowest priority band up,
//! cheapest first (GPU time lost since their last checkpoint), until the job
//! fits; then victims that turn out unnecessary are put back, costliest
//! first. The node whose set costs least wins, then the one with fewest
//! victims, then the seeded node order. Jobs that are not preemptible, not of
//! lower priority, or inside their minimum-runtime guard are never touched.

use super::Profile;
use std::collections::{HashMap, HashSet};

use super::cluster::{Cluster, GpuMode, Node};
use super::feasible;
use super::rank::{self, Policy};
use super::request::Request;
use super::select;
use crate::domain::{GpuRequest, JobId, Placement, Share};

/// A running job that might be stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub job: JobId,
    pub priority: i32,
    pub preemptible: bool,
    /// Inside its minimum-runtime guard: may not be preempted yet.
    pub protected: bool,
    /// Work lost if stopped now: GPU share (millionths) × ms since its last
    /// checkpoint (or start).
    pub cost: u64,
}

/// Victims on one node whose removal lets the job fit there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreemptionPlan {
    pub node: crate::domain::NodeName,
    pub victims: Vec<JobId>,
    pub cost: u64,
    /// Where the job goes once the victims are gone.
    pub placement: Placement,
}

fn fits(node: &Node, req: &Request) -> bool {
    feasible::check(node, req).is_ok()
}

/// The cheapest plan, if any node can be freed up for `req` at `priority`.
/// `candidates` describes the jobs running on the cluster's nodes; jobs the
/// cluster places that are not among them are not touched.
pub fn plan(
    cluster: &Cluster,
    req: &Request,
    priority: i32,
    candidates: &[Candidate],
    profile: &Profile,
    exclude: impl Fn(&Node) -> bool,
) -> Option<PreemptionPlan> {
    let by_job: HashMap<JobId, &Candidate> = candidates
        .iter()
        .filter(|c| c.preemptible && !c.protected && c.priority < priority)
        .map(|c| (c.job, c))
        .collect();
    let mut best: Option<(PreemptionPlan, u64)> = None;
    for (i, node) in cluster.nodes().iter().enumerate() {
        if exclude(node) {
            continue;
        }
        match feasible::check(node, req) {
            Ok(()) => continue, // it fits already: nothing to preempt
            Err(r) if !r.is_resource_shortage() => continue,
            Err(_) => {}
        }
        let eligible: Vec<&Candidate> = node.jobs.keys().filter_map(|j| by_job.get(j).copied()).collect();
        if eligible.is_empty() || !could_fit(node, req, &eligible) {
            continue;
        }
        let Some((victims, cost, placement)) = plan_node(node, req, eligible, profile) else {
            continue;
        };
        let rank = select::tie_rank(profile.policy, profile.seed, i, node);
        let better = match &best {
            None => true,
            Some((b, br)) => (cost, victims.len(), rank) < (b.cost, b.victims.len(), *br),
        };
        if better {
            best = Some((
                PreemptionPlan {
                    node: node.name().clone(),
                    victims,
                    cost,
                    placement,
                },
                rank,
            ));
        }
    }
    best.map(|(p, _)| p)
}

/// A quick upper bound: would the job fit if every eligible victim left?
/// Most nodes of a full cluster fail it, and skip the exact search.
fn could_fit(node: &Node, req: &Request, eligible: &[&Candidate]) -> bool {
    let gone: HashSet<JobId> = eligible.iter().map(|c| c.job).collect();
    let freed = |f: &dyn Fn(&Placement) -> u64| -> u64 {
        node.jobs
            .iter()
            .filter(|(j, _)| gone.contains(*j))
            .map(|(_, p)| f(p))
            .sum()
    };
    if node.free_cpu().0 + freed(&|p| p.cpu.0) < req.cpu.0 {
        return false;
    }
    if node.free_memory().0 + freed(&|p| p.memory.0) < req.memory.0 {
        return false;
    }
    let held_by_others = |g: &super::cluster::Gpu| -> Vec<Share> {
        match &g.mode {
            GpuMode::Whole { holders } => holders
                .iter()
                .filter(|h| !gone.contains(&h.job))
                .map(|h| h.share)
                .collect(),
            GpuMode::Mig { .. } => vec![Share::ONE],
        }
    };
    match &req.gpu {
        GpuRequest::None => true,
        GpuRequest::Whole(n) => {
            let free = node
                .inventory
                .gpus
                .iter()
                .filter(|g| g.is_whole_mode() && req.accepts_model(g) && held_by_others(g).is_empty())
                .count();
            free as u64 >= n.get() as u64
        }
        GpuRequest::Fraction { share, .. } => node.inventory.gpus.iter().any(|g| {
            g.is_whole_mode()
                && req.accepts_model(g)
                && held_by_others(g)
                    .into_iter()
                    .try_fold(*share, |acc, s| acc.checked_add(s))
                    .is_some_and(|t| t <= Share::ONE)
        }),
        GpuRequest::Mig(profile) => node.inventory.gpus.iter().any(|g| match &g.mode {
            GpuMode::Mig { slices } => {
                req.accepts_model(g)
                    && slices
                        .iter()
                        .any(|s| &s.profile == profile && s.holder.is_none_or(|h| gone.contains(&h)))
            }
            GpuMode::Whole { .. } => false,
        }),
    }
}

fn plan_node(
    node: &Node,
    req: &Request,
    mut eligible: Vec<&Candidate>,
    profile: &Profile,
) -> Option<(Vec<JobId>, u64, Placement)> {
    eligible.sort_by_key(|c| (c.priority, c.cost, c.job));
    let mut scratch = Cluster::of_nodes(vec![node.clone()]);
    let name = node.name().as_str();
    let mut taken: Vec<(&Candidate, Placement)> = Vec::new();
    for c in eligible {
        if fits(&scratch.nodes()[0], req) {
            break;
        }
        let p = scratch.release(c.job, name)?;
        taken.push((c, p));
    }
    if !fits(&scratch.nodes()[0], req) {
        return None;
    }
    // Put back the victims the job does not need, costliest first.
    let mut order: Vec<usize> = (0..taken.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse((taken[k].0.cost, taken[k].0.job)));
    let mut keep = vec![true; taken.len()];
    for k in order {
        let (c, p) = &taken[k];
        if scratch.allocate(c.job, p).is_ok() {
            if fits(&scratch.nodes()[0], req) {
                keep[k] = false;
            } else {
                scratch.release(c.job, name);
            }
        }
    }
    let victims: Vec<JobId> = taken
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|((c, _), _)| c.job)
        .collect();
    let cost = taken
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|((c, _), _)| c.cost)
        .sum();
    let freed = &scratch.nodes()[0];
    let ctx = rank::Context {
        policy: if profile.policy == Policy::FirstFit {
            Policy::FirstFit
        } else {
            Policy::BestFit
        },
        mix: &profile.mix,
        norms: rank::Norms::of(std::slice::from_ref(freed)),
    };
    let scored = rank::score(&ctx, freed, req, || 0.0);
    let placement = select::plan(freed, req, &scored.choice)?;
    Some((victims, cost, placement))
}
