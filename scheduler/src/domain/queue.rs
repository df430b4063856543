//! Queues (Slurm's partitions, Kueue's ClusterQueues): where a job waits,
//! which nodes it may run on, its time limits, its tier, who may use it and
//! how much of it one tenant may hold.

use std::collections::BTreeMap;

use allot_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::ids::{QueueName, TenantName};
use super::job::JobSpec;
use super::units::{Millis, Share, UnixMillis};
use super::validate::{self, Violation, quote};

/// Node labels a queue may select on.
pub const QUEUE_LABELS: usize = 64;
/// Tenants a queue may name.
pub const QUEUE_TENANTS: usize = 1024;

/// What one tenant may hold in a queue at once; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueLimits {
    /// GPUs its placed jobs hold (shares and slices count their fraction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Jobs placed (starting or running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_jobs: Option<u32>,
    /// Jobs pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_jobs: Option<u32>,
}

/// Where a queue is defined, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueSource {
    /// Made over the API (`allot queue create`): stored in the ledger.
    #[default]
    Api,
    /// The server's config file (`[[queues]]`): read at start, changed there.
    Config,
    /// The queue `default`, there while no queue is marked default and
    /// none is named `default`.
    Builtin,
}

impl QueueSource {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueSource::Api => "api",
            QueueSource::Config => "config",
            QueueSource::Builtin => "builtin",
        }
    }
}

/// A queue's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: QueueName,
    /// Its nodes carry all of these (empty: every node).
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// GPU models its jobs may use (empty: any).
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// A job that asks for no time limit gets this (else `max_time_limit`).
    #[serde(default)]
    pub default_time_limit: Option<Millis>,
    /// The longest time limit a job may ask for.
    #[serde(default)]
    pub max_time_limit: Option<Millis>,
    /// Higher tiers are considered first, whatever the jobs' priorities.
    #[serde(default)]
    pub priority_tier: i32,
    /// Tenants that may submit (empty: every tenant).
    #[serde(default)]
    pub tenants: Vec<TenantName>,
    #[serde(default)]
    pub per_tenant: QueueLimits,
    /// Jobs that name no queue go here.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub source: QueueSource,
    #[serde(default)]
    pub created_at: UnixMillis,
}

/// Why a queue does not take a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The spec does not fit the queue: the field and why.
    Invalid(Violation),
    /// The tenant may not use the queue.
    NotAllowed(String),
}

impl QueueDef {
    /// The queue `default` when nobody defined one: every node, every
    /// tenant, no limits.
    pub fn builtin() -> QueueDef {
        QueueDef {
            name: QueueName::default_queue(),
            node_labels: BTreeMap::new(),
            gpu_models: Vec::new(),
            default_time_limit: None,
            max_time_limit: None,
            priority_tier: 0,
            tenants: Vec::new(),
            per_tenant: QueueLimits::default(),
            default: true,
            source: QueueSource::Builtin,
            created_at: UnixMillis(0),
        }
    }

    pub fn admits(&self, tenant: &TenantName) -> bool {
        self.tenants.is_empty() || self.tenants.contains(tenant)
    }

    /// The time limit a job without one gets (Slurm: DefaultTime, else MaxTime).
    pub fn time_limit_for_unlimited(&self) -> Option<Millis> {
        self.default_time_limit.or(self.max_time_limit)
    }

    /// Takes a job into the queue: refuses what the queue does not allow,
    /// names the queue in the spec and gives it the queue's default time
    /// limit when it has none.
    pub fn take(&self, spec: &mut JobSpec) -> Result<(), Refusal> {
        if !self.admits(&spec.tenant) {
            return Err(Refusal::NotAllowed(format!(
                "tenant {} may not submit to queue {}",
                spec.tenant, self.name
            )));
        }
        match (spec.time_limit, self.max_time_limit) {
            (Some(asked), Some(max)) if asked > max => {
                return Err(Refusal::Invalid(Violation {
                    field: "spec.time_limit_ms",
                    description: format!(
                        "{asked} is longer than queue {}'s maximum time limit of {max}",
                        self.name
                    ),
                }));
            }
            (None, _) => spec.time_limit = self.time_limit_for_unlimited(),
            _ => {}
        }
        for (k, v) in &spec.constraints.node_labels {
            if let Some(ours) = self.node_labels.get(k).filter(|ours| *ours != v) {
                return Err(Refusal::Invalid(Violation {
                    field: "spec.node_labels",
                    description: format!(
                        "the job asks for nodes with {k}={v}, but queue {}'s nodes all have {k}={ours}",
                        self.name
                    ),
                }));
            }
        }
        let (mine, theirs) = (&spec.constraints.gpu_models, &self.gpu_models);
        if !mine.is_empty() && !theirs.is_empty() && !mine.iter().any(|m| theirs.contains(m)) {
            return Err(Refusal::Invalid(Violation {
                field: "spec.gpu_models",
                description: format!(
                    "none of the job's GPU models ({}) is one queue {} has ({})",
                    mine.join(", "),
                    self.name,
                    theirs.join(", ")
                ),
            }));
        }
        spec.queue = Some(self.name.clone());
        Ok(())
    }

    /// The GPU models a job of this queue may use: its own, kept to the
    /// queue's (empty: any).
    pub fn models_for(&self, job: &[String]) -> Vec<String> {
        match (job.is_empty(), self.gpu_models.is_empty()) {
            (_, true) => job.to_vec(),
            (true, false) => self.gpu_models.clone(),
            (false, false) => job
                .iter()
                .filter(|m| self.gpu_models.contains(m))
                .cloned()
                .collect(),
        }
    }

    /// The GPUs a tenant may hold in it, as an exact share.
    pub fn gpu_cap(&self) -> Option<Share> {
        self.per_tenant
            .gpus
            .and_then(|n| Share::new(n.into(), 1).or(Some(Share::ZERO)))
    }

    /// Checks the bounds of a queue's labels, models and time limits
    /// together (its name is checked by its type).
    fn check(&self) -> Result<(), Violation> {
        let v = |field: &'static str, d: String| Violation {
            field,
            description: d,
        };
        // Label and tenant counts and zero time limits: refused by
        // `from_pb` before anything is copied.
        for (k, val) in &self.node_labels {
            validate::key("queue.node_labels", k, "label")?;
            validate::value("queue.node_labels", k, val, "label")?;
        }
        if self.gpu_models.len() > validate::GPU_MODELS {
            return Err(v(
                "queue.gpu_models",
                format!(
                    "at most {} GPU models, got {}",
                    validate::GPU_MODELS,
                    self.gpu_models.len()
                ),
            ));
        }
        for m in &self.gpu_models {
            if m.is_empty() || m.len() > validate::GPU_MODEL_BYTES || m.chars().any(|c| c.is_control()) {
                return Err(v(
                    "queue.gpu_models",
                    format!(
                        "GPU model {} must be 1 to {} printable characters",
                        quote(m),
                        validate::GPU_MODEL_BYTES
                    ),
                ));
            }
        }
        if let (Some(d), Some(m)) = (self.default_time_limit, self.max_time_limit)
            && d > m
        {
            return Err(v(
                "queue.default_time_limit_ms",
                format!("{d} is longer than the queue's maximum time limit of {m}"),
            ));
        }
        Ok(())
    }

    /// The queue as the API shows it.
    pub fn to_pb(&self) -> pb::Queue {
        pb::Queue {
            name: self.name.to_string(),
            node_labels: self.node_labels.clone().into_iter().collect(),
            gpu_models: self.gpu_models.clone(),
            default_time_limit_ms: self.default_time_limit.map(|m| m.0 as i64),
            max_time_limit_ms: self.max_time_limit.map(|m| m.0 as i64),
            priority_tier: self.priority_tier,
            tenants: self.tenants.iter().map(ToString::to_string).collect(),
            per_tenant: Some(pb::QueueLimits {
                gpus: self.per_tenant.gpus,
                running_jobs: self.per_tenant.running_jobs,
                pending_jobs: self.per_tenant.pending_jobs,
            }),
            default: self.default,
            source: self.source.as_str().into(),
            created_at_unix_ms: self.created_at.0 as i64,
        }
    }

    /// A queue from the API, checked; `source` and `created_at` are the
    /// caller's to set.
    pub fn from_pb(q: &pb::Queue) -> Result<QueueDef, Violation> {
        let v = |field: &'static str, d: String| Violation {
            field,
            description: d,
        };
        let name: QueueName = q.name.parse().map_err(|e: String| v("queue.name", e))?;
        let millis = |field: &'static str, ms: Option<i64>| -> Result<Option<Millis>, Violation> {
            match ms {
                None => Ok(None),
                Some(ms) if ms <= 0 => Err(v(field, format!("must be > 0 when present, got {ms}"))),
                Some(ms) => Ok(Some(Millis(ms as u64))),
            }
        };
        if q.node_labels.len() > QUEUE_LABELS {
            return Err(v(
                "queue.node_labels",
                format!("at most {QUEUE_LABELS} labels, got {}", q.node_labels.len()),
            ));
        }
        if q.tenants.len() > QUEUE_TENANTS {
            return Err(v(
                "queue.tenants",
                format!("at most {QUEUE_TENANTS} tenants, got {}", q.tenants.len()),
            ));
        }
        let mut tenants = Vec::with_capacity(q.tenants.len());
        for t in &q.tenants {
            let t: TenantName = t.parse().map_err(|e: String| v("queue.tenants", e))?;
            if !tenants.contains(&t) {
                tenants.push(t);
            }
        }
        let mut gpu_models: Vec<String> = Vec::new();
        for m in &q.gpu_models {
            if !gpu_models.contains(m) {
                gpu_models.push(m.clone());
            }
        }
        let limits = q.per_tenant.unwrap_or_default();
        let def = QueueDef {
            name,
            node_labels: q.node_labels.clone().into_iter().collect(),
            gpu_models,
            default_time_limit: millis("queue.default_time_limit_ms", q.default_time_limit_ms)?,
            max_time_limit: millis("queue.max_time_limit_ms", q.max_time_limit_ms)?,
            priority_tier: q.priority_tier,
            tenants,
            per_tenant: QueueLimits {
                gpus: limits.gpus,
                running_jobs: limits.running_jobs,
                pending_jobs: limits.pending_jobs,
            },
            default: q.default,
            source: QueueSource::Api,
            created_at: UnixMillis(0),
        };
        def.check()?;
        Ok(def)
    }
}

/// A queue as the server's config file writes it (`[[queues]]`):
///
/// ```toml
/// [[queues]]
/// name = "a100"
/// default = true
/// node_labels = { pool = "a100" }
/// gpu_models = ["A100-80GB"]
/// default_time = "1h"        # a job that asks for no time limit gets this
/// max_time = "2d"            # the longest a job may ask for
/// priority_tier = 1
/// tenants = ["team-a", "team-b"]   # empty or absent: every tenant
/// per_tenant = { gpus = 8, running_jobs = 16, pending_jobs = 1000 }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    pub name: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gpu_models: Vec<String>,
    pub default_time: Option<String>,
    pub max_time: Option<String>,
    #[serde(default)]
    pub priority_tier: i32,
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub per_tenant: QueueLimitsFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueLimitsFile {
    pub gpus: Option<u32>,
    pub running_jobs: Option<u32>,
    pub pending_jobs: Option<u32>,
}

impl QueueFile {
    /// The queues of a config file, checked as the API checks them, with
    /// at most one marked default and no name twice.
    pub fn defs(files: &[QueueFile]) -> Result<Vec<QueueDef>, String> {
        let mut out: Vec<QueueDef> = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let at = |e: String| format!("queues[{i}] ({}): {e}", f.name);
            let time = |key: &str, t: &Option<String>| -> Result<Option<i64>, String> {
                t.as_deref()
                    .map(|t| {
                        t.parse::<Millis>()
                            .map(|m| m.0 as i64)
                            .map_err(|e| at(format!("{key}: {e}")))
                    })
                    .transpose()
            };
            let pb = pb::Queue {
                name: f.name.clone(),
                node_labels: f.node_labels.clone().into_iter().collect(),
                gpu_models: f.gpu_models.clone(),
                default_time_limit_ms: time("default_time", &f.default_time)?,
                max_time_limit_ms: time("max_time", &f.max_time)?,
                priority_tier: f.priority_tier,
                tenants: f.tenants.clone(),
                per_tenant: Some(pb::QueueLimits {
                    gpus: f.per_tenant.gpus,
                    running_jobs: f.per_tenant.running_jobs,
                    pending_jobs: f.per_tenant.pending_jobs,
                }),
                default: f.default,
                source: String::new(),
                created_at_unix_ms: 0,
            };
            let mut def = QueueDef::from_pb(&pb).map_err(|v| at(v.to_string()))?;
            def.source = QueueSource::Config;
            if out.iter().any(|q| q.name == def.name) {
                return Err(at("defined twice".into()));
            }
            out.push(def);
        }
        let defaults: Vec<&str> = out
            .iter()
            .filter(|q| q.default)
            .map(|q| q.name.as_str())
            .collect();
        if defaults.len() > 1 {
            return Err(format!(
                "queues: only one queue may have default = true, got {}",
                defaults.join(", ")
            ));
        }
        Ok(out)
    }
}

/// The fields of [`pb::Queue`] an update may name.
pub const UPDATABLE: &[&str] = &[
    "node_labels",
    "gpu_models",
    "default_time_limit_ms",
    "max_time_limit_ms",
    "priority_tier",
    "tenants",
    "per_tenant",
    "per_tenant.gpus",
    "per_tenant.running_jobs",
    "per_tenant.pending_jobs",
    "default",
];

/// Every path of an update mask names a field an update may change.
pub fn check_mask(mask: &[String]) -> Result<(), Violation> {
    match mask.iter().find(|m| !UPDATABLE.contains(&m.as_str())) {
        None => Ok(()),
        Some(bad) => Err(Violation {
            field: "update_mask",
            description: format!(
                "{} is not a field an update may change (one of: {})",
                quote(bad),
                UPDATABLE.join(", ")
            ),
        }),
    }
}

/// `current` with the fields of `new` that `mask` names (all of them when
/// it is empty), checked as a whole. The name, source and creation time are
/// kept.
pub fn updated(current: &QueueDef, new: &pb::Queue, mask: &[String]) -> Result<QueueDef, Violation> {
    check_mask(mask)?;
    let all = mask.is_empty();
    let named = |f: &str| all || mask.iter().any(|m| m == f);
    let mut out = current.to_pb();
    if named("node_labels") {
        out.node_labels = new.node_labels.clone();
    }
    if named("gpu_models") {
        out.gpu_models = new.gpu_models.clone();
    }
    if named("default_time_limit_ms") {
        out.default_time_limit_ms = new.default_time_limit_ms;
    }
    if named("max_time_limit_ms") {
        out.max_time_limit_ms = new.max_time_limit_ms;
    }
    if named("priority_tier") {
        out.priority_tier = new.priority_tier;
    }
    if named("tenants") {
        out.tenants = new.tenants.clone();
    }
    let theirs = new.per_tenant.unwrap_or_default();
    let limits = out.per_tenant.get_or_insert_with(Default::default);
    if named("per_tenant") || named("per_tenant.gpus") {
        limits.gpus = theirs.gpus;
    }
    if named("per_tenant") || named("per_tenant.running_jobs") {
        limits.running_jobs = theirs.running_jobs;
    }
    if named("per_tenant") || named("per_tenant.pending_jobs") {
        limits.pending_jobs = theirs.pending_jobs;
    }
    if named("default") {
        out.default = new.default;
    }
    let mut def = QueueDef::from_pb(&out)?;
    def.source = current.source;
    def.created_at = current.created_at;
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobId;

    fn queue() -> pb::Queue {
        pb::Queue {
            name: "gpu-a".into(),
            node_labels: [("pool".to_string(), "a".to_string())].into_iter().collect(),
            gpu_models: vec!["A100-80GB".into(), "H100-80GB".into()],
            default_time_limit_ms: Some(3_600_000),
            max_time_limit_ms: Some(86_400_000),
            priority_tier: 2,
            tenants: vec!["team-a".into(), "team-a".into()],
            per_tenant: Some(pb::QueueLimits {
                gpus: Some(4),
                running_jobs: None,
                pending_jobs: Some(10),
            }),
            default: false,
            source: "ignored".into(),
            created_at_unix_ms: 99,
        }
    }

    #[test]
    fn a_queue_round_trips_and_bad_fields_are_named() {
        let def = QueueDef::from_pb(&queue()).unwrap();
        assert_eq!(def.tenants.len(), 1, "a tenant named twice is kept once");
        assert_eq!(def.source, QueueSource::Api);
        let mut back = def.to_pb();
        back.source = "ignored".into();
        back.created_at_unix_ms = 99;
        let mut want = queue();
        want.tenants.pop();
        assert_eq!(back, want);

        let bad = |edit: &dyn Fn(&mut pb::Queue), field: &str| {
            let mut q = queue();
            edit(&mut q);
            let v = QueueDef::from_pb(&q).unwrap_err();
            assert_eq!(v.field, field, "{}", v.description);
        };
        bad(&|q| q.name = "Bad Name".into(), "queue.name");
        bad(&|q| q.name.clear(), "queue.name");
        bad(&|q| q.tenants = vec!["no way".into()], "queue.tenants");
        bad(
            &|q| q.default_time_limit_ms = Some(0),
            "queue.default_time_limit_ms",
        );
        bad(&|q| q.max_time_limit_ms = Some(-5), "queue.max_time_limit_ms");
        bad(
            &|q| q.default_time_limit_ms = Some(86_400_001),
            "queue.default_time_limit_ms",
        );
        bad(&|q| q.gpu_models = vec![String::new()], "queue.gpu_models");
        bad(
            &|q| q.node_labels = [("a=b".to_string(), "c".to_string())].into_iter().collect(),
            "queue.node_labels",
        );
        bad(
            &|q| q.tenants = (0..=QUEUE_TENANTS).map(|i| format!("t{i}")).collect(),
            "queue.tenants",
        );
    }

    fn spec(tenant: &str) -> JobSpec {
        let mut j = crate::domain::Job::for_tests(JobId::new_v7());
        j.spec.tenant = tenant.parse().unwrap();
        j.spec
    }

    #[test]
    fn taking_a_job_checks_the_tenant_the_time_limit_and_the_constraints() {
        let q = QueueDef::from_pb(&queue()).unwrap();
        let mut s = spec("team-a");
        s.time_limit = None;
        q.take(&mut s).unwrap();
        assert_eq!(s.queue.as_ref().map(|q| q.as_str()), Some("gpu-a"));
        assert_eq!(
            s.time_limit,
            Some(Millis(3_600_000)),
            "the queue's default time limit"
        );

        let mut other = spec("team-b");
        assert!(matches!(q.take(&mut other), Err(Refusal::NotAllowed(m)) if m.contains("team-b")));
        assert_eq!(other.queue, None, "a refused spec is left as it was");

        let mut long = spec("team-a");
        long.time_limit = Some(Millis(86_400_001));
        assert!(matches!(q.take(&mut long), Err(Refusal::Invalid(v)) if v.field == "spec.time_limit_ms"));

        let mut elsewhere = spec("team-a");
        elsewhere
            .constraints
            .node_labels
            .insert("pool".into(), "b".into());
        assert!(matches!(q.take(&mut elsewhere), Err(Refusal::Invalid(v)) if v.field == "spec.node_labels"));

        let mut wrong_gpu = spec("team-a");
        wrong_gpu.constraints.gpu_models = vec!["V100M16".into()];
        assert!(matches!(q.take(&mut wrong_gpu), Err(Refusal::Invalid(v)) if v.field == "spec.gpu_models"));
        assert_eq!(
            q.models_for(&["V100M16".into(), "H100-80GB".into()]),
            vec!["H100-80GB"]
        );
        assert_eq!(q.models_for(&[]), q.gpu_models);

        // Without a default time limit, a job without one gets the maximum.
        let mut only_max = q.clone();
        only_max.default_time_limit = None;
        let mut s = spec("team-a");
        s.time_limit = None;
        only_max.take(&mut s).unwrap();
        assert_eq!(s.time_limit, Some(Millis(86_400_000)));
        // The built-in queue takes anything, as it is.
        let mut s = spec("anyone");
        s.time_limit = None;
        QueueDef::builtin().take(&mut s).unwrap();
        assert_eq!(s.time_limit, None);
    }

    #[test]
    fn an_update_changes_only_the_fields_it_names() {
        let current = QueueDef::from_pb(&queue()).unwrap();
        let mut new = queue();
        new.priority_tier = 7;
        new.gpu_models.clear();
        new.per_tenant = Some(pb::QueueLimits {
            gpus: None,
            running_jobs: Some(3),
            pending_jobs: None,
        });
        let up = updated(
            &current,
            &new,
            &["priority_tier".into(), "per_tenant.running_jobs".into()],
        )
        .unwrap();
        assert_eq!(up.priority_tier, 7);
        assert_eq!(up.gpu_models, current.gpu_models, "not named: kept");
        assert_eq!(up.per_tenant.running_jobs, Some(3));
        assert_eq!(up.per_tenant.gpus, Some(4), "not named: kept");
        let all = updated(&current, &new, &[]).unwrap();
        assert!(all.gpu_models.is_empty() && all.per_tenant.gpus.is_none());
        let e = updated(&current, &new, &["name".into()]).unwrap_err();
        assert_eq!(e.field, "update_mask");
        let mut bad = queue();
        bad.default_time_limit_ms = Some(90_000_000);
        let e = updated(&current, &bad, &["default_time_limit_ms".into()]).unwrap_err();
        assert_eq!(
            e.field, "queue.default_time_limit_ms",
            "the result is checked as a whole"
        );
    }
}
