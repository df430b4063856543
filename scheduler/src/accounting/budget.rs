//! Budgets: a tenant's spend limit and GPU-hour limit per calendar month
//! (UTC). A tenant that has reached either limit gets no new placements —
//! its pending jobs are held with the reason — while its running jobs run on.
//! Usage so far, the burn rate over the last 24 hours and the projection to
//! the end of the month show in `allot usage` and `allot budget show`.

use serde::{Deserialize, Serialize};

use super::usage::UsageRow;
use super::{GpuTime, HOUR_MS, UNITS_PER_GPU_HOUR};
use crate::domain::money::{Currency, Money};
use crate::domain::{TenantName, UnixMillis};

/// A tenant's monthly limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub tenant: TenantName,
    pub currency: Currency,
    pub spend_limit_minor: Option<i128>,
    pub gpu_time_limit: Option<GpuTime>,
}

/// Parses a GPU-hour amount (`"1000"`, `"12.5"`, up to six decimals) exactly.
pub fn parse_gpu_hours(s: &str) -> Result<GpuTime, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "invalid GPU-hours {}: use a decimal such as 100 or 12.5",
            crate::domain::validate::quote(s)
        )
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || (s.contains('.') && frac.is_empty())
        || frac.len() > 6
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: u128 = int.parse().map_err(|_| bad())?;
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().map_err(|_| bad())? * 10u128.pow(6 - frac.len() as u32)
    };
    let micro = int
        .checked_mul(1_000_000)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(bad)?;
    micro
        .checked_mul(UNITS_PER_GPU_HOUR / 1_000_000)
        .filter(|v| *v < 10u128.pow(30))
        .map(GpuTime)
        .ok_or_else(bad)
}

/// Where a tenant stands against its budget this month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub period_start: UnixMillis,
    pub period_end: UnixMillis,
    pub currency: Currency,
    pub spent_minor: i128,
    pub gpu_time: GpuTime,
    /// Over the last 24 hours (per day).
    pub burn_minor: i128,
    pub burn_gpu_time: GpuTime,
    pub projected_minor: i128,
    pub projected_gpu_time: GpuTime,
    /// Why the tenant's pending jobs are held, if a limit is reached.
    pub exhausted: Option<String>,
}

/// The amounts of `rows` (usage totals, one per currency) in `currency`:
/// micros and GPU-time.
fn amounts(rows: &[UsageRow], currency: Currency) -> (i128, GpuTime) {
    rows.iter().fold((0, GpuTime::ZERO), |(c, g), r| {
        // GPU-time counts whatever the price; money only in its currency.
        let c = if r.currency == currency {
            c.saturating_add(r.cost_micros)
        } else {
            c
        };
        (c, g + r.gpu_time)
    })
}

impl Standing {
    /// From the usage totals of the month so far and of the last 24 hours.
    pub fn assess(
        budget: Option<&Budget>,
        currency: Currency,
        month: &[UsageRow],
        last_day: &[UsageRow],
        now: UnixMillis,
    ) -> Standing {
        let currency = budget.map(|b| b.currency).unwrap_or(currency);
        let (spent, gpu_time) = amounts(month, currency);
        let (burn, burn_gpu) = amounts(last_day, currency);
        let period_start = now.month_start();
        let period_end = now.next_month_start();
        // The rest of the month at the last day's pace, pro rata to the ms.
        let left = period_end.0.saturating_sub(now.0) as i128;
        let day = 24 * HOUR_MS as i128;
        let projected = spent.saturating_add(burn.saturating_mul(left) / day);
        let projected_gpu_time = GpuTime(gpu_time.0 + burn_gpu.0 * left as u128 / day as u128);
        let mut exhausted = None;
        if let Some(b) = budget {
            let money = |minor| Money { minor, currency }.to_string();
            // Exact: a budget trips on the micro, not on the rounded cent.
            if let Some(limit) = b.spend_limit_minor
                && spent >= limit.saturating_mul(super::MICROS_PER_MINOR)
            {
                exhausted = Some(format!(
                    "spent {} of its {} monthly budget",
                    money(super::minor_of(spent)),
                    money(limit)
                ));
            } else if let Some(limit) = b.gpu_time_limit
                && gpu_time >= limit
            {
                exhausted = Some(format!("used {gpu_time} of its {limit} GPU-hours this month"));
            }
        }
        Standing {
            period_start,
            period_end,
            currency,
            spent_minor: super::minor_of(spent),
            gpu_time,
            burn_minor: super::minor_of(burn),
            burn_gpu_time: burn_gpu,
            projected_minor: super::minor_of(projected),
            projected_gpu_time,
            exhausted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cost: i128, hours: u128, currency: Currency) -> UsageRow {
        UsageRow {
            keys: vec![],
            currency,
            gpu_time: GpuTime(hours * UNITS_PER_GPU_HOUR),
            cost_micros: cost * crate::accounting::MICROS_PER_MINOR,
            leases: 1,
            observed: GpuTime::ZERO,
            idle: GpuTime::ZERO,
        }
    }

    #[test]
    fn gpu_hours_parse_exactly_and_bad_ones_are_refused() {
        assert_eq!(
            parse_gpu_hours("12.5").unwrap(),
            GpuTime(25 * UNITS_PER_GPU_HOUR / 2)
        );
        assert_eq!(parse_gpu_hours("100").unwrap().to_string(), "100.000000");
        for bad in ["", "-1", "1.2345678", "x", "1e3", "1.", ".5"] {
            assert!(parse_gpu_hours(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_budget_is_exhausted_at_its_limit_and_projects_the_last_days_pace() {
        // 2026-11-21T00:00Z: ten days left in November.
        let now = UnixMillis(1_795_219_200_000);
        let b = Budget {
            tenant: "acme".parse().unwrap(),
            currency: Currency::USD,
            spend_limit_minor: Some(50_000),
            gpu_time_limit: Some(GpuTime(1000 * UNITS_PER_GPU_HOUR)),
        };
        let month = [
            row(40_000, 300, Currency::USD),
            row(999, 1, "EUR".parse().unwrap()),
        ];
        let day = [row(2_000, 20, Currency::USD)];
        let s = Standing::assess(Some(&b), Currency::USD, &month, &day, now);
        assert_eq!(
            (s.spent_minor, s.gpu_time),
            (40_000, GpuTime(301 * UNITS_PER_GPU_HOUR))
        );
        assert_eq!(s.projected_minor, 40_000 + 10 * 2_000);
        assert_eq!(s.projected_gpu_time, GpuTime((301 + 200) * UNITS_PER_GPU_HOUR));
        assert_eq!(s.exhausted, None);
        let month = [row(50_000, 300, Currency::USD)];
        let s = Standing::assess(Some(&b), Currency::USD, &month, &day, now);
        assert_eq!(
            s.exhausted.as_deref(),
            Some("spent 500.00 USD of its 500.00 USD monthly budget")
        );
        let month = [row(10, 1000, Currency::USD)];
        let s = Standing::assess(Some(&b), Currency::USD, &month, &day, now);
        assert!(s.exhausted.unwrap().contains("GPU-hours"));
        assert_eq!(
            Standing::assess(None, Currency::USD, &month, &day, now).exhausted,
            None
        );
    }
}
