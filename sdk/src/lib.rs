//! A typed async client for [allot](https://github.com/allot-sched/allot), the
//! GPU job scheduler.
//!
//! ```no_run
//! use allot_sdk::{Client, JobSpec};
//!
//! # async fn demo() -> Result<(), allot_sdk::Error> {
//! let client = Client::connect("http://127.0.0.1:7070", "allot_…").await?;
//! let job = client
//!     .submit(JobSpec::new("python").args(["train.py"]).gpus(2).time_limit_secs(3600))
//!     .await?;
//! let done = client.wait(&job.id).await?;
//! println!("{} ended {:?}", done.id, done.state());
//! # Ok(()) }
//! ```
//!
//! Every call carries the bearer token; a tenant token sees and changes only
//! its tenant's jobs. Errors keep the gRPC code and, for bad input, the field
//! the server named ([`Error::field`]).

use std::time::Duration;

pub use allot_proto::v1 as proto;
use futures::{Stream, StreamExt};
use proto::admin_service_client::AdminServiceClient;
use proto::job_service_client::JobServiceClient;
use proto::node_service_client::NodeServiceClient;
use proto::plugin_service_client::PluginServiceClient;
use proto::usage_service_client::UsageServiceClient;
pub use proto::{Job, JobState, Lease, Node};
pub use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// An error from the server or the connection.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: Code,
    message: String,
    field: Option<String>,
}

impl Error {
    /// The gRPC status code (`InvalidArgument`, `NotFound`, `PermissionDenied`, …).
    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// For `InvalidArgument`: the request field at fault, e.g. `spec.resources.gpus`.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    fn local(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let field = s
            .get_details_bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
        Error {
            code: s.code(),
            message: s.message().to_string(),
            field,
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::local(Code::Unavailable, msg)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// A connection to an allot server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    jobs: JobServiceClient<Authed>,
    nodes: NodeServiceClient<Authed>,
    admin: AdminServiceClient<Authed>,
    usage: UsageServiceClient<Authed>,
    plugins: PluginServiceClient<Authed>,
}

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

/// Whether a job state is final. (`Preempted` is not: a preempted job is
/// requeued.)
pub fn is_final(state: JobState) -> bool {
    !matches!(
        state,
        JobState::Pending
            | JobState::Starting
            | JobState::Running
            | JobState::Preempted
            | JobState::Unspecified
    )
}

/// A fresh idempotency key (a UUID).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Tries a call that carries a request id again while the server is
/// unavailable: six tries over about five seconds.
async fn retrying<T, F, Fut>(mut call: F) -> Result<tonic::Response<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let mut wait = Duration::from_millis(100);
    for _ in 0..5 {
        match call().await {
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            r => return r.map_err(Error::from),
        }
    }
    call().await.map_err(Error::from)
}

impl Client {
    /// Connects to `addr` (e.g. `http://127.0.0.1:7070`) with a bearer token.
    pub async fn connect(addr: impl Into<String>, token: impl AsRef<str>) -> Result<Self> {
        let addr = addr.into();
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| {
                Error::local(
                    Code::InvalidArgument,
                    format!("invalid server address {addr:?}: {e}"),
                )
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| {
            let e = Error::from(e);
            Error::local(
                Code::Unavailable,
                format!("cannot reach allot at {addr}: {}", e.message()),
            )
        })?;
        Self::with_channel(channel, token)
    }

    /// Uses an existing channel (custom TLS, timeouts, …).
    pub fn with_channel(channel: Channel, token: impl AsRef<str>) -> Result<Self> {
        let value: MetadataValue<Ascii> =
            format!("Bearer {}", token.as_ref().trim()).parse().map_err(|_| {
                Error::local(
                    Code::InvalidArgument,
                    "the token contains characters not allowed in a header",
                )
            })?;
        let bearer = Bearer(value);
        Ok(Client {
            jobs: JobServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            nodes: NodeServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            usage: UsageServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            plugins: PluginServiceClient::with_interceptor(channel, bearer)
                .max_encoding_message_size(MAX_PLUGIN_MESSAGE),
        })
    }

    /// Submits a job; returns it as queued (or already placed).
    ///
    /// The submission carries a fresh request id and is retried on
    /// `UNAVAILABLE` (the server restarting, a connection cut): a retry of a
    /// submission the server did take returns the same job, so a job is
    /// never created twice.
    pub async fn submit(&self, spec: impl Into<JobSpec>) -> Result<Job> {
        self.submit_with_request_id(spec, &new_request_id()).await
    }

    /// [`Client::submit`] with a request id of your own (up to 36 of
    /// `[A-Za-z0-9._-]`), to retry safely across restarts of your program:
    /// within a day, the same id returns the job it created.
    pub async fn submit_with_request_id(&self, spec: impl Into<JobSpec>, request_id: &str) -> Result<Job> {
        let req = proto::SubmitJobRequest {
            spec: Some(spec.into().0),
            request_id: request_id.into(),
        };
        let r = retrying(|| {
            let mut jobs = self.jobs.clone();
            let req = req.clone();
            async move { jobs.submit_job(req).await }
        })
        .await?;
        r.into_inner()
            .job
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    pub async fn get(&self, id: &str) -> Result<Job> {
        let r = self
            .jobs
            .clone()
            .get_job(proto::GetJobRequest { id: id.into() })
            .await?;
        r.into_inner()
            .job
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    /// One page of jobs, oldest first.
    pub async fn list(&self, q: ListJobs) -> Result<JobPage> {
        let r = self
            .jobs
            .clone()
            .list_jobs(proto::ListJobsRequest {
                states: q.states.iter().map(|s| *s as i32).collect(),
                tenant: q.tenant.unwrap_or_default(),
                page_size: q.page_size,
                page_token: q.page_token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(JobPage {
            jobs: r.jobs,
            next_page_token: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
        })
    }

    /// Every job matching `q`, following pages.
    pub async fn list_all(&self, mut q: ListJobs) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        loop {
            let page = self.list(q.clone()).await?;
            out.extend(page.jobs);
            match page.next_page_token {
                Some(t) => q.page_token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// Cancels a job: a pending one at once, a running one with SIGTERM, its
    /// grace period, then SIGKILL. Returns the job as it is after the request.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Job> {
        self.cancel_job(id, reason, false).await
    }

    /// Kills a job now (SIGKILL, no grace period), also one already being
    /// stopped, e.g. one that ignores SIGTERM.
    pub async fn kill(&self, id: &str, reason: &str) -> Result<Job> {
        self.cancel_job(id, reason, true).await
    }

    async fn cancel_job(&self, id: &str, reason: &str, force: bool) -> Result<Job> {
        let r = self
            .jobs
            .clone()
            .cancel_job(proto::CancelJobRequest {
                id: id.into(),
                reason: reason.into(),
                force,
            })
            .await?;
        r.into_inner()
            .job
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    /// The job now, then every change, ending after a final state.
    pub async fn watch(&self, id: &str) -> Result<impl Stream<Item = Result<Job>> + use<>> {
        let stream = self
            .jobs
            .clone()
            .watch_job(proto::WatchJobRequest { id: id.into() })
            .await?
            .into_inner();
        Ok(stream.map(|r| match r {
            Ok(m) => m
                .job
                .ok_or_else(|| Error::local(Code::Internal, "empty watch message")),
            Err(s) => Err(Error::from(s)),
        }))
    }

    /// Waits until the job reaches a final state and returns it.
    pub async fn wait(&self, id: &str) -> Result<Job> {
        loop {
            let mut stream = Box::pin(self.watch(id).await?);
            while let Some(job) = stream.next().await {
                match job {
                    Ok(job) if is_final(job.state()) => return Ok(job),
                    Ok(_) => {}
                    // The server went away mid-watch: watch again once it is back.
                    Err(e) if e.code() == Code::Unavailable => break,
                    Err(e) => return Err(e),
                }
            }
            let job = self.get(id).await?;
            if is_final(job.state()) {
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads part of a job's output file (stdout and stderr), from its first node.
    pub async fn logs(&self, id: &str, offset: u64, limit: u32) -> Result<LogChunk> {
        self.logs_from(id, "", offset, limit).await
    }

    /// Reads part of a job's output on one of its nodes (a spread gang runs
    /// on several; empty `node`: the first).
    pub async fn logs_from(&self, id: &str, node: &str, offset: u64, limit: u32) -> Result<LogChunk> {
        let r = self
            .jobs
            .clone()
            .get_job_logs(proto::GetJobLogsRequest {
                id: id.into(),
                offset,
                limit,
                node: node.into(),
            })
            .await?
            .into_inner();
        Ok(LogChunk {
            data: r.data,
            next_offset: r.next_offset,
            complete: r.complete,
            path: r.path,
            node: r.node,
        })
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self
            .nodes
            .clone()
            .list_nodes(proto::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes)
    }

    /// Admins: stop placing new jobs on a node.
    pub async fn drain(&self, node: &str, reason: &str) -> Result<Node> {
        let r = self
            .nodes
            .clone()
            .drain_node(proto::DrainNodeRequest {
                name: node.into(),
                reason: reason.into(),
            })
            .await?;
        r.into_inner()
            .node
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    pub async fn undrain(&self, node: &str) -> Result<Node> {
        let r = self
            .nodes
            .clone()
            .undrain_node(proto::UndrainNodeRequest { name: node.into() })
            .await?;
        r.into_inner()
            .node
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    /// GPU-hours and cost over `[from, to)` (UTC ms; `to` 0 = now), grouped by
    /// any of tenant, project, job, model, mig, node, hour, day, tag:NAME.
    pub async fn usage(
        &self,
        from_unix_ms: i64,
        to_unix_ms: i64,
        group_by: &[&str],
        tenant: Option<&str>,
    ) -> Result<proto::GetUsageResponse> {
        Ok(self
            .usage
            .clone()
            .get_usage(proto::GetUsageRequest {
                from_unix_ms,
                to_unix_ms,
                group_by: group_by.iter().map(|s| s.to_string()).collect(),
                tenant: tenant.unwrap_or_default().into(),
            })
            .await?
            .into_inner())
    }

    /// One page of leases, oldest first.
    pub async fn leases(&self, q: proto::ListLeasesRequest) -> Result<proto::ListLeasesResponse> {
        Ok(self.usage.clone().list_leases(q).await?.into_inner())
    }

    /// Admins: checks the ledger's invariants on the server.
    pub async fn check_ledger(&self) -> Result<proto::CheckLedgerResponse> {
        Ok(self
            .usage
            .clone()
            .check_ledger(proto::CheckLedgerRequest {})
            .await?
            .into_inner())
    }

    /// Exports usage over `[from, to)` (whole UTC hours; `to` 0: the end of
    /// the current hour) in `format`, writing the bytes to `out` as they
    /// arrive. Returns the number of rows.
    pub async fn export_usage(
        &self,
        req: proto::ExportUsageRequest,
        out: &mut (impl std::io::Write + Send),
    ) -> Result<u64> {
        let mut stream = self.usage.clone().export_usage(req).await?.into_inner();
        let mut rows = 0;
        while let Some(chunk) = stream.message().await? {
            out.write_all(&chunk.data)
                .map_err(|e| Error::local(Code::Internal, format!("cannot write the export: {e}")))?;
            rows = chunk.rows;
        }
        out.flush()
            .map_err(|e| Error::local(Code::Internal, format!("cannot write the export: {e}")))?;
        Ok(rows)
    }

    /// Admins: sets a tenant's monthly budget (decimal amounts; empty for
    /// none; both empty clears it).
    pub async fn set_budget(
        &self,
        tenant: &str,
        spend_limit: &str,
        gpu_hours_limit: &str,
    ) -> Result<proto::BudgetStatus> {
        Ok(self
            .usage
            .clone()
            .set_budget(proto::SetBudgetRequest {
                tenant: tenant.into(),
                spend_limit: spend_limit.into(),
                gpu_hours_limit: gpu_hours_limit.into(),
            })
            .await?
            .into_inner())
    }

    /// Budgets and where their tenants stand this month (a tenant token: its own).
    pub async fn budgets(&self, tenant: Option<&str>) -> Result<Vec<proto::BudgetStatus>> {
        Ok(self
            .usage
            .clone()
            .get_budgets(proto::GetBudgetsRequest {
                tenant: tenant.unwrap_or_default().into(),
            })
            .await?
            .into_inner()
            .budgets)
    }

    /// Tenants and tokens (admin token needed, except `who_am_i`).
    pub fn admin(&self) -> Admin {
        Admin(self.admin.clone())
    }

    /// Policy plugins: upload, list, bind.
    pub fn plugins(&self) -> Plugins {
        Plugins(self.plugins.clone())
    }
}

/// The largest plugin upload the server accepts, message included.
pub const MAX_PLUGIN_MESSAGE: usize = 33 << 20;

/// The largest component a plugin may be.
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;

/// Whose plugin or binding a call is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// The calling tenant token's own tenant.
    #[default]
    Own,
    /// A named tenant's (admins; a tenant token may name its own).
    Tenant(String),
    /// Global (admins).
    Global,
}

impl Scope {
    fn fields(&self) -> (String, bool) {
        match self {
            Scope::Own => (String::new(), false),
            Scope::Tenant(t) => (t.clone(), false),
            Scope::Global => (String::new(), true),
        }
    }
}

/// The plugin registry: WebAssembly components that decide admission, quota
/// and pricing, and their bindings.
#[derive(Clone)]
pub struct Plugins(PluginServiceClient<Authed>);

impl Plugins {
    /// Uploads a component as `name` (replacing a plugin of that name: its
    /// bindings call the new build from the next call on).
    pub async fn add(&self, name: &str, wasm: Vec<u8>, scope: &Scope) -> Result<proto::AddPluginResponse> {
        // Refused here with the limit, rather than as a transport error
        // when the message outgrows what the server decodes.
        if wasm.len() > MAX_COMPONENT_BYTES {
            return Err(Error {
                code: Code::InvalidArgument,
                message: format!(
                    "wasm: the component is {} bytes; a plugin may be at most {MAX_COMPONENT_BYTES} bytes ({} MiB)",
                    wasm.len(),
                    MAX_COMPONENT_BYTES >> 20
                ),
                field: Some("wasm".into()),
            });
        }
        let (tenant, global) = scope.fields();
        Ok(self
            .0
            .clone()
            .add_plugin(proto::AddPluginRequest {
                name: name.into(),
                wasm,
                tenant,
                global,
            })
            .await?
            .into_inner())
    }

    /// Plugins and bindings the caller may see (admins: `tenant` narrows).
    pub async fn list(&self, tenant: Option<&str>) -> Result<proto::ListPluginsResponse> {
        Ok(self
            .0
            .clone()
            .list_plugins(proto::ListPluginsRequest {
                tenant: tenant.unwrap_or_default().into(),
            })
            .await?
            .into_inner())
    }

    /// One plugin by name or SHA-256 prefix, with its bindings, counters and
    /// recent failures.
    pub async fn get(&self, name: &str, scope: &Scope) -> Result<proto::GetPluginResponse> {
        let (tenant, global) = scope.fields();
        Ok(self
            .0
            .clone()
            .get_plugin(proto::GetPluginRequest {
                name: name.into(),
                tenant,
                global,
            })
            .await?
            .into_inner())
    }

    /// Removes a plugin that nothing binds.
    pub async fn remove(&self, name: &str, scope: &Scope) -> Result<proto::Plugin> {
        let (tenant, global) = scope.fields();
        self.0
            .clone()
            .remove_plugin(proto::RemovePluginRequest {
                name: name.into(),
                tenant,
                global,
            })
            .await?
            .into_inner()
            .plugin
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    /// Binds a plugin at an extension point (`None`: its own world) for the
    /// scope, in the caller's layer (an admin's is the operator's, a tenant
    /// token's the tenant's own); takes effect with the next call.
    pub async fn bind(
        &self,
        plugin: &str,
        point: Option<proto::ExtensionPoint>,
        scope: &Scope,
    ) -> Result<proto::BindPluginResponse> {
        self.bind_in(plugin, point, scope, proto::PluginLayer::Unspecified)
            .await
    }

    /// [`bind`](Self::bind) in a named layer (only admins bind in the
    /// operator's).
    pub async fn bind_in(
        &self,
        plugin: &str,
        point: Option<proto::ExtensionPoint>,
        scope: &Scope,
        layer: proto::PluginLayer,
    ) -> Result<proto::BindPluginResponse> {
        let (tenant, global) = scope.fields();
        Ok(self
            .0
            .clone()
            .bind_plugin(proto::BindPluginRequest {
                plugin: plugin.into(),
                point: point.unwrap_or(proto::ExtensionPoint::Unspecified) as i32,
                tenant,
                global,
                layer: layer as i32,
            })
            .await?
            .into_inner())
    }

    /// Removes the binding at an extension point for the scope, in the
    /// caller's layer.
    pub async fn unbind(&self, point: proto::ExtensionPoint, scope: &Scope) -> Result<proto::PluginBinding> {
        self.unbind_in(point, scope, proto::PluginLayer::Unspecified)
            .await
    }

    /// [`unbind`](Self::unbind) in a named layer (an admin may remove a
    /// tenant's own binding).
    pub async fn unbind_in(
        &self,
        point: proto::ExtensionPoint,
        scope: &Scope,
        layer: proto::PluginLayer,
    ) -> Result<proto::PluginBinding> {
        let (tenant, global) = scope.fields();
        self.0
            .clone()
            .unbind_plugin(proto::UnbindPluginRequest {
                point: point as i32,
                tenant,
                global,
                layer: layer as i32,
            })
            .await?
            .into_inner()
            .binding
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }
}

/// Tenant and token administration.
#[derive(Clone)]
pub struct Admin(AdminServiceClient<Authed>);

impl Admin {
    /// Creates a tenant (retried on `UNAVAILABLE` under one request id).
    pub async fn create_tenant(&self, name: &str) -> Result<proto::Tenant> {
        let req = proto::CreateTenantRequest {
            name: name.into(),
            request_id: new_request_id(),
        };
        let r = retrying(|| {
            let mut admin = self.0.clone();
            let req = req.clone();
            async move { admin.create_tenant(req).await }
        })
        .await?;
        r.into_inner()
            .tenant
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }

    pub async fn tenants(&self) -> Result<Vec<proto::Tenant>> {
        Ok(self
            .0
            .clone()
            .list_tenants(proto::ListTenantsRequest {})
            .await?
            .into_inner()
            .tenants)
    }

    /// Issues a token; the secret is in `token` and is shown only here.
    pub async fn issue_token(
        &self,
        role: proto::Role,
        tenant: Option<&str>,
        description: &str,
    ) -> Result<proto::IssueTokenResponse> {
        Ok(self
            .0
            .clone()
            .issue_token(proto::IssueTokenRequest {
                role: role as i32,
                tenant: tenant.unwrap_or_default().into(),
                description: description.into(),
                node: String::new(),
                request_id: new_request_id(),
            })
            .await?
            .into_inner())
    }

    /// Issues an agent token that may register only `node`.
    pub async fn issue_agent_token(
        &self,
        node: &str,
        description: &str,
    ) -> Result<proto::IssueTokenResponse> {
        Ok(self
            .0
            .clone()
            .issue_token(proto::IssueTokenRequest {
                role: proto::Role::Agent as i32,
                tenant: String::new(),
                description: description.into(),
                node: node.into(),
                request_id: new_request_id(),
            })
            .await?
            .into_inner())
    }

    pub async fn tokens(&self) -> Result<Vec<proto::TokenInfo>> {
        Ok(self
            .0
            .clone()
            .list_tokens(proto::ListTokensRequest {})
            .await?
            .into_inner()
            .tokens)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.0
            .clone()
            .revoke_token(proto::RevokeTokenRequest { id: id.into() })
            .await?;
        Ok(())
    }

    pub async fn who_am_i(&self) -> Result<proto::TokenInfo> {
        let r = self.0.clone().who_am_i(proto::WhoAmIRequest {}).await?;
        r.into_inner()
            .token
            .ok_or_else(|| Error::local(Code::Internal, "empty response"))
    }
}
