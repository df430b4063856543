//! Hostile: an admission plugin whose instantiation never ends. Its
//! `_initialize` (which componentization runs as the component's start,
//! before any export is called) loops; the host must stop it at its
//! instantiation budget.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

/// Run once when the component is instantiated.
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

pub struct SlowStart;

impl Admission for SlowStart {
    fn admit(_request: AdmissionRequest) -> AdmissionDecision {
        AdmissionDecision::Accept
    }
}

allot_plugin::export_admission!(SlowStart);
