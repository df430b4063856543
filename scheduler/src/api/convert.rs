//! proto ↔ domain. Bad input becomes `InvalidArgument` here, naming the field.

use allot_proto::v1 as pb;

use super::error::{ApiError, ApiResult};
use crate::accounting::{self, GpuTime};
use crate::auth::Caller;
use crate::domain::validate;
use crate::domain::{
    DeviceGrant, EndReason, GpuRequest, Job, JobId, JobSpec, JobState, Lease, LeaseState, Placement, Share,
    TenantName, UnixMillis,
};
use crate::ledger::Role;

/// Env variables the agent sets itself; a job may not override them.
pub fn parse_job_id(field: &str, s: &str) -> ApiResult<JobId> {
    if s.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    s.parse().map_err(|e: String| ApiError::invalid(field, e))
}

impl From<validate::Violation> for ApiError {
    fn from(v: validate::Violation) -> Self {
        ApiError::invalid(v.field, v.description)
    }
}

pub fn job_spec(caller: &Caller, spec: Option<&pb::JobSpec>) -> ApiResult<JobSpec> {
    let spec = spec.ok_or_else(|| ApiError::invalid("spec", "is required"))?;
    let tenant = match (&caller.role, spec.tenant.trim()) {
        (Role::Tenant(own), "") => own.clone(),
        (Role::Tenant(own), t) if t == own.as_str() => own.clone(),
        (Role::Tenant(_), _) => {
            return Err(ApiError::PermissionDenied(
                "a tenant token may submit jobs only for its own tenant".into(),
            ));
        }
        (Role::Admin, "") => {
            return Err(ApiError::invalid(
                "spec.tenant",
                "is required when submitting with an admin token",
            ));
        }
        (Role::Admin, t) => t
            .parse::<TenantName>()
            .map_err(|e| ApiError::invalid("spec.tenant", e))?,
        (Role::Agent, _) => {
            return Err(ApiError::PermissionDenied(
                "an agent token cannot submit jobs".into(),
            ));
        }
    };
    Ok(validate::job_spec(spec, tenant)?)
}

pub fn share_pb(s: Share) -> pb::Fraction {
    pb::Fraction {
        numerator: s.numerator(),
        denominator: s.denominator(),
    }
}

pub fn state_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Starting => pb::JobState::Starting,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
        JobState::TimedOut => pb::JobState::TimedOut,
        JobState::Preempted => pb::JobState::Preempted,
        JobState::NodeLost => pb::JobState::NodeLost,
        JobState::DependencyNeverSatisfied => pb::JobState::DependencyNeverSatisfied,
    }
}

pub fn state_from_pb(field: &str, v: i32) -> ApiResult<JobState> {
    Ok(match pb::JobState::try_from(v) {
        Ok(pb::JobState::Pending) => JobState::Pending,
        Ok(pb::JobState::Starting) => JobState::Starting,
        Ok(pb::JobState::Running) => JobState::Running,
        Ok(pb::JobState::Succeeded) => JobState::Succeeded,
        Ok(pb::JobState::Failed) => JobState::Failed,
        Ok(pb::JobState::Cancelled) => JobState::Cancelled,
        Ok(pb::JobState::TimedOut) => JobState::TimedOut,
        Ok(pb::JobState::Preempted) => JobState::Preempted,
        Ok(pb::JobState::NodeLost) => JobState::NodeLost,
        Ok(pb::JobState::DependencyNeverSatisfied) => JobState::DependencyNeverSatisfied,
        _ => return Err(ApiError::invalid(field, format!("{v} is not a job state"))),
    })
}

fn ms(t: Option<crate::domain::UnixMillis>) -> i64 {
    t.map(|t| t.0 as i64).unwrap_or(0)
}

pub fn device_pb(d: &DeviceGrant) -> pb::DeviceAssignment {
    pb::DeviceAssignment {
        gpu_uuid: d.gpu_uuid.clone(),
        device_uuid: d.device_uuid.clone(),
        gpu_index: d.gpu_index,
        gpu_model: d.gpu_model.clone(),
        mig_profile: d.mig_profile.as_ref().map(|p| p.to_string()).unwrap_or_default(),
        share: Some(share_pb(d.share)),
        gpu_memory_mib: d.gpu_memory.0,
    }
}

pub fn placement_pb(p: &Placement) -> pb::Placement {
    pb::Placement {
        node: p.node.to_string(),
        devices: p.devices.iter().map(device_pb).collect(),
        cpu_millis: p.cpu.0 as i64,
        memory_mib: p.memory.0 as i64,
    }
}

/// The wire form of a lease, with its GPU-time and cost up to `now`.
pub fn lease_pb(l: &Lease, now: UnixMillis) -> pb::Lease {
    let state = match l.state {
        LeaseState::Reserved => pb::LeaseState::Reserved,
        LeaseState::Active => pb::LeaseState::Active,
        LeaseState::Closed => pb::LeaseState::Closed,
    };
    let end_reason = match l.end_reason {
        None => pb::LeaseEndReason::Unspecified,
        Some(EndReason::Succeeded) => pb::LeaseEndReason::Succeeded,
        Some(EndReason::Failed) => pb::LeaseEndReason::Failed,
        Some(EndReason::Cancelled) => pb::LeaseEndReason::Cancelled,
        Some(EndReason::TimedOut) => pb::LeaseEndReason::TimedOut,
        Some(EndReason::Preempted) => pb::LeaseEndReason::Preempted,
        Some(EndReason::NodeLost) => pb::LeaseEndReason::NodeLost,
        Some(EndReason::ReleasedUnstarted) => pb::LeaseEndReason::ReleasedUnstarted,
        Some(EndReason::Requeued) => pb::LeaseEndReason::Requeued,
    };
    let parts = accounting::hour_parts(l, now, UnixMillis(0), UnixMillis(u64::MAX));
    let gpu_time = parts.iter().fold(GpuTime::ZERO, |a, p| a + p.gpu_time);
    let cost_micros: i128 = parts
        .iter()
        .fold(0i128, |c, p| c.saturating_add(accounting::part_cost(l, p)));
    let cost_minor = accounting::minor_of(cost_micros);
    let showback = accounting::showback(l, now);
    pb::Lease {
        id: l.id.to_string(),
        job_id: l.job_id.to_string(),
        tenant: l.tenant.to_string(),
        project: l.project.to_string(),
        node: l.node.to_string(),
        device: Some(device_pb(&l.device)),
        state: state as i32,
        reserved_at_unix_ms: l.reserved_at.0 as i64,
        started_at_unix_ms: ms(l.started_at),
        ended_at_unix_ms: ms(l.ended_at),
        end_reason: end_reason as i32,
        attempt: l.attempt,
        gpu_time_units: gpu_time.0.to_string(),
        gpu_hours: gpu_time.to_string(),
        currency: l.rate.map(|r| r.currency.to_string()).unwrap_or_default(),
        cost_minor: i64::try_from(cost_minor).unwrap_or(i64::MAX),
        cost_micros: cost_micros.to_string(),
        rate_per_gpu_hour: l
            .rate
            .map(|r| r.per_gpu_hour.display(r.currency))
            .unwrap_or_default(),
        tags: l.tags.clone().into_iter().collect(),
        agent_runtime_ms: l.agent_runtime.map(|r| r.0 as i64),
        idle_ms: l.idle_ms().map(|ms| ms as i64),
        priced_by: match &l.plugin_prices {
            None => String::new(),
            Some(p) if p.pending => "pending".into(),
            Some(p) => p.plugin.clone(),
        },
        showback_by: showback.map(|(by, _)| by.to_string()).unwrap_or_default(),
        showback_cost_minor: showback
            .map(|(_, micros)| i64::try_from(accounting::minor_of(micros)).unwrap_or(i64::MAX))
            .unwrap_or_default(),
        showback_cost_micros: showback.map(|(_, micros)| micros.to_string()).unwrap_or_default(),
    }
}

pub fn spec_pb(s: &JobSpec) -> pb::JobSpec {
    let gpu = match &s.resources.gpu {
        GpuRequest::None => None,
        GpuRequest::Whole(n) => Some(pb::resources::Gpu::Gpus(n.get() as i32)),
        GpuRequest::Fraction { share, .. } => Some(pb::resources::Gpu::GpuFraction(share_pb(*share))),
        GpuRequest::Mig(p) => Some(pb::resources::Gpu::MigProfile(p.to_string())),
    };
    let gpu_memory = match &s.resources.gpu {
        GpuRequest::Fraction { memory: Some(m), .. } => m.0 as i64,
        _ => 0,
    };
    pb::JobSpec {
        name: s.name.clone(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.clone().into_iter().collect(),
        working_dir: s.working_dir.clone().unwrap_or_default(),
        resources: Some(pb::Resources {
            gpu,
            cpu_millis: s.resources.cpu.0 as i64,
            memory_mib: s.resources.memory.0 as i64,
            gpu_memory_mib: gpu_memory,
        }),
        priority: s.priority,
        preemptible: s.preemptible,
        time_limit_ms: s.time_limit.map(|t| t.0 as i64),
        grace_period_ms: Some(s.grace_period.0 as i64),
        tenant: s.tenant.to_string(),
        project: s.project.to_string(),
        tags: s.tags.clone().into_iter().collect(),
        gpu_models: s.constraints.gpu_models.clone(),
        node_labels: s.constraints.node_labels.clone().into_iter().collect(),
        min_runtime_ms: s.min_runtime.map(|t| t.0 as i64),
        checkpoint_interval_ms: s.checkpoint_interval.map(|t| t.0 as i64),
        spread: s.constraints.spread,
        node_lost_retries: Some(s.node_lost_retries),
        script: s.script.clone(),
        queue: s.queue.as_ref().map(ToString::to_string).unwrap_or_default(),
        dependency: s.dependency.as_ref().map(ToString::to_string).unwrap_or_default(),
        array: s.array.as_ref().map(ToString::to_string).unwrap_or_default(),
        output: s.output.clone().unwrap_or_default(),
        error: s.error.clone().unwrap_or_default(),
        qos: s.qos.as_ref().map(ToString::to_string).unwrap_or_default(),
        nodes: s.constraints.nodes.iter().map(ToString::to_string).collect(),
        exclude_nodes: s
            .constraints
            .exclude_nodes
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// The wire form of a job, with its leases (costed up to `now`).
pub fn job_pb(j: &Job, leases: &[Lease], now: UnixMillis) -> pb::Job {
    pb::Job {
        id: j.id.to_string(),
        spec: Some(spec_pb(&j.spec)),
        tenant: j.spec.tenant.to_string(),
        project: j.spec.project.to_string(),
        state: state_pb(j.state) as i32,
        reason: j.reason.clone(),
        submitted_at_unix_ms: j.submitted_at.0 as i64,
        started_at_unix_ms: ms(j.started_at),
        ended_at_unix_ms: ms(j.ended_at),
        exit_code: j.exit_code,
        signal: j.signal,
        placement: j.placements.first().map(placement_pb),
        placements: j.placements.iter().map(placement_pb).collect(),
        leases: leases.iter().map(|l| lease_pb(l, now)).collect(),
        attempt: j.attempt,
        cancel_requested: j.cancel_requested,
        node_lost_requeues: j.node_lost_requeues,
        held: j.hold.is_some(),
        held_by_admin: j.hold.as_ref().is_some_and(|h| h.by_admin),
        requeue_requested: j.requeue_requested,
        expected_start_unix_ms: ms(j.expected_start),
        array_job_id: j.array_task.map(|t| t.array.to_string()).unwrap_or_default(),
        array_task_id: j.array_task.map(|t| t.index),
        array_pending: match (&j.spec.array, &j.array) {
            (Some(spec), Some(p)) => spec.rest(p.next, &p.skip),
            _ => String::new(),
        },
        array_tasks: j.spec.array.as_ref().map(|a| a.len()).unwrap_or_default(),
        array_succeeded: j.array.as_ref().map(|p| p.ended.succeeded).unwrap_or_default(),
        array_failed: j.array.as_ref().map(|p| p.ended.failed).unwrap_or_default(),
        array_cancelled: j.array.as_ref().map(|p| p.ended.cancelled).unwrap_or_default(),
    }
}
