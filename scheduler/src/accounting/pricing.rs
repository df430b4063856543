//! Money and the rate card: a price per GPU-hour per GPU model, slices and
//! shares priced by their share, an optional preemptible discount.
//!
//! Prices are exact decimals in the configuration (`"4.50"`) and exact
//! integers inside: a [`Rate`] is millionths of a minor unit per GPU-hour. The
//! pricing plugin (a later issue) will replace [`RateCard::rate_for`] per
//! tenant; nothing else here changes for it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{GpuTime, UNITS_PER_GPU_HOUR};
pub use crate::domain::money::{Currency, LeaseRate, Money, Rate};

/// Integer division rounding half to even.
fn div_round_half_even(n: u128, d: u128) -> u128 {
    let (q, r) = (n / d, n % d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    }
}

/// The cost of GPU-time at a rate, in micros (millionths of a minor unit),
/// rounded half to even. Applied once per lease-hour part; every total is a
/// sum of parts.
pub fn cost(gpu_time: GpuTime, rate: Rate) -> i128 {
    div_round_half_even(gpu_time.0.saturating_mul(rate.0), UNITS_PER_GPU_HOUR) as i128
}

/// What the rate card charges for `gpu_time` at a lease's `rate`, in minor
/// units (rounded half to even): the list price, and the price before the
/// preemptible discount. What a pricing plugin is told of a piece.
pub fn list_prices(gpu_time: GpuTime, rate: &LeaseRate) -> (i128, i128) {
    let minor = |r| super::minor_of(cost(gpu_time, r));
    (minor(rate.per_gpu_hour), minor(rate.undiscounted()))
}

/// `[pricing]` in the server configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// ISO 4217 code; default USD.
    #[serde(default)]
    pub currency: Option<String>,
    /// Price of one GPU-hour of a model without its own price; default 0.
    #[serde(default)]
    pub gpu_hour: Option<String>,
    /// Price of one GPU-hour per GPU model (`"H100-80GB" = "4.50"`).
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Discount for preemptible jobs, percent (0–100).
    #[serde(default)]
    pub preemptible_discount_pct: u8,
}

/// Prices per GPU-hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCard {
    pub currency: Currency,
    pub default: Rate,
    pub by_model: BTreeMap<String, Rate>,
    pub preemptible_discount_pct: u8,
}

impl Default for RateCard {
    /// No prices: every lease costs 0 USD until a rate card is configured.
    fn default() -> Self {
        RateCard {
            currency: Currency::USD,
            default: Rate(0),
            by_model: BTreeMap::new(),
            preemptible_discount_pct: 0,
        }
    }
}

impl RateCard {
    pub fn from_config(raw: &PricingConfig) -> Result<RateCard, String> {
        let currency = match &raw.currency {
            Some(c) => c.parse().map_err(|e| format!("pricing.currency: {e}"))?,
            None => Currency::USD,
        };
        let default = match &raw.gpu_hour {
            Some(p) => Rate::parse(p, currency).map_err(|e| format!("pricing.gpu_hour: {e}"))?,
            None => Rate(0),
        };
        let mut by_model = BTreeMap::new();
        for (model, p) in &raw.models {
            by_model.insert(
                model.clone(),
                Rate::parse(p, currency).map_err(|e| format!("pricing.models.{model}: {e}"))?,
            );
        }
        if raw.preemptible_discount_pct > 100 {
            return Err("pricing.preemptible_discount_pct must be 0 to 100".into());
        }
        Ok(RateCard {
            currency,
            default,
            by_model,
            preemptible_discount_pct: raw.preemptible_discount_pct,
        })
    }

    /// The rate of a GPU-hour on `model` for a job (preemptible or not).
    pub fn rate_for(&self, model: &str, preemptible: bool) -> LeaseRate {
        let base = self.by_model.get(model).copied().unwrap_or(self.default);
        let per_gpu_hour = if preemptible {
            base.discounted(self.preemptible_discount_pct)
        } else {
            base
        };
        LeaseRate {
            currency: self.currency,
            per_gpu_hour,
            undiscounted: (per_gpu_hour != base).then_some(base),
        }
    }
}
