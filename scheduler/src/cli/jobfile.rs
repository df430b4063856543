//! `allot submit job.toml`: a job described in a file (see `examples/jobs/`).

use std::collections::BTreeMap;
use std::path::Path;

use allot_sdk::proto;
use serde::Deserialize;

use crate::domain::{MiB, MilliCpu, Millis, Share};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub name: Option<String>,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: ResourcesFile,
    pub priority: Option<i32>,
    pub preemptible: Option<bool>,
    /// `2h`, `90m`, …
    pub time_limit: Option<String>,
    pub grace_period: Option<String>,
    pub tenant: Option<String>,
    pub project: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Accepted GPU models, e.g. `["V100M16", "V100M32"]`.
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Labels a node must carry.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// Not preempted before it has run this long (`10m`).
    pub min_runtime: Option<String>,
    /// A whole-GPU gang may span nodes.
    pub spread: Option<bool>,
    /// How often the job checkpoints (`30m`).
    pub checkpoint_interval: Option<String>,
    /// Times the job is requeued when a node it runs on is lost (default 2).
    pub node_lost_retries: Option<u32>,
    /// The queue to wait in (default: the default queue).
    pub queue: Option<String>,
    /// Jobs to wait for, in Slurm's syntax (`afterok:ID`, …).
    pub dependency: Option<String>,
    /// An array of tasks like this job: `0-99`, `1,3,5-7`, `0-20:4`, `%8`.
    #[serde(default)]
    pub array: Option<String>,
    /// Where stdout goes on the node, a Slurm pattern (`slurm-%j.out`).
    #[serde(default)]
    pub output: Option<String>,
    /// Where stderr goes (default: with stdout).
    #[serde(default)]
    pub error: Option<String>,
    /// The QOS (a priority tier the server defines; default `normal`).
    #[serde(default)]
    pub qos: Option<String>,
    /// The only nodes it may run on; empty: any.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Nodes it must not run on.
    #[serde(default)]
    pub exclude_nodes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    pub gpus: Option<i32>,
    /// `0.25` or `1/4`.
    pub gpu_fraction: Option<String>,
    pub mig: Option<String>,
    pub gpu_memory: Option<String>,
    /// `4`, `0.5`, `500m`.
    pub cpu: Option<String>,
    /// `16GiB`.
    pub memory: Option<String>,
}

impl JobFile {
    pub fn read(path: &Path) -> anyhow::Result<JobFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read job file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("job file {}: {e}", path.display()))
    }
}

pub fn duration_ms(what: &str, s: &str) -> anyhow::Result<i64> {
    let d: Millis = s.parse().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(d.0 as i64)
}

pub fn memory_mib(what: &str, s: &str) -> anyhow::Result<i64> {
    let m: MiB = s.parse().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(m.0 as i64)
}

pub fn cpu_millis(what: &str, s: &str) -> anyhow::Result<i64> {
    let c: MilliCpu = s.parse().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(c.0 as i64)
}

pub fn fraction(what: &str, s: &str) -> anyhow::Result<proto::Fraction> {
    let f: Share = s.parse().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(proto::Fraction {
        numerator: f.numerator(),
        denominator: f.denominator(),
    })
}

/// Sets the GPU request; at most one kind may be given.
pub fn set_gpu(
    r: &mut proto::Resources,
    gpus: Option<i32>,
    fraction_s: Option<&str>,
    mig: Option<&str>,
) -> anyhow::Result<()> {
    let given = [gpus.is_some(), fraction_s.is_some(), mig.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given > 1 {
        anyhow::bail!("give at most one of gpus, gpu_fraction and mig");
    }
    if let Some(n) = gpus {
        r.gpu = Some(proto::resources::Gpu::Gpus(n));
    }
    if let Some(f) = fraction_s {
        r.gpu = Some(proto::resources::Gpu::GpuFraction(fraction("gpu_fraction", f)?));
    }
    if let Some(m) = mig {
        r.gpu = Some(proto::resources::Gpu::MigProfile(m.to_string()));
    }
    Ok(())
}

impl JobFile {
    /// The spec this file describes.
    pub fn into_spec(self) -> anyhow::Result<proto::JobSpec> {
        let mut r = proto::Resources::default();
        set_gpu(
            &mut r,
            self.resources.gpus,
            self.resources.gpu_fraction.as_deref(),
            self.resources.mig.as_deref(),
        )?;
        if let Some(m) = &self.resources.gpu_memory {
            r.gpu_memory_mib = memory_mib("resources.gpu_memory", m)?;
        }
        if let Some(c) = &self.resources.cpu {
            r.cpu_millis = cpu_millis("resources.cpu", c)?;
        }
        if let Some(m) = &self.resources.memory {
            r.memory_mib = memory_mib("resources.memory", m)?;
        }
        Ok(proto::JobSpec {
            name: self.name.unwrap_or_default(),
            command: self.command.unwrap_or_default(),
            args: self.args,
            env: self.env.into_iter().collect(),
            working_dir: self.working_dir.unwrap_or_default(),
            resources: Some(r),
            priority: self.priority.unwrap_or(0),
            preemptible: self.preemptible.unwrap_or(false),
            time_limit_ms: self
                .time_limit
                .as_deref()
                .map(|t| duration_ms("time_limit", t))
                .transpose()?,
            grace_period_ms: self
                .grace_period
                .as_deref()
                .map(|t| duration_ms("grace_period", t))
                .transpose()?,
            tenant: self.tenant.unwrap_or_default(),
            project: self.project.unwrap_or_default(),
            tags: self.tags.into_iter().collect(),
            spread: self.spread.unwrap_or(false),
            gpu_models: self.gpu_models,
            node_labels: self.node_labels.into_iter().collect(),
            min_runtime_ms: self
                .min_runtime
                .as_deref()
                .map(|t| duration_ms("min_runtime", t))
                .transpose()?,
            checkpoint_interval_ms: self
                .checkpoint_interval
                .as_deref()
                .map(|t| duration_ms("checkpoint_interval", t))
                .transpose()?,
            node_lost_retries: self.node_lost_retries,
            script: None,
            queue: self.queue.unwrap_or_default(),
            dependency: self.dependency.unwrap_or_default(),
            array: self.array.unwrap_or_default(),
            output: self.output.unwrap_or_default(),
            error: self.error.unwrap_or_default(),
            qos: self.qos.unwrap_or_default(),
            nodes: self.nodes,
            exclude_nodes: self.exclude_nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_job_file_parses() {
        let f: JobFile = toml::from_str(
            r#"
            name = "train"
            command = "python"
            args = ["train.py"]
            time_limit = "2h"
            preemptible = true
            [resources]
            gpus = 2
            memory = "64GiB"
            cpu = "8"
            [tags]
            team = "nlp"
            "#,
        )
        .unwrap();
        let spec = f.into_spec().unwrap();
        assert_eq!(spec.time_limit_ms, Some(7_200_000));
        assert_eq!(spec.resources.as_ref().unwrap().memory_mib, 65_536);
        assert_eq!(spec.resources.as_ref().unwrap().cpu_millis, 8000);
        assert_eq!(spec.resources.unwrap().gpu, Some(proto::resources::Gpu::Gpus(2)));
        assert_eq!(spec.tags.get("team").map(String::as_str), Some("nlp"));
    }

    #[test]
    fn unknown_fields_and_two_gpu_kinds_are_refused() {
        assert!(toml::from_str::<JobFile>("comand = \"x\"").is_err());
        let f: JobFile = toml::from_str("command = \"x\"\n[resources]\ngpus = 1\nmig = \"1g.10gb\"").unwrap();
        assert!(f.into_spec().unwrap_err().to_string().contains("at most one"));
    }
}
