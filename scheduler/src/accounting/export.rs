//! `allot usage export`: one row per closed lease and UTC hour, as FinOps
//! FOCUS 1.2 CSV, plain CSV or JSON.
//!
//! Rows are the lease hour parts that every other total is made of, so an
//! export adds up to `allot usage`: exactly in micros (`cost_micros`,
//! `x_CostMicros`), and to the minor unit in its rounded costs, which are
//! rounded by running totals per currency in row order (each line is the
//! rounded running total after it less the one before): the lines of a
//! file add up to its rounded total, and a part worth less than half a
//! minor unit is carried, not lost. They come in a fixed
//! order (hour, then lease id) with a stable row id (`<lease>:<hour>`), and
//! only from closed leases, whose parts never change: re-exporting a period
//! in which every lease has closed gives the same bytes. A lease still open
//! shows up once it closes (adding rows to hours already exported).
//!
//! FOCUS: `ChargePeriodStart`/`End` are the UTC hour the part falls in
//! (inclusive start, exclusive end, to the second as FOCUS dates are);
//! `ConsumedQuantity`/`PricingQuantity` are the GPU-hours of the part in
//! `GPU-Hours`; the billing account is the tenant, the sub-account the
//! project; allot's own columns carry the `x_` prefix (job, lease, attempt,
//! node, GPU, MIG profile, share, the exact usage interval, end reason).

use std::fmt::Write as _;
use std::str::FromStr;

use super::{GpuTime, HourPart};
use crate::domain::money::Money;
use crate::domain::{Lease, UnixMillis};

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// FinOps FOCUS 1.2 CSV.
    Focus,
    /// One CSV row per lease-hour with allot's own column names.
    Csv,
    /// The same rows as a JSON array, one object per line.
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "focus" => Ok(Format::Focus),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown export format {other:?}: use focus, csv or json")),
        }
    }
}

/// FOCUS 1.2 columns, in the specification's (alphabetical) order, then ours.
pub const FOCUS_COLUMNS: &[&str] = &[
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
    "x_RowId",
    "x_JobId",
    "x_LeaseId",
    "x_Attempt",
    "x_Node",
    "x_GpuModel",
    "x_MigProfile",
    "x_GpuShare",
    "x_GpuUuid",
    "x_UsageStart",
    "x_UsageEnd",
    "x_DurationMs",
    "x_GpuTimeUnits",
    "x_IdleGpuHours",
    "x_EndReason",
    "x_CostMicros",
    "x_PricedBy",
    "x_ShowbackBy",
    "x_ShowbackCostMicros",
];

/// The plain CSV (and JSON) columns.
pub const PLAIN_COLUMNS: &[&str] = &[
    "row_id",
    "hour",
    "tenant",
    "project",
    "job_id",
    "lease_id",
    "attempt",
    "node",
    "gpu_model",
    "mig_profile",
    "gpu_share",
    "gpu_uuid",
    "usage_start",
    "usage_end",
    "duration_ms",
    "gpu_hours",
    "gpu_time_units",
    "idle_gpu_hours",
    "currency",
    "rate_per_gpu_hour",
    "cost",
    "cost_minor",
    "cost_micros",
    "end_reason",
    "tags",
    "priced_by",
    "showback_by",
    "showback_cost_micros",
];

/// Decimal places of GPU-hours in an export (MIG sevenths do not end).
const HOUR_PLACES: u32 = 9;

/// Who the bill is from, for FOCUS's provider columns.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub name: String,
}

impl Default for Issuer {
    fn default() -> Self {
        Issuer { name: "allot".into() }
    }
}

/// One lease-hour, with everything a row needs.
pub struct Row<'a> {
    pub lease: &'a Lease,
    pub part: HourPart,
}

impl Row<'_> {
    pub fn id(&self) -> String {
        format!("{}:{}", self.lease.id, self.part.hour.to_rfc3339_secs())
    }

    fn money(&self, minor: i128) -> Money {
        Money {
            minor,
            currency: self.lease.rate.map(|r| r.currency).unwrap_or_default(),
        }
    }

    /// The exact cost of the part, in micros.
    pub fn cost_micros(&self) -> i128 {
        super::part_cost(self.lease, &self.part)
    }

    /// The operator's pricing plugin that priced the part; empty for the
    /// rate card.
    fn priced_by(&self) -> String {
        match &self.lease.plugin_prices {
            Some(p) if p.by_hour.contains_key(&self.part.hour.0) => p.plugin.clone(),
            _ => String::new(),
        }
    }

    /// The tenant's own pricing plugin, when it priced the part (showback).
    fn showback_by(&self) -> String {
        match &self.lease.plugin_prices {
            Some(p) if p.showback_by_hour.contains_key(&self.part.hour.0) => p.showback_plugin.clone(),
            _ => String::new(),
        }
    }

    /// The part's showback cost in micros; empty without one.
    fn showback_micros(&self) -> String {
        super::part_showback(self.lease, &self.part)
            .map(|m| m.to_string())
            .unwrap_or_default()
    }

    pub fn currency(&self) -> crate::domain::money::Currency {
        self.lease.rate.map(|r| r.currency).unwrap_or_default()
    }

    fn rate(&self) -> String {
        let r = self.lease.rate.unwrap_or_default();
        r.per_gpu_hour.display(r.currency)
    }

    fn tags_json(&self) -> String {
        serde_json::to_string(&self.lease.tags).expect("tags serialize")
    }

    fn mig(&self) -> String {
        self.lease
            .device
            .mig_profile
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    fn gpu_hours(&self) -> String {
        self.part.gpu_time.hours_decimal(HOUR_PLACES)
    }

    /// Idle GPU-hours of the part; empty when the GPU gave no readings.
    fn idle_gpu_hours(&self) -> String {
        if self.lease.idle.is_none() {
            return String::new();
        }
        super::usage::Tally::of_part(self.lease, &self.part)
            .idle
            .hours_decimal(HOUR_PLACES)
    }

    /// The row's fields; `minor` is its cost rounded (by the writer).
    fn focus(&self, issuer: &Issuer, minor: i128) -> Vec<String> {
        let l = self.lease;
        let money = self.money(minor);
        let cost = money.decimal();
        let currency = money.currency.to_string();
        let hour = self.part.hour;
        let mig = self.mig();
        let (resource_type, sku) = match (&l.device.mig_profile, l.device.share) {
            (Some(p), _) => ("MIG Slice", format!("{}:{p}", l.device.gpu_model)),
            (None, s) if s == crate::domain::Share::ONE => ("GPU", l.device.gpu_model.clone()),
            (None, _) => ("GPU Share", format!("{}:share", l.device.gpu_model)),
        };
        let what = match &l.device.mig_profile {
            Some(p) => format!("MIG {p} slice of {}", l.device.gpu_model),
            None => format!("{} of {}", l.device.share, l.device.gpu_model),
        };
        let rate = self.rate();
        let gpu_hours = self.gpu_hours();
        vec![
            String::new(),                                         // AvailabilityZone
            cost.clone(),                                          // BilledCost
            l.tenant.to_string(),                                  // BillingAccountId
            l.tenant.to_string(),                                  // BillingAccountName
            "Tenant".into(),                                       // BillingAccountType
            currency.clone(),                                      // BillingCurrency
            hour.next_month_start().to_rfc3339_secs(),             // BillingPeriodEnd
            hour.month_start().to_rfc3339_secs(),                  // BillingPeriodStart
            String::new(),                                         // CapacityReservationId
            String::new(),                                         // CapacityReservationStatus
            "Usage".into(),                                        // ChargeCategory
            String::new(),                                         // ChargeClass (not a correction)
            format!("{what} for job {} on {}", l.job_id, l.node),  // ChargeDescription
            "Usage-Based".into(),                                  // ChargeFrequency
            UnixMillis(hour.0 + super::HOUR_MS).to_rfc3339_secs(), // ChargePeriodEnd
            hour.to_rfc3339_secs(),                                // ChargePeriodStart
            String::new(),                                         // CommitmentDiscountCategory
            String::new(),                                         // CommitmentDiscountId
            String::new(),                                         // CommitmentDiscountName
            String::new(),                                         // CommitmentDiscountQuantity
            String::new(),                                         // CommitmentDiscountStatus
            String::new(),                                         // CommitmentDiscountType
            String::new(),                                         // CommitmentDiscountUnit
            gpu_hours.clone(),                                     // ConsumedQuantity
            "GPU-Hours".into(),                                    // ConsumedUnit
            cost.clone(),                                          // ContractedCost
            rate.clone(),                                          // ContractedUnitPrice
            cost.clone(),                                          // EffectiveCost
            String::new(),                                         // InvoiceId
            issuer.name.clone(),                                   // InvoiceIssuerName
            cost,                                                  // ListCost
            rate,                                                  // ListUnitPrice
            "Standard".into(),                                     // PricingCategory
            String::new(),                                         // PricingCurrency (= billing)
            String::new(),                                         // PricingCurrencyContractedUnitPrice
            String::new(),                                         // PricingCurrencyEffectiveCost
            String::new(),                                         // PricingCurrencyListUnitPrice
            gpu_hours,                                             // PricingQuantity
            "GPU-Hours".into(),                                    // PricingUnit
            issuer.name.clone(),                                   // ProviderName
            issuer.name.clone(),                                   // PublisherName
            String::new(),                                         // RegionId
            String::new(),                                         // RegionName
            l.device.device_uuid.clone(),                          // ResourceId
            format!("{}/gpu{}", l.node, l.device.gpu_index),       // ResourceName
            resource_type.into(),                                  // ResourceType
            "Compute".into(),                                      // ServiceCategory
            format!("{} GPU", issuer.name),                        // ServiceName
            "Other (Compute)".into(),                              // ServiceSubcategory
            sku.clone(),                                           // SkuId
            "GPU-Hours".into(),                                    // SkuMeter
            String::new(),                                         // SkuPriceDetails
            sku,                                                   // SkuPriceId
            format!("{}/{}", l.tenant, l.project),                 // SubAccountId
            l.project.to_string(),                                 // SubAccountName
            "Project".into(),                                      // SubAccountType
            self.tags_json(),                                      // Tags
            self.id(),
            l.job_id.to_string(),
            l.id.to_string(),
            l.attempt.to_string(),
            l.node.to_string(),
            l.device.gpu_model.clone(),
            mig,
            l.device.share.to_string(),
            l.device.gpu_uuid.clone(),
            self.part.start.to_string(),
            self.part.end.to_string(),
            (self.part.end.0 - self.part.start.0).to_string(),
            self.part.gpu_time.0.to_string(),
            self.idle_gpu_hours(),
            l.end_reason.map(|r| r.to_string()).unwrap_or_default(),
            self.cost_micros().to_string(),
            self.priced_by(),
            self.showback_by(),
            self.showback_micros(),
        ]
    }

    fn plain(&self, minor: i128) -> Vec<String> {
        let l = self.lease;
        let money = self.money(minor);
        vec![
            self.id(),
            self.part.hour.to_rfc3339_secs(),
            l.tenant.to_string(),
            l.project.to_string(),
            l.job_id.to_string(),
            l.id.to_string(),
            l.attempt.to_string(),
            l.node.to_string(),
            l.device.gpu_model.clone(),
            self.mig(),
            l.device.share.to_string(),
            l.device.gpu_uuid.clone(),
            self.part.start.to_string(),
            self.part.end.to_string(),
            (self.part.end.0 - self.part.start.0).to_string(),
            self.gpu_hours(),
            self.part.gpu_time.0.to_string(),
            self.idle_gpu_hours(),
            money.currency.to_string(),
            self.rate(),
            money.decimal(),
            money.minor.to_string(),
            self.cost_micros().to_string(),
            l.end_reason.map(|r| r.to_string()).unwrap_or_default(),
            self.tags_json(),
            self.priced_by(),
            self.showback_by(),
            self.showback_micros(),
        ]
    }
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn csv_line(out: &mut String, fields: &[impl AsRef<str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f.as_ref());
    }
    out.push_str("\r\n");
}

/// Writes an export piece by piece: `header`, any number of `row`s, `footer`.
pub struct Writer {
    format: Format,
    issuer: Issuer,
    rows: u64,
    /// Running-total rounding of costs, per currency.
    rounders: std::collections::HashMap<crate::domain::money::Currency, super::Rounder>,
}

impl Writer {
    pub fn new(format: Format, issuer: Issuer) -> Self {
        Writer {
            format,
            issuer,
            rows: 0,
            rounders: std::collections::HashMap::new(),
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn header(&self, out: &mut String) {
        match self.format {
            Format::Focus => csv_line(out, FOCUS_COLUMNS),
            Format::Csv => csv_line(out, PLAIN_COLUMNS),
            Format::Json => out.push('['),
        }
    }

    pub fn row(&mut self, out: &mut String, row: &Row<'_>) {
        let minor = self
            .rounders
            .entry(row.currency())
            .or_default()
            .line(row.cost_micros());
        match self.format {
            Format::Focus => csv_line(out, &row.focus(&self.issuer, minor)),
            Format::Csv => csv_line(out, &row.plain(minor)),
            Format::Json => {
                if self.rows > 0 {
                    out.push(',');
                }
                out.push('\n');
                let mut obj = serde_json::Map::new();
                for (k, v) in PLAIN_COLUMNS.iter().zip(row.plain(minor)) {
                    let v = match *k {
                        "tags" => serde_json::from_str(&v).expect("tags are JSON"),
                        "attempt" | "duration_ms" | "cost_minor" => {
                            serde_json::Value::Number(v.parse::<i64>().map(Into::into).unwrap_or(0.into()))
                        }
                        _ if v.is_empty() => serde_json::Value::Null,
                        _ => serde_json::Value::String(v),
                    };
                    obj.insert((*k).to_string(), v);
                }
                let _ = write!(out, "{}", serde_json::Value::Object(obj));
            }
        }
        self.rows += 1;
    }

    pub fn footer(&self, out: &mut String) {
        if self.format == Format::Json {
            out.push_str(if self.rows > 0 { "\n]\n" } else { "]\n" });
        }
    }
}

/// The parts of closed leases inside `[from, to)`, in export order: by hour,
/// then lease id. `leases` are the closed leases overlapping the window.
pub fn rows(leases: &[Lease], from: UnixMillis, to: UnixMillis) -> Vec<Row<'_>> {
    let mut rows: Vec<Row<'_>> = leases
        .iter()
        // Final leases only: closed, and priced if a plugin prices them.
        .filter(|l| l.state == crate::domain::LeaseState::Closed)
        .filter(|l| l.plugin_prices.as_ref().is_none_or(|p| !p.pending))
        .flat_map(|l| {
            let end = l.ended_at.unwrap_or(l.reserved_at);
            super::hour_parts(l, end, from, to)
                .into_iter()
                .map(move |part| Row { lease: l, part })
        })
        .collect();
    rows.sort_by_key(|r| (r.part.hour, r.lease.id));
    rows
}

/// GPU-time of the rows, for totals.
pub fn total(rows: &[Row<'_>]) -> GpuTime {
    rows.iter().fold(GpuTime::ZERO, |a, r| a + r.part.gpu_time)
}
