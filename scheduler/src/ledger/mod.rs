//! The ledger: jobs, leases, tenants and tokens in sled.
//!
//! Each change to a job and its leases is one sled transaction over every
//! tree it touches. Writes become durable at `flush`, which the engine calls
//! once per batch of commands before it acknowledges anything (group commit).

use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::domain::{Job, JobId, JobState, Lease, LeaseId, NodeName, TenantName, UnixMillis};
use crate::policy::types::{BindingRecord, ExtensionPoint, Owner, PluginRecord, PluginRef};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        source: serde_json::Error,
    },
    #[error("data dir {path} was written by schema version {found}; this allot reads version {expected}")]
    Schema {
        path: String,
        found: String,
        expected: &'static str,
    },
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

const SCHEMA_VERSION: &str = "1";

/// A tenant record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: TenantName,
    pub created_at: UnixMillis,
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role", content = "tenant")]
pub enum Role {
    Admin,
    Agent,
    Tenant(TenantName),
}

/// A token as stored: only the SHA-256 of the secret is kept (as the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// First 12 hex digits of the hash: public, used to revoke.
    pub id: String,
    pub role: Role,
    pub description: String,
    pub created_at: UnixMillis,
}

/// Filter for listing jobs.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub tenant: Option<TenantName>,
    /// Empty means every state.
    pub states: Vec<JobState>,
}

#[derive(Clone)]
pub struct Ledger {
    db: sled::Db,
    jobs: sled::Tree,
    jobs_active: sled::Tree,
    jobs_by_tenant: sled::Tree,
    leases: sled::Tree,
    leases_by_job: sled::Tree,
    tenants: sled::Tree,
    tokens: sled::Tree,
    drains: sled::Tree,
    nodes_seen: sled::Tree,
    /// Policy plugins by owner and name ([`PluginRecord`]).
    plugins: sled::Tree,
    /// Plugin components by SHA-256 (hex).
    plugin_blobs: sled::Tree,
    /// Compiled plugins by `<sha256>/<engine compatibility key>`.
    plugin_artifacts: sled::Tree,
    /// Plugin bindings by scope and extension point ([`BindingRecord`]).
    plugin_bindings: sled::Tree,
}

/// How long `open` waits for the file lock of a ledger being closed.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled, waiting a little for the file lock: sled's background
/// flusher keeps the lock for a moment after the last handle is dropped, so
/// a reopen right after a close (a restart in the same process) would fail.
fn open_db(dir: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(dir.join("ledger"))
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("ledger records always serialize")
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| LedgerError::Corrupt { tree, source })
}

fn tenant_key(tenant: &TenantName, job: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.as_str().len() + 17);
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(job.as_bytes());
    k
}

fn job_lease_key(job: &JobId, lease: &LeaseId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(job.as_bytes());
    k[16..].copy_from_slice(lease.as_bytes());
    k
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = open_db(dir)?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema")? {
            None => {
                meta.insert("schema", SCHEMA_VERSION)?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.as_bytes() => {}
            Some(v) => {
                return Err(LedgerError::Schema {
                    path: dir.display().to_string(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                    expected: SCHEMA_VERSION,
                });
            }
        }
        Ok(Ledger {
            jobs: db.open_tree("jobs")?,
            jobs_active: db.open_tree("jobs_active")?,
            jobs_by_tenant: db.open_tree("jobs_by_tenant")?,
            leases: db.open_tree("leases")?,
            leases_by_job: db.open_tree("leases_by_job")?,
            tenants: db.open_tree("tenants")?,
            tokens: db.open_tree("tokens")?,
            drains: db.open_tree("drains")?,
            nodes_seen: db.open_tree("nodes_seen")?,
            plugins: db.open_tree("plugins")?,
            plugin_blobs: db.open_tree("plugin_blobs")?,
            plugin_artifacts: db.open_tree("plugin_artifacts")?,
            plugin_bindings: db.open_tree("plugin_bindings")?,
            db,
        })
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Writes a job and the given leases (new or changed) in one transaction.
    pub fn put_job(&self, job: &Job, leases: &[&Lease]) -> Result<()> {
        let job_bytes = encode(job);
        let lease_bytes: Vec<(LeaseId, Vec<u8>)> = leases.iter().map(|l| (l.id, encode(*l))).collect();
        let result: Result<(), TransactionError<()>> = (
            &self.jobs,
            &self.jobs_active,
            &self.jobs_by_tenant,
            &self.leases,
            &self.leases_by_job,
        )
            .transaction(|(jobs, active, by_tenant, lease_tree, by_job)| {
                jobs.insert(job.id.as_bytes(), job_bytes.as_slice())?;
                if job.state.is_final() {
                    active.remove(job.id.as_bytes())?;
                } else {
                    active.insert(job.id.as_bytes(), &[])?;
                }
                by_tenant.insert(tenant_key(&job.spec.tenant, &job.id), &[])?;
                for (id, bytes) in &lease_bytes {
                    lease_tree.insert(id.as_bytes(), bytes.as_slice())?;
                    by_job.insert(&job_lease_key(&job.id, id), &[])?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => unreachable!("the job transaction never aborts"),
        }
    }

    pub fn get_job(&self, id: &JobId) -> Result<Option<Job>> {
        self.jobs
            .get(id.as_bytes())?
            .map(|b| decode("jobs", &b))
            .transpose()
    }

    /// Jobs not in a final state, oldest first.
    pub fn active_jobs(&self) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        for kv in self.jobs_active.iter() {
            let (k, _) = kv?;
            if let Some(b) = self.jobs.get(&k)? {
                out.push(decode("jobs", &b)?);
            }
        }
        Ok(out)
    }

    /// One page of jobs, oldest first, starting after `after`. Returns the page
    /// and the id to continue after, if there may be more.
    pub fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<JobId>)> {
        let keep = |job: &Job| filter.states.is_empty() || filter.states.contains(&job.state);
        let mut out = Vec::new();
        let mut last = None;
        let mut push = |job: Job, out: &mut Vec<Job>| {
            last = Some(job.id);
            if keep(&job) {
                out.push(job);
            }
        };
        match &filter.tenant {
            Some(tenant) => {
                let mut prefix = tenant.as_str().as_bytes().to_vec();
                prefix.push(0);
                let start = match after {
                    Some(a) => {
                        let mut k = tenant_key(tenant, &a);
                        k.push(0);
                        k
                    }
                    None => prefix.clone(),
                };
                for kv in self.jobs_by_tenant.range(start..) {
                    let (k, _) = kv?;
                    if !k.starts_with(&prefix) || out.len() >= limit {
                        break;
                    }
                    let Some(id) = JobId::from_slice(&k[prefix.len()..]) else {
                        continue;
                    };
                    if let Some(b) = self.jobs.get(id.as_bytes())? {
                        push(decode("jobs", &b)?, &mut out);
                    }
                }
            }
            None => {
                let iter = match after {
                    Some(a) => {
                        let mut k = a.as_bytes().to_vec();
                        k.push(0);
                        self.jobs.range(k..)
                    }
                    None => self.jobs.iter(),
                };
                for kv in iter {
                    if out.len() >= limit {
                        break;
                    }
                    let (_, b) = kv?;
                    push(decode("jobs", &b)?, &mut out);
                }
            }
        }
        let more = out.len() >= limit;
        Ok((out, if more { last } else { None }))
    }

    pub fn get_lease(&self, id: &LeaseId) -> Result<Option<Lease>> {
        self.leases
            .get(id.as_bytes())?
            .map(|b| decode("leases", &b))
            .transpose()
    }

    /// The leases of a job, oldest first.
    pub fn leases_of(&self, job: &JobId) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for kv in self.leases_by_job.scan_prefix(job.as_bytes()) {
            let (k, _) = kv?;
            if let Some(id) = LeaseId::from_slice(&k[16..])
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Every lease, oldest first.
    pub fn all_leases(&self) -> Result<Vec<Lease>> {
        self.leases
            .iter()
            .values()
            .map(|b| decode("leases", &b?))
            .collect()
    }

    /// Every job, oldest first.
    pub fn all_jobs(&self) -> Result<Vec<Job>> {
        self.jobs.iter().values().map(|b| decode("jobs", &b?)).collect()
    }

    /// One page of the leases `keep` accepts, oldest first, after `after`;
    /// with the id to continue after if there may be more.
    pub fn leases_page(
        &self,
        after: Option<LeaseId>,
        limit: usize,
        keep: impl Fn(&Lease) -> bool,
    ) -> Result<(Vec<Lease>, Option<LeaseId>)> {
        let iter = match after {
            Some(a) => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                self.leases.range(k..)
            }
            None => self.leases.iter(),
        };
        let mut out = Vec::new();
        let mut last = None;
        for kv in iter {
            if out.len() >= limit {
                break;
            }
            let (_, b) = kv?;
            let lease: Lease = decode("leases", &b)?;
            last = Some(lease.id);
            if keep(&lease) {
                out.push(lease);
            }
        }
        let more = out.len() >= limit;
        Ok((out, if more { last } else { None }))
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    // --- tenants and tokens -------------------------------------------------

    pub fn put_tenant(&self, t: &TenantRecord) -> Result<()> {
        self.tenants.insert(t.name.as_str(), encode(t))?;
        Ok(())
    }

    pub fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>> {
        self.tenants.get(name)?.map(|b| decode("tenants", &b)).transpose()
    }

    pub fn tenants(&self) -> Result<Vec<TenantRecord>> {
        self.tenants
            .iter()
            .values()
            .map(|b| decode("tenants", &b?))
            .collect()
    }

    pub fn put_token(&self, hash: &[u8; 32], t: &TokenRecord) -> Result<()> {
        self.tokens.insert(hash, encode(t))?;
        Ok(())
    }

    pub fn tokens(&self) -> Result<Vec<([u8; 32], TokenRecord)>> {
        let mut out = Vec::new();
        for kv in self.tokens.iter() {
            let (k, v) = kv?;
            let Ok(hash) = <[u8; 32]>::try_from(k.as_ref()) else {
                continue;
            };
            out.push((hash, decode("tokens", &v)?));
        }
        Ok(out)
    }

    // --- node drains ----------------------------------------------------------

    pub fn put_drain(&self, node: &NodeName, reason: &str) -> Result<()> {
        self.drains.insert(node.as_str(), reason.as_bytes())?;
        Ok(())
    }

    pub fn remove_drain(&self, node: &NodeName) -> Result<()> {
        self.drains.remove(node.as_str())?;
        Ok(())
    }

    /// Drained nodes and the reasons given.
    pub fn drains(&self) -> Result<Vec<(NodeName, String)>> {
        let mut out = Vec::new();
        for kv in self.drains.iter() {
            let (k, v) = kv?;
            if let Ok(name) = String::from_utf8_lossy(&k).parse::<NodeName>() {
                out.push((name, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        Ok(out)
    }

    /// Records when a node was last heard from.
    pub fn put_node_seen(&self, node: &NodeName, at: UnixMillis) -> Result<()> {
        self.nodes_seen.insert(node.as_str(), &at.0.to_be_bytes())?;
        Ok(())
    }

    /// When each node was last heard from.
    pub fn nodes_seen(&self) -> Result<Vec<(NodeName, UnixMillis)>> {
        let mut out = Vec::new();
        for kv in self.nodes_seen.iter() {
            let (k, v) = kv?;
            let (Ok(name), Ok(ms)) = (
                String::from_utf8_lossy(&k).parse::<NodeName>(),
                <[u8; 8]>::try_from(v.as_ref()),
            ) else {
                continue;
            };
            out.push((name, UnixMillis(u64::from_be_bytes(ms))));
        }
        Ok(out)
    }

    pub fn remove_token(&self, hash: &[u8; 32]) -> Result<bool> {
        Ok(self.tokens.remove(hash)?.is_some())
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
        self.plugin_blobs.insert(rec.sha256.as_bytes(), wasm)?;
        self.put_plugin_artifact(&rec.sha256, engine_key, artifact)?;
        self.plugins.insert(plugin_key(&rec.plugin_ref()), encode(rec))?;
        Ok(())
    }

    /// Stores a compiled artifact of a stored component.
    pub fn put_plugin_artifact(&self, sha256: &str, engine_key: &str, artifact: &[u8]) -> Result<()> {
        self.plugin_artifacts
            .insert(format!("{sha256}/{engine_key}"), artifact)?;
        Ok(())
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
    pub fn plugin_blob(&self, sha256: &str) -> Result<Option<sled::IVec>> {
        Ok(self.plugin_blobs.get(sha256.as_bytes())?)
    }

    /// A stored artifact compiled under `engine_key`.
    pub fn plugin_artifact(&self, sha256: &str, engine_key: &str) -> Result<Option<sled::IVec>> {
        Ok(self.plugin_artifacts.get(format!("{sha256}/{engine_key}"))?)
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
        self.plugin_blobs.remove(sha256.as_bytes())?;
        for key in self.plugin_artifacts.scan_prefix(format!("{sha256}/")).keys() {
            self.plugin_artifacts.remove(key?)?;
        }
        Ok(())
    }

    /// Binds a plugin, replacing the binding of the same scope and point.
    pub fn put_plugin_binding(&self, b: &BindingRecord) -> Result<()> {
        self.plugin_bindings
            .insert(binding_key(&b.scope, b.point), encode(b))?;
        Ok(())
    }

    /// Removes the binding of a scope and point; returns it if there was one.
    pub fn remove_plugin_binding(
        &self,
        scope: &Owner,
        point: ExtensionPoint,
    ) -> Result<Option<BindingRecord>> {
        self.plugin_bindings
            .remove(binding_key(scope, point))?
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

fn binding_key(scope: &Owner, point: ExtensionPoint) -> String {
    owner_key(scope, point.as_str())
}

#[cfg(test)]
mod tests;
