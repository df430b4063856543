//! Usage over a window, grouped by any of tenant, project, job, GPU model,
//! MIG profile, node, tag, hour or day: GPU-time and cost per group, summed
//! from the lease hour parts (the unit every total is made of).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::pricing::Currency;
use super::{DAY_MS, GpuTime, HOUR_MS, hour_parts};
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
            if tag.len() > crate::domain::validate::KEY_BYTES {
                return Err(format!(
                    "tag name {} is longer than {} bytes",
                    crate::domain::validate::quote(tag),
                    crate::domain::validate::KEY_BYTES
                ));
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
                    "unknown grouping {}: use tenant, project, job, model, mig, node, hour, day or tag:NAME",
                    crate::domain::validate::quote(s)
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

impl UsageQuery {
    /// `tenant`'s usage from `from` to `now` (at least one millisecond, so
    /// that the window is never empty), grouped by `group_by`.
    pub fn since(
        tenant: &TenantName,
        from: UnixMillis,
        now: UnixMillis,
        group_by: Vec<Dimension>,
    ) -> UsageQuery {
        UsageQuery {
            from,
            to: now.max(UnixMillis(from.0 + 1)),
            group_by,
            tenant: Some(tenant.clone()),
        }
    }

    /// `tenant`'s usage this calendar month (UTC) up to `now`: what budgets
    /// and quota plugins count.
    pub fn month_to_date(tenant: &TenantName, now: UnixMillis, group_by: Vec<Dimension>) -> UsageQuery {
        UsageQuery::since(tenant, now.month_start(), now, group_by)
    }
}

/// One group's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub keys: Vec<String>,
    pub currency: Currency,
    pub gpu_time: GpuTime,
    /// Exact, in micros (millionths of a minor unit); see `minor_of`.
    pub cost_micros: i128,
    /// Leases that contributed.
    pub leases: u64,
    /// GPU-time held on devices whose agents report utilisation, and the part
    /// of it the GPU sat idle.
    pub observed: GpuTime,
    pub idle: GpuTime,
}

/// The attributes of a lease that usage groups by. A roll-up keeps some of
/// them (the rest are empty there); a lease read whole has them all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cell {
    pub tenant: String,
    pub project: String,
    pub model: String,
    pub mig: String,
    pub currency: Currency,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job: String,
}

impl Cell {
    /// Every attribute of the lease.
    pub fn of(lease: &Lease) -> Cell {
        Cell {
            tenant: lease.tenant.to_string(),
            project: lease.project.to_string(),
            model: lease.device.gpu_model.clone(),
            mig: lease
                .device
                .mig_profile
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            currency: lease.rate.map(|r| r.currency).unwrap_or(Currency::USD),
            node: lease.node.to_string(),
            tags: lease.tags.clone(),
            job: lease.job_id.to_string(),
        }
    }

    fn key(&self, d: &Dimension, hour: UnixMillis) -> String {
        match d {
            Dimension::Tenant => self.tenant.clone(),
            Dimension::Project => self.project.clone(),
            Dimension::Job => self.job.clone(),
            Dimension::GpuModel => self.model.clone(),
            Dimension::MigProfile => self.mig.clone(),
            Dimension::Node => self.node.clone(),
            Dimension::Tag(t) => self.tags.get(t).cloned().unwrap_or_default(),
            Dimension::Hour => hour.to_string(),
            Dimension::Day => day_of(hour),
        }
    }
}

/// What one lease-hour part (or a roll-up of many) adds to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub gpu_time: GpuTime,
    /// In micros (millionths of a minor unit).
    pub cost_micros: i128,
    /// Leases with a part in the hour.
    pub parts: u64,
    /// Leases whose first part is in the hour (they started in it).
    pub starts: u64,
    /// GPU-time with utilisation readings, and idle GPU-time.
    pub observed: GpuTime,
    pub idle: GpuTime,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.gpu_time += o.gpu_time;
        self.cost_micros = self.cost_micros.saturating_add(o.cost_micros);
        self.parts += o.parts;
        self.starts += o.starts;
        self.observed += o.observed;
        self.idle += o.idle;
    }

    /// The tally of one lease's part `[start, end)` of `hour`.
    pub fn of_part(lease: &Lease, part: &super::HourPart) -> Tally {
        let held_start = lease.reserved_at;
        let (observed, idle) = match &lease.idle {
            None => (GpuTime::ZERO, GpuTime::ZERO),
            Some(by_hour) => {
                // Idle is known per hour: a part clipped by the window gets
                // its share pro rata.
                let end = lease.ended_at.unwrap_or(part.end).max(part.end);
                let full = (end.0.min(part.hour.0 + HOUR_MS)) - held_start.0.max(part.hour.0);
                let len = part.end.0 - part.start.0;
                let idle_ms = by_hour.get(&part.hour.0).copied().unwrap_or(0).min(full);
                let idle_ms = if full == 0 {
                    0
                } else {
                    (idle_ms as u128 * len as u128 / full as u128) as u64
                };
                (part.gpu_time, GpuTime::of(lease.device.share, idle_ms))
            }
        };
        Tally {
            observed,
            idle,
            gpu_time: part.gpu_time,
            cost_micros: super::part_cost(lease, part),
            parts: 1,
            starts: u64::from(held_start >= part.hour && held_start.0 < part.hour.0 + HOUR_MS),
        }
    }
}

fn day_of(t: UnixMillis) -> String {
    t.to_string()[..10].to_string()
}

/// Sums tallies into rows. A lease is counted once per row: at the first
/// hour of the row inside the window every lease with a part there counts;
/// at later hours only leases that start in them (a lease is one unbroken
/// interval, so nothing is counted twice or missed).
pub struct Rows<'q> {
    q: &'q UsageQuery,
    rows: BTreeMap<(Vec<String>, Currency), Tally>,
}

impl<'q> Rows<'q> {
    pub fn new(q: &'q UsageQuery) -> Self {
        Rows {
            q,
            rows: BTreeMap::new(),
        }
    }

    /// Whether `hour` is the first hour of its row's stretch of the window.
    fn opens_row(&self, hour: UnixMillis) -> bool {
        let window_start = UnixMillis(self.q.from.0 - self.q.from.0 % HOUR_MS);
        let bucket_start = if self.q.group_by.contains(&Dimension::Hour) {
            hour
        } else if self.q.group_by.contains(&Dimension::Day) {
            UnixMillis(hour.0 - hour.0 % DAY_MS)
        } else {
            window_start
        };
        hour == bucket_start.max(window_start)
    }

    pub fn add(&mut self, hour: UnixMillis, cell: &Cell, t: &Tally) {
        let keys = self.q.group_by.iter().map(|d| cell.key(d, hour)).collect();
        let leases = if self.opens_row(hour) { t.parts } else { t.starts };
        let e = self.rows.entry((keys, cell.currency)).or_default();
        e.gpu_time += t.gpu_time;
        e.cost_micros = e.cost_micros.saturating_add(t.cost_micros);
        e.parts += leases;
        e.observed += t.observed;
        e.idle += t.idle;
    }

    /// The lease's parts inside the window (up to `now` while it is open).
    pub fn add_lease(&mut self, lease: &Lease, now: UnixMillis) {
        self.add_lease_within(lease, now, self.q.from, self.q.to);
    }

    /// The lease's parts inside both the window and `[from, to)`.
    pub fn add_lease_within(&mut self, lease: &Lease, now: UnixMillis, from: UnixMillis, to: UnixMillis) {
        if self.q.tenant.as_ref().is_some_and(|t| t != &lease.tenant) {
            return;
        }
        let cell = Cell::of(lease);
        for part in hour_parts(lease, now, from.max(self.q.from), to.min(self.q.to)) {
            self.add(part.hour, &cell, &Tally::of_part(lease, &part));
        }
    }

    /// The rows, sorted by keys.
    pub fn finish(self) -> Vec<UsageRow> {
        self.rows
            .into_iter()
            .map(|((keys, currency), t)| UsageRow {
                keys,
                currency,
                gpu_time: t.gpu_time,
                cost_micros: t.cost_micros,
                leases: t.parts,
                observed: t.observed,
                idle: t.idle,
            })
            .collect()
    }
}

/// Sums the leases' hour parts inside the window by group, sorted by keys.
/// A lease without a rate costs nothing; currencies never mix in a row.
pub fn aggregate<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    q: &UsageQuery,
    now: UnixMillis,
) -> Vec<UsageRow> {
    let mut rows = Rows::new(q);
    for lease in leases {
        rows.add_lease(lease, now);
    }
    rows.finish()
}
