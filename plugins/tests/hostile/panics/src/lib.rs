//! Hostile: an admission plugin that panics. With `panic = "abort"` the
//! panic traps after its message is written to standard error.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

pub struct Panics;

impl Admission for Panics {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        panic!("hostile plugin panicked on job {:?}", request.job.name);
    }
}

allot_plugin::export_admission!(Panics);
