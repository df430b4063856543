//! `[plugins]` in the server's configuration file: the bounds every plugin
//! call runs under, and what each extension point does when a plugin fails.
//!
//! ```toml
//! [plugins]
//! memory_limit = "64MiB"          # linear memory per call
//! cpu_budget = "50ms"             # CPU time per call
//! instantiate_budget = "500ms"    # CPU time to set up a fresh instance
//! max_result_bytes = 65536        # strings and lists a plugin returns, in all
//! max_concurrent_calls = 8        # plugin calls running at once
//! max_concurrent_calls_per_tenant = 2  # of those, one tenant's (default: 2, at most half the cores)
//! calls_per_instance = 1000       # calls one instance serves (1: a fresh instance per call)
//! warm_instances = 32             # instances kept between calls, over all plugins and tenants
//! admission_on_error = "reject"   # or "accept"
//! quota_on_error = "hold"         # or "deny", "allow"
//! pricing_on_error = "list-price" # the rate card's price
//! max_price_factor = 100          # a price above 100 × the list price is refused
//! max_plugins_per_tenant = 16     # plugins one tenant may keep
//! max_plugin_bytes_per_tenant = "128MiB"  # their components' bytes, in all
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::domain::{MiB, Millis};

/// `[plugins]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfigFile {
    /// Linear memory a plugin may hold during a call (`64MiB`).
    pub memory_limit: Option<String>,
    /// How long one call may run (`50ms`).
    pub cpu_budget: Option<String>,
    /// How long setting up a fresh instance may run (`500ms`): mapping its
    /// memory image and its start functions, before and apart from the
    /// call's own budget.
    pub instantiate_budget: Option<String>,
    /// The most bytes of strings and list items a plugin may return.
    pub max_result_bytes: Option<usize>,
    /// Plugin calls running at once.
    pub max_concurrent_calls: Option<usize>,
    /// Of those, one tenant's calls (its own slots: a tenant whose plugin
    /// is slow or loops waits on its own calls, not on other tenants').
    pub max_concurrent_calls_per_tenant: Option<usize>,
    /// Calls one instance of a plugin serves, for one tenant, before it is
    /// replaced by a fresh one (1: every call gets a fresh instance).
    pub calls_per_instance: Option<u32>,
    /// Instances kept between calls, over every plugin and tenant.
    pub warm_instances: Option<usize>,
    pub admission_on_error: Option<AdmissionOnError>,
    pub quota_on_error: Option<QuotaOnError>,
    pub pricing_on_error: Option<PricingOnError>,
    /// A pricing plugin's answer above this many times the piece's list
    /// price is refused (`invalid_result`) and the list price charged.
    pub max_price_factor: Option<u64>,
    /// Plugins one tenant may keep (global plugins do not count).
    pub max_plugins_per_tenant: Option<usize>,
    /// The bytes of one tenant's components, in all (`128MiB`).
    pub max_plugin_bytes_per_tenant: Option<String>,
}

/// What a failed admission plugin does to the submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdmissionOnError {
    /// Fail closed: the submission is refused, naming the plugin (default).
    #[default]
    Reject,
    /// Fail open: the job is queued as submitted.
    Accept,
}

/// What a failed quota plugin does to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaOnError {
    /// Fail closed: the job stays pending, with a reason naming the plugin
    /// (default); it is asked again on a later pass.
    #[default]
    Hold,
    /// The job ends without running.
    Deny,
    /// Fail open: the job is placed if it fits.
    Allow,
}

/// What a failed pricing plugin charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PricingOnError {
    /// The built-in rate card's price for the piece (the only choice: a
    /// lease is always priced).
    #[default]
    ListPrice,
}

/// One tenant's calls at once by default: 2, but never more than half the
/// machine's cores (one on a 2-core machine), so that a tenant whose plugin
/// loops leaves cores to the others.
pub fn default_per_tenant() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    PolicyConfig::DEFAULT_MAX_CONCURRENT_CALLS_PER_TENANT.min((cores / 2).max(1))
}

/// The validated `[plugins]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub memory_limit: MiB,
    pub cpu_budget: Millis,
    pub instantiate_budget: Millis,
    pub max_result_bytes: usize,
    pub max_concurrent_calls: usize,
    pub max_concurrent_calls_per_tenant: usize,
    pub calls_per_instance: u32,
    pub warm_instances: usize,
    pub admission_on_error: AdmissionOnError,
    pub quota_on_error: QuotaOnError,
    pub pricing_on_error: PricingOnError,
    pub max_price_factor: u64,
    pub max_plugins_per_tenant: usize,
    pub max_plugin_bytes_per_tenant: MiB,
}

impl PolicyConfig {
    pub const DEFAULT_MAX_PRICE_FACTOR: u64 = 100;
    pub const DEFAULT_MAX_PLUGINS_PER_TENANT: usize = 16;
    /// Room for a few Python plugins (about 18 MiB each) beside Rust ones.
    pub const DEFAULT_MAX_PLUGIN_BYTES_PER_TENANT: MiB = MiB(128);
    /// Enough for the Python example (an interpreter needs about 16 MiB).
    pub const DEFAULT_MEMORY_LIMIT: MiB = MiB(64);
    pub const DEFAULT_CPU_BUDGET: Millis = Millis(50);
    /// A Python component's fresh instance maps ~12 MiB of memory image:
    /// 10–30 ms of CPU on an idle 2-core VM, 64 ms seen on a loaded one
    /// (page faults are the thread's CPU time). Charged apart from the
    /// call's budget, so a call always has the whole of its own.
    pub const DEFAULT_INSTANTIATE_BUDGET: Millis = Millis(500);
    pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024;
    pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 8;
    /// At most this many calls of one tenant run at once by default (fewer
    /// on a small machine, see [`default_per_tenant`]).
    pub const DEFAULT_MAX_CONCURRENT_CALLS_PER_TENANT: usize = 2;
    /// Amortises instantiation to nothing, and bounds what a plugin that
    /// leaks (or keeps state it should not) can accumulate.
    pub const DEFAULT_CALLS_PER_INSTANCE: u32 = 1000;
    pub const DEFAULT_WARM_INSTANCES: usize = 32;
    /// Beyond this the host would reserve too much address space per slot.
    pub const MAX_MEMORY_LIMIT: MiB = MiB(4 * 1024);

    /// Checks the section and fills in defaults.
    pub fn from_file(raw: &PluginsConfigFile) -> Result<PolicyConfig, String> {
        let d = PolicyConfig::default();
        let memory_limit = match &raw.memory_limit {
            None => d.memory_limit,
            Some(s) => s
                .parse::<MiB>()
                .map_err(|e| format!("plugins.memory_limit: {e}"))?,
        };
        if memory_limit.0 < 1 || memory_limit > Self::MAX_MEMORY_LIMIT {
            return Err(format!(
                "plugins.memory_limit: must be between 1MiB and {}, got {memory_limit}",
                Self::MAX_MEMORY_LIMIT
            ));
        }
        // A CPU budget: 1 ms to 10 s.
        let budget = |key: &str, raw: &Option<String>, default: Millis| -> Result<Millis, String> {
            let b = match raw {
                None => default,
                Some(s) => s.parse::<Millis>().map_err(|e| format!("plugins.{key}: {e}"))?,
            };
            if b.0 < 1 || b.0 > 10_000 {
                return Err(format!("plugins.{key}: must be between 1ms and 10s, got {b}"));
            }
            Ok(b)
        };
        let cpu_budget = budget("cpu_budget", &raw.cpu_budget, d.cpu_budget)?;
        let instantiate_budget = budget(
            "instantiate_budget",
            &raw.instantiate_budget,
            d.instantiate_budget,
        )?;
        let max_result_bytes = raw.max_result_bytes.unwrap_or(d.max_result_bytes);
        if !(1024..=16 << 20).contains(&max_result_bytes) {
            return Err(format!(
                "plugins.max_result_bytes: must be between 1024 and 16777216, got {max_result_bytes}"
            ));
        }
        let max_concurrent_calls = raw.max_concurrent_calls.unwrap_or(d.max_concurrent_calls);
        if !(1..=256).contains(&max_concurrent_calls) {
            return Err(format!(
                "plugins.max_concurrent_calls: must be between 1 and 256, got {max_concurrent_calls}"
            ));
        }
        let per_tenant = raw
            .max_concurrent_calls_per_tenant
            .unwrap_or(default_per_tenant().min(max_concurrent_calls));
        if !(1..=max_concurrent_calls).contains(&per_tenant) {
            return Err(format!(
                "plugins.max_concurrent_calls_per_tenant: must be between 1 and max_concurrent_calls ({max_concurrent_calls}), got {per_tenant}"
            ));
        }
        let calls_per_instance = raw.calls_per_instance.unwrap_or(d.calls_per_instance);
        if !(1..=1_000_000).contains(&calls_per_instance) {
            return Err(format!(
                "plugins.calls_per_instance: must be between 1 and 1000000, got {calls_per_instance}"
            ));
        }
        let warm_instances = raw.warm_instances.unwrap_or(d.warm_instances);
        if warm_instances > 1024 {
            return Err(format!(
                "plugins.warm_instances: must be between 0 and 1024, got {warm_instances}"
            ));
        }
        let max_price_factor = raw.max_price_factor.unwrap_or(d.max_price_factor);
        if !(1..=10_000).contains(&max_price_factor) {
            return Err(format!(
                "plugins.max_price_factor: must be between 1 and 10000, got {max_price_factor}"
            ));
        }
        let max_plugins_per_tenant = raw.max_plugins_per_tenant.unwrap_or(d.max_plugins_per_tenant);
        if !(1..=10_000).contains(&max_plugins_per_tenant) {
            return Err(format!(
                "plugins.max_plugins_per_tenant: must be between 1 and 10000, got {max_plugins_per_tenant}"
            ));
        }
        let max_plugin_bytes_per_tenant = match &raw.max_plugin_bytes_per_tenant {
            None => d.max_plugin_bytes_per_tenant,
            Some(s) => s
                .parse::<MiB>()
                .map_err(|e| format!("plugins.max_plugin_bytes_per_tenant: {e}"))?,
        };
        if max_plugin_bytes_per_tenant.0 < 1 || max_plugin_bytes_per_tenant.0 > 1 << 20 {
            return Err(format!(
                "plugins.max_plugin_bytes_per_tenant: must be between 1MiB and 1TiB, got {max_plugin_bytes_per_tenant}"
            ));
        }
        Ok(PolicyConfig {
            max_price_factor,
            max_plugins_per_tenant,
            max_plugin_bytes_per_tenant,
            memory_limit,
            cpu_budget,
            instantiate_budget,
            max_result_bytes,
            max_concurrent_calls,
            max_concurrent_calls_per_tenant: per_tenant,
            calls_per_instance,
            warm_instances,
            admission_on_error: raw.admission_on_error.unwrap_or_default(),
            quota_on_error: raw.quota_on_error.unwrap_or_default(),
            pricing_on_error: raw.pricing_on_error.unwrap_or_default(),
        })
    }

    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_limit.0 * 1024 * 1024
    }

    pub fn cpu_budget_duration(&self) -> Duration {
        self.cpu_budget.as_std()
    }

    /// The most a pricing plugin may charge for a piece of this list price
    /// (saturating: never wraps). A piece the rate card gives away may only
    /// be priced 0.
    pub fn max_price(&self, list_price_minor: u64) -> u64 {
        list_price_minor.saturating_mul(self.max_price_factor)
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            memory_limit: Self::DEFAULT_MEMORY_LIMIT,
            cpu_budget: Self::DEFAULT_CPU_BUDGET,
            instantiate_budget: Self::DEFAULT_INSTANTIATE_BUDGET,
            max_result_bytes: Self::DEFAULT_MAX_RESULT_BYTES,
            max_concurrent_calls: Self::DEFAULT_MAX_CONCURRENT_CALLS,
            max_concurrent_calls_per_tenant: default_per_tenant(),
            calls_per_instance: Self::DEFAULT_CALLS_PER_INSTANCE,
            warm_instances: Self::DEFAULT_WARM_INSTANCES,
            admission_on_error: AdmissionOnError::default(),
            quota_on_error: QuotaOnError::default(),
            pricing_on_error: PricingOnError::default(),
            max_price_factor: Self::DEFAULT_MAX_PRICE_FACTOR,
            max_plugins_per_tenant: Self::DEFAULT_MAX_PLUGINS_PER_TENANT,
            max_plugin_bytes_per_tenant: Self::DEFAULT_MAX_PLUGIN_BYTES_PER_TENANT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<PolicyConfig, String> {
        let raw: PluginsConfigFile = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        PolicyConfig::from_file(&raw)
    }

    #[test]
    fn an_empty_section_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), PolicyConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            r#"
            memory_limit = "32MiB"
            cpu_budget = "20ms"
            instantiate_budget = "200ms"
            max_result_bytes = 4096
            max_concurrent_calls = 2
            max_concurrent_calls_per_tenant = 1
            calls_per_instance = 1
            warm_instances = 0
            admission_on_error = "accept"
            quota_on_error = "deny"
            pricing_on_error = "list-price"
            "#,
        )
        .unwrap();
        assert_eq!(c.memory_limit, MiB(32));
        assert_eq!(c.memory_limit_bytes(), 32 << 20);
        assert_eq!(c.cpu_budget, Millis(20));
        assert_eq!(c.instantiate_budget, Millis(200));
        assert_eq!(c.max_result_bytes, 4096);
        assert_eq!(c.max_concurrent_calls, 2);
        assert_eq!(c.max_concurrent_calls_per_tenant, 1);
        assert_eq!(c.calls_per_instance, 1);
        assert_eq!(c.warm_instances, 0);
        assert_eq!(c.admission_on_error, AdmissionOnError::Accept);
        assert_eq!(c.quota_on_error, QuotaOnError::Deny);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("memory_limit = \"lots\"", "plugins.memory_limit"),
            ("memory_limit = \"1TiB\"", "plugins.memory_limit"),
            ("cpu_budget = \"0ms\"", "plugins.cpu_budget"),
            ("instantiate_budget = \"11s\"", "plugins.instantiate_budget"),
            ("max_result_bytes = 10", "plugins.max_result_bytes"),
            ("max_concurrent_calls = 0", "plugins.max_concurrent_calls"),
            (
                "max_concurrent_calls = 4\nmax_concurrent_calls_per_tenant = 5",
                "plugins.max_concurrent_calls_per_tenant",
            ),
            ("calls_per_instance = 0", "plugins.calls_per_instance"),
            ("warm_instances = 5000", "plugins.warm_instances"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(key), "{text}: {err}");
        }
        assert!(parse("admission_on_error = \"maybe\"").is_err());
        assert!(parse("unknown = 1").is_err());
    }
}
