//! The admission extension point: on submit, accept, reject or modify a job.

pub use crate::bindings::admission::{AdmissionDecision, AdmissionRequest};

/// An admission plugin: sees each of its tenant's jobs as it is submitted.
///
/// Export the implementing type with [`export_admission!`](crate::export_admission).
pub trait Admission {
    /// Decides whether, and in what form, a job is admitted.
    ///
    /// The default accepts every job unchanged.
    fn admit(request: AdmissionRequest) -> AdmissionDecision {
        let _ = request;
        AdmissionDecision::Accept
    }
}

/// Exports a type implementing [`Admission`] as the plugin's `admit`.
///
/// Use it once, in the plugin's `cdylib` crate:
///
/// ```
/// struct AcceptAll;
/// impl allot_plugin::Admission for AcceptAll {}
/// allot_plugin::export_admission!(AcceptAll);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_admission {
    ($plugin:ty) => {
        const _: () = {
            struct Export;
            impl $crate::__private::admission::Guest for Export {
                fn admit(request: $crate::AdmissionRequest) -> $crate::AdmissionDecision {
                    <$plugin as $crate::Admission>::admit(request)
                }
            }
            $crate::__private::admission::export_world!(
                Export with_types_in $crate::__private::admission
            );
        };
    };
}
