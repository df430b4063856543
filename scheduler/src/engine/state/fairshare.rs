//! Fair share in the engine: decayed usage read from the ledger off the
//! engine's task (at most once a minute), factors worked out at each pass.

use super::*;
use crate::accounting::usage::{Dimension, UsageQuery};
use crate::engine::FairShareReport;
use crate::engine::model::fairshare::USAGE_REFRESH;

impl Engine {
    /// Works the factors out for this pass, from the usage last read (the
    /// turn's tick starts a new read when it is older than a minute).
    pub(in crate::engine) fn refresh_fairshare(&mut self) {
        let pending = self.pending_accounts();
        self.fairshare.refresh(pending.iter().map(|(t, p)| (t, p)));
    }

    /// The tenants and projects with pending jobs.
    fn pending_accounts(&self) -> std::collections::BTreeSet<(TenantName, ProjectName)> {
        self.pending
            .iter()
            .filter_map(|id| self.jobs.get(&id))
            .map(|j| (j.spec.tenant.clone(), j.spec.project.clone()))
            .collect()
    }

    /// Starts a read of the usage when the last is older than a minute
    /// (from every tick, so `allot fairshare` is fresh while nothing waits).
    pub(in crate::engine) fn read_usage_if_stale(&mut self, now: UnixMillis) {
        let stale = self
            .fairshare
            .read_at
            .is_none_or(|at| now.since(at) >= USAGE_REFRESH);
        if stale
            && !self.fairshare.reading
            && let Some(me) = self.to_self.as_ref().and_then(|w| w.upgrade())
        {
            self.fairshare.reading = true;
            let ledger = self.ledger.clone();
            let query = UsageQuery {
                from: self.fairshare.window(now),
                to: now.max(UnixMillis(1)),
                group_by: vec![Dimension::Tenant, Dimension::Project, Dimension::Hour],
                tenant: None,
            };
            tokio::spawn(async move {
                let rows =
                    tokio::task::spawn_blocking(move || ledger.usage(&query, now).map_err(|e| e.to_string()))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                let _ = me.send(Command::FairShareUsage { rows, at: now }).await;
            });
        }
    }

    pub(in crate::engine) fn fairshare_report(&self) -> FairShareReport {
        let pending = self.pending_accounts();
        let (tenants, projects) = self.fairshare.report(pending.iter().map(|(t, p)| (t, p)));
        FairShareReport {
            half_life: self.fairshare.config.half_life,
            read_at: self.fairshare.read_at,
            tenants,
            projects,
        }
    }
}
