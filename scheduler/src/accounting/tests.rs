//! Exact GPU-time, prices and the ledger check.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::check::check;
use super::pricing::{Currency, Money, Rate, RateCard, cost};
use super::usage::{Dimension, UsageQuery, aggregate};
use super::*;
use crate::domain::money::LeaseRate;
use crate::domain::{DeviceGrant, EndReason, JobId, LeaseId, LeaseState, MiB, Share};

const T0: u64 = 1_795_446_000_000; // 2026-11-23T15:00:00Z, an hour boundary

fn lease(share: Share, start: u64, end: Option<u64>, gpu: &str) -> Lease {
    Lease {
        id: LeaseId::new_v7(),
        job_id: JobId::new_v7(),
        attempt: 1,
        tenant: "a".parse().unwrap(),
        project: "p".parse().unwrap(),
        node: "n1".parse().unwrap(),
        device: DeviceGrant {
            gpu_uuid: gpu.into(),
            device_uuid: gpu.into(),
            gpu_index: 0,
            gpu_model: "H100-80GB".into(),
            mig_profile: None,
            share,
            gpu_memory: MiB(1),
        },
        state: if end.is_some() {
            LeaseState::Closed
        } else {
            LeaseState::Active
        },
        reserved_at: UnixMillis(start),
        started_at: Some(UnixMillis(start)),
        ended_at: end.map(UnixMillis),
        end_reason: end.map(|_| EndReason::Succeeded),
        rate: Some(LeaseRate {
            currency: Currency::USD,
            per_gpu_hour: Rate::parse("3.50", Currency::USD).unwrap(),
            undiscounted: None,
        }),
        tags: BTreeMap::from([("team".to_string(), "nlp".to_string())]),
        agent_runtime: None,
        idle: None,
        plugin_prices: None,
    }
}

#[test]
fn gpu_time_is_exact_for_sevenths_thirds_and_decimals() {
    assert!(exact_share(Share::new(1, 7).unwrap()));
    assert!(exact_share(Share::new(1, 3).unwrap()));
    assert!(exact_share(Share::new(123_457, 1_000_000).unwrap()));
    assert!(!exact_share(Share::new(1, 11).unwrap()));
    let seventh = GpuTime::of(Share::new(1, 7).unwrap(), 7);
    assert_eq!(seventh, GpuTime::of(Share::ONE, 1));
    let third = GpuTime::of(Share::new(1, 3).unwrap(), 1);
    assert_eq!(third + third + third, GpuTime::of(Share::ONE, 1));
    assert_eq!(GpuTime::of(Share::ONE, HOUR_MS).to_string(), "1.000000");
    assert_eq!(
        GpuTime::of(Share::new(1, 4).unwrap(), 2 * HOUR_MS).to_string(),
        "0.500000"
    );
}

#[test]
fn leases_are_cut_at_utc_hours_and_the_parts_add_up() {
    let l = lease(
        Share::new(1, 7).unwrap(),
        T0 + 1_800_000,
        Some(T0 + 2 * HOUR_MS + 1),
        "g",
    );
    let parts = hour_parts(&l, UnixMillis(0), UnixMillis(0), UnixMillis(u64::MAX));
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].hour, UnixMillis(T0));
    assert_eq!(parts[1].start, UnixMillis(T0 + HOUR_MS));
    assert_eq!(parts[2].end.0 - parts[2].start.0, 1);
    let total = parts.iter().fold(GpuTime::ZERO, |a, p| a + p.gpu_time);
    assert_eq!(total, GpuTime::of(Share::new(1, 7).unwrap(), HOUR_MS + 1_800_001));
    // Clipped to a window.
    let clipped = hour_parts(
        &l,
        UnixMillis(0),
        UnixMillis(T0 + HOUR_MS),
        UnixMillis(T0 + HOUR_MS + 60_000),
    );
    assert_eq!(clipped.len(), 1);
    assert_eq!(
        clipped[0].gpu_time,
        GpuTime::of(Share::new(1, 7).unwrap(), 60_000)
    );
    // An open lease runs to now.
    let open = lease(Share::ONE, T0, None, "g");
    let p = hour_parts(&open, UnixMillis(T0 + 10), UnixMillis(0), UnixMillis(u64::MAX));
    assert_eq!(
        p.iter().fold(GpuTime::ZERO, |a, p| a + p.gpu_time),
        GpuTime::of(Share::ONE, 10)
    );
}

#[test]
fn prices_parse_exactly_and_costs_round_half_to_even() {
    let usd = Currency::USD;
    assert_eq!(Rate::parse("4.50", usd).unwrap(), Rate(450_000_000));
    assert_eq!(Rate::parse("0.00000001", usd).unwrap(), Rate(1));
    assert!(Rate::parse("0.000000001", usd).is_err());
    assert!(Rate::parse("-1", usd).is_err());
    assert!(Rate::parse("1,5", usd).is_err());
    assert_eq!(
        Rate::parse("4.50", usd).unwrap().discounted(30),
        Rate(315_000_000)
    );
    // One GPU-hour at 4.50 USD is 450 cents (in micros of a cent).
    assert_eq!(
        cost(GpuTime::of(Share::ONE, HOUR_MS), Rate(450_000_000)),
        450_000_000
    );
    // Half a cent is half a cent now, not 0; half a micro rounds to even.
    let cent_hour = Rate(1_000_000); // 1 cent per GPU-hour
    assert_eq!(cost(GpuTime::of(Share::ONE, HOUR_MS / 2), cent_hour), 500_000);
    assert_eq!(
        cost(GpuTime::of(Share::ONE, HOUR_MS * 3 / 2), cent_hour),
        1_500_000
    );
    let micro_hour = Rate(1); // one micro per GPU-hour
    assert_eq!(cost(GpuTime::of(Share::ONE, HOUR_MS / 2), micro_hour), 0);
    assert_eq!(cost(GpuTime::of(Share::ONE, HOUR_MS * 3 / 2), micro_hour), 2);
    let m = Money {
        minor: 12345,
        currency: usd,
    };
    assert_eq!(m.to_string(), "123.45 USD");
    let yen = Money {
        minor: 1200,
        currency: "JPY".parse().unwrap(),
    };
    assert_eq!(yen.to_string(), "1200 JPY");
}

#[test]
fn the_rate_card_prices_by_model_and_discounts_preemptible_work() {
    let raw: super::pricing::PricingConfig = toml::from_str(
        r#"
        currency = "EUR"
        gpu_hour = "2.00"
        preemptible_discount_pct = 25
        [models]
        "H100-80GB" = "4.00"
        "#,
    )
    .unwrap();
    let card = RateCard::from_config(&raw).unwrap();
    assert_eq!(card.rate_for("H100-80GB", false).per_gpu_hour, Rate(400_000_000));
    assert_eq!(card.rate_for("H100-80GB", true).per_gpu_hour, Rate(300_000_000));
    // The lease keeps the rate before the discount, for pricing plugins
    // (WIT 0.2.0), and only where there was one.
    assert_eq!(card.rate_for("H100-80GB", true).undiscounted(), Rate(400_000_000));
    assert_eq!(card.rate_for("H100-80GB", false).undiscounted, None);
    // A lease written without it (as every lease before) reads back as
    // undiscounted at its own rate.
    let stored = serde_json::to_string(&card.rate_for("H100-80GB", false)).unwrap();
    assert!(!stored.contains("undiscounted"), "{stored}");
    let legacy: LeaseRate = serde_json::from_str(&stored).unwrap();
    assert_eq!(legacy.undiscounted(), Rate(400_000_000));
    assert_eq!(card.rate_for("L4", false).per_gpu_hour, Rate(200_000_000));
    assert_eq!(card.rate_for("L4", false).currency.as_str(), "EUR");
    assert!(toml::from_str::<super::pricing::PricingConfig>("curency = \"USD\"").is_err());
    let bad: super::pricing::PricingConfig = toml::from_str("preemptible_discount_pct = 120").unwrap();
    assert!(RateCard::from_config(&bad).is_err());
}

#[test]
fn usage_groups_and_totals_agree() {
    let a = lease(Share::ONE, T0, Some(T0 + HOUR_MS), "g1");
    let mut b = lease(
        Share::new(1, 4).unwrap(),
        T0 + HOUR_MS / 2,
        Some(T0 + 2 * HOUR_MS),
        "g2",
    );
    b.tenant = "b".parse().unwrap();
    b.tags.insert("team".into(), "cv".into());
    let leases = vec![a, b];
    let q = |group_by| UsageQuery {
        from: UnixMillis(0),
        to: UnixMillis(u64::MAX),
        group_by,
        tenant: None,
    };
    let by_tag = aggregate(&leases, &q(vec![Dimension::Tag("team".into())]), UnixMillis(0));
    assert_eq!(by_tag.len(), 2);
    let cv = by_tag.iter().find(|r| r.keys == ["cv"]).unwrap();
    assert_eq!(
        cv.gpu_time,
        GpuTime::of(Share::new(1, 4).unwrap(), HOUR_MS * 3 / 2)
    );
    let by_hour = aggregate(&leases, &q(vec![Dimension::Hour]), UnixMillis(0));
    assert_eq!(by_hour.len(), 2);
    assert_eq!(by_hour[0].leases, 2);
    let total = aggregate(&leases, &q(vec![]), UnixMillis(0));
    let sum: i128 = by_hour.iter().map(|r| r.cost_micros).sum();
    assert_eq!(total[0].cost_micros, sum);
    // 1 GPU-hour + 0.375 GPU-hour at 3.50 USD: 350 + 131.25 cents exactly
    // (parts of 43.75 and 87.5 cents no longer round each to a cent).
    assert_eq!(total[0].cost_micros, 481_250_000);
    assert_eq!(super::minor_of(total[0].cost_micros), 481);
    let only_b = aggregate(
        &leases,
        &UsageQuery {
            tenant: Some("b".parse().unwrap()),
            ..q(vec![Dimension::Tenant])
        },
        UnixMillis(0),
    );
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].keys, ["b"]);
}

#[test]
fn the_check_finds_an_overcommitted_gpu_and_broken_leases() {
    let mk_job = |l: &Lease| {
        let mut j = crate::domain::Job::for_tests(l.job_id);
        j.lease_ids = vec![l.id];
        j
    };
    let a = lease(Share::new(3, 4).unwrap(), T0, Some(T0 + 1000), "g");
    let b = lease(Share::new(1, 2).unwrap(), T0 + 500, Some(T0 + 2000), "g");
    let jobs = vec![mk_job(&a), mk_job(&b)];
    let report = check(&jobs, &[a.clone(), b.clone()], UnixMillis(T0 + 3000));
    assert!(
        report.problems.iter().any(|p| p.contains("GPU g")),
        "{:?}",
        report.problems
    );
    // Back to back is fine: [start, end).
    let c = lease(Share::new(1, 2).unwrap(), T0 + 1000, Some(T0 + 2000), "g");
    let report = check(
        &[mk_job(&a), mk_job(&c)],
        &[a.clone(), c.clone()],
        UnixMillis(T0 + 3000),
    );
    assert!(report.is_clean(), "{:?}", report.problems);
    // A lease that ends before it starts, and one whose job is gone.
    let mut d = lease(Share::ONE, T0 + 5000, Some(T0 + 4000), "h");
    d.started_at = Some(UnixMillis(T0 + 5000));
    let report = check(&[mk_job(&a)], &[a, d], UnixMillis(T0 + 6000));
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("ends before it starts")),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems.iter().any(|p| p.contains("does not exist")),
        "{:?}",
        report.problems
    );
}

proptest! {
    /// Cutting a lease at hours and pricing the parts: the parts always add
    /// up to the lease, and the cost of the parts stays within half a micro
    /// per part of the exact cost.
    #[test]
    fn hour_parts_add_up(start in 0u64..10 * HOUR_MS, len in 0u64..30 * HOUR_MS, num in 1u64..8, den in prop::sample::select(vec![1u64, 2, 3, 4, 7, 8, 10, 1000])) {
        prop_assume!(num <= den);
        let share = Share::new(num, den).unwrap();
        let l = lease(share, T0 + start, Some(T0 + start + len), "g");
        let parts = hour_parts(&l, UnixMillis(0), UnixMillis(0), UnixMillis(u64::MAX));
        let sum = parts.iter().fold(GpuTime::ZERO, |a, p| a + p.gpu_time);
        prop_assert_eq!(sum, GpuTime::of(share, len));
        let rate = l.rate.unwrap().per_gpu_hour;
        let billed: i128 = parts.iter().map(|p| cost(p.gpu_time, rate)).sum();
        let exact = sum.0 as f64 * rate.0 as f64 / UNITS_PER_GPU_HOUR as f64;
        prop_assert!((billed as f64 - exact).abs() <= 0.5 * parts.len().max(1) as f64 + 1e-3);
    }
}

/// Regression (issue 11, defect 9): each lease-hour part was rounded to the
/// cent, so every part under half a cent billed nothing (a campaign of
/// short jobs billed 0.00 USD against an exact 1.84 USD). Costs are exact
/// to the micro now, and rounded only where they leave, by running totals
/// that keep the lines adding up to the total.
#[test]
fn short_leases_are_billed_exactly_and_rounded_lines_add_up() {
    // 1,000 leases of 1.5 s of a whole GPU at 3.50 USD/h: 0.1458 cents each.
    let leases: Vec<Lease> = (0..1000)
        .map(|i| lease(Share::ONE, T0 + i * 2000, Some(T0 + i * 2000 + 1500), "g1"))
        .collect();
    let q = UsageQuery {
        from: UnixMillis(0),
        to: UnixMillis(u64::MAX),
        group_by: vec![Dimension::Job],
        tenant: None,
    };
    let rows = aggregate(&leases, &q, UnixMillis(0));
    assert_eq!(rows.len(), 1000);
    let exact: i128 = rows.iter().map(|r| r.cost_micros).sum();
    // 1000 × 1.5 s × 3.50 USD / 3600 s = 145.8333… cents.
    // 145,833.33 micros each, to the micro: 145,833.
    assert_eq!(exact, 145_833_000);
    let mut r = super::Rounder::default();
    let lines: Vec<i128> = rows.iter().map(|row| r.line(row.cost_micros)).collect();
    assert_eq!(lines.iter().sum::<i128>(), super::minor_of(exact));
    assert_eq!(super::minor_of(exact), 146);
    // Every line within a cent of its exact amount.
    for (line, row) in lines.iter().zip(&rows) {
        assert!((line * 1_000_000 - row.cost_micros).abs() < 1_000_000);
    }
    assert_eq!(super::minor_of(-1_500_000), -2);
    assert_eq!(super::minor_of(2_500_000), 2);
    assert_eq!(super::minor_of(3_500_000), 4);
}

#[test]
fn a_month_to_date_query_is_never_an_empty_window() {
    let acme: crate::domain::TenantName = "acme".parse().unwrap();
    // 2026-11-17 09:00 UTC: from 2026-11-01 00:00 UTC to now.
    let now = UnixMillis(1_794_906_000_000);
    let q = UsageQuery::month_to_date(&acme, now, vec![Dimension::Project]);
    assert_eq!((q.from, q.to), (UnixMillis(1_793_491_200_000), now));
    assert_eq!(
        (q.tenant.as_ref(), q.group_by.as_slice()),
        (Some(&acme), &[Dimension::Project][..])
    );
    // At the month's first millisecond the window is that millisecond.
    let q = UsageQuery::month_to_date(&acme, q.from, vec![]);
    assert_eq!(q.to.0, q.from.0 + 1);
}
