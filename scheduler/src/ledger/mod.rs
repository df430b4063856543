//! The ledger: jobs, leases, tenants and tokens in sled.
//!
//! Each change to a job and its leases is one sled transaction over every
//! tree it touches. Writes become durable at `flush`, which the engine calls
//! once per batch of commands before it acknowledges anything (group commit).

pub mod blobs;
mod jobs;
mod leases;
mod plugins;
mod tenants;

use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::accounting::budget::Budget;
use crate::accounting::check::{CheckReport, Derived, check, check_derived};
use crate::accounting::rollup::{
    Closing, Rollup, Span, decode_key, decode_span_start, decode_tally, encode_tally,
};
use crate::accounting::usage::{Dimension, Rows, Tally, UsageQuery, UsageRow};
use crate::accounting::{DAY_MS, HOUR_MS};
use crate::domain::plugin::{BindingRecord, ExtensionPoint, Layer, Owner, PluginRecord, PluginRef};
use crate::domain::{
    Job, JobId, JobState, Lease, LeaseId, LeaseState, NodeName, PluginPrices, TenantName, UnixMillis,
};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A plugin file could not be read or written.
    #[error("plugin file error: {0}")]
    Blob(String),
    #[error("corrupt record in tree {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        source: serde_json::Error,
    },
    #[error("corrupt key or value in tree {tree}")]
    CorruptKey { tree: &'static str },
    #[error("the ledger kept changing while usage was read; try again")]
    Busy,
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("data dir {path} was written by schema version {found}; this allot reads version {expected}")]
    Schema {
        path: String,
        found: String,
        expected: &'static str,
    },
}

impl crate::domain::ServiceError for LedgerError {
    /// A busy read may be retried; every other ledger error is the server's.
    fn code(&self) -> crate::domain::ErrorCode {
        match self {
            LedgerError::Busy => crate::domain::ErrorCode::Unavailable,
            _ => crate::domain::ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

const SCHEMA_VERSION: &str = "1";
/// The layout of the roll-ups; a data dir without this is rebuilt on open.
const ROLLUPS_KEY: &str = "rollups";
/// 6: costs in micros instead of minor units.
const ROLLUPS_VERSION: &str = "6";

/// A tenant record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: TenantName,
    pub created_at: UnixMillis,
    /// The idempotency key of the call that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
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
    /// An agent token's node: the only one it may register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    /// The idempotency key of the call that issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A submission's idempotency key (`SubmitJobRequest.request_id`): the
/// job it created and what was asked, kept for a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub tenant: TenantName,
    pub request_id: String,
    pub job: JobId,
    /// SHA-256 of what was asked (the validated spec), hex.
    pub fingerprint: String,
    pub at: UnixMillis,
}

impl RequestRecord {
    /// `tenant ++ NUL ++ request id`.
    pub fn key(&self) -> Vec<u8> {
        request_key(&self.tenant, &self.request_id)
    }
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
    /// Leases not closed yet (key: lease id).
    leases_open: sled::Tree,
    /// Closed leases by the UTC hours they overlap (key: hour ++ lease id).
    lease_hours: sled::Tree,
    /// Usage per hour and cell (see `accounting::rollup`).
    rollups: sled::Tree,
    /// Closed leases not added to the roll-ups yet (key: lease id).
    unrolled: sled::Tree,
    /// One roll-up at a time.
    rolling: std::sync::Arc<std::sync::Mutex<()>>,
    budgets: sled::Tree,
    /// Queues made over the API, by name.
    queues: sled::Tree,
    meta: sled::Tree,
    /// Policy plugins by owner and name ([`PluginRecord`]).
    plugins: sled::Tree,
    /// Plugin components and compiled artifacts, as files
    /// (`<data-dir>/plugins/`, see [`blobs`]).
    blobs: blobs::Blobs,
    /// Plugin bindings by scope, layer and extension point ([`BindingRecord`]).
    plugin_bindings: sled::Tree,
    /// Idempotency keys of submissions ([`RequestRecord`]), for a day.
    requests: sled::Tree,
    /// Roll-up seeks of one tenant's reports, for tests of their cost.
    #[cfg(test)]
    pub(crate) seeks: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Fault injection for tests: while set, job and budget writes fail as
    /// a full or broken disk would make them fail.
    #[cfg(test)]
    pub(crate) fail_writes: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Fault injection for tests: each flush takes this many more
    /// milliseconds, as on a slow disk.
    #[cfg(test)]
    pub(crate) flush_delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The plugin files' directory, under the data dir.
pub const PLUGIN_DIR: &str = "plugins";

/// The names of the trees the database holds.
fn db_trees(db: &sled::Db) -> Result<Vec<String>> {
    Ok(db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

fn blob_error(e: std::io::Error) -> LedgerError {
    LedgerError::Blob(e.to_string())
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

/// A transaction's result: committed, a storage error, or refused (a
/// transaction that aborts says why).
fn committed(r: std::result::Result<(), TransactionError<&'static str>>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(e)) => Err(e.into()),
        Err(TransactionError::Abort(why)) => Err(LedgerError::Refused(why)),
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("ledger records always serialize")
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| LedgerError::Corrupt { tree, source })
}

fn hour_lease_key(hour: UnixMillis, lease: &LeaseId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&hour.0.to_be_bytes());
    k[8..].copy_from_slice(lease.as_bytes());
    k
}

fn job_lease_key(job: &JobId, lease: &LeaseId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(job.as_bytes());
    k[16..].copy_from_slice(lease.as_bytes());
    k
}

fn tenant_key(tenant: &TenantName, job: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.as_str().len() + 17);
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(job.as_bytes());
    k
}

fn request_key(tenant: &TenantName, request_id: &str) -> Vec<u8> {
    let mut k = tenant.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(request_id.as_bytes());
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
        let ledger = Ledger {
            jobs: db.open_tree("jobs")?,
            jobs_active: db.open_tree("jobs_active")?,
            jobs_by_tenant: db.open_tree("jobs_by_tenant")?,
            leases: db.open_tree("leases")?,
            leases_by_job: db.open_tree("leases_by_job")?,
            tenants: db.open_tree("tenants")?,
            tokens: db.open_tree("tokens")?,
            drains: db.open_tree("drains")?,
            nodes_seen: db.open_tree("nodes_seen")?,
            leases_open: db.open_tree("leases_open")?,
            lease_hours: db.open_tree("lease_hours")?,
            rollups: db.open_tree("rollups")?,
            unrolled: db.open_tree("unrolled")?,
            rolling: Default::default(),
            budgets: db.open_tree("budgets")?,
            queues: db.open_tree("queues")?,
            meta,
            plugins: db.open_tree("plugins")?,
            blobs: blobs::Blobs::open(&dir.join(PLUGIN_DIR)).map_err(blob_error)?,
            plugin_bindings: db.open_tree("plugin_bindings")?,
            requests: db.open_tree("requests")?,
            db,
            #[cfg(test)]
            seeks: Default::default(),
            #[cfg(test)]
            fail_writes: Default::default(),
            #[cfg(test)]
            flush_delay_ms: Default::default(),
        };
        if ledger.meta.get(ROLLUPS_KEY)?.as_deref() != Some(ROLLUPS_VERSION.as_bytes()) {
            ledger.rebuild_rollups()?;
        }
        // Leases a crash left closed but not rolled up.
        ledger.roll_up()?;
        ledger.migrate_plugin_blobs(&db_trees(&ledger.db)?)?;
        let kept: HashSet<String> = ledger.plugins()?.into_iter().map(|p| p.sha256).collect();
        let swept = ledger.blobs.sweep(&kept).map_err(blob_error)?;
        if swept > 0 {
            tracing::info!(
                swept,
                "removed plugin files no plugin names (a crash mid-upload or mid-removal)"
            );
        }
        Ok(ledger)
    }

    /// A write refused by the tests' fault injection (nothing outside tests).
    #[inline]
    pub(crate) fn injected_fault(&self) -> Result<()> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(LedgerError::Sled(sled::Error::Io(std::io::Error::other(
                "injected write failure",
            ))));
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        #[cfg(test)]
        {
            let delay = self.flush_delay_ms.load(std::sync::atomic::Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
        }
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
