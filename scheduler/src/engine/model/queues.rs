//! The queues: their definitions (from the config file and the API), which
//! one is the default, and what each tenant holds in each during a pass.
//!
//! Exactly one queue is the default at all times: the one marked so, else
//! the queue named `default`, which is there with no restrictions (the
//! built-in queue) while nobody defines it and no other queue is marked.
//! Queues from the config file are changed there, not over the API.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{Job, JobSpec, JobState, QosName, QueueDef, QueueName, QueueSource, Share, TenantName};

/// Why a change to the queues is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
}

#[derive(Debug, Clone)]
pub struct Queues {
    defs: BTreeMap<QueueName, QueueDef>,
    default: QueueName,
    /// QOS names and the tier each adds (`normal`: 0).
    qos: BTreeMap<QosName, i32>,
}

impl Default for Queues {
    fn default() -> Self {
        Queues::new(Vec::new(), Vec::new()).expect("no queues is a valid set")
    }
}

impl Queues {
    /// The config file's queues (checked there: at most one marked default)
    /// with those made over the API; a config queue hides a stored one of
    /// the same name, and a config queue marked default wins over a stored one.
    pub fn new(config: Vec<QueueDef>, stored: Vec<QueueDef>) -> Result<Queues, String> {
        let mut defs = BTreeMap::new();
        let config_default = config.iter().any(|q| q.default);
        for q in config {
            defs.insert(q.name.clone(), q);
        }
        for mut q in stored {
            if defs.contains_key(&q.name) {
                tracing::warn!(queue = %q.name, "queue defined in the config file; the one made over the API is ignored");
                continue;
            }
            if config_default {
                q.default = false;
            }
            defs.insert(q.name.clone(), q);
        }
        if defs.values().filter(|q| q.default).count() > 1 {
            return Err("more than one queue is marked default".into());
        }
        let mut queues = Queues {
            defs,
            default: QueueName::default_queue(),
            qos: [(QosName::normal(), 0)].into(),
        };
        queues.settle();
        Ok(queues)
    }

    /// Puts the built-in queue in or out, and finds the default.
    fn settle(&mut self) {
        let builtin = QueueName::default_queue();
        let marked = self
            .defs
            .values()
            .find(|q| q.default && q.source != QueueSource::Builtin);
        match marked {
            Some(q) => {
                self.default = q.name.clone();
                if self
                    .defs
                    .get(&builtin)
                    .is_some_and(|q| q.source == QueueSource::Builtin)
                {
                    self.defs.remove(&builtin);
                }
            }
            None => {
                self.default = builtin.clone();
                self.defs.entry(builtin).or_insert_with(QueueDef::builtin);
            }
        }
    }

    pub fn get(&self, name: &QueueName) -> Option<&QueueDef> {
        self.defs.get(name)
    }

    pub fn default_queue(&self) -> &QueueDef {
        &self.defs[&self.default]
    }

    /// The queue a spec waits in: the one it names, or the default. `None`
    /// when it names one that is gone.
    pub fn of(&self, spec: &JobSpec) -> Option<&QueueDef> {
        match &spec.queue {
            Some(name) => self.get(name),
            None => Some(self.default_queue()),
        }
    }

    /// The name of the queue a spec waits in (even one that is gone).
    pub fn name_of<'a>(&'a self, spec: &'a JobSpec) -> &'a QueueName {
        spec.queue.as_ref().unwrap_or(&self.default)
    }

    /// The tier a job is ordered by (0 for a queue that is gone).
    /// A job's tier: its queue's, plus its QOS's.
    pub fn tier(&self, spec: &JobSpec) -> i32 {
        let qos = spec
            .qos
            .as_ref()
            .and_then(|q| self.qos.get(q))
            .copied()
            .unwrap_or(0);
        self.of(spec).map_or(0, |q| q.priority_tier).saturating_add(qos)
    }

    /// With these QOS (and their tiers); `normal` (0) unless redefined.
    pub fn with_qos(mut self, qos: BTreeMap<QosName, i32>) -> Queues {
        self.qos = qos;
        self.qos.entry(QosName::normal()).or_insert(0);
        self
    }

    /// A QOS's tier, if the server has it.
    pub fn qos_tier(&self, name: &QosName) -> Option<i32> {
        self.qos.get(name).copied()
    }

    /// The QOS names, for a message.
    pub fn qos_names(&self) -> Vec<String> {
        self.qos.keys().map(ToString::to_string).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &QueueDef> {
        self.defs.values()
    }

    /// Whether a pass has per-tenant holdings to count.
    pub fn limit_holdings(&self) -> bool {
        self.defs
            .values()
            .any(|q| q.per_tenant.gpus.is_some() || q.per_tenant.running_jobs.is_some())
    }

    /// Adds a queue made over the API. Returns the queues to write (the new
    /// one, and one that stopped being the default).
    pub fn create(&mut self, def: QueueDef) -> Result<Vec<QueueDef>, QueueError> {
        if self
            .defs
            .get(&def.name)
            .is_some_and(|q| q.source != QueueSource::Builtin)
        {
            return Err(QueueError::AlreadyExists(format!(
                "queue {} already exists",
                def.name
            )));
        }
        self.put(def)
    }

    /// Replaces a queue made over the API (or the built-in one, which is
    /// then stored). Returns the queues to write.
    pub fn update(&mut self, def: QueueDef) -> Result<Vec<QueueDef>, QueueError> {
        match self.defs.get(&def.name) {
            None => return Err(QueueError::NotFound(format!("queue {}", def.name))),
            Some(q) if q.source == QueueSource::Config => {
                return Err(QueueError::FailedPrecondition(format!(
                    "queue {} is defined in the server's config file: change it there and restart the server",
                    def.name
                )));
            }
            Some(_) => {}
        }
        self.put(def)
    }

    fn put(&mut self, mut def: QueueDef) -> Result<Vec<QueueDef>, QueueError> {
        def.source = QueueSource::Api;
        let mut writes = Vec::new();
        let current = self.default_queue();
        if def.default && current.name != def.name {
            if current.source == QueueSource::Config {
                return Err(QueueError::FailedPrecondition(format!(
                    "the default queue {} is defined in the server's config file: change the default there",
                    current.name
                )));
            }
            if current.source == QueueSource::Api {
                let mut was = current.clone();
                was.default = false;
                writes.push(was.clone());
                self.defs.insert(was.name.clone(), was);
            }
        }
        writes.push(def.clone());
        self.defs.insert(def.name.clone(), def);
        self.settle();
        Ok(writes)
    }

    /// Deletes a queue made over the API; the caller has checked it holds
    /// no jobs.
    pub fn delete(&mut self, name: &QueueName) -> Result<(), QueueError> {
        let Some(q) = self.defs.get(name) else {
            return Err(QueueError::NotFound(format!("queue {name}")));
        };
        if q.source == QueueSource::Config {
            return Err(QueueError::FailedPrecondition(format!(
                "queue {name} is defined in the server's config file: remove it there and restart the server"
            )));
        }
        if *name == self.default {
            return Err(QueueError::FailedPrecondition(format!(
                "queue {name} is the default queue: make another queue the default first"
            )));
        }
        self.defs.remove(name);
        self.settle();
        Ok(())
    }
}

/// What one tenant holds in one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub running: u32,
    pub gpus: Share,
}

/// What each tenant holds in each queue, counted at the start of a pass and
/// added to as the pass places jobs.
#[derive(Debug, Default)]
pub struct QueueUsage {
    held: HashMap<(QueueName, TenantName), Held>,
}

impl QueueUsage {
    /// Counts the placed jobs (empty when no queue has a limit to check).
    pub fn count<'a>(queues: &Queues, jobs: impl Iterator<Item = &'a Job>) -> QueueUsage {
        let mut usage = QueueUsage::default();
        if !queues.limit_holdings() {
            return usage;
        }
        for job in jobs.filter(|j| matches!(j.state, JobState::Starting | JobState::Running)) {
            usage.placed(queues.name_of(&job.spec), &job.spec);
        }
        usage
    }

    /// A job of the queue was placed.
    pub fn placed(&mut self, queue: &QueueName, spec: &JobSpec) {
        let held = self.held.entry((queue.clone(), spec.tenant.clone())).or_default();
        held.running += 1;
        held.gpus = held
            .gpus
            .checked_add(spec.resources.gpu.gpus())
            .unwrap_or(held.gpus);
    }

    pub fn held(&self, queue: &QueueName, tenant: &TenantName) -> Held {
        self.held
            .get(&(queue.clone(), tenant.clone()))
            .copied()
            .unwrap_or_default()
    }

    /// Why the queue's per-tenant limits keep `spec` from starting now, if
    /// they do.
    pub fn over_limit(&self, queue: &QueueDef, spec: &JobSpec) -> Option<String> {
        let held = self.held(&queue.name, &spec.tenant);
        if let Some(max) = queue.per_tenant.running_jobs
            && held.running >= max
        {
            return Some(format!(
                "queue {} limit: tenant {} runs {} job{} of at most {max}",
                queue.name,
                spec.tenant,
                held.running,
                if held.running == 1 { "" } else { "s" }
            ));
        }
        if let Some(cap) = queue.gpu_cap() {
            let asked = spec.resources.gpu.gpus();
            let after = held.gpus.checked_add(asked);
            if after.is_none_or(|a| a > cap) {
                return Some(format!(
                    "queue {} limit: tenant {} holds {} GPUs of at most {}; this job asks for {asked}",
                    queue.name, spec.tenant, held.gpus, cap
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GpuRequest, JobId, QueueLimits};
    use std::num::NonZeroU32;

    fn def(name: &str, default: bool, source: QueueSource) -> QueueDef {
        QueueDef {
            name: name.parse().unwrap(),
            default,
            source,
            ..QueueDef::builtin()
        }
    }

    #[test]
    fn there_is_always_one_default_and_config_queues_are_changed_in_the_config() {
        let mut qs = Queues::default();
        assert_eq!(qs.default_queue().source, QueueSource::Builtin);
        // A queue that is not marked default leaves the built-in the default.
        let writes = qs.create(def("gpu-a", false, QueueSource::Api)).unwrap();
        assert_eq!(writes.len(), 1);
        assert_eq!(qs.default_queue().name.as_str(), "default");
        assert!(matches!(
            qs.create(def("gpu-a", false, QueueSource::Api)),
            Err(QueueError::AlreadyExists(_))
        ));
        // Marking one default takes the built-in away.
        qs.update(def("gpu-a", true, QueueSource::Api)).unwrap();
        assert_eq!(qs.default_queue().name.as_str(), "gpu-a");
        assert!(qs.get(&"default".parse().unwrap()).is_none());
        // A second marked default unmarks the first, and both are written.
        let writes = qs.create(def("gpu-b", true, QueueSource::Api)).unwrap();
        assert_eq!(writes.len(), 2);
        assert!(!writes[0].default && writes[0].name.as_str() == "gpu-a");
        assert_eq!(qs.default_queue().name.as_str(), "gpu-b");
        assert!(matches!(
            qs.delete(&"gpu-b".parse().unwrap()),
            Err(QueueError::FailedPrecondition(m)) if m.contains("default")
        ));
        qs.delete(&"gpu-a".parse().unwrap()).unwrap();
        assert!(matches!(
            qs.delete(&"gpu-a".parse().unwrap()),
            Err(QueueError::NotFound(_))
        ));

        // Config queues: not changed over the API; their default wins.
        let mut qs = Queues::new(
            vec![def("batch", true, QueueSource::Config)],
            vec![
                def("old", true, QueueSource::Api),
                def("batch", false, QueueSource::Api),
            ],
        )
        .unwrap();
        assert_eq!(qs.default_queue().name.as_str(), "batch");
        assert_eq!(
            qs.get(&"batch".parse().unwrap()).unwrap().source,
            QueueSource::Config
        );
        assert!(!qs.get(&"old".parse().unwrap()).unwrap().default);
        for r in [
            qs.update(def("batch", false, QueueSource::Api)).map(|_| ()),
            qs.delete(&"batch".parse().unwrap()),
            qs.create(def("new", true, QueueSource::Api)).map(|_| ()),
        ] {
            assert!(matches!(r, Err(QueueError::FailedPrecondition(m)) if m.contains("config file")));
        }
        assert!(
            Queues::new(
                vec![
                    def("a", true, QueueSource::Config),
                    def("b", true, QueueSource::Config)
                ],
                vec![]
            )
            .is_err()
        );
    }

    #[test]
    fn per_tenant_limits_count_what_is_placed_in_the_queue() {
        let mut q = def("gpu-a", true, QueueSource::Api);
        q.per_tenant = QueueLimits {
            gpus: Some(2),
            running_jobs: Some(3),
            pending_jobs: None,
        };
        let qs = Queues::new(vec![], vec![q.clone()]).unwrap();
        let mut job = Job::for_tests(JobId::new_v7());
        job.spec.resources.gpu = GpuRequest::Whole(NonZeroU32::new(1).unwrap());
        job.state = JobState::Running;
        let mut other = job.clone();
        other.spec.tenant = "b".parse().unwrap();
        let pending = Job {
            state: JobState::Pending,
            ..job.clone()
        };
        let usage = QueueUsage::count(&qs, [&job, &job, &other, &pending].into_iter());
        assert_eq!(usage.held(&q.name, &job.spec.tenant).running, 2);
        let why = usage
            .over_limit(&q, &job.spec)
            .expect("2 GPUs held, 1 more asked");
        assert!(why.contains("at most 2") && why.contains("gpu-a"), "{why}");
        assert_eq!(
            usage.over_limit(&q, &other.spec),
            None,
            "another tenant's own count"
        );
        let mut half = job.spec.clone();
        half.resources.gpu = GpuRequest::None;
        assert_eq!(
            usage.over_limit(&q, &half),
            None,
            "a CPU-only job fits under the GPU cap"
        );
        let mut usage = usage;
        usage.placed(&q.name, &half);
        let why = usage.over_limit(&q, &half).expect("three running");
        assert!(why.contains("runs 3 jobs of at most 3"), "{why}");
        // Without limits nothing is counted.
        let none = QueueUsage::count(&Queues::default(), [&job].into_iter());
        assert_eq!(
            none.held(&"default".parse().unwrap(), &job.spec.tenant),
            Held::default()
        );
    }
}
