//! The turn's ledger batch. Every durable change the engine makes is a
//! [`Change`], written here and nowhere else; what a change's write failing
//! means (the engine stops, or a line in the log) and whether it needs this
//! turn's flush are properties of the change, decided in one place.
//!
//! A turn's changes go to sled as they are made (so a read later in the
//! turn sees them); at the turn's end [`Batch::seal`] adds the leases
//! closed or priced in it to the roll-ups, and the engine flushes them all
//! at once before any reply, order or event of the turn goes out.

use tracing::{error, warn};

use crate::accounting::budget::Budget;
use crate::domain::{
    Job, Lease, LeaseId, NodeName, PluginPrices, QueueDef, QueueName, TenantName, UnixMillis,
};
use crate::ledger::{Ledger, LedgerError, RequestRecord};

/// One durable change of the engine's state.
pub(in crate::engine) enum Change<'a> {
    /// A job as it stands now, with those of its leases this change opened
    /// or closed, and the idempotency key of the submission that created it
    /// (in the same transaction: a retry finds the job exactly when the job
    /// exists).
    Job {
        job: &'a Job,
        leases: &'a [&'a Lease],
        request: Option<&'a RequestRecord>,
    },
    /// An operator's drain of a node (with its reason), or its end.
    Drain {
        node: &'a NodeName,
        reason: Option<&'a str>,
    },
    /// A tenant's monthly budget, or its removal.
    Budget {
        tenant: &'a TenantName,
        budget: Option<&'a Budget>,
    },
    /// A queue made or changed over the API, or its removal.
    Queue {
        name: &'a QueueName,
        def: Option<&'a QueueDef>,
    },
    /// The prices a lease's pricing plugins gave.
    Prices {
        lease: &'a LeaseId,
        prices: &'a PluginPrices,
    },
    /// When a node was last heard from (so that a restarted controller does
    /// not start the node-lost grace over).
    NodeSeen { node: &'a NodeName, at: UnixMillis },
    /// Idempotency keys past their time.
    ForgetRequests(&'a [RequestRecord]),
}

/// How much a change's write matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Someone is told of it (a reply, an order, an event): it is flushed
    /// with this turn, and a failed write stops the engine, since memory
    /// would be ahead of disk.
    Acknowledged,
    /// Nobody waits for it and a restart asks again for what is missing:
    /// flushed with the next turn that writes, or a tick; a failure is
    /// logged.
    Lazy,
    /// A hint for after a restart: written out within sled's own flush
    /// interval, never flushed on its own; a failure is logged.
    BestEffort,
}

impl Change<'_> {
    fn durability(&self) -> Durability {
        match self {
            Change::Job { .. } | Change::Drain { .. } | Change::Budget { .. } | Change::Queue { .. } => {
                Durability::Acknowledged
            }
            Change::Prices { .. } => Durability::Lazy,
            Change::NodeSeen { .. } | Change::ForgetRequests(_) => Durability::BestEffort,
        }
    }

    fn write(&self, ledger: &Ledger) -> Result<(), LedgerError> {
        match *self {
            Change::Job {
                job,
                leases,
                request: None,
            } => ledger.put_job(job, leases),
            Change::Job { job, leases, request } => ledger.put_job_for(job, leases, request),
            Change::Drain {
                node,
                reason: Some(r),
            } => ledger.put_drain(node, r),
            Change::Drain { node, reason: None } => ledger.remove_drain(node),
            Change::Budget { budget: Some(b), .. } => ledger.put_budget(b),
            Change::Budget { tenant, budget: None } => ledger.remove_budget(tenant),
            Change::Queue { def: Some(q), .. } => ledger.put_queue(q),
            Change::Queue { name, def: None } => ledger.remove_queue(name),
            Change::Prices { lease, prices } => ledger.set_plugin_prices(lease, prices),
            Change::NodeSeen { node, at } => ledger.put_node_seen(node, at),
            Change::ForgetRequests(expired) => ledger.remove_requests(expired),
        }
    }

    /// What the change is, for the log.
    fn describe(&self) -> String {
        match self {
            Change::Job { job, .. } => format!("job {}", job.id),
            Change::Drain { node, .. } => format!("the drain of node {node}"),
            Change::Budget { tenant, .. } => format!("the budget of tenant {tenant}"),
            Change::Queue { name, .. } => format!("queue {name}"),
            Change::Prices { lease, .. } => format!("the plugin prices of lease {lease}"),
            Change::NodeSeen { node, .. } => format!("when node {node} was last heard from"),
            Change::ForgetRequests(r) => format!("the expiry of {} request id(s)", r.len()),
        }
    }
}

/// What this turn has written, and whether a write failed.
pub(in crate::engine) struct Batch {
    ledger: Ledger,
    /// An acknowledged change was written: the turn needs a flush (and a
    /// roll-up).
    acknowledged: bool,
    /// Lazy changes written and not flushed yet.
    lazy: bool,
    /// The first acknowledged write that failed this turn.
    failed: Option<LedgerError>,
}

impl Batch {
    pub(in crate::engine) fn new(ledger: Ledger) -> Batch {
        Batch {
            ledger,
            acknowledged: false,
            lazy: false,
            failed: None,
        }
    }

    /// Writes `change`. An acknowledged change whose write failed stops the
    /// engine at the end of the turn, before anything is acknowledged; the
    /// error's message is returned for a reply that wants it.
    pub(in crate::engine) fn write(&mut self, change: Change<'_>) -> Result<(), String> {
        let durability = change.durability();
        match change.write(&self.ledger) {
            Ok(()) => {
                match durability {
                    Durability::Acknowledged => self.acknowledged = true,
                    Durability::Lazy => self.lazy = true,
                    Durability::BestEffort => {}
                }
                Ok(())
            }
            Err(e) => {
                let what = change.describe();
                let message = format!("cannot record {what}: {e}");
                match durability {
                    Durability::Acknowledged => {
                        error!(error = %e, "ledger write failed: {what}");
                        self.failed.get_or_insert(e);
                    }
                    Durability::Lazy | Durability::BestEffort => warn!(error = %e, "cannot record {what}"),
                }
                Err(message)
            }
        }
    }

    /// The failed write that must stop the engine, if any.
    pub(in crate::engine) fn take_failure(&mut self) -> Option<LedgerError> {
        self.failed.take()
    }

    /// Ends the turn's writes: whether it needs a flush (acknowledged
    /// changes, or lazy ones at a tick), with the leases closed or priced
    /// in it added to the roll-ups first.
    pub(in crate::engine) fn seal(&mut self, ticked: bool) -> Result<bool, LedgerError> {
        let flush = self.acknowledged || (self.lazy && ticked);
        if flush {
            self.ledger.roll_up()?;
            self.acknowledged = false;
            self.lazy = false;
        }
        Ok(flush)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::domain::money::Currency;

    fn budget(tenant: &TenantName) -> Budget {
        Budget {
            tenant: tenant.clone(),
            currency: Currency::USD,
            spend_limit_minor: Some(100),
            gpu_time_limit: None,
        }
    }

    #[test]
    fn an_acknowledged_change_needs_the_turns_flush_and_a_hint_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut batch = Batch::new(ledger.clone());
        let node: NodeName = "n1".parse().unwrap();
        batch
            .write(Change::NodeSeen {
                node: &node,
                at: UnixMillis(5),
            })
            .unwrap();
        assert!(!batch.seal(true).unwrap(), "a hint is never flushed on its own");
        assert_eq!(ledger.nodes_seen().unwrap(), vec![(node.clone(), UnixMillis(5))]);
        let tenant: TenantName = "t1".parse().unwrap();
        let b = budget(&tenant);
        batch
            .write(Change::Budget {
                tenant: &tenant,
                budget: Some(&b),
            })
            .unwrap();
        assert!(
            batch.seal(false).unwrap(),
            "a budget is acknowledged: flushed now"
        );
        assert!(!batch.seal(false).unwrap(), "and once only");
        assert_eq!(ledger.budgets().unwrap(), vec![b]);
        assert!(batch.take_failure().is_none());
    }

    #[test]
    fn a_failed_acknowledged_write_stops_the_engine_and_a_failed_lazy_one_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut batch = Batch::new(ledger.clone());
        // Prices for a lease the ledger does not have: refused, logged, and
        // nothing to flush.
        let err = batch
            .write(Change::Prices {
                lease: &LeaseId::new_v7(),
                prices: &PluginPrices::default(),
            })
            .unwrap_err();
        assert!(
            err.starts_with("cannot record the plugin prices of lease"),
            "{err}"
        );
        assert!(
            batch.take_failure().is_none(),
            "a lazy change's failure does not stop the engine"
        );
        assert!(!batch.seal(true).unwrap());
        let tenant: TenantName = "t1".parse().unwrap();
        ledger.fail_writes.store(true, Ordering::Relaxed);
        let err = batch
            .write(Change::Budget {
                tenant: &tenant,
                budget: Some(&budget(&tenant)),
            })
            .unwrap_err();
        ledger.fail_writes.store(false, Ordering::Relaxed);
        assert_eq!(
            err,
            "cannot record the budget of tenant t1: storage error: IO error: injected write failure"
        );
        let failure = batch.take_failure().expect("the engine must stop");
        assert!(failure.to_string().contains("injected write failure"));
        assert!(!batch.seal(false).unwrap(), "nothing was written to flush");
        assert!(ledger.budgets().unwrap().is_empty());
    }
}
