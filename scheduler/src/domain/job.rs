//! Jobs: what is asked for, and what became of it.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::array::{ArrayProgress, ArraySpec, ArrayTask};
use super::dependency::Dependency;
use super::ids::{JobId, LeaseId, NodeName, ProjectName, QosName, QueueName, TenantName};
use super::mig::MigProfile;
use super::units::{MiB, MilliCpu, Millis, Share, UnixMillis};

/// The GPU part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuRequest {
    /// A CPU-only job: it sees no GPU.
    None,
    /// N whole GPUs on one node, all or nothing.
    Whole(NonZeroU32),
    /// A share of one GPU in (0, 1], with a GPU memory cap (default: the same
    /// share of the GPU's memory).
    Fraction { share: Share, memory: Option<MiB> },
    /// One MIG slice of this profile.
    Mig(MigProfile),
}

impl GpuRequest {
    /// The GPUs the request holds once placed, exactly: a whole GPU counts
    /// 1, a share its share, a MIG slice its compute slices out of 7.
    pub fn gpus(&self) -> Share {
        match self {
            GpuRequest::None => Share::ZERO,
            GpuRequest::Whole(n) => Share::new(n.get().into(), 1).unwrap_or(Share::ZERO),
            GpuRequest::Fraction { share, .. } => *share,
            GpuRequest::Mig(p) => p.share(),
        }
    }
}

impl fmt::Display for GpuRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuRequest::None => f.write_str("a CPU-only job"),
            GpuRequest::Whole(n) if n.get() == 1 => f.write_str("1 GPU"),
            GpuRequest::Whole(n) => write!(f, "{n} GPUs"),
            GpuRequest::Fraction { share, memory: None } => write!(f, "{share} of a GPU"),
            GpuRequest::Fraction {
                share,
                memory: Some(m),
            } => write!(f, "{share} of a GPU with {m}"),
            GpuRequest::Mig(p) => write!(f, "MIG {p}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub gpu: GpuRequest,
    pub cpu: MilliCpu,
    pub memory: MiB,
}

impl Resources {
    pub const DEFAULT_CPU: MilliCpu = MilliCpu(1000);
    pub const DEFAULT_MEMORY: MiB = MiB(1024);
}

/// Where a job may run, beyond its resources.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Constraints {
    /// GPU models the job accepts (e.g. `V100M16`, `V100M32`); empty: any.
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Labels a node must carry, all of them.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// A whole-GPU gang may span nodes when no one node has room for it.
    #[serde(default)]
    pub spread: bool,
    /// The only nodes it may run on (`sbatch -w`), sorted; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeName>,
    /// Nodes it must not run on (`sbatch -x`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_nodes: Vec<NodeName>,
}

/// A validated job specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Working directory on the node; `None` means a per-job scratch directory.
    pub working_dir: Option<String>,
    pub resources: Resources,
    #[serde(default)]
    pub constraints: Constraints,
    pub priority: i32,
    pub preemptible: bool,
    pub time_limit: Option<Millis>,
    pub grace_period: Millis,
    pub tenant: TenantName,
    pub project: ProjectName,
    pub tags: BTreeMap<String, String>,
    /// Not preempted before it has run this long.
    #[serde(default)]
    pub min_runtime: Option<Millis>,
    /// How often it checkpoints (for the cost of preempting it).
    #[serde(default)]
    pub checkpoint_interval: Option<Millis>,
    /// Times it goes back to the queue when a node it runs on is lost.
    #[serde(default = "JobSpec::default_node_lost_retries")]
    pub node_lost_retries: u32,
    /// A batch script (`#!…`) the node writes to a file and runs, with
    /// `args`, in place of `command` (then the script's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The queue it waits in: the one it named, or the default queue's name
    /// once the engine took it (`None` for jobs from before queues: the
    /// default queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueName>,
    /// What must happen to other jobs before it may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency: Option<Dependency>,
    /// An array of tasks like this one (`--array 0-99%8`); `None` for a
    /// plain job (and for each task split off an array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArraySpec>,
    /// Where its stdout goes on the node, as a Slurm pattern (`-o
    /// slurm-%j.out`), relative to its working directory; `None`: the
    /// node keeps it (`allot logs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Where its stderr goes (`-e`); `None`: with its stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its QOS (Slurm's `--qos`): a priority tier added to its queue's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QosName>,
}

impl Job {
    /// A job just submitted: pending, its first attempt, a new id.
    pub fn submitted(spec: JobSpec, now: UnixMillis) -> Job {
        Job {
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
            hold: None,
            requeue_requested: false,
            expected_start: None,
            array: None,
            array_task: None,
        }
    }

    /// Whether this is an array's record (not a job that runs).
    pub fn is_array(&self) -> bool {
        self.array.is_some()
    }

    /// How `allot jobs` names it: `ID`, `ARRAY_7` for a task.
    pub fn display_id(&self) -> String {
        match &self.array_task {
            Some(t) => t.to_string(),
            None => self.id.to_string(),
        }
    }

    /// Whether a part of the job is placed on `node`.
    pub fn runs_on(&self, node: &NodeName) -> bool {
        self.placements.iter().any(|p| &p.node == node)
    }

    /// The nodes the job is placed on, in rank order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.placements.iter().map(|p| &p.node)
    }

    /// Nodes whose part has not ended yet.
    pub fn live_nodes(&self) -> Vec<NodeName> {
        self.nodes()
            .filter(|n| !self.parts_exited.iter().any(|e| &e.node == *n))
            .cloned()
            .collect()
    }

    /// Back to the queue as its next attempt: pending, unplaced, with no
    /// times or exit status of the attempt that ended.
    pub fn next_attempt(&mut self) {
        self.state = JobState::Pending;
        self.unplace();
        self.started_at = None;
        self.ended_at = None;
        self.exit_code = None;
        self.signal = None;
        self.attempt += 1;
        self.preempted_by = None;
        self.requeue_requested = false;
    }

    /// Forgets where the job ran (for a requeue).
    pub fn unplace(&mut self) {
        self.placements.clear();
        self.parts_started.clear();
        self.parts_exited.clear();
    }
}

impl JobSpec {
    pub const DEFAULT_GRACE: Millis = Millis::from_secs(30);
    pub const DEFAULT_NODE_LOST_RETRIES: u32 = 2;
    /// The most a job may ask for.
    pub const MAX_NODE_LOST_RETRIES: u32 = 100;

    fn default_node_lost_retries() -> u32 {
        Self::DEFAULT_NODE_LOST_RETRIES
    }
}

/// The life of a job: `Pending → Starting → Running → one final state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum JobState {
    Pending,
    /// Placed, lease written, the agent told to start it.
    Starting,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Preempted,
    NodeLost,
    /// Its dependency can never be met (an `afterok` job failed, …): it
    /// ended without running (Slurm's `kill_invalid_depend`).
    DependencyNeverSatisfied,
}

impl JobState {
    /// Whether the job is over. `Preempted` is not: a preempted job goes
    /// back to the queue (the state marks the end of one attempt).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Pending | JobState::Starting | JobState::Running | JobState::Preempted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Starting => "STARTING",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
            JobState::TimedOut => "TIMED_OUT",
            JobState::Preempted => "PREEMPTED",
            JobState::NodeLost => "NODE_LOST",
            JobState::DependencyNeverSatisfied => "DEPENDENCY_NEVER_SATISFIED",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device granted to a job: a whole GPU, a share of one, or a MIG slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    pub gpu_uuid: String,
    /// What the job sees in `CUDA_VISIBLE_DEVICES`: the GPU's or the MIG device's UUID.
    pub device_uuid: String,
    pub gpu_index: u32,
    pub gpu_model: String,
    pub mig_profile: Option<MigProfile>,
    pub share: Share,
    pub gpu_memory: MiB,
}

/// Where a job runs and what it holds there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: NodeName,
    pub devices: Vec<DeviceGrant>,
    pub cpu: MilliCpu,
    pub memory: MiB,
}

/// What an agent reports about one job's end (on one node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitOutcome {
    Exited(i32),
    Signaled(i32),
    /// Stopped at its time limit; with the exit code or signal seen.
    TimedOut {
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    /// Stopped on the controller's order; with the exit code or signal seen.
    Stopped {
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    LaunchFailed(String),
    /// Its node went away with it (the controller's verdict, not a report).
    Lost(String),
}

impl ExitOutcome {
    /// Whether this part ended well (exit code 0).
    pub fn is_success(&self) -> bool {
        matches!(self, ExitOutcome::Exited(0))
    }
}

/// How one part of a job (its share on one node) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartExit {
    pub node: NodeName,
    pub outcome: ExitOutcome,
    /// When the part ended, by the controller's clock (bounded by what the
    /// agent measured): its leases end then.
    #[serde(default)]
    pub at: Option<UnixMillis>,
    /// How long the process ran by the agent's monotonic clock, as reported.
    #[serde(default)]
    pub runtime: Option<Millis>,
}

/// A job and its current state, as stored in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    /// Why it is pending, or how it ended.
    pub reason: String,
    pub submitted_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Where the job runs: one part per node (several only for a gang
    /// allowed to spread). Empty while pending.
    #[serde(default)]
    pub placements: Vec<Placement>,
    /// Nodes whose part has started, and parts that have ended, this attempt.
    #[serde(default)]
    pub parts_started: Vec<NodeName>,
    #[serde(default)]
    pub parts_exited: Vec<PartExit>,
    /// Leases of all attempts, oldest first.
    pub lease_ids: Vec<LeaseId>,
    /// 1 for the first run; grows on requeue.
    pub attempt: u32,
    pub cancel_requested: bool,
    /// The cancel asked for SIGKILL now (`allot cancel --force`).
    #[serde(default)]
    pub cancel_forced: bool,
    /// Being stopped to make room for this (higher-priority) job.
    #[serde(default)]
    pub preempted_by: Option<JobId>,
    /// Times it went back to the queue after losing a node.
    #[serde(default)]
    pub node_lost_requeues: u32,
    /// Kept from starting while pending (`allot hold`, `sbatch -H`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Being stopped to go back to the queue (`allot requeue`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requeue_requested: bool,
    /// While pending with a backfill reservation: when it is expected to
    /// start at the latest (`squeue --start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_start: Option<UnixMillis>,
    /// An array's record: how far its tasks were split off, how the ended
    /// ones ended. Such a record never waits or runs itself: its tasks do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayProgress>,
    /// A task of an array: which, and its index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_task: Option<ArrayTask>,
}

/// Who keeps a pending job from starting, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// An admin's hold: only an admin releases it (Slurm's admin hold).
    pub by_admin: bool,
    #[serde(default)]
    pub reason: String,
}

impl Hold {
    /// What the job's "why pending" says.
    pub fn describe(&self) -> String {
        let who = if self.by_admin { "an admin" } else { "its owner" };
        if self.reason.is_empty() {
            format!("held by {who} (allot release ID)")
        } else {
            format!("held by {who}: {} (allot release ID)", self.reason)
        }
    }
}

#[cfg(test)]
impl Job {
    /// A minimal succeeded job with this id, for tests of the layers above.
    pub fn for_tests(id: JobId) -> Job {
        let spec = JobSpec {
            name: "t".into(),
            command: "true".into(),
            args: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            resources: Resources {
                gpu: GpuRequest::None,
                cpu: Resources::DEFAULT_CPU,
                memory: Resources::DEFAULT_MEMORY,
            },
            constraints: Constraints::default(),
            priority: 0,
            preemptible: false,
            time_limit: None,
            grace_period: JobSpec::DEFAULT_GRACE,
            tenant: "a".parse().expect("valid"),
            project: ProjectName::default_project(),
            tags: BTreeMap::new(),
            min_runtime: None,
            checkpoint_interval: None,
            node_lost_retries: JobSpec::DEFAULT_NODE_LOST_RETRIES,
            script: None,
            queue: None,
            dependency: None,
            array: None,
            output: None,
            error: None,
            qos: None,
        };
        Job {
            id,
            state: JobState::Succeeded,
            reason: String::new(),
            ..Job::submitted(spec, UnixMillis(0))
        }
    }
}
