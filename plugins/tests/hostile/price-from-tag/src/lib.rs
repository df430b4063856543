//! Hostile: a pricing plugin that answers the price the lease's `price` tag
//! names, in minor units: `0` (a tenant making its own GPU time free),
//! `max` (`u64::MAX`), `undiscounted` (the request's undiscounted price),
//! or any number; `huge-error` answers an error of 10 MiB. Without the tag, the list price. The host must keep a tenant's
//! own plugin off the bill, and refuse answers outside its documented range
//! (the huge error before copying it).

use allot_plugin::{Pricing, PricingRequest};

pub struct PriceFromTag;

impl Pricing for PriceFromTag {
    fn price(request: PricingRequest) -> Result<u64, String> {
        let tag = request.tags.iter().find(|(k, _)| k == "price").map(|(_, v)| v.as_str());
        match tag {
            None => Ok(request.list_price_minor),
            Some("max") => Ok(u64::MAX),
            Some("undiscounted") => Ok(request.undiscounted_price_minor),
            Some("huge-error") => Err("x".repeat(10 << 20)),
            Some(n) => n.parse().map_err(|e| format!("price tag {n:?}: {e}")),
        }
    }
}

allot_plugin::export_pricing!(PriceFromTag);
