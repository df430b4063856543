//! `allot.v1.UsageService`: usage, leases, and the ledger check.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::{lease_pb, parse_job_id};
use super::error::{ApiError, ApiResult};
use super::{Api, caller, page_size, tenant_scope};
use std::ops::Not;

use crate::accounting::budget::{Budget, Standing, parse_gpu_hours};
use crate::accounting::export::{self, Format, Issuer, Writer};
use crate::accounting::pricing::{Currency, Money};
use crate::accounting::usage::{Dimension, UsageQuery, UsageRow};
use crate::accounting::{DAY_MS, GpuTime, HOUR_MS, MAX_WINDOW_MS, Rounder, held};
use crate::domain::{Lease, LeaseId, LeaseState, TenantName, UnixMillis};

fn time(field: &str, v: i64) -> ApiResult<Option<UnixMillis>> {
    match v {
        0 => Ok(None),
        v if v < 0 => Err(ApiError::invalid(field, format!("must not be negative, got {v}"))),
        v if v as u64 > UnixMillis::MAX.0 => Err(ApiError::invalid(
            field,
            format!(
                "must be before the year 10000 (at most {}), got {v}",
                UnixMillis::MAX.0
            ),
        )),
        v => Ok(Some(UnixMillis(v as u64))),
    }
}

/// A report's window `[from, to)`: `to` after `from`, and at most
/// `MAX_WINDOW_MS` long.
fn window(from: UnixMillis, to: UnixMillis) -> ApiResult<()> {
    if to <= from {
        return Err(ApiError::invalid("to_unix_ms", "must be after from_unix_ms"));
    }
    if to.0 - from.0 > MAX_WINDOW_MS {
        return Err(ApiError::invalid(
            "to_unix_ms",
            format!(
                "the window may span at most {} days; ask for a longer period in parts",
                MAX_WINDOW_MS / DAY_MS
            ),
        ));
    }
    Ok(())
}

/// Rows for the wire, their costs rounded by running totals per currency
/// (in the order given) so that they add up to their rounded total.
fn rows_pb(rows: &[UsageRow]) -> Vec<pb::UsageRow> {
    let mut rounders: std::collections::HashMap<Currency, Rounder> = std::collections::HashMap::new();
    rows.iter()
        .map(|r| row_pb(r, rounders.entry(r.currency).or_default().line(r.cost_micros)))
        .collect()
}

fn row_pb(r: &UsageRow, minor: i128) -> pb::UsageRow {
    pb::UsageRow {
        keys: r.keys.clone(),
        currency: r.currency.to_string(),
        gpu_time_units: r.gpu_time.0.to_string(),
        gpu_hours: r.gpu_time.to_string(),
        cost_minor: i64::try_from(minor).unwrap_or(if minor < 0 { i64::MIN } else { i64::MAX }),
        cost: Money {
            minor,
            currency: r.currency,
        }
        .to_string(),
        cost_micros: r.cost_micros.to_string(),
        leases: r.leases,
        observed_gpu_hours: r.observed.to_string(),
        idle_gpu_hours: r.idle.to_string(),
        idle_gpu_time_units: r.idle.0.to_string(),
    }
}

type ExportStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

/// The most `group_by` entries a usage report takes (every dimension once,
/// and a few tags).
pub const MAX_GROUP_BY: usize = 16;

/// Bytes per export chunk (well under gRPC's default 4 MiB message limit).
const EXPORT_CHUNK: usize = 256 * 1024;

fn whole_hour(field: &str, t: UnixMillis) -> ApiResult<UnixMillis> {
    if t.0.is_multiple_of(HOUR_MS) {
        Ok(t)
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be on a whole UTC hour (exports are per hour), got {t}"),
        ))
    }
}

/// A tenant's standing against its budget (or, without one, its usage).
fn standing(
    ledger: &crate::ledger::Ledger,
    tenant: &TenantName,
    budget: Option<&Budget>,
    currency: Currency,
    now: UnixMillis,
) -> ApiResult<pb::BudgetStatus> {
    let month = ledger.usage(&UsageQuery::month_to_date(tenant, now, vec![]), now)?;
    let day_ago = UnixMillis(now.0.saturating_sub(24 * HOUR_MS));
    let day = ledger.usage(&UsageQuery::since(tenant, day_ago, now, vec![]), now)?;
    let s = Standing::assess(budget, currency, &month, &day, now);
    let money = |minor: i128| {
        Money {
            minor,
            currency: s.currency,
        }
        .to_string()
    };
    let summary = match (&s.exhausted, budget) {
        (Some(why), _) => format!("exhausted: {why}; pending jobs are held"),
        (None, Some(b)) => {
            let mut parts = Vec::new();
            if let Some(l) = b.spend_limit_minor {
                parts.push(format!("{} of {}", money(s.spent_minor), money(l)));
            }
            if let Some(l) = b.gpu_time_limit {
                parts.push(format!("{} of {l} GPU-h", s.gpu_time));
            }
            parts.join(", ")
        }
        (None, None) => "no budget".to_string(),
    };
    Ok(pb::BudgetStatus {
        tenant: tenant.to_string(),
        has_budget: budget.is_some(),
        currency: s.currency.to_string(),
        spend_limit_minor: budget.and_then(|b| b.spend_limit_minor).map(|m| m as i64),
        gpu_time_limit_units: budget
            .and_then(|b| b.gpu_time_limit)
            .map(|g| g.0.to_string())
            .unwrap_or_default(),
        gpu_hours_limit: budget
            .and_then(|b| b.gpu_time_limit)
            .map(|g| g.to_string())
            .unwrap_or_default(),
        period_start_unix_ms: s.period_start.0 as i64,
        period_end_unix_ms: s.period_end.0 as i64,
        spent_minor: s.spent_minor as i64,
        spent: money(s.spent_minor),
        gpu_time_units: s.gpu_time.0.to_string(),
        gpu_hours: s.gpu_time.to_string(),
        burn_minor_per_day: s.burn_minor as i64,
        burn_gpu_hours_per_day: s.burn_gpu_time.to_string(),
        projected_minor: s.projected_minor as i64,
        projected_gpu_hours: s.projected_gpu_time.to_string(),
        exhausted: s.exhausted.is_some(),
        summary,
    })
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for Api {
    type ExportUsageStream = ExportStream;

    #[instrument(skip(self, request))]
    async fn export_usage(
        &self,
        request: Request<pb::ExportUsageRequest>,
    ) -> Result<Response<Self::ExportUsageStream>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let tenant = tenant_scope(&caller, &req.tenant, "usage")?;
        let format = match pb::ExportFormat::try_from(req.format) {
            Ok(pb::ExportFormat::Focus) => Format::Focus,
            Ok(pb::ExportFormat::Csv) => Format::Csv,
            Ok(pb::ExportFormat::Json) => Format::Json,
            _ => return Err(ApiError::invalid("format", "use FOCUS, CSV or JSON").into()),
        };
        let now = self.clock.now();
        let from = time("from_unix_ms", req.from_unix_ms)?
            .ok_or_else(|| ApiError::invalid("from_unix_ms", "is required"))?;
        let from = whole_hour("from_unix_ms", from)?;
        let to = match time("to_unix_ms", req.to_unix_ms)? {
            Some(t) => whole_hour("to_unix_ms", t)?,
            None => UnixMillis(now.0 - now.0 % HOUR_MS + HOUR_MS),
        };
        window(from, to)?;
        let ledger = self.engine.ledger().clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ExportChunk, Status>>(4);
        // Off the runtime, from one hour with leases to the next (never
        // through empty hours), the leases of one hour at a time in lease-id
        // order, so memory stays small whatever the window. It stops as soon
        // as the client has gone (cancelled, or past its deadline: the
        // response stream is dropped and the channel closes).
        tokio::task::spawn_blocking(move || {
            let mut w = Writer::new(format, Issuer::default());
            let mut buf = String::new();
            w.header(&mut buf);
            let send = |buf: &mut String, rows: u64| {
                let data = std::mem::take(buf).into_bytes();
                tx.blocking_send(Ok(pb::ExportChunk { data, rows })).is_ok()
            };
            let fail = |e: crate::ledger::LedgerError| {
                let _ = tx.blocking_send(Err(ApiError::from(e).into()));
            };
            let mut hour = from;
            while hour < to {
                if tx.is_closed() {
                    return; // the client went away
                }
                hour = match ledger.next_hour_with_leases(hour, to) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return fail(e),
                };
                let leases = match ledger.closed_leases_in_hours(hour, hour) {
                    Ok(l) => l,
                    Err(e) => return fail(e),
                };
                let mine: Vec<Lease> = leases
                    .into_iter()
                    .filter(|l| tenant.as_ref().is_none_or(|t| &l.tenant == t))
                    .collect();
                for row in export::rows(&mine, hour, UnixMillis(hour.0 + HOUR_MS)) {
                    w.row(&mut buf, &row);
                    if buf.len() >= EXPORT_CHUNK && !send(&mut buf, w.rows()) {
                        return; // the client went away
                    }
                }
                hour = UnixMillis(hour.0 + HOUR_MS);
            }
            w.footer(&mut buf);
            send(&mut buf, w.rows());
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[instrument(skip(self, request))]
    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::BudgetStatus>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "setting a budget")?;
        let req = request.get_ref();
        let tenant: TenantName = req
            .tenant
            .trim()
            .parse()
            .map_err(|e| ApiError::invalid("tenant", e))?;
        if self.auth.tenant_exists(&tenant).map_err(ApiError::from)?.not() {
            return Err(ApiError::NotFound(format!("tenant {tenant} not found")).into());
        }
        let currency = self.engine.rate_card().currency;
        for (field, v) in [
            ("spend_limit", &req.spend_limit),
            ("gpu_hours_limit", &req.gpu_hours_limit),
        ] {
            if v.trim() != v.as_str() {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "{} has leading or trailing whitespace",
                        crate::domain::validate::quote(v)
                    ),
                )
                .into());
            }
        }
        let spend = match req.spend_limit.as_str() {
            "" => None,
            s => {
                let minor = Money::parse(s, currency).map_err(|e| ApiError::invalid("spend_limit", e))?;
                if minor <= 0 {
                    return Err(ApiError::invalid("spend_limit", "must be greater than 0").into());
                }
                Some(minor)
            }
        };
        let gpu = match req.gpu_hours_limit.as_str() {
            "" => None,
            s => {
                let g = parse_gpu_hours(s).map_err(|e| ApiError::invalid("gpu_hours_limit", e))?;
                if g == GpuTime::ZERO {
                    return Err(ApiError::invalid("gpu_hours_limit", "must be greater than 0").into());
                }
                Some(g)
            }
        };
        let budget = (spend.is_some() || gpu.is_some()).then(|| Budget {
            tenant: tenant.clone(),
            currency,
            spend_limit_minor: spend,
            gpu_time_limit: gpu,
        });
        self.engine
            .set_budget(tenant.clone(), budget.clone())
            .await
            .map_err(ApiError::from)?;
        let now = self.clock.now();
        let status = self
            .read(move |ledger| standing(ledger, &tenant, budget.as_ref(), currency, now))
            .await?;
        Ok(Response::new(status))
    }

    #[instrument(skip(self, request))]
    async fn get_budgets(
        &self,
        request: Request<pb::GetBudgetsRequest>,
    ) -> Result<Response<pb::GetBudgetsResponse>, Status> {
        let caller = caller(&request)?;
        let tenant = tenant_scope(&caller, &request.get_ref().tenant, "budgets")?;
        let currency = self.engine.rate_card().currency;
        let now = self.clock.now();
        let out = self
            .read(move |ledger| {
                let budgets = ledger.budgets().map_err(ApiError::from)?;
                let mut out = Vec::new();
                match tenant {
                    // One tenant: its standing, budget or not.
                    Some(t) => {
                        let b = budgets.iter().find(|b| b.tenant == t);
                        out.push(standing(ledger, &t, b, currency, now)?);
                    }
                    None => {
                        for b in &budgets {
                            out.push(standing(ledger, &b.tenant, Some(b), currency, now)?);
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(pb::GetBudgetsResponse { budgets: out }))
    }

    #[instrument(skip(self, request))]
    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let tenant = tenant_scope(&caller, &req.tenant, "usage")?;
        let now = self.clock.now();
        let from = time("from_unix_ms", req.from_unix_ms)?
            .ok_or_else(|| ApiError::invalid("from_unix_ms", "is required"))?;
        let to = time("to_unix_ms", req.to_unix_ms)?.unwrap_or(now);
        window(from, to)?;
        if req.group_by.len() > MAX_GROUP_BY {
            return Err(ApiError::invalid(
                "group_by",
                format!("at most {MAX_GROUP_BY} groupings, got {}", req.group_by.len()),
            )
            .into());
        }
        let mut group_by: Vec<Dimension> = Vec::new();
        for g in &req.group_by {
            let d = g
                .parse::<Dimension>()
                .map_err(|e| ApiError::invalid("group_by", e))?;
            if group_by.contains(&d) {
                return Err(ApiError::invalid("group_by", format!("{d} is given twice")).into());
            }
            group_by.push(d);
        }
        let q = UsageQuery {
            from,
            to,
            group_by: group_by.clone(),
            tenant,
        };
        let (rows, totals) = self
            .read(move |ledger| {
                let rows = ledger.usage(&q, now)?;
                let totals = ledger.usage(
                    &UsageQuery {
                        group_by: vec![],
                        ..q
                    },
                    now,
                )?;
                Ok((rows, totals))
            })
            .await?;
        Ok(Response::new(pb::GetUsageResponse {
            group_by: group_by.iter().map(|d| d.to_string()).collect(),
            rows: rows_pb(&rows),
            totals: rows_pb(&totals),
            from_unix_ms: from.0 as i64,
            to_unix_ms: to.0 as i64,
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let tenant = tenant_scope(&caller, &req.tenant, "leases")?;
        let states = req
            .states
            .iter()
            .map(|s| match pb::LeaseState::try_from(*s) {
                Ok(pb::LeaseState::Reserved) => Ok(LeaseState::Reserved),
                Ok(pb::LeaseState::Active) => Ok(LeaseState::Active),
                Ok(pb::LeaseState::Closed) => Ok(LeaseState::Closed),
                _ => Err(ApiError::invalid("states", format!("{s} is not a lease state"))),
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let job = match req.job_id.trim() {
            "" => None,
            j => Some(parse_job_id("job_id", j)?),
        };
        let from = time("from_unix_ms", req.from_unix_ms)?;
        let to = time("to_unix_ms", req.to_unix_ms)?;
        if let (Some(f), Some(t)) = (from, to)
            && t <= f
        {
            return Err(ApiError::invalid("to_unix_ms", "must be after from_unix_ms").into());
        }
        let limit = page_size(req.page_size);
        let after = match req.page_token.trim() {
            "" => None,
            t => Some(
                t.parse::<LeaseId>()
                    .map_err(|e| ApiError::invalid("page_token", e))?,
            ),
        };
        let now = self.clock.now();
        let (leases, next) = self
            .read(move |ledger| {
                Ok(ledger.leases_page(after, limit, |l| {
                    let (start, end) = held(l, now);
                    tenant.as_ref().is_none_or(|t| &l.tenant == t)
                        && (states.is_empty() || states.contains(&l.state))
                        && job.is_none_or(|j| l.job_id == j)
                        && from.is_none_or(|f| end > f || (start == end && start >= f))
                        && to.is_none_or(|t| start < t)
                })?)
            })
            .await?;
        let mut leases: Vec<pb::Lease> = leases.iter().map(|l| lease_pb(l, now)).collect();
        let mut next = next.map(|id| id.to_string());
        if super::jobs::cut_page(&mut leases) {
            next = leases.last().map(|l| l.id.clone());
        }
        Ok(Response::new(pb::ListLeasesResponse {
            leases,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn check_ledger(
        &self,
        request: Request<pb::CheckLedgerRequest>,
    ) -> Result<Response<pb::CheckLedgerResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "checking the ledger")?;
        let now = self.clock.now();
        let report = self.read(move |ledger| Ok(ledger.check(now)?)).await?;
        Ok(Response::new(report_pb(&report)))
    }
}

pub fn report_pb(r: &crate::accounting::check::CheckReport) -> pb::CheckLedgerResponse {
    pb::CheckLedgerResponse {
        clean: r.is_clean(),
        problems: r.problems.clone(),
        jobs: r.jobs as u64,
        leases: r.leases as u64,
        devices: r.devices as u64,
        gpu_hours: GpuTime::to_string(&r.gpu_time),
    }
}
