//! The engine: one task owns the scheduler state. Everything else sends it
//! commands over a channel and awaits the reply.
//!
//! Each turn of the loop takes a batch of commands, applies them to the state
//! (writing changed jobs and leases to the ledger), runs one placement pass,
//! flushes the ledger once, and only then replies, tells agents and publishes
//! events: nothing is acknowledged before it is durable (group commit).

mod apply;
mod batch;
#[doc(hidden)]
pub mod bench;
mod cycle;
mod model;
mod observe;
#[doc(hidden)]
pub mod replay;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::accounting::budget::Budget;
use crate::accounting::pricing::RateCard;
use crate::clock::Clock;
pub use crate::domain::ExitOutcome;
use crate::domain::validate::Violation;
use crate::domain::{
    DeviceGrant, Hold, Job, JobId, JobSpec, Millis, NodeName, QueueDef, QueueName, Share, TenantName,
    UnixMillis,
};
use crate::ledger::Ledger;
use crate::placement::{Node, NodeInventory, Policy};

pub use state::Engine;

/// Timings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How often agents send heartbeats.
    pub heartbeat_interval: Millis,
    /// An agent silent this long is treated as disconnected.
    pub heartbeat_timeout: Millis,
    /// How long after its agent disconnects (or the controller restarts) a
    /// node's running jobs are declared lost.
    pub node_lost_grace: Millis,
    /// How often the engine wakes up without a command.
    pub tick: Millis,
    /// How placement ranks nodes.
    pub policy: Policy,
    /// Seeds placement's tie-break order.
    pub placement_seed: u64,
    /// Preemptible jobs are not preempted before they have run this long
    /// (a job's own `min_runtime` applies when longer).
    pub min_runtime: Millis,
    /// Prices a lease gets when it is reserved.
    pub rate_card: Arc<RateCard>,
    /// The longest grace period between SIGTERM and SIGKILL: longer ones
    /// are refused on submit, and a stop never waits longer.
    pub max_grace: Millis,
    /// The queues of the server's config file (`[[queues]]`).
    pub queues: Vec<QueueDef>,
    /// Fair share's half-life and weights (`[fairshare]`).
    pub fairshare: FairShareConfig,
    /// How many top pending jobs that cannot start get a backfill
    /// reservation in each pass (0: no backfill).
    pub backfill_depth: usize,
    /// The most tasks one array may have (`--max-array-size`).
    pub max_array_size: u32,
    /// QOS names and the tier each adds to a job's queue's (`[qos]`).
    pub qos: BTreeMap<crate::domain::QosName, i32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            heartbeat_interval: Millis::from_secs(5),
            heartbeat_timeout: Millis::from_secs(30),
            node_lost_grace: Millis::from_secs(120),
            tick: Millis(500),
            policy: Policy::Allot,
            placement_seed: 0,
            min_runtime: Millis::ZERO,
            rate_card: Arc::new(RateCard::default()),
            max_grace: crate::domain::validate::DEFAULT_MAX_GRACE,
            queues: Vec::new(),
            fairshare: FairShareConfig::default(),
            backfill_depth: cycle::DEFAULT_BACKFILL_DEPTH,
            max_array_size: crate::domain::array::DEFAULT_MAX_ARRAY_SIZE,
            qos: BTreeMap::new(),
        }
    }
}

/// A submission's idempotency key and what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitKey {
    pub request_id: String,
    /// SHA-256 (hex) of the submitted spec, before admission.
    pub fingerprint: String,
}

/// How long an idempotency key is honoured.
pub const REQUEST_ID_TTL: Millis = Millis::from_secs(86_400);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A request id used before for a different request.
    #[error("{0}")]
    RequestReused(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request field the state makes wrong (a queue's limit, say).
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl crate::domain::ServiceError for EngineError {
    fn code(&self) -> crate::domain::ErrorCode {
        use crate::domain::ErrorCode as C;
        match self {
            EngineError::RequestReused(_) => C::InvalidArgument,
            EngineError::NotFound(_) => C::NotFound,
            EngineError::AlreadyExists(_) => C::AlreadyExists,
            EngineError::FailedPrecondition(_) => C::FailedPrecondition,
            EngineError::Invalid { .. } => C::InvalidArgument,
            EngineError::PermissionDenied(_) => C::PermissionDenied,
            EngineError::ResourceExhausted(_) => C::ResourceExhausted,
            EngineError::Unavailable(_) => C::Unavailable,
            EngineError::Internal(_) => C::Internal,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            EngineError::RequestReused(_) => Some("request_id"),
            EngineError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// A change to a job, published after it is durable.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub job: Job,
    pub at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExit {
    pub job: JobId,
    pub attempt: u32,
    pub outcome: ExitOutcome,
    /// How long the process ran, by the agent's monotonic clock.
    pub runtime: Option<Millis>,
    /// How long before the report was sent the process ended (agent clock).
    pub ended_ago: Option<Millis>,
}

/// A job part an agent runs, as it says when it registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningPart {
    pub job: JobId,
    pub attempt: u32,
    /// How long ago the agent launched it (its monotonic clock).
    pub running_for: Option<Millis>,
}

/// A node agent's registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub inventory: NodeInventory,
    /// The parts the agent runs now.
    pub running: Vec<RunningPart>,
    /// Exits the agent reported but the controller has not acknowledged.
    pub exited: Vec<JobExit>,
    pub discovery: String,
    pub agent_version: String,
}

/// Bytes of a job's output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSlice {
    pub data: Vec<u8>,
    pub next_offset: u64,
    pub path: String,
    pub node: NodeName,
    pub complete: bool,
}

/// What an agent sends, in domain terms.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    Heartbeat {
        utilization: BTreeMap<String, u32>,
        running: Vec<(JobId, u32)>,
        /// Acknowledged back (the agent's fence lease rests on it).
        seq: u64,
    },
    Started {
        job: JobId,
        attempt: u32,
        pid: i32,
    },
    Exited(JobExit),
    LogChunk {
        request_id: u64,
        result: Result<(Vec<u8>, u64, String), String>,
    },
}

/// Why the controller stops a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Preempted,
    /// Another part of the same gang ended badly.
    Gang,
    /// To go back to the queue (`allot requeue`).
    Requeued,
    UnknownJob,
}

/// Everything a node needs to start one job.
#[derive(Debug, Clone)]
pub struct LaunchOrder {
    pub job: JobId,
    pub attempt: u32,
    pub spec: JobSpec,
    pub devices: Vec<DeviceGrant>,
    pub lease_ids: Vec<String>,
    /// Every node of the job, in rank order, and this part's rank.
    pub nodes: Vec<String>,
    pub rank: u32,
}

/// A queue with its GPUs and jobs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub def: QueueDef,
    pub nodes: u32,
    pub gpus_total: u32,
    pub gpus_in_use: u32,
    pub gpus_idle: u32,
    pub gpus_down: u32,
    pub gpus_allocated: Share,
    pub jobs_pending: u32,
    pub jobs_running: u32,
}

/// An update of a queue: the new definition, made from the current one
/// (in the engine's turn, so two updates never lose each other's fields).
pub type QueueUpdate = Box<dyn FnOnce(&QueueDef) -> Result<QueueDef, Violation> + Send>;

pub use model::FairShareConfig;
pub use model::fairshare::Standing as FairShareStanding;

/// Fair share as it stands: the half-life, each tenant's standing and each
/// project's inside its tenant, and when usage was last read.
#[derive(Debug, Clone, PartialEq)]
pub struct FairShareReport {
    pub half_life: Millis,
    pub read_at: Option<UnixMillis>,
    pub tenants: BTreeMap<TenantName, FairShareStanding>,
    pub projects: BTreeMap<(TenantName, crate::domain::ProjectName), FairShareStanding>,
}

/// A change to a job that the caller (its owner, or an admin) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobControl {
    /// Keep a pending job from starting.
    Hold { by_admin: bool, reason: String },
    /// Let a held job start again (an admin's hold needs an admin).
    Release { by_admin: bool },
    /// Change a pending job.
    Update(JobUpdate),
    /// Back to the queue: a running job is stopped first; an ended one
    /// starts over as its next attempt. With `hold`, it waits held.
    Requeue { hold: Option<Hold> },
}

/// The fields of a pending job an update may change; `None`: kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobUpdate {
    pub priority: Option<i32>,
    /// `Some(None)`: no time limit (the queue's default applies).
    pub time_limit: Option<Option<Millis>>,
    pub queue: Option<QueueName>,
}

/// What the controller tells an agent.
#[derive(Debug, Clone)]
pub enum AgentOrder {
    Launch(Box<LaunchOrder>),
    Stop {
        job: JobId,
        attempt: u32,
        grace: Millis,
        reason: StopReason,
    },
    AckExit {
        job: JobId,
        attempt: u32,
    },
    ReadLog {
        request_id: u64,
        job: JobId,
        offset: u64,
        limit: u32,
    },
    /// The engine has taken in the agent's heartbeat `seq`.
    HeartbeatAck {
        seq: u64,
    },
}

/// A node with what the engine knows of its agent.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node: Node,
    pub last_heartbeat: Option<UnixMillis>,
    pub utilization: BTreeMap<String, u32>,
    pub discovery: String,
    pub agent_version: String,
}

pub(crate) enum Command {
    Submit {
        spec: Box<JobSpec>,
        /// The submission's idempotency key, if it has one.
        request: Option<SubmitKey>,
        /// Submitted held (`sbatch -H`).
        hold: bool,
        reply: oneshot::Sender<EngineResult<Job>>,
    },
    Cancel {
        id: JobId,
        reason: String,
        /// SIGKILL now, without the grace period.
        force: bool,
        reply: oneshot::Sender<EngineResult<Job>>,
    },
    ListNodes {
        reply: oneshot::Sender<Vec<NodeView>>,
    },
    /// A job as the engine holds it (also an array task not split off yet).
    GetJob {
        id: JobId,
        reply: oneshot::Sender<EngineResult<Job>>,
    },
    /// Hold, release, update or requeue a job.
    Control {
        id: JobId,
        change: JobControl,
        reply: oneshot::Sender<EngineResult<Job>>,
    },
    Drain {
        node: NodeName,
        reason: Option<String>,
        reply: oneshot::Sender<EngineResult<NodeView>>,
    },
    /// From now on, asks this plugin host about quota before placing.
    UsePolicy(crate::policy::PolicyHost),
    /// A pricing plugin's prices for a closed lease.
    Priced {
        lease: crate::domain::LeaseId,
        prices: crate::domain::PluginPrices,
    },
    /// A quota plugin's answer to ask `ask` about a pending job.
    QuotaVerdict {
        job: JobId,
        ask: u64,
        outcome: crate::policy::types::QuotaOutcome,
    },
    CreateQueue {
        def: Box<QueueDef>,
        reply: oneshot::Sender<EngineResult<QueueDef>>,
    },
    UpdateQueue {
        name: QueueName,
        update: QueueUpdate,
        reply: oneshot::Sender<EngineResult<QueueDef>>,
    },
    DeleteQueue {
        name: QueueName,
        reply: oneshot::Sender<EngineResult<()>>,
    },
    ListQueues {
        reply: oneshot::Sender<Vec<QueueView>>,
    },
    /// Usage read for fair share (off the engine's task).
    FairShareUsage {
        rows: Result<Vec<crate::accounting::usage::UsageRow>, String>,
        at: UnixMillis,
    },
    FairShare {
        reply: oneshot::Sender<FairShareReport>,
    },
    /// Sets a tenant's budget, or clears it (`budget: None`).
    SetBudget {
        tenant: TenantName,
        budget: Option<Budget>,
        reply: oneshot::Sender<EngineResult<()>>,
    },
    AgentConnected {
        conn: u64,
        registration: Box<Registration>,
        orders: mpsc::UnboundedSender<AgentOrder>,
        reply: oneshot::Sender<EngineResult<()>>,
    },
    Agent {
        conn: u64,
        node: NodeName,
        event: AgentEvent,
    },
    AgentDisconnected {
        conn: u64,
        node: NodeName,
    },
    ReadLogs {
        id: JobId,
        node: Option<NodeName>,
        offset: u64,
        limit: u32,
        reply: oneshot::Sender<EngineResult<LogSlice>>,
    },
    /// Answered once every command sent before it is handled, the turn's
    /// tick and placement pass have run, and what they made is durable and
    /// told: tests run the engine until it is quiet with it, instead of
    /// polling.
    #[cfg(test)]
    Settle {
        reply: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable way to talk to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<JobEvent>,
    ledger: Ledger,
    rate_card: Arc<RateCard>,
    limits: crate::domain::validate::Limits,
    fence_after: Millis,
}

/// How long an agent's jobs may run without the controller acknowledging
/// it: three quarters of the node-lost grace, so that they have stopped a
/// quarter of the grace before the controller may run them elsewhere.
pub fn fence_after(node_lost_grace: Millis) -> Millis {
    Millis(node_lost_grace.0 / 4 * 3)
}

fn gone() -> EngineError {
    EngineError::Unavailable("the scheduler engine has stopped".into())
}

impl EngineHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Returns once the engine has handled everything sent before, run
    /// its tick and pass, and told what they made (see `Command::Settle`).
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        self.ask(|reply| Command::Settle { reply })
            .await
            .expect("the engine runs");
    }

    /// Queues a validated job. Returns it once durable.
    pub async fn submit(&self, spec: JobSpec) -> EngineResult<Job> {
        self.submit_once(spec, None).await
    }

    /// Queues a validated job under an idempotency key: a second
    /// submission with the same key (within a day) returns the job the
    /// first one created instead of creating another.
    pub async fn submit_once(&self, spec: JobSpec, request: Option<SubmitKey>) -> EngineResult<Job> {
        self.submit_with(spec, request, false).await
    }

    /// [`EngineHandle::submit_once`], held if `hold` (`sbatch -H`): the job
    /// waits until released, whatever room there is.
    pub async fn submit_with(
        &self,
        spec: JobSpec,
        request: Option<SubmitKey>,
        hold: bool,
    ) -> EngineResult<Job> {
        self.ask(|reply| Command::Submit {
            spec: Box::new(spec),
            request,
            hold,
            reply,
        })
        .await?
    }

    /// A job as the engine holds it, once what it holds is durable: an
    /// active one, an ended one from the ledger, or an array task that has
    /// not started yet (as it would be).
    pub async fn job(&self, id: JobId) -> EngineResult<Job> {
        self.ask(|reply| Command::GetJob { id, reply }).await?
    }

    /// Cancels a job: a pending one at once, a placed one by stopping it
    /// (SIGTERM, its grace period, SIGKILL; with `force`, SIGKILL now, also
    /// for a job already being stopped).
    pub async fn cancel(&self, id: JobId, reason: String, force: bool) -> EngineResult<Job> {
        self.ask(|reply| Command::Cancel {
            id,
            reason,
            force,
            reply,
        })
        .await?
    }

    pub async fn list_nodes(&self) -> EngineResult<Vec<NodeView>> {
        self.ask(|reply| Command::ListNodes { reply }).await
    }

    /// Hands the engine the plugin host: quota plugins are asked before
    /// placing the jobs of the tenants they apply to.
    pub async fn use_policy(&self, policy: crate::policy::PolicyHost) {
        let _ = self.tx.send(Command::UsePolicy(policy)).await;
    }

    /// Sets (`Some`) or clears (`None`) a tenant's monthly budget; durable
    /// when this returns, and in force from the next placement pass.
    pub async fn set_budget(&self, tenant: TenantName, budget: Option<Budget>) -> EngineResult<()> {
        self.ask(|reply| Command::SetBudget {
            tenant,
            budget,
            reply,
        })
        .await?
    }

    /// Creates a queue (durable when this returns).
    pub async fn create_queue(&self, def: QueueDef) -> EngineResult<QueueDef> {
        self.ask(|reply| Command::CreateQueue {
            def: Box::new(def),
            reply,
        })
        .await?
    }

    /// Changes a queue: `update` makes the new definition from the current.
    pub async fn update_queue(&self, name: QueueName, update: QueueUpdate) -> EngineResult<QueueDef> {
        self.ask(|reply| Command::UpdateQueue { name, update, reply })
            .await?
    }

    /// Deletes a queue that holds no jobs and is not the default.
    pub async fn delete_queue(&self, name: QueueName) -> EngineResult<()> {
        self.ask(|reply| Command::DeleteQueue { name, reply }).await?
    }

    /// Every tenant's and project's fair-share standing.
    pub async fn fairshare(&self) -> EngineResult<FairShareReport> {
        self.ask(|reply| Command::FairShare { reply }).await
    }

    /// Every queue, by name, with its GPUs and jobs now.
    pub async fn list_queues(&self) -> EngineResult<Vec<QueueView>> {
        self.ask(|reply| Command::ListQueues { reply }).await
    }

    /// Holds, releases, updates or requeues a job (see [`JobControl`]);
    /// returns it as it stands once the change is durable.
    pub async fn control(&self, id: JobId, change: JobControl) -> EngineResult<Job> {
        self.ask(|reply| Command::Control { id, change, reply }).await?
    }

    /// Drains a node (`Some(reason)`) or undrains it (`None`).
    pub async fn drain(&self, node: NodeName, reason: Option<String>) -> EngineResult<NodeView> {
        self.ask(|reply| Command::Drain { node, reason, reply }).await?
    }

    pub async fn read_logs(
        &self,
        id: JobId,
        node: Option<NodeName>,
        offset: u64,
        limit: u32,
    ) -> EngineResult<LogSlice> {
        self.ask(|reply| Command::ReadLogs {
            id,
            node,
            offset,
            limit,
            reply,
        })
        .await?
    }

    pub(crate) async fn agent_connected(
        &self,
        conn: u64,
        registration: Registration,
        orders: mpsc::UnboundedSender<AgentOrder>,
    ) -> EngineResult<()> {
        self.ask(|reply| Command::AgentConnected {
            conn,
            registration: Box::new(registration),
            orders,
            reply,
        })
        .await?
    }

    pub(crate) async fn agent_event(&self, conn: u64, node: NodeName, event: AgentEvent) {
        let _ = self.tx.send(Command::Agent { conn, node, event }).await;
    }

    pub(crate) async fn agent_disconnected(&self, conn: u64, node: NodeName) {
        let _ = self.tx.send(Command::AgentDisconnected { conn, node }).await;
    }

    /// Job changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// How many subscriptions to job changes are open (watch streams).
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    /// The rate card leases are priced by.
    pub fn rate_card(&self) -> &RateCard {
        &self.rate_card
    }

    /// The ledger, for reads.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// How long an agent's jobs may run without hearing from the
    /// controller (`Registered.fence_after_ms`).
    pub fn fence_after(&self) -> Millis {
        self.fence_after
    }

    /// The limits submitted specs are held to.
    pub fn limits(&self) -> crate::domain::validate::Limits {
        self.limits
    }
}

/// Loads the state from the ledger and starts the engine task. The task ends
/// when every handle is dropped, or with an error if the ledger fails (the
/// caller must then stop serving: the state in memory is no longer durable).
pub fn start(
    ledger: Ledger,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
) -> anyhow::Result<(EngineHandle, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let (tx, rx) = mpsc::channel(4096);
    let (events, _) = broadcast::channel(4096);
    let rate_card = config.rate_card.clone();
    let limits = crate::domain::validate::Limits {
        max_grace: config.max_grace,
    };
    let fence = fence_after(config.node_lost_grace);
    let mut engine = Engine::load(ledger.clone(), clock, config, events.clone())?;
    engine.set_channel(tx.downgrade());
    let task = tokio::spawn(engine.run(rx));
    Ok((
        EngineHandle {
            tx,
            events,
            ledger,
            rate_card,
            limits,
            fence_after: fence,
        },
        task,
    ))
}

#[cfg(test)]
mod tests;
