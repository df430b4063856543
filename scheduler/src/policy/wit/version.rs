//! The bindings of one WIT version, as a macro: every version's module
//! (`v0_1_0`, `v0_2_0`, …) is this code generated from its own frozen
//! directory, so the conversions between the host's types and a version's
//! are written once. A version that adds a field to a request names it in
//! the invocation (see `pricing_fields`); anything more different gets a
//! module of its own.
//!
//! In each version: one `bindgen!` per world. The admission world generates
//! the shared interfaces (`types`, `log`); the quota and pricing worlds
//! reuse them through `with`, so there is one `JobSpec` and one
//! `log::Host`. Answers are lifted through the bounded types of
//! [`bounded`](super::bounded), not `bindgen!`'s own.

/// Generates the bindings of the WIT directory `path` (relative to the
/// scheduler crate), with `pricing_fields`: fields of `PricingRequest` this
/// version adds, each copied from the `PriceInput` field of the same name.
macro_rules! version_bindings {
    (path: $path:literal, pricing_fields: [$($pricing_field:ident),* $(,)?] $(,)?) => {
        use std::collections::{BTreeMap, HashMap};

        use allot_proto::v1 as pb;
        use wasmtime::Store;
        use std::sync::atomic::{AtomicBool, Ordering};
        use wasmtime::component::{
            ComponentExportIndex, ComponentNamedList, ComponentType, Func, HasSelf, InstancePre, Lift, Linker, Lower,
            TypedFunc,
        };

        use super::bounded::{BList, BStr, lifted_within};
        use super::{CallError, RawAdmission, RawQuota};
        use crate::domain::money::Money;
        use crate::domain::{GpuRequest, JobSpec, Share, UnixMillis};
        use crate::policy::runtime::{CallState, LogLevel};
        use crate::policy::types::{ExtensionPoint, PriceInput, QuotaInput, Usage};

        /// The `admission` world, and the interfaces every world shares.
        pub mod admission {
            wasmtime::component::bindgen!({
                path: $path,
                world: "admission",
            });
        }

        /// The `quota` world.
        pub mod quota {
            wasmtime::component::bindgen!({
                path: $path,
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
                path: $path,
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

        /// A plugin's pre-instantiated template, its world's export, and
        /// whether that export's types were checked against the bounded
        /// answers yet (once per plugin: then every instance's export is
        /// typed without checking again).
        pub struct Bindings {
            point: ExtensionPoint,
            pre: InstancePre<CallState>,
            export: ComponentExportIndex,
            checked: AtomicBool,
        }

        fn wrong_world(point: ExtensionPoint) -> CallError {
            CallError::Wasm(wasmtime::format_err!(
                "the plugin is a {point} plugin and cannot be called at another extension point"
            ))
        }

        // What plugins answer, as the WIT has it, with every string and list
        // bounded while it is lifted (see `bounded`): `bindgen!`'s own types would
        // copy an answer of any size into the host before it could be refused.

        /// `job-spec`, as an admission plugin returns it in `modify`.
        #[derive(ComponentType, Lift)]
        #[component(record)]
        pub struct JobSpecAnswer {
            #[component(name = "name")]
            name: BStr,
            #[component(name = "command")]
            command: BStr,
            #[component(name = "args")]
            args: BList<BStr>,
            #[component(name = "env")]
            env: BList<(BStr, BStr)>,
            #[component(name = "working-dir")]
            working_dir: Option<BStr>,
            #[component(name = "gpu")]
            gpu: GpuRequestAnswer,
            #[component(name = "cpu-millis")]
            cpu_millis: u64,
            #[component(name = "memory-mib")]
            memory_mib: u64,
            #[component(name = "gpu-models")]
            gpu_models: BList<BStr>,
            #[component(name = "node-labels")]
            node_labels: BList<(BStr, BStr)>,
            #[component(name = "spread")]
            spread: bool,
            #[component(name = "priority")]
            priority: i32,
            #[component(name = "preemptible")]
            preemptible: bool,
            #[component(name = "time-limit-ms")]
            time_limit_ms: Option<u64>,
            #[component(name = "grace-period-ms")]
            grace_period_ms: u64,
            #[component(name = "min-runtime-ms")]
            min_runtime_ms: Option<u64>,
            #[component(name = "checkpoint-interval-ms")]
            checkpoint_interval_ms: Option<u64>,
            #[component(name = "tags")]
            tags: BList<(BStr, BStr)>,
        }

        /// `gpu-request`, as returned.
        #[derive(ComponentType, Lift)]
        #[component(variant)]
        pub enum GpuRequestAnswer {
            #[component(name = "none")]
            None,
            #[component(name = "whole")]
            Whole(u32),
            #[component(name = "fraction")]
            Fraction(types::FractionShare),
            #[component(name = "mig")]
            Mig(BStr),
        }

        /// `admission-decision`. (Lifted by value, one per call: wasmtime cannot
        /// lift into a `Box`.)
        #[allow(clippy::large_enum_variant)]
        #[derive(ComponentType, Lift)]
        #[component(variant)]
        pub enum AdmissionAnswer {
            #[component(name = "accept")]
            Accept,
            #[component(name = "reject")]
            Reject(BStr),
            #[component(name = "modify")]
            Modify(JobSpecAnswer),
        }

        /// `quota-decision`.
        #[derive(ComponentType, Lift)]
        #[component(variant)]
        pub enum QuotaAnswer {
            #[component(name = "allow")]
            Allow,
            #[component(name = "deny")]
            Deny(BStr),
            #[component(name = "hold")]
            Hold(BStr),
        }

        /// `price`'s `result<u64, string>`.
        pub type PriceAnswer = Result<u64, BStr>;

        impl From<JobSpecAnswer> for types::JobSpec {
            fn from(a: JobSpecAnswer) -> types::JobSpec {
                types::JobSpec {
                    name: a.name.0,
                    command: a.command.0,
                    args: a.args.strings(),
                    env: a.env.pairs(),
                    working_dir: a.working_dir.map(String::from),
                    gpu: match a.gpu {
                        GpuRequestAnswer::None => types::GpuRequest::None,
                        GpuRequestAnswer::Whole(n) => types::GpuRequest::Whole(n),
                        GpuRequestAnswer::Fraction(f) => types::GpuRequest::Fraction(f),
                        GpuRequestAnswer::Mig(p) => types::GpuRequest::Mig(p.0),
                    },
                    cpu_millis: a.cpu_millis,
                    memory_mib: a.memory_mib,
                    gpu_models: a.gpu_models.strings(),
                    node_labels: a.node_labels.pairs(),
                    spread: a.spread,
                    priority: a.priority,
                    preemptible: a.preemptible,
                    time_limit_ms: a.time_limit_ms,
                    grace_period_ms: a.grace_period_ms,
                    min_runtime_ms: a.min_runtime_ms,
                    checkpoint_interval_ms: a.checkpoint_interval_ms,
                    tags: a.tags.pairs(),
                }
            }
        }

        /// Calls `f`, its answer's strings and lists held to `max` bytes while they
        /// are lifted.
        fn bounded_call<P, R>(
            f: &TypedFunc<P, (R,)>,
            store: &mut Store<CallState>,
            params: P,
            max: usize,
        ) -> Result<R, CallError>
        where
            P: ComponentNamedList + Lower,
            R: Lift,
        {
            let (answer, over) = lifted_within(max, || f.call(&mut *store, params));
            if let Some(size) = over {
                return Err(CallError::Oversized(size));
            }
            Ok(answer?.0)
        }

        impl Bindings {
            /// Checks the component against the world of `point` (its
            /// `bindgen!` bindings do), and finds its export.
            pub fn new(point: ExtensionPoint, pre: InstancePre<CallState>) -> wasmtime::Result<Bindings> {
                let name = match point {
                    ExtensionPoint::Admission => {
                        admission::AdmissionPre::new(pre.clone())?;
                        "admit"
                    }
                    ExtensionPoint::Quota => {
                        quota::QuotaPre::new(pre.clone())?;
                        "check"
                    }
                    ExtensionPoint::Pricing => {
                        pricing::PricingPre::new(pre.clone())?;
                        "price"
                    }
                };
                let export = pre
                    .component()
                    .get_export_index(None, name)
                    .ok_or_else(|| wasmtime::format_err!("the component does not export `{name}`"))?;
                Ok(Bindings {
                    point,
                    pre,
                    export,
                    checked: AtomicBool::new(false),
                })
            }

            /// A fresh instance, its export typed with the bounded answers.
            pub fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Instance> {
                let instance = self.pre.instantiate(&mut *store)?;
                let func = instance
                    .get_func(&mut *store, &self.export)
                    .ok_or_else(|| wasmtime::format_err!("the instance lacks its export"))?;
                Ok(match self.point {
                    ExtensionPoint::Admission => Instance::Admission(self.typed(&*store, func)?),
                    ExtensionPoint::Quota => Instance::Quota(self.typed(&*store, func)?),
                    ExtensionPoint::Pricing => Instance::Pricing(self.typed(&*store, func)?),
                })
            }

            /// `func` typed as `TypedFunc<P, R>`: checked the first time,
            /// then taken as checked.
            fn typed<P, R>(&self, store: &Store<CallState>, func: Func) -> wasmtime::Result<TypedFunc<P, R>>
            where
                P: ComponentNamedList + Lower,
                R: ComponentNamedList + Lift,
            {
                if self.checked.load(Ordering::Acquire) {
                    // SAFETY: the same export of the same component (every
                    // instance comes from `self.pre`) was type-checked as
                    // `TypedFunc<P, R>` by `Func::typed` below: `P` and `R`
                    // are fixed by the world (`self.point`), so the check
                    // holds for every instance.
                    return Ok(unsafe { TypedFunc::new_unchecked(func) });
                }
                let typed = func.typed::<P, R>(store)?;
                self.checked.store(true, Ordering::Release);
                Ok(typed)
            }
        }

        /// A live instance of a plugin: its world's export.
        pub enum Instance {
            Admission(TypedFunc<(admission::AdmissionRequest,), (AdmissionAnswer,)>),
            Quota(TypedFunc<(quota::QuotaRequest,), (QuotaAnswer,)>),
            Pricing(TypedFunc<(pricing::PricingRequest,), (PriceAnswer,)>),
        }

        impl Instance {
            pub fn admit(
                &self,
                store: &mut Store<CallState>,
                spec: &JobSpec,
                now: UnixMillis,
                max_result_bytes: usize,
            ) -> Result<RawAdmission, CallError> {
                let Instance::Admission(admit) = self else {
                    return Err(wrong_world(ExtensionPoint::Admission));
                };
                let request = admission::AdmissionRequest {
                    tenant: spec.tenant.to_string(),
                    project: spec.project.to_string(),
                    job: job_spec(spec),
                    now_ms: now.0,
                };
                Ok(match bounded_call(admit, store, (request,), max_result_bytes)? {
                    AdmissionAnswer::Accept => RawAdmission::Accept,
                    AdmissionAnswer::Reject(message) => RawAdmission::Reject(message.0),
                    AdmissionAnswer::Modify(job) => RawAdmission::Modify(Box::new(job_spec_pb(job.into(), spec))),
                })
            }

            pub fn check(
                &self,
                store: &mut Store<CallState>,
                input: &QuotaInput,
                max_result_bytes: usize,
            ) -> Result<RawQuota, CallError> {
                let Instance::Quota(check) = self else {
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
                Ok(match bounded_call(check, store, (request,), max_result_bytes)? {
                    QuotaAnswer::Allow => RawQuota::Allow,
                    QuotaAnswer::Deny(reason) => RawQuota::Deny(reason.0),
                    QuotaAnswer::Hold(reason) => RawQuota::Hold(reason.0),
                })
            }

            pub fn price(
                &self,
                store: &mut Store<CallState>,
                input: &PriceInput,
                max_result_bytes: usize,
            ) -> Result<Result<u64, String>, CallError> {
                let Instance::Pricing(price) = self else {
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
                    $($pricing_field: input.$pricing_field,)*
                };
                Ok(bounded_call(price, store, (request,), max_result_bytes)?.map_err(String::from))
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

        /// A number the wire form holds as `i64`: values past `i64::MAX` become -1,
        /// which validation refuses naming the field.
        fn signed(v: u64) -> i64 {
            i64::try_from(v).unwrap_or(-1)
        }

        /// A spec a plugin returned, in the wire form, so that the API's own
        /// validation checks it. Tenant, project, the node-lost retries and
        /// the batch script (not part of the contract) stay the submitted
        /// job's.
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
                script: submitted.script.clone(),
                queue: submitted.queue.as_ref().map(ToString::to_string).unwrap_or_default(),
                dependency: submitted.dependency.as_ref().map(ToString::to_string).unwrap_or_default(),
                array: submitted.array.as_ref().map(ToString::to_string).unwrap_or_default(),
                output: submitted.output.clone().unwrap_or_default(),
                error: submitted.error.clone().unwrap_or_default(),
                qos: submitted.qos.as_ref().map(ToString::to_string).unwrap_or_default(),
                nodes: submitted.constraints.nodes.iter().map(ToString::to_string).collect(),
                exclude_nodes: submitted
                    .constraints
                    .exclude_nodes
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            }
        }

        #[cfg(test)]
        mod tests {
            use super::*;
            use crate::domain::validate;

            fn validated(spec: &pb::JobSpec) -> Result<JobSpec, validate::Violation> {
                validate::job_spec(spec, "acme".parse().unwrap())
            }

            fn submitted(spec: pb::JobSpec) -> JobSpec {
                validated(&spec).unwrap()
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
                    script: Some("#!/bin/sh\necho hi\n".into()),
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
                let err = validated(&job_spec_pb(wit, &original)).unwrap_err();
                assert!(err.to_string().starts_with("spec.time_limit_ms"), "{err}");
                let mut wit = job_spec(&original);
                wit.cpu_millis = 0;
                let err = validated(&job_spec_pb(wit, &original)).unwrap_err();
                assert!(err.to_string().starts_with("spec.resources.cpu_millis"), "{err}");
            }
        }
    };
}

pub(crate) use version_bindings;
