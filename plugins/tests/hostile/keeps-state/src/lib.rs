//! Hostile: an admission plugin that keeps state between calls, which the
//! contract forbids, so the host's tests can see which calls shared an
//! instance. It rejects every job with `call N of instance`, N counting the
//! calls this instance has served. A job tagged `leak` makes it also leak
//! 8 MiB of memory per call (reserved, not written), so a kept instance
//! reaches its memory limit after a few calls where a fresh one never does.

use std::sync::atomic::{AtomicU32, Ordering};

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

static CALLS: AtomicU32 = AtomicU32::new(0);

pub struct KeepsState;

impl Admission for KeepsState {
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if request.job.tags.iter().any(|(k, _)| k == "leak") {
            std::mem::forget(std::hint::black_box(Vec::<u8>::with_capacity(8 << 20)));
        }
        AdmissionDecision::Reject(format!("call {n} of instance"))
    }
}

allot_plugin::export_admission!(KeepsState);
