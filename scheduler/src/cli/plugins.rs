//! `allot plugin add | list | show | remove | bind | unbind | test`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use allot_sdk::{Client, Scope, proto};
use anyhow::Context;
use serde_json::{Value, json};

use super::jobfile::JobFile;
use super::output::{self, table, time};
use super::{PluginCommand, ScopeArgs};
use crate::domain::money::{Currency, Money};
use crate::domain::validate;
use crate::domain::{GpuRequest, JobSpec, Millis, Share, TenantName, UnixMillis};
use crate::policy::runtime::{CallReport, Sandbox};
use crate::policy::wit::{RawAdmission, RawQuota};
use crate::policy::{ExtensionPoint, PolicyConfig, PriceInput, QuotaInput, Usage};

impl ScopeArgs {
    fn scope(&self) -> Scope {
        match (&self.tenant, self.global) {
            (_, true) => Scope::Global,
            (Some(t), false) => Scope::Tenant(t.clone()),
            (None, false) => Scope::Own,
        }
    }
}

fn point_name(p: i32) -> &'static str {
    match proto::ExtensionPoint::try_from(p) {
        Ok(proto::ExtensionPoint::Admission) => "admission",
        Ok(proto::ExtensionPoint::Quota) => "quota",
        Ok(proto::ExtensionPoint::Pricing) => "pricing",
        _ => "unknown",
    }
}

fn parse_point(s: &str) -> anyhow::Result<proto::ExtensionPoint> {
    let point: ExtensionPoint = s.parse().map_err(|e: String| anyhow::anyhow!("--point: {e}"))?;
    Ok(match point {
        ExtensionPoint::Admission => proto::ExtensionPoint::Admission,
        ExtensionPoint::Quota => proto::ExtensionPoint::Quota,
        ExtensionPoint::Pricing => proto::ExtensionPoint::Pricing,
    })
}

fn owner(tenant: &str, global: bool) -> String {
    if global {
        "global".into()
    } else {
        tenant.to_string()
    }
}

fn plugin_json(p: &proto::Plugin) -> Value {
    json!({
        "name": p.name,
        "owner": owner(&p.tenant, p.global),
        "sha256": p.sha256,
        "point": point_name(p.point),
        "wit_version": p.wit_version,
        "size_bytes": p.size_bytes,
        "uploaded_at": time(p.uploaded_at_unix_ms),
        "uploaded_by": p.uploaded_by,
    })
}

fn binding_json(b: &proto::PluginBinding) -> Value {
    json!({
        "scope": owner(&b.tenant, b.global),
        "point": point_name(b.point),
        "plugin": b.plugin,
        "plugin_owner": if b.plugin_global { "global".to_string() } else { b.tenant.clone() },
        "bound_at": time(b.bound_at_unix_ms),
        "bound_by": b.bound_by,
        "layer": layer_name(b.layer),
    })
}

fn layer_name(layer: i32) -> &'static str {
    match proto::PluginLayer::try_from(layer) {
        Ok(proto::PluginLayer::Operator) => "operator",
        Ok(proto::PluginLayer::Tenant) => "tenant",
        _ => "?",
    }
}

fn binding_line(b: &proto::PluginBinding) -> String {
    format!(
        "{} for {} ({} layer) -> {}{}",
        point_name(b.point),
        if b.global {
            "every tenant (global)".to_string()
        } else {
            format!("tenant {}", b.tenant)
        },
        layer_name(b.layer),
        if b.plugin_global { "global/" } else { "" },
        b.plugin
    )
}

/// Runs a client subcommand of `allot plugin`.
pub async fn run(client: &Client, cmd: &PluginCommand, json: bool) -> anyhow::Result<i32> {
    let plugins = client.plugins();
    match cmd {
        PluginCommand::Add { file, name, scope } => {
            let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = match name {
                Some(n) => n.clone(),
                None => default_name(file)?,
            };
            let r = plugins.add(&name, wasm, &scope.scope()).await?;
            let p = r.plugin.unwrap_or_default();
            if json {
                output::print_json(
                    &json!({ "plugin": plugin_json(&p), "replaced_sha256": r.replaced_sha256 }),
                );
            } else {
                println!(
                    "stored {} plugin {} ({}) for {}: sha256 {}, allot:plugin@{}",
                    point_name(p.point),
                    p.name,
                    human_size(p.size_bytes),
                    owner(&p.tenant, p.global),
                    &p.sha256[..12.min(p.sha256.len())],
                    p.wit_version
                );
                if !r.replaced_sha256.is_empty() {
                    println!(
                        "replaced the build {}: its bindings call the new one from the next call",
                        &r.replaced_sha256[..12.min(r.replaced_sha256.len())]
                    );
                }
            }
        }
        PluginCommand::List { tenant } => {
            let r = plugins.list(tenant.as_deref()).await?;
            if json {
                output::print_json(&json!({
                    "plugins": r.plugins.iter().map(plugin_json).collect::<Vec<_>>(),
                    "bindings": r.bindings.iter().map(binding_json).collect::<Vec<_>>(),
                }));
                return Ok(0);
            }
            if r.plugins.is_empty() {
                eprintln!("no plugins");
            } else {
                let rows: Vec<Vec<String>> = r
                    .plugins
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            owner(&p.tenant, p.global),
                            point_name(p.point).into(),
                            p.wit_version.clone(),
                            human_size(p.size_bytes),
                            p.sha256[..12.min(p.sha256.len())].to_string(),
                            output::age(p.uploaded_at_unix_ms),
                        ]
                    })
                    .collect();
                table(&["NAME", "OWNER", "POINT", "WIT", "SIZE", "SHA256", "AGE"], &rows);
            }
            if !r.bindings.is_empty() {
                println!();
                println!("bindings:");
                for b in &r.bindings {
                    println!("  {}", binding_line(b));
                }
            }
        }
        PluginCommand::Show { name, scope } => {
            let r = plugins.get(name, &scope.scope()).await?;
            let p = r.plugin.unwrap_or_default();
            if json {
                output::print_json(&json!({
                    "plugin": plugin_json(&p),
                    "bindings": r.bindings.iter().map(binding_json).collect::<Vec<_>>(),
                    "stats": r.stats.as_ref().map(|s| json!({
                        "calls": s.calls,
                        "failures": s.failures,
                        "failures_by_kind": s.failures_by_kind,
                        "p50_us": s.p50_us,
                        "p99_us": s.p99_us,
                        "recent_errors": s.recent_errors.iter().map(|e| json!({
                            "at": time(e.at_unix_ms),
                            "kind": e.kind,
                            "message": e.message,
                            "tenant": e.tenant,
                            "point": point_name(e.point),
                            "sha256": e.sha256,
                        })).collect::<Vec<_>>(),
                    })),
                }));
                return Ok(0);
            }
            println!("plugin {} ({})", p.name, owner(&p.tenant, p.global));
            println!(
                "  point:       {} (exports {})",
                point_name(p.point),
                export_of(p.point)
            );
            println!("  wit:         allot:plugin@{}", p.wit_version);
            println!("  sha256:      {}", p.sha256);
            println!("  size:        {}", human_size(p.size_bytes));
            println!(
                "  uploaded:    {} by token {}",
                time(p.uploaded_at_unix_ms),
                p.uploaded_by
            );
            if r.bindings.is_empty() {
                println!("  bound:       nowhere");
            }
            for b in &r.bindings {
                println!("  bound:       {}", binding_line(b));
            }
            if let Some(s) = &r.stats {
                println!(
                    "  calls:       {} since the server started, {} failed",
                    s.calls, s.failures
                );
                if let (Some(p50), Some(p99)) = (s.p50_us, s.p99_us) {
                    println!(
                        "  latency:     p50 {}, p99 {} (the last {} calls, waits included)",
                        micros(p50),
                        micros(p99),
                        s.calls.min(1024)
                    );
                }
                if !s.failures_by_kind.is_empty() {
                    let mut kinds: Vec<_> = s.failures_by_kind.iter().collect();
                    kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                    println!(
                        "  failures:    {}",
                        kinds
                            .iter()
                            .map(|(k, n)| format!("{n} {k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                if !s.recent_errors.is_empty() {
                    println!();
                    let rows: Vec<Vec<String>> = s
                        .recent_errors
                        .iter()
                        .map(|e| {
                            vec![
                                time(e.at_unix_ms),
                                e.kind.clone(),
                                e.tenant.clone(),
                                e.message.clone(),
                            ]
                        })
                        .collect();
                    table(&["AT", "KIND", "TENANT", "ERROR"], &rows);
                }
            }
        }
        PluginCommand::Remove { name, scope } => {
            let p = plugins.remove(name, &scope.scope()).await?;
            if json {
                output::print_json(&plugin_json(&p));
            } else {
                println!("removed plugin {} ({})", p.name, owner(&p.tenant, p.global));
            }
        }
        PluginCommand::Bind {
            name,
            point,
            layer,
            scope,
        } => {
            let point = point.as_deref().map(parse_point).transpose()?;
            let r = plugins
                .bind_in(name, point, &scope.scope(), super::LayerArg::pb(*layer))
                .await?;
            let b = r.binding.unwrap_or_default();
            if json {
                output::print_json(&json!({
                    "binding": binding_json(&b),
                    "replaced": r.replaced.as_ref().map(binding_json),
                }));
            } else {
                println!("bound: {}", binding_line(&b));
                if let Some(old) = &r.replaced {
                    println!("replaced: {}", binding_line(old));
                }
            }
        }
        PluginCommand::Unbind { point, layer, scope } => {
            let b = plugins
                .unbind_in(parse_point(point)?, &scope.scope(), super::LayerArg::pb(*layer))
                .await?;
            if json {
                output::print_json(&binding_json(&b));
            } else {
                println!("unbound: {}", binding_line(&b));
            }
        }
        PluginCommand::Test { .. } => unreachable!("`allot plugin test` runs without a server"),
    }
    Ok(0)
}

fn export_of(point: i32) -> &'static str {
    match proto::ExtensionPoint::try_from(point) {
        Ok(proto::ExtensionPoint::Admission) => "admit",
        Ok(proto::ExtensionPoint::Quota) => "check",
        Ok(proto::ExtensionPoint::Pricing) => "price",
        _ => "?",
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// `850 µs`, `3.4 ms`, `1.20 s`.
fn micros(us: u64) -> String {
    match us {
        us if us < 1_000 => format!("{us} µs"),
        us if us < 1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        us => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// `require_cost_center.wasm` → `require_cost_center`.
fn default_name(file: &Path) -> anyhow::Result<String> {
    file.file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .with_context(|| format!("cannot name a plugin after {}: pass --name", file.display()))
}

/// `allot plugin test FILE --job JOB.toml`: validates and runs the plugin
/// locally, as the server would (same sandbox and bounds), and prints the
/// decision and the plugin's log lines. Exit code: 0 accepted, allowed,
/// held or priced; 1 rejected or denied; 2 the plugin failed.
pub fn test(
    file: &Path,
    job: &Path,
    tenant: Option<&str>,
    project: Option<&str>,
    at: Option<&str>,
    json: bool,
) -> anyhow::Result<i32> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut wire = JobFile::read(job)?.into_spec()?;
    if let Some(t) = tenant {
        wire.tenant = t.to_string();
    }
    if let Some(p) = project {
        wire.project = p.to_string();
    }
    if wire.tenant.is_empty() {
        wire.tenant = "default".into();
    }
    let tenant: TenantName = wire
        .tenant
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--tenant: {e}"))?;
    // Validated as the server validates a submission of the tenant's.
    let spec =
        validate::job_spec(&wire, tenant).map_err(|e| anyhow::anyhow!("job file {}: {e}", job.display()))?;
    let now = match at {
        Some(s) => s
            .parse::<UnixMillis>()
            .map_err(|e| anyhow::anyhow!("--at: {e}"))?,
        None => UnixMillis::now(),
    };
    let sandbox = Sandbox::new(&PolicyConfig::default())?;
    let validated = sandbox
        .validate(&wasm)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let plugin = validated.plugin;
    let label: Arc<str> = default_name(file)?.into();
    let tenant: Arc<str> = spec.tenant.as_str().into();
    let header = json!({
        "plugin": file.display().to_string(),
        "point": plugin.point.as_str(),
        "wit_version": plugin.built_for.to_string(),
        "tenant": spec.tenant.as_str(),
        "project": spec.project.as_str(),
    });
    if !json {
        println!(
            "{}: {} plugin, allot:plugin@{}; job {:?} of {}/{}",
            file.display(),
            plugin.point,
            plugin.built_for,
            spec.name,
            spec.tenant,
            spec.project
        );
    }
    let (decision, code) = match plugin.point {
        ExtensionPoint::Admission => {
            let report = sandbox.call(&plugin, label, tenant, |b, store, max| {
                b.admit(store, &spec, now, max)
            });
            finish(report, json, &header, |raw| match raw {
                RawAdmission::Accept => (json!({"decision": "accept"}), "accept".into(), 0),
                RawAdmission::Reject(m) => (
                    json!({"decision": "reject", "message": m}),
                    format!("reject: {m}"),
                    1,
                ),
                RawAdmission::Modify(wire) => match validate::job_spec(&wire, spec.tenant.clone()) {
                    Ok(modified) => {
                        let changes = spec_changes(&spec, &modified);
                        let text = format!(
                            "modify:\n{}",
                            changes
                                .iter()
                                .map(|c| format!("  {c}"))
                                .collect::<Vec<_>>()
                                .join("\n")
                        );
                        (json!({"decision": "modify", "changes": changes}), text, 0)
                    }
                    Err(e) => (
                        json!({"decision": "reject", "error": format!("the plugin returned an invalid job: {e}")}),
                        format!("reject: the plugin returned an invalid job: {e}"),
                        2,
                    ),
                },
            })
        }
        ExtensionPoint::Quota => {
            let input = sample_quota(&spec, now);
            if !json {
                println!("sample usage: the tenant holds and has used nothing this month");
            }
            let report = sandbox.call(&plugin, label, tenant, |b, store, max| {
                b.check(store, &input, max)
            });
            finish(report, json, &header, |raw| match raw {
                RawQuota::Allow => (json!({"decision": "allow"}), "allow".into(), 0),
                RawQuota::Deny(r) => (json!({"decision": "deny", "reason": r}), format!("deny: {r}"), 1),
                RawQuota::Hold(r) => (json!({"decision": "hold", "reason": r}), format!("hold: {r}"), 0),
            })
        }
        ExtensionPoint::Pricing => {
            let input = sample_piece(&spec, now);
            if !json {
                println!(
                    "sample piece: one hour of {} ({} of a GPU) from {}, list price {} (the dev rate card)",
                    input.gpu_model,
                    input.share,
                    input.start,
                    Money {
                        minor: i128::from(input.list_price_minor),
                        currency: input.currency,
                    }
                );
            }
            let (currency, list_price_minor) = (input.currency, input.list_price_minor);
            let report = sandbox.call(&plugin, label, tenant, |b, store, max| {
                b.price(store, &input, max)
            });
            finish(report, json, &header, |answer| match answer {
                Ok(price) => (
                    json!({
                        "decision": "price",
                        "minor": price,
                        "price": Money { minor: i128::from(price), currency }.decimal(),
                        "currency": currency.as_str(),
                        "list_price_minor": list_price_minor,
                    }),
                    format!(
                        "price: {} ({price} minor units)",
                        Money {
                            minor: i128::from(price),
                            currency
                        }
                    ),
                    0,
                ),
                Err(e) => (
                    json!({"decision": "error", "error": e, "list_price_minor": list_price_minor}),
                    format!("error: {e} (the server would charge the list price)"),
                    2,
                ),
            })
        }
    };
    if !json {
        println!("{decision}");
    }
    Ok(code)
}

/// Prints the log lines and turns the call's result into (text, exit code).
fn finish<R>(
    report: CallReport<R>,
    json: bool,
    header: &Value,
    decide: impl FnOnce(R) -> (Value, String, i32),
) -> (String, i32) {
    let logs: Vec<Value> = report
        .logs
        .iter()
        .map(|l| json!({"level": l.level.as_str(), "message": l.message}))
        .collect();
    if !json {
        for l in &report.logs {
            println!("log {}: {}", l.level.as_str(), l.message);
        }
    }
    let (value, text, code) = match report.result {
        Ok(r) => decide(r),
        Err(f) => (
            json!({"decision": "failed", "kind": f.kind.as_str(), "error": f.message}),
            format!("failed ({}): {}", f.kind, f.message),
            2,
        ),
    };
    if json {
        let mut out = header.clone();
        if let (Some(o), Some(v)) = (out.as_object_mut(), value.as_object()) {
            o.extend(v.clone());
            o.insert("logs".into(), Value::Array(logs));
            o.insert("elapsed_us".into(), json!(report.elapsed.as_micros() as u64));
        }
        output::print_json(&out);
    }
    (text, code)
}

/// What a modification changed, one `field: before -> after` per line.
fn spec_changes(before: &JobSpec, after: &JobSpec) -> Vec<String> {
    let b = serde_json::to_value(before).unwrap_or_default();
    let a = serde_json::to_value(after).unwrap_or_default();
    let (Some(b), Some(a)) = (b.as_object(), a.as_object()) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {} -> {v}", b.get(k).cloned().unwrap_or(Value::Null)))
        .collect()
}

/// A quota request for `spec` from a tenant that holds and used nothing.
fn sample_quota(spec: &JobSpec, now: UnixMillis) -> QuotaInput {
    let mut idle = Usage::zero(Currency::USD);
    idle.pending_jobs = 1;
    QuotaInput {
        job: spec.clone(),
        job_gpus: spec.resources.gpu.gpus(),
        now,
        period_start: now.month_start(),
        tenant_usage: idle.clone(),
        projects: BTreeMap::from([(spec.project.clone(), idle)]),
    }
}

/// One hour of one of the job's devices from the start of `now`'s hour,
/// with the dev rate card's list price.
fn sample_piece(spec: &JobSpec, now: UnixMillis) -> PriceInput {
    const HOUR: u64 = 3_600_000;
    let gpu_model = spec
        .constraints
        .gpu_models
        .first()
        .cloned()
        .unwrap_or_else(|| "H100-80GB".into());
    let (share, mig_profile) = match &spec.resources.gpu {
        GpuRequest::Fraction { share, .. } => (*share, None),
        GpuRequest::Mig(p) => (p.share(), Some(p.clone())),
        GpuRequest::None | GpuRequest::Whole(_) => (Share::ONE, None),
    };
    let rate = crate::server::demo_rate_card().rate_for(&gpu_model, spec.preemptible);
    let gpu_time = crate::accounting::GpuTime::of(share, HOUR);
    let (list, undiscounted) = crate::accounting::pricing::list_prices(gpu_time, &rate);
    PriceInput {
        tenant: spec.tenant.clone(),
        project: spec.project.clone(),
        gpu_model,
        mig_profile,
        share,
        start: UnixMillis(now.0 / HOUR * HOUR),
        duration: Millis(HOUR),
        preemptible: spec.preemptible,
        tags: spec.tags.clone(),
        currency: rate.currency,
        list_price_minor: u64::try_from(list).unwrap_or(0),
        undiscounted_price_minor: u64::try_from(undiscounted).unwrap_or(0),
    }
}
