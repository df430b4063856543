//! `allot.v1.PluginService`: the plugin registry, and admission on submit.
//!
//! Who may do what: a tenant token manages its own tenant's plugins and
//! bindings and may bind (and see, without error records) global plugins; an
//! admin manages everything and names the owner (`tenant` or `global`) in
//! each request. Another tenant's plugin is reported as not found, never as
//! forbidden, so that its name does not leak.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::error::{ApiError, ApiResult};
use super::{Api, caller};
use crate::auth::Caller;
use crate::domain::{JobSpec, PluginName, TenantName};
use crate::ledger::Role;
use crate::policy::{
    AdmissionDecision, AdmissionOnError, BindingRecord, DecidedBy, ErrorRecord, ExtensionPoint, Layer, Owner,
    PluginRecord, PluginRef, PluginStats,
};

/// The largest AddPlugin request the server decodes: the largest component
/// and room for the rest of the message.
pub const MAX_ADD_PLUGIN_MESSAGE: usize = crate::policy::runtime::MAX_COMPONENT_BYTES + (1 << 20);

fn point_pb(p: ExtensionPoint) -> pb::ExtensionPoint {
    match p {
        ExtensionPoint::Admission => pb::ExtensionPoint::Admission,
        ExtensionPoint::Quota => pb::ExtensionPoint::Quota,
        ExtensionPoint::Pricing => pb::ExtensionPoint::Pricing,
    }
}

/// An extension point from the wire; `None` for unspecified.
fn point_from_pb(field: &str, v: i32) -> ApiResult<Option<ExtensionPoint>> {
    match pb::ExtensionPoint::try_from(v) {
        Ok(pb::ExtensionPoint::Unspecified) => Ok(None),
        Ok(pb::ExtensionPoint::Admission) => Ok(Some(ExtensionPoint::Admission)),
        Ok(pb::ExtensionPoint::Quota) => Ok(Some(ExtensionPoint::Quota)),
        Ok(pb::ExtensionPoint::Pricing) => Ok(Some(ExtensionPoint::Pricing)),
        Err(_) => Err(ApiError::invalid(field, format!("{v} is not an extension point"))),
    }
}

fn required_point(field: &str, v: i32) -> ApiResult<ExtensionPoint> {
    point_from_pb(field, v)?
        .ok_or_else(|| ApiError::invalid(field, "is required: admission, quota or pricing"))
}

fn plugin_pb(p: &PluginRecord) -> pb::Plugin {
    pb::Plugin {
        name: p.name.to_string(),
        tenant: p.owner.tenant().map(|t| t.to_string()).unwrap_or_default(),
        global: p.owner == Owner::Global,
        sha256: p.sha256.clone(),
        point: point_pb(p.point) as i32,
        wit_version: p.wit_version.to_string(),
        size_bytes: p.size,
        uploaded_at_unix_ms: p.uploaded_at.0 as i64,
        uploaded_by: p.uploaded_by.clone(),
    }
}

fn binding_pb(b: &BindingRecord) -> pb::PluginBinding {
    pb::PluginBinding {
        tenant: b.scope.tenant().map(|t| t.to_string()).unwrap_or_default(),
        global: b.scope == Owner::Global,
        point: point_pb(b.point) as i32,
        plugin: b.plugin.name.to_string(),
        plugin_global: b.plugin.owner == Owner::Global,
        bound_at_unix_ms: b.bound_at.0 as i64,
        bound_by: b.bound_by.clone(),
        layer: match b.layer {
            Layer::Operator => pb::PluginLayer::Operator,
            Layer::Tenant => pb::PluginLayer::Tenant,
        } as i32,
    }
}

/// The layer a caller binds in: its own by default; only admins bind in
/// the operator's.
fn layer_of(caller: &Caller, layer: i32) -> ApiResult<Layer> {
    let admin = matches!(caller.role, Role::Admin);
    match pb::PluginLayer::try_from(layer) {
        Ok(pb::PluginLayer::Unspecified) if admin => Ok(Layer::Operator),
        Ok(pb::PluginLayer::Unspecified | pb::PluginLayer::Tenant) => Ok(Layer::Tenant),
        Ok(pb::PluginLayer::Operator) if admin => Ok(Layer::Operator),
        Ok(pb::PluginLayer::Operator) => Err(ApiError::PermissionDenied(
            "only an admin token may bind in the operator's layer".into(),
        )),
        Err(_) => Err(ApiError::invalid("layer", format!("unknown layer {layer}"))),
    }
}

fn error_pb(e: &ErrorRecord) -> pb::PluginError {
    pb::PluginError {
        at_unix_ms: e.at.0 as i64,
        kind: e.kind.to_string(),
        message: e.message.clone(),
        sha256: e.sha256.clone(),
        tenant: e.tenant.to_string(),
        point: point_pb(e.point) as i32,
    }
}

fn stats_pb(s: &PluginStats) -> pb::PluginStats {
    pb::PluginStats {
        calls: s.calls,
        failures: s.failures,
        recent_errors: s.recent_errors.iter().map(error_pb).collect(),
        p50_us: s.latency_quantile_us(0.5),
        p99_us: s.latency_quantile_us(0.99),
        failures_by_kind: s
            .failures_by_kind
            .iter()
            .map(|(k, n)| (k.as_str().to_string(), *n))
            .collect(),
    }
}

fn plugin_name(field: &str, s: &str) -> ApiResult<PluginName> {
    match s.trim() {
        "" => Err(ApiError::invalid(field, "is required")),
        n => n.parse().map_err(|e: String| ApiError::invalid(field, e)),
    }
}

impl Api {
    /// The owner a request manages (`what`: for messages): a tenant token
    /// its own tenant; an admin the tenant named, or global.
    fn managed_owner(&self, caller: &Caller, tenant: &str, global: bool, what: &str) -> ApiResult<Owner> {
        let tenant = tenant.trim();
        match &caller.role {
            Role::Agent => Err(ApiError::PermissionDenied(format!(
                "an agent token cannot {what}"
            ))),
            Role::Tenant(_) if global => Err(ApiError::PermissionDenied(format!(
                "only an admin token may {what} globally"
            ))),
            Role::Tenant(own) if tenant.is_empty() || tenant == own.as_str() => {
                Ok(Owner::Tenant(own.clone()))
            }
            Role::Tenant(_) => Err(ApiError::PermissionDenied(format!(
                "a tenant token may {what} only for its own tenant"
            ))),
            Role::Admin => match (tenant, global) {
                ("", true) => Ok(Owner::Global),
                ("", false) => Err(ApiError::invalid(
                    "tenant",
                    "an admin names the tenant, or sets global",
                )),
                (_, true) => Err(ApiError::invalid(
                    "global",
                    "give either a tenant or global, not both",
                )),
                (t, false) => {
                    let t: TenantName = t.parse().map_err(|e: String| ApiError::invalid("tenant", e))?;
                    if !self.auth.tenant_exists(&t)? {
                        return Err(ApiError::NotFound(format!("tenant {t} not found")));
                    }
                    Ok(Owner::Tenant(t))
                }
            },
        }
    }

    fn plugins(&self) -> ApiResult<&crate::policy::PolicyHost> {
        self.policy
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("this server runs without a plugin host".into()))
    }

    /// The plugin `name` (or SHA-256 prefix) among those of `owner`, and for
    /// a tenant also the global ones (its own first).
    fn find_plugin(&self, owner: &Owner, name: &str, with_global: bool) -> ApiResult<PluginRecord> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ApiError::invalid("name", "is required"));
        }
        let host = self.plugins()?;
        let owners: Vec<&Owner> = match owner {
            Owner::Tenant(_) if with_global => vec![owner, &Owner::Global],
            _ => vec![owner],
        };
        let is_sha_prefix =
            name.len() >= 8 && name.len() <= 64 && name.chars().all(|c| c.is_ascii_hexdigit());
        for o in owners {
            let by_name = name.parse::<PluginName>().ok().and_then(|n| {
                host.plugin(&PluginRef {
                    owner: o.clone(),
                    name: n,
                })
            });
            if let Some(p) = by_name {
                return Ok(p);
            }
            if is_sha_prefix {
                let prefix = name.to_ascii_lowercase();
                let matches: Vec<PluginRecord> = host
                    .plugins()
                    .into_iter()
                    .filter(|p| &p.owner == o && p.sha256.starts_with(&prefix))
                    .collect();
                match matches.as_slice() {
                    [one] => return Ok(one.clone()),
                    [] => {}
                    _ => {
                        return Err(ApiError::invalid(
                            "name",
                            format!("SHA-256 prefix {name} matches several plugins; give more digits"),
                        ));
                    }
                }
            }
        }
        Err(ApiError::NotFound(format!("plugin {name} ({owner}) not found")))
    }

    /// Runs the admission plugin bound for the spec's tenant: the spec to
    /// queue, or the refusal (`FAILED_PRECONDITION`, naming the plugin).
    pub(super) async fn admit(&self, spec: JobSpec) -> ApiResult<JobSpec> {
        let Some(host) = &self.policy else {
            return Ok(spec);
        };
        let outcome = host.admit(&spec, self.clock.now()).await;
        match (outcome.decision, outcome.decided_by) {
            (AdmissionDecision::Accept, _) => Ok(spec),
            (AdmissionDecision::Modify(modified), _) => Ok(*modified),
            (AdmissionDecision::Reject(message), DecidedBy::Plugin(plugin)) => Err(
                ApiError::FailedPrecondition(format!("rejected by admission plugin {plugin}: {message}")),
            ),
            (AdmissionDecision::Reject(message), _) => {
                debug_assert_eq!(host.config().admission_on_error, AdmissionOnError::Reject);
                Err(ApiError::FailedPrecondition(message))
            }
        }
    }
}

#[tonic::async_trait]
impl pb::plugin_service_server::PluginService for Api {
    #[instrument(skip(self, request))]
    async fn add_plugin(
        &self,
        request: Request<pb::AddPluginRequest>,
    ) -> Result<Response<pb::AddPluginResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let owner = self.managed_owner(&caller, &req.tenant, req.global, "add plugins")?;
        let name = plugin_name("name", &req.name)?;
        let (record, replaced) = self
            .plugins()?
            .add_plugin(owner, name, req.wasm, &caller.token_id, self.clock.now())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::AddPluginResponse {
            plugin: Some(plugin_pb(&record)),
            replaced_sha256: replaced.map(|r| r.sha256).unwrap_or_default(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_plugins(
        &self,
        request: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let caller = caller(&request)?;
        let asked = request.get_ref().tenant.trim();
        let only: Option<TenantName> = match (&caller.role, asked) {
            (Role::Agent, _) => {
                return Err(ApiError::PermissionDenied("an agent token cannot list plugins".into()).into());
            }
            (Role::Admin, "") => None,
            (Role::Tenant(own), "") => Some(own.clone()),
            (_, t) => {
                let t: TenantName = t.parse().map_err(|e: String| ApiError::invalid("tenant", e))?;
                if !caller.may_access(&t) {
                    return Err(ApiError::PermissionDenied(
                        "a tenant token may list only its own tenant's plugins".into(),
                    )
                    .into());
                }
                Some(t)
            }
        };
        let visible = |o: &Owner| match (&only, o) {
            (None, _) | (_, Owner::Global) => true,
            (Some(t), Owner::Tenant(owner)) => t == owner,
        };
        let host = self.plugins()?;
        Ok(Response::new(pb::ListPluginsResponse {
            plugins: host
                .plugins()
                .iter()
                .filter(|p| visible(&p.owner))
                .map(plugin_pb)
                .collect(),
            bindings: host
                .bindings()
                .iter()
                .filter(|b| visible(&b.scope))
                .map(binding_pb)
                .collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn get_plugin(
        &self,
        request: Request<pb::GetPluginRequest>,
    ) -> Result<Response<pb::GetPluginResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        // A tenant may look at global plugins (to bind them), not manage them.
        let owner = match (&caller.role, req.global) {
            (Role::Tenant(_), true) => Owner::Global,
            _ => self.managed_owner(&caller, &req.tenant, req.global, "look at plugins")?,
        };
        let record = self.find_plugin(&owner, &req.name, true)?;
        let host = self.plugins()?;
        let plugin_ref = record.plugin_ref();
        // Bindings and failures of a global plugin involve every tenant: a
        // tenant sees the global bindings and its own (what ListPlugins
        // shows it too), not other tenants'.
        let full_view = caller.is_admin() || record.owner != Owner::Global;
        let bindings = host
            .bindings_of(&plugin_ref)
            .iter()
            .filter(|b| full_view || b.scope == Owner::Global || b.scope.tenant() == caller.tenant())
            .map(binding_pb)
            .collect();
        Ok(Response::new(pb::GetPluginResponse {
            plugin: Some(plugin_pb(&record)),
            bindings,
            stats: full_view.then(|| stats_pb(&host.stats(&plugin_ref))),
        }))
    }

    #[instrument(skip(self, request))]
    async fn remove_plugin(
        &self,
        request: Request<pb::RemovePluginRequest>,
    ) -> Result<Response<pb::RemovePluginResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let owner = self.managed_owner(&caller, &req.tenant, req.global, "remove plugins")?;
        let record = self.find_plugin(&owner, &req.name, false)?;
        let removed = self
            .plugins()?
            .remove_plugin(&record.plugin_ref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RemovePluginResponse {
            plugin: Some(plugin_pb(&removed)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn bind_plugin(
        &self,
        request: Request<pb::BindPluginRequest>,
    ) -> Result<Response<pb::BindPluginResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let scope = self.managed_owner(&caller, &req.tenant, req.global, "bind plugins")?;
        let layer = layer_of(&caller, req.layer)?;
        if scope == Owner::Global && layer == Layer::Tenant {
            return Err(ApiError::invalid("layer", "a global binding is the operator's").into());
        }
        let point = point_from_pb("point", req.point)?;
        plugin_name("plugin", &req.plugin)?;
        let record = self.find_plugin(&scope, &req.plugin, true).map_err(|e| match e {
            ApiError::InvalidArgument { description, .. } => ApiError::invalid("plugin", description),
            other => other,
        })?;
        let (binding, replaced) = self
            .plugins()?
            .bind(
                scope,
                layer,
                point,
                record.plugin_ref(),
                &caller.token_id,
                self.clock.now(),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::BindPluginResponse {
            binding: Some(binding_pb(&binding)),
            replaced: replaced.as_ref().map(binding_pb),
        }))
    }

    #[instrument(skip(self, request))]
    async fn unbind_plugin(
        &self,
        request: Request<pb::UnbindPluginRequest>,
    ) -> Result<Response<pb::UnbindPluginResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let scope = self.managed_owner(&caller, &req.tenant, req.global, "unbind plugins")?;
        let layer = layer_of(&caller, req.layer)?;
        let point = required_point("point", req.point)?;
        let removed = self
            .plugins()?
            .unbind(scope, layer, point)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::UnbindPluginResponse {
            binding: Some(binding_pb(&removed)),
        }))
    }
}
