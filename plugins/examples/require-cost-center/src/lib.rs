//! Admission plugin: every job needs a `cost-center` tag, and jobs in the
//! project `sandbox` run for at most 2 hours and may be preempted.
//!
//! - A job without a `cost-center` tag (or with an empty one) is rejected,
//!   with a message that says how to add it.
//! - A job in the project [`SANDBOX_PROJECT`] gets a time limit of at most
//!   [`SANDBOX_TIME_LIMIT_MS`] (set if it had none, lowered if it was longer)
//!   and is made preemptible. The sandbox is chosen by project rather than
//!   by a tag, so that a user cannot opt out by leaving a tag off.
//! - Any other job is accepted unchanged.
//!
//! The settings are constants: a plugin's configuration is its build.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

/// The tag every job must carry.
pub const COST_CENTER_TAG: &str = "cost-center";
/// The project whose jobs are sandboxed.
pub const SANDBOX_PROJECT: &str = "sandbox";
/// The longest a sandbox job may run: 2 hours.
pub const SANDBOX_TIME_LIMIT_MS: u64 = 2 * 60 * 60 * 1000;

/// The plugin.
pub struct RequireCostCenter;

impl Admission for RequireCostCenter {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        let job = request.job;
        if job.tag(COST_CENTER_TAG).is_none_or(|v| v.trim().is_empty()) {
            return AdmissionDecision::Reject(format!(
                "job needs a {COST_CENTER_TAG} tag (add tags = {{ {COST_CENTER_TAG} = \"...\" }} to the job file, \
                 or --tag {COST_CENTER_TAG}=... to allot submit)"
            ));
        }
        if request.project != SANDBOX_PROJECT {
            return AdmissionDecision::Accept;
        }
        let time_limit_ms = job
            .time_limit_ms
            .map_or(SANDBOX_TIME_LIMIT_MS, |limit| limit.min(SANDBOX_TIME_LIMIT_MS));
        if job.preemptible && job.time_limit_ms == Some(time_limit_ms) {
            return AdmissionDecision::Accept;
        }
        allot_plugin::info!(
            "sandbox job {:?}: time limit {time_limit_ms} ms, preemptible",
            job.name
        );
        let mut sandboxed = job;
        sandboxed.preemptible = true;
        sandboxed.time_limit_ms = Some(time_limit_ms);
        AdmissionDecision::Modify(sandboxed)
    }
}

allot_plugin::export_admission!(RequireCostCenter);

#[cfg(test)]
mod tests {
    use super::*;
    use allot_plugin::JobSpec;

    const HOUR_MS: u64 = 60 * 60 * 1000;

    fn job_with_cost_center() -> JobSpec {
        let mut job = JobSpec::new("train", "python");
        job.set_tag(COST_CENTER_TAG, "cc-1234");
        job
    }

    fn admit(project: &str, job: JobSpec) -> AdmissionDecision {
        RequireCostCenter::admit(AdmissionRequest {
            tenant: "acme".into(),
            project: project.into(),
            job,
            now_ms: 1_700_000_000_000,
        })
    }

    #[test]
    fn a_job_without_a_cost_center_is_rejected_with_how_to_fix_it() {
        let AdmissionDecision::Reject(message) = admit("ml", JobSpec::new("train", "python")) else {
            panic!("expected a rejection");
        };
        assert!(message.starts_with("job needs a cost-center tag"), "{message}");
        assert!(message.contains("tags = { cost-center = \"...\" }"), "{message}");
    }

    #[test]
    fn an_empty_cost_center_is_rejected() {
        let mut job = JobSpec::new("train", "python");
        job.set_tag(COST_CENTER_TAG, " ");
        assert!(matches!(admit("ml", job), AdmissionDecision::Reject(_)));
    }

    #[test]
    fn a_job_with_a_cost_center_outside_the_sandbox_is_accepted_unchanged() {
        let mut job = job_with_cost_center();
        job.time_limit_ms = Some(48 * HOUR_MS);
        assert_eq!(admit("ml", job), AdmissionDecision::Accept);
    }

    #[test]
    fn a_sandbox_job_without_a_time_limit_gets_two_hours_and_is_preemptible() {
        let job = job_with_cost_center();
        let AdmissionDecision::Modify(modified) = admit(SANDBOX_PROJECT, job.clone()) else {
            panic!("expected a modified job");
        };
        assert_eq!(modified.time_limit_ms, Some(2 * HOUR_MS));
        assert!(modified.preemptible);
        assert_eq!(modified.tags, job.tags, "nothing else changes");
        assert_eq!(modified.command, job.command);
    }

    #[test]
    fn a_sandbox_job_keeps_a_shorter_time_limit() {
        let mut job = job_with_cost_center();
        job.time_limit_ms = Some(HOUR_MS);
        let AdmissionDecision::Modify(modified) = admit(SANDBOX_PROJECT, job) else {
            panic!("expected a modified job");
        };
        assert_eq!(modified.time_limit_ms, Some(HOUR_MS));
        assert!(modified.preemptible);
    }

    #[test]
    fn a_sandbox_job_with_a_longer_time_limit_is_capped() {
        let mut job = job_with_cost_center();
        job.time_limit_ms = Some(10 * HOUR_MS);
        let AdmissionDecision::Modify(modified) = admit(SANDBOX_PROJECT, job) else {
            panic!("expected a modified job");
        };
        assert_eq!(modified.time_limit_ms, Some(2 * HOUR_MS));
    }

    #[test]
    fn a_sandbox_job_already_within_the_rules_is_accepted() {
        let mut job = job_with_cost_center();
        job.time_limit_ms = Some(HOUR_MS);
        job.preemptible = true;
        assert_eq!(admit(SANDBOX_PROJECT, job), AdmissionDecision::Accept);
    }
}
