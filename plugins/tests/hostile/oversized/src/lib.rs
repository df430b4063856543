//! Hostile: an admission plugin whose answers are too large for the host.
//! For a job named `many-args` it returns the job with two million empty
//! arguments (16 MB of list in its memory, ~48 MB once copied into the
//! host as strings); for any other job it rejects with a 1 MiB message.
//! The host must refuse both past its size cap, the first before copying.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

pub struct Oversized;

impl Admission for Oversized {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        if request.job.name == "many-args" {
            let mut job = request.job;
            job.args = vec![String::new(); 2_000_000];
            return AdmissionDecision::Modify(job);
        }
        AdmissionDecision::Reject("x".repeat(1 << 20))
    }
}

allot_plugin::export_admission!(Oversized);
