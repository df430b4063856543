//! Hostile: an admission plugin that allocates 1 MiB blocks without end. The
//! host must stop it at its memory limit. The blocks are reserved, not
//! written, so the limit is reached long before the CPU budget.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

pub struct MemoryBomb;

impl Admission for MemoryBomb {
    fn admit(_request: AdmissionRequest) -> AdmissionDecision {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(std::hint::black_box(Vec::<u8>::with_capacity(1 << 20)));
        }
    }
}

allot_plugin::export_admission!(MemoryBomb);
