//! Hostile: an admission plugin that returns a job asking for 0 GPUs, which
//! no submission may. The host must validate it like a submission.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest, GpuRequest};

pub struct BadModify;

impl Admission for BadModify {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        let mut job = request.job;
        job.gpu = GpuRequest::Whole(0);
        AdmissionDecision::Modify(job)
    }
}

allot_plugin::export_admission!(BadModify);
