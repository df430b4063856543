//! How the CLI shows things: aligned tables for people, JSON for scripts.

use allot_sdk::proto;
use serde_json::{Value, json};

use crate::domain::{Millis, UnixMillis};

pub fn state_name(s: i32) -> &'static str {
    match proto::JobState::try_from(s) {
        Ok(proto::JobState::Pending) => "PENDING",
        Ok(proto::JobState::Starting) => "STARTING",
        Ok(proto::JobState::Running) => "RUNNING",
        Ok(proto::JobState::Succeeded) => "SUCCEEDED",
        Ok(proto::JobState::Failed) => "FAILED",
        Ok(proto::JobState::Cancelled) => "CANCELLED",
        Ok(proto::JobState::TimedOut) => "TIMED_OUT",
        Ok(proto::JobState::Preempted) => "PREEMPTED",
        Ok(proto::JobState::NodeLost) => "NODE_LOST",
        Ok(proto::JobState::DependencyNeverSatisfied) => "DEPENDENCY_NEVER_SATISFIED",
        _ => "UNKNOWN",
    }
}

/// Parses `running`, `TIMED_OUT`, `timed-out`, … into a state.
pub fn parse_state(s: &str) -> anyhow::Result<proto::JobState> {
    let norm = s.trim().to_ascii_uppercase().replace('-', "_");
    proto::JobState::from_str_name(&format!("JOB_STATE_{norm}"))
        .filter(|s| *s != proto::JobState::Unspecified)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown state {s:?}: use pending, starting, running, succeeded, failed, cancelled, timed_out, preempted, node_lost or dependency_never_satisfied"
            )
        })
}

pub fn lease_state_name(s: i32) -> &'static str {
    match proto::LeaseState::try_from(s) {
        Ok(proto::LeaseState::Reserved) => "reserved",
        Ok(proto::LeaseState::Active) => "active",
        Ok(proto::LeaseState::Closed) => "closed",
        _ => "unknown",
    }
}

pub fn end_reason_name(s: i32) -> &'static str {
    match proto::LeaseEndReason::try_from(s) {
        Ok(proto::LeaseEndReason::Succeeded) => "succeeded",
        Ok(proto::LeaseEndReason::Failed) => "failed",
        Ok(proto::LeaseEndReason::Cancelled) => "cancelled",
        Ok(proto::LeaseEndReason::TimedOut) => "timed-out",
        Ok(proto::LeaseEndReason::Preempted) => "preempted",
        Ok(proto::LeaseEndReason::NodeLost) => "node-lost",
        Ok(proto::LeaseEndReason::ReleasedUnstarted) => "released-unstarted",
        Ok(proto::LeaseEndReason::Requeued) => "requeued",
        _ => "",
    }
}

pub fn fraction(f: Option<&proto::Fraction>) -> String {
    match f {
        Some(f) if f.denominator == 1 => f.numerator.to_string(),
        Some(f) => format!("{}/{}", f.numerator, f.denominator),
        None => "0".into(),
    }
}

/// `2 GPUs`, `1/4 GPU`, `MIG 1g.10gb`, `-`.
pub fn gpu_request(spec: Option<&proto::JobSpec>) -> String {
    match spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.gpu.as_ref())
    {
        None => "-".into(),
        Some(proto::resources::Gpu::Gpus(1)) => "1 GPU".into(),
        Some(proto::resources::Gpu::Gpus(n)) => format!("{n} GPUs"),
        Some(proto::resources::Gpu::GpuFraction(f)) => format!("{} GPU", fraction(Some(f))),
        Some(proto::resources::Gpu::MigProfile(p)) => format!("MIG {p}"),
    }
}

pub fn time(ms: i64) -> String {
    if ms <= 0 {
        "-".into()
    } else {
        UnixMillis(ms as u64).to_string()
    }
}

pub fn duration(ms: i64) -> String {
    Millis(ms.max(0) as u64).to_string()
}

/// How long ago, roughly: `5s`, `3m`, `2h`, `4d`.
pub fn age(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = (UnixMillis::now().0 as i64 - ms).max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A shell-like rendering of a command line.
pub fn command_line(spec: Option<&proto::JobSpec>) -> String {
    let Some(spec) = spec else { return String::new() };
    std::iter::once(&spec.command)
        .chain(spec.args.iter())
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints rows with columns padded to the widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn opt_ms(ms: i64) -> Value {
    if ms > 0 {
        json!(UnixMillis(ms as u64).to_string())
    } else {
        Value::Null
    }
}

pub fn device_json(d: &proto::DeviceAssignment) -> Value {
    json!({
        "gpu_uuid": d.gpu_uuid,
        "device_uuid": d.device_uuid,
        "gpu_index": d.gpu_index,
        "gpu_model": d.gpu_model,
        "mig_profile": if d.mig_profile.is_empty() { Value::Null } else { json!(d.mig_profile) },
        "share": fraction(d.share.as_ref()),
        "gpu_memory_mib": d.gpu_memory_mib,
    })
}

pub fn lease_json(l: &proto::Lease) -> Value {
    json!({
        "id": l.id,
        "job_id": l.job_id,
        "attempt": l.attempt,
        "tenant": l.tenant,
        "project": l.project,
        "node": l.node,
        "device": l.device.as_ref().map(device_json),
        "state": lease_state_name(l.state),
        "reserved_at": opt_ms(l.reserved_at_unix_ms),
        "started_at": opt_ms(l.started_at_unix_ms),
        "ended_at": opt_ms(l.ended_at_unix_ms),
        "reserved_at_unix_ms": l.reserved_at_unix_ms,
        "started_at_unix_ms": l.started_at_unix_ms,
        "ended_at_unix_ms": l.ended_at_unix_ms,
        "end_reason": match end_reason_name(l.end_reason) { "" => Value::Null, r => json!(r) },
        "gpu_hours": l.gpu_hours,
        "gpu_time_units": l.gpu_time_units,
        "currency": l.currency,
        "cost_minor": l.cost_minor,
        "cost_micros": l.cost_micros,
        "rate_per_gpu_hour": l.rate_per_gpu_hour,
        "priced_by": l.priced_by,
        "showback_by": match l.showback_by.as_str() { "" => Value::Null, by => json!(by) },
        "showback_cost_minor": (!l.showback_by.is_empty()).then_some(l.showback_cost_minor),
        "showback_cost_micros": (!l.showback_by.is_empty()).then_some(&l.showback_cost_micros),
        "tags": l.tags,
        "agent_runtime_ms": l.agent_runtime_ms,
        "idle_ms": l.idle_ms,
    })
}

fn placement_json(p: &proto::Placement) -> Value {
    json!({
        "node": p.node,
        "devices": p.devices.iter().map(device_json).collect::<Vec<_>>(),
        "cpu_millis": p.cpu_millis,
        "memory_mib": p.memory_mib,
    })
}

/// How `allot jobs` names a job, like squeue: `ID`, `ARRAY_7` for a task,
/// `ARRAY_[8-99%8]` for an array's tasks not started yet.
pub fn display_id(j: &proto::Job) -> String {
    if let Some(index) = j.array_task_id {
        return format!("{}_{index}", j.array_job_id);
    }
    let array = j.spec.as_ref().map(|s| s.array.as_str()).unwrap_or_default();
    if array.is_empty() || j.array_pending.is_empty() {
        return j.id.clone();
    }
    let throttle = array
        .rsplit_once('%')
        .map(|(_, t)| format!("%{t}"))
        .unwrap_or_default();
    format!("{}_[{}{throttle}]", j.id, j.array_pending)
}

/// Whether a job is an array's own record.
pub fn is_array(j: &proto::Job) -> bool {
    j.spec.as_ref().is_some_and(|s| !s.array.is_empty())
}

pub fn job_json(j: &proto::Job) -> Value {
    let spec = j.spec.as_ref();
    let array = is_array(j).then(|| {
        json!({
            "indices": spec.map(|s| s.array.clone()),
            "tasks": j.array_tasks,
            "pending": j.array_pending,
            "succeeded": j.array_succeeded,
            "failed": j.array_failed,
            "cancelled": j.array_cancelled,
        })
    });
    let task = j
        .array_task_id
        .map(|index| json!({"array": j.array_job_id, "index": index}));
    json!({
        "id": j.id,
        "display_id": display_id(j),
        "array": array,
        "array_task": task,
        "name": spec.map(|s| s.name.clone()),
        "state": state_name(j.state),
        "reason": j.reason,
        "tenant": j.tenant,
        "project": j.project,
        "queue": spec.map(|s| s.queue.clone()),
        "dependency": spec.map(|s| s.dependency.clone()),
        "command": spec.map(|s| s.command.clone()),
        "args": spec.map(|s| s.args.clone()),
        "gpu": gpu_request(spec),
        "priority": spec.map(|s| s.priority),
        "preemptible": spec.map(|s| s.preemptible),
        "time_limit_ms": spec.and_then(|s| s.time_limit_ms),
        "gpu_models": spec.map(|s| s.gpu_models.clone()),
        "node_labels": spec.map(|s| s.node_labels.clone()),
        "min_runtime_ms": spec.and_then(|s| s.min_runtime_ms),
        "checkpoint_interval_ms": spec.and_then(|s| s.checkpoint_interval_ms),
        "node_lost_retries": spec.and_then(|s| s.node_lost_retries),
        "node_lost_requeues": j.node_lost_requeues,
        "tags": spec.map(|s| s.tags.clone()),
        "attempt": j.attempt,
        "cancel_requested": j.cancel_requested,
        "held": j.held,
        "held_by_admin": j.held_by_admin,
        "requeue_requested": j.requeue_requested,
        "expected_start": opt_ms(j.expected_start_unix_ms),
        "exit_code": j.exit_code,
        "signal": j.signal,
        "submitted_at": opt_ms(j.submitted_at_unix_ms),
        "started_at": opt_ms(j.started_at_unix_ms),
        "ended_at": opt_ms(j.ended_at_unix_ms),
        "placement": j.placement.as_ref().map(placement_json),
        "placements": j.placements.iter().map(placement_json).collect::<Vec<_>>(),
        "leases": j.leases.iter().map(lease_json).collect::<Vec<_>>(),
    })
}

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_loosely() {
        assert_eq!(parse_state("running").unwrap(), proto::JobState::Running);
        assert_eq!(parse_state("timed-out").unwrap(), proto::JobState::TimedOut);
        assert_eq!(parse_state("NODE_LOST").unwrap(), proto::JobState::NodeLost);
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("nope").is_err());
    }

    #[test]
    fn command_lines_are_quoted() {
        let spec = proto::JobSpec {
            command: "sh".into(),
            args: vec!["-c".into(), "echo $X; it's".into()],
            ..Default::default()
        };
        assert_eq!(command_line(Some(&spec)), r#"sh -c 'echo $X; it'\''s'"#);
    }
}
