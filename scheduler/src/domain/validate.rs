//! What a job may carry: every string and list of a spec has a documented
//! bound ([docs/jobs.md](../../../docs/jobs.md#limits)), checked here for
//! every way a spec comes in: a submission, and a spec an admission plugin
//! modified. Bad input is refused naming its field, and error messages quote
//! at most a short prefix of what was sent.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use allot_proto::v1 as pb;

use super::ids::{NodeName, ProjectName, QueueName, TenantName};
use super::job::{Constraints, GpuRequest, JobSpec, Resources};
use super::mig::MigProfile;
use super::units::{MiB, MilliCpu, Millis, Share};

/// Bytes of a job's name.
pub const NAME_BYTES: usize = 256;
/// Bytes of the command (the program's name or path).
pub const COMMAND_BYTES: usize = 4096;
/// Arguments of the command.
pub const ARGS: usize = 1024;
/// Bytes of one argument.
pub const ARG_BYTES: usize = 32 * 1024;
/// Environment variables of a job.
pub const ENV_VARS: usize = 256;
/// Bytes of one environment variable's value.
pub const ENV_VALUE_BYTES: usize = 32 * 1024;
/// Bytes of the name of an environment variable, tag or node label.
pub const KEY_BYTES: usize = 128;
/// Tags of a job.
pub const TAGS: usize = 64;
/// Node labels a job may require.
pub const NODE_LABELS: usize = 64;
/// Nodes a job may name in `nodes` or in `exclude_nodes`.
pub const NODE_LIST: usize = 1000;
/// Bytes of a tag's or a node label's value.
pub const VALUE_BYTES: usize = 256;
/// GPU models a job may accept.
pub const GPU_MODELS: usize = 32;
/// Bytes of one GPU model name.
pub const GPU_MODEL_BYTES: usize = 64;
/// Bytes of the working directory.
pub const WORKING_DIR_BYTES: usize = 4096;
/// Bytes of a whole spec's strings together (command, arguments, names,
/// values of env, tags and labels): a job record stays small, and a page
/// of jobs fits a gRPC message.
pub const SPEC_BYTES: usize = 64 * 1024;
/// Bytes of a cancel reason.
pub const REASON_BYTES: usize = 1024;
/// The longest grace period a server takes by default (`--max-grace`): a
/// job that ignores SIGTERM cannot hold its devices for longer than this
/// past a cancel or a preemption.
pub const DEFAULT_MAX_GRACE: Millis = Millis::from_secs(600);
/// Characters of an idempotency key (`request_id`), as AIP-155 suggests.
pub const REQUEST_ID_CHARS: usize = 36;
/// Characters of user input quoted in an error message.
const QUOTED_CHARS: usize = 48;

/// The limits that a server may configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest grace period between SIGTERM and SIGKILL.
    pub max_grace: Millis,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_grace: DEFAULT_MAX_GRACE,
        }
    }
}

/// A field that breaks a limit: its path in the request and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: &'static str,
    pub description: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

impl std::error::Error for Violation {}

fn violation(field: &'static str, description: impl Into<String>) -> Violation {
    Violation {
        field,
        description: description.into(),
    }
}

/// User input as an error message shows it: quoted, and at most a short
/// prefix of a long value (with its length), never the whole of it.
pub fn quote(s: &str) -> String {
    let mut chars = s.char_indices();
    match chars.nth(QUOTED_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn at_most(field: &'static str, what: &str, len: usize, max: usize) -> Result<(), Violation> {
    if len > max {
        return Err(violation(field, format!("at most {max} {what}, got {len}")));
    }
    Ok(())
}

/// An idempotency key: empty (none), or 1 to 36 of `[A-Za-z0-9._-]`.
pub fn request_id(id: &str) -> Result<Option<String>, Violation> {
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > REQUEST_ID_CHARS
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(violation(
            "request_id",
            format!(
                "{} is not a request id: up to {REQUEST_ID_CHARS} of A-Z a-z 0-9 . _ - (a UUID, say)",
                quote(id)
            ),
        ));
    }
    Ok(Some(id.to_string()))
}

/// Tags whose key starts with this are the server's (e.g.
/// `allot.admission/modified-by`): refused in what users submit, and a
/// plugin cannot set or remove them.
pub const RESERVED_TAG_PREFIX: &str = "allot.";

/// The spec's tags with the reserved prefix.
pub fn reserved_tags(s: &JobSpec) -> Vec<(&str, &str)> {
    s.tags
        .iter()
        .filter(|(k, _)| k.starts_with(RESERVED_TAG_PREFIX))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A spec as a user submits it: no tag with the reserved prefix.
pub fn user_tags(s: &JobSpec) -> Result<(), Violation> {
    match reserved_tags(s).first() {
        Some((k, _)) => Err(violation(
            "spec.tags",
            format!(
                "tag {} has the reserved prefix {RESERVED_TAG_PREFIX:?}: those tags are set by the server",
                quote(k)
            ),
        )),
        None => Ok(()),
    }
}

/// The name of an env variable, a tag or a label: 1 to `KEY_BYTES` bytes,
/// printable, no `=`.
pub fn key(field: &'static str, k: &str, what: &str) -> Result<(), Violation> {
    if k.is_empty() {
        return Err(violation(field, format!("{what} names must not be empty")));
    }
    if k.len() > KEY_BYTES || k.chars().any(|c| c.is_control() || c == '=') {
        return Err(violation(
            field,
            format!(
                "{what} name {} must be at most {KEY_BYTES} printable characters without '='",
                quote(k)
            ),
        ));
    }
    Ok(())
}

/// A tag's or label's value: at most `VALUE_BYTES` printable bytes.
pub fn value(field: &'static str, k: &str, v: &str, what: &str) -> Result<(), Violation> {
    if v.len() > VALUE_BYTES || v.chars().any(char::is_control) {
        return Err(violation(
            field,
            format!(
                "value of {what} {} must be at most {VALUE_BYTES} printable characters",
                quote(k)
            ),
        ));
    }
    Ok(())
}

/// Every bound of a spec, and the server's grace limit. The spec is in
/// domain form (converted from the wire, or modified by a plugin).
pub fn spec(s: &JobSpec, limits: &Limits) -> Result<(), Violation> {
    if s.command.is_empty() {
        return Err(violation("spec.command", "must not be empty"));
    }
    at_most("spec.command", "bytes", s.command.len(), COMMAND_BYTES)?;
    if s.command.contains('\0') {
        return Err(violation("spec.command", "must not contain NUL bytes"));
    }
    if s.name.is_empty() || s.name.len() > NAME_BYTES || s.name.chars().any(char::is_control) {
        return Err(violation(
            "spec.name",
            format!("must be 1 to {NAME_BYTES} printable characters"),
        ));
    }
    at_most("spec.args", "arguments", s.args.len(), ARGS)?;
    for a in &s.args {
        at_most("spec.args", "bytes per argument", a.len(), ARG_BYTES)?;
        if a.contains('\0') {
            return Err(violation("spec.args", "must not contain NUL bytes"));
        }
    }
    at_most("spec.env", "variables", s.env.len(), ENV_VARS)?;
    for (k, v) in &s.env {
        key("spec.env", k, "variable")?;
        if v.len() > ENV_VALUE_BYTES {
            return Err(violation(
                "spec.env",
                format!(
                    "value of {} must be at most {ENV_VALUE_BYTES} bytes, got {}",
                    quote(k),
                    v.len()
                ),
            ));
        }
        if v.contains('\0') {
            return Err(violation(
                "spec.env",
                format!("value of {} contains a NUL byte", quote(k)),
            ));
        }
    }
    if let Some(d) = &s.working_dir {
        at_most("spec.working_dir", "bytes", d.len(), WORKING_DIR_BYTES)?;
        if !d.starts_with('/') || d.contains('\0') {
            return Err(violation(
                "spec.working_dir",
                format!("must be an absolute path, got {}", quote(d)),
            ));
        }
    }
    at_most("spec.tags", "tags", s.tags.len(), TAGS)?;
    for (k, v) in &s.tags {
        key("spec.tags", k, "tag")?;
        value("spec.tags", k, v, "tag")?;
    }
    at_most(
        "spec.node_labels",
        "labels",
        s.constraints.node_labels.len(),
        NODE_LABELS,
    )?;
    for (k, v) in &s.constraints.node_labels {
        key("spec.node_labels", k, "label")?;
        value("spec.node_labels", k, v, "label")?;
    }
    at_most(
        "spec.gpu_models",
        "GPU models",
        s.constraints.gpu_models.len(),
        GPU_MODELS,
    )?;
    for m in &s.constraints.gpu_models {
        if m.is_empty()
            || m.len() > GPU_MODEL_BYTES
            || m.chars().any(|c| c.is_whitespace() || c.is_control() || c == '|')
        {
            return Err(violation(
                "spec.gpu_models",
                format!("{} is not a GPU model name (e.g. H100-80GB, V100M32)", quote(m)),
            ));
        }
    }
    let total = s.name.len()
        + s.command.len()
        + s.args.iter().map(String::len).sum::<usize>()
        + s.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + s.working_dir.as_ref().map_or(0, String::len)
        + s.tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + s.constraints
            .node_labels
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + s.constraints.gpu_models.iter().map(String::len).sum::<usize>()
        + s.script.as_ref().map_or(0, String::len);
    if total > SPEC_BYTES {
        return Err(violation(
            "spec",
            format!(
                "a job's command, script, arguments, environment, tags and labels may hold at most {SPEC_BYTES} bytes together, got {total}; pass large inputs as files"
            ),
        ));
    }
    if s.grace_period > limits.max_grace {
        return Err(violation(
            "spec.grace_period_ms",
            format!(
                "at most {} on this server (its --max-grace), got {}",
                limits.max_grace, s.grace_period
            ),
        ));
    }
    Ok(())
}

// --- the wire form of a spec -----------------------------------------------

const RESERVED_ENV: &[&str] = &["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];
const MAX_GPUS: i32 = 1024;

fn fraction(field: &'static str, f: &pb::Fraction) -> Result<Share, Violation> {
    if f.denominator == 0 {
        return Err(violation(field, "denominator must not be zero"));
    }
    let share = Share::new(f.numerator, f.denominator).expect("denominator checked");
    if share.is_zero() || share > Share::ONE {
        return Err(violation(
            field,
            format!("must be in (0, 1], got {}/{}", f.numerator, f.denominator),
        ));
    }
    if !share.is_exact_gpu_time() {
        return Err(violation(
            field,
            format!(
                "{share} cannot be accounted exactly: use a decimal share (up to six places) or a fraction whose denominator divides 63000000, such as 1/3 or 1/7"
            ),
        ));
    }
    Ok(share)
}

fn non_negative(field: &'static str, v: i64) -> Result<u64, Violation> {
    u64::try_from(v).map_err(|_| violation(field, format!("must not be negative, got {v}")))
}

fn resources(r: Option<&pb::Resources>) -> Result<Resources, Violation> {
    let default = pb::Resources::default();
    let r = r.unwrap_or(&default);
    let gpu_memory = non_negative("spec.resources.gpu_memory_mib", r.gpu_memory_mib)?;
    let gpu = match &r.gpu {
        None => GpuRequest::None,
        Some(pb::resources::Gpu::Gpus(n)) => {
            if *n < 1 {
                return Err(violation(
                    "spec.resources.gpus",
                    format!("must be at least 1, got {n} (leave it unset for a CPU-only job)"),
                ));
            }
            if *n > MAX_GPUS {
                return Err(violation(
                    "spec.resources.gpus",
                    format!("must be at most {MAX_GPUS}, got {n}"),
                ));
            }
            GpuRequest::Whole(NonZeroU32::new(*n as u32).expect("checked >= 1"))
        }
        Some(pb::resources::Gpu::GpuFraction(f)) => GpuRequest::Fraction {
            share: fraction("spec.resources.gpu_fraction", f)?,
            memory: (gpu_memory > 0).then_some(MiB(gpu_memory)),
        },
        Some(pb::resources::Gpu::MigProfile(p)) => {
            if p.trim() != p {
                return Err(violation(
                    "spec.resources.mig_profile",
                    format!("{} has leading or trailing whitespace", quote(p)),
                ));
            }
            let profile: MigProfile = p
                .parse()
                .map_err(|e: String| violation("spec.resources.mig_profile", e))?;
            GpuRequest::Mig(profile)
        }
    };
    if gpu_memory > 0 && !matches!(gpu, GpuRequest::Fraction { .. }) {
        return Err(violation(
            "spec.resources.gpu_memory_mib",
            "applies only to a gpu_fraction request",
        ));
    }
    let cpu = non_negative("spec.resources.cpu_millis", r.cpu_millis)?;
    let memory = non_negative("spec.resources.memory_mib", r.memory_mib)?;
    Ok(Resources {
        gpu,
        cpu: if cpu == 0 {
            Resources::DEFAULT_CPU
        } else {
            MilliCpu(cpu)
        },
        memory: if memory == 0 {
            Resources::DEFAULT_MEMORY
        } else {
            MiB(memory)
        },
    })
}

/// Converts a submitted spec for `caller` and checks it against every
/// bound of `domain::validate` (but the server's grace limit, which the
/// API checks after admission).
/// Turns a submitted spec (the wire form) into a [`JobSpec`] of `tenant`
/// (whose right to submit the caller has checked), every field checked,
/// with the field's path in the request and why on the first that is not
/// valid. The API's `SubmitJob` and the plugin host (a spec an admission
/// plugin returned) both go through it. The server's own limits (the
/// longest grace) are checked after, by [`spec`] with them.
pub fn job_spec(spec: &pb::JobSpec, tenant: TenantName) -> Result<JobSpec, Violation> {
    // Sizes first, before anything is copied or echoed.
    if spec.command.len() > COMMAND_BYTES {
        return Err(violation(
            "spec.command",
            format!("at most {} bytes, got {}", COMMAND_BYTES, spec.command.len()),
        ));
    }
    let too_many = |field: &'static str, what: &str, n: usize, max: usize| -> Result<(), Violation> {
        if n > max {
            return Err(violation(field, format!("at most {max} {what}, got {n}")));
        }
        Ok(())
    };
    too_many("spec.args", "arguments", spec.args.len(), ARGS)?;
    too_many("spec.env", "variables", spec.env.len(), ENV_VARS)?;
    too_many("spec.tags", "tags", spec.tags.len(), TAGS)?;
    too_many("spec.node_labels", "labels", spec.node_labels.len(), NODE_LABELS)?;
    too_many("spec.gpu_models", "GPU models", spec.gpu_models.len(), GPU_MODELS)?;
    if let Some(script) = &spec.script {
        if script.len() > SPEC_BYTES {
            return Err(violation(
                "spec.script",
                format!("at most {SPEC_BYTES} bytes, got {}", script.len()),
            ));
        }
        // As sbatch: the node runs the file, so it names its interpreter.
        if !script.starts_with("#!") {
            return Err(violation(
                "spec.script",
                "must start with #! and the path of an interpreter (e.g. #!/bin/bash)",
            ));
        }
    }
    let command = spec.command.trim();
    if command.is_empty() {
        return Err(violation("spec.command", "must not be empty"));
    }
    let name = if spec.name.trim().is_empty() {
        // The command's file name, cut to a name's length.
        let base = command.rsplit('/').next().unwrap_or(command);
        truncate(base, NAME_BYTES).to_string()
    } else {
        spec.name.trim().to_string()
    };
    let mut env = BTreeMap::new();
    for (k, v) in &spec.env {
        key("spec.env", k, "variable")?;
        if RESERVED_ENV.contains(&k.as_str()) || k.starts_with("ALLOT_") {
            return Err(violation(
                "spec.env",
                format!("{k} is set by allot and cannot be overridden"),
            ));
        }
        env.insert(k.clone(), v.clone());
    }
    let working_dir = match spec.working_dir.trim() {
        "" => None,
        d => Some(d.to_string()),
    };
    let time_limit = match spec.time_limit_ms {
        None => None,
        Some(ms) if ms <= 0 => {
            return Err(violation(
                "spec.time_limit_ms",
                format!("must be greater than 0, got {ms} (leave it unset for no limit)"),
            ));
        }
        Some(ms) => Some(Millis(ms as u64)),
    };
    let grace_period = match spec.grace_period_ms {
        None => JobSpec::DEFAULT_GRACE,
        Some(ms) if ms < 0 => {
            return Err(violation(
                "spec.grace_period_ms",
                format!("must not be negative, got {ms}"),
            ));
        }
        Some(ms) => Millis(ms as u64),
    };
    let project = match spec.project.trim() {
        "" => ProjectName::default_project(),
        p => p.parse().map_err(|e| violation("spec.project", e))?,
    };
    let tags: BTreeMap<String, String> = spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut gpu_models: Vec<String> = Vec::new();
    for m in &spec.gpu_models {
        let m = m.trim();
        if !gpu_models.iter().any(|x| x == m) {
            gpu_models.push(m.to_string());
        }
    }
    let node_labels: BTreeMap<String, String> = spec
        .node_labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let node_list = |field: &'static str, names: &[String]| -> Result<Vec<NodeName>, Violation> {
        let mut out = names
            .iter()
            .map(|n| n.parse::<NodeName>().map_err(|e| violation(field, e)))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    };
    too_many("spec.nodes", "nodes", spec.nodes.len(), NODE_LIST)?;
    too_many("spec.exclude_nodes", "nodes", spec.exclude_nodes.len(), NODE_LIST)?;
    let nodes = node_list("spec.nodes", &spec.nodes)?;
    let exclude_nodes = node_list("spec.exclude_nodes", &spec.exclude_nodes)?;
    if let Some(both) = nodes.iter().find(|n| exclude_nodes.contains(n)) {
        return Err(violation(
            "spec.exclude_nodes",
            format!("node {both} is both required and excluded"),
        ));
    }
    let positive = |field: &'static str, v: Option<i64>| -> Result<Option<Millis>, Violation> {
        match v {
            None => Ok(None),
            Some(ms) if ms <= 0 => Err(violation(field, format!("must be greater than 0, got {ms}"))),
            Some(ms) => Ok(Some(Millis(ms as u64))),
        }
    };
    let min_runtime = positive("spec.min_runtime_ms", spec.min_runtime_ms)?;
    let checkpoint_interval = positive("spec.checkpoint_interval_ms", spec.checkpoint_interval_ms)?;
    let node_lost_retries = match spec.node_lost_retries {
        None => JobSpec::DEFAULT_NODE_LOST_RETRIES,
        Some(n) if n > JobSpec::MAX_NODE_LOST_RETRIES => {
            return Err(violation(
                "spec.node_lost_retries",
                format!("at most {}, got {n}", JobSpec::MAX_NODE_LOST_RETRIES),
            ));
        }
        Some(n) => n,
    };
    let resources = resources(spec.resources.as_ref())?;
    if spec.spread && !matches!(resources.gpu, GpuRequest::Whole(_)) {
        return Err(violation(
            "spec.spread",
            "applies only to a job that asks for whole GPUs",
        ));
    }
    if !gpu_models.is_empty() && resources.gpu == GpuRequest::None {
        return Err(violation(
            "spec.gpu_models",
            "applies only to a job that asks for a GPU",
        ));
    }
    let queue = if spec.queue.is_empty() {
        None
    } else {
        Some(
            spec.queue
                .parse::<QueueName>()
                .map_err(|e| violation("spec.queue", e))?,
        )
    };
    let dependency = match spec.dependency.trim() {
        "" => None,
        d => Some(
            d.parse::<super::dependency::Dependency>()
                .map_err(|e| violation("spec.dependency", e))?,
        ),
    };
    let array = match spec.array.trim() {
        "" => None,
        a => Some(
            a.parse::<super::array::ArraySpec>()
                .map_err(|e| violation("spec.array", e))?,
        ),
    };
    let pattern = |field: &'static str, p: &str| -> Result<Option<String>, Violation> {
        match p.trim() {
            "" => Ok(None),
            p => {
                super::output::check(p).map_err(|e| violation(field, e))?;
                Ok(Some(p.to_string()))
            }
        }
    };
    let qos = match spec.qos.trim() {
        "" => None,
        q => Some(
            q.parse::<super::QosName>()
                .map_err(|e| violation("spec.qos", e))?,
        ),
    };
    let output = pattern("spec.output", &spec.output)?;
    let error = pattern("spec.error", &spec.error)?;
    let out = JobSpec {
        name,
        command: command.to_string(),
        args: spec.args.clone(),
        env,
        working_dir,
        resources,
        constraints: Constraints {
            gpu_models,
            node_labels,
            spread: spec.spread,
            nodes,
            exclude_nodes,
        },
        priority: spec.priority,
        preemptible: spec.preemptible,
        time_limit,
        grace_period,
        tenant,
        project,
        tags,
        min_runtime,
        checkpoint_interval,
        node_lost_retries,
        script: spec.script.clone(),
        queue,
        dependency,
        array,
        output,
        error,
        qos,
    };
    self::spec(
        &out,
        &Limits {
            max_grace: Millis(u64::MAX),
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Job, JobId};

    fn ok() -> JobSpec {
        Job::for_tests(JobId::new_v7()).spec
    }

    #[test]
    fn quote_shows_a_short_prefix_of_long_input() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "é".repeat(1 << 20);
        let q = quote(&long);
        assert!(q.len() < 200, "{q}");
        assert!(q.ends_with(&format!("… ({} bytes)", long.len())), "{q}");
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn node_lists_arrays_output_files_and_qos_are_checked_naming_their_field() {
        let t: TenantName = "a".parse().unwrap();
        let base = pb::JobSpec {
            command: "true".into(),
            ..Default::default()
        };
        for (field, change) in [
            (
                "spec.nodes",
                Box::new(|s: &mut pb::JobSpec| s.nodes = vec!["Not A Node".into()])
                    as Box<dyn Fn(&mut pb::JobSpec)>,
            ),
            (
                "spec.exclude_nodes",
                Box::new(|s: &mut pb::JobSpec| {
                    s.nodes = vec!["n1".into()];
                    s.exclude_nodes = vec!["n1".into()];
                }),
            ),
            (
                "spec.nodes",
                Box::new(|s: &mut pb::JobSpec| s.nodes = (0..=NODE_LIST).map(|i| format!("n{i}")).collect()),
            ),
            (
                "spec.array",
                Box::new(|s: &mut pb::JobSpec| s.array = "0-10000000".into()),
            ),
            (
                "spec.output",
                Box::new(|s: &mut pb::JobSpec| s.output = "out-%q".into()),
            ),
            (
                "spec.error",
                Box::new(|s: &mut pb::JobSpec| s.error = "e%".into()),
            ),
            (
                "spec.qos",
                Box::new(|s: &mut pb::JobSpec| s.qos = "No Such".into()),
            ),
        ] {
            let mut s = base.clone();
            change(&mut s);
            let v = job_spec(&s, t.clone()).expect_err(field);
            assert_eq!(v.field, field, "{v}");
        }
        let mut s = base.clone();
        s.nodes = vec!["n2".into(), "n1".into(), "n2".into()];
        s.array = "0-9%2".into();
        s.output = "slurm-%A_%a.out".into();
        let ok = job_spec(&s, t).unwrap();
        assert_eq!(
            ok.constraints
                .nodes
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert_eq!(ok.array.map(|a| a.len()), Some(10));
    }

    #[test]
    fn every_bound_is_enforced_naming_its_field() {
        let limits = Limits::default();
        assert_eq!(spec(&ok(), &limits), Ok(()));
        type Breaker = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(&str, Breaker)> = vec![
            (
                "spec.command",
                Box::new(|s| s.command = "x".repeat(COMMAND_BYTES + 1)),
            ),
            ("spec.name", Box::new(|s| s.name = "x".repeat(NAME_BYTES + 1))),
            ("spec.args", Box::new(|s| s.args = vec![String::new(); ARGS + 1])),
            (
                "spec.args",
                Box::new(|s| s.args = vec!["x".repeat(ARG_BYTES + 1)]),
            ),
            (
                "spec.env",
                Box::new(|s| s.env = (0..=ENV_VARS).map(|i| (format!("V{i}"), String::new())).collect()),
            ),
            (
                "spec.env",
                Box::new(|s| {
                    s.env.insert("BIG".into(), "x".repeat(3 << 20));
                }),
            ),
            (
                "spec.tags",
                Box::new(|s| s.tags = (0..=TAGS).map(|i| (format!("t{i}"), String::new())).collect()),
            ),
            (
                "spec.tags",
                Box::new(|s| {
                    s.tags.insert("k".repeat(1 << 20), "v".into());
                }),
            ),
            (
                "spec.node_labels",
                Box::new(|s| {
                    s.constraints.node_labels = (0..=NODE_LABELS)
                        .map(|i| (format!("l{i}"), String::new()))
                        .collect()
                }),
            ),
            (
                "spec.gpu_models",
                Box::new(|s| s.constraints.gpu_models = (0..=GPU_MODELS).map(|i| format!("M{i}")).collect()),
            ),
            (
                "spec.working_dir",
                Box::new(|s| s.working_dir = Some(format!("/{}", "d".repeat(WORKING_DIR_BYTES)))),
            ),
            (
                "spec",
                Box::new(|s| s.args = (0..4).map(|_| "x".repeat(ARG_BYTES - 1)).collect()),
            ),
            (
                "spec.grace_period_ms",
                Box::new(|s| s.grace_period = Millis(DEFAULT_MAX_GRACE.0 + 1)),
            ),
        ];
        for (field, break_it) in cases {
            let mut s = ok();
            break_it(&mut s);
            let v = spec(&s, &limits).expect_err(field);
            assert_eq!(v.field, field, "{}", v.description);
            assert!(v.description.len() < 400, "{field}: {}", v.description);
        }
        // The grace limit is the server's.
        let mut s = ok();
        s.grace_period = Millis::from_secs(3600);
        assert!(
            spec(
                &s,
                &Limits {
                    max_grace: Millis::from_secs(7200)
                }
            )
            .is_ok()
        );
    }
}
