//! Pricing plugin: GPU time costs more at peak hours and less off-peak, less
//! again for preemptible jobs and for tenants with a committed-use contract.
//!
//! The price of a piece of a lease is
//!
//! ```text
//! rate(model) × share × hours × time-of-day % × preemptible % × committed-use %
//! ```
//!
//! - `rate(model)` is the model's rate per GPU-hour in US cents from
//!   [`RATES`], or [`DEFAULT_RATE`] for a model not listed;
//! - peak is 08:00–20:00 UTC, Monday to Friday, at [`PEAK_PCT`] %; any other
//!   time is off-peak at [`OFF_PEAK_PCT`] %. A piece never spans two UTC
//!   hours, so it is all peak or all off-peak;
//! - a preemptible job pays [`PREEMPTIBLE_PCT`] %;
//! - a tenant in [`COMMITTED_USE_TENANTS`] pays [`COMMITTED_USE_PCT`] %.
//!
//! The arithmetic is exact in integers and rounded once, at the end, to a
//! whole cent, half to even (`0.5 → 0`, `1.5 → 2`, `2.5 → 2`), the
//! scheduler's own rounding for hour pieces. Rates are in USD: a server
//! billing in another currency gets an error, and so the list price.
//!
//! The settings are constants: a plugin's configuration is its build.

use allot_plugin::{Pricing, PricingRequest};

/// Rates per GPU-hour in US cents, by GPU model (as `allot nodes` names it).
pub const RATES: &[(&str, u64)] = &[("H100-80GB", 400), ("A100-80GB", 300), ("L4", 80)];
/// The rate per GPU-hour in US cents of a model not in [`RATES`].
pub const DEFAULT_RATE: u64 = 200;
/// What peak hours cost, in percent of the rate.
pub const PEAK_PCT: u64 = 125;
/// What off-peak hours cost, in percent of the rate.
pub const OFF_PEAK_PCT: u64 = 80;
/// The first and the end of the peak hours (UTC), `[start, end)`.
pub const PEAK_HOURS: (u64, u64) = (8, 20);
/// What a preemptible job pays, in percent.
pub const PREEMPTIBLE_PCT: u64 = 60;
/// Tenants with a committed-use contract.
pub const COMMITTED_USE_TENANTS: &[&str] = &["acme", "globex"];
/// What a committed-use tenant pays, in percent.
pub const COMMITTED_USE_PCT: u64 = 75;

const MS_PER_HOUR: u64 = 60 * 60 * 1000;
const MS_PER_DAY: u64 = 24 * MS_PER_HOUR;

/// The plugin.
pub struct TimeOfDay;

impl Pricing for TimeOfDay {
    fn price(request: PricingRequest) -> Result<u64, String> {
        if request.currency != "USD" {
            return Err(format!(
                "time-of-day rates are in USD; this server bills in {}",
                request.currency
            ));
        }
        let share = request.share;
        if share.denominator == 0 {
            return Err("the share has a zero denominator".into());
        }
        let start = request.start_ms;
        let last_ms = start.saturating_add(request.duration_ms.saturating_sub(1));
        if start / MS_PER_HOUR != last_ms / MS_PER_HOUR {
            return Err(format!(
                "the piece from {start} ms lasting {} ms spans two UTC hours",
                request.duration_ms
            ));
        }

        let rate = RATES
            .iter()
            .find(|(model, _)| *model == request.gpu_model)
            .map_or(DEFAULT_RATE, |(_, rate)| *rate);
        let time_of_day_pct = if is_peak(start) { PEAK_PCT } else { OFF_PEAK_PCT };
        let preemptible_pct = if request.preemptible { PREEMPTIBLE_PCT } else { 100 };
        let committed_pct = if COMMITTED_USE_TENANTS.contains(&request.tenant.as_str()) {
            COMMITTED_USE_PCT
        } else {
            100
        };

        // cents = rate × (num / den) × (ms / MS_PER_HOUR) × three percentages.
        let numerator = [
            rate,
            share.numerator,
            request.duration_ms,
            time_of_day_pct,
            preemptible_pct,
            committed_pct,
        ]
        .into_iter()
        .try_fold(1u128, |acc, factor| acc.checked_mul(factor.into()));
        let denominator = u128::from(share.denominator) * u128::from(MS_PER_HOUR) * 100 * 100 * 100;
        let cents = numerator
            .map(|n| div_round_half_even(n, denominator))
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| "the price overflows".to_string())?;
        allot_plugin::debug!(
            "{} {} of {} for {} ms: {cents} cents (list {})",
            request.tenant,
            share,
            request.gpu_model,
            request.duration_ms,
            request.list_price_minor
        );
        Ok(cents)
    }
}

/// Whether the instant `ms` (UTC) is in peak hours: 08:00–20:00, Monday to
/// Friday.
pub fn is_peak(ms: u64) -> bool {
    let days = ms / MS_PER_DAY;
    let weekday = (days + 3) % 7; // 0 is Monday: 1970-01-01 was a Thursday.
    let hour = ms % MS_PER_DAY / MS_PER_HOUR;
    weekday < 5 && (PEAK_HOURS.0..PEAK_HOURS.1).contains(&hour)
}

/// `n / d` rounded to the nearest integer, ties to the even one.
fn div_round_half_even(n: u128, d: u128) -> u128 {
    let (q, r) = (n / d, n % d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    }
}

allot_plugin::export_pricing!(TimeOfDay);

#[cfg(test)]
mod tests {
    use super::*;
    use allot_plugin::Fraction;

    /// Tuesday 2026-11-17, 09:00 UTC.
    const TUESDAY_9AM: u64 = 1_794_906_000_000;
    /// Tuesday 2026-11-17, 03:00 UTC.
    const TUESDAY_3AM: u64 = 1_794_884_400_000;
    /// Saturday 2026-11-21, 12:00 UTC.
    const SATURDAY_NOON: u64 = 1_795_262_400_000;

    fn hour_of_h100(start_ms: u64) -> PricingRequest {
        PricingRequest {
            tenant: "initech".into(),
            project: "vision".into(),
            gpu_model: "H100-80GB".into(),
            mig_profile: None,
            share: Fraction::ONE,
            start_ms,
            duration_ms: MS_PER_HOUR,
            preemptible: false,
            tags: Vec::new(),
            currency: "USD".into(),
            list_price_minor: 400,
            undiscounted_price_minor: 400,
        }
    }

    #[test]
    fn peak_hours_cost_more_and_off_peak_less() {
        assert_eq!(TimeOfDay::price(hour_of_h100(TUESDAY_9AM)), Ok(500));
        assert_eq!(TimeOfDay::price(hour_of_h100(TUESDAY_3AM)), Ok(320));
    }

    #[test]
    fn weekends_are_off_peak() {
        assert_eq!(TimeOfDay::price(hour_of_h100(SATURDAY_NOON)), Ok(320));
    }

    #[test]
    fn peak_runs_from_eight_to_twenty_utc() {
        let tuesday = TUESDAY_3AM - 3 * MS_PER_HOUR;
        assert!(!is_peak(tuesday + 8 * MS_PER_HOUR - 1));
        assert!(is_peak(tuesday + 8 * MS_PER_HOUR));
        assert!(is_peak(tuesday + 20 * MS_PER_HOUR - 1));
        assert!(!is_peak(tuesday + 20 * MS_PER_HOUR));
    }

    #[test]
    fn preemptible_and_committed_use_discounts_multiply() {
        let mut request = hour_of_h100(TUESDAY_9AM);
        request.preemptible = true;
        assert_eq!(TimeOfDay::price(request.clone()), Ok(300));
        request.tenant = "acme".into();
        assert_eq!(TimeOfDay::price(request), Ok(225));
    }

    #[test]
    fn a_mig_slice_pays_its_share_rounded_once() {
        let mut request = hour_of_h100(TUESDAY_3AM);
        request.mig_profile = Some("1g.10gb".into());
        request.share = Fraction::new(1, 7);
        request.duration_ms = 20 * 60 * 1000;
        // 400 × 1/7 × 1/3 × 80 % = 15.238… cents.
        assert_eq!(TimeOfDay::price(request), Ok(15));
    }

    #[test]
    fn halves_round_to_even() {
        // An unlisted model off-peak: 200 × 80 % = 160 cents an hour, so
        // 11,250 ms cost exactly 0.5 cents and 33,750 ms 1.5 cents.
        let mut request = hour_of_h100(TUESDAY_3AM);
        request.gpu_model = "T4".into();
        request.duration_ms = 11_250;
        assert_eq!(TimeOfDay::price(request.clone()), Ok(0));
        request.duration_ms = 33_750;
        assert_eq!(TimeOfDay::price(request), Ok(2));
        assert_eq!(div_round_half_even(5, 2), 2);
        assert_eq!(div_round_half_even(7, 2), 4);
        assert_eq!(div_round_half_even(7, 3), 2);
        assert_eq!(div_round_half_even(8, 3), 3);
    }

    #[test]
    fn other_currencies_are_an_error() {
        let mut request = hour_of_h100(TUESDAY_9AM);
        request.currency = "EUR".into();
        assert_eq!(
            TimeOfDay::price(request),
            Err("time-of-day rates are in USD; this server bills in EUR".into())
        );
    }

    #[test]
    fn a_piece_spanning_two_hours_is_an_error() {
        let mut request = hour_of_h100(TUESDAY_9AM + 1);
        request.duration_ms = MS_PER_HOUR;
        assert!(TimeOfDay::price(request).is_err());
    }

    #[test]
    fn an_empty_piece_is_free() {
        let mut request = hour_of_h100(TUESDAY_9AM);
        request.duration_ms = 0;
        assert_eq!(TimeOfDay::price(request), Ok(0));
    }
}
