//! gRPC adapters: unwrap the request, convert proto → domain (bad input
//! becomes `InvalidArgument` naming the field), call the engine, convert back.

mod admin;
mod agents;
mod control;
pub mod convert;
pub mod error;
mod jobs;
mod nodes;
pub mod plugins;
mod queues;
mod reflection;
mod status;
pub mod usage;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use allot_proto::v1 as pb;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use self::error::{ApiError, ApiResult};
use crate::auth::{Auth, Caller};
use crate::clock::Clock;
use crate::domain::Millis;
use crate::domain::TenantName;
use crate::engine::EngineHandle;
use crate::ledger::{Ledger, Role};
use crate::policy::PolicyHost;

/// Ledger reads that run at once on blocking threads; more wait their turn
/// (asynchronously: the async workers stay free for every other call).
const READ_SLOTS: usize = 8;

/// The state every service shares.
#[derive(Clone)]
pub struct Api {
    pub(crate) engine: EngineHandle,
    pub(crate) auth: Auth,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) heartbeat_interval: Millis,
    /// The plugin host; without one, no plugin is ever called and the
    /// PluginService answers `UNAVAILABLE`.
    pub(crate) policy: Option<PolicyHost>,
    /// Bounds the ledger reads under way (see [`Api::read`]).
    reads: Arc<tokio::sync::Semaphore>,
}

impl Api {
    pub fn new(engine: EngineHandle, auth: Auth, clock: Arc<dyn Clock>, heartbeat_interval: Millis) -> Self {
        Api {
            engine,
            auth,
            clock,
            heartbeat_interval,
            policy: None,
            reads: Arc::new(tokio::sync::Semaphore::new(READ_SLOTS)),
        }
    }

    /// Runs a ledger read on a blocking thread, never on the async workers,
    /// so that no query, however large, can starve other calls, the health
    /// check or a shutdown. At most `READ_SLOTS` run at once; a read whose
    /// caller has gone still finishes (it holds its slot until then).
    pub(crate) async fn read<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> ApiResult<T> + Send + 'static,
    {
        let permit = self
            .reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
        let ledger = self.engine.ledger().clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&ledger)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("a ledger read failed: {e}")))?
    }

    /// Serves the plugin registry and calls admission plugins on submit.
    pub fn with_policy(mut self, policy: PolicyHost) -> Self {
        self.policy = Some(policy);
        self
    }
}

/// The authenticated caller the interceptor attached to the request.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

/// The tenant a caller may look at (`what`: jobs, usage, leases): its own,
/// or, for an admin, the one asked for (none: all tenants).
fn tenant_scope(caller: &Caller, asked: &str, what: &str) -> Result<Option<TenantName>, ApiError> {
    let asked = match asked.trim() {
        "" => None,
        t => Some(
            t.parse::<TenantName>()
                .map_err(|e| ApiError::invalid("tenant", e))?,
        ),
    };
    match (&caller.role, asked) {
        (Role::Admin, t) => Ok(t),
        (Role::Tenant(own), None) => Ok(Some(own.clone())),
        (Role::Tenant(own), Some(t)) if &t == own => Ok(Some(t)),
        (Role::Tenant(_), Some(_)) => Err(ApiError::PermissionDenied(format!(
            "a tenant token may see only its own tenant's {what}"
        ))),
        (Role::Agent, _) => Err(ApiError::PermissionDenied(format!(
            "an agent token cannot see {what}"
        ))),
    }
}

/// A list call's page size: 0 means 100, and at most 1000.
fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => 100,
        n => n.min(1000),
    }
}

/// Resolves `authorization: Bearer <token>` to a caller, or refuses the call.
#[derive(Clone)]
pub struct BearerAuth(pub Auth);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <token>` (the CLI reads ALLOT_TOKEN or --token)",
            )
        })?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization header must be `Bearer <token>`"))?;
        let caller = self
            .0
            .authenticate(token.trim())
            .ok_or_else(|| Status::unauthenticated("invalid or revoked token"))?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Builds the router with every allot service behind the bearer check, plus
/// `grpc.health.v1` and server reflection (open, so `grpcurl` works).
/// The router of every service, behind the status-code layer.
pub type AllotRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<status::StatusCodes, tower::layer::util::Identity>,
>;

pub async fn router(api: Api) -> anyhow::Result<AllotRouter> {
    let auth = BearerAuth(api.auth.clone());
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Every service, by name, and the server as a whole ("").
    health_reporter
        .set_serving::<pb::job_service_server::JobServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<pb::node_service_server::NodeServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<pb::admin_service_server::AdminServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<pb::usage_service_server::UsageServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<pb::queue_service_server::QueueServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<pb::plugin_service_server::PluginServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<pb::agent_service_server::AgentServiceServer<Api>>()
        .await;
    // v1 for current grpcurl and grpcui, v1alpha for older clients.
    let index = Arc::new(reflection::Index::new(&[
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])?);
    let reflection_v1 = tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer::new(
        reflection::v1::Reflection(index.clone()),
    );
    let reflection_v1alpha =
        tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer::new(
            reflection::v1alpha::Reflection(index),
        );
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .layer(status::StatusCodes)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::job_service_server::JobServiceServer::with_interceptor(
            api.clone(),
            auth.clone(),
        ))
        .add_service(pb::node_service_server::NodeServiceServer::with_interceptor(
            api.clone(),
            auth.clone(),
        ))
        .add_service(pb::admin_service_server::AdminServiceServer::with_interceptor(
            api.clone(),
            auth.clone(),
        ))
        .add_service(pb::usage_service_server::UsageServiceServer::with_interceptor(
            api.clone(),
            auth.clone(),
        ))
        .add_service(pb::queue_service_server::QueueServiceServer::with_interceptor(
            api.clone(),
            auth.clone(),
        ))
        // Plugins are uploaded whole: this service decodes larger messages.
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::plugin_service_server::PluginServiceServer::new(api.clone())
                .max_decoding_message_size(plugins::MAX_ADD_PLUGIN_MESSAGE),
            auth.clone(),
        ))
        .add_service(pb::agent_service_server::AgentServiceServer::with_interceptor(
            api, auth,
        ));
    Ok(router)
}
