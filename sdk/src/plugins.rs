//! The plugin registry's calls.

use tonic::Code;

use crate::proto::plugin_service_client::PluginServiceClient;
use crate::{Authed, Error, Result, proto};

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
pub struct Plugins(pub(crate) PluginServiceClient<Authed>);

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
