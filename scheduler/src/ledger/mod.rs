//! The ledger: jobs, leases, tenants and tokens in sled.
//!
//! Each change to a job and its leases is one sled transaction over every
//! tree it touches. Writes become durable at `flush`, which the engine calls
//! once per batch of commands before it acknowledges anything (group commit).

pub mod blobs;

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

fn request_key(tenant: &TenantName, request_id: &str) -> Vec<u8> {
    let mut k = tenant.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(request_id.as_bytes());
    k
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

fn tenant_key(tenant: &TenantName, job: &JobId) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.as_str().len() + 17);
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(job.as_bytes());
    k
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
            meta,
            plugins: db.open_tree("plugins")?,
            blobs: blobs::Blobs::open(&dir.join(PLUGIN_DIR)).map_err(blob_error)?,
            plugin_bindings: db.open_tree("plugin_bindings")?,
            requests: db.open_tree("requests")?,
            db,
            #[cfg(test)]
            seeks: Default::default(),
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

    /// Moves plugin components and artifacts that a version before the blob
    /// files kept in sled (trees `plugin_blobs`, `plugin_artifacts`) to
    /// files, then drops those trees.
    fn migrate_plugin_blobs(&self, trees: &[String]) -> Result<()> {
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

    /// Rebuilds the open-lease set, the hour index and the roll-ups from the
    /// leases (a data dir from before they existed, or a changed layout).
    pub fn rebuild_rollups(&self) -> Result<()> {
        let started = std::time::Instant::now();
        self.meta.remove(ROLLUPS_KEY)?;
        for tree in [
            &self.leases_open,
            &self.lease_hours,
            &self.rollups,
            &self.unrolled,
        ] {
            tree.clear()?;
        }
        let mut sums: BTreeMap<Vec<u8>, Tally> = BTreeMap::new();
        let mut n = 0usize;
        for v in self.leases.iter().values() {
            let lease: Lease = decode("leases", &v?)?;
            n += 1;
            if lease.state != LeaseState::Closed {
                self.leases_open.insert(lease.id.as_bytes(), &[])?;
                continue;
            }
            let closing = Closing::of(&lease);
            for (part, _) in &closing.parts {
                self.lease_hours
                    .insert(hour_lease_key(part.hour, &lease.id), &[])?;
            }
            for (k, tally) in closing.additions() {
                sums.entry(k).or_default().add(&tally);
            }
        }
        for (k, t) in &sums {
            self.rollups.insert(k.as_slice(), encode_tally(t).as_slice())?;
        }
        self.meta.insert(ROLLUPS_KEY, ROLLUPS_VERSION)?;
        self.db.flush()?;
        tracing::info!(
            leases = n,
            cells = sums.len(),
            ms = started.elapsed().as_millis() as u64,
            "usage roll-ups rebuilt"
        );
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Writes a job and the given leases (new or changed) in one transaction.
    /// A lease closing joins the hour index and is marked for the roll-ups
    /// (once: writing a closed lease again adds nothing); `roll_up` adds the
    /// marked leases.
    pub fn put_job(&self, job: &Job, leases: &[&Lease]) -> Result<()> {
        self.put_job_for(job, leases, None)
    }

    /// `put_job` of a job created by a request with an idempotency key:
    /// the key is recorded in the same transaction, so a retried request
    /// finds the job whenever the job exists.
    pub fn put_job_for(&self, job: &Job, leases: &[&Lease], request: Option<&RequestRecord>) -> Result<()> {
        struct Write {
            id: LeaseId,
            bytes: Vec<u8>,
            /// Hour-index keys, if it is closed.
            closing: Option<Vec<[u8; 24]>>,
        }
        let job_bytes = encode(job);
        let request_write = request.map(|r| (r.key(), encode(r)));
        let writes: Vec<Write> = leases
            .iter()
            .map(|l| Write {
                id: l.id,
                bytes: encode(*l),
                closing: (l.state == LeaseState::Closed).then(|| {
                    Closing::of(l)
                        .parts
                        .iter()
                        .map(|(p, _)| hour_lease_key(p.hour, &l.id))
                        .collect()
                }),
            })
            .collect();
        let result: Result<(), TransactionError<&'static str>> = (
            &self.jobs,
            &self.jobs_active,
            &self.jobs_by_tenant,
            &self.leases,
            &self.leases_by_job,
            &self.leases_open,
            &self.lease_hours,
            &self.unrolled,
            &self.requests,
        )
            .transaction(
                |(jobs, active, by_tenant, lease_tree, by_job, open, hours, unrolled, requests)| {
                    if let Some((key, value)) = &request_write {
                        requests.insert(key.as_slice(), value.as_slice())?;
                    }
                    jobs.insert(job.id.as_bytes(), job_bytes.as_slice())?;
                    if job.state.is_final() {
                        active.remove(job.id.as_bytes())?;
                    } else {
                        active.insert(job.id.as_bytes(), &[])?;
                    }
                    by_tenant.insert(tenant_key(&job.spec.tenant, &job.id), &[])?;
                    for w in &writes {
                        let id = w.id.as_bytes();
                        // New, or open until now: closing it now counts.
                        let was_open = lease_tree.get(id)?.is_none() || open.get(id)?.is_some();
                        lease_tree.insert(id, w.bytes.as_slice())?;
                        by_job.insert(&job_lease_key(&job.id, &w.id), &[])?;
                        match &w.closing {
                            None => {
                                open.insert(id, &[])?;
                            }
                            Some(hour_keys) => {
                                open.remove(id)?;
                                if was_open {
                                    for k in hour_keys {
                                        hours.insert(k, &[])?;
                                    }
                                    unrolled.insert(id, &[])?;
                                }
                            }
                        }
                    }
                    Ok(())
                },
            );
        committed(result)
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

    /// Adds the closed leases marked by `put_job` to the roll-ups and clears
    /// their marks, in one transaction: one read-modify-write per cell for
    /// however many leases closed. The engine calls it once per turn, before
    /// the turn's flush. Returns how many leases it rolled up.
    pub fn roll_up(&self) -> Result<usize> {
        let _one = self.rolling.lock().unwrap_or_else(|e| e.into_inner());
        // Leases waiting for a pricing plugin's prices wait here too.
        let marked: Vec<Lease> = self
            .unrolled_leases()?
            .into_iter()
            .filter(|l| l.plugin_prices.as_ref().is_none_or(|p| !p.pending))
            .collect();
        if marked.is_empty() {
            return Ok(0);
        }
        let mut sums: BTreeMap<Vec<u8>, Tally> = BTreeMap::new();
        for lease in &marked {
            for (k, tally) in Closing::of(lease).additions() {
                sums.entry(k).or_default().add(&tally);
            }
        }
        // The cells' new values are worked out before the transaction, which
        // then only writes: roll-ups are written here alone, one at a time
        // (`rolling`), so nothing changes them in between.
        let mut cells = Vec::with_capacity(sums.len());
        for (k, t) in sums {
            let mut sum = match self.rollups.get(&k)? {
                Some(b) => decode_tally(&b).ok_or(LedgerError::CorruptKey { tree: "rollups" })?,
                None => Tally::default(),
            };
            sum.add(&t);
            cells.push((k, encode_tally(&sum)));
        }
        let result: Result<(), TransactionError<&'static str>> =
            (&self.rollups, &self.unrolled).transaction(|(rollups, unrolled)| {
                for (k, v) in &cells {
                    rollups.insert(k.as_slice(), v.as_slice())?;
                }
                for l in &marked {
                    unrolled.remove(l.id.as_bytes())?;
                }
                Ok(())
            });
        committed(result).map(|()| marked.len())
    }

    /// Records a pricing plugin's prices for a closed lease still waiting
    /// for them (and so not rolled up yet: `roll_up` skips it until then).
    pub fn set_plugin_prices(&self, id: &LeaseId, prices: PluginPrices) -> Result<()> {
        let result: Result<(), TransactionError<&'static str>> =
            (&self.leases, &self.unrolled).transaction(|(leases, unrolled)| {
                let Some(bytes) = leases.get(id.as_bytes())? else {
                    return Err(ConflictableTransactionError::Abort("no such lease"));
                };
                let mut lease: Lease = serde_json::from_slice(&bytes)
                    .map_err(|_| ConflictableTransactionError::Abort("corrupt lease"))?;
                if unrolled.get(id.as_bytes())?.is_none()
                    || !lease.plugin_prices.as_ref().is_some_and(|p| p.pending)
                {
                    return Err(ConflictableTransactionError::Abort(
                        "the lease is not waiting for prices",
                    ));
                }
                lease.plugin_prices = Some(prices.clone());
                leases.insert(id.as_bytes(), encode(&lease))?;
                Ok(())
            });
        committed(result)
    }

    /// Closed leases not rolled up yet.
    pub fn unrolled_leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for k in self.unrolled.iter().keys() {
            if let Some(id) = LeaseId::from_slice(&k?)
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Leases not closed yet.
    pub fn open_leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for k in self.leases_open.iter().keys() {
            if let Some(id) = LeaseId::from_slice(&k?)
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Closed leases that overlap the UTC hours `[from_hour, to_hour]`, each once.
    pub fn closed_leases_in_hours(&self, from_hour: UnixMillis, to_hour: UnixMillis) -> Result<Vec<Lease>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let start = from_hour.0.to_be_bytes();
        let end = to_hour.0.saturating_add(1).to_be_bytes();
        for k in self.lease_hours.range(start..end).keys() {
            let k = k?;
            if let Some(id) = LeaseId::from_slice(&k[8..])
                && seen.insert(id)
                && let Some(l) = self.get_lease(&id)?
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Usage over a window, from the roll-ups where the grouping allows and
    /// from the window's own leases where it does not; open leases count up
    /// to `now`. Never a scan of every lease.
    pub fn usage(&self, q: &UsageQuery, now: UnixMillis) -> Result<Vec<UsageRow>> {
        // Open leases and closed ones not rolled up yet are read one by one.
        // A lease that moves on (closes, or is rolled up) during the read
        // would be counted twice or not at all: read again if either set
        // lost a member meanwhile.
        let ids = |tree: &sled::Tree| -> HashSet<LeaseId> {
            tree.iter()
                .keys()
                .filter_map(|k| k.ok().and_then(|k| LeaseId::from_slice(&k)))
                .collect()
        };
        for _ in 0..8 {
            let open = self.open_leases()?;
            let unrolled = self.unrolled_leases()?;
            let rows = self.usage_once(q, now, &open, &unrolled)?;
            let (open_now, unrolled_now) = (ids(&self.leases_open), ids(&self.unrolled));
            if open.iter().all(|l| open_now.contains(&l.id))
                && unrolled.iter().all(|l| unrolled_now.contains(&l.id))
            {
                return Ok(rows);
            }
        }
        Err(LedgerError::Busy)
    }

    fn usage_once(
        &self,
        q: &UsageQuery,
        now: UnixMillis,
        open: &[Lease],
        unrolled: &[Lease],
    ) -> Result<Vec<UsageRow>> {
        let mut rows = Rows::new(q);
        for lease in open.iter().chain(unrolled) {
            rows.add_lease(lease, now);
        }
        let pending: HashSet<LeaseId> = unrolled.iter().map(|l| l.id).collect();
        if q.to <= q.from {
            return Ok(rows.finish());
        }
        let first_hour = UnixMillis(q.from.0 - q.from.0 % HOUR_MS);
        let last_hour = UnixMillis((q.to.0 - 1) - (q.to.0 - 1) % HOUR_MS);
        let Some(rollup) = Rollup::for_grouping(&q.group_by, q.tenant.is_some()) else {
            for lease in self.closed_leases_in_hours(first_hour, last_hour)? {
                if !pending.contains(&lease.id) {
                    rows.add_lease(&lease, now);
                }
            }
            return Ok(rows.finish());
        };
        // Whole hours inside the window come from the roll-up (whole days
        // from its day cells, unless the report is by hour); the partial
        // hours at its ends from their leases.
        let whole_from = UnixMillis(q.from.0.div_ceil(HOUR_MS) * HOUR_MS);
        let whole_to = UnixMillis(q.to.0 - q.to.0 % HOUR_MS);
        let mut edges = Vec::new();
        if whole_from >= whole_to {
            edges.push((first_hour, last_hour));
        } else {
            if first_hour < whole_from {
                edges.push((first_hour, first_hour));
            }
            if whole_to <= last_hour {
                edges.push((whole_to, last_hour));
            }
            let days = if q.group_by.contains(&Dimension::Hour) {
                None
            } else {
                let from = UnixMillis(whole_from.0.div_ceil(DAY_MS) * DAY_MS);
                let to = Span::Day.start(whole_to);
                (from < to).then_some((from, to))
            };
            let stretches = match days {
                None => vec![(Span::Hour, whole_from, whole_to)],
                Some((from, to)) => vec![
                    (Span::Hour, whole_from, from),
                    (Span::Day, from, to),
                    (Span::Hour, to, whole_to),
                ],
            };
            for (span, from, to) in stretches {
                self.read_rollup(rollup, span, from, to, q.tenant.as_ref(), &mut rows)?;
            }
        }
        for (a, b) in edges {
            for lease in self.closed_leases_in_hours(a, b)? {
                if !pending.contains(&lease.id) {
                    rows.add_lease_within(&lease, now, a, UnixMillis(b.0 + HOUR_MS));
                }
            }
        }
        Ok(rows.finish())
    }

    /// Adds the cells of `rollup` of each `span` in `[from, to)` (span
    /// aligned) to `rows`: one tenant's prefix per span, or one range.
    fn read_rollup(
        &self,
        rollup: Rollup,
        span: Span,
        from: UnixMillis,
        to: UnixMillis,
        tenant: Option<&TenantName>,
        rows: &mut Rows,
    ) -> Result<()> {
        let mut add = |kv: sled::Result<(sled::IVec, sled::IVec)>| -> Result<()> {
            let (k, v) = kv?;
            let (Some((at, cell)), Some(t)) = (decode_key(&k), decode_tally(&v)) else {
                return Err(LedgerError::CorruptKey { tree: "rollups" });
            };
            rows.add(at, &cell, &t);
            Ok(())
        };
        match tenant {
            // One tenant's cells of each span are under `tag, start, tenant`:
            // seek from populated span to populated span (never step through
            // empty ones), so the cost follows the data, not the window.
            Some(tenant) => {
                let end = rollup.prefix(span, to);
                let mut at = from;
                while at < to {
                    let want = rollup.tenant_prefix(span, at, tenant.as_str());
                    let Some(kv) = self.rollups.range(want.as_slice()..end.as_slice()).next() else {
                        break;
                    };
                    let (k, _) = kv?;
                    #[cfg(test)]
                    self.seeks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let cell_at = decode_span_start(&k).ok_or(LedgerError::CorruptKey { tree: "rollups" })?;
                    if cell_at > at {
                        // Nothing of this tenant's in the spans before.
                        at = cell_at;
                        continue;
                    }
                    if k.starts_with(&want) {
                        for kv in self.rollups.scan_prefix(&want) {
                            add(kv)?;
                        }
                    }
                    at = UnixMillis(at.0 + span.ms());
                }
            }
            None => {
                for kv in self
                    .rollups
                    .range(rollup.prefix(span, from)..rollup.prefix(span, to))
                {
                    add(kv)?;
                }
            }
        }
        Ok(())
    }

    /// The first UTC hour in `[from_hour, to_hour)` with a closed lease in
    /// it, if any: exports step from hour to hour with data, not through
    /// every hour of their window.
    pub fn next_hour_with_leases(
        &self,
        from_hour: UnixMillis,
        to_hour: UnixMillis,
    ) -> Result<Option<UnixMillis>> {
        if from_hour >= to_hour {
            return Ok(None);
        }
        let start = from_hour.0.to_be_bytes();
        let end = to_hour.0.to_be_bytes();
        match self.lease_hours.range(start..end).keys().next() {
            None => Ok(None),
            Some(k) => {
                let k = k?;
                let hour = k
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or(LedgerError::CorruptKey { tree: "lease_hours" })?;
                Ok(Some(UnixMillis(hour)))
            }
        }
    }

    /// `allot ledger check`: every invariant, over every job and lease, and
    /// the roll-ups and indexes against the leases.
    pub fn check(&self, now: UnixMillis) -> Result<CheckReport> {
        let jobs = self.all_jobs()?;
        let leases = self.all_leases()?;
        let mut report = check(&jobs, &leases, now);
        let mut derived = Derived {
            rollups: HashMap::new(),
            open: HashSet::new(),
            hours: HashSet::new(),
            unrolled: HashSet::new(),
        };
        for k in self.unrolled.iter().keys() {
            let id = LeaseId::from_slice(&k?).ok_or(LedgerError::CorruptKey { tree: "unrolled" })?;
            derived.unrolled.insert(id);
        }
        for kv in self.rollups.iter() {
            let (k, v) = kv?;
            let t = decode_tally(&v).ok_or(LedgerError::CorruptKey { tree: "rollups" })?;
            derived.rollups.insert(k.to_vec(), t);
        }
        for k in self.leases_open.iter().keys() {
            derived
                .open
                .insert(LeaseId::from_slice(&k?).ok_or(LedgerError::CorruptKey { tree: "leases_open" })?);
        }
        for k in self.lease_hours.iter().keys() {
            let k = k?;
            let hour = u64::from_be_bytes(
                k[..8]
                    .try_into()
                    .map_err(|_| LedgerError::CorruptKey { tree: "lease_hours" })?,
            );
            let id = LeaseId::from_slice(&k[8..]).ok_or(LedgerError::CorruptKey { tree: "lease_hours" })?;
            derived.hours.insert((UnixMillis(hour), id));
        }
        report.problems.extend(check_derived(&leases, &derived));
        Ok(report)
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Every idempotency key on record.
    pub fn requests(&self) -> Result<Vec<RequestRecord>> {
        let mut out = Vec::new();
        for kv in self.requests.iter() {
            let (_, v) = kv?;
            out.push(decode("requests", &v)?);
        }
        Ok(out)
    }

    /// Forgets idempotency keys (they expire after a day).
    pub fn remove_requests(&self, expired: &[RequestRecord]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for r in expired {
            batch.remove(r.key());
        }
        Ok(self.requests.apply_batch(batch)?)
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

    // --- budgets --------------------------------------------------------------

    pub fn put_budget(&self, b: &Budget) -> Result<()> {
        self.budgets.insert(b.tenant.as_str(), encode(b))?;
        Ok(())
    }

    pub fn remove_budget(&self, tenant: &TenantName) -> Result<()> {
        self.budgets.remove(tenant.as_str())?;
        Ok(())
    }

    pub fn budgets(&self) -> Result<Vec<Budget>> {
        self.budgets
            .iter()
            .values()
            .map(|b| decode("budgets", &b?))
            .collect()
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

#[cfg(test)]
mod tests;
