//! Write [allot](https://github.com/allot-sched/allot) policy plugins in Rust.
//!
//! A plugin is a WebAssembly component that implements one extension point
//! of the WIT contract `allot:plugin@0.2.0`:
//!
//! | extension point | trait | export macro | called |
//! |---|---|---|---|
//! | admission | [`Admission`] | [`export_admission!`] | on submit: accept, reject or modify the job |
//! | quota | [`Quota`] | [`export_quota!`] | before a placement: allow, deny or hold the job |
//! | pricing | [`Pricing`] | [`export_pricing!`] | per hour piece of a lease: its price |
//!
//! Each trait has one function with a default (accept, allow, the list
//! price), so a plugin overrides only what it decides:
//!
//! ```
//! use allot_plugin::{Admission, AdmissionDecision, AdmissionRequest};
//!
//! struct RequireTeam;
//!
//! impl Admission for RequireTeam {
//!     fn admit(request: AdmissionRequest) -> AdmissionDecision {
//!         match request.job.tag("team") {
//!             Some(_) => AdmissionDecision::Accept,
//!             None => AdmissionDecision::Reject("job needs a team tag".into()),
//!         }
//!     }
//! }
//!
//! allot_plugin::export_admission!(RequireTeam);
//! # fn main() {}
//! ```
//!
//! Build it as a `cdylib` with `cargo build --release --target
//! wasm32-wasip2`; the `.wasm` file in `target/wasm32-wasip2/release/` is the
//! component to upload.
//!
//! Plugins get no clock, randomness, files or network: a decision depends on
//! its request only, and the one thing a plugin may ask of the host is a log
//! line ([`info!`], [`warn!`], ...). Everything that is summed or billed is an
//! integer: GPU shares are exact [`Fraction`]s, money is integer minor units.

// The generated export macros expand in the plugin's crate, so the bindings
// name this crate `allot_plugin` even from inside it.
extern crate self as allot_plugin;

mod admission;
mod bindings;
mod fraction;
mod job;
pub mod log;
pub mod pairs;
mod pricing;
mod quota;

pub use admission::{Admission, AdmissionDecision, AdmissionRequest};
pub use fraction::Fraction;
pub use pricing::{Pricing, PricingRequest};
pub use quota::{ProjectUsage, Quota, QuotaDecision, QuotaRequest, Usage};

/// The records shared by every extension point.
pub use bindings::admission::allot::plugin::types::{FractionShare, GpuRequest, JobSpec, Money};

/// What the export macros expand to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::admission::allot::plugin::log;
    pub use crate::bindings::{admission, pricing, quota};
    pub use wit_bindgen::rt;

    /// The interface `types` as generated, with the SDK's own `Fraction`,
    /// for the worlds that reuse it.
    pub mod types {
        pub use crate::Fraction;
        pub use crate::bindings::admission::allot::plugin::types::*;
    }
}
