//! Backfill: the top pending jobs that cannot start get a reservation (the
//! earliest time their resources free up, from the time limits of what
//! runs), and a lower job may start now on a reserved node only if its own
//! time limit ends it before the reservation begins. A job without a time
//! limit never ends, so it never goes on a reserved node.
//!
//! Reservations are made afresh at each pass, in queue order, each on a
//! future cluster where every running job has ended at its limit, until
//! the job fits. A later reservation does not use an earlier one's nodes.

use std::collections::HashMap;

use super::Snapshot;
use crate::domain::{JobId, JobState, NodeName, Placement, UnixMillis};
use crate::placement::{Cluster, Placer, Rejection, Request};

/// Top jobs that get a reservation in one pass, by default.
pub const DEFAULT_DEPTH: usize = 8;

/// A reservation: when the job is expected to start, and on which nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub job: JobId,
    pub at: UnixMillis,
    pub nodes: Vec<NodeName>,
}

/// The pass's reservations and what they are made from.
#[derive(Debug, Default)]
pub struct Backfill {
    /// Reservations left to make in this pass.
    depth: usize,
    /// When each placed job ends at the latest, with its nodes; `None`
    /// ends for jobs without a time limit are left out (they never free).
    releases: Vec<(UnixMillis, JobId, Vec<NodeName>)>,
    /// Reserved nodes: from when, for whom.
    reserved: HashMap<NodeName, (UnixMillis, JobId)>,
    pub made: Vec<Reservation>,
}

impl Backfill {
    /// The releases of the jobs placed now, from their time limits.
    pub fn new(snapshot: &Snapshot<'_>, depth: usize) -> Backfill {
        let now = snapshot.now;
        let mut releases: Vec<_> = snapshot
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Starting | JobState::Running))
            .filter_map(|j| {
                let limit = j.spec.time_limit?;
                // One overdue is stopped now; one not started yet runs its
                // whole limit from now.
                let end = j.started_at.unwrap_or(now).plus(limit).max(now);
                Some((end, j.id, j.placements.iter().map(|p| p.node.clone()).collect()))
            })
            .collect();
        releases.sort();
        Backfill {
            depth,
            releases,
            reserved: HashMap::new(),
            made: Vec::new(),
        }
    }

    /// A job placed in this pass: it frees its nodes at its limit.
    pub fn placed(&mut self, job: JobId, end: Option<UnixMillis>, parts: &[Placement]) {
        if let Some(end) = end {
            let at = self.releases.partition_point(|r| r.0 <= end);
            self.releases
                .insert(at, (end, job, parts.iter().map(|p| p.node.clone()).collect()));
        }
    }

    /// Why `node` may not take a job ending at `end` (`None`: never) now.
    pub fn veto(&self, node: &NodeName, job: JobId, end: Option<UnixMillis>) -> Option<Rejection> {
        let (from, owner) = self.reserved.get(node)?;
        if *owner == job || end.is_some_and(|e| e <= *from) {
            return None;
        }
        Some(Rejection::BackfillReserved)
    }

    /// Reserves for a job that does not fit now: the earliest release after
    /// which it fits, on nodes no earlier reservation holds.
    pub fn reserve(
        &mut self,
        job: JobId,
        cluster: &Cluster,
        placer: &mut Placer,
        request: &Request,
    ) -> Option<&Reservation> {
        if self.depth == 0 {
            return None;
        }
        self.depth -= 1;
        let mut future = cluster.clone();
        let taken = &self.reserved;
        let mut i = 0;
        while i < self.releases.len() {
            // Every job ending at this instant goes at once.
            let at = self.releases[i].0;
            while i < self.releases.len() && self.releases[i].0 == at {
                let (_, id, nodes) = &self.releases[i];
                for n in nodes {
                    future.release(*id, n.as_str());
                }
                i += 1;
            }
            let fits = placer.place_job(&future, request, |_, node| {
                taken
                    .contains_key(node.name())
                    .then_some(Rejection::BackfillReserved)
            });
            if let Ok(parts) = fits {
                let nodes: Vec<NodeName> = parts.iter().map(|p| p.node.clone()).collect();
                for n in &nodes {
                    self.reserved.insert(n.clone(), (at, job));
                }
                self.made.push(Reservation { job, at, nodes });
                return self.made.last();
            }
        }
        None
    }
}
