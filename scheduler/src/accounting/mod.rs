//! Exact GPU-time and money: how leases become GPU-hours and cost.
//!
//! Everything here is integer. GPU-time is counted in [`GpuTime`] units of
//! 1/63,000,000 of a GPU-millisecond, so that every share allot hands out
//! (decimal shares to six places, thirds, ninths, MIG sevenths) times whole
//! milliseconds is an exact integer. Money is counted in micros: millionths
//! of the currency's minor unit (1 micro = 10⁻⁸ USD), the scale of a
//! [`pricing::Rate`]. A lease is cut at UTC hour boundaries into parts;
//! each part is priced once (to the micro, half to even), and every total
//! — per lease, job, tenant, cluster, hour — is a sum of those parts, so
//! all of them agree to the millisecond and to the micro. Money is rounded
//! to minor units only where it leaves the system (a report's row, a
//! lease's cost, an export line), by running-total rounding (see
//! [`Rounder`]): the rounded lines add up to the rounded total.

pub mod budget;
pub mod check;
pub mod export;
pub mod pricing;
pub mod rollup;
pub mod usage;

use std::fmt;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

use crate::domain::{Lease, Share, UnixMillis};

pub use crate::domain::units::GPU_TIME_DENOMINATOR;

/// Milliseconds in an hour.
pub const HOUR_MS: u64 = 3_600_000;
/// Milliseconds in a UTC day.
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Micros (millionths of a minor unit) in one minor unit.
pub const MICROS_PER_MINOR: i128 = 1_000_000;

/// An amount in micros, rounded half to even to minor units.
pub fn minor_of(micros: i128) -> i128 {
    let (q, r) = (
        micros.div_euclid(MICROS_PER_MINOR),
        micros.rem_euclid(MICROS_PER_MINOR),
    );
    match (2 * r).cmp(&MICROS_PER_MINOR) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + q.rem_euclid(2),
    }
}

/// Rounds a sequence of amounts (in micros) to minor units so that the
/// rounded lines always add up to the rounded total: each line is the
/// rounded running total after it less the rounded running total before it
/// (running-total, or cumulative, rounding). Every line is within one minor
/// unit of its exact amount, and a line of less than half a minor unit is
/// not lost: it carries into the next.
#[derive(Debug, Clone, Default)]
pub struct Rounder {
    exact: i128,
    emitted: i128,
}

impl Rounder {
    /// The next line's amount in minor units.
    pub fn line(&mut self, micros: i128) -> i128 {
        self.exact = self.exact.saturating_add(micros);
        let line = minor_of(self.exact) - self.emitted;
        self.emitted += line;
        line
    }
}

/// The longest window a usage report or an export may span: 366 days (a
/// calendar year, leap or not). Longer ones are refused, so that no single
/// question can ask the ledger for an unbounded amount of work.
pub const MAX_WINDOW_MS: u64 = 366 * DAY_MS;

/// GPU-time units in one GPU-hour.
pub const UNITS_PER_GPU_HOUR: u128 = GPU_TIME_DENOMINATOR * HOUR_MS as u128;

/// Whether `share` × whole milliseconds is exact in [`GpuTime`] units.
pub fn exact_share(share: Share) -> bool {
    share.is_exact_gpu_time()
}

/// GPU-time, exactly: share × milliseconds, in 1/63,000,000 GPU-ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GpuTime(pub u128);

impl GpuTime {
    pub const ZERO: GpuTime = GpuTime(0);

    /// `share` of a GPU held for `ms` milliseconds.
    pub fn of(share: Share, ms: u64) -> GpuTime {
        let per_ms = GPU_TIME_DENOMINATOR * share.numerator() as u128 / share.denominator() as u128;
        GpuTime(per_ms * ms as u128)
    }

    /// GPU-hours, for display only (never summed or billed).
    pub fn hours_f64(self) -> f64 {
        self.0 as f64 / UNITS_PER_GPU_HOUR as f64
    }

    /// GPU-hours as a decimal with `places` digits, rounded half to even.
    pub fn hours_decimal(self, places: u32) -> String {
        let scale = 10u128.pow(places);
        let (n, d) = (self.0 * scale, UNITS_PER_GPU_HOUR);
        let (q, r) = (n / d, n % d);
        let q = match (2 * r).cmp(&d) {
            std::cmp::Ordering::Less => q,
            std::cmp::Ordering::Greater => q + 1,
            std::cmp::Ordering::Equal => q + (q % 2),
        };
        if places == 0 {
            return q.to_string();
        }
        format!("{}.{:0w$}", q / scale, q % scale, w = places as usize)
    }

    /// Whole GPU-milliseconds, rounded down.
    pub fn gpu_ms_floor(self) -> u128 {
        self.0 / GPU_TIME_DENOMINATOR
    }
}

impl Add for GpuTime {
    type Output = GpuTime;
    fn add(self, o: GpuTime) -> GpuTime {
        GpuTime(self.0 + o.0)
    }
}

impl AddAssign for GpuTime {
    fn add_assign(&mut self, o: GpuTime) {
        self.0 += o.0;
    }
}

impl fmt::Display for GpuTime {
    /// GPU-hours with six decimals, e.g. `1.500000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micro = self.0 * 1_000_000 / UNITS_PER_GPU_HOUR;
        write!(f, "{}.{:06}", micro / 1_000_000, micro % 1_000_000)
    }
}

/// One hour-bounded piece of a lease: `[start, end)` within one UTC hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourPart {
    /// The UTC hour the part falls in (its start, a multiple of an hour).
    pub hour: UnixMillis,
    pub start: UnixMillis,
    pub end: UnixMillis,
    pub gpu_time: GpuTime,
}

/// When a lease holds its device: from reservation to its end, or to `now`
/// while open. The device is the job's (and nobody else's) from the moment
/// it is reserved.
pub fn held(lease: &Lease, now: UnixMillis) -> (UnixMillis, UnixMillis) {
    let end = lease.ended_at.unwrap_or(now).max(lease.reserved_at);
    (lease.reserved_at, end)
}

/// What a part of a lease costs, in micros (what bills): the operator's
/// pricing plugin's price for the part's hour when it set one (in minor units; pro rata for a part
/// cut by a window, rounded half to even), else the lease's rate × the
/// part's GPU-time, rounded half to even. A lease without a rate costs
/// nothing.
pub fn part_cost(lease: &Lease, part: &HourPart) -> i128 {
    if let Some(p) = &lease.plugin_prices
        && !p.pending
        && let Some(&price) = p.by_hour.get(&part.hour.0)
    {
        return pro_rata(lease, part, price);
    }
    lease
        .rate
        .map(|r| pricing::cost(part.gpu_time, r.per_gpu_hour))
        .unwrap_or(0)
}

/// What a part costs by the tenant's own pricing plugin (showback, never
/// billed), in micros: `None` when it set no price for the part's hour.
pub fn part_showback(lease: &Lease, part: &HourPart) -> Option<i128> {
    let p = lease.plugin_prices.as_ref().filter(|p| !p.pending)?;
    let &price = p.showback_by_hour.get(&part.hour.0)?;
    Some(pro_rata(lease, part, price))
}

/// The showback cost of the whole lease (so far), in micros, and the
/// plugin that set it; `None` without a tenant's own price.
pub fn showback(lease: &Lease, now: UnixMillis) -> Option<(&str, i128)> {
    let p = lease
        .plugin_prices
        .as_ref()
        .filter(|p| !p.pending && !p.showback_plugin.is_empty())?;
    let total = hour_parts(lease, now, UnixMillis(0), UnixMillis(u64::MAX))
        .iter()
        .map(|part| part_showback(lease, part).unwrap_or_else(|| part_cost(lease, part)))
        .fold(0i128, i128::saturating_add);
    Some((p.showback_plugin.as_str(), total))
}

/// A price in minor units for a part's whole hour share, in micros, pro
/// rata for a part a window cuts (rounded half to even; saturating).
fn pro_rata(lease: &Lease, part: &HourPart, price: i128) -> i128 {
    let price = price.saturating_mul(MICROS_PER_MINOR);
    let (start, end) = held(lease, part.end);
    let full = end.0.min(part.hour.0 + HOUR_MS) - start.0.max(part.hour.0);
    let len = (part.end.0 - part.start.0) as i128;
    if full == 0 || len == full as i128 {
        return price;
    }
    let (n, d) = (price.saturating_mul(len), full as i128);
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + q.rem_euclid(2),
    }
}

/// The lease cut at UTC hour boundaries, clipped to `[from, to)`.
pub fn hour_parts(lease: &Lease, now: UnixMillis, from: UnixMillis, to: UnixMillis) -> Vec<HourPart> {
    let (start, end) = held(lease, now);
    let (start, end) = (start.max(from), end.min(to));
    let mut parts = Vec::new();
    let mut t = start;
    while t < end {
        let hour = UnixMillis(t.0 - t.0 % HOUR_MS);
        let stop = UnixMillis(hour.0 + HOUR_MS).min(end);
        parts.push(HourPart {
            hour,
            start: t,
            end: stop,
            gpu_time: GpuTime::of(lease.device.share, stop.0 - t.0),
        });
        t = stop;
    }
    parts
}

#[cfg(test)]
mod tests;
