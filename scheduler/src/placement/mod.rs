//! The placement core: a pure function of the cluster and a request.
//!
//! No tokio, tonic or sled here. `place` reads the cluster, returns a
//! placement or the reasons nothing fits, and the engine commits it.

pub mod cluster;
pub mod feasible;
pub mod select;

use std::collections::BTreeMap;
use std::fmt;

pub use cluster::{Cluster, Conflict, Gpu, GpuMode, Holder, MigSlice, Node, NodeInventory, NodeStatus};
pub use feasible::Rejection;

use crate::domain::{Placement, Resources};

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
}

impl Unplaceable {
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

/// Places one request: feasibility on every node (recording why each
/// rejected node was rejected), then selection among the feasible ones.
pub fn place(cluster: &Cluster, req: &Resources) -> Result<Placement, Unplaceable> {
    let mut rejections: BTreeMap<Rejection, u32> = BTreeMap::new();
    for node in cluster.nodes() {
        match feasible::check(node, req) {
            Ok(()) => {
                if let Some(p) = select::placement_on(node, req) {
                    return Ok(p);
                }
            }
            Err(r) => *rejections.entry(r).or_default() += 1,
        }
    }
    Err(Unplaceable {
        rejections,
        nodes: cluster.nodes().len() as u32,
    })
}

#[cfg(test)]
mod tests;
