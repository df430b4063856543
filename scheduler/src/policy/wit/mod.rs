//! The WIT versions this host speaks, one module per frozen directory of
//! `plugins/wit/`, and the dispatch from a loaded plugin to its version's
//! bindings.
//!
//! To support a new version `vX.Y.Z`: add a module generated from
//! `plugins/wit/vX.Y.Z` beside [`v0_2_0`] (by [`version::version_bindings`]
//! when it differs from the last only by fields it names, else written out
//! with the same functions: `new`, `admit`, `check`, `price`), a variant to
//! [`Bindings`] and [`Instance`], its linker to [`add_to_linker`], and the
//! version to [`SUPPORTED`]. Older modules stay: plugins built for them keep
//! working unchanged.

mod bounded;
pub mod v0_1_0;
pub mod v0_2_0;
mod version;

use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};

use super::runtime::CallState;
use super::types::{ExtensionPoint, PriceInput, QuotaInput, WitVersion};
use crate::domain::{JobSpec, UnixMillis};

/// The versions of `allot:plugin` this host has bindings for, newest first.
pub const SUPPORTED: &[WitVersion] = &[WitVersion::new(0, 2, 0), WitVersion::new(0, 1, 0)];

/// The host bindings a plugin built for `built_for` runs on: the newest
/// supported version it is semver-compatible with.
pub fn host_version_for(built_for: WitVersion) -> Option<WitVersion> {
    SUPPORTED.iter().copied().find(|host| built_for.runs_on(*host))
}

/// Adds the imports every world of every version shares (`types`, `log`)
/// to the linker.
pub fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    v0_2_0::add_to_linker(linker)?;
    v0_1_0::add_to_linker(linker)
}

/// What a plugin's admission call answered, before the host validates it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawAdmission {
    Accept,
    Reject(String),
    /// A spec in the wire form, validated by the host like a submission.
    Modify(Box<allot_proto::v1::JobSpec>),
}

/// What a plugin's quota call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawQuota {
    Allow,
    Deny(String),
    Hold(String),
}

/// The typed template of one loaded plugin, for the version and world it
/// was built for.
pub enum Bindings {
    V0_1_0(v0_1_0::Bindings),
    V0_2_0(v0_2_0::Bindings),
}

/// Why a call did not produce an answer: a trap or host error from wasmtime,
/// or an answer too large to accept.
pub enum CallError {
    Wasm(wasmtime::Error),
    /// The answer's strings and lists are past the limit: the bytes
    /// counted when the lift was refused.
    Oversized(usize),
}

impl From<wasmtime::Error> for CallError {
    fn from(e: wasmtime::Error) -> Self {
        CallError::Wasm(e)
    }
}

impl Bindings {
    /// Type-checks the component's export against the world of `point` in
    /// `version`.
    pub fn new(
        version: WitVersion,
        point: ExtensionPoint,
        pre: InstancePre<CallState>,
    ) -> wasmtime::Result<Bindings> {
        match (version.major, version.minor) {
            (0, 1) => Ok(Bindings::V0_1_0(v0_1_0::Bindings::new(point, pre)?)),
            (0, 2) => Ok(Bindings::V0_2_0(v0_2_0::Bindings::new(point, pre)?)),
            _ => Err(wasmtime::format_err!(
                "no host bindings for allot:plugin@{version}"
            )),
        }
    }

    /// Instantiates the plugin in `store`.
    pub fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Instance> {
        match self {
            Bindings::V0_1_0(b) => b.instantiate(store).map(Instance::V0_1_0),
            Bindings::V0_2_0(b) => b.instantiate(store).map(Instance::V0_2_0),
        }
    }
}

/// A live instance of a plugin, in the version it was built for.
pub enum Instance {
    V0_1_0(v0_1_0::Instance),
    V0_2_0(v0_2_0::Instance),
}

impl Instance {
    pub fn admit(
        &self,
        store: &mut Store<CallState>,
        spec: &JobSpec,
        now: UnixMillis,
        max_result_bytes: usize,
    ) -> Result<RawAdmission, CallError> {
        match self {
            Instance::V0_1_0(i) => i.admit(store, spec, now, max_result_bytes),
            Instance::V0_2_0(i) => i.admit(store, spec, now, max_result_bytes),
        }
    }

    pub fn check(
        &self,
        store: &mut Store<CallState>,
        input: &QuotaInput,
        max_result_bytes: usize,
    ) -> Result<RawQuota, CallError> {
        match self {
            Instance::V0_1_0(i) => i.check(store, input, max_result_bytes),
            Instance::V0_2_0(i) => i.check(store, input, max_result_bytes),
        }
    }

    pub fn price(
        &self,
        store: &mut Store<CallState>,
        input: &PriceInput,
        max_result_bytes: usize,
    ) -> Result<Result<u64, String>, CallError> {
        match self {
            Instance::V0_1_0(i) => i.price(store, input, max_result_bytes),
            Instance::V0_2_0(i) => i.price(store, input, max_result_bytes),
        }
    }
}
