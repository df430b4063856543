//! Roll-ups: usage summed per UTC hour as leases close, so that a report
//! reads a few cells per hour instead of every lease.
//!
//! A closed lease never changes, so its hour parts are added once. The
//! transaction that closes a lease marks it "not rolled up yet"; at the end
//! of each engine turn, before the turn's flush, one transaction adds every
//! marked lease to the roll-ups and clears the marks (group commit for the
//! roll-ups: one read-modify-write per cell and turn, not per lease). A report
//! reads marked leases one by one, so it is exact whether or not they are
//! rolled up yet; a restart rolls up whatever a crash left marked.
//!
//! Four roll-ups keep different attributes, because a cell per node and
//! tenant and tag set would make every report read about as many cells as
//! there are leases; each report reads the smallest roll-up that answers it:
//!
//! | roll-up | keeps | answers |
//! |---|---|---|
//! | `base` | tenant, project, model, MIG profile, currency | grouping by those, hour, day |
//! | `nodes` | node, model, MIG profile, currency (no tenant) | by node, for the whole cluster |
//! | `tags` | the base ones and the tags | also by any tag |
//! | `detail` | the base ones, the node and the tags | anything but job (one tenant's node report; node and tag together) |
//!
//! Grouping by job reads the leases of the window instead (found through the
//! hour index, not a scan of all leases).
//!
//! Each roll-up has cells per hour and cells per UTC day, the day's 24 hours
//! summed (a day cell counts as leases those that overlap the day). A report
//! without an hour grouping reads day cells for the whole days of its window,
//! hour cells for the whole hours at its ends, and leases for the partial
//! hours: a month is some 30 day cells per cell key instead of 720 hour cells.

use super::usage::{Cell, Dimension, Tally};
use super::{DAY_MS, GpuTime, HOUR_MS, HourPart, hour_parts};
use crate::domain::{Lease, UnixMillis};

/// One of the roll-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    Base,
    Nodes,
    Tags,
    Detail,
}

/// The stretch of time a roll-up cell sums: a UTC hour, or a UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Hour,
    Day,
}

impl Span {
    pub fn ms(self) -> u64 {
        match self {
            Span::Hour => HOUR_MS,
            Span::Day => DAY_MS,
        }
    }

    /// The start of the span holding `at`.
    pub fn start(self, at: UnixMillis) -> UnixMillis {
        UnixMillis(at.0 - at.0 % self.ms())
    }
}

impl Rollup {
    /// Smallest first: a report reads the first that answers it.
    pub const ALL: [Rollup; 4] = [Rollup::Base, Rollup::Nodes, Rollup::Tags, Rollup::Detail];

    /// Hour cells of a roll-up under a lower-case letter, its day cells
    /// under the upper-case one.
    fn tag(self, span: Span) -> u8 {
        let t = match self {
            Rollup::Base => b'b',
            Rollup::Nodes => b'n',
            Rollup::Tags => b't',
            Rollup::Detail => b'd',
        };
        match span {
            Span::Hour => t,
            Span::Day => t.to_ascii_uppercase(),
        }
    }

    /// The cell a lease adds to in this roll-up.
    pub fn cell(self, lease: &Lease) -> Cell {
        let mut c = Cell::of(lease);
        c.job.clear();
        match self {
            Rollup::Base => {
                c.node.clear();
                c.tags.clear();
            }
            Rollup::Nodes => {
                c.tenant.clear();
                c.project.clear();
                c.tags.clear();
            }
            Rollup::Tags => c.node.clear(),
            Rollup::Detail => {}
        }
        c
    }

    fn covers(self, d: &Dimension) -> bool {
        !matches!(
            (self, d),
            (_, Dimension::Job)
                | (Rollup::Base, Dimension::Node | Dimension::Tag(_))
                | (
                    Rollup::Nodes,
                    Dimension::Tenant | Dimension::Project | Dimension::Tag(_)
                )
                | (Rollup::Tags, Dimension::Node)
        )
    }

    /// The smallest roll-up that answers a grouping (for one tenant, or
    /// the whole cluster), if one does.
    pub fn for_grouping(group_by: &[Dimension], one_tenant: bool) -> Option<Rollup> {
        Rollup::ALL
            .into_iter()
            .filter(|r| !(one_tenant && *r == Rollup::Nodes))
            .find(|r| group_by.iter().all(|d| r.covers(d)))
    }

    /// The key prefix of this roll-up's cells of the span starting at `at`.
    pub fn prefix(self, span: Span, at: UnixMillis) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = self.tag(span);
        k[1..].copy_from_slice(&at.0.to_be_bytes());
        k
    }

    /// The key prefix of one tenant's cells of the span starting at `at`
    /// (tenant names hold no NUL).
    pub fn tenant_prefix(self, span: Span, at: UnixMillis, tenant: &str) -> Vec<u8> {
        let mut k = self.prefix(span, at).to_vec();
        k.extend_from_slice(tenant.as_bytes());
        k.push(0);
        k
    }

    /// `tag ++ span start ++ tenant ++ NUL ++ cell as JSON`: a window is one
    /// range, and one tenant's cells in a span are one prefix.
    pub fn key(self, span: Span, at: UnixMillis, cell: &Cell) -> Vec<u8> {
        self.key_with(
            span,
            at,
            &cell.tenant,
            &serde_json::to_vec(cell).expect("cells always serialize"),
        )
    }

    fn key_with(self, span: Span, at: UnixMillis, tenant: &str, cell_json: &[u8]) -> Vec<u8> {
        let mut k = self.tenant_prefix(span, at, tenant);
        k.extend_from_slice(cell_json);
        k
    }
}

/// The start of the span (hour or day) of a roll-up key.
pub fn decode_span_start(k: &[u8]) -> Option<UnixMillis> {
    Some(UnixMillis(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?)))
}

/// A roll-up key read back: the start of its span (hour or day) and its cell.
pub fn decode_key(k: &[u8]) -> Option<(UnixMillis, Cell)> {
    let hour = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let rest = k.get(9..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let cell = serde_json::from_slice(&rest[nul + 1..]).ok()?;
    Some((UnixMillis(hour), cell))
}

/// A tally as stored: 80 bytes, little-endian.
pub fn encode_tally(t: &Tally) -> [u8; 80] {
    let mut b = [0u8; 80];
    b[..16].copy_from_slice(&t.gpu_time.0.to_le_bytes());
    b[16..32].copy_from_slice(&t.cost_micros.to_le_bytes());
    b[32..40].copy_from_slice(&t.parts.to_le_bytes());
    b[40..48].copy_from_slice(&t.starts.to_le_bytes());
    b[48..64].copy_from_slice(&t.observed.0.to_le_bytes());
    b[64..].copy_from_slice(&t.idle.0.to_le_bytes());
    b
}

pub fn decode_tally(b: &[u8]) -> Option<Tally> {
    if b.len() != 80 {
        return None;
    }
    let u128_at = |i: usize| b[i..i + 16].try_into().ok().map(u128::from_le_bytes);
    Some(Tally {
        gpu_time: GpuTime(u128_at(0)?),
        cost_micros: i128::from_le_bytes(b[16..32].try_into().ok()?),
        parts: u64::from_le_bytes(b[32..40].try_into().ok()?),
        starts: u64::from_le_bytes(b[40..48].try_into().ok()?),
        observed: GpuTime(u128_at(48)?),
        idle: GpuTime(u128_at(64)?),
    })
}

/// Everything closing `lease` adds: each hour part with its tally, and the
/// roll-up cells (one per roll-up) it goes to.
pub struct Closing {
    pub parts: Vec<(HourPart, Tally)>,
    pub cells: Vec<(Rollup, Cell)>,
}

impl Closing {
    pub fn of(lease: &Lease) -> Closing {
        let end = lease.ended_at.unwrap_or(lease.reserved_at);
        let parts = hour_parts(lease, end, UnixMillis(0), UnixMillis(u64::MAX))
            .into_iter()
            .map(|p| (p, Tally::of_part(lease, &p)))
            .collect();
        let cells = Rollup::ALL.into_iter().map(|r| (r, r.cell(lease))).collect();
        Closing { parts, cells }
    }

    /// What the lease adds to each roll-up key: every hour part to its
    /// hour's cell and its day's, in every roll-up.
    pub fn additions(&self) -> Vec<(Vec<u8>, Tally)> {
        let mut out = Vec::with_capacity(self.parts.len() * self.cells.len() * 2);
        for (r, cell) in &self.cells {
            let json = serde_json::to_vec(cell).expect("cells always serialize");
            for (part, tally) in &self.parts {
                out.push((r.key_with(Span::Hour, part.hour, &cell.tenant, &json), *tally));
                let day = Span::Day.start(part.hour);
                out.push((
                    r.key_with(Span::Day, day, &cell.tenant, &json),
                    day_share(part.hour, tally),
                ));
            }
        }
        out
    }
}

/// What an hour's tally adds to its day's cell: all of it, but that a day
/// counts as leases those overlapping it: the ones in its first hour, and
/// those starting in its later hours.
fn day_share(hour: UnixMillis, t: &Tally) -> Tally {
    let mut d = *t;
    if Span::Day.start(hour) != hour {
        d.parts = t.starts;
    }
    d
}
