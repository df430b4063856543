//! Tenant and token administration calls.

use tonic::Code;

use crate::proto::admin_service_client::AdminServiceClient;
use crate::{Authed, Error, Result, new_request_id, proto, retrying};

/// Tenant and token administration.
#[derive(Clone)]
pub struct Admin(pub(crate) AdminServiceClient<Authed>);

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
