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

mod admin;
mod error;
mod plugins;
mod queues;
mod spec;

pub use admin::Admin;
pub use error::{Error, Result};
pub use plugins::{MAX_COMPONENT_BYTES, MAX_PLUGIN_MESSAGE, Plugins, Scope};
pub use queues::Queues;
pub use spec::{JobPage, JobSpec, ListJobs, LogChunk};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub(crate) type Authed = InterceptedService<Channel, Bearer>;

/// A connection to an allot server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    jobs: JobServiceClient<Authed>,
    nodes: NodeServiceClient<Authed>,
    admin: AdminServiceClient<Authed>,
    usage: UsageServiceClient<Authed>,
    plugins: PluginServiceClient<Authed>,
    queues: proto::queue_service_client::QueueServiceClient<Authed>,
}

/// The job a response carries; a server that sends none is at fault.
fn job_in(job: Option<Job>) -> Result<Job> {
    job.ok_or_else(|| Error::local(Code::Internal, "empty response"))
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
pub(crate) async fn retrying<T, F, Fut>(mut call: F) -> Result<tonic::Response<T>>
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
            queues: proto::queue_service_client::QueueServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
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
        self.submit_request(spec, request_id, false).await
    }

    /// [`Client::submit`], held (`sbatch -H`): the job waits until
    /// [`Client::release`], whatever room there is.
    pub async fn submit_held(&self, spec: impl Into<JobSpec>) -> Result<Job> {
        self.submit_request(spec, &new_request_id(), true).await
    }

    async fn submit_request(&self, spec: impl Into<JobSpec>, request_id: &str, hold: bool) -> Result<Job> {
        let req = proto::SubmitJobRequest {
            spec: Some(spec.into().0),
            request_id: request_id.into(),
            hold,
        };
        let r = retrying(|| {
            let mut jobs = self.jobs.clone();
            let req = req.clone();
            async move { jobs.submit_job(req).await }
        })
        .await?;
        job_in(r.into_inner().job)
    }

    pub async fn get(&self, id: &str) -> Result<Job> {
        let r = self
            .jobs
            .clone()
            .get_job(proto::GetJobRequest { id: id.into() })
            .await?;
        job_in(r.into_inner().job)
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
        job_in(r.into_inner().job)
    }

    /// Keeps a pending job from starting (scontrol hold). An admin token's
    /// hold can be released only by an admin.
    pub async fn hold(&self, id: &str, reason: &str) -> Result<Job> {
        let r = self
            .jobs
            .clone()
            .hold_job(proto::HoldJobRequest {
                id: id.into(),
                reason: reason.into(),
            })
            .await?;
        job_in(r.into_inner().job)
    }

    /// Lets a held job start again (scontrol release).
    pub async fn release(&self, id: &str) -> Result<Job> {
        let r = self
            .jobs
            .clone()
            .release_job(proto::ReleaseJobRequest { id: id.into() })
            .await?;
        job_in(r.into_inner().job)
    }

    /// Changes a pending job (scontrol update): the fields set in `update`
    /// (its `id` is set from `id`).
    pub async fn update_job(&self, id: &str, mut update: proto::UpdateJobRequest) -> Result<Job> {
        update.id = id.into();
        let r = self.jobs.clone().update_job(update).await?;
        job_in(r.into_inner().job)
    }

    /// Back to the queue (scontrol requeue; with `hold`, requeuehold): a
    /// running job is stopped first, an ended one runs again.
    pub async fn requeue(&self, id: &str, hold: bool, reason: &str) -> Result<Job> {
        let r = self
            .jobs
            .clone()
            .requeue_job(proto::RequeueJobRequest {
                id: id.into(),
                hold,
                reason: reason.into(),
            })
            .await?;
        job_in(r.into_inner().job)
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

    /// Queues: list (any tenant token), create, update, delete (admin).
    pub fn queues(&self) -> Queues {
        Queues(self.queues.clone())
    }

    /// Policy plugins: upload, list, bind.
    pub fn plugins(&self) -> Plugins {
        Plugins(self.plugins.clone())
    }
}
