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

/// GPU-time and exact cost (micros) of usage rows.
fn sum(rows: &[proto::UsageRow]) -> (u128, i128) {
    rows.iter().fold((0, 0), |(g, c), r| {
        (
            g + r.gpu_time_units.parse::<u128>().unwrap(),
            c + r.cost_micros.parse::<i128>().unwrap(),
        )
    })
}

/// The rounded costs of the rows add up to the rounded total.
fn rounded_rows_add_up(u: &proto::GetUsageResponse) {
    let rows: i64 = u.rows.iter().map(|r| r.cost_minor).sum();
    let totals: i64 = u.totals.iter().map(|r| r.cost_minor).sum();
    assert_eq!(rows, totals, "{u:?}");
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
    let lease_total: (u128, i128) = leases.iter().fold((0, 0), |(g, c), l| {
        (
            g + l.gpu_time_units.parse::<u128>().unwrap(),
            c + l.cost_micros.parse::<i128>().unwrap(),
        )
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
        rounded_rows_add_up(&u);
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

/// Splits a CSV line (no quoted commas in the fields this test reads).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted) = (String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Decimal major units to minor (two places).
fn minor(s: &str) -> i64 {
    let (i, f) = s.split_once('.').unwrap_or((s, "0"));
    i.parse::<i64>().unwrap() * 100 + format!("{f:0<2}")[..2].parse::<i64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn focus_export_adds_up_to_usage_and_is_the_same_bytes_every_time() {
    let dir = tempdir();
    let config = dir.path().join("allot.toml");
    std::fs::write(&config, PRICES).unwrap();
    let server = DevServer::start_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let client = server.client().await;
    let mut ids = Vec::new();
    for spec in [
        JobSpec::new("sleep")
            .args(["0.2"])
            .gpus(2)
            .tag("cost-center", "cc-1, \"ml\""),
        JobSpec::new("sleep").args(["0.1"]).mig("1g.10gb"),
        JobSpec::new("sleep").args(["0.1"]).gpu_fraction(1, 3),
    ] {
        ids.push(client.submit(spec).await.unwrap().id);
    }
    for id in &ids {
        wait_final(&client, id).await;
    }
    let leases = client
        .leases(proto::ListLeasesRequest::default())
        .await
        .unwrap()
        .leases;
    const HOUR: i64 = 3_600_000;
    let from = leases.iter().map(|l| l.reserved_at_unix_ms).min().unwrap() / HOUR * HOUR;
    let to = (leases.iter().map(|l| l.ended_at_unix_ms).max().unwrap() / HOUR + 1) * HOUR;
    let export = |format: proto::ExportFormat, tenant: &str| proto::ExportUsageRequest {
        from_unix_ms: from,
        to_unix_ms: to,
        tenant: tenant.into(),
        format: format as i32,
    };
    let mut focus = Vec::new();
    let rows = client
        .export_usage(export(proto::ExportFormat::Focus, ""), &mut focus)
        .await
        .unwrap();
    let text = String::from_utf8(focus.clone()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    let header = csv_fields(lines[0]);
    for col in [
        "BilledCost",
        "BillingAccountId",
        "BillingAccountName",
        "BillingCurrency",
        "BillingPeriodEnd",
        "BillingPeriodStart",
        "ChargeCategory",
        "ChargeClass",
        "ChargeDescription",
        "ChargePeriodEnd",
        "ChargePeriodStart",
        "ConsumedQuantity",
        "ConsumedUnit",
        "ContractedCost",
        "EffectiveCost",
        "InvoiceIssuerName",
        "ListCost",
        "PricingQuantity",
        "PricingUnit",
        "ProviderName",
        "PublisherName",
        "ServiceCategory",
        "ServiceName",
        "SubAccountId",
        "SubAccountName",
        "Tags",
        "x_JobId",
        "x_LeaseId",
        "x_MigProfile",
    ] {
        assert!(header.iter().any(|h| h == col), "no {col} column");
    }
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let body: Vec<Vec<String>> = lines[1..].iter().map(|l| csv_fields(l)).collect();
    // One row per lease and hour it touched.
    let parts: usize = leases
        .iter()
        .map(|l| (((l.ended_at_unix_ms - 1) / HOUR - l.reserved_at_unix_ms / HOUR) + 1) as usize)
        .sum();
    assert_eq!((body.len(), rows as usize), (parts, parts));
    let mut ids_seen = std::collections::HashSet::new();
    for r in &body {
        assert_eq!(r.len(), header.len());
        assert!(ids_seen.insert(r[col("x_RowId")].clone()), "row ids are unique");
        assert_eq!(r[col("ConsumedUnit")], "GPU-Hours");
        assert_eq!(r[col("ChargeCategory")], "Usage");
        assert_eq!(r[col("BillingCurrency")], "EUR");
        let (s, e) = (&r[col("ChargePeriodStart")], &r[col("ChargePeriodEnd")]);
        assert!(s.ends_with(":00:00Z") && e.ends_with(":00:00Z"), "{s} {e}");
    }
    let tagged = body.iter().find(|r| r[col("x_JobId")] == ids[0]).unwrap();
    let tags: serde_json::Value = serde_json::from_str(&tagged[col("Tags")]).unwrap();
    assert_eq!(tags["cost-center"], "cc-1, \"ml\"");
    assert!(body.iter().any(|r| r[col("x_MigProfile")] == "1g.10gb"));
    // The export adds up to the usage report, to the cent.
    let usage = client.usage(from, to, &[], None).await.unwrap();
    let billed: i64 = body.iter().map(|r| minor(&r[col("BilledCost")])).sum();
    assert_eq!(billed, usage.totals[0].cost_minor);
    // And exactly, in micros; its rounded lines add up to its rounded total.
    let micros: i128 = body
        .iter()
        .map(|r| r[col("x_CostMicros")].parse::<i128>().unwrap())
        .sum();
    assert_eq!(micros.to_string(), usage.totals[0].cost_micros);

    // Again: the same bytes. Plain CSV and JSON carry the same rows.
    let mut again = Vec::new();
    client
        .export_usage(export(proto::ExportFormat::Focus, ""), &mut again)
        .await
        .unwrap();
    assert_eq!(again, focus);
    let mut json = Vec::new();
    client
        .export_usage(export(proto::ExportFormat::Json, ""), &mut json)
        .await
        .unwrap();
    let json: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    assert_eq!(json.len(), parts);
    assert_eq!(
        json.iter()
            .map(|r| r["cost_minor"].as_i64().unwrap())
            .sum::<i64>(),
        billed
    );
    let mut csv = Vec::new();
    client
        .export_usage(export(proto::ExportFormat::Csv, ""), &mut csv)
        .await
        .unwrap();
    assert!(String::from_utf8(csv).unwrap().starts_with("row_id,hour,tenant,"));

    // The CLI writes the same file.
    let out = dir.path().join("usage.csv");
    let (code, _, err) = run_allot(
        &[
            "usage",
            "export",
            "--format",
            "focus",
            "--from",
            &allot_scheduler::domain::UnixMillis(from as u64).to_string(),
            "--to",
            &allot_scheduler::domain::UnixMillis(to as u64).to_string(),
            "-o",
            out.to_str().unwrap(),
        ],
        Some(&server.addr),
        Some(&server.token),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), focus);

    // Bad windows and formats are refused with the field named; another
    // tenant's export is empty.
    let mut sink = Vec::new();
    let mut bad = export(proto::ExportFormat::Focus, "");
    bad.from_unix_ms += 1;
    let err = client.export_usage(bad, &mut sink).await.unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        (Code::InvalidArgument, Some("from_unix_ms"))
    );
    let err = client
        .export_usage(export(proto::ExportFormat::Unspecified, ""), &mut sink)
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("format"));
    let err = client
        .export_usage(export(proto::ExportFormat::Focus, "someone-else"), &mut sink)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let admin = server.admin().await;
    admin.admin().create_tenant("other").await.unwrap();
    let mut empty = Vec::new();
    let n = admin
        .export_usage(export(proto::ExportFormat::Focus, "other"), &mut empty)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(String::from_utf8(empty).unwrap().lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_monthly_budget_gets_no_new_placements() {
    let dir = tempdir();
    let config = dir.path().join("allot.toml");
    std::fs::write(&config, PRICES).unwrap();
    let server = DevServer::start_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let client = server.client().await;
    let admin = server.admin().await;

    // Bad input first: nothing changes.
    for (spend, hours, field) in [
        ("-5", "", "spend_limit"),
        ("1.234", "", "spend_limit"),
        ("", "ten", "gpu_hours_limit"),
        ("", "0", "gpu_hours_limit"),
    ] {
        let err = admin.set_budget("default", spend, hours).await.unwrap_err();
        assert_eq!(
            (err.code(), err.field()),
            (Code::InvalidArgument, Some(field)),
            "{spend} {hours}"
        );
    }
    assert_eq!(
        admin.set_budget("nobody", "5", "").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.set_budget("default", "5", "").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(!client.budgets(None).await.unwrap()[0].has_budget);

    // 36000 EUR per H100-hour is 10 EUR per GPU-second: a 5 EUR budget lasts
    // half a GPU-second.
    let set = admin.set_budget("default", "5.00", "").await.unwrap();
    assert!(set.has_budget && !set.exhausted);
    assert_eq!(set.spend_limit_minor, Some(500));
    let first = client
        .submit(JobSpec::new("sleep").args(["1"]).gpus(1).gpu_model("H100-80GB"))
        .await
        .unwrap();
    assert_eq!(wait_final(&client, &first.id).await.state(), JobState::Succeeded);
    let held = client.submit(JobSpec::new("true").gpus(1)).await.unwrap();
    let held = wait_for(&client, &held.id, "held by the budget", |j| {
        j.reason.contains("budget")
    })
    .await;
    assert_eq!(held.state(), JobState::Pending);
    assert!(
        held.reason.starts_with("held: tenant default spent"),
        "{}",
        held.reason
    );
    let mine = client.budgets(None).await.unwrap();
    assert!(mine[0].exhausted && mine[0].spent_minor >= 500, "{:?}", mine[0]);
    assert!(mine[0].projected_minor >= mine[0].spent_minor);
    // `allot usage` shows where the budget stands.
    let (code, out, err) = run_allot(&["usage"], Some(&server.addr), Some(&server.token)).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("budget default:") && out.contains("EXHAUSTED"),
        "{out}"
    );

    // Raising the budget lets the held job start.
    admin.set_budget("default", "100000.00", "").await.unwrap();
    assert_eq!(wait_final(&client, &held.id).await.state(), JobState::Succeeded);
    // A GPU-hour limit works the same way; clearing the budget lifts it.
    admin.set_budget("default", "", "0.0001").await.unwrap();
    let second = client.submit(JobSpec::new("true").gpus(1)).await.unwrap();
    let second = wait_for(&client, &second.id, "held", |j| j.reason.contains("GPU-hours")).await;
    assert_eq!(second.state(), JobState::Pending);
    let cleared = admin.set_budget("default", "", "").await.unwrap();
    assert!(!cleared.has_budget);
    assert_eq!(wait_final(&client, &second.id).await.state(), JobState::Succeeded);
}
