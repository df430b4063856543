//! Bindings generated from the WIT contract `allot:plugin@0.2.0`.
//!
//! One `generate!` per world. The admission world generates the shared
//! interfaces (`types`, `log`); the other worlds reuse them through `with`, so
//! a `JobSpec` is one Rust type whichever extension point it comes from.
//! `fraction` maps to the SDK's own [`Fraction`](crate::Fraction), which has
//! the same layout and adds value semantics.
//!
//! `pub_export_macro` makes each world's export macro usable from a plugin
//! crate; it emits the world's full type information there, so a plugin's
//! component has the exports of the one world it exports and no other.
//! Paths are spelled from `allot_plugin` (see `extern crate self` in
//! `lib.rs`) because the export macros expand in the plugin's crate.

/// The `admission` world, and the interfaces shared by every world.
pub mod admission {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "admission",
        additional_derives: [PartialEq, Eq],
        with: {
            "allot:plugin/types@0.2.0/fraction": allot_plugin::Fraction,
        },
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "allot_plugin::__private::admission",
        runtime_path: "allot_plugin::__private::rt",
    });
}

/// The `quota` world.
pub mod quota {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "quota",
        additional_derives: [PartialEq, Eq],
        with: {
            "allot:plugin/types@0.2.0": allot_plugin::__private::types,
            "allot:plugin/log@0.2.0": allot_plugin::__private::log,
        },
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "allot_plugin::__private::quota",
        runtime_path: "allot_plugin::__private::rt",
    });
}

/// The `pricing` world.
pub mod pricing {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "pricing",
        additional_derives: [PartialEq, Eq],
        with: {
            "allot:plugin/types@0.2.0": allot_plugin::__private::types,
            "allot:plugin/log@0.2.0": allot_plugin::__private::log,
        },
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "allot_plugin::__private::pricing",
        runtime_path: "allot_plugin::__private::rt",
    });
}
