//! Hostile: an admission plugin that rejects with a 1 MiB message. The host
//! must refuse an answer past its size cap.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

pub struct Oversized;

impl Admission for Oversized {
    fn admit(_request: AdmissionRequest) -> AdmissionDecision {
        AdmissionDecision::Reject("x".repeat(1 << 20))
    }
}

allot_plugin::export_admission!(Oversized);
