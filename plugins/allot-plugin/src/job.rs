//! Helpers on the job specification.

use crate::{GpuRequest, JobSpec, pairs};

impl JobSpec {
    /// A CPU-only job running `command`, with the scheduler's defaults for
    /// everything else: one core, 1024 MiB, priority 0, not preemptible, no
    /// time limit, a 30 s grace period, no tags. Mostly for tests.
    pub fn new(name: &str, command: &str) -> JobSpec {
        JobSpec {
            name: name.to_string(),
            command: command.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            gpu: GpuRequest::None,
            cpu_millis: 1000,
            memory_mib: 1024,
            gpu_models: Vec::new(),
            node_labels: Vec::new(),
            spread: false,
            priority: 0,
            preemptible: false,
            time_limit_ms: None,
            grace_period_ms: 30_000,
            min_runtime_ms: None,
            checkpoint_interval_ms: None,
            tags: Vec::new(),
        }
    }

    /// The value of tag `key`, if the job has it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        pairs::get(&self.tags, key)
    }

    /// Sets tag `key` to `value`, replacing any value it had.
    pub fn set_tag(&mut self, key: &str, value: &str) {
        pairs::insert(&mut self.tags, key, value);
    }

    /// Removes tag `key` and returns its value, if the job had it.
    pub fn remove_tag(&mut self, key: &str) -> Option<String> {
        pairs::remove(&mut self.tags, key)
    }
}
