//! Tenants' monthly budgets, and whether each has spent its own.
//!
//! A tenant whose budget is spent gets no new placements. Whether it is
//! spent is worked out from the ledger's roll-ups (by the engine, which
//! reads them) and kept here for [`BUDGET_RECHECK`]: a budget only stops
//! new jobs, so a little staleness lets at most a few more start. A change
//! of the budget, or a lease of the tenant's closing (it spent more),
//! forgets the standing at once.

use std::collections::HashMap;

use crate::accounting::budget::Budget;
use crate::domain::{Millis, TenantName, UnixMillis};

/// How long a tenant's budget standing is trusted before it is read again.
pub const BUDGET_RECHECK: Millis = Millis::from_secs(2);

#[derive(Default)]
pub struct Budgets {
    budgets: HashMap<TenantName, Budget>,
    /// Why each tenant with a budget is held (`None`: it is not), and when
    /// that was worked out.
    standing: HashMap<TenantName, (UnixMillis, Option<String>)>,
}

/// What is known of a tenant's budget standing now.
#[derive(Debug, PartialEq, Eq)]
pub enum Known<'a> {
    /// The tenant has no budget: nothing holds it.
    NoBudget,
    /// Worked out within [`BUDGET_RECHECK`]: held for this reason, or not.
    Fresh(Option<&'a str>),
    /// It has a budget, and its standing must be worked out again.
    Stale(&'a Budget),
}

impl Budgets {
    pub fn from_budgets(budgets: impl IntoIterator<Item = Budget>) -> Budgets {
        Budgets {
            budgets: budgets.into_iter().map(|b| (b.tenant.clone(), b)).collect(),
            standing: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// Sets (`Some`) or removes (`None`) a tenant's budget.
    pub fn set(&mut self, tenant: TenantName, budget: Option<Budget>) {
        self.standing.remove(&tenant);
        match budget {
            Some(b) => self.budgets.insert(tenant, b),
            None => self.budgets.remove(&tenant),
        };
    }

    /// The tenant spent more (a lease of its closed): its standing is
    /// worked out again at the next look.
    pub fn spent(&mut self, tenant: &TenantName) {
        self.standing.remove(tenant);
    }

    pub fn known(&self, tenant: &TenantName, now: UnixMillis) -> Known<'_> {
        let Some(budget) = self.budgets.get(tenant) else {
            return Known::NoBudget;
        };
        match self.standing.get(tenant) {
            Some((at, why)) if *at <= now && now.since(*at) < BUDGET_RECHECK => Known::Fresh(why.as_deref()),
            _ => Known::Stale(budget),
        }
    }

    /// Records the tenant's standing as worked out at `now`.
    pub fn worked_out(&mut self, tenant: &TenantName, now: UnixMillis, why: Option<String>) {
        self.standing.insert(tenant.clone(), (now, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::Currency;

    fn budget(t: &TenantName) -> Budget {
        Budget {
            tenant: t.clone(),
            currency: Currency::USD,
            spend_limit_minor: Some(100),
            gpu_time_limit: None,
        }
    }

    #[test]
    fn a_standing_is_trusted_for_its_recheck_time_and_forgotten_on_a_change() {
        let (a, b): (TenantName, TenantName) = ("a".parse().unwrap(), "b".parse().unwrap());
        let mut budgets = Budgets::from_budgets([budget(&a)]);
        let t0 = UnixMillis(1_000_000);
        assert_eq!(budgets.known(&b, t0), Known::NoBudget);
        assert_eq!(budgets.known(&a, t0), Known::Stale(&budget(&a)));
        budgets.worked_out(&a, t0, Some("has spent its budget".into()));
        assert_eq!(
            budgets.known(&a, t0.plus(Millis(1999))),
            Known::Fresh(Some("has spent its budget"))
        );
        assert!(matches!(
            budgets.known(&a, t0.plus(BUDGET_RECHECK)),
            Known::Stale(_)
        ));
        // A clock that went back does not make an old standing fresh.
        assert!(matches!(budgets.known(&a, UnixMillis(999_000)), Known::Stale(_)));
        // Spending, or a new budget, forgets it at once.
        budgets.worked_out(&a, t0, None);
        assert_eq!(budgets.known(&a, t0), Known::Fresh(None));
        budgets.spent(&a);
        assert!(matches!(budgets.known(&a, t0), Known::Stale(_)));
        budgets.worked_out(&a, t0, None);
        budgets.set(a.clone(), Some(budget(&a)));
        assert!(matches!(budgets.known(&a, t0), Known::Stale(_)));
        budgets.set(a.clone(), None);
        assert_eq!(budgets.known(&a, t0), Known::NoBudget);
        assert!(budgets.is_empty());
    }
}
