//! A pricing plugin built for `allot:plugin@0.1.0` against its frozen WIT
//! directory, as a plugin in the field was built before 0.2.0: the host
//! must go on running it, unchanged, on its 0.1.0 bindings. It prices a
//! piece at its list price plus one minor unit, so a test sees that it ran.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "pricing",
});

struct ListPlusOne;

impl Guest for ListPlusOne {
    fn price(request: PricingRequest) -> Result<u64, String> {
        allot::plugin::log::log(
            allot::plugin::log::Level::Info,
            &format!("0.1.0 plugin pricing for {}", request.tenant),
        );
        request
            .list_price_minor
            .checked_add(1)
            .ok_or_else(|| "the list price is the largest price".to_string())
    }
}

export!(ListPlusOne);
