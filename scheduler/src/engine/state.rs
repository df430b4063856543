//! The engine's state and how each command changes it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::quota::{QuotaBook, QuotaStanding};
use super::{
    AgentEvent, AgentOrder, Command, EngineConfig, EngineError, EngineResult, ExitOutcome, JobEvent, JobExit,
    LaunchOrder, LogSlice, NodeView, REQUEST_ID_TTL, Registration, RunningPart, StopReason, SubmitKey,
};
use crate::accounting::budget::{Budget, Standing};
use crate::accounting::usage::{Dimension, UsageQuery};
use crate::clock::Clock;
use crate::domain::{
    EndReason, GpuRequest, Job, JobId, JobSpec, JobState, Lease, LeaseId, LeaseState, MiB, Millis, NodeName,
    PluginPrices, ProjectName, Share, TenantName, UnixMillis,
};
use crate::ledger::{Ledger, RequestRecord};
use crate::placement::preempt::{self, Candidate};
use crate::placement::{
    Cluster, GpuMode, MICRO, NodeStatus, Placer, Profile, Rejection, Request, WorkloadMix,
};
use crate::policy::PolicyHost;
use crate::policy::types::{ExtensionPoint, PriceInput, QuotaInput, Usage as PolicyUsage};
use crate::queue::Queue;

/// Commands handled per turn before the ledger is flushed.
const MAX_BATCH: usize = 512;

struct AgentLink {
    conn: u64,
    orders: mpsc::UnboundedSender<AgentOrder>,
}

#[derive(Default)]
struct NodeMeta {
    last_heartbeat: Option<UnixMillis>,
    utilization: BTreeMap<String, u32>,
    discovery: String,
    agent_version: String,
    /// When the node's running jobs are declared lost if it has not come back.
    lost_deadline: Option<UnixMillis>,
    /// When its last utilisation reading came.
    last_reading: Option<UnixMillis>,
}

/// A pending job making room for itself: the victims it is waiting for.
#[derive(Debug)]
struct Nomination {
    node: NodeName,
    priority: i32,
    victims: Vec<JobId>,
}

/// A placement pass runs at least this often while jobs are pending.
const PASS_EVERY: Millis = Millis::from_secs(5);

/// Preemption searches per placement pass, at most: each scans the cluster.
const PREEMPTION_SEARCHES_PER_PASS: usize = 4;
/// How long a turn waits for the answers of quota plugins it asked, so that
/// the placements they allow go out with it.
const QUOTA_WINDOW: Millis = Millis(2);
/// How long a tenant's GPU-time and spend this month, read from the ledger
/// for its quota plugin, are used before they are read again: a read goes
/// over the leases of the current hour, so one per ask would grow with the
/// hour's jobs. (An answer stands for up to `quota::FRESH` anyway.)
const QUOTA_USAGE_FRESH: Millis = Millis::from_secs(1);
/// How long a tenant's budget standing is trusted before it is read again.
const BUDGET_RECHECK: Millis = Millis::from_secs(2);
/// What the quota gate says about placing a job now.
enum Gate {
    Go,
    Wait(String),
    /// Asked just now: the answer usually comes within the turn, so the
    /// job's reason is written only if it still waits at a later pass.
    Asked,
    Deny(String),
}

/// Work that must wait until the batch is durable.
enum Effect {
    Reply(Box<dyn FnOnce() + Send>),
    /// Replies with the job as it stands once the turn is done.
    JobReply(JobId, oneshot::Sender<EngineResult<Job>>),
    Order(NodeName, AgentOrder),
    Event(Box<Job>),
}

pub struct Engine {
    ledger: Ledger,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    events: broadcast::Sender<JobEvent>,
    cluster: Cluster,
    placer: Placer,
    /// Requests of recent submissions: the workload the fragmentation-aware
    /// policy keeps room for.
    recent: VecDeque<Request>,
    since_mix: usize,
    /// Jobs not in a final state.
    jobs: HashMap<JobId, Job>,
    /// Open leases of active jobs (current attempt).
    leases: HashMap<JobId, Vec<Lease>>,
    queue: Queue,
    agents: HashMap<NodeName, AgentLink>,
    nodes: HashMap<NodeName, NodeMeta>,
    /// Operator drains, kept across restarts.
    drained: HashMap<NodeName, String>,
    /// Active jobs placed on nodes that are not connected, with the deadline
    /// after which they are lost.
    orphaned: HashMap<(JobId, NodeName), UnixMillis>,
    pending_logs: HashMap<u64, (JobId, NodeName, oneshot::Sender<EngineResult<LogSlice>>)>,
    /// Pending jobs whose victims are stopping, by preemptor.
    nominations: HashMap<JobId, Nomination>,
    /// When the last placement pass ran.
    last_pass: UnixMillis,
    /// When each running part was last reported running (heartbeats).
    last_seen: HashMap<(JobId, NodeName), UnixMillis>,
    next_request: u64,
    effects: Vec<Effect>,
    dirty: bool,
    /// Plugin prices written and not flushed yet.
    priced_unflushed: bool,
    /// Quota asks made this turn whose answers have not come.
    fresh_asks: usize,
    needs_pass: bool,
    /// Tenants' monthly budgets.
    budgets: HashMap<TenantName, Budget>,
    /// Whether a tenant with a budget has exhausted it, and when that was
    /// last worked out.
    budget_holds: HashMap<TenantName, (UnixMillis, Option<String>)>,
    /// The plugin host, once the server hands it over.
    policy: Option<PolicyHost>,
    /// The engine's own command channel, for plugin answers (weak: the
    /// engine still stops when every handle is gone).
    me: Option<mpsc::WeakSender<Command>>,
    /// Pending jobs' standing with their tenant's quota plugin.
    quota: QuotaBook,
    /// What each tenant with quota asks in this pass holds (`held_now`);
    /// dropped at each pass and when the tenant's holdings change.
    holdings: HashMap<TenantName, (PolicyUsage, BTreeMap<ProjectName, PolicyUsage>)>,
    /// Each tenant's GPU-time and spend this month by project, for its quota
    /// plugin's asks, and when it was read.
    month_usage: HashMap<TenantName, (UnixMillis, Vec<crate::accounting::usage::UsageRow>)>,
    /// A ledger write failed this turn: memory is ahead of disk, so the engine
    /// stops before acknowledging anything.
    failed: Option<crate::ledger::LedgerError>,
    /// Idempotency keys of the last day's submissions, by tenant and id.
    requests: HashMap<(TenantName, String), RequestRecord>,
    /// When expired keys were last swept.
    requests_swept: UnixMillis,
}

/// Counts `gpus` and `memory` as held in `u`.
fn add_held(u: &mut PolicyUsage, gpus: Share, memory: MiB) {
    u.gpus_held = u.gpus_held.checked_add(gpus).unwrap_or(u.gpus_held);
    u.gpu_memory_held = MiB(u.gpu_memory_held.0 + memory.0);
}

/// The most GPU memory `gpu` could be given on any node of `cluster`.
fn most_gpu_memory(cluster: &Cluster, gpu: &GpuRequest) -> MiB {
    let gpus = || cluster.nodes().iter().flat_map(|n| &n.inventory.gpus);
    let largest = gpus().map(|g| g.memory).max().unwrap_or(MiB(0));
    match gpu {
        GpuRequest::None => MiB(0),
        GpuRequest::Whole(n) => MiB(largest.0 * u64::from(n.get())),
        GpuRequest::Fraction { memory: Some(m), .. } => *m,
        GpuRequest::Fraction { share, memory: None } => {
            MiB((u128::from(largest.0) * u128::from(share.numerator()))
                .div_ceil(u128::from(share.denominator())) as u64)
        }
        GpuRequest::Mig(profile) => gpus()
            .flat_map(|g| match &g.mode {
                GpuMode::Mig { slices } => slices.as_slice(),
                GpuMode::Whole { .. } => &[],
            })
            .filter(|s| &s.profile == profile)
            .map(|s| s.memory)
            .max()
            .unwrap_or(largest),
    }
}

/// A ledger flush under way.
type FlushFuture = std::pin::Pin<Box<dyn std::future::Future<Output = crate::ledger::Result<()>> + Send>>;

fn reply<T: Send + 'static>(tx: oneshot::Sender<T>, value: T) -> Effect {
    Effect::Reply(Box::new(move || {
        let _ = tx.send(value);
    }))
}

impl Engine {
    /// Rebuilds the engine's state from the ledger.
    pub fn load(
        ledger: Ledger,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        events: broadcast::Sender<JobEvent>,
    ) -> anyhow::Result<Self> {
        let now = clock.now();
        let profile = Profile::new(config.policy, config.placement_seed);
        let mut engine = Engine {
            drained: ledger.drains()?.into_iter().collect(),
            ledger,
            clock,
            config,
            events,
            cluster: Cluster::new(),
            placer: Placer::new(profile),
            recent: VecDeque::new(),
            since_mix: 0,
            jobs: HashMap::new(),
            leases: HashMap::new(),
            queue: Queue::default(),
            agents: HashMap::new(),
            nodes: HashMap::new(),
            orphaned: HashMap::new(),
            pending_logs: HashMap::new(),
            nominations: HashMap::new(),
            last_pass: UnixMillis(0),
            last_seen: HashMap::new(),
            budgets: HashMap::new(),
            budget_holds: HashMap::new(),
            policy: None,
            me: None,
            quota: QuotaBook::default(),
            month_usage: HashMap::new(),
            holdings: HashMap::new(),
            next_request: 1,
            effects: Vec::new(),
            dirty: false,
            priced_unflushed: false,
            fresh_asks: 0,
            needs_pass: true,
            failed: None,
            requests: HashMap::new(),
            requests_swept: UnixMillis(0),
        };
        let active = engine.ledger.active_jobs()?;
        let seen: HashMap<NodeName, UnixMillis> = engine.ledger.nodes_seen()?.into_iter().collect();
        let (mut pending, mut placed) = (0, 0);
        for job in active {
            let open: Vec<Lease> = engine
                .ledger
                .leases_of(&job.id)?
                .into_iter()
                .filter(|l| l.state != LeaseState::Closed)
                .collect();
            match job.state {
                JobState::Pending => {
                    engine.queue.push(&job);
                    pending += 1;
                }
                _ => {
                    // Its nodes have to come back and say whether they still
                    // run it, within the grace from when each was last heard
                    // from (kept in the ledger): a restart does not start
                    // the grace over.
                    for node in job.live_nodes() {
                        let seen = seen.get(&node).copied().unwrap_or(now).min(now);
                        engine
                            .orphaned
                            .insert((job.id, node), seen.plus(engine.config.node_lost_grace));
                    }
                    placed += 1;
                }
            }
            engine.leases.insert(job.id, open);
            engine.remember(Request::of(&job.spec));
            engine.jobs.insert(job.id, job);
        }
        // Preemptions in flight survive a restart: the victims remember who
        // they make room for, and the preemptors get their nominations back.
        let victims: Vec<(JobId, JobId, Option<NodeName>)> = engine
            .jobs
            .values()
            .filter_map(|j| {
                j.preempted_by
                    .map(|by| (j.id, by, j.placements.first().map(|p| p.node.clone())))
            })
            .collect();
        for (victim, by, node) in victims {
            // Without a pending preemptor the victim is still told to stop
            // (on reconnect) and is requeued when it does.
            let preemptor = engine.jobs.get(&by).filter(|p| p.state == JobState::Pending);
            if let (Some(p), Some(node)) = (preemptor, node) {
                let priority = p.spec.priority;
                engine
                    .nominations
                    .entry(by)
                    .or_insert(Nomination {
                        node,
                        priority,
                        victims: Vec::new(),
                    })
                    .victims
                    .push(victim);
            }
        }
        engine.budgets = engine
            .ledger
            .budgets()?
            .into_iter()
            .map(|b| (b.tenant.clone(), b))
            .collect();
        // When each node was last heard from, for jobs lost with it.
        for (node, seen) in seen {
            engine.nodes.entry(node).or_default().last_heartbeat = Some(seen);
        }
        engine.requests = engine
            .ledger
            .requests()?
            .into_iter()
            .map(|r| ((r.tenant.clone(), r.request_id.clone()), r))
            .collect();
        info!(pending, placed, "engine state loaded from the ledger");
        Ok(engine)
    }

    /// Gives the engine a way to send itself plugin answers.
    pub(crate) fn set_channel(&mut self, me: mpsc::WeakSender<Command>) {
        self.me = Some(me);
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
            if !self.queue.is_empty() && now.since(self.last_pass) >= PASS_EVERY {
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
            if self.fresh_asks > 0 {
                let deadline = tokio::time::Instant::now() + QUOTA_WINDOW.as_std();
                while self.fresh_asks > 0 {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(cmd)) => self.handle(cmd),
                        Ok(None) | Err(_) => break,
                    }
                }
                if self.needs_pass {
                    self.needs_pass = false;
                    self.placement_pass();
                }
                self.fresh_asks = 0;
            }
            if let Some(e) = self.failed.take() {
                error!(error = %e, "ledger write failed; stopping the engine");
                return Err(e.into());
            }
            // Plugin prices need no flush of their own (nobody waits for
            // them, and a restart asks again for prices not on disk): they go
            // with the next turn that writes, or with a tick.
            let wrote = self.dirty || (self.priced_unflushed && ticked);
            if wrote {
                // Leases closed (or priced) this turn join the roll-ups in one go.
                if let Err(e) = self.ledger.roll_up() {
                    error!(error = %e, "ledger roll-up failed; stopping the engine");
                    return Err(e.into());
                }
                self.dirty = false;
                self.priced_unflushed = false;
            }
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
                    let _ = self.events.send(JobEvent {
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
                reply: tx,
            } => match self.submit(*spec, request) {
                Ok(id) => self.effects.push(Effect::JobReply(id, tx)),
                Err(e) => self.effects.push(reply(tx, Err(e))),
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
            Command::Priced { lease, prices } => match self.ledger.set_plugin_prices(&lease, prices) {
                Ok(()) => self.priced_unflushed = true,
                Err(e) => error!(%lease, error = %e, "cannot record a lease's plugin prices"),
            },
            Command::QuotaVerdict { job, ask, outcome } => {
                self.fresh_asks = self.fresh_asks.saturating_sub(1);
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
                let r = match &budget {
                    Some(b) => self.ledger.put_budget(b),
                    None => self.ledger.remove_budget(&tenant),
                };
                let r = match r {
                    Ok(()) => {
                        self.dirty = true;
                        self.needs_pass = true;
                        self.budget_holds.remove(&tenant);
                        match budget {
                            Some(b) => self.budgets.insert(tenant, b),
                            None => self.budgets.remove(&tenant),
                        };
                        Ok(())
                    }
                    Err(e) => Err(EngineError::Internal(e.to_string())),
                };
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
        }
    }

    // --- persistence helpers ---------------------------------------------

    /// Writes the job and the leases named by `touched` (or none).
    fn persist(&mut self, id: JobId, touched: &[LeaseId]) {
        let Some(job) = self.jobs.get(&id) else { return };
        let leases: Vec<&Lease> = self
            .leases
            .get(&id)
            .map(|ls| ls.iter().filter(|l| touched.contains(&l.id)).collect())
            .unwrap_or_default();
        if let Err(e) = self.ledger.put_job(job, &leases) {
            error!(job = %id, error = %e, "ledger write failed");
            self.failed.get_or_insert(e);
        }
        self.dirty = true;
        self.effects.push(Effect::Event(Box::new(job.clone())));
    }

    fn all_lease_ids(&self, id: &JobId) -> Vec<LeaseId> {
        self.leases
            .get(id)
            .map(|ls| ls.iter().map(|l| l.id).collect())
            .unwrap_or_default()
    }

    // --- jobs ---------------------------------------------------------------

    fn submit(&mut self, spec: JobSpec, request: Option<SubmitKey>) -> EngineResult<JobId> {
        let now = self.clock.now();
        // A retry of a submission already taken: the job it created (its
        // reply waits for the same flush as the first, if that is still on
        // its way to disk).
        if let Some(key) = &request
            && let Some(r) = self
                .requests
                .get(&(spec.tenant.clone(), key.request_id.clone()))
                .filter(|r| now.since(r.at) < REQUEST_ID_TTL)
        {
            if r.fingerprint != key.fingerprint {
                return Err(EngineError::RequestReused(format!(
                    "{} was used within the last day for a different submission (job {}); use a new request id",
                    crate::domain::validate::quote(&key.request_id),
                    r.job
                )));
            }
            info!(job = %r.job, request = %key.request_id, "submission retried; returning the job it created");
            return Ok(r.job);
        }
        let job = Job {
            id: JobId::new_v7(),
            spec,
            state: JobState::Pending,
            reason: "waiting for the scheduler".into(),
            submitted_at: now,
            started_at: None,
            ended_at: None,
            exit_code: None,
            signal: None,
            placements: Vec::new(),
            parts_started: Vec::new(),
            parts_exited: Vec::new(),
            lease_ids: Vec::new(),
            attempt: 1,
            cancel_requested: false,
            cancel_forced: false,
            preempted_by: None,
            node_lost_requeues: 0,
        };
        let id = job.id;
        info!(job = %id, tenant = %job.spec.tenant, name = %job.spec.name, "job submitted");
        let record = request.map(|key| RequestRecord {
            tenant: job.spec.tenant.clone(),
            request_id: key.request_id,
            job: id,
            fingerprint: key.fingerprint,
            at: now,
        });
        self.remember(Request::of(&job.spec));
        self.queue.push(&job);
        // The job and its key in one transaction: a retry finds the job
        // exactly when the job exists.
        if let Err(e) = self.ledger.put_job_for(&job, &[], record.as_ref()) {
            error!(job = %id, error = %e, "ledger write failed");
            self.failed.get_or_insert(e);
        }
        self.dirty = true;
        self.effects.push(Effect::Event(Box::new(job.clone())));
        if let Some(r) = record {
            self.requests.insert((r.tenant.clone(), r.request_id.clone()), r);
        }
        self.jobs.insert(id, job);
        self.leases.insert(id, Vec::new());
        self.needs_pass = true;
        Ok(id)
    }

    /// Forgets idempotency keys older than a day (at most once a minute).
    fn expire_requests(&mut self, now: UnixMillis) {
        if now.since(self.requests_swept) < Millis::from_secs(60) {
            return;
        }
        self.requests_swept = now;
        let expired: Vec<RequestRecord> = self
            .requests
            .values()
            .filter(|r| now.since(r.at) >= REQUEST_ID_TTL)
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        for r in &expired {
            self.requests.remove(&(r.tenant.clone(), r.request_id.clone()));
        }
        if let Err(e) = self.ledger.remove_requests(&expired) {
            warn!(error = %e, "cannot forget expired request ids");
        }
    }

    fn cancel(&mut self, id: JobId, reason: &str, force: bool) -> EngineResult<()> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return match self.ledger.get_job(&id) {
                Ok(Some(j)) => Err(EngineError::FailedPrecondition(format!(
                    "job {id} has already ended ({})",
                    j.state
                ))),
                Ok(None) => Err(EngineError::NotFound(format!("job {id}"))),
                Err(e) => Err(EngineError::Internal(e.to_string())),
            };
        };
        let why = if reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            format!("cancelled: {reason}")
        };
        match job.state {
            JobState::Pending => {
                self.queue.remove(&id);
                job.state = JobState::Cancelled;
                job.reason = why;
                job.ended_at = Some(self.clock.now());
                self.finish(id);
                info!(job = %id, "pending job cancelled");
            }
            _ if force => {
                // SIGKILL now, whether or not a stop is under way.
                job.cancel_requested = true;
                job.cancel_forced = true;
                job.reason = format!("{why}; killing (forced)");
                self.persist(id, &[]);
                self.stop_parts_with(id, StopReason::Cancelled, Some(Millis::ZERO));
                info!(job = %id, "forced cancel: killing the job");
            }
            _ => {
                if !job.cancel_requested {
                    job.cancel_requested = true;
                    job.reason = format!("{why}; stopping");
                    self.persist(id, &[]);
                    self.stop_parts(id, StopReason::Cancelled);
                    info!(job = %id, "cancel requested; stopping the job");
                }
            }
        }
        Ok(())
    }

    fn job_snapshot(&self, id: JobId) -> EngineResult<Job> {
        match self.jobs.get(&id) {
            Some(j) => Ok(j.clone()),
            None => self
                .ledger
                .get_job(&id)
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .ok_or_else(|| EngineError::NotFound(format!("job {id}"))),
        }
    }

    /// Removes a job that reached a final state: closes its open leases with
    /// the matching end reason, releases its resources, writes it.
    fn finish(&mut self, id: JobId) {
        let now = self.clock.now();
        let Some(job) = self.jobs.get(&id) else { return };
        let state = job.state;
        self.close_leases(id, state, now);
        self.release_all(id);
        self.quota.forget(id);
        self.queue.remove(&id);
        self.orphaned.retain(|(j, _), _| *j != id);
        self.last_seen.retain(|(j, _), _| *j != id);
        // A preemptor that ends releases its reservation; a victim that ends
        // some other way is one fewer to wait for.
        self.nominations.remove(&id);
        if let Some(by) = self.jobs.get(&id).and_then(|j| j.preempted_by)
            && let Some(n) = self.nominations.get_mut(&by)
        {
            n.victims.retain(|v| *v != id);
        }
        let touched = self.all_lease_ids(&id);
        self.persist(id, &touched);
        self.jobs.remove(&id);
        self.leases.remove(&id);
        self.needs_pass = true;
    }

    /// When the leases on `node` of a job ending now end: when its part there
    /// ended (see `exit_time`), or now.
    fn part_end(&self, job: &Job, node: &NodeName, now: UnixMillis) -> UnixMillis {
        job.parts_exited
            .iter()
            .find(|e| &e.node == node)
            .and_then(|e| e.at)
            .unwrap_or(now)
            .min(now)
    }

    /// When a part that exited on `node` ended, by the controller's clock: when
    /// the agent says it ended (so long ago), else its start plus the runtime
    /// the agent measured; but never before the last time the controller saw
    /// it running, nor after now. (Agent times bound; they never bill.)
    /// Without either: now.
    fn exit_time(&self, id: JobId, node: &NodeName, exit: &JobExit, now: UnixMillis) -> UnixMillis {
        let started = self
            .leases
            .get(&id)
            .and_then(|ls| {
                ls.iter()
                    .filter(|l| &l.node == node)
                    .filter_map(|l| l.started_at)
                    .min()
            })
            .or_else(|| self.jobs.get(&id).and_then(|j| j.started_at));
        let estimate = match (exit.ended_ago, started, exit.runtime) {
            (Some(ago), _, _) => UnixMillis(now.0.saturating_sub(ago.0)),
            (None, Some(started), Some(runtime)) => started.plus(runtime),
            _ => return now,
        };
        let lower = started.map(|s| {
            self.last_seen
                .get(&(id, node.clone()))
                .copied()
                .unwrap_or(s)
                .max(s)
                .min(now)
        });
        estimate.clamp(lower.unwrap_or(UnixMillis(0)), now)
    }

    /// When a part lost with its node ended: the last time it was seen
    /// running there (or the node's last heartbeat), never after now.
    fn lost_time(&self, id: JobId, node: &NodeName, now: UnixMillis) -> UnixMillis {
        self.last_seen
            .get(&(id, node.clone()))
            .copied()
            .or_else(|| self.nodes.get(node).and_then(|m| m.last_heartbeat))
            .unwrap_or(now)
            .min(now)
    }

    fn close_leases(&mut self, id: JobId, state: JobState, now: UnixMillis) {
        let Some(job) = self.jobs.get(&id) else { return };
        // Its tenant's budget standing changes with what it has spent.
        self.budget_holds.remove(&job.spec.tenant);
        let ends: HashMap<NodeName, UnixMillis> = job
            .nodes()
            .map(|n| (n.clone(), self.part_end(job, n, now)))
            .collect();
        let runtimes: HashMap<&NodeName, Millis> = job
            .parts_exited
            .iter()
            .filter_map(|e| e.runtime.map(|r| (&e.node, r)))
            .collect();
        let Some(leases) = self.leases.get_mut(&id) else {
            return;
        };
        for lease in leases.iter_mut().filter(|l| l.state != LeaseState::Closed) {
            let end = ends.get(&lease.node).copied().unwrap_or(now);
            let reason = match (lease.state, EndReason::for_final_state(state)) {
                (LeaseState::Reserved, _) | (_, None) => EndReason::ReleasedUnstarted,
                (_, Some(r)) => r,
            };
            lease.state = LeaseState::Closed;
            // Never before it started (a node last heard from before the
            // part's start report still ran it until then).
            lease.ended_at = Some(end.max(lease.started_at.unwrap_or(lease.reserved_at)));
            lease.end_reason = Some(reason);
            lease.agent_runtime = runtimes.get(&lease.node).copied();
        }
        self.ask_prices(id);
    }

    /// Leases of the job that closed just now, of a tenant with a pricing
    /// plugin, are priced by it: marked pending (the close writes the mark,
    /// so the roll-ups and exports wait for the price), then asked off the
    /// engine loop; the answers come back as `Command::Priced`.
    fn ask_prices(&mut self, id: JobId) {
        let Some(policy) = self.policy.clone() else { return };
        let Some(job) = self.jobs.get(&id) else { return };
        if !policy.bound(&job.spec.tenant, ExtensionPoint::Pricing) {
            return;
        }
        let preemptible = job.spec.preemptible;
        let mut asks = Vec::new();
        for lease in self.leases.get_mut(&id).into_iter().flatten() {
            if lease.state == LeaseState::Closed && lease.plugin_prices.is_none() {
                lease.plugin_prices = Some(PluginPrices {
                    pending: true,
                    ..PluginPrices::default()
                });
                asks.push(lease.clone());
            }
        }
        for lease in asks {
            self.spawn_pricing(policy.clone(), lease, preemptible);
        }
    }

    /// Asks the pricing plugin the price of each hour part of a closed lease.
    fn spawn_pricing(&self, policy: PolicyHost, lease: Lease, preemptible: bool) {
        let Some(me) = self.me.as_ref().and_then(|w| w.upgrade()) else {
            return;
        };
        tokio::spawn(async move {
            let prices = price_lease(&policy, &lease, preemptible).await;
            let _ = me
                .send(Command::Priced {
                    lease: lease.id,
                    prices,
                })
                .await;
        });
    }

    /// Puts a placed job that never started back in the queue.
    fn requeue_unstarted(&mut self, id: JobId, why: &str) {
        if !self.jobs.contains_key(&id) {
            return;
        }
        let now = self.clock.now();
        if let Some(leases) = self.leases.get_mut(&id) {
            for lease in leases.iter_mut().filter(|l| l.state != LeaseState::Closed) {
                lease.state = LeaseState::Closed;
                lease.ended_at = Some(now.max(lease.reserved_at));
                lease.end_reason = Some(EndReason::ReleasedUnstarted);
            }
        }
        self.ask_prices(id);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        let job = self.jobs.get_mut(&id).expect("checked above");
        job.next_attempt();
        job.reason = why.to_string();
        self.queue.push(job);
        self.orphaned.retain(|(j, _), _| *j != id);
        self.persist(id, &touched);
        self.leases.insert(id, Vec::new());
        self.needs_pass = true;
    }

    // --- placement ------------------------------------------------------------

    /// Keeps a submitted request in the window the workload mix is built from.
    fn remember(&mut self, req: Request) {
        const WINDOW: usize = 2000;
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(req);
        self.since_mix += 1;
    }

    /// Rebuilds the workload mix from recent submissions now and then.
    fn refresh_mix(&mut self) {
        const EVERY: usize = 64;
        let stale =
            self.since_mix >= EVERY || (self.placer.profile().mix.is_empty() && !self.recent.is_empty());
        if self.placer.profile().policy.uses_mix() && stale {
            let mix = WorkloadMix::from_requests(self.recent.iter(), 95);
            self.placer.set_mix(std::sync::Arc::new(mix));
            self.since_mix = 0;
        }
    }

    fn placement_pass(&mut self) {
        self.refresh_mix();
        self.holdings.clear();
        let order: Vec<JobId> = self.queue.iter().collect();
        let mut searches = 0;
        for id in order {
            let Some(job) = self.jobs.get(&id) else { continue };
            if let Some(why) = self.budget_hold(&job.spec.tenant.clone()) {
                let job = self.jobs.get_mut(&id).expect("present");
                let reason = format!("held: tenant {} {why}", job.spec.tenant);
                if job.reason != reason {
                    job.reason = reason;
                    self.persist(id, &[]);
                }
                continue;
            }
            match self.quota_gate(id) {
                Gate::Go => {}
                Gate::Asked => continue,
                Gate::Wait(reason) => {
                    let job = self.jobs.get_mut(&id).expect("present");
                    if job.reason != reason {
                        job.reason = reason;
                        self.persist(id, &[]);
                    }
                    continue;
                }
                Gate::Deny(reason) => {
                    self.queue.remove(&id);
                    let now = self.clock.now();
                    let job = self.jobs.get_mut(&id).expect("present");
                    job.state = JobState::Failed;
                    job.reason = reason;
                    job.ended_at = Some(now);
                    info!(job = %id, "job denied by its quota plugin");
                    self.finish(id);
                    continue;
                }
            }
            let Some(job) = self.jobs.get(&id) else { continue };
            let request = Request::of(&job.spec);
            let priority = job.spec.priority;
            // A node being emptied for a preemptor takes nothing of lower
            // priority meanwhile, or the preemptor would find it full again.
            let reserved: HashMap<&str, i32> = self
                .nominations
                .iter()
                .filter(|(n, _)| **n != id)
                .map(|(_, n)| (n.node.as_str(), n.priority))
                .collect();
            let placed = self.placer.place_job(&self.cluster, &request, |_, node| {
                match reserved.get(node.name().as_str()) {
                    Some(&p) if p >= priority => Some(Rejection::NodeReserved),
                    _ => None,
                }
            });
            match placed {
                Ok(parts) => {
                    self.nominations.remove(&id);
                    self.commit_placement(id, parts)
                }
                Err(why) => {
                    let mut reason = why.explain(&job.spec.resources.gpu);
                    // Every victim gone and it still does not fit (the cluster
                    // changed meanwhile): plan afresh.
                    if self.nominations.get(&id).is_some_and(|n| n.victims.is_empty()) {
                        self.nominations.remove(&id);
                    }
                    if let Some(n) = self.nominations.get(&id) {
                        reason = format!(
                            "waiting for {} preempted job{} to stop on {}",
                            n.victims.len(),
                            if n.victims.len() == 1 { "" } else { "s" },
                            n.node
                        );
                    } else if why.has_shortage() && searches < PREEMPTION_SEARCHES_PER_PASS {
                        searches += 1;
                        if let Some(r) = self.try_preempt(id, &request, priority) {
                            reason = r;
                        }
                    }
                    let job = self.jobs.get_mut(&id).expect("present");
                    if job.reason != reason {
                        job.reason = reason;
                        self.persist(id, &[]);
                    }
                }
            }
        }
    }

    /// Asks the tenant's quota plugin, off the engine, whether a pending job
    /// may be placed now; places it only on an answer that stands (see
    /// `engine/quota.rs`). Other tenants' jobs are placed meanwhile, whatever
    /// the plugin does.
    fn quota_gate(&mut self, id: JobId) -> Gate {
        let Some(policy) = self.policy.clone() else {
            return Gate::Go;
        };
        let tenant = self.jobs[&id].spec.tenant.clone();
        if !policy.bound(&tenant, ExtensionPoint::Quota) {
            self.quota.forget(id);
            return Gate::Go;
        }
        let now = self.clock.now();
        const WAITING: &str = "waiting for the quota plugin's answer";
        match self.quota.standing(id, now) {
            QuotaStanding::Unknown => {}
            QuotaStanding::Asking => return Gate::Wait(WAITING.into()),
            QuotaStanding::AfterEarlier => {
                return Gate::Wait(
                    "allowed by the quota plugin; placed after the tenant's earlier jobs".into(),
                );
            }
            QuotaStanding::Allowed => return Gate::Go,
            QuotaStanding::Held { by, reason } => {
                return Gate::Wait(format!("held by quota plugin {by}: {reason}"));
            }
            QuotaStanding::Denied { by, reason } => {
                return Gate::Deny(format!("denied by quota plugin {by}: {reason}"));
            }
            QuotaStanding::DeniedIfTheyStart { by, reason, counted } => {
                return Gate::Wait(format!(
                    "held by quota plugin {by}: {reason} (counting {counted} job{} of the tenant allowed before it; asked again once they start)",
                    if counted == 1 { "" } else { "s" }
                ));
            }
        }
        let Some(me) = self.me.as_ref().and_then(|w| w.upgrade()) else {
            return Gate::Wait(WAITING.into());
        };
        let assumed = self.quota.outstanding(&tenant, id);
        let input = self.quota_input(id, now, &assumed);
        let ask = self.quota.asking(id, tenant, assumed);
        self.fresh_asks += 1;
        tokio::spawn(async move {
            let outcome = policy.quota(&input).await;
            let _ = me
                .send(Command::QuotaVerdict {
                    job: id,
                    ask,
                    outcome,
                })
                .await;
        });
        Gate::Asked
    }

    /// What a quota plugin is told: the job, and what its tenant and each of
    /// its projects hold now and used this month. The jobs in `assumed`
    /// (allowed, not placed yet) count as running, holding their GPUs and
    /// the most GPU memory they could be given.
    fn quota_input(&mut self, id: JobId, now: UnixMillis, assumed: &[JobId]) -> QuotaInput {
        let tenant = self.jobs[&id].spec.tenant.clone();
        let read_at = self.month_usage.get(&tenant).map(|(at, _)| *at);
        if read_at.is_none_or(|at| {
            now.since(at) >= QUOTA_USAGE_FRESH || at > now || at.month_start() != now.month_start()
        }) {
            let month = UsageQuery {
                from: now.month_start(),
                to: now.max(UnixMillis(now.month_start().0 + 1)),
                group_by: vec![Dimension::Project],
                tenant: Some(tenant.clone()),
            };
            let rows = self.ledger.usage(&month, now).unwrap_or_else(|e| {
                warn!(%tenant, error = %e, "cannot read the tenant's usage for its quota plugin");
                Vec::new()
            });
            self.month_usage.insert(tenant.clone(), (now, rows));
        }
        if !self.holdings.contains_key(&tenant) {
            let held = self.held_now(&tenant);
            self.holdings.insert(tenant.clone(), held);
        }
        let (mut total, mut projects) = self.holdings[&tenant].clone();
        let job = &self.jobs[&id];
        let currency = self.config.rate_card.currency;
        projects
            .entry(job.spec.project.clone())
            .or_insert_with(|| PolicyUsage::zero(currency));
        for j in assumed.iter().filter_map(|a| self.jobs.get(a)) {
            if j.state != JobState::Pending {
                continue;
            }
            let gpus = j.spec.resources.gpu.gpus();
            let memory = most_gpu_memory(&self.cluster, &j.spec.resources.gpu);
            let p = projects
                .entry(j.spec.project.clone())
                .or_insert_with(|| PolicyUsage::zero(currency));
            for u in [&mut total, p] {
                u.pending_jobs = u.pending_jobs.saturating_sub(1);
                u.running_jobs += 1;
                add_held(u, gpus, memory);
            }
        }
        for r in &self.month_usage[&tenant].1 {
            let Some(project) = r.keys.first().and_then(|k| k.parse::<ProjectName>().ok()) else {
                continue;
            };
            let p = projects
                .entry(project)
                .or_insert_with(|| PolicyUsage::zero(currency));
            for u in [p, &mut total] {
                u.gpu_ms_in_period += r.gpu_time.gpu_ms_floor() as u64;
                if r.currency == currency {
                    u.spend_in_period.minor = u
                        .spend_in_period
                        .minor
                        .saturating_add(crate::accounting::minor_of(r.cost_micros));
                }
            }
        }
        QuotaInput {
            job: job.spec.clone(),
            job_gpus: job.spec.resources.gpu.gpus(),
            now,
            period_start: now.month_start(),
            tenant_usage: total,
            projects,
        }
    }

    /// What a tenant and each of its projects hold now (starting and
    /// running jobs, their open leases) and how many jobs wait: one walk over
    /// the active jobs, kept for the pass until the tenant's holdings change.
    fn held_now(&self, tenant: &TenantName) -> (PolicyUsage, BTreeMap<ProjectName, PolicyUsage>) {
        let currency = self.config.rate_card.currency;
        let mut total = PolicyUsage::zero(currency);
        let mut projects: BTreeMap<ProjectName, PolicyUsage> = BTreeMap::new();
        for j in self.jobs.values().filter(|j| &j.spec.tenant == tenant) {
            let p = projects
                .entry(j.spec.project.clone())
                .or_insert_with(|| PolicyUsage::zero(currency));
            match j.state {
                JobState::Pending => {
                    total.pending_jobs += 1;
                    p.pending_jobs += 1;
                }
                JobState::Starting | JobState::Running => {
                    total.running_jobs += 1;
                    p.running_jobs += 1;
                    for l in self.leases.get(&j.id).into_iter().flatten() {
                        if l.state != LeaseState::Closed {
                            add_held(&mut total, l.device.share, l.device.gpu_memory);
                            add_held(p, l.device.share, l.device.gpu_memory);
                        }
                    }
                }
                _ => {}
            }
        }
        (total, projects)
    }

    /// Why a tenant gets no new placements: its monthly budget is spent.
    /// Worked out from the ledger's roll-ups at most every
    /// `BUDGET_RECHECK`; a budget only stops new jobs, so a little
    /// staleness lets at most a few more start.
    fn budget_hold(&mut self, tenant: &TenantName) -> Option<String> {
        let budget = self.budgets.get(tenant)?;
        let now = self.clock.now();
        if let Some((at, why)) = self.budget_holds.get(tenant)
            && now.since(*at) < BUDGET_RECHECK
            && *at <= now
        {
            return why.clone();
        }
        let month = UsageQuery {
            from: now.month_start(),
            to: now.max(UnixMillis(now.month_start().0 + 1)),
            group_by: vec![],
            tenant: Some(tenant.clone()),
        };
        let why = match self.ledger.usage(&month, now) {
            Ok(rows) => Standing::assess(Some(budget), budget.currency, &rows, &[], now).exhausted,
            Err(e) => {
                // Fail closed: a budget that cannot be read holds the jobs.
                error!(%tenant, error = %e, "cannot read the tenant's usage for its budget");
                Some("cannot be checked against its budget (ledger error)".to_string())
            }
        };
        self.budget_holds.insert(tenant.clone(), (now, why.clone()));
        why
    }

    /// The running jobs preemption may consider, with their cost.
    fn preemption_candidates(&self, now: UnixMillis) -> Vec<Candidate> {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.preempted_by.is_none())
            .map(|j| {
                let ran = j.started_at.map(|s| now.since(s)).unwrap_or_default();
                let guard = j
                    .spec
                    .min_runtime
                    .unwrap_or_default()
                    .max(self.config.min_runtime);
                let lost = match j.spec.checkpoint_interval {
                    Some(every) if every.0 > 0 => ran.0 % every.0,
                    _ => ran.0,
                };
                let share: u64 = j
                    .placements
                    .iter()
                    .flat_map(|p| p.devices.iter())
                    .map(|d| (d.share.numerator() * MICRO as u64).div_ceil(d.share.denominator()))
                    .sum();
                Candidate {
                    job: j.id,
                    priority: j.spec.priority,
                    preemptible: j.spec.preemptible,
                    protected: ran < guard,
                    cost: lost.saturating_mul(share.max(1)),
                }
            })
            .collect()
    }

    /// Plans a preemption for a pending job and orders the victims stopped.
    /// Returns the job's new "why pending", if it preempts.
    fn try_preempt(&mut self, id: JobId, request: &Request, priority: i32) -> Option<String> {
        let now = self.clock.now();
        let candidates = self.preemption_candidates(now);
        if !candidates.iter().any(|c| c.preemptible && c.priority < priority) {
            return None;
        }
        // A node another preemptor is emptying is not ours to take.
        let reserved: std::collections::HashSet<&NodeName> = self
            .nominations
            .iter()
            .filter(|(n, _)| **n != id)
            .map(|(_, n)| &n.node)
            .collect();
        let plan = preempt::plan(
            &self.cluster,
            request,
            priority,
            &candidates,
            self.placer.profile(),
            |node| reserved.contains(node.name()),
        )?;
        info!(
            job = %id,
            node = %plan.node,
            victims = plan.victims.len(),
            cost_gpu_s = plan.cost / 1_000_000_000,
            "preempting to make room"
        );
        for &victim in &plan.victims {
            let Some(v) = self.jobs.get_mut(&victim) else {
                continue;
            };
            v.preempted_by = Some(id);
            v.reason = format!("being preempted for job {id} (higher priority)");
            self.persist(victim, &[]);
            self.stop_parts(victim, StopReason::Preempted);
        }
        let reason = format!(
            "preempting {} job{} on {}",
            plan.victims.len(),
            if plan.victims.len() == 1 { "" } else { "s" },
            plan.node
        );
        self.nominations.insert(
            id,
            Nomination {
                node: plan.node,
                priority,
                victims: plan.victims,
            },
        );
        Some(reason)
    }

    /// A victim stopped: its attempt ends `PREEMPTED` (leases closed as
    /// preempted), and the job goes back to the queue at its old position.
    fn preempted(&mut self, id: JobId, by: JobId) {
        let now = self.clock.now();
        if let Some(n) = self.nominations.get_mut(&by) {
            n.victims.retain(|v| *v != id);
        }
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.state = JobState::Preempted;
        job.reason = format!("preempted for job {by}");
        job.ended_at = Some(now);
        self.close_leases(id, JobState::Preempted, now);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        self.persist(id, &touched);
        info!(job = %id, by = %by, "job preempted; requeued");
        let job = self.jobs.get_mut(&id).expect("present");
        job.next_attempt();
        job.reason = format!("requeued after preemption for job {by}");
        self.queue.push(job);
        self.persist(id, &[]);
        self.leases.insert(id, Vec::new());
        self.needs_pass = true;
    }

    /// A job that lost a node and has retries left: its leases close as
    /// node-lost and it goes back to the queue at its old position.
    fn requeue_lost(&mut self, id: JobId, why: String) {
        let now = self.clock.now();
        self.close_leases(id, JobState::NodeLost, now);
        self.release_all(id);
        let touched = self.all_lease_ids(&id);
        // A preemption victim lost with its node has nothing left to stop.
        if let Some(by) = self.jobs.get(&id).and_then(|j| j.preempted_by)
            && let Some(n) = self.nominations.get_mut(&by)
        {
            n.victims.retain(|v| *v != id);
        }
        self.nominations.remove(&id);
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.node_lost_requeues += 1;
        job.reason = format!(
            "requeued after {why} (retry {} of {})",
            job.node_lost_requeues, job.spec.node_lost_retries
        );
        warn!(job = %id, retry = job.node_lost_requeues, "job lost a node; requeued");
        job.next_attempt();
        self.queue.push(job);
        self.persist(id, &touched);
        self.leases.insert(id, Vec::new());
        self.orphaned.retain(|(j, _), _| *j != id);
        self.last_seen.retain(|(j, _), _| *j != id);
        self.needs_pass = true;
    }

    /// Makes a placement real: allocates every part, writes the leases and
    /// the job (durable at this turn's flush), then orders each node to launch.
    fn commit_placement(&mut self, id: JobId, parts: Vec<crate::domain::Placement>) {
        if let Some(tenant) = self.jobs.get(&id).map(|j| j.spec.tenant.clone()) {
            self.quota.placed(&tenant, id);
            self.holdings.remove(&tenant);
        }
        for (k, p) in parts.iter().enumerate() {
            if let Err(e) = self.cluster.allocate(id, p) {
                // The plan was made against this very cluster; refusing it means a bug.
                error!(job = %id, error = %e, "placement refused by the cluster model");
                for done in &parts[..k] {
                    self.cluster.release(id, done.node.as_str());
                }
                return;
            }
        }
        let now = self.clock.now();
        let job = self.jobs.get_mut(&id).expect("queued jobs are active");
        let leases: Vec<Lease> = parts
            .iter()
            .flat_map(|p| p.devices.iter().map(move |d| (p, d)))
            .map(|(p, d)| Lease {
                rate: Some(self.config.rate_card.rate_for(&d.gpu_model, job.spec.preemptible)),
                tags: job.spec.tags.clone(),
                id: LeaseId::new_v7(),
                job_id: id,
                attempt: job.attempt,
                tenant: job.spec.tenant.clone(),
                project: job.spec.project.clone(),
                node: p.node.clone(),
                device: d.clone(),
                state: LeaseState::Reserved,
                reserved_at: now,
                started_at: None,
                ended_at: None,
                end_reason: None,
                agent_runtime: None,
                idle: None,
                plugin_prices: None,
            })
            .collect();
        let nodes: Vec<String> = parts.iter().map(|p| p.node.to_string()).collect();
        job.state = JobState::Starting;
        job.reason = format!("starting on {}", nodes.join(", "));
        job.lease_ids.extend(leases.iter().map(|l| l.id));
        job.unplace();
        job.placements = parts.clone();
        let orders: Vec<(NodeName, LaunchOrder)> = parts
            .iter()
            .enumerate()
            .map(|(rank, p)| {
                let lease_ids = leases
                    .iter()
                    .filter(|l| l.node == p.node)
                    .map(|l| l.id.to_string())
                    .collect();
                (
                    p.node.clone(),
                    LaunchOrder {
                        job: id,
                        attempt: job.attempt,
                        spec: job.spec.clone(),
                        devices: p.devices.clone(),
                        lease_ids,
                        nodes: nodes.clone(),
                        rank: rank as u32,
                    },
                )
            })
            .collect();
        let touched: Vec<LeaseId> = leases.iter().map(|l| l.id).collect();
        self.leases.insert(id, leases);
        self.queue.remove(&id);
        // Leases durable first (this turn's flush), then the agents hear of it.
        self.persist(id, &touched);
        info!(job = %id, nodes = %nodes.join(","), "job placed");
        for (node, order) in orders {
            self.effects
                .push(Effect::Order(node, AgentOrder::Launch(Box::new(order))));
        }
    }

    /// Frees what the job holds on every node.
    fn release_all(&mut self, id: JobId) {
        let nodes: Vec<NodeName> = self
            .jobs
            .get(&id)
            .map(|j| j.nodes().cloned().collect())
            .unwrap_or_default();
        for n in nodes {
            self.cluster.release(id, n.as_str());
        }
        if let Some(tenant) = self.jobs.get(&id).map(|j| &j.spec.tenant) {
            self.quota.released(tenant);
            self.holdings.remove(tenant);
        }
    }

    /// Orders every part of the job that has not ended to stop.
    fn stop_parts(&mut self, id: JobId, reason: StopReason) {
        self.stop_parts_with(id, reason, None);
    }

    /// The grace a stop of `job` waits between SIGTERM and SIGKILL: its
    /// own, never more than the server's limit (a job stored before the
    /// limit, or under a higher one, is held to it too).
    fn grace_of(&self, job: &Job) -> Millis {
        job.spec.grace_period.min(self.config.max_grace)
    }

    /// Orders every part of the job that has not ended to stop, after
    /// `grace` (default: the job's own, capped by the server's limit).
    fn stop_parts_with(&mut self, id: JobId, reason: StopReason, grace: Option<Millis>) {
        let Some(job) = self.jobs.get(&id) else { return };
        let attempt = job.attempt;
        let grace = grace.unwrap_or_else(|| self.grace_of(job));
        for node in job.live_nodes() {
            self.effects.push(Effect::Order(
                node,
                AgentOrder::Stop {
                    job: id,
                    attempt,
                    grace,
                    reason,
                },
            ));
        }
    }

    // --- nodes and agents -----------------------------------------------------

    fn node_view(&self, name: &NodeName) -> NodeView {
        let node = self.cluster.node(name.as_str()).expect("known node").clone();
        let meta = self.nodes.get(name);
        NodeView {
            node,
            last_heartbeat: meta.and_then(|m| m.last_heartbeat),
            utilization: meta.map(|m| m.utilization.clone()).unwrap_or_default(),
            discovery: meta.map(|m| m.discovery.clone()).unwrap_or_default(),
            agent_version: meta.map(|m| m.agent_version.clone()).unwrap_or_default(),
        }
    }

    fn drain(&mut self, node: NodeName, reason: Option<String>) -> EngineResult<NodeView> {
        if self.cluster.node(node.as_str()).is_none() {
            return Err(EngineError::NotFound(format!("node {node}")));
        }
        let result = match &reason {
            Some(r) => self.ledger.put_drain(&node, r),
            None => self.ledger.remove_drain(&node),
        };
        if let Err(e) = result {
            let msg = e.to_string();
            self.failed.get_or_insert(e);
            return Err(EngineError::Internal(msg));
        }
        self.dirty = true;
        match &reason {
            Some(r) => {
                self.drained.insert(node.clone(), r.clone());
                info!(%node, reason = %r, "node drained");
            }
            None => {
                self.drained.remove(&node);
                self.needs_pass = true;
                info!(%node, "node undrained");
            }
        }
        self.cluster.set_drain(node.as_str(), reason);
        Ok(self.node_view(&node))
    }

    fn agent_connected(
        &mut self,
        conn: u64,
        reg: Registration,
        orders: mpsc::UnboundedSender<AgentOrder>,
    ) -> EngineResult<()> {
        let name = reg.inventory.name.clone();
        let now = self.clock.now();
        if self.agents.contains_key(&name) {
            // A second agent for a node whose agent is alive (heard from
            // within two heartbeats) is refused: two machines with one
            // name, or one token used twice. A silent connection is a dead
            // one not noticed yet: the new one replaces it.
            let heard = self.nodes.get(&name).and_then(|m| m.last_heartbeat);
            if let Some(at) = heard
                && now.since(at).0 < 2 * self.config.heartbeat_interval.0
            {
                return Err(EngineError::AlreadyExists(format!(
                    "node {name} is connected (its agent was heard from {} ago); a second agent cannot register it",
                    now.since(at)
                )));
            }
            warn!(node = %name, "agent reconnected; replacing its previous, silent connection");
        }
        self.agents.insert(name.clone(), AgentLink { conn, orders });
        // Exits that happened while the agent was away come first.
        for exit in &reg.exited {
            self.job_exited(&name, exit.clone());
        }
        self.cluster.upsert_node(reg.inventory.clone());
        self.cluster.set_status(name.as_str(), NodeStatus::Ready);
        self.cluster
            .set_drain(name.as_str(), self.drained.get(&name).cloned());
        let meta = self.nodes.entry(name.clone()).or_default();
        meta.discovery = reg.discovery.clone();
        meta.agent_version = reg.agent_version.clone();
        meta.lost_deadline = None;
        info!(node = %name, gpus = reg.inventory.gpus.len(), discovery = %reg.discovery, "agent registered");

        // Reconcile the jobs placed on this node with what the agent runs.
        let running: HashMap<JobId, (u32, Option<Millis>)> = reg
            .running
            .iter()
            .map(|p| (p.job, (p.attempt, p.running_for)))
            .collect();
        let here: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.runs_on(&name))
            .map(|j| j.id)
            .collect();
        for id in here {
            let job = &self.jobs[&id];
            let part = job
                .placements
                .iter()
                .find(|p| p.node == name)
                .cloned()
                .expect("filtered on runs_on");
            let reported = running.get(&id).is_some_and(|(a, _)| *a == job.attempt);
            let ended_here = job.parts_exited.iter().any(|e| e.node == name);
            self.orphaned.remove(&(id, name.clone()));
            if reported || ended_here {
                // The node's inventory was replaced: the part holds its devices again.
                if let Err(e) = self.cluster.allocate(id, &part) {
                    error!(job = %id, error = %e, "a running job no longer fits its node's inventory");
                }
            }
            if reported {
                // Started no earlier than the agent says it launched it.
                let since = running
                    .get(&id)
                    .and_then(|(_, ms)| *ms)
                    .map(|ms| UnixMillis(now.0.saturating_sub(ms.0)))
                    .unwrap_or(now);
                self.part_started(id, &name, since);
                // Stop orders sent while the node was away may never have
                // arrived: send them again.
                let job = &self.jobs[&id];
                let stop = if job.cancel_requested {
                    Some(StopReason::Cancelled)
                } else if job.preempted_by.is_some() {
                    Some(StopReason::Preempted)
                } else {
                    None
                };
                if let Some(reason) = stop {
                    let grace = if job.cancel_forced {
                        Millis::ZERO
                    } else {
                        self.grace_of(job)
                    };
                    self.effects.push(Effect::Order(
                        name.clone(),
                        AgentOrder::Stop {
                            job: id,
                            attempt: job.attempt,
                            grace,
                            reason,
                        },
                    ));
                }
            } else if ended_here {
                // Its part here is over; the job waits for its other parts.
            } else if job.state == JobState::Starting && job.parts_started.is_empty() && !job.cancel_requested
            {
                self.requeue_unstarted(id, "requeued: its node restarted before the job started");
            } else {
                warn!(job = %id, node = %name, "job part lost: its agent does not run it");
                let message = format!("node {name} no longer runs this job (agent restarted)");
                let at = self.lost_time(id, &name, now);
                self.part_ended(id, name.clone(), ExitOutcome::Lost(message), at, None);
            }
        }
        // Lost jobs above closed their leases at the previous heartbeat; from
        // here on the node is live (and a restarted controller knows it).
        if let Some(meta) = self.nodes.get_mut(&name) {
            meta.last_heartbeat = Some(now);
        }
        if let Err(e) = self.ledger.put_node_seen(&name, now) {
            warn!(node = %name, error = %e, "cannot record the registration");
        }
        // Processes the agent runs that the controller does not know: stop them.
        for RunningPart { job: id, attempt, .. } in reg.running {
            let known = self.jobs.get(&id).is_some_and(|j| j.attempt == attempt);
            if !known {
                self.effects.push(Effect::Order(
                    name.clone(),
                    AgentOrder::Stop {
                        job: id,
                        attempt,
                        grace: Millis(0),
                        reason: StopReason::UnknownJob,
                    },
                ));
            }
        }
        self.needs_pass = true;
        Ok(())
    }

    /// Idle time from a utilisation reading: the interval since the node's
    /// previous reading (at most two heartbeats back) counts as idle for
    /// every lease on a GPU that reads 0 % now. MIG slices get no readings
    /// (NVML gives none per slice), so their idle time stays unknown.
    fn count_idle(&mut self, node: &NodeName, readings: &BTreeMap<String, u32>, now: UnixMillis) {
        let Some(meta) = self.nodes.get_mut(node) else {
            return;
        };
        if readings.is_empty() {
            return;
        }
        let floor = UnixMillis(now.0.saturating_sub(2 * self.config.heartbeat_interval.0));
        let since = meta.last_reading.map(|t| t.max(floor));
        meta.last_reading = Some(now);
        for lease in
            self.leases.values_mut().flatten().filter(|l| {
                &l.node == node && l.state != LeaseState::Closed && l.device.mig_profile.is_none()
            })
        {
            let Some(&pct) = readings.get(&lease.device.gpu_uuid) else {
                continue;
            };
            let idle = lease.idle.get_or_insert_with(BTreeMap::new);
            let (Some(since), 0) = (since, pct) else { continue };
            // Split at hour boundaries, from when the lease holds the GPU.
            let mut t = since.max(lease.reserved_at);
            while t < now {
                let hour = t.0 - t.0 % crate::accounting::HOUR_MS;
                let stop = (hour + crate::accounting::HOUR_MS).min(now.0);
                *idle.entry(hour).or_default() += stop - t.0;
                t = UnixMillis(stop);
            }
        }
    }

    fn agent_gone(&mut self, node: &NodeName, why: &str) {
        self.agents.remove(node);
        // The grace runs from the last time the node was heard from: its
        // agent's fence (shorter) runs from the last heartbeat it had
        // acknowledged, so its jobs have stopped by then.
        let now = self.clock.now();
        let seen = self
            .nodes
            .get(node)
            .and_then(|m| m.last_heartbeat)
            .unwrap_or(now)
            .min(now);
        let deadline = seen.plus(self.config.node_lost_grace);
        if let Some(meta) = self.nodes.get_mut(node) {
            meta.lost_deadline = Some(deadline);
        }
        self.cluster.set_status(node.as_str(), NodeStatus::Down);
        for job in self.jobs.values() {
            if job.live_nodes().contains(node) {
                self.orphaned.insert((job.id, node.clone()), deadline);
            }
        }
        // Log reads waiting on this node will not be answered.
        let waiting: Vec<u64> = self
            .pending_logs
            .iter()
            .filter(|(_, (_, n, _))| n == node)
            .map(|(k, _)| *k)
            .collect();
        for k in waiting {
            if let Some((_, _, tx)) = self.pending_logs.remove(&k) {
                let _ = tx.send(Err(EngineError::Unavailable(format!("node {node} disconnected"))));
            }
        }
        warn!(%node, why, grace = %self.config.node_lost_grace, "node down");
    }

    fn agent_event(&mut self, node: &NodeName, event: AgentEvent) {
        let now = self.clock.now();
        if let Some(meta) = self.nodes.get_mut(node) {
            meta.last_heartbeat = Some(now);
        }
        match event {
            AgentEvent::Heartbeat {
                utilization,
                running,
                seq,
            } => {
                // Straight back, not after a flush: the ack says the engine
                // has seen the node alive now (its fence rests on it), and a
                // heartbeat writes nothing that must be durable first.
                if let Some(link) = self.agents.get(node) {
                    let _ = link.orders.send(AgentOrder::HeartbeatAck { seq });
                }
                self.count_idle(node, &utilization, now);
                if let Some(meta) = self.nodes.get_mut(node) {
                    meta.utilization = utilization;
                }
                // Kept so that a controller restarted later still knows when
                // the node's jobs were last seen running. Not flushed on its
                // own: sled writes it out within its flush interval.
                if let Err(e) = self.ledger.put_node_seen(node, now) {
                    warn!(%node, error = %e, "cannot record the heartbeat");
                }
                for (job, attempt) in running {
                    if self
                        .jobs
                        .get(&job)
                        .is_some_and(|j| j.attempt == attempt && j.runs_on(node))
                    {
                        self.last_seen.insert((job, node.clone()), now);
                    }
                }
            }
            AgentEvent::Started { job, attempt, pid } => {
                match self.jobs.get(&job) {
                    Some(j) if j.attempt == attempt && j.runs_on(node) => {
                        debug!(%job, %node, pid, "job part started");
                        self.part_started(job, node, now);
                    }
                    _ => {
                        // Not ours (any more): make sure it does not run.
                        self.effects.push(Effect::Order(
                            node.clone(),
                            AgentOrder::Stop {
                                job,
                                attempt,
                                grace: Millis(0),
                                reason: StopReason::UnknownJob,
                            },
                        ));
                    }
                }
            }
            AgentEvent::Exited(exit) => self.job_exited(node, exit),
            AgentEvent::LogChunk { request_id, result } => {
                if let Some((job, node, tx)) = self.pending_logs.remove(&request_id) {
                    let complete = !self.jobs.contains_key(&job);
                    let r = result
                        .map(|(data, next_offset, path)| LogSlice {
                            complete: complete && data.is_empty(),
                            data,
                            next_offset,
                            path,
                            node,
                        })
                        .map_err(EngineError::Unavailable);
                    let _ = tx.send(r);
                }
            }
        }
    }

    /// Every part has started: the job runs. (Each part's leases became
    /// active when it started; the caller writes the job.)
    fn mark_running(&mut self, id: JobId) {
        let now = self.clock.now();
        let Some(job) = self.jobs.get_mut(&id) else { return };
        job.state = JobState::Running;
        job.started_at = Some(now);
        // A cancel under way keeps its reason (the job ends with it).
        if !job.cancel_requested {
            let nodes: Vec<String> = job.nodes().map(|n| n.to_string()).collect();
            job.reason = format!("running on {}", nodes.join(", "));
        }
    }

    fn job_exited(&mut self, node: &NodeName, exit: JobExit) {
        // Acknowledged after this turn's flush, whether or not it changed anything:
        // a report re-sent after a reconnect changes nothing the second time.
        self.effects.push(Effect::Order(
            node.clone(),
            AgentOrder::AckExit {
                job: exit.job,
                attempt: exit.attempt,
            },
        ));
        let Some(job) = self.jobs.get(&exit.job) else {
            return;
        };
        if job.attempt != exit.attempt || !job.runs_on(node) {
            return;
        }
        let now = self.clock.now();
        // A part whose start report was lost (the controller restarted
        // before it was written) ran all the same: it started `runtime`
        // before it ended.
        let unstarted = !job.parts_started.contains(node);
        if unstarted && exit.runtime.is_some() && !matches!(exit.outcome, ExitOutcome::LaunchFailed(_)) {
            let ended = exit
                .ended_ago
                .map(|ago| UnixMillis(now.0.saturating_sub(ago.0)))
                .unwrap_or(now);
            let began = UnixMillis(ended.0.saturating_sub(exit.runtime.unwrap_or_default().0));
            self.part_started(exit.job, node, began);
        }
        let at = self.exit_time(exit.job, node, &exit, now);
        self.part_ended(exit.job, node.clone(), exit.outcome, at, exit.runtime);
    }

    /// A part reported it started; the job runs once every part has.
    /// `at` is when it started by the controller's clock (now, or earlier
    /// when the report comes late), never before the lease was reserved.
    fn part_started(&mut self, id: JobId, node: &NodeName, at: UnixMillis) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.parts_started.contains(node) {
            return;
        }
        job.parts_started.push(node.clone());
        let all = job.nodes().all(|n| job.parts_started.contains(n));
        // The leases on this node start with this part.
        let mut touched = Vec::new();
        if let Some(leases) = self.leases.get_mut(&id) {
            for lease in leases
                .iter_mut()
                .filter(|l| &l.node == node && l.state == LeaseState::Reserved)
            {
                lease.state = LeaseState::Active;
                lease.started_at = Some(at.max(lease.reserved_at));
                touched.push(lease.id);
            }
        }
        if all && self.jobs[&id].state == JobState::Starting {
            self.mark_running(id);
        }
        self.persist(id, &touched);
    }

    /// One part of the job ended. While others still run, a bad ending stops
    /// them (a gang lives and dies together); the last ending decides the job.
    fn part_ended(
        &mut self,
        id: JobId,
        node: NodeName,
        outcome: ExitOutcome,
        at: UnixMillis,
        runtime: Option<Millis>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.parts_exited.iter().any(|e| e.node == node) {
            return;
        }
        let bad = !outcome.is_success();
        job.parts_exited.push(crate::domain::PartExit {
            node: node.clone(),
            outcome,
            at: Some(at),
            runtime,
        });
        let live = job.live_nodes();
        if !live.is_empty() {
            let first_bad = bad
                && job
                    .parts_exited
                    .iter()
                    .filter(|e| !e.outcome.is_success())
                    .count()
                    == 1;
            if first_bad && !job.cancel_requested && job.preempted_by.is_none() {
                job.reason = format!("its part on {node} ended badly; stopping the others");
                self.persist(id, &[]);
                self.stop_parts(id, StopReason::Gang);
            } else {
                self.persist(id, &[]);
            }
            return;
        }
        let now = self.clock.now();
        let job = self.jobs.get_mut(&id).expect("present");
        if let Some(by) = job.preempted_by
            && !job.cancel_requested
            && job
                .parts_exited
                .iter()
                .all(|e| matches!(e.outcome, ExitOutcome::Stopped { .. } | ExitOutcome::Signaled(_)))
        {
            if let Some(ExitOutcome::Stopped { exit_code, signal }) =
                job.parts_exited.last().map(|e| &e.outcome)
            {
                job.exit_code = *exit_code;
                job.signal = *signal;
            }
            self.preempted(id, by);
            return;
        }
        let (state, reason, code, signal) = verdict(job);
        if state == JobState::NodeLost
            && !job.cancel_requested
            && job.node_lost_requeues < job.spec.node_lost_retries
        {
            self.requeue_lost(id, reason);
            return;
        }
        job.state = state;
        job.reason = reason;
        job.exit_code = code;
        job.signal = signal;
        job.ended_at = Some(now);
        if job.started_at.is_none() && state != JobState::Failed {
            job.started_at = Some(now);
        }
        info!(job = %id, state = %state, "job ended");
        self.finish(id);
    }

    fn read_logs(
        &mut self,
        id: JobId,
        node: Option<NodeName>,
        offset: u64,
        limit: u32,
        tx: oneshot::Sender<EngineResult<LogSlice>>,
    ) {
        let job = match self.job_snapshot(id) {
            Ok(j) => j,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        if let Some(n) = &node
            && !job.runs_on(n)
        {
            let _ = tx.send(Err(EngineError::FailedPrecondition(format!(
                "job {id} does not run on node {n}"
            ))));
            return;
        }
        let Some(node) = node.or_else(|| job.nodes().next().cloned()) else {
            let _ = tx.send(Err(EngineError::FailedPrecondition(format!(
                "job {id} has not been placed on a node yet: no output"
            ))));
            return;
        };
        let Some(link) = self.agents.get(&node) else {
            let _ = tx.send(Err(EngineError::Unavailable(format!(
                "node {node}, which holds the output of job {id}, is not connected"
            ))));
            return;
        };
        let request_id = self.next_request;
        self.next_request += 1;
        let _ = link.orders.send(AgentOrder::ReadLog {
            request_id,
            job: id,
            offset,
            limit,
        });
        self.pending_logs.insert(request_id, (id, node, tx));
    }

    // --- time -----------------------------------------------------------------

    fn on_tick(&mut self) {
        let now = self.clock.now();
        self.expire_requests(now);
        // Log reads whose caller has gone (timed out, cancelled) are not
        // waited for any longer.
        self.pending_logs.retain(|_, (_, _, tx)| !tx.is_closed());
        // Agents that went silent without closing their stream.
        let silent: Vec<NodeName> = self
            .agents
            .keys()
            .filter(|n| {
                self.nodes
                    .get(*n)
                    .and_then(|m| m.last_heartbeat)
                    .is_some_and(|t| now.since(t) > self.config.heartbeat_timeout)
            })
            .cloned()
            .collect();
        for node in silent {
            self.agent_gone(&node, "no heartbeat");
        }
        // Parts whose node stayed away past the grace period.
        let lost: Vec<(JobId, NodeName)> = self
            .orphaned
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (id, node) in lost {
            self.orphaned.remove(&(id, node.clone()));
            warn!(job = %id, %node, "job part lost with its node");
            let message = format!(
                "node {node} did not come back within {}",
                self.config.node_lost_grace
            );
            let at = self.lost_time(id, &node, now);
            self.part_ended(id, node, ExitOutcome::Lost(message), at, None);
        }
    }
}

/// A closed lease priced hour part by hour part by the tenant's pricing
/// plugin (the list price where it fails or no plugin applies any more).
async fn price_lease(policy: &PolicyHost, lease: &Lease, preemptible: bool) -> PluginPrices {
    let end = lease.ended_at.unwrap_or(lease.reserved_at);
    let rate = lease.rate.unwrap_or_default();
    let mut by_hour = BTreeMap::new();
    let mut plugin = String::new();
    let mut showback_by_hour = BTreeMap::new();
    let mut showback_plugin = String::new();
    for part in crate::accounting::hour_parts(lease, end, UnixMillis(0), UnixMillis(u64::MAX)) {
        let minor = |r| crate::accounting::minor_of(crate::accounting::pricing::cost(part.gpu_time, r));
        let (list, undiscounted) = (minor(rate.per_gpu_hour), minor(rate.undiscounted()));
        let input = PriceInput {
            tenant: lease.tenant.clone(),
            project: lease.project.clone(),
            gpu_model: lease.device.gpu_model.clone(),
            mig_profile: lease.device.mig_profile.clone(),
            share: lease.device.share,
            start: part.start,
            duration: Millis(part.end.0 - part.start.0),
            preemptible,
            tags: lease.tags.clone(),
            currency: rate.currency,
            list_price_minor: u64::try_from(list).unwrap_or(u64::MAX),
            undiscounted_price_minor: u64::try_from(undiscounted).unwrap_or(u64::MAX),
        };
        // What bills: the operator's plugin, else the rate card (no entry).
        let outcome = policy.price(&input).await;
        if let Some(p) = outcome.decided_by.plugin() {
            plugin = p.to_string();
            by_hour.insert(part.hour.0, i128::from(outcome.decision));
        }
        // Beside it, never billed: the tenant's own plugin's showback.
        if let Some(outcome) = policy.showback(&input).await
            && let Some(p) = outcome.decided_by.plugin()
        {
            showback_plugin = p.to_string();
            showback_by_hour.insert(part.hour.0, i128::from(outcome.decision));
        }
    }
    PluginPrices {
        plugin,
        pending: false,
        by_hour,
        showback_plugin,
        showback_by_hour,
    }
}

/// How a job ended, from how its parts did: a cancel wins, then a lost node,
/// a part that could not start, a time limit, the first part that failed;
/// parts stopped because another failed do not count against the job.
fn verdict(job: &Job) -> (JobState, String, Option<i32>, Option<i32>) {
    let parts = &job.parts_exited;
    let several = job.placements.len() > 1;
    let on = |n: &NodeName| {
        if several {
            format!(" on {n}")
        } else {
            String::new()
        }
    };
    if job.cancel_requested {
        let reason = job
            .reason
            .trim_end_matches("; stopping")
            .trim_end_matches("; killing (forced)")
            .trim_end_matches("; stopping (cancel requested)")
            .to_string();
        let (code, signal) = parts
            .iter()
            .find_map(|e| match &e.outcome {
                ExitOutcome::Stopped { exit_code, signal } => Some((*exit_code, *signal)),
                ExitOutcome::Exited(c) => Some((Some(*c), None)),
                ExitOutcome::Signaled(s) => Some((None, Some(*s))),
                _ => None,
            })
            .unwrap_or((None, None));
        return (JobState::Cancelled, reason, code, signal);
    }
    if let Some((e, msg)) = parts.iter().find_map(|e| match &e.outcome {
        ExitOutcome::Lost(m) => Some((e, m)),
        _ => None,
    }) {
        let _ = e;
        return (JobState::NodeLost, msg.clone(), None, None);
    }
    if let Some((e, msg)) = parts.iter().find_map(|e| match &e.outcome {
        ExitOutcome::LaunchFailed(m) => Some((e, m)),
        _ => None,
    }) {
        return (
            JobState::Failed,
            format!("could not start{}: {msg}", on(&e.node)),
            None,
            None,
        );
    }
    if let Some((e, code, signal)) = parts.iter().find_map(|e| match &e.outcome {
        ExitOutcome::TimedOut { exit_code, signal } => Some((e, *exit_code, *signal)),
        _ => None,
    }) {
        let limit = job.spec.time_limit.unwrap_or_default();
        let _ = e;
        return (
            JobState::TimedOut,
            format!("stopped at its time limit of {limit}"),
            code,
            signal,
        );
    }
    for e in parts {
        match &e.outcome {
            ExitOutcome::Exited(0) => {}
            ExitOutcome::Exited(code) => {
                return (
                    JobState::Failed,
                    format!("exited with code {code}{}", on(&e.node)),
                    Some(*code),
                    None,
                );
            }
            ExitOutcome::Signaled(sig) => {
                return (
                    JobState::Failed,
                    format!("killed by signal {sig}{}", on(&e.node)),
                    None,
                    Some(*sig),
                );
            }
            ExitOutcome::Stopped { exit_code, signal } if !several => {
                return (
                    JobState::Failed,
                    "stopped by its node".to_string(),
                    *exit_code,
                    *signal,
                );
            }
            _ => {}
        }
    }
    if parts.iter().any(|e| !e.outcome.is_success()) {
        return (JobState::Failed, "stopped by its node".to_string(), None, None);
    }
    (
        JobState::Succeeded,
        "exited with code 0".to_string(),
        Some(0),
        None,
    )
}
