//! The `allot` command line: `server`, `agent`, and the client commands, which
//! speak only the public gRPC API through the SDK.

mod jobfile;
mod jobs;
mod nodes;
mod output;
mod plugins;
mod queues;
mod run;
mod sbatch;
mod usage;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use run::init_tracing;

const ABOUT: &str =
    "allot: a GPU job scheduler: whole GPUs, fractional shares and MIG slices, exact GPU-hour accounting.";

const AFTER_HELP: &str = "\
Getting started:
  allot server --dev                       start a controller with two fake GPU nodes
  export ALLOT_ADDR=… ALLOT_TOKEN=…        paste the lines it prints
  allot submit --gpus 1 --wait -- sh -c 'echo $CUDA_VISIBLE_DEVICES'
  allot jobs; allot job ID; allot logs ID

Server address and token come from --addr/--token or ALLOT_ADDR/ALLOT_TOKEN.";

const SBATCH_HELP: &str = "\
Reads the script's #SBATCH lines up to its first command, then the options
given here (which win). Honoured: -J/--job-name, -t/--time (MM, MM:SS,
HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, UNLIMITED), --gres=gpu[:type][:N],
-G/--gpus, --gpus-per-node, --gpus-per-task, -N/--nodes 1, -n/--ntasks,
--ntasks-per-node, -c/--cpus-per-task, --mem, --mem-per-gpu, --mem-per-cpu,
-D/--chdir, --export, --requeue/--no-requeue, -A/--account (the project),
-p/--partition (the queue: see `allot queues`), -d/--dependency,
-a/--array (0-99, 1,3,5-7, 0-20:4, %8; task 7 is ID_7), -o/--output and
-e/--error (%j %x %A %a %u %N %%; default slurm-%j.out), -q/--qos,
-w/--nodelist (one node), -x/--exclude, -H/--hold, --priority,
-W/--wait, --parsable, -Q/--quiet.
Options that do not change what runs (--mail-type, --open-mode) are
warned about; ones allot cannot honour are an error naming the line.
The job sees SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_NNODES, SLURM_PROCID,
SLURM_JOB_NODELIST, SLURM_GPUS_ON_NODE, SLURM_SUBMIT_DIR,
SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID and the rest listed in
docs/slurm.md, with CUDA_VISIBLE_DEVICES as for any job.
Example:
  allot sbatch -t 30 --gres=gpu:1 --array 0-9%2 train.sh --epochs 3";

#[derive(Debug, Parser)]
#[command(name = "allot", version, about = ABOUT, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// The server's address.
    #[arg(
        long,
        global = true,
        env = "ALLOT_ADDR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub addr: String,

    /// Bearer token (tenant, admin or agent).
    #[arg(long, global = true, env = "ALLOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (`--dev`: with two in-process fake GPU nodes).
    Server(ServerArgs),
    /// Run a node agent: discover GPUs, run jobs the controller places here.
    Agent(AgentArgs),
    /// Submit a Slurm batch script as sbatch would: its #SBATCH lines, then
    /// the options given here.
    #[command(after_help = SBATCH_HELP)]
    Sbatch {
        /// sbatch options (as `#SBATCH` lines take them), the script, then
        /// the script's arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "[OPTIONS] SCRIPT [ARGS]"
        )]
        args: Vec<String>,
    },
    /// Submit a job: `allot submit [OPTIONS] -- CMD ARGS…`, `allot submit job.toml`,
    /// or `allot submit script.sh` (a batch script, as `allot sbatch`).
    Submit(Box<SubmitArgs>),
    /// List jobs.
    Jobs(JobsArgs),
    /// Show one job: state, placement, why it is pending, its leases.
    Job {
        /// Job id.
        id: String,
    },
    /// Cancel a job (SIGTERM, its grace period, then SIGKILL; --force: SIGKILL now).
    Cancel {
        id: String,
        /// Why, kept with the job.
        #[arg(long, default_value = "")]
        reason: String,
        /// Kill it now with SIGKILL, without its grace period (also a job
        /// already being stopped that ignores SIGTERM).
        #[arg(long)]
        force: bool,
    },
    /// Keep a pending job from starting (scontrol hold); an admin's hold
    /// only an admin releases.
    Hold {
        id: String,
        /// Why, shown as the job's reason.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let a held job start again (scontrol release).
    Release { id: String },
    /// Change a pending job: its priority, time limit or queue (scontrol update).
    Update {
        id: String,
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        /// Time limit (`90s`, `30m`, `2h`; `none`: no limit, or the queue's default).
        #[arg(long)]
        time: Option<String>,
        /// Move it to this queue.
        #[arg(long, short = 'q')]
        queue: Option<String>,
    },
    /// Put a job back in the queue (scontrol requeue): a running one is
    /// stopped first (its leases end `requeued`); an ended one runs again.
    Requeue {
        id: String,
        /// Hold it once it is back in the queue (scontrol requeuehold).
        #[arg(long)]
        hold: bool,
        /// The hold's reason.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Follow a job's state changes until it ends.
    Watch { id: String },
    /// Print a job's output (stdout and stderr).
    Logs {
        id: String,
        /// Keep printing new output until the job ends.
        #[arg(long, short)]
        follow: bool,
        /// For a job on several nodes: whose output [default: its first node].
        #[arg(long)]
        node: Option<String>,
    },
    /// List nodes, their GPUs and MIG slices, and what is allocated.
    Nodes,
    /// The queues: GPUs in use/idle/down/total, pending and running jobs,
    /// limits, like `sinfo -s` (`*`: the default queue).
    Queues,
    /// Fair share, like `sshare`: each tenant's weight, share, decayed
    /// GPU-hours and factor, then each project's inside its tenant.
    Fairshare,
    /// Queues (Slurm's partitions): create, update, delete (admin), list.
    #[command(subcommand)]
    Queue(queues::QueueCommand),
    /// Stop placing new jobs on a node (admin).
    Drain {
        node: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let a drained node take jobs again (admin).
    Undrain { node: String },
    /// Tenants (admin).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show who the current token is.
    Whoami,
    /// Simulate placement on a trace (the Alibaba openb GPU trace format).
    Sim(SimArgs),
    /// GPU-hours and cost over a window, grouped as you like; budgets below.
    /// `allot usage export` writes FOCUS 1.2 CSV, plain CSV or JSON.
    Usage(UsageArgs),
    /// Tenants' monthly budgets: spend and GPU-hour limits.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Leases, like `sacct`: who held which device when, and what it cost.
    Leases(LeasesArgs),
    /// The ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Policy plugins: WebAssembly components that decide admission, quota
    /// and pricing (see docs/plugins.md).
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// Whose plugin or binding: the token's own tenant by default.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// A tenant's (admins; a tenant token may name its own).
    #[arg(long, conflicts_with = "global")]
    pub tenant: Option<String>,
    /// Global: every tenant without its own binding (admins).
    #[arg(long)]
    pub global: bool,
}

const PLUGIN_TEST_HELP: &str = "\
Runs the plugin against the job in the same sandbox and bounds as the server
(64 MiB, 50 ms), without a server, and prints its decision and log lines:
  admission: accept, reject with its message, or the fields a modification changes;
  quota:     allow, deny or hold, for a tenant that holds and used nothing;
  pricing:   the price of one hour of one of the job's devices from the start of
             the current hour (or --at), with the dev rate card's list price.
Exit code: 0 accepted, modified, allowed, held or priced; 1 rejected or denied;
2 the plugin failed (trap, timeout, memory, invalid answer, pricing error).";

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Upload a plugin (.wasm component): checked, compiled and stored. An
    /// existing plugin of the same name is replaced, and its bindings call the
    /// new build from the next call on.
    Add {
        /// The component, e.g. target/wasm32-wasip2/release/require_cost_center.wasm.
        #[arg(value_name = "FILE.wasm")]
        file: std::path::PathBuf,
        /// Its name [default: the file name without .wasm].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// List the plugins and bindings you may see.
    List {
        /// Only this tenant's, and the global ones (admins).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show a plugin: its world, version, bindings, calls and recent failures.
    Show {
        /// Its name, or a SHA-256 prefix (8 hex digits or more).
        #[arg(value_name = "NAME|SHA")]
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Remove a plugin (unbind it first).
    Remove {
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Call a plugin at an extension point: for a tenant (its own or a global
    /// plugin), or for every tenant without an operator binding of its own
    /// (--global). An admin binds in the operator's layer (what bills and
    /// what the tenant cannot escape), a tenant token in the tenant's own
    /// (only stricter; pricing is showback). See docs/plugins.md.
    Bind {
        /// The plugin's name.
        name: String,
        /// admission, quota or pricing [default: the world the plugin exports].
        #[arg(long)]
        point: Option<String>,
        /// operator or tenant [default: an admin's is operator, a tenant's tenant].
        #[arg(long, value_enum)]
        layer: Option<LayerArg>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Stop calling a plugin at an extension point.
    Unbind {
        /// admission, quota or pricing.
        #[arg(long)]
        point: String,
        /// operator or tenant [default: the caller's, as for bind].
        #[arg(long, value_enum)]
        layer: Option<LayerArg>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Run a plugin against a job file locally and print its decision.
    #[command(after_help = PLUGIN_TEST_HELP)]
    Test {
        #[arg(value_name = "FILE.wasm")]
        file: std::path::PathBuf,
        /// The job (TOML, as for `allot submit`; see examples/jobs/).
        #[arg(long, value_name = "JOB.toml")]
        job: std::path::PathBuf,
        /// The tenant submitting it [default: the job file's, else default].
        #[arg(long)]
        tenant: Option<String>,
        /// Its project [default: the job file's, else default].
        #[arg(long)]
        project: Option<String>,
        /// The time of the request (UTC, `2026-11-17T09:00Z`) [default: now].
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// One row per closed lease and UTC hour, to a file or stdout. A period
    /// in which every lease has closed always exports to the same bytes; open
    /// leases appear once they close.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// focus (FinOps FOCUS 1.2 CSV), csv or json.
    #[arg(long, default_value = "focus")]
    pub format: String,
    /// A calendar month, `2026-11` [default: this month, up to the current hour].
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub month: Option<String>,
    /// Start of the window, on a whole UTC hour (`2026-11-01`, `2026-11-03T08:00Z`).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (exclusive), on a whole UTC hour [default: the end of the current hour].
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Only this tenant (admins).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Write here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Set a tenant's monthly limits (admin). A tenant at a limit gets no new
    /// placements: its pending jobs are held; running ones run on.
    Set {
        tenant: String,
        /// Spend limit per month in the rate card's currency, e.g. `5000.00`.
        #[arg(long)]
        spend: Option<String>,
        /// GPU-hour limit per month, e.g. `1000` or `12.5`.
        #[arg(long)]
        gpu_hours: Option<String>,
    },
    /// Remove a tenant's budget (admin).
    Clear { tenant: String },
    /// Budgets and where their tenants stand this month: spend, GPU-hours,
    /// burn rate over the last 24 hours, projection to the month's end.
    Show { tenant: Option<String> },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UsageArgs {
    #[command(subcommand)]
    pub command: Option<UsageCommand>,
    /// Start of the window (UTC: `2026-11-01`, `2026-11-01T08:00Z`) [default: start of the month of --to].
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window [default: now].
    #[arg(long)]
    pub to: Option<String>,
    /// The window is the last DURATION (`24h`, `7d`) instead of --from.
    #[arg(long, conflicts_with = "from")]
    pub last: Option<String>,
    /// Group by, comma-separated: tenant, project, job, model, mig, node, hour, day, tag:NAME.
    #[arg(long, default_value = "tenant,project")]
    pub by: String,
    /// Only this tenant (admins).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct LeasesArgs {
    #[arg(long)]
    pub job: Option<String>,
    /// Only this tenant (admins).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only leases in this state (repeatable): reserved, active, closed.
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Only leases that overlap the window from here (UTC).
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many leases.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check the ledger's invariants: no device ever over-committed, leases
    /// well formed, totals that agree. Through the server (admin token), or
    /// with --data-dir on a stopped server's data dir.
    Check {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Node list CSV (`sn,cpu_milli,memory_mib,gpu,model`).
    #[arg(long)]
    pub nodes: PathBuf,
    /// Pod list CSV (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,…,creation_time,deletion_time,scheduled_time]`).
    #[arg(long)]
    pub pods: PathBuf,
    /// allot (default), fgd, best-fit or first-fit.
    #[arg(long, default_value = "allot")]
    pub policy: String,
    /// Seeds: `42..51` (inclusive), `42,43` or `42`.
    #[arg(long, default_value = "42..51")]
    pub seeds: String,
    /// Arrived GPU demand to reach, as a multiple of the cluster's GPUs.
    #[arg(long, default_value_t = 1.3)]
    pub tune_ratio: f64,
    /// Replay creation and deletion times instead (reports queueing delay).
    #[arg(long)]
    pub timeline: bool,
    /// With --timeline: divide arrival times by this (run times unchanged),
    /// to replay a sampled trace under contention.
    #[arg(long, default_value_t = 1)]
    pub speedup: u64,
    /// With --timeline: keep this fraction of the nodes (a seeded sample), so a
    /// sampled trace meets a cluster its size.
    #[arg(long, default_value_t = 1.0)]
    pub cluster_fraction: f64,
    /// Replay the trace as batch jobs with time limits through the
    /// engine's scheduling pass, four ways (fifo, greedy, backfill,
    /// fairshare+backfill), and compare utilisation, wait and bounded
    /// slowdown. Takes --speedup and --cluster-fraction as --timeline does.
    #[arg(long, conflicts_with = "timeline")]
    pub batch: bool,
    /// With --batch: each job's time limit is its run time × this.
    #[arg(long, default_value_t = 2.0)]
    pub limit_factor: f64,
    /// With --batch: top pending jobs given a backfill reservation per pass.
    #[arg(long, default_value_t = 8)]
    pub backfill_depth: usize,
    /// With --batch: fair share's half-life, in the replay's seconds.
    #[arg(long, default_value_t = 86_400)]
    pub half_life: u64,
}

/// A binding's layer, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayerArg {
    /// The operator's: bills, and binds every tenant it applies to.
    Operator,
    /// The tenant's own: only stricter; pricing is showback.
    Tenant,
}

impl LayerArg {
    pub fn pb(layer: Option<LayerArg>) -> allot_sdk::proto::PluginLayer {
        match layer {
            None => allot_sdk::proto::PluginLayer::Unspecified,
            Some(LayerArg::Operator) => allot_sdk::proto::PluginLayer::Operator,
            Some(LayerArg::Tenant) => allot_sdk::proto::PluginLayer::Tenant,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Development mode: temp data dir, a default tenant, two in-process agents
    /// with declared GPUs; prints `export` lines to paste into a shell.
    #[arg(long)]
    pub dev: bool,
    /// Address to listen on [default: 0.0.0.0:7070, or 127.0.0.1:7070 with --dev].
    #[arg(long, env = "ALLOT_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// How many top pending jobs that cannot start get a backfill
    /// reservation in each pass (0: no backfill; see docs/queues.md).
    #[arg(long, default_value_t = 8)]
    pub backfill_depth: usize,
    /// The most tasks one job array may have (`--array`; Slurm's
    /// MaxArraySize); at most 1000000.
    #[arg(long, default_value_t = crate::domain::array::DEFAULT_MAX_ARRAY_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=crate::domain::array::ARRAY_HARD_MAX as i64))]
    pub max_array_size: u32,
    /// Where the ledger lives (required without --dev; with --dev, a temp dir by default).
    #[arg(long, env = "ALLOT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (TOML): the rate card under [pricing]; see examples/allot.toml.
    #[arg(long, env = "ALLOT_CONFIG")]
    pub config: Option<PathBuf>,
    /// How often agents send heartbeats.
    #[arg(long, default_value = "5s")]
    pub heartbeat: String,
    /// How long a node may stay away before its jobs are declared lost.
    /// Agents stop their jobs before this when they lose the controller (see
    /// docs/operations.md#fencing).
    #[arg(long, default_value = "2m")]
    pub node_lost_grace: String,
    /// The longest grace period a job may ask for between SIGTERM and
    /// SIGKILL; longer ones are refused, and no stop waits longer.
    #[arg(long, default_value = "10m")]
    pub max_grace: String,
    /// Placement policy: allot (fragmentation-aware, the default), fgd, best-fit, first-fit.
    #[arg(long, default_value = "allot")]
    pub policy: String,
    /// Seed of placement's tie-break order among equally good nodes.
    #[arg(long, default_value_t = 0)]
    pub placement_seed: u64,
    /// Log format on stderr (RUST_LOG sets the level).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The controller's URL.
    #[arg(long, env = "ALLOT_CONTROLLER")]
    pub controller: String,
    /// This node's name [default: the host name].
    #[arg(long)]
    pub node: Option<String>,
    /// Declared GPUs instead of NVML, e.g. `4xH100-80GB,1xH100-80GB/mig=3g.40gb+2g.20gb+1g.10gb+1g.10gb`.
    #[arg(long, conflicts_with = "fleet")]
    pub gpus: Option<String>,
    /// A fleet file declaring GPUs, CPU, memory and labels (see examples/fleet.toml).
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// Output files, scratch dirs and pid files [default: ./allot-agent].
    #[arg(long, default_value = "allot-agent")]
    pub state_dir: PathBuf,
    /// CPU to offer (`64`, `7.5`, `500m`) [default: the machine's].
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory to offer (`512GiB`) [default: the machine's].
    #[arg(long)]
    pub memory: Option<String>,
    /// Node label `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Grace period for jobs when the agent shuts down.
    #[arg(long, default_value = "10s")]
    pub shutdown_grace: String,
    /// Run jobs as this user (name or uid) instead of the agent's; the
    /// agent must run as root. Its own files (output, exit reports, leases)
    /// stay unreadable to jobs; see docs/operations.md#running-jobs-as-another-user.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// A path jobs must not see (repeatable): in each job's mount namespace
    /// a directory is empty and a file is /dev/null. The agent's own files
    /// are always hidden.
    #[arg(long, value_name = "PATH")]
    pub hide: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("gpu").args(["gpus", "gpu_fraction", "mig"])))]
pub struct SubmitArgs {
    /// A job file (TOML, see examples/jobs/); flags override its fields.
    #[arg(value_name = "JOB.toml")]
    pub file: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Whole GPUs, on one node (see --spread).
    #[arg(long, allow_negative_numbers = true)]
    pub gpus: Option<i32>,
    /// With --gpus: let the gang span nodes when no single node has room
    /// (the command then runs once per node; see ALLOT_NODE_RANK).
    #[arg(long)]
    pub spread: bool,
    /// A share of one GPU: `0.25` or `1/4`.
    #[arg(long)]
    pub gpu_fraction: Option<String>,
    /// One MIG slice of this profile, e.g. `1g.10gb`.
    #[arg(long)]
    pub mig: Option<String>,
    /// GPU memory cap for a fractional share (`20GiB`).
    #[arg(long)]
    pub gpu_memory: Option<String>,
    /// CPU (`4`, `0.5`, `500m`) [default: 1].
    #[arg(long)]
    pub cpu: Option<String>,
    /// Host memory (`16GiB`) [default: 1GiB].
    #[arg(long)]
    pub memory: Option<String>,
    /// Higher runs first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// May be stopped to make room for higher-priority work.
    #[arg(long)]
    pub preemptible: bool,
    /// Time limit (`90s`, `30m`, `2h`, `1h30m`).
    #[arg(long)]
    pub time: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopped [default: 30s].
    #[arg(long)]
    pub grace: Option<String>,
    /// Tag `key=value` (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Accepted GPU model (repeatable, or `A|B`), e.g. `--gpu-model 'V100M16|V100M32'`.
    #[arg(long = "gpu-model", value_name = "MODEL")]
    pub gpu_models: Vec<String>,
    /// A label the node must carry, `key=value` (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    pub node_labels: Vec<String>,
    /// Not preempted before it has run this long (`10m`).
    #[arg(long)]
    pub min_runtime: Option<String>,
    /// How often the job checkpoints (`30m`): preemption weighs the work lost since the last one.
    #[arg(long)]
    pub checkpoint_interval: Option<String>,
    /// Times the job is requeued when a node it runs on is lost [default: 2; 0: never].
    #[arg(long)]
    pub node_lost_retries: Option<u32>,
    /// Environment variable `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory on the node [default: the current directory; `-` for a per-job scratch dir].
    #[arg(long)]
    pub workdir: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    /// The queue to wait in [default: the default queue; see `allot queues`].
    #[arg(long, short = 'q')]
    pub queue: Option<String>,
    /// Start only after other jobs, in Slurm's syntax: `afterok:ID[:ID…]`,
    /// `afterany:ID`, `afternotok:ID`, `after:ID`, `singleton`, joined by
    /// `,` (all) or `?` (any).
    #[arg(long, short = 'd', value_name = "DEPENDENCY")]
    pub dependency: Option<String>,
    /// Submit an array of tasks like this job, in Slurm's syntax: `0-99`,
    /// `1,3,5-7`, `0-20:4`, with `%8` to run at most 8 at once. Each task
    /// sees ALLOT_ARRAY_TASK_ID (and SLURM_ARRAY_TASK_ID); name one as ID_7.
    #[arg(long, short = 'a', value_name = "INDICES")]
    pub array: Option<String>,
    /// Run only on this node (repeatable: any of them; sbatch -w).
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Never run on this node (repeatable; sbatch -x).
    #[arg(long = "exclude-node", value_name = "NODE")]
    pub exclude_nodes: Vec<String>,
    /// The QOS (a priority tier the server's `[qos]` defines; sbatch --qos).
    #[arg(long)]
    pub qos: Option<String>,
    /// Submit held: the job waits until `allot release ID` (sbatch -H).
    #[arg(long, short = 'H')]
    pub hold: bool,
    /// Tenant (admin tokens only).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Wait for the job to end; exit with its exit code.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state (repeatable): pending, running, succeeded, …
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Only this tenant's jobs (admins).
    #[arg(long)]
    pub tenant: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Pending jobs with when each is expected to start (its backfill
    /// reservation), like `squeue --start`.
    #[arg(long)]
    pub start: bool,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create { name: String },
    /// List tenants.
    List,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Tenant,
    Admin,
    Agent,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token; the secret is printed once.
    Issue {
        #[arg(long, value_enum, default_value = "tenant")]
        role: RoleArg,
        /// The tenant (for `--role tenant`).
        #[arg(long)]
        tenant: Option<String>,
        /// The node (for `--role agent`): the only node the token may register.
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids only; secrets are never shown again).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

/// Runs the parsed command; returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    run::dispatch(cli).await
}
