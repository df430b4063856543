//! Fair share (Slurm's multifactor fair-share, two levels as in KAI's
//! hierarchical queues): each tenant's decayed GPU-time, and each project's
//! inside its tenant, compared with the weights admins gave them.
//!
//! Usage is the ledger's exact GPU-time by hour, each hour weighed by
//! `2^(-age / half_life)` (Slurm's PriorityDecayHalfLife). A tenant's factor
//! is `2^(-U/S)`, with `U` its share of all tenants' decayed usage and `S`
//! its weight's share of the weights of the tenants that count (those with
//! a weight set, decayed usage, or pending work); a project's factor is the
//! same inside its tenant. Factors are in (0, 1]: 1 for no usage, 0.5 for
//! usage exactly at the share. They order pending work and are never summed
//! or billed, so they are floating point.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::accounting::usage::UsageRow;
use crate::domain::{Millis, ProjectName, TenantName, UnixMillis};

/// How fair share is set up (`[fairshare]` in the server's config file).
#[derive(Debug, Clone, PartialEq)]
pub struct FairShareConfig {
    /// Usage loses half its weight in this long (default 7 days).
    pub half_life: Millis,
    /// Tenants' weights (default 1).
    pub tenants: BTreeMap<TenantName, u32>,
    /// Projects' weights inside their tenant (default 1).
    pub projects: BTreeMap<(TenantName, ProjectName), u32>,
    /// A tenant under its share may preempt preemptible work of a tenant
    /// over its share, whatever their priorities (Kueue's fair-sharing
    /// preemption); off by default.
    pub reclaim: bool,
}

impl Default for FairShareConfig {
    fn default() -> Self {
        FairShareConfig {
            half_life: Millis::from_secs(7 * 86_400),
            tenants: BTreeMap::new(),
            projects: BTreeMap::new(),
            reclaim: false,
        }
    }
}

/// How long usage read from the ledger is used before it is read again.
pub const USAGE_REFRESH: Millis = Millis::from_secs(60);
/// Usage older than this many half-lives weighs under 0.4 % and is not read.
pub const HALF_LIVES_READ: u64 = 8;

/// One tenant's or project's standing.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub weight: u32,
    /// Its weight's share among those that count, in [0, 1].
    pub share: f64,
    /// Decayed GPU-hours.
    pub usage_gpu_hours: f64,
    /// Its part of the decayed usage among those that count, in [0, 1].
    pub usage_share: f64,
    pub factor: f64,
}

impl Standing {
    /// A weight among `weights` in all, with `usage` of `total_usage`.
    fn of(weight: u32, weights: f64, usage: f64, total_usage: f64) -> Standing {
        let share = if weights > 0.0 {
            weight as f64 / weights
        } else {
            0.0
        };
        let usage_share = if total_usage > 0.0 {
            usage / total_usage
        } else {
            0.0
        };
        Standing {
            weight,
            share,
            usage_gpu_hours: usage,
            usage_share,
            factor: factor(usage_share, share),
        }
    }
}

#[derive(Debug, Default)]
pub struct FairShare {
    pub config: FairShareConfig,
    /// Decayed GPU-hours by tenant and project, as of `read_at`.
    usage: HashMap<(TenantName, ProjectName), f64>,
    pub read_at: Option<UnixMillis>,
    /// A read is under way.
    pub reading: bool,
    /// Factors by tenant, and by project, worked out for the tenants and
    /// projects that count.
    tenant_factor: HashMap<TenantName, f64>,
    project_factor: HashMap<(TenantName, ProjectName), f64>,
}

fn decay(age: Millis, half_life: Millis) -> f64 {
    (-(age.0 as f64) / half_life.0.max(1) as f64).exp2()
}

/// `2^(-U/S)`; no share at all: 0 when it used anything, else 1.
fn factor(usage_share: f64, share: f64) -> f64 {
    if share <= 0.0 {
        return if usage_share > 0.0 { 0.0 } else { 1.0 };
    }
    (-usage_share / share).exp2()
}

impl FairShare {
    pub fn new(config: FairShareConfig) -> FairShare {
        FairShare {
            config,
            ..FairShare::default()
        }
    }

    /// The window usage is read over, ending at `now`.
    pub fn window(&self, now: UnixMillis) -> UnixMillis {
        UnixMillis(
            now.0
                .saturating_sub(self.config.half_life.0.saturating_mul(HALF_LIVES_READ)),
        )
    }

    /// Takes usage rows grouped by tenant, project and hour, read at `now`.
    pub fn took_usage(&mut self, rows: &[UsageRow], now: UnixMillis) {
        self.usage.clear();
        for r in rows {
            let [tenant, project, hour] = r.keys.as_slice() else {
                continue;
            };
            let (Ok(tenant), Ok(project)) = (tenant.parse::<TenantName>(), project.parse::<ProjectName>())
            else {
                continue;
            };
            // An hour's usage counts as of its middle.
            let mid = hour
                .parse::<UnixMillis>()
                .map(|h| h.plus(Millis::from_secs(1800)))
                .unwrap_or(now);
            let w = decay(now.since(mid), self.config.half_life);
            *self.usage.entry((tenant, project)).or_default() += r.gpu_time.hours_f64() * w;
        }
        self.read_at = Some(now);
        self.reading = false;
    }

    /// Takes decayed GPU-hours by tenant and project as they stand at
    /// `now`, worked out elsewhere (a replay of a trace keeps its own).
    pub fn took_decayed(&mut self, usage: HashMap<(TenantName, ProjectName), f64>, now: UnixMillis) {
        self.usage = usage;
        self.read_at = Some(now);
        self.reading = false;
    }

    /// Works the factors out again, for the tenants and projects that
    /// count: those with a weight, with usage, or in `pending`.
    pub fn refresh<'a>(&mut self, pending: impl Iterator<Item = (&'a TenantName, &'a ProjectName)>) {
        let (tenants, projects) = self.report(pending);
        self.tenant_factor = tenants.into_iter().map(|(t, s)| (t, s.factor)).collect();
        self.project_factor = projects.into_iter().map(|(k, s)| (k, s.factor)).collect();
    }

    fn tenant_weight(&self, t: &TenantName) -> u32 {
        self.config.tenants.get(t).copied().unwrap_or(1)
    }

    fn project_weight(&self, t: &TenantName, p: &ProjectName) -> u32 {
        self.config
            .projects
            .get(&(t.clone(), p.clone()))
            .copied()
            .unwrap_or(1)
    }

    /// Every tenant's and project's standing now, for the tenants and
    /// projects that count (with a weight, with usage, or in `pending`).
    #[allow(clippy::type_complexity)]
    pub fn report<'a>(
        &self,
        pending: impl Iterator<Item = (&'a TenantName, &'a ProjectName)>,
    ) -> (
        BTreeMap<TenantName, Standing>,
        BTreeMap<(TenantName, ProjectName), Standing>,
    ) {
        let mut projects: BTreeSet<(TenantName, ProjectName)> = self.usage.keys().cloned().collect();
        projects.extend(pending.map(|(t, p)| (t.clone(), p.clone())));
        projects.extend(self.config.projects.keys().cloned());
        let mut tenants: BTreeSet<TenantName> = projects.iter().map(|(t, _)| t.clone()).collect();
        tenants.extend(self.config.tenants.keys().cloned());

        let used = |k: &(TenantName, ProjectName)| self.usage.get(k).copied().unwrap_or(0.0);
        // Per tenant: its projects' usage and weights, summed.
        let mut sums: BTreeMap<&TenantName, (f64, f64)> = tenants.iter().map(|t| (t, (0.0, 0.0))).collect();
        for k in &projects {
            let sum = sums.entry(&k.0).or_default();
            sum.0 += used(k);
            sum.1 += self.project_weight(&k.0, &k.1) as f64;
        }
        let total_usage: f64 = sums.values().map(|s| s.0).sum();
        let total_weight: f64 = tenants.iter().map(|t| self.tenant_weight(t) as f64).sum();
        let out_t = tenants
            .iter()
            .map(|t| {
                let s = Standing::of(self.tenant_weight(t), total_weight, sums[t].0, total_usage);
                (t.clone(), s)
            })
            .collect();
        let out_p = projects
            .iter()
            .map(|k| {
                let (tenant_usage, weights) = sums[&k.0];
                let s = Standing::of(self.project_weight(&k.0, &k.1), weights, used(k), tenant_usage);
                (k.clone(), s)
            })
            .collect();
        (out_t, out_p)
    }

    /// Whether the tenant used less than its share lately (factor above
    /// 0.5; a tenant that does not count has used nothing).
    pub fn under_share(&self, tenant: &TenantName) -> bool {
        self.tenant_factor.get(tenant).copied().unwrap_or(1.0) > 0.5
    }

    /// Whether the tenant used more than its share lately (factor below 0.5).
    pub fn over_share(&self, tenant: &TenantName) -> bool {
        self.tenant_factor.get(tenant).copied().unwrap_or(1.0) < 0.5
    }

    /// The factors a pending job is ordered by: its tenant's, then its
    /// project's, each scaled to an integer (higher goes first).
    pub fn key(&self, tenant: &TenantName, project: &ProjectName) -> (u64, u64) {
        let scale = |f: f64| (f.clamp(0.0, 1.0) * 1e9) as u64;
        let t = self.tenant_factor.get(tenant).copied().unwrap_or(1.0);
        let p = self
            .project_factor
            .get(&(tenant.clone(), project.clone()))
            .copied()
            .unwrap_or(1.0);
        (scale(t), scale(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::GpuTime;
    use crate::accounting::pricing::Currency;

    fn row(t: &str, p: &str, hour: UnixMillis, gpu_hours: u128) -> UsageRow {
        UsageRow {
            keys: vec![t.into(), p.into(), hour.to_string()],
            currency: Currency::default(),
            gpu_time: GpuTime(gpu_hours * crate::accounting::UNITS_PER_GPU_HOUR),
            cost_micros: 0,
            leases: 1,
            observed: GpuTime::ZERO,
            idle: GpuTime::ZERO,
        }
    }

    fn name<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    #[test]
    fn usage_decays_by_its_half_life_and_the_less_used_tenant_goes_first() {
        let now = UnixMillis(100 * 86_400_000);
        let week_ago = UnixMillis(now.0 - 7 * 86_400_000 - 1_800_000);
        let an_hour_ago = UnixMillis(now.0 - 3_600_000);
        let mut fs = FairShare::new(FairShareConfig::default());
        fs.took_usage(
            &[
                row("a", "default", week_ago, 100),
                row("b", "default", an_hour_ago, 50),
            ],
            now,
        );
        let (t, _) = fs.report(std::iter::empty());
        let (a, b) = (&t[&name::<TenantName>("a")], &t[&name::<TenantName>("b")]);
        assert!(
            (a.usage_gpu_hours - 50.0).abs() < 0.01,
            "a week is one half-life: {a:?}"
        );
        assert!((b.usage_gpu_hours - 50.0).abs() < 0.2, "{b:?}");
        // Equal usage, equal shares: equal factors, both 2^-1.
        assert!(
            (a.factor - 0.5).abs() < 0.01 && (b.factor - 0.5).abs() < 0.01,
            "{a:?} {b:?}"
        );

        // A tenant with twice the weight and the same usage comes first.
        let mut config = FairShareConfig::default();
        config.tenants.insert(name("a"), 2);
        let mut fs2 = FairShare::new(config);
        fs2.took_usage(
            &[
                row("a", "default", an_hour_ago, 10),
                row("b", "default", an_hour_ago, 10),
            ],
            now,
        );
        let idle: (TenantName, ProjectName) = (name("c"), name("default"));
        fs2.refresh(std::iter::once((&idle.0, &idle.1)));
        let key = |t: &str| fs2.key(&name(t), &name("default"));
        assert!(
            key("c") > key("a") && key("a") > key("b"),
            "{:?} {:?} {:?}",
            key("c"),
            key("a"),
            key("b")
        );
        assert_eq!(key("c").0, 1_000_000_000, "no usage: factor 1");
    }

    #[test]
    fn inside_a_tenant_projects_share_by_their_own_weights() {
        let now = UnixMillis(10 * 86_400_000);
        let mut config = FairShareConfig::default();
        config.projects.insert((name("a"), name("big")), 3);
        let mut fs = FairShare::new(config);
        let h = UnixMillis(now.0 - 3_600_000);
        fs.took_usage(&[row("a", "big", h, 30), row("a", "small", h, 10)], now);
        fs.refresh(std::iter::empty());
        let (_, p) = fs.report(std::iter::empty());
        let key = |t: &str, p: &str| (name::<TenantName>(t), name::<ProjectName>(p));
        let (big, small) = (&p[&key("a", "big")], &p[&key("a", "small")]);
        assert!((big.share - 0.75).abs() < 1e-9 && (big.usage_share - 0.75).abs() < 1e-6);
        assert!(
            (big.factor - small.factor).abs() < 1e-6,
            "each used exactly its share"
        );
        // Old usage is not read: the window is eight half-lives.
        assert_eq!(fs.window(now), UnixMillis(now.0.saturating_sub(56 * 86_400_000)));
    }
}
