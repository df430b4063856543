//! What a caller builds and gets back besides the proto messages: the job
//! spec builder, list filters and pages, log chunks.

use crate::proto::{self, Job, JobState};

/// A job to submit: a builder over [`proto::JobSpec`].
#[derive(Debug, Clone, Default)]
pub struct JobSpec(pub proto::JobSpec);

impl JobSpec {
    /// A job running `command` (looked up in `PATH` on the node).
    pub fn new(command: impl Into<String>) -> Self {
        JobSpec(proto::JobSpec {
            command: command.into(),
            ..Default::default()
        })
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.0.name = name.into();
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.env.insert(key.into(), value.into());
        self
    }

    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.0.working_dir = dir.into();
        self
    }

    fn resources(&mut self) -> &mut proto::Resources {
        self.0.resources.get_or_insert_with(Default::default)
    }

    /// N whole GPUs on one node, all or nothing.
    pub fn gpus(mut self, n: i32) -> Self {
        self.resources().gpu = Some(proto::resources::Gpu::Gpus(n));
        self
    }

    /// A share `numerator/denominator` of one GPU, e.g. `(1, 4)`.
    pub fn gpu_fraction(mut self, numerator: u64, denominator: u64) -> Self {
        self.resources().gpu = Some(proto::resources::Gpu::GpuFraction(proto::Fraction {
            numerator,
            denominator,
        }));
        self
    }

    /// One MIG slice of this profile, e.g. `1g.10gb`.
    pub fn mig(mut self, profile: impl Into<String>) -> Self {
        self.resources().gpu = Some(proto::resources::Gpu::MigProfile(profile.into()));
        self
    }

    pub fn cpu_millis(mut self, millis: i64) -> Self {
        self.resources().cpu_millis = millis;
        self
    }

    pub fn memory_mib(mut self, mib: i64) -> Self {
        self.resources().memory_mib = mib;
        self
    }

    pub fn gpu_memory_mib(mut self, mib: i64) -> Self {
        self.resources().gpu_memory_mib = mib;
        self
    }

    pub fn priority(mut self, p: i32) -> Self {
        self.0.priority = p;
        self
    }

    pub fn preemptible(mut self, yes: bool) -> Self {
        self.0.preemptible = yes;
        self
    }

    pub fn time_limit_ms(mut self, ms: i64) -> Self {
        self.0.time_limit_ms = Some(ms);
        self
    }

    pub fn time_limit_secs(self, secs: i64) -> Self {
        self.time_limit_ms(secs.saturating_mul(1000))
    }

    pub fn grace_period_ms(mut self, ms: i64) -> Self {
        self.0.grace_period_ms = Some(ms);
        self
    }

    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.0.tenant = tenant.into();
        self
    }

    /// Start only after other jobs, in Slurm's syntax: `afterok:ID[:ID…]`,
    /// `afterany:…`, `afternotok:…`, `after:…`, `singleton`, joined by `,`
    /// (all) or `?` (any).
    pub fn dependency(mut self, dependency: impl Into<String>) -> Self {
        self.0.dependency = dependency.into();
        self
    }

    /// An array of tasks like this job: `0-99`, `1,3,5-7`, `0-20:4`, with
    /// `%8` to run at most 8 at once (Slurm's `--array`). One submission
    /// makes them all; task 7 is named `ID_7`.
    pub fn array(mut self, indices: impl Into<String>) -> Self {
        self.0.array = indices.into();
        self
    }

    /// The QOS (a priority tier the server defines; default `normal`).
    pub fn qos(mut self, qos: impl Into<String>) -> Self {
        self.0.qos = qos.into();
        self
    }

    /// The queue to wait in (default: the server's default queue).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.0.queue = queue.into();
        self
    }

    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.0.project = project.into();
        self
    }

    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.tags.insert(key.into(), value.into());
        self
    }

    /// Accept this GPU model (call again for more); by default any model.
    pub fn gpu_model(mut self, model: impl Into<String>) -> Self {
        self.0.gpu_models.push(model.into());
        self
    }

    /// Let a whole-GPU gang span nodes when no single node has room for it.
    pub fn spread(mut self, yes: bool) -> Self {
        self.0.spread = yes;
        self
    }

    /// Run only on nodes carrying this label.
    pub fn node_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.node_labels.insert(key.into(), value.into());
        self
    }

    /// Not preempted before it has run this long.
    pub fn min_runtime_ms(mut self, ms: i64) -> Self {
        self.0.min_runtime_ms = Some(ms);
        self
    }

    /// How often the job checkpoints; preemption weighs the work lost since the last one.
    pub fn checkpoint_interval_ms(mut self, ms: i64) -> Self {
        self.0.checkpoint_interval_ms = Some(ms);
        self
    }

    /// Times the job goes back to the queue when a node it runs on is lost
    /// (default 2; 0: it ends `NODE_LOST` the first time).
    pub fn node_lost_retries(mut self, n: u32) -> Self {
        self.0.node_lost_retries = Some(n);
        self
    }

    /// Runs this batch script (its text, starting with `#!`) in place of
    /// the command, which then names it; as `allot sbatch` submits one.
    pub fn script(mut self, text: impl Into<String>) -> Self {
        self.0.script = Some(text.into());
        self
    }
}

impl From<proto::JobSpec> for JobSpec {
    fn from(s: proto::JobSpec) -> Self {
        JobSpec(s)
    }
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct ListJobs {
    pub states: Vec<JobState>,
    /// Admins only: one tenant's jobs.
    pub tenant: Option<String>,
    pub page_size: u32,
    pub page_token: Option<String>,
}

/// One page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass back as `page_token` for the next page; `None` on the last.
    pub next_page_token: Option<String>,
}

/// A slice of a job's output.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub data: Vec<u8>,
    pub next_offset: u64,
    /// The job has ended and everything was read.
    pub complete: bool,
    pub path: String,
    pub node: String,
}
