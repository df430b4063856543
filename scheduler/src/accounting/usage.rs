//! Usage over a window, grouped by any of tenant, project, job, GPU model,
//! MIG profile, node, tag, hour or day: GPU-time and cost per group, summed
//! from the lease hour parts (the unit every total is made of).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::pricing::{Currency, cost};
use super::{GpuTime, hour_parts};
use crate::domain::{Lease, TenantName, UnixMillis};

/// What usage can be grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dimension {
    Tenant,
    Project,
    Job,
    GpuModel,
    MigProfile,
    Node,
    /// The value of one tag (empty when the job had none).
    Tag(String),
    /// The UTC hour (RFC 3339).
    Hour,
    /// The UTC day (`YYYY-MM-DD`).
    Day,
}

impl FromStr for Dimension {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(tag) = s.strip_prefix("tag:") {
            if tag.is_empty() {
                return Err("tag: needs a tag name, e.g. tag:team".into());
            }
            return Ok(Dimension::Tag(tag.to_string()));
        }
        Ok(match s {
            "tenant" => Dimension::Tenant,
            "project" => Dimension::Project,
            "job" => Dimension::Job,
            "model" | "gpu_model" | "gpu-model" => Dimension::GpuModel,
            "mig" | "mig_profile" | "mig-profile" => Dimension::MigProfile,
            "node" => Dimension::Node,
            "hour" => Dimension::Hour,
            "day" => Dimension::Day,
            _ => {
                return Err(format!(
                    "unknown grouping {s:?}: use tenant, project, job, model, mig, node, hour, day or tag:NAME"
                ));
            }
        })
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dimension::Tenant => f.write_str("tenant"),
            Dimension::Project => f.write_str("project"),
            Dimension::Job => f.write_str("job"),
            Dimension::GpuModel => f.write_str("model"),
            Dimension::MigProfile => f.write_str("mig"),
            Dimension::Node => f.write_str("node"),
            Dimension::Tag(t) => write!(f, "tag:{t}"),
            Dimension::Hour => f.write_str("hour"),
            Dimension::Day => f.write_str("day"),
        }
    }
}

/// A usage question.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub from: UnixMillis,
    pub to: UnixMillis,
    pub group_by: Vec<Dimension>,
    /// Only this tenant's leases.
    pub tenant: Option<TenantName>,
}

/// One group's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub keys: Vec<String>,
    pub currency: Currency,
    pub gpu_time: GpuTime,
    pub cost_minor: i128,
    /// Leases that contributed.
    pub leases: u64,
}

/// A row being summed.
#[derive(Default)]
struct Acc {
    gpu_time: GpuTime,
    cost: i128,
    leases: u64,
    last: Option<crate::domain::LeaseId>,
}

fn day_of(t: UnixMillis) -> String {
    t.to_string()[..10].to_string()
}

fn key(d: &Dimension, lease: &Lease, hour: UnixMillis) -> String {
    match d {
        Dimension::Tenant => lease.tenant.to_string(),
        Dimension::Project => lease.project.to_string(),
        Dimension::Job => lease.job_id.to_string(),
        Dimension::GpuModel => lease.device.gpu_model.clone(),
        Dimension::MigProfile => lease
            .device
            .mig_profile
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        Dimension::Node => lease.node.to_string(),
        Dimension::Tag(t) => lease.tags.get(t).cloned().unwrap_or_default(),
        Dimension::Hour => hour.to_string(),
        Dimension::Day => day_of(hour),
    }
}

/// Sums the leases' hour parts inside the window by group, sorted by keys.
/// A lease without a rate costs nothing; currencies never mix in a row.
pub fn aggregate<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    q: &UsageQuery,
    now: UnixMillis,
) -> Vec<UsageRow> {
    let mut rows: BTreeMap<(Vec<String>, Currency), Acc> = BTreeMap::new();
    for lease in leases {
        if q.tenant.as_ref().is_some_and(|t| t != &lease.tenant) {
            continue;
        }
        let currency = lease.rate.map(|r| r.currency).unwrap_or(Currency::USD);
        for part in hour_parts(lease, now, q.from, q.to) {
            let keys = q.group_by.iter().map(|d| key(d, lease, part.hour)).collect();
            let e = rows.entry((keys, currency)).or_default();
            e.gpu_time += part.gpu_time;
            e.cost += lease
                .rate
                .map(|r| cost(part.gpu_time, r.per_gpu_hour))
                .unwrap_or(0);
            // A lease's parts come one after another: count it once per row.
            if e.last != Some(lease.id) {
                e.leases += 1;
                e.last = Some(lease.id);
            }
        }
    }
    rows.into_iter()
        .map(|((keys, currency), acc)| UsageRow {
            keys,
            currency,
            gpu_time: acc.gpu_time,
            cost_minor: acc.cost,
            leases: acc.leases,
        })
        .collect()
}
