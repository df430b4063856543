//! Hostile: an admission plugin that loops forever. The host must stop it at
//! its CPU budget.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

pub struct LoopForever;

impl Admission for LoopForever {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(request.now_ms));
        }
    }
}

allot_plugin::export_admission!(LoopForever);
