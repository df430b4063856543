//! `allot usage | leases | ledger check`.

use allot_sdk::{Client, proto};
use serde_json::{Value, json};

use super::output::{self, table};
use std::ops::Not;

use anyhow::Context;

use super::{BudgetCommand, ExportArgs, LeasesArgs, UsageArgs};
use crate::domain::{Millis, UnixMillis};

fn when(flag: &str, s: &str) -> anyhow::Result<UnixMillis> {
    s.parse().map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn row_json(group_by: &[String], r: &proto::UsageRow) -> Value {
    let keys: serde_json::Map<String, Value> = group_by
        .iter()
        .zip(&r.keys)
        .map(|(g, k)| (g.clone(), json!(k)))
        .collect();
    json!({
        "group": keys,
        "gpu_hours": r.gpu_hours,
        "gpu_time_units": r.gpu_time_units,
        "cost_minor": r.cost_minor,
        "cost_micros": r.cost_micros,
        "currency": r.currency,
        "cost": r.cost,
        "leases": r.leases,
        "observed_gpu_hours": r.observed_gpu_hours,
        "idle_gpu_hours": r.idle_gpu_hours,
    })
}

pub async fn usage(client: &Client, a: &UsageArgs, json: bool) -> anyhow::Result<i32> {
    let now = UnixMillis::now();
    let to =
        a.to.as_deref()
            .map(|t| when("--to", t))
            .transpose()?
            .unwrap_or(now);
    let from = match (&a.last, &a.from) {
        (Some(d), _) => {
            let d: Millis = d.parse().map_err(|e| anyhow::anyhow!("--last: {e}"))?;
            UnixMillis(to.0.saturating_sub(d.0))
        }
        (None, Some(f)) => when("--from", f)?,
        (None, None) => to.month_start(),
    };
    let by: Vec<&str> = a.by.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let r = client
        .usage(from.0 as i64, to.0 as i64, &by, a.tenant.as_deref())
        .await?;
    if json {
        output::print_json(&json!({
            "from": UnixMillis(r.from_unix_ms as u64).to_string(),
            "to": UnixMillis(r.to_unix_ms as u64).to_string(),
            "group_by": r.group_by,
            "rows": r.rows.iter().map(|x| row_json(&r.group_by, x)).collect::<Vec<_>>(),
            "totals": r.totals.iter().map(|x| row_json(&[], x)).collect::<Vec<_>>(),
        }));
        return Ok(0);
    }
    println!(
        "usage from {} to {}",
        UnixMillis(r.from_unix_ms as u64),
        UnixMillis(r.to_unix_ms as u64)
    );
    let mut header: Vec<String> = r.group_by.iter().map(|g| g.to_uppercase()).collect();
    header.extend(["GPU-HOURS", "COST", "LEASES"].map(String::from));
    // Idle time shows when some agent reports utilisation.
    let observed = |x: &proto::UsageRow| {
        x.observed_gpu_hours
            .trim_start_matches(['0', '.'])
            .is_empty()
            .not()
    };
    let with_idle = r.totals.iter().any(observed);
    if with_idle {
        header.push("IDLE GPU-H".into());
    }
    let idle = |x: &proto::UsageRow| {
        if observed(x) {
            format!("{} of {}", x.idle_gpu_hours, x.observed_gpu_hours)
        } else {
            "-".into()
        }
    };
    let mut rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|x| {
            let mut row: Vec<String> = x
                .keys
                .iter()
                .map(|k| if k.is_empty() { "-".into() } else { k.clone() })
                .collect();
            row.extend([x.gpu_hours.clone(), x.cost.clone(), x.leases.to_string()]);
            if with_idle {
                row.push(idle(x));
            }
            row
        })
        .collect();
    for t in &r.totals {
        let mut row: Vec<String> = vec![String::new(); r.group_by.len()];
        if let Some(first) = row.first_mut() {
            *first = "TOTAL".into();
        }
        row.extend([t.gpu_hours.clone(), t.cost.clone(), t.leases.to_string()]);
        if with_idle {
            row.push(idle(t));
        }
        rows.push(row);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    if r.rows.is_empty() {
        println!("no GPU time in this window");
    } else {
        table(&header, &rows);
    }
    // Budgets of the tenants in view (a tenant token: its own).
    let budgets = client.budgets(a.tenant.as_deref()).await?;
    if budgets.iter().any(|b| b.has_budget) {
        println!();
        print_budgets(&budgets);
    }
    Ok(0)
}

fn lease_state(s: &str) -> anyhow::Result<proto::LeaseState> {
    match s.trim().to_ascii_lowercase().as_str() {
        "reserved" => Ok(proto::LeaseState::Reserved),
        "active" => Ok(proto::LeaseState::Active),
        "closed" => Ok(proto::LeaseState::Closed),
        _ => anyhow::bail!("unknown lease state {s:?}: use reserved, active or closed"),
    }
}

pub async fn leases(client: &Client, a: &LeasesArgs, json: bool) -> anyhow::Result<i32> {
    let states = a
        .states
        .iter()
        .map(|s| lease_state(s).map(|s| s as i32))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut q = proto::ListLeasesRequest {
        tenant: a.tenant.clone().unwrap_or_default(),
        states,
        job_id: a.job.clone().unwrap_or_default(),
        from_unix_ms: a
            .from
            .as_deref()
            .map(|t| when("--from", t))
            .transpose()?
            .map(|t| t.0 as i64)
            .unwrap_or(0),
        to_unix_ms: a
            .to
            .as_deref()
            .map(|t| when("--to", t))
            .transpose()?
            .map(|t| t.0 as i64)
            .unwrap_or(0),
        page_size: a.limit.min(1000) as u32,
        page_token: String::new(),
    };
    let mut out = Vec::new();
    while out.len() < a.limit {
        let page = client.leases(q.clone()).await?;
        out.extend(page.leases);
        if page.next_page_token.is_empty() {
            break;
        }
        q.page_token = page.next_page_token;
    }
    out.truncate(a.limit);
    if json {
        output::print_json(&Value::Array(out.iter().map(output::lease_json).collect()));
        return Ok(0);
    }
    if out.is_empty() {
        eprintln!("no leases");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|l| {
            let d = l.device.clone().unwrap_or_default();
            let end = if l.ended_at_unix_ms > 0 {
                l.ended_at_unix_ms
            } else {
                UnixMillis::now().0 as i64
            };
            vec![
                l.id.clone(),
                l.job_id.clone(),
                l.node.clone(),
                if d.mig_profile.is_empty() {
                    d.gpu_model.clone()
                } else {
                    format!("{} {}", d.gpu_model, d.mig_profile)
                },
                output::fraction(d.share.as_ref()),
                output::time(l.reserved_at_unix_ms),
                output::duration(end - l.reserved_at_unix_ms),
                match output::end_reason_name(l.end_reason) {
                    "" => output::lease_state_name(l.state).to_string(),
                    r => r.to_string(),
                },
                l.gpu_hours.clone(),
                money(l.cost_minor, &l.currency),
                match l.priced_by.as_str() {
                    "" => "rate card".to_string(),
                    by => by.to_string(),
                },
                match l.showback_by.as_str() {
                    "" => "-".to_string(),
                    by => format!("{} ({by})", money(l.showback_cost_minor, &l.currency)),
                },
            ]
        })
        .collect();
    table(
        &[
            "LEASE",
            "JOB",
            "NODE",
            "DEVICE",
            "SHARE",
            "START",
            "HELD",
            "END",
            "GPU-HOURS",
            "COST",
            "PRICED-BY",
            "SHOWBACK",
        ],
        &rows,
    );
    Ok(0)
}

pub fn print_check(r: &proto::CheckLedgerResponse, json: bool) -> i32 {
    if json {
        output::print_json(&json!({
            "clean": r.clean,
            "problems": r.problems,
            "jobs": r.jobs,
            "leases": r.leases,
            "devices": r.devices,
            "gpu_hours": r.gpu_hours,
        }));
    } else if r.clean {
        println!(
            "ledger clean: {} jobs, {} leases on {} devices, {} GPU-hours",
            r.jobs, r.leases, r.devices, r.gpu_hours
        );
    } else {
        println!("ledger has {} problem(s):", r.problems.len());
        for p in &r.problems {
            println!("  {p}");
        }
    }
    if r.clean { 0 } else { 2 }
}

/// `allot usage export`.
pub async fn export(client: &Client, a: &ExportArgs) -> anyhow::Result<i32> {
    let format = match a.format.trim().to_ascii_lowercase().as_str() {
        "focus" => proto::ExportFormat::Focus,
        "csv" => proto::ExportFormat::Csv,
        "json" => proto::ExportFormat::Json,
        other => anyhow::bail!("--format: unknown format {other:?}: use focus, csv or json"),
    };
    let (from, to) = match (&a.month, &a.from) {
        (Some(m), _) => {
            let start = when("--month", &format!("{}-01", m.trim()))?;
            if start.month_start() != start {
                anyhow::bail!("--month: use YYYY-MM, e.g. 2026-11");
            }
            (start, Some(start.next_month_start()))
        }
        (None, Some(f)) => (
            when("--from", f)?,
            a.to.as_deref().map(|t| when("--to", t)).transpose()?,
        ),
        (None, None) => (UnixMillis::now().month_start(), None),
    };
    let req = proto::ExportUsageRequest {
        from_unix_ms: from.0 as i64,
        to_unix_ms: to.map(|t| t.0 as i64).unwrap_or(0),
        tenant: a.tenant.clone().unwrap_or_default(),
        format: format as i32,
    };
    match &a.output {
        Some(path) => {
            // Written beside the target and renamed into place: never half a file.
            let mut tmp = path.clone().into_os_string();
            tmp.push(".partial");
            let tmp = std::path::PathBuf::from(tmp);
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
            );
            let rows = client.export_usage(req, &mut f).await;
            drop(f);
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            };
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {rows} rows to {}", path.display());
        }
        None => {
            client.export_usage(req, &mut std::io::stdout()).await?;
        }
    }
    Ok(0)
}

fn budget_json(b: &proto::BudgetStatus) -> Value {
    json!({
        "tenant": b.tenant,
        "has_budget": b.has_budget,
        "currency": b.currency,
        "spend_limit_minor": b.spend_limit_minor,
        "gpu_hours_limit": (!b.gpu_hours_limit.is_empty()).then_some(&b.gpu_hours_limit),
        "period_start": UnixMillis(b.period_start_unix_ms as u64).to_string(),
        "period_end": UnixMillis(b.period_end_unix_ms as u64).to_string(),
        "spent_minor": b.spent_minor,
        "spent": b.spent,
        "gpu_hours": b.gpu_hours,
        "burn_minor_per_day": b.burn_minor_per_day,
        "burn_gpu_hours_per_day": b.burn_gpu_hours_per_day,
        "projected_minor": b.projected_minor,
        "projected_gpu_hours": b.projected_gpu_hours,
        "exhausted": b.exhausted,
        "summary": b.summary,
    })
}

fn money(minor: i64, currency: &str) -> String {
    crate::domain::money::Money {
        minor: minor as i128,
        currency: currency.parse().unwrap_or_default(),
    }
    .to_string()
}

/// The budget lines under `allot usage` and in `allot budget show`.
fn print_budgets(budgets: &[proto::BudgetStatus]) {
    for b in budgets.iter().filter(|b| b.has_budget) {
        let mut limits = Vec::new();
        if let Some(l) = b.spend_limit_minor {
            limits.push(format!("{} of {}", b.spent, money(l, &b.currency)));
        }
        if !b.gpu_hours_limit.is_empty() {
            limits.push(format!("{} of {} GPU-h", b.gpu_hours, b.gpu_hours_limit));
        }
        println!(
            "budget {}: {}{}",
            b.tenant,
            limits.join(", "),
            if b.exhausted {
                " — EXHAUSTED: pending jobs are held"
            } else {
                ""
            }
        );
        println!(
            "  burn {}/day, {} GPU-h/day (last 24 h) → {} and {} GPU-h by {}",
            money(b.burn_minor_per_day, &b.currency),
            b.burn_gpu_hours_per_day,
            money(b.projected_minor, &b.currency),
            b.projected_gpu_hours,
            &UnixMillis(b.period_end_unix_ms as u64).to_string()[..10],
        );
    }
}

/// `allot budget set|clear|show`.
pub async fn budget(client: &Client, c: &BudgetCommand, json: bool) -> anyhow::Result<i32> {
    let shown = match c {
        BudgetCommand::Set {
            tenant,
            spend,
            gpu_hours,
        } => {
            if spend.is_none() && gpu_hours.is_none() {
                anyhow::bail!("give --spend, --gpu-hours or both (allot budget clear removes a budget)");
            }
            vec![
                client
                    .set_budget(
                        tenant,
                        spend.as_deref().unwrap_or_default(),
                        gpu_hours.as_deref().unwrap_or_default(),
                    )
                    .await?,
            ]
        }
        BudgetCommand::Clear { tenant } => vec![client.set_budget(tenant, "", "").await?],
        BudgetCommand::Show { tenant } => client.budgets(tenant.as_deref()).await?,
    };
    if json {
        output::print_json(&json!(shown.iter().map(budget_json).collect::<Vec<_>>()));
        return Ok(0);
    }
    if shown.iter().all(|b| !b.has_budget) {
        for b in &shown {
            println!(
                "tenant {} has no budget; this month: {}, {} GPU-h",
                b.tenant, b.spent, b.gpu_hours
            );
        }
        if shown.is_empty() {
            println!("no budgets set");
        }
        return Ok(0);
    }
    print_budgets(&shown);
    Ok(0)
}
