//! Plugin records and bindings in the ledger; their components and
//! compiled code are files (see [`blobs`](super::blobs)).

use super::*;

impl Ledger {
    /// Moves plugin components and artifacts that a version before the blob
    /// files kept in sled (trees `plugin_blobs`, `plugin_artifacts`) to
    /// files, then drops those trees.
    pub(super) fn migrate_plugin_blobs(&self, trees: &[String]) -> Result<()> {
        for (name, artifacts) in [("plugin_blobs", false), ("plugin_artifacts", true)] {
            if !trees.iter().any(|t| t == name) {
                continue;
            }
            let tree = self.db.open_tree(name)?;
            let mut moved = 0usize;
            for kv in tree.iter() {
                let (k, v) = kv?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let written = if artifacts {
                    match key.split_once('/') {
                        Some((sha, engine)) => self.blobs.put_artifact(sha, engine, &v),
                        None => Ok(()),
                    }
                } else {
                    self.blobs.put_component(&key, &v)
                };
                written.map_err(blob_error)?;
                moved += 1;
            }
            self.db.drop_tree(name)?;
            self.db.flush()?;
            tracing::info!(tree = name, moved, "moved plugin blobs out of sled into files");
        }
        Ok(())
    }

    // --- policy plugins ---------------------------------------------------------

    /// Stores a plugin: its component (by SHA-256), its compiled artifact
    /// (by SHA-256 and the engine's compatibility key) and its record, which
    /// replaces any of the same owner and name. The record is written last,
    /// so a plugin is never visible without its bytes.
    pub fn put_plugin(
        &self,
        rec: &PluginRecord,
        wasm: &[u8],
        engine_key: &str,
        artifact: &[u8],
    ) -> Result<()> {
        self.blobs.put_component(&rec.sha256, wasm).map_err(blob_error)?;
        self.put_plugin_artifact(&rec.sha256, engine_key, artifact)?;
        self.plugins.insert(plugin_key(&rec.plugin_ref()), encode(rec))?;
        Ok(())
    }

    /// Stores a compiled artifact of a stored component (durable on return).
    pub fn put_plugin_artifact(&self, sha256: &str, engine_key: &str, artifact: &[u8]) -> Result<()> {
        self.blobs
            .put_artifact(sha256, engine_key, artifact)
            .map_err(blob_error)
    }

    /// Every plugin record.
    pub fn plugins(&self) -> Result<Vec<PluginRecord>> {
        self.plugins
            .iter()
            .values()
            .map(|b| decode("plugins", &b?))
            .collect()
    }

    /// A stored component.
    pub fn plugin_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        self.blobs.component(sha256).map_err(blob_error)
    }

    /// A stored artifact compiled under `engine_key`.
    pub fn plugin_artifact(&self, sha256: &str, engine_key: &str) -> Result<Option<Vec<u8>>> {
        self.blobs.artifact(sha256, engine_key).map_err(blob_error)
    }

    /// Where the plugin files are (jobs must not see it).
    pub fn plugin_dir(&self) -> &Path {
        self.blobs.dir()
    }

    /// Removes a plugin's record, and its component and artifacts when no
    /// other record holds the same bytes.
    pub fn remove_plugin(&self, plugin: &PluginRef) -> Result<Option<PluginRecord>> {
        let Some(bytes) = self.plugins.remove(plugin_key(plugin))? else {
            return Ok(None);
        };
        let rec: PluginRecord = decode("plugins", &bytes)?;
        self.collect_plugin_bytes(&rec.sha256)?;
        Ok(Some(rec))
    }

    /// Drops the component and artifacts of `sha256` if no record holds it.
    pub fn collect_plugin_bytes(&self, sha256: &str) -> Result<()> {
        if self.plugins()?.iter().any(|p| p.sha256 == sha256) {
            return Ok(());
        }
        self.blobs.remove(sha256).map_err(blob_error)
    }

    /// Binds a plugin, replacing the binding of the same scope and point.
    pub fn put_plugin_binding(&self, b: &BindingRecord) -> Result<()> {
        self.plugin_bindings
            .insert(binding_key(&b.scope, b.layer, b.point), encode(b))?;
        Ok(())
    }

    /// Removes the binding of a scope, layer and point; returns it if there
    /// was one.
    pub fn remove_plugin_binding(
        &self,
        scope: &Owner,
        layer: Layer,
        point: ExtensionPoint,
    ) -> Result<Option<BindingRecord>> {
        self.plugin_bindings
            .remove(binding_key(scope, layer, point))?
            .map(|b| decode("plugin_bindings", &b))
            .transpose()
    }

    /// Every plugin binding.
    pub fn plugin_bindings(&self) -> Result<Vec<BindingRecord>> {
        self.plugin_bindings
            .iter()
            .values()
            .map(|b| decode("plugin_bindings", &b?))
            .collect()
    }
}

/// `g/<scope rest>` for global, `t/<tenant>/<rest>` for a tenant's: names
/// and tenants never hold `/`.
fn owner_key(owner: &Owner, rest: &str) -> String {
    match owner {
        Owner::Global => format!("g/{rest}"),
        Owner::Tenant(t) => format!("t/{t}/{rest}"),
    }
}

fn plugin_key(plugin: &PluginRef) -> String {
    owner_key(&plugin.owner, plugin.name.as_str())
}

/// `g/<point>` for a global binding, `t/<tenant>/<point>` for a tenant's
/// own (as before layers existed), `o/<tenant>/<point>` for the operator's
/// binding for one tenant.
fn binding_key(scope: &Owner, layer: Layer, point: ExtensionPoint) -> String {
    match (scope, layer) {
        (Owner::Tenant(t), Layer::Operator) => format!("o/{t}/{}", point.as_str()),
        _ => owner_key(scope, point.as_str()),
    }
}
