//! Plugins as records: which plugin (its owner, name and extension point,
//! the WIT version it was built for) and where it is bound (whose calls, in
//! which layer). The ledger stores them and the plugin host acts on them, so
//! they live here, below both: the ledger needs no plugin host to read them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{PluginName, TenantName, UnixMillis};

/// Where in a job's life a plugin is called. Each is one WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExtensionPoint {
    /// On submit: accept, reject or modify the job (world `admission`).
    Admission,
    /// Before a placement: allow, deny or hold the job (world `quota`).
    Quota,
    /// Per hour piece of a lease: its price (world `pricing`).
    Pricing,
}

impl ExtensionPoint {
    pub const ALL: [ExtensionPoint; 3] = [
        ExtensionPoint::Admission,
        ExtensionPoint::Quota,
        ExtensionPoint::Pricing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExtensionPoint::Admission => "admission",
            ExtensionPoint::Quota => "quota",
            ExtensionPoint::Pricing => "pricing",
        }
    }

    /// The one function a component of this world exports.
    pub fn export_name(self) -> &'static str {
        match self {
            ExtensionPoint::Admission => "admit",
            ExtensionPoint::Quota => "check",
            ExtensionPoint::Pricing => "price",
        }
    }

    /// The extension point whose world exports `name`.
    pub fn from_export(name: &str) -> Option<ExtensionPoint> {
        Self::ALL.into_iter().find(|p| p.export_name() == name)
    }
}

impl fmt::Display for ExtensionPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExtensionPoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| format!("unknown extension point {s:?}: use admission, quota or pricing"))
    }
}

/// A version of the WIT package `allot:plugin`, e.g. `0.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WitVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl WitVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        WitVersion { major, minor, patch }
    }

    /// Whether a plugin built for `self` runs on host bindings for `host`:
    /// semver compatibility, where for 0.x the minor version is the breaking one.
    pub fn runs_on(self, host: WitVersion) -> bool {
        if self.major != host.major {
            return false;
        }
        if self.major == 0 && self.minor != host.minor {
            return false;
        }
        (self.minor, self.patch) <= (host.minor, host.patch)
    }
}

impl fmt::Display for WitVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for WitVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a version (MAJOR.MINOR.PATCH)");
        let mut parts = s.split('.').map(|p| p.parse::<u32>().map_err(|_| bad()));
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(WitVersion::new(major?, minor?, patch?))
    }
}

impl TryFrom<String> for WitVersion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<WitVersion> for String {
    fn from(v: WitVersion) -> String {
        v.to_string()
    }
}

/// Who a plugin or a binding belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "tenant")]
pub enum Owner {
    /// An operator's: managed by admins; a global binding applies to every
    /// tenant without a binding of its own.
    Global,
    /// One tenant's: managed by that tenant (or an admin), applies only to
    /// that tenant's jobs.
    Tenant(TenantName),
}

impl Owner {
    /// The tenant, for a tenant's.
    pub fn tenant(&self) -> Option<&TenantName> {
        match self {
            Owner::Global => None,
            Owner::Tenant(t) => Some(t),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Global => f.write_str("global"),
            Owner::Tenant(t) => write!(f, "tenant {t}"),
        }
    }
}

/// A plugin by owner and name: what bindings point to, so that uploading a
/// new build under the same name replaces it everywhere it is bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PluginRef {
    pub owner: Owner,
    pub name: PluginName,
}

impl fmt::Display for PluginRef {
    /// `acme/require_cost_center`, or `global/require_cost_center`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.owner {
            Owner::Global => write!(f, "global/{}", self.name),
            Owner::Tenant(t) => write!(f, "{t}/{}", self.name),
        }
    }
}

/// A plugin as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub name: PluginName,
    pub owner: Owner,
    /// The SHA-256 of the component, lowercase hex.
    pub sha256: String,
    /// The world it exports.
    pub point: ExtensionPoint,
    /// The WIT version it was built for.
    pub wit_version: WitVersion,
    /// The component's size in bytes.
    pub size: u64,
    pub uploaded_at: UnixMillis,
    /// The id of the token that uploaded it.
    pub uploaded_by: String,
}

impl PluginRecord {
    pub fn plugin_ref(&self) -> PluginRef {
        PluginRef {
            owner: self.owner.clone(),
            name: self.name.clone(),
        }
    }
}

/// Whose policy a binding carries: it decides what the binding's plugin may
/// do (the trust model, docs/plugins.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The operator's: global bindings, and bindings an admin made for one
    /// tenant (which stand in for the global one for that tenant). Its
    /// pricing plugin sets the price that bills and counts against budgets.
    Operator,
    /// The tenant's own, made with a tenant token. Called besides the
    /// operator's, never instead: its admission plugin runs first and may
    /// reject or modify (the result is checked like a submission, then goes
    /// to the operator's); its quota plugin may only hold or deny more; its
    /// pricing plugin sets a showback price recorded beside the bill.
    #[default]
    Tenant,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Operator => "operator",
            Layer::Tenant => "tenant",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which plugin is called at one extension point, for one tenant or
/// globally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRecord {
    /// `Global`: every tenant without an operator binding of its own at
    /// this point.
    pub scope: Owner,
    /// A global binding is always the operator's. (Bindings stored before
    /// layers existed read as the tenant's: they never set a bill.)
    #[serde(default)]
    pub layer: Layer,
    pub point: ExtensionPoint,
    pub plugin: PluginRef,
    pub bound_at: UnixMillis,
    /// The id of the token that bound it.
    pub bound_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> WitVersion {
        s.parse().unwrap()
    }

    #[test]
    fn a_plugin_runs_on_the_bindings_of_any_compatible_version_not_older_than_its_own() {
        // 0.x: the minor version breaks.
        assert!(v("0.1.0").runs_on(v("0.1.0")));
        assert!(v("0.1.0").runs_on(v("0.1.4")));
        assert!(
            !v("0.1.4").runs_on(v("0.1.0")),
            "built for a patch the host lacks"
        );
        assert!(!v("0.1.0").runs_on(v("0.2.0")));
        assert!(!v("0.2.0").runs_on(v("0.1.9")));
        // From 1.0: the major version breaks.
        assert!(v("1.0.0").runs_on(v("1.3.0")));
        assert!(!v("1.3.0").runs_on(v("1.2.9")));
        assert!(!v("1.0.0").runs_on(v("2.0.0")));
        assert!(!v("0.1.0").runs_on(v("1.1.0")));
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(v("0.1.0"), WitVersion::new(0, 1, 0));
        assert_eq!(v("12.0.3").to_string(), "12.0.3");
        for bad in ["", "0.1", "0.1.0.0", "0.x.0", "v0.1.0", "-1.0.0"] {
            assert!(bad.parse::<WitVersion>().is_err(), "{bad:?}");
        }
    }
}
