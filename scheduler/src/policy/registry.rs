//! The registry of plugins and bindings: what is stored, where it is bound,
//! and the changes to it (upload, remove, bind, unbind), each durable in the
//! ledger before it takes effect.

use std::collections::BTreeMap;

use tracing::info;

use super::runtime::ValidationError;
use super::*;
use crate::ledger::LedgerError;

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The upload is not a plugin this host runs.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0} not found")]
    NotFound(String),
    /// The change conflicts with the registry's state (a plugin still bound,
    /// a binding at the wrong extension point).
    #[error("{0}")]
    Conflict(String),
    /// The owner's plugins would exceed a limit of `[plugins]`.
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Internal(String),
}

impl crate::domain::ServiceError for RegistryError {
    fn code(&self) -> crate::domain::ErrorCode {
        use crate::domain::ErrorCode as C;
        match self {
            RegistryError::Invalid(_) => C::InvalidArgument,
            RegistryError::NotFound(_) => C::NotFound,
            RegistryError::Conflict(_) => C::FailedPrecondition,
            RegistryError::Limit(_) => C::ResourceExhausted,
            RegistryError::Ledger(l) => l.code(),
            RegistryError::Internal(_) => C::Internal,
        }
    }

    fn field(&self) -> Option<&str> {
        matches!(self, RegistryError::Invalid(_)).then_some("wasm")
    }
}

/// The plugins and bindings, as the ledger holds them.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) plugins: BTreeMap<PluginRef, PluginRecord>,
    pub(super) bindings: BTreeMap<(Owner, Layer, ExtensionPoint), BindingRecord>,
}

impl Registry {
    /// The plugin bound at `point` for `tenant` in `layer`: the operator's
    /// binding for the tenant, else the global one; or the tenant's own.
    pub(super) fn resolve(
        &self,
        tenant: &TenantName,
        point: ExtensionPoint,
        layer: Layer,
    ) -> Option<&PluginRecord> {
        let own = (Owner::Tenant(tenant.clone()), layer, point);
        let binding = match layer {
            Layer::Operator => self
                .bindings
                .get(&own)
                .or_else(|| self.bindings.get(&(Owner::Global, Layer::Operator, point)))?,
            Layer::Tenant => self.bindings.get(&own)?,
        };
        self.plugins.get(&binding.plugin)
    }

    pub(super) fn insert(&mut self, mut b: BindingRecord) -> Option<BindingRecord> {
        if b.scope == Owner::Global {
            b.layer = Layer::Operator;
        }
        self.bindings.insert((b.scope.clone(), b.layer, b.point), b)
    }

    pub(super) fn bindings_of(&self, plugin: &PluginRef) -> Vec<BindingRecord> {
        self.bindings
            .values()
            .filter(|b| &b.plugin == plugin)
            .cloned()
            .collect()
    }
}

impl PolicyHost {
    /// Validates, compiles and stores a plugin under `owner`/`name`,
    /// replacing one of the same name (its bindings then call the new build
    /// at once). Returns the record and the one it replaced.
    pub async fn add_plugin(
        &self,
        owner: Owner,
        name: PluginName,
        wasm: Vec<u8>,
        uploaded_by: &str,
        now: UnixMillis,
    ) -> Result<(PluginRecord, Option<PluginRecord>), RegistryError> {
        let _change = self.inner.changes.lock().await;
        // A tenant's limits, before anything is compiled (a replacement
        // counts instead of the plugin it replaces).
        if let Owner::Tenant(tenant) = &owner {
            let config = self.config();
            let (count, bytes) = self
                .registry()
                .plugins
                .values()
                .filter(|p| p.owner == owner && p.name != name)
                .fold((0usize, 0u64), |(n, b), p| (n + 1, b.saturating_add(p.size)));
            if count >= config.max_plugins_per_tenant {
                return Err(RegistryError::Limit(format!(
                    "tenant {tenant} has {count} plugins, the most it may keep (plugins.max_plugins_per_tenant); remove one first"
                )));
            }
            let limit = config.max_plugin_bytes_per_tenant.0.saturating_mul(1 << 20);
            let total = bytes.saturating_add(wasm.len() as u64);
            if total > limit {
                return Err(RegistryError::Limit(format!(
                    "tenant {tenant}'s plugins would weigh {:.1} MiB with this one ({:.1} MiB), more than the {} it may keep (plugins.max_plugin_bytes_per_tenant); remove one first",
                    total as f64 / f64::from(1 << 20),
                    wasm.len() as f64 / f64::from(1 << 20),
                    config.max_plugin_bytes_per_tenant
                )));
            }
        }
        let host = self.clone();
        let (validated, wasm) = tokio::task::spawn_blocking(move || {
            let validated = runtime::niced(|| host.inner.sandbox.validate(&wasm));
            runtime::release_freed_memory();
            (validated, wasm)
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("plugin validation panicked: {e}")))?;
        let validated = validated?;
        let plugin_ref = PluginRef {
            owner: owner.clone(),
            name: name.clone(),
        };
        let previous = self.registry().plugins.get(&plugin_ref).cloned();
        if let Some(prev) = &previous {
            let bound = self.registry().bindings_of(&plugin_ref);
            if prev.point != validated.plugin.point && !bound.is_empty() {
                return Err(RegistryError::Conflict(format!(
                    "plugin {plugin_ref} is a {} plugin bound at {}; the new build is a {} plugin: unbind it first, or upload under another name",
                    prev.point,
                    describe_bindings(&bound),
                    validated.plugin.point
                )));
            }
        }
        let record = PluginRecord {
            name,
            owner,
            sha256: validated.sha256.clone(),
            point: validated.plugin.point,
            wit_version: validated.plugin.built_for,
            size: wasm.len() as u64,
            uploaded_at: now,
            uploaded_by: uploaded_by.to_string(),
        };
        let ledger = &self.inner.ledger;
        ledger.put_plugin(&record, &wasm, &self.inner.engine_key, &validated.artifact)?;
        if let Some(prev) = &previous
            && prev.sha256 != record.sha256
        {
            ledger.collect_plugin_bytes(&prev.sha256)?;
        }
        ledger.flush().await?;
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.sha256.clone(), validated.plugin);
        self.inner
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .plugins
            .insert(plugin_ref.clone(), record.clone());
        if let Some(prev) = &previous {
            self.forget_unused(&prev.sha256);
        }
        info!(plugin = %plugin_ref, sha256 = %record.sha256, point = %record.point, wit = %record.wit_version, "plugin stored");
        Ok((record, previous))
    }

    /// Drops a loaded plugin from the cache once no record uses its bytes.
    fn forget_unused(&self, sha256: &str) {
        if !self.registry().plugins.values().any(|p| p.sha256 == sha256) {
            let loaded = self
                .inner
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(sha256);
            if let Some(loaded) = loaded {
                self.inner.sandbox.forget(&loaded);
            }
        }
    }

    /// Every plugin, ordered by owner then name.
    pub fn plugins(&self) -> Vec<PluginRecord> {
        self.registry().plugins.values().cloned().collect()
    }

    pub fn plugin(&self, plugin: &PluginRef) -> Option<PluginRecord> {
        self.registry().plugins.get(plugin).cloned()
    }

    /// Every binding, ordered by scope then point.
    pub fn bindings(&self) -> Vec<BindingRecord> {
        self.registry().bindings.values().cloned().collect()
    }

    /// The bindings that call `plugin`.
    pub fn bindings_of(&self, plugin: &PluginRef) -> Vec<BindingRecord> {
        self.registry().bindings_of(plugin)
    }

    /// Calls and recent failures of `plugin` since the server started.
    pub fn stats(&self, plugin: &PluginRef) -> PluginStats {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plugin)
            .cloned()
            .unwrap_or_default()
    }

    /// Removes a plugin that nothing binds.
    pub async fn remove_plugin(&self, plugin: &PluginRef) -> Result<PluginRecord, RegistryError> {
        let _change = self.inner.changes.lock().await;
        let bound = self.bindings_of(plugin);
        if !bound.is_empty() {
            return Err(RegistryError::Conflict(format!(
                "plugin {plugin} is bound at {}: unbind it first",
                describe_bindings(&bound)
            )));
        }
        let removed = self
            .inner
            .ledger
            .remove_plugin(plugin)?
            .ok_or_else(|| RegistryError::NotFound(format!("plugin {plugin}")))?;
        self.inner.ledger.flush().await?;
        self.inner
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .plugins
            .remove(plugin);
        self.forget_unused(&removed.sha256);
        runtime::release_freed_memory();
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(plugin);
        info!(%plugin, "plugin removed");
        Ok(removed)
    }

    /// Binds `plugin` at `point` (default: its world) for `scope`, replacing
    /// the binding there; takes effect with the next call. A global binding
    /// takes only a global plugin; a tenant's, its own plugins or global
    /// ones. Returns the binding and the one it replaced.
    pub async fn bind(
        &self,
        scope: Owner,
        layer: Layer,
        point: Option<ExtensionPoint>,
        plugin: PluginRef,
        bound_by: &str,
        now: UnixMillis,
    ) -> Result<(BindingRecord, Option<BindingRecord>), RegistryError> {
        let _change = self.inner.changes.lock().await;
        let record = self
            .plugin(&plugin)
            .ok_or_else(|| RegistryError::NotFound(format!("plugin {plugin}")))?;
        match (&scope, &plugin.owner) {
            (_, Owner::Global) => {}
            (Owner::Tenant(t), Owner::Tenant(o)) if t == o => {}
            (Owner::Global, Owner::Tenant(_)) => {
                return Err(RegistryError::Conflict(format!(
                    "plugin {plugin} belongs to a tenant; a global binding takes a global plugin"
                )));
            }
            (Owner::Tenant(_), Owner::Tenant(_)) => {
                return Err(RegistryError::NotFound(format!("plugin {plugin}")));
            }
        }
        let point = point.unwrap_or(record.point);
        if point != record.point {
            return Err(RegistryError::Conflict(format!(
                "plugin {plugin} is a {} plugin (it exports {}); it cannot be bound at {point}",
                record.point,
                record.point.export_name()
            )));
        }
        let layer = if scope == Owner::Global {
            Layer::Operator
        } else {
            layer
        };
        let binding = BindingRecord {
            scope: scope.clone(),
            layer,
            point,
            plugin,
            bound_at: now,
            bound_by: bound_by.to_string(),
        };
        self.inner.ledger.put_plugin_binding(&binding)?;
        self.inner.ledger.flush().await?;
        let replaced = self
            .inner
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(binding.clone());
        info!(scope = %binding.scope, %layer, %point, plugin = %binding.plugin, "plugin bound");
        Ok((binding, replaced))
    }

    /// Removes the binding at `point` for `scope`.
    pub async fn unbind(
        &self,
        scope: Owner,
        layer: Layer,
        point: ExtensionPoint,
    ) -> Result<BindingRecord, RegistryError> {
        let _change = self.inner.changes.lock().await;
        let layer = if scope == Owner::Global {
            Layer::Operator
        } else {
            layer
        };
        let removed = self
            .inner
            .ledger
            .remove_plugin_binding(&scope, layer, point)?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("a {point} binding for {scope} ({layer} layer)"))
            })?;
        self.inner.ledger.flush().await?;
        self.inner
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .bindings
            .remove(&(scope, layer, point));
        info!(scope = %removed.scope, %layer, %point, plugin = %removed.plugin, "plugin unbound");
        Ok(removed)
    }
}

fn describe_bindings(bound: &[BindingRecord]) -> String {
    bound
        .iter()
        .map(|b| format!("{} for {}", b.point, b.scope))
        .collect::<Vec<_>>()
        .join(", ")
}
