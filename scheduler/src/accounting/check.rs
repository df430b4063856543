//! `allot ledger check`: the invariants the ledger must keep, checked over
//! every job and lease.
//!
//! - On every GPU the leases never exceed it at any instant (exact shares),
//!   and a MIG slice is never held twice at once.
//! - Every lease is well formed (times in order, closed ones have an end and a
//!   reason), belongs to a job that knows it, and a job that has ended holds
//!   no open lease.
//! - A lease's hour parts add up exactly to the lease, and the per-job,
//!   per-tenant and whole-cluster totals agree to the unit.
//! - The roll-ups hold exactly what the closed leases add up to; the open
//!   set and the hour index match the leases.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::rollup::{Closing, decode_key};
use super::usage::{Dimension, Tally, UsageQuery, aggregate};
use super::{GpuTime, held, hour_parts};
use crate::domain::{Job, JobId, Lease, LeaseId, LeaseState, Share, UnixMillis};

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub jobs: usize,
    pub leases: usize,
    pub devices: usize,
    pub gpu_time: GpuTime,
    /// Every broken invariant, one line each; empty when the ledger is sound.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks jobs and leases as of `now` (open leases run to `now`).
pub fn check(jobs: &[Job], leases: &[Lease], now: UnixMillis) -> CheckReport {
    let mut problems = Vec::new();
    let by_job: HashMap<JobId, &Job> = jobs.iter().map(|j| (j.id, j)).collect();
    let lease_ids: HashSet<LeaseId> = leases.iter().map(|l| l.id).collect();

    for l in leases {
        let id = l.id;
        match l.state {
            LeaseState::Closed => {
                if l.ended_at.is_none() || l.end_reason.is_none() {
                    problems.push(format!("lease {id}: closed without an end time or reason"));
                }
            }
            _ => {
                if l.ended_at.is_some() || l.end_reason.is_some() {
                    problems.push(format!("lease {id}: open but has an end"));
                }
            }
        }
        if l.state == LeaseState::Reserved && l.started_at.is_some() {
            problems.push(format!("lease {id}: reserved but started"));
        }
        if let Some(s) = l.started_at
            && s < l.reserved_at
        {
            problems.push(format!("lease {id}: started before it was reserved"));
        }
        if let Some(e) = l.ended_at
            && (e < l.reserved_at || l.started_at.is_some_and(|s| e < s))
        {
            problems.push(format!("lease {id}: ends before it starts"));
        }
        match by_job.get(&l.job_id) {
            None => problems.push(format!("lease {id}: its job {} does not exist", l.job_id)),
            Some(j) => {
                if !j.lease_ids.contains(&id) {
                    problems.push(format!("lease {id}: job {} does not list it", l.job_id));
                }
                if l.state != LeaseState::Closed && (j.state.is_final() || l.attempt != j.attempt) {
                    problems.push(format!(
                        "lease {id}: still open, but its job {} is {} (attempt {})",
                        j.id, j.state, j.attempt
                    ));
                }
            }
        }
        // Hour parts add up to the lease, exactly.
        let (start, end) = held(l, now);
        let whole = GpuTime::of(l.device.share, end.0 - start.0);
        let parts: GpuTime = hour_parts(l, now, UnixMillis(0), UnixMillis(u64::MAX))
            .iter()
            .fold(GpuTime::ZERO, |a, p| a + p.gpu_time);
        if parts != whole {
            problems.push(format!(
                "lease {id}: hour parts add up to {parts}, the lease is {whole}"
            ));
        }
    }
    for j in jobs {
        for lid in &j.lease_ids {
            if !lease_ids.contains(lid) {
                problems.push(format!("job {}: lists lease {lid}, which does not exist", j.id));
            }
        }
    }

    // No GPU over capacity at any instant; no MIG slice held twice.
    let mut by_gpu: BTreeMap<&str, Vec<(UnixMillis, bool, Share, &Lease)>> = BTreeMap::new();
    for l in leases {
        let (start, end) = held(l, now);
        if start == end {
            continue;
        }
        let e = by_gpu.entry(l.device.gpu_uuid.as_str()).or_default();
        e.push((start, true, l.device.share, l));
        e.push((end, false, l.device.share, l));
    }
    let devices = by_gpu.len();
    for (gpu, mut events) in by_gpu {
        // Ends before starts at the same instant: leases are [start, end).
        events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut held_share = Share::ZERO;
        let mut slices: HashMap<&str, u32> = HashMap::new();
        for (t, start, share, l) in events {
            if start {
                held_share = held_share
                    .checked_add(share)
                    .unwrap_or(Share::new(2, 1).expect("non-zero"));
                let n = slices.entry(l.device.device_uuid.as_str()).or_default();
                *n += 1;
                if held_share > Share::ONE {
                    problems.push(format!(
                        "GPU {gpu}: {held_share} held at {t} (lease {} pushed it over)",
                        l.id
                    ));
                }
                if l.device.mig_profile.is_some() && *n > 1 {
                    problems.push(format!("MIG slice {}: held twice at {t}", l.device.device_uuid));
                }
            } else {
                held_share = held_share.checked_sub(share).unwrap_or(Share::ZERO);
                if let Some(n) = slices.get_mut(l.device.device_uuid.as_str()) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    // Totals agree whichever way they are summed.
    let all = UsageQuery {
        from: UnixMillis(0),
        to: UnixMillis(u64::MAX),
        group_by: vec![],
        tenant: None,
    };
    let total = aggregate(leases, &all, now);
    let sum_by = |d: Dimension| -> (GpuTime, i128) {
        aggregate(
            leases,
            &UsageQuery {
                group_by: vec![d],
                ..all.clone()
            },
            now,
        )
        .iter()
        .fold((GpuTime::ZERO, 0), |(g, c), r| {
            (g + r.gpu_time, c + r.cost_micros)
        })
    };
    let cluster = total.iter().fold((GpuTime::ZERO, 0i128), |(g, c), r| {
        (g + r.gpu_time, c + r.cost_micros)
    });
    for d in [Dimension::Job, Dimension::Tenant, Dimension::Hour] {
        let s = sum_by(d.clone());
        if s != cluster {
            problems.push(format!(
                "totals by {d} ({} GPU-h, {} micros) differ from the cluster's ({} GPU-h, {})",
                s.0, s.1, cluster.0, cluster.1
            ));
        }
    }
    CheckReport {
        jobs: jobs.len(),
        leases: leases.len(),
        devices,
        gpu_time: cluster.0,
        problems,
    }
}

/// The ledger's derived data, as stored, to check against the leases.
pub struct Derived {
    /// Roll-up cells by key.
    pub rollups: HashMap<Vec<u8>, Tally>,
    /// Leases in the open set.
    pub open: HashSet<LeaseId>,
    /// Hour-index entries: (hour, lease).
    pub hours: HashSet<(UnixMillis, LeaseId)>,
    /// Closed leases not rolled up yet.
    pub unrolled: HashSet<LeaseId>,
}

/// Checks the roll-ups, the open-lease set and the hour index against the
/// leases they are made from: every closed lease counted once in each
/// roll-up, exactly.
pub fn check_derived(leases: &[Lease], derived: &Derived) -> Vec<String> {
    let mut problems = Vec::new();
    let mut want: HashMap<Vec<u8>, Tally> = HashMap::new();
    for l in leases {
        let open = l.state != LeaseState::Closed;
        if open != derived.open.contains(&l.id) {
            problems.push(format!(
                "lease {}: {} but {} the open set",
                l.id,
                if open { "open" } else { "closed" },
                if open { "missing from" } else { "still in" }
            ));
        }
        if open {
            if derived.unrolled.contains(&l.id) {
                problems.push(format!("lease {}: open but marked for the roll-ups", l.id));
            }
            continue;
        }
        let closing = Closing::of(l);
        for (part, _) in &closing.parts {
            if !derived.hours.contains(&(part.hour, l.id)) {
                problems.push(format!(
                    "lease {}: missing from the hour index at {}",
                    l.id, part.hour
                ));
            }
        }
        // Not in the roll-ups yet when marked: reports read it one by one.
        if !derived.unrolled.contains(&l.id) {
            for (k, tally) in closing.additions() {
                want.entry(k).or_default().add(&tally);
            }
        }
    }
    let mut keys: Vec<&Vec<u8>> = want.keys().chain(derived.rollups.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (w, s) = (
            want.get(k).copied().unwrap_or_default(),
            derived.rollups.get(k).copied().unwrap_or_default(),
        );
        if w != s {
            let at = decode_key(k)
                .map(|(h, c)| format!("{h} {}/{}/{}", c.tenant, c.project, c.model))
                .unwrap_or_else(|| "an unreadable key".into());
            problems.push(format!(
                "roll-up at {at}: holds {} GPU-h, {} micros, {} leases; the leases say {}, {}, {}",
                s.gpu_time, s.cost_micros, s.parts, w.gpu_time, w.cost_micros, w.parts
            ));
        }
    }
    problems
}
