//! The pricing extension point: the price of one hour piece of a lease.

pub use crate::bindings::pricing::PricingRequest;

/// A pricing plugin: prices its tenant's GPU time, one piece of a lease
/// (within one UTC hour) at a time.
///
/// Export the implementing type with [`export_pricing!`](crate::export_pricing).
pub trait Pricing {
    /// The price of the piece in minor units of `request.currency`, or why it
    /// cannot be priced (the host then charges the list price and reports
    /// the error).
    ///
    /// The default charges the list price.
    fn price(request: PricingRequest) -> Result<u64, String> {
        Ok(request.list_price_minor)
    }
}

impl PricingRequest {
    /// The value of the job's tag `key`, if it has one.
    pub fn tag(&self, key: &str) -> Option<&str> {
        crate::pairs::get(&self.tags, key)
    }
}

/// Exports a type implementing [`Pricing`] as the plugin's `price`.
///
/// ```
/// struct ListPrice;
/// impl allot_plugin::Pricing for ListPrice {}
/// allot_plugin::export_pricing!(ListPrice);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_pricing {
    ($plugin:ty) => {
        const _: () = {
            struct Export;
            impl $crate::__private::pricing::Guest for Export {
                fn price(
                    request: $crate::PricingRequest,
                ) -> ::core::result::Result<u64, ::std::string::String> {
                    <$plugin as $crate::Pricing>::price(request)
                }
            }
            $crate::__private::pricing::export_world!(
                Export with_types_in $crate::__private::pricing
            );
        };
    };
}
