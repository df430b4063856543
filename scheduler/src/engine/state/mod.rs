//! The engine's state and how each command changes it.

mod agents;
mod arrays;
mod control;
mod deps;
mod fairshare;
mod jobs;
mod load;
mod queues;
mod stops;

pub(super) use arrays::ARRAY_ROUNDS;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::batch::{Batch, Change};
use super::model::{
    ActiveJobs, AgentLink, Arrays, Budgets, DependencyGraph, FairShare, NodeMeta, Nominations, Pending,
    Queues, QuotaBook,
};
use super::observe::Observers;
use super::{
    AgentEvent, AgentOrder, Command, EngineConfig, EngineError, EngineResult, ExitOutcome, JobEvent, JobExit,
    LogSlice, NodeView, REQUEST_ID_TTL, Registration, RunningPart, StopReason, SubmitKey,
};
use crate::clock::Clock;
use crate::domain::{
    EndReason, Job, JobId, JobSpec, JobState, Lease, LeaseId, LeaseState, Millis, NodeName, PluginPrices,
    ProjectName, TenantName, UnixMillis,
};
use crate::ledger::{Ledger, RequestRecord};
use crate::placement::{Cluster, NodeStatus, Placer, Profile, Request, WorkloadMix};
use crate::policy::PolicyHost;
use crate::policy::types::{ExtensionPoint, PriceInput, Usage as PolicyUsage};

/// Commands handled per turn before the ledger is flushed.
const MAX_BATCH: usize = 512;

/// A placement pass runs at least this often while jobs are pending.
const PASS_EVERY: Millis = Millis::from_secs(5);

/// How long a turn waits for the answers of quota plugins it asked, so that
/// the placements they allow go out with it.
const QUOTA_WINDOW: Millis = Millis(2);
/// Work that must wait until the batch is durable.
pub(super) enum Effect {
    Reply(Box<dyn FnOnce() + Send>),
    /// Replies with the job as it stands once the turn is done.
    JobReply(JobId, oneshot::Sender<EngineResult<Job>>),
    Order(NodeName, AgentOrder),
    Event(Box<Job>),
}

pub struct Engine {
    pub(super) ledger: Ledger,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) config: EngineConfig,
    /// Who is told of durable job changes.
    pub(super) observers: Observers,
    pub(super) cluster: Cluster,
    pub(super) placer: Placer,
    /// Requests of recent submissions: the workload the fragmentation-aware
    /// policy keeps room for.
    pub(super) mix_window: VecDeque<Request>,
    /// Submissions since the mix was last rebuilt.
    pub(super) since_mix: usize,
    /// Jobs not in a final state, with their current attempt's leases.
    pub(super) jobs: ActiveJobs,
    /// The pending jobs, in the order a pass considers them.
    pub(super) pending: Pending,
    /// The queues jobs wait in.
    pub(super) queues: Queues,
    /// Which pending jobs wait on which others.
    pub(super) deps: DependencyGraph,
    /// Arrays not ended: their tasks started, the next batch to split off.
    pub(super) arrays: Arrays,
    /// Decayed usage and fair-share factors.
    pub(super) fairshare: FairShare,
    pub(super) agents: HashMap<NodeName, AgentLink>,
    pub(super) nodes: HashMap<NodeName, NodeMeta>,
    /// Operator drains, kept across restarts.
    pub(super) drained: HashMap<NodeName, String>,
    /// Active jobs placed on nodes that are not connected, with the deadline
    /// after which they are lost.
    pub(super) orphaned: HashMap<(JobId, NodeName), UnixMillis>,
    pub(super) pending_logs: HashMap<u64, (JobId, NodeName, oneshot::Sender<EngineResult<LogSlice>>)>,
    /// Pending jobs whose victims are stopping, by preemptor.
    pub(super) nominations: Nominations,
    /// When the last placement pass ran.
    pub(super) last_pass: UnixMillis,
    /// When each running part was last reported running (heartbeats).
    pub(super) last_seen: HashMap<(JobId, NodeName), UnixMillis>,
    pub(super) next_request: u64,
    pub(super) effects: Vec<Effect>,
    /// What this turn wrote to the ledger (every write goes through it).
    pub(super) batch: Batch,
    /// Quota asks made this turn whose answers have not come.
    pub(super) asks_this_turn: usize,
    /// Something changed that could let a pending job start.
    pub(super) needs_pass: bool,
    /// Tenants' monthly budgets, and whether each is spent.
    pub(super) budgets: Budgets,
    /// The plugin host, once the server hands it over.
    pub(super) policy: Option<PolicyHost>,
    /// The engine's own command channel, for plugin answers (weak: the
    /// engine still stops when every handle is gone).
    pub(super) to_self: Option<mpsc::WeakSender<Command>>,
    /// Pending jobs' standing with their tenant's quota plugin.
    pub(super) quota: QuotaBook,
    /// What each tenant with quota asks in this pass holds (`tenant_holdings`);
    /// dropped at each pass and when the tenant's holdings change.
    pub(super) held_this_pass: HashMap<TenantName, (PolicyUsage, BTreeMap<ProjectName, PolicyUsage>)>,
    /// Each tenant's GPU-time and spend this month by project, for its quota
    /// plugin's asks, and when it was read.
    pub(super) month_usage: HashMap<TenantName, (UnixMillis, Vec<crate::accounting::usage::UsageRow>)>,
    /// Idempotency keys of the last day's submissions, by tenant and id.
    pub(super) requests: HashMap<(TenantName, String), RequestRecord>,
    /// When expired keys were last swept.
    pub(super) requests_swept: UnixMillis,
}

/// A ledger flush under way.
type FlushFuture = std::pin::Pin<Box<dyn std::future::Future<Output = crate::ledger::Result<()>> + Send>>;

fn reply<T: Send + 'static>(tx: oneshot::Sender<T>, value: T) -> Effect {
    Effect::Reply(Box::new(move || {
        let _ = tx.send(value);
    }))
}

impl Engine {
    /// Gives the engine a way to send itself plugin answers.
    pub(crate) fn set_channel(&mut self, to_self: mpsc::WeakSender<Command>) {
        self.to_self = Some(to_self);
    }

    /// The engine loop. Ends when every handle is gone, or on a ledger error.
    ///
    /// Group commit, pipelined: a turn handles the commands that arrived,
    /// runs a placement pass, and starts a flush of what it wrote; the next
    /// turn runs while that flush is on disk. A turn's effects (replies,
    /// events, agent orders) wait for the flush that covers its writes, and
    /// for every earlier turn's, so nothing is acknowledged before it is
    /// durable and effects go out in the order they were made.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.config.tick.as_std());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The flush on disk now, and the effects of the turns it covers.
        let mut flushing: Option<(FlushFuture, Vec<Effect>)> = None;
        // Effects of turns since it started, and whether they wrote.
        let mut waiting: Vec<Effect> = Vec::new();
        let mut waiting_wrote = false;
        loop {
            let mut batch = Vec::new();
            let mut ticked = false;
            let mut flushed = None;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(c) => batch.push(c),
                    None => break,
                },
                _ = tick.tick() => ticked = true,
                r = async { flushing.as_mut().expect("guarded").0.as_mut().await }, if flushing.is_some() => {
                    flushed = Some(r);
                }
            }
            if let Some(r) = flushed {
                if let Err(e) = r {
                    error!(error = %e, "ledger flush failed; stopping the engine");
                    return Err(e.into());
                }
                let (_, effects) = flushing.take().expect("it was flushing");
                self.dispatch(effects);
                let later = std::mem::take(&mut waiting);
                if std::mem::take(&mut waiting_wrote) {
                    flushing = Some((self.start_flush(), later));
                } else {
                    self.dispatch(later);
                }
                continue;
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            for cmd in batch {
                self.handle(cmd);
            }
            self.on_tick();
            // Time alone can change answers (a minimum-runtime guard runs
            // out), so pending work gets a pass now and then without events.
            let now = self.clock.now();
            if !self.pending.is_empty() && now.since(self.last_pass) >= PASS_EVERY {
                self.needs_pass = true;
            }
            if self.needs_pass {
                self.needs_pass = false;
                self.last_pass = now;
                self.placement_pass();
            }
            // Quota plugins asked in this pass usually answer within tens of
            // microseconds: their answers get a short window to land in this
            // turn, so that the placements they allow are made and flushed
            // with it. Other commands arriving meanwhile are handled as
            // usual; a slow plugin costs the turn at most the window.
            if self.asks_this_turn > 0 {
                let deadline = tokio::time::Instant::now() + QUOTA_WINDOW.as_std();
                while self.asks_this_turn > 0 {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(cmd)) => self.handle(cmd),
                        Ok(None) | Err(_) => break,
                    }
                }
                if self.needs_pass {
                    self.needs_pass = false;
                    self.placement_pass();
                }
                self.asks_this_turn = 0;
            }
            if let Some(e) = self.batch.take_failure() {
                error!(error = %e, "ledger write failed; stopping the engine");
                return Err(e.into());
            }
            // Plugin prices need no flush of their own (nobody waits for
            // them, and a restart asks again for prices not on disk): they go
            // with the next turn that writes, or with a tick.
            let wrote = match self.batch.seal(ticked) {
                Ok(wrote) => wrote,
                Err(e) => {
                    error!(error = %e, "ledger roll-up failed; stopping the engine");
                    return Err(e.into());
                }
            };
            let effects = self.seal_effects();
            match &flushing {
                None if wrote => flushing = Some((self.start_flush(), effects)),
                // Nothing written and nothing on its way to disk.
                None => self.dispatch(effects),
                Some(_) => {
                    waiting.extend(effects);
                    waiting_wrote |= wrote;
                }
            }
        }
        // Every handle is gone: what was written still reaches the disk
        // before the last effects go out.
        if let Some((flush, effects)) = flushing.take() {
            flush.await?;
            self.dispatch(effects);
        }
        if waiting_wrote {
            self.ledger.flush().await?;
        }
        self.dispatch(waiting);
        Ok(())
    }

    /// A flush of everything written so far, to run while the next turn does.
    fn start_flush(&self) -> FlushFuture {
        let ledger = self.ledger.clone();
        Box::pin(async move { ledger.flush().await })
    }

    /// This turn's effects, with replies that show a job taken as it stands
    /// now: they go out once this turn is durable, when later turns may have
    /// changed the job again (and not durably yet).
    fn seal_effects(&mut self) -> Vec<Effect> {
        let effects = std::mem::take(&mut self.effects);
        effects
            .into_iter()
            .map(|e| match e {
                Effect::JobReply(id, tx) => reply(tx, self.job_snapshot(id)),
                other => other,
            })
            .collect()
    }

    fn dispatch(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Reply(f) => f(),
                Effect::JobReply(id, tx) => {
                    let _ = tx.send(self.job_snapshot(id));
                }
                Effect::Order(node, order) => {
                    if let Some(link) = self.agents.get(&node) {
                        let _ = link.orders.send(order);
                    } else {
                        debug!(%node, "order for a disconnected node dropped");
                    }
                }
                Effect::Event(job) => {
                    self.observers.job_changed(JobEvent {
                        job: *job,
                        at: self.clock.now(),
                    });
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                spec,
                request,
                hold,
                reply: tx,
            } => match self.submit(*spec, request, hold) {
                Ok(id) => self.effects.push(Effect::JobReply(id, tx)),
                Err(e) => self.effects.push(reply(tx, Err(e))),
            },
            Command::GetJob { id, reply } => match self.job_snapshot(id) {
                Ok(_) => self.effects.push(Effect::JobReply(id, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Cancel {
                id,
                reason,
                force,
                reply: tx,
            } => match self.cancel(id, &reason, force) {
                Ok(()) => self.effects.push(Effect::JobReply(id, tx)),
                Err(e) => self.effects.push(reply(tx, Err(e))),
            },
            Command::ListNodes { reply: tx } => {
                let views = self
                    .cluster
                    .nodes()
                    .iter()
                    .map(|n| self.node_view(n.name()))
                    .collect();
                self.effects.push(reply(tx, views));
            }
            Command::UsePolicy(policy) => {
                self.policy = Some(policy.clone());
                self.needs_pass = true;
                // Prices a restart cut short are asked again (plugins are
                // deterministic: the same answer).
                match self.ledger.unrolled_leases() {
                    Ok(leases) => {
                        for lease in leases
                            .into_iter()
                            .filter(|l| l.plugin_prices.as_ref().is_some_and(|p| p.pending))
                        {
                            let preemptible = self
                                .ledger
                                .get_job(&lease.job_id)
                                .ok()
                                .flatten()
                                .is_some_and(|j| j.spec.preemptible);
                            self.spawn_pricing(policy.clone(), lease, preemptible);
                        }
                    }
                    Err(e) => error!(error = %e, "cannot read leases waiting for prices"),
                }
            }
            Command::Priced { lease, prices } => {
                // A failure is logged; a restart asks again.
                let _ = self.batch.write(Change::Prices {
                    lease: &lease,
                    prices: &prices,
                });
            }
            Command::QuotaVerdict { job, ask, outcome } => {
                self.asks_this_turn = self.asks_this_turn.saturating_sub(1);
                let by = outcome
                    .decided_by
                    .plugin()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "(none)".into());
                let now = self.clock.now();
                if !self.quota.answered(job, ask, outcome.decision, by, now) {
                    debug!(%job, "a quota answer about holdings that have changed since; asking again");
                }
                self.needs_pass = true;
            }
            Command::SetBudget {
                tenant,
                budget,
                reply: tx,
            } => {
                // A write that failed stops the engine, as with a job or a
                // drain (the caller's reply never comes; its call fails as
                // unavailable).
                let r = self
                    .batch
                    .write(Change::Budget {
                        tenant: &tenant,
                        budget: budget.as_ref(),
                    })
                    .map_err(EngineError::Internal);
                if r.is_ok() {
                    self.needs_pass = true;
                    self.budgets.set(tenant, budget);
                }
                self.effects.push(reply(tx, r));
            }
            Command::Control {
                id,
                change,
                reply: tx,
            } => match self.control(id, change) {
                Ok(()) => self.effects.push(Effect::JobReply(id, tx)),
                Err(e) => self.effects.push(reply(tx, Err(e))),
            },
            Command::FairShareUsage { rows, at } => {
                match rows {
                    Ok(rows) => self.fairshare.took_usage(&rows, at),
                    Err(e) => {
                        // Kept as it was; read again at the next refresh.
                        self.fairshare.reading = false;
                        self.fairshare.read_at = Some(at);
                        warn!(error = %e, "cannot read usage for fair share");
                    }
                }
                // Used from the next pass on (one runs at least every few
                // seconds while jobs wait): no pass of its own.
            }
            Command::FairShare { reply: tx } => {
                let r = self.fairshare_report();
                self.effects.push(reply(tx, r));
            }
            Command::CreateQueue { def, reply: tx } => {
                let r = self.create_queue(*def);
                self.effects.push(reply(tx, r));
            }
            Command::UpdateQueue {
                name,
                update,
                reply: tx,
            } => {
                let r = self.update_queue(name, update);
                self.effects.push(reply(tx, r));
            }
            Command::DeleteQueue { name, reply: tx } => {
                let r = self.delete_queue(name);
                self.effects.push(reply(tx, r));
            }
            Command::ListQueues { reply: tx } => {
                let r = self.queue_views();
                self.effects.push(reply(tx, r));
            }
            Command::Drain {
                node,
                reason,
                reply: tx,
            } => {
                let r = self.drain(node, reason);
                self.effects.push(reply(tx, r));
            }
            Command::AgentConnected {
                conn,
                registration,
                orders,
                reply: tx,
            } => {
                let r = self.agent_connected(conn, *registration, orders);
                self.effects.push(reply(tx, r));
            }
            Command::Agent { conn, node, event } => {
                if self.agents.get(&node).is_some_and(|l| l.conn == conn) {
                    self.agent_event(&node, event);
                } else {
                    debug!(%node, conn, "message from a replaced agent connection ignored");
                }
            }
            Command::AgentDisconnected { conn, node } => {
                if self.agents.get(&node).is_some_and(|l| l.conn == conn) {
                    self.agent_gone(&node, "agent disconnected");
                }
            }
            Command::ReadLogs {
                id,
                node,
                offset,
                limit,
                reply: tx,
            } => self.read_logs(id, node, offset, limit, tx),
            #[cfg(test)]
            Command::Settle { reply: tx } => self.effects.push(reply(tx, ())),
        }
    }

    // --- persistence helpers ---------------------------------------------

    /// Writes the job and the leases named by `touched` (or none).
    pub(super) fn persist(&mut self, id: JobId, touched: &[LeaseId]) {
        let Some(job) = self.jobs.get(&id) else { return };
        let leases: Vec<&Lease> = self
            .jobs
            .leases(&id)
            .iter()
            .filter(|l| touched.contains(&l.id))
            .collect();
        let _ = self.batch.write(Change::Job {
            job,
            leases: &leases,
            request: None,
        });
        self.effects.push(Effect::Event(Box::new(job.clone())));
    }

    pub(super) fn all_lease_ids(&self, id: &JobId) -> Vec<LeaseId> {
        self.jobs.lease_ids(id)
    }
}
