//! Hostile: an admission plugin that recurses without end. The host must stop
//! it when the WebAssembly stack runs out.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

/// Recurses through a function pointer the optimiser cannot see through, so
/// the recursion is not turned into a loop.
fn recurse(depth: u64) -> u64 {
    let next: fn(u64) -> u64 = std::hint::black_box(recurse);
    next(depth + 1).wrapping_add(depth)
}

pub struct DeepRecursion;

impl Admission for DeepRecursion {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        let depth = recurse(request.now_ms);
        AdmissionDecision::Reject(format!("unreachable: {depth}"))
    }
}

allot_plugin::export_admission!(DeepRecursion);
