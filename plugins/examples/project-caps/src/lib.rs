//! Quota plugin: caps each project's concurrent GPUs and its GPU-hours per
//! month.
//!
//! For a job that asks for GPUs (CPU-only jobs are always allowed):
//!
//! - **deny** it if it asks for more GPUs than its project may ever hold:
//!   waiting cannot help;
//! - **hold** it while its project has used up its GPU-hours this month
//!   (the budget renews on the 1st, 00:00 UTC);
//! - **hold** it while the GPUs its project holds plus the ones it asks
//!   for would exceed the project's cap;
//! - otherwise **allow** it.
//!
//! Limits are [`DEFAULT_LIMITS`] unless the project is listed in
//! [`PROJECT_LIMITS`]. They are constants: a plugin's configuration is its
//! build.

use allot_plugin::{Fraction, Quota, QuotaDecision, QuotaRequest};

/// What one project may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// GPUs held at once, the job being placed included.
    pub gpus: u64,
    /// GPU-hours per calendar month (UTC).
    pub gpu_hours_per_month: u64,
}

/// The limits of a project not listed in [`PROJECT_LIMITS`].
pub const DEFAULT_LIMITS: Limits = Limits {
    gpus: 4,
    gpu_hours_per_month: 100,
};

/// Projects with limits of their own.
pub const PROJECT_LIMITS: &[(&str, Limits)] = &[
    (
        "ml-research",
        Limits {
            gpus: 16,
            gpu_hours_per_month: 2_000,
        },
    ),
    (
        "interns",
        Limits {
            gpus: 1,
            gpu_hours_per_month: 20,
        },
    ),
];

const MS_PER_HOUR: u64 = 60 * 60 * 1000;

/// The limits that apply to `project`.
pub fn limits_of(project: &str) -> Limits {
    PROJECT_LIMITS
        .iter()
        .find(|(name, _)| *name == project)
        .map_or(DEFAULT_LIMITS, |(_, limits)| *limits)
}

/// The plugin.
pub struct ProjectCaps;

impl Quota for ProjectCaps {
    fn check(request: QuotaRequest) -> QuotaDecision {
        if request.job_gpus.is_zero() {
            return QuotaDecision::Allow;
        }
        let project = &request.project;
        let limits = limits_of(project);
        let cap = Fraction::whole(limits.gpus);
        if request.job_gpus > cap {
            return QuotaDecision::Deny(format!(
                "the job asks for {} GPUs; project {project} may hold at most {}",
                request.job_gpus, limits.gpus
            ));
        }

        let usage = request.project_usage();
        let budget_ms = limits.gpu_hours_per_month.saturating_mul(MS_PER_HOUR);
        if usage.gpu_ms_in_period >= budget_ms {
            return QuotaDecision::Hold(format!(
                "project {project} used {} of its {} GPU-hours this month; GPU jobs wait for the next month",
                gpu_hours(usage.gpu_ms_in_period),
                limits.gpu_hours_per_month
            ));
        }

        let within_cap = usage
            .gpus_held
            .checked_add(request.job_gpus)
            .is_some_and(|total| total <= cap);
        if !within_cap {
            allot_plugin::debug!("holding {:?}: {project} at its GPU cap", request.job.name);
            return QuotaDecision::Hold(format!(
                "project {project} holds {} of its {} GPUs; the job needs {} more",
                usage.gpus_held, limits.gpus, request.job_gpus
            ));
        }
        QuotaDecision::Allow
    }
}

/// GPU-milliseconds as GPU-hours with one decimal, rounded down: `99.9`.
fn gpu_hours(gpu_ms: u64) -> String {
    let tenths = gpu_ms / (MS_PER_HOUR / 10);
    format!("{}.{}", tenths / 10, tenths % 10)
}

allot_plugin::export_quota!(ProjectCaps);

#[cfg(test)]
mod tests {
    use super::*;
    use allot_plugin::{FractionShare, GpuRequest, JobSpec, ProjectUsage, Usage};

    fn whole(n: u32) -> GpuRequest {
        GpuRequest::Whole(n)
    }

    fn share(numerator: u64, denominator: u64) -> GpuRequest {
        GpuRequest::Fraction(FractionShare {
            share: Fraction::new(numerator, denominator),
            memory_mib: None,
        })
    }

    /// A request for a job asking for `gpu`, in a project (and tenant) with
    /// `usage`.
    fn request(project: &str, gpu: GpuRequest, usage: Usage) -> QuotaRequest {
        let job_gpus = match &gpu {
            GpuRequest::Whole(n) => Fraction::whole((*n).into()),
            GpuRequest::Fraction(f) => f.share,
            _ => Fraction::ZERO,
        };
        let mut job = JobSpec::new("train", "python");
        job.gpu = gpu;
        QuotaRequest {
            tenant: "acme".into(),
            project: project.into(),
            job,
            job_gpus,
            now_ms: 1_700_000_000_000,
            period_start_ms: 1_698_796_800_000,
            tenant_usage: usage.clone(),
            projects: vec![ProjectUsage {
                project: project.into(),
                usage,
            }],
        }
    }

    fn usage(gpus_held: Fraction, gpu_hours: u64) -> Usage {
        Usage {
            gpus_held,
            gpu_ms_in_period: gpu_hours * MS_PER_HOUR,
            ..Usage::zero("USD")
        }
    }

    fn hold_reason(decision: QuotaDecision) -> String {
        match decision {
            QuotaDecision::Hold(reason) => reason,
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    #[test]
    fn a_job_within_the_cap_and_budget_is_allowed() {
        let decision = ProjectCaps::check(request("vision", whole(2), usage(Fraction::whole(2), 10)));
        assert_eq!(decision, QuotaDecision::Allow);
    }

    #[test]
    fn a_job_that_would_exceed_the_gpu_cap_is_held() {
        let reason = hold_reason(ProjectCaps::check(request(
            "vision",
            whole(1),
            usage(Fraction::whole(4), 10),
        )));
        assert_eq!(
            reason,
            "project vision holds 4 of its 4 GPUs; the job needs 1 more"
        );
    }

    #[test]
    fn shares_count_exactly_against_the_cap() {
        let allowed = ProjectCaps::check(request("vision", share(1, 2), usage(Fraction::new(7, 2), 0)));
        assert_eq!(allowed, QuotaDecision::Allow, "7/2 + 1/2 is exactly the cap of 4");
        let reason = hold_reason(ProjectCaps::check(request(
            "vision",
            share(1, 7),
            usage(Fraction::whole(4), 0),
        )));
        assert_eq!(
            reason,
            "project vision holds 4 of its 4 GPUs; the job needs 1/7 more"
        );
    }

    #[test]
    fn a_job_larger_than_the_cap_is_denied() {
        let decision = ProjectCaps::check(request("interns", whole(2), usage(Fraction::ZERO, 0)));
        assert_eq!(
            decision,
            QuotaDecision::Deny("the job asks for 2 GPUs; project interns may hold at most 1".into())
        );
    }

    #[test]
    fn a_project_out_of_gpu_hours_is_held_until_next_month() {
        let mut spent = usage(Fraction::ZERO, 100);
        spent.gpu_ms_in_period += MS_PER_HOUR / 4;
        let reason = hold_reason(ProjectCaps::check(request("vision", whole(1), spent)));
        assert_eq!(
            reason,
            "project vision used 100.2 of its 100 GPU-hours this month; GPU jobs wait for the next month"
        );
    }

    #[test]
    fn a_project_just_under_its_budget_is_allowed() {
        let mut nearly = usage(Fraction::ZERO, 99);
        nearly.gpu_ms_in_period += MS_PER_HOUR - 1;
        assert_eq!(
            ProjectCaps::check(request("vision", whole(1), nearly)),
            QuotaDecision::Allow
        );
    }

    #[test]
    fn listed_projects_get_their_own_limits() {
        let decision = ProjectCaps::check(request("ml-research", whole(8), usage(Fraction::whole(8), 500)));
        assert_eq!(decision, QuotaDecision::Allow);
    }

    #[test]
    fn cpu_only_jobs_are_always_allowed() {
        let decision = ProjectCaps::check(request("interns", GpuRequest::None, usage(Fraction::ONE, 1_000)));
        assert_eq!(decision, QuotaDecision::Allow);
    }

    #[test]
    fn a_project_missing_from_the_usage_counts_as_unused() {
        let mut req = request("vision", whole(1), usage(Fraction::whole(4), 100));
        req.projects.clear();
        assert_eq!(ProjectCaps::check(req), QuotaDecision::Allow);
    }
}
