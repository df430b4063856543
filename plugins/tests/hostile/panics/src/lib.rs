//! Hostile: an admission plugin that panics. With `panic = "abort"` the
//! panic traps after its message is written to standard error. It writes
//! 16 KiB of noise to standard error first, more than the host keeps: the
//! host must keep the end (the panic's message), not the beginning.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

pub struct Panics;

impl Admission for Panics {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        for i in 0..256 {
            eprintln!("noise line {i:03}: {}", "-".repeat(48));
        }
        panic!("hostile plugin panicked on job {:?}", request.job.name);
    }
}

allot_plugin::export_admission!(Panics);
