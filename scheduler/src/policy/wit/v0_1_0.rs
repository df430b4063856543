//! Bindings for `allot:plugin@0.1.0` (`plugins/wit/v0.1.0`, frozen), and the
//! conversions between the host's types and this version's.
//!
//! One `bindgen!` per world. The admission world generates the shared
//! interfaces (`types`, `log`); the quota and pricing worlds reuse them
//! through `with`, so there is one `JobSpec` and one `log::Host`.

use std::collections::{BTreeMap, HashMap};

use allot_proto::v1 as pb;
use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::{CallError, RawAdmission, RawQuota};
use crate::domain::money::Money;
use crate::domain::{GpuRequest, JobSpec, Share, UnixMillis};
use crate::policy::runtime::{CallState, LogLevel};
use crate::policy::types::{ExtensionPoint, PriceInput, QuotaInput, Usage};

/// The `admission` world, and the interfaces every world shares.
pub mod admission {
    wasmtime::component::bindgen!({
        path: "../plugins/wit/v0.1.0",
        world: "admission",
    });
}

/// The `quota` world.
pub mod quota {
    wasmtime::component::bindgen!({
        path: "../plugins/wit/v0.1.0",
        world: "quota",
        with: {
            "allot:plugin/types": super::admission::allot::plugin::types,
            "allot:plugin/log": super::admission::allot::plugin::log,
        },
    });
}

/// The `pricing` world.
pub mod pricing {
    wasmtime::component::bindgen!({
        path: "../plugins/wit/v0.1.0",
        world: "pricing",
        with: {
            "allot:plugin/types": super::admission::allot::plugin::types,
            "allot:plugin/log": super::admission::allot::plugin::log,
        },
    });
}

use admission::allot::plugin::{log, types};

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.log_line(level, message);
    }
}

impl types::Host for CallState {}

/// Adds `types` and `log` (shared by the three worlds) to the linker.
pub fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    admission::Admission::add_to_linker::<CallState, HasSelf<CallState>>(linker, |state| state)
}

/// A plugin's pre-instantiated template, typed by its world.
pub enum Bindings {
    Admission(admission::AdmissionPre<CallState>),
    Quota(quota::QuotaPre<CallState>),
    Pricing(pricing::PricingPre<CallState>),
}

fn wrong_world(point: ExtensionPoint) -> CallError {
    CallError::Wasm(wasmtime::format_err!(
        "the plugin is a {point} plugin and cannot be called at another extension point"
    ))
}

/// Fails when an answer's strings and lists add up to more than `max` bytes.
fn bounded(size: usize, max: usize) -> Result<(), CallError> {
    if size > max {
        return Err(CallError::Oversized(size));
    }
    Ok(())
}

impl Bindings {
    pub fn new(point: ExtensionPoint, pre: InstancePre<CallState>) -> wasmtime::Result<Bindings> {
        Ok(match point {
            ExtensionPoint::Admission => Bindings::Admission(admission::AdmissionPre::new(pre)?),
            ExtensionPoint::Quota => Bindings::Quota(quota::QuotaPre::new(pre)?),
            ExtensionPoint::Pricing => Bindings::Pricing(pricing::PricingPre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Bindings::Admission(pre) => Instance::Admission(pre.instantiate(store)?),
            Bindings::Quota(pre) => Instance::Quota(pre.instantiate(store)?),
            Bindings::Pricing(pre) => Instance::Pricing(pre.instantiate(store)?),
        })
    }
}

/// A live instance of a plugin, typed by its world.
pub enum Instance {
    Admission(admission::Admission),
    Quota(quota::Quota),
    Pricing(pricing::Pricing),
}

impl Instance {
    pub fn admit(
        &self,
        store: &mut Store<CallState>,
        spec: &JobSpec,
        now: UnixMillis,
        max_result_bytes: usize,
    ) -> Result<RawAdmission, CallError> {
        let Instance::Admission(instance) = self else {
            return Err(wrong_world(ExtensionPoint::Admission));
        };
        let request = admission::AdmissionRequest {
            tenant: spec.tenant.to_string(),
            project: spec.project.to_string(),
            job: job_spec(spec),
            now_ms: now.0,
        };
        Ok(match instance.call_admit(&mut *store, &request)? {
            admission::AdmissionDecision::Accept => RawAdmission::Accept,
            admission::AdmissionDecision::Reject(message) => {
                bounded(message.len(), max_result_bytes)?;
                RawAdmission::Reject(message)
            }
            admission::AdmissionDecision::Modify(job) => {
                bounded(spec_size(&job), max_result_bytes)?;
                RawAdmission::Modify(Box::new(job_spec_pb(job, spec)))
            }
        })
    }

    pub fn check(
        &self,
        store: &mut Store<CallState>,
        input: &QuotaInput,
        max_result_bytes: usize,
    ) -> Result<RawQuota, CallError> {
        let Instance::Quota(instance) = self else {
            return Err(wrong_world(ExtensionPoint::Quota));
        };
        let request = quota::QuotaRequest {
            tenant: input.job.tenant.to_string(),
            project: input.job.project.to_string(),
            job: job_spec(&input.job),
            job_gpus: fraction(input.job_gpus),
            now_ms: input.now.0,
            period_start_ms: input.period_start.0,
            tenant_usage: usage(&input.tenant_usage),
            projects: input
                .projects
                .iter()
                .map(|(project, u)| quota::ProjectUsage {
                    project: project.to_string(),
                    usage: usage(u),
                })
                .collect(),
        };
        Ok(match instance.call_check(&mut *store, &request)? {
            quota::QuotaDecision::Allow => RawQuota::Allow,
            quota::QuotaDecision::Deny(reason) => {
                bounded(reason.len(), max_result_bytes)?;
                RawQuota::Deny(reason)
            }
            quota::QuotaDecision::Hold(reason) => {
                bounded(reason.len(), max_result_bytes)?;
                RawQuota::Hold(reason)
            }
        })
    }

    pub fn price(
        &self,
        store: &mut Store<CallState>,
        input: &PriceInput,
        max_result_bytes: usize,
    ) -> Result<Result<u64, String>, CallError> {
        let Instance::Pricing(instance) = self else {
            return Err(wrong_world(ExtensionPoint::Pricing));
        };
        let request = pricing::PricingRequest {
            tenant: input.tenant.to_string(),
            project: input.project.to_string(),
            gpu_model: input.gpu_model.clone(),
            mig_profile: input.mig_profile.as_ref().map(|p| p.to_string()),
            share: fraction(input.share),
            start_ms: input.start.0,
            duration_ms: input.duration.0,
            preemptible: input.preemptible,
            tags: pairs(&input.tags),
            currency: input.currency.to_string(),
            list_price_minor: input.list_price_minor,
        };
        let answer = instance.call_price(&mut *store, &request)?;
        if let Err(message) = &answer {
            bounded(message.len(), max_result_bytes)?;
        }
        Ok(answer)
    }
}

fn fraction(s: Share) -> types::Fraction {
    types::Fraction {
        numerator: s.numerator(),
        denominator: s.denominator(),
    }
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn usage(u: &Usage) -> quota::Usage {
    quota::Usage {
        gpus_held: fraction(u.gpus_held),
        gpu_memory_held_mib: u.gpu_memory_held.0,
        running_jobs: u.running_jobs,
        pending_jobs: u.pending_jobs,
        gpu_ms_in_period: u.gpu_ms_in_period,
        spend_in_period: money(&u.spend_in_period),
    }
}

fn money(m: &Money) -> types::Money {
    types::Money {
        minor: i64::try_from(m.minor).unwrap_or(if m.minor < 0 { i64::MIN } else { i64::MAX }),
        currency: m.currency.to_string(),
    }
}

/// The host's validated spec as this version sends it.
pub fn job_spec(s: &JobSpec) -> types::JobSpec {
    let gpu = match &s.resources.gpu {
        GpuRequest::None => types::GpuRequest::None,
        GpuRequest::Whole(n) => types::GpuRequest::Whole(n.get()),
        GpuRequest::Fraction { share, memory } => types::GpuRequest::Fraction(types::FractionShare {
            share: fraction(*share),
            memory_mib: memory.map(|m| m.0),
        }),
        GpuRequest::Mig(p) => types::GpuRequest::Mig(p.to_string()),
    };
    types::JobSpec {
        name: s.name.clone(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: pairs(&s.env),
        working_dir: s.working_dir.clone(),
        gpu,
        cpu_millis: s.resources.cpu.0,
        memory_mib: s.resources.memory.0,
        gpu_models: s.constraints.gpu_models.clone(),
        node_labels: pairs(&s.constraints.node_labels),
        spread: s.constraints.spread,
        priority: s.priority,
        preemptible: s.preemptible,
        time_limit_ms: s.time_limit.map(|t| t.0),
        grace_period_ms: s.grace_period.0,
        min_runtime_ms: s.min_runtime.map(|t| t.0),
        checkpoint_interval_ms: s.checkpoint_interval.map(|t| t.0),
        tags: pairs(&s.tags),
    }
}

/// The bytes of strings in a returned spec (plus a word per list item), to
/// hold it to the result cap.
fn spec_size(s: &types::JobSpec) -> usize {
    let strings = |v: &[String]| v.iter().map(|x| x.len() + 8).sum::<usize>();
    let pairs = |v: &[(String, String)]| v.iter().map(|(k, x)| k.len() + x.len() + 8).sum::<usize>();
    let gpu = match &s.gpu {
        types::GpuRequest::Mig(p) => p.len(),
        _ => 0,
    };
    s.name.len()
        + s.command.len()
        + strings(&s.args)
        + pairs(&s.env)
        + s.working_dir.as_ref().map_or(0, String::len)
        + gpu
        + strings(&s.gpu_models)
        + pairs(&s.node_labels)
        + pairs(&s.tags)
}

/// A number the wire form holds as `i64`: values past `i64::MAX` become -1,
/// which validation refuses naming the field.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(-1)
}

/// A spec a plugin returned, in the wire form, so that the API's own
/// validation checks it. Tenant, project and the node-lost retries (not
/// part of the contract) stay the submitted job's.
fn job_spec_pb(s: types::JobSpec, submitted: &JobSpec) -> pb::JobSpec {
    let map = |v: Vec<(String, String)>| v.into_iter().collect::<HashMap<_, _>>();
    let (gpu, gpu_memory_mib) = match s.gpu {
        types::GpuRequest::None => (None, 0),
        types::GpuRequest::Whole(n) => (Some(pb::resources::Gpu::Gpus(i32::try_from(n).unwrap_or(-1))), 0),
        types::GpuRequest::Fraction(f) => (
            Some(pb::resources::Gpu::GpuFraction(pb::Fraction {
                numerator: f.share.numerator,
                denominator: f.share.denominator,
            })),
            f.memory_mib.map_or(0, signed),
        ),
        types::GpuRequest::Mig(p) => (Some(pb::resources::Gpu::MigProfile(p)), 0),
    };
    // 0 means "the default" on the wire; a plugin asking for 0 gets -1, refused.
    let nonzero = |v: u64| if v == 0 { -1 } else { signed(v) };
    pb::JobSpec {
        name: s.name,
        command: s.command,
        args: s.args,
        env: map(s.env),
        working_dir: s.working_dir.unwrap_or_default(),
        resources: Some(pb::Resources {
            gpu,
            cpu_millis: nonzero(s.cpu_millis),
            memory_mib: nonzero(s.memory_mib),
            gpu_memory_mib,
        }),
        priority: s.priority,
        preemptible: s.preemptible,
        time_limit_ms: s.time_limit_ms.map(signed),
        grace_period_ms: Some(signed(s.grace_period_ms)),
        tenant: submitted.tenant.to_string(),
        project: submitted.project.to_string(),
        tags: map(s.tags),
        gpu_models: s.gpu_models,
        node_labels: map(s.node_labels),
        min_runtime_ms: s.min_runtime_ms.map(signed),
        checkpoint_interval_ms: s.checkpoint_interval_ms.map(signed),
        spread: s.spread,
        node_lost_retries: Some(submitted.node_lost_retries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert;
    use crate::auth::Caller;
    use crate::ledger::Role;

    fn caller() -> Caller {
        Caller {
            role: Role::Tenant("acme".parse().unwrap()),
            token_id: "t".into(),
            node: None,
        }
    }

    fn submitted(spec: pb::JobSpec) -> JobSpec {
        convert::job_spec(&caller(), Some(&spec)).unwrap()
    }

    #[test]
    fn a_spec_sent_and_returned_unchanged_validates_to_itself() {
        let mut spec = pb::JobSpec {
            name: "train".into(),
            command: "python".into(),
            args: vec!["train.py".into()],
            working_dir: "/data".into(),
            project: "vision".into(),
            priority: 5,
            time_limit_ms: Some(3_600_000),
            min_runtime_ms: Some(60_000),
            gpu_models: vec!["H100-80GB".into()],
            resources: Some(pb::Resources {
                gpu: Some(pb::resources::Gpu::GpuFraction(pb::Fraction {
                    numerator: 1,
                    denominator: 4,
                })),
                gpu_memory_mib: 20_480,
                cpu_millis: 1500,
                memory_mib: 4096,
            }),
            node_lost_retries: Some(5),
            ..Default::default()
        };
        spec.tags.insert("cost-center".into(), "cc-1".into());
        spec.env.insert("SEED".into(), "1".into());
        spec.node_labels.insert("zone".into(), "a".into());
        let original = submitted(spec);
        let round_trip = job_spec_pb(job_spec(&original), &original);
        assert_eq!(submitted(round_trip), original);
    }

    #[test]
    fn values_the_wire_cannot_hold_are_refused_naming_the_field() {
        let original = submitted(pb::JobSpec {
            command: "true".into(),
            ..Default::default()
        });
        let mut wit = job_spec(&original);
        wit.time_limit_ms = Some(u64::MAX);
        let err = convert::job_spec(&caller(), Some(&job_spec_pb(wit, &original))).unwrap_err();
        assert!(err.to_string().starts_with("spec.time_limit_ms"), "{err}");
        let mut wit = job_spec(&original);
        wit.cpu_millis = 0;
        let err = convert::job_spec(&caller(), Some(&job_spec_pb(wit, &original))).unwrap_err();
        assert!(err.to_string().starts_with("spec.resources.cpu_millis"), "{err}");
    }
}
