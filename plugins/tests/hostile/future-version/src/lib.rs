//! Hostile: an admission plugin built for `allot:plugin@9.0.0`, a version
//! no server supports (a plugin from the future, or a forged one). It is a
//! well-formed component that exports `admit` and imports
//! `allot:plugin/types@9.0.0`; the host must refuse it at upload, naming
//! the versions it does support.

wit_bindgen::generate!({
    inline: "
        package allot:plugin@9.0.0;

        interface types {
            record fraction {
                numerator: u64,
                denominator: u64,
            }
        }

        world admission {
            use types.{fraction};

            export admit: func(share: fraction) -> bool;
        }
    ",
});

struct Future;

impl Guest for Future {
    fn admit(share: Fraction) -> bool {
        share.numerator <= share.denominator
    }
}

export!(Future);
