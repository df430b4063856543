//! GPU-hours and cost from real leases: usage by any grouping, leases, the
//! ledger check, and who may see what.

use allot_sdk::{Client, Code, JobSpec, JobState, proto};

use crate::harness::*;

/// A GPU-second costs real money here, so short test jobs have visible cost.
const PRICES: &str = r#"
[pricing]
currency = "EUR"
gpu_hour = "3600.00"
preemptible_discount_pct = 50
[pricing.models]
"H100-80GB" = "36000.00"
"#;

fn sum(rows: &[proto::UsageRow]) -> (u128, i64) {
    rows.iter().fold((0, 0), |(g, c), r| {
        (g + r.gpu_time_units.parse::<u128>().unwrap(), c + r.cost_minor)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_from_the_leases_and_is_priced_by_the_rate_card() {
    let dir = tempdir();
    let config = dir.path().join("allot.toml");
    std::fs::write(&config, PRICES).unwrap();
    let server = DevServer::start_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let client = server.client().await;
    let jobs = [
        JobSpec::new("sleep").args(["0.3"]).gpus(2).tag("team", "nlp"),
        JobSpec::new("sleep")
            .args(["0.2"])
            .mig("1g.10gb")
            .tag("team", "cv"),
        JobSpec::new("sleep")
            .args(["0.2"])
            .gpu_fraction(1, 4)
            .preemptible(true)
            .tag("team", "cv"),
    ];
    let mut ids = Vec::new();
    for spec in jobs {
        ids.push(client.submit(spec).await.unwrap().id);
    }
    for id in &ids {
        assert_eq!(wait_final(&client, id).await.state(), JobState::Succeeded);
    }

    // Every lease is priced at the rate of its model, its share, its discount.
    let leases = client
        .leases(proto::ListLeasesRequest::default())
        .await
        .unwrap()
        .leases;
    assert_eq!(leases.len(), 4);
    for l in &leases {
        assert_eq!(l.currency, "EUR");
        let held = (l.ended_at_unix_ms - l.reserved_at_unix_ms) as u128;
        let share = l.device.as_ref().unwrap().share.unwrap();
        let units: u128 = l.gpu_time_units.parse().unwrap();
        assert_eq!(
            units,
            63_000_000 * held * share.numerator as u128 / share.denominator as u128
        );
        // 36000 EUR per GPU-hour is 1000 cents per GPU-second; half off when preemptible.
        let per_ms_cents = if l.job_id == ids[2] { 0.5 } else { 1.0 };
        let exact = held as f64 * per_ms_cents * share.numerator as f64 / share.denominator as f64;
        assert!(
            (l.cost_minor as f64 - exact).abs() <= 1.0,
            "{} vs {exact}",
            l.cost_minor
        );
        assert!(l.cost_minor > 0);
    }
    let lease_total: (u128, i64) = leases.iter().fold((0, 0), |(g, c), l| {
        (g + l.gpu_time_units.parse::<u128>().unwrap(), c + l.cost_minor)
    });

    // Usage agrees with the leases to the unit, however it is grouped.
    let from = leases.iter().map(|l| l.reserved_at_unix_ms).min().unwrap() - 1;
    let to = leases.iter().map(|l| l.ended_at_unix_ms).max().unwrap() + 1;
    for by in [
        vec![],
        vec!["tenant"],
        vec!["tag:team"],
        vec!["model", "mig"],
        vec!["job"],
        vec!["hour"],
    ] {
        let u = client.usage(from, to, &by, None).await.unwrap();
        assert_eq!(sum(&u.rows), lease_total, "grouped by {by:?}");
        assert_eq!(sum(&u.totals), lease_total);
    }
    let by_team = client.usage(from, to, &["tag:team"], None).await.unwrap();
    assert_eq!(
        by_team
            .rows
            .iter()
            .map(|r| r.keys[0].as_str())
            .collect::<Vec<_>>(),
        ["cv", "nlp"]
    );
    assert_eq!(by_team.rows[0].leases, 2);
    // A window that ends before the jobs began holds nothing.
    let before = client
        .usage(from - 10_000, from, &["tenant"], None)
        .await
        .unwrap();
    assert!(before.rows.is_empty());

    // Bad input is refused with the field named.
    let err = client.usage(from, to, &["colour"], None).await.unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        (Code::InvalidArgument, Some("group_by"))
    );
    let err = client.usage(0, to, &[], None).await.unwrap_err();
    assert_eq!(err.field(), Some("from_unix_ms"));
    let err = client.usage(to, from, &[], None).await.unwrap_err();
    assert_eq!(err.field(), Some("to_unix_ms"));

    // A tenant sees only its own usage; the ledger check is for admins.
    let admin = server.admin().await;
    admin.admin().create_tenant("other").await.unwrap();
    let t = admin
        .admin()
        .issue_token(proto::Role::Tenant, Some("other"), "")
        .await
        .unwrap();
    let other = Client::connect(server.addr.clone(), &t.token).await.unwrap();
    assert!(other.usage(from, to, &[], None).await.unwrap().rows.is_empty());
    assert!(
        other
            .leases(proto::ListLeasesRequest::default())
            .await
            .unwrap()
            .leases
            .is_empty()
    );
    let err = other.usage(from, to, &[], Some("default")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        client.check_ledger().await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let report = admin.check_ledger().await.unwrap();
    assert!(report.clean, "{:?}", report.problems);
    assert_eq!(report.leases, 4);

    // Leases filter by job.
    let mine = client
        .leases(proto::ListLeasesRequest {
            job_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.leases.len(), 2);
}
