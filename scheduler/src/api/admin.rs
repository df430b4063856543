//! `allot.v1.AdminService`: tenants and tokens.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::error::ApiError;
use super::{Api, caller};
use crate::domain::{NodeName, TenantName, validate};
use crate::ledger::{Role, TenantRecord, TokenRecord};

fn tenant_pb(t: &TenantRecord) -> pb::Tenant {
    pb::Tenant {
        name: t.name.to_string(),
        created_at_unix_ms: t.created_at.0 as i64,
    }
}

fn token_pb(t: &TokenRecord) -> pb::TokenInfo {
    let (role, tenant) = match &t.role {
        Role::Admin => (pb::Role::Admin, String::new()),
        Role::Agent => (pb::Role::Agent, String::new()),
        Role::Tenant(name) => (pb::Role::Tenant, name.to_string()),
    };
    pb::TokenInfo {
        id: t.id.clone(),
        role: role as i32,
        tenant,
        description: t.description.clone(),
        created_at_unix_ms: t.created_at.0 as i64,
        node: t.node.as_ref().map(|n| n.to_string()).unwrap_or_default(),
    }
}

fn tenant_name(field: &str, s: &str) -> Result<TenantName, ApiError> {
    s.trim().parse().map_err(|e| ApiError::invalid(field, e))
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Api {
    #[instrument(skip(self, request))]
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "creating a tenant")?;
        let name = tenant_name("name", &request.get_ref().name)?;
        let request_id = validate::request_id(&request.get_ref().request_id).map_err(ApiError::from)?;
        let rec = self
            .auth
            .create_tenant_once(name, request_id, self.clock.now())
            .await
            .map_err(ApiError::from)?;
        info!(tenant = %rec.name, "tenant created");
        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(tenant_pb(&rec)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = caller(&request)?;
        let tenants = self.auth.tenants().map_err(ApiError::from)?;
        let tenants = tenants
            .iter()
            .filter(|t| caller.may_access(&t.name))
            .map(tenant_pb)
            .collect();
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    #[instrument(skip(self, request))]
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "issuing a token")?;
        let req = request.get_ref();
        let role = match pb::Role::try_from(req.role) {
            Ok(pb::Role::Tenant) => Role::Tenant(tenant_name("tenant", &req.tenant)?),
            Ok(pb::Role::Admin) => Role::Admin,
            Ok(pb::Role::Agent) => Role::Agent,
            _ => {
                return Err(
                    ApiError::invalid("role", "must be ROLE_TENANT, ROLE_ADMIN or ROLE_AGENT").into(),
                );
            }
        };
        if !matches!(role, Role::Tenant(_)) && !req.tenant.trim().is_empty() {
            return Err(ApiError::invalid("tenant", "only a ROLE_TENANT token belongs to a tenant").into());
        }
        let node = match (&role, req.node.as_str()) {
            (Role::Agent, "") => {
                return Err(ApiError::invalid(
                    "node",
                    "is required for ROLE_AGENT: an agent token may register only its node",
                )
                .into());
            }
            (Role::Agent, n) => Some(n.parse::<NodeName>().map_err(|e| ApiError::invalid("node", e))?),
            (_, "") => None,
            (_, _) => {
                return Err(ApiError::invalid("node", "only a ROLE_AGENT token is bound to a node").into());
            }
        };
        if req.description.len() > 256 {
            return Err(ApiError::invalid("description", "must be at most 256 bytes").into());
        }
        let description = req.description.trim().to_string();
        let now = self.clock.now();
        let request_id = validate::request_id(&req.request_id).map_err(ApiError::from)?;
        let (secret, rec) = self
            .auth
            .issue_for(role, node, description, request_id, now)
            .await
            .map_err(ApiError::from)?;
        info!(token = %rec.id, "token issued");
        Ok(Response::new(pb::IssueTokenResponse {
            token: secret,
            info: Some(token_pb(&rec)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "listing tokens")?;
        let tokens = self.auth.tokens().iter().map(token_pb).collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    #[instrument(skip(self, request))]
    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "revoking a token")?;
        let id = request.get_ref().id.trim();
        if id.is_empty() {
            return Err(ApiError::invalid("id", "must not be empty").into());
        }
        self.auth.revoke(id).await.map_err(ApiError::from)?;
        info!(token = %id, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = caller(&request)?;
        let rec = self
            .auth
            .tokens()
            .into_iter()
            .find(|t| t.id == caller.token_id)
            .ok_or_else(|| ApiError::Unauthenticated("token revoked".into()))?;
        Ok(Response::new(pb::WhoAmIResponse {
            token: Some(token_pb(&rec)),
        }))
    }
}
