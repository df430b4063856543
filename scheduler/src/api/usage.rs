//! `allot.v1.UsageService`: usage, leases, and the ledger check.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::{lease_pb, parse_job_id};
use super::error::{ApiError, ApiResult};
use super::{Api, caller, page_size, tenant_scope};
use crate::accounting::check::check;
use crate::accounting::pricing::Money;
use crate::accounting::usage::{Dimension, UsageQuery, UsageRow, aggregate};
use crate::accounting::{GpuTime, held};
use crate::domain::{LeaseId, LeaseState, UnixMillis};

fn time(field: &str, v: i64) -> ApiResult<Option<UnixMillis>> {
    match v {
        0 => Ok(None),
        v if v < 0 => Err(ApiError::invalid(field, format!("must not be negative, got {v}"))),
        v => Ok(Some(UnixMillis(v as u64))),
    }
}

fn row_pb(r: &UsageRow) -> pb::UsageRow {
    pb::UsageRow {
        keys: r.keys.clone(),
        currency: r.currency.to_string(),
        gpu_time_units: r.gpu_time.0.to_string(),
        gpu_hours: r.gpu_time.to_string(),
        cost_minor: r.cost_minor as i64,
        cost: Money {
            minor: r.cost_minor,
            currency: r.currency,
        }
        .to_string(),
        leases: r.leases,
    }
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for Api {
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
        if to <= from {
            return Err(ApiError::invalid("to_unix_ms", "must be after from_unix_ms").into());
        }
        let group_by = req
            .group_by
            .iter()
            .map(|g| {
                g.parse::<Dimension>()
                    .map_err(|e| ApiError::invalid("group_by", e))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let leases = self.engine.ledger().all_leases().map_err(ApiError::from)?;
        let q = UsageQuery {
            from,
            to,
            group_by: group_by.clone(),
            tenant,
        };
        let rows = aggregate(&leases, &q, now);
        let totals = aggregate(
            &leases,
            &UsageQuery {
                group_by: vec![],
                ..q
            },
            now,
        );
        Ok(Response::new(pb::GetUsageResponse {
            group_by: group_by.iter().map(|d| d.to_string()).collect(),
            rows: rows.iter().map(row_pb).collect(),
            totals: totals.iter().map(row_pb).collect(),
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
            .engine
            .ledger()
            .leases_page(after, limit, |l| {
                let (start, end) = held(l, now);
                tenant.as_ref().is_none_or(|t| &l.tenant == t)
                    && (states.is_empty() || states.contains(&l.state))
                    && job.is_none_or(|j| l.job_id == j)
                    && from.is_none_or(|f| end > f || (start == end && start >= f))
                    && to.is_none_or(|t| start < t)
            })
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListLeasesResponse {
            leases: leases.iter().map(|l| lease_pb(l, now)).collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn check_ledger(
        &self,
        request: Request<pb::CheckLedgerRequest>,
    ) -> Result<Response<pb::CheckLedgerResponse>, Status> {
        let caller = caller(&request)?;
        Self::admin_only(&caller, "checking the ledger")?;
        let ledger = self.engine.ledger();
        let jobs = ledger.all_jobs().map_err(ApiError::from)?;
        let leases = ledger.all_leases().map_err(ApiError::from)?;
        let report = check(&jobs, &leases, self.clock.now());
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
