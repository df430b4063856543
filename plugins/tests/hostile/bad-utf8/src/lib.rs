//! Hostile: an admission plugin that rejects with a "string" that is not
//! UTF-8 (bytes 0xff 0xfe), as a plugin in any language could hand back.
//! The host must refuse the answer as `invalid_result`, not mistake it for
//! a failure to instantiate.

use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};

pub struct BadUtf8;

impl Admission for BadUtf8 {
    fn admit(_request: AdmissionRequest) -> AdmissionDecision {
        // SAFETY: deliberately not UTF-8; the string is only handed to the
        // host through the canonical ABI (pointer and length), never used
        // as a str here.
        let message = unsafe { String::from_utf8_unchecked(vec![b'n', b'o', 0xff, 0xfe]) };
        AdmissionDecision::Reject(message)
    }
}

allot_plugin::export_admission!(BadUtf8);
