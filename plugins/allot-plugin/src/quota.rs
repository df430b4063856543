//! The quota extension point: before a placement, allow, deny or hold a job.

pub use crate::bindings::quota::{ProjectUsage, QuotaDecision, QuotaRequest, Usage};

/// A quota plugin: asked before each placement of one of its tenant's jobs.
///
/// The usage in a request counts the tenant's jobs that the plugin has
/// already allowed and that wait for their placement as running (holding
/// their GPUs, and the most GPU memory they could get): the scheduler asks
/// about several pending jobs at once and places the allowed ones next. So
/// a cap is kept by comparing the request's usage plus `job_gpus` with it,
/// as if the jobs were asked about one at a time. Decisions must be monotone
/// in what is held (allowed with more held means allowed with less), as a
/// cap is; see `docs/plugins.md`.
///
/// Export the implementing type with [`export_quota!`](crate::export_quota).
pub trait Quota {
    /// Decides whether a job may be placed now.
    ///
    /// The default allows every job.
    fn check(request: QuotaRequest) -> QuotaDecision {
        let _ = request;
        QuotaDecision::Allow
    }
}

impl QuotaRequest {
    /// The usage of the job's own project (zero if the host sent none).
    pub fn project_usage(&self) -> Usage {
        self.usage_of(&self.project)
    }

    /// The usage of `project` (zero if the host sent none).
    pub fn usage_of(&self, project: &str) -> Usage {
        self.projects.iter().find(|p| p.project == project).map_or_else(
            || Usage::zero(&self.tenant_usage.spend_in_period.currency),
            |p| p.usage.clone(),
        )
    }
}

impl Usage {
    /// No usage at all, with spend counted in `currency`.
    pub fn zero(currency: &str) -> Usage {
        Usage {
            gpus_held: crate::Fraction::ZERO,
            gpu_memory_held_mib: 0,
            running_jobs: 0,
            pending_jobs: 0,
            gpu_ms_in_period: 0,
            spend_in_period: crate::Money {
                minor: 0,
                currency: currency.to_string(),
            },
        }
    }
}

/// Exports a type implementing [`Quota`] as the plugin's `check`.
///
/// ```
/// struct AllowAll;
/// impl allot_plugin::Quota for AllowAll {}
/// allot_plugin::export_quota!(AllowAll);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_quota {
    ($plugin:ty) => {
        const _: () = {
            struct Export;
            impl $crate::__private::quota::Guest for Export {
                fn check(request: $crate::QuotaRequest) -> $crate::QuotaDecision {
                    <$plugin as $crate::Quota>::check(request)
                }
            }
            $crate::__private::quota::export_world!(
                Export with_types_in $crate::__private::quota
            );
        };
    };
}
