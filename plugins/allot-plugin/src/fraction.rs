//! Exact fractions: GPU shares and GPU counts.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// An exact non-negative fraction, `numerator / denominator`: a GPU share
/// (`1/4`, `1/7` for a `1g` MIG slice) or a number of GPUs (`5/2`).
///
/// This is the WIT record `fraction`. The host sends fractions in lowest
/// terms; [`Fraction::new`] and [`Fraction::checked_add`] return them so too.
/// Equality, ordering and hashing are by value (`2/8 == 1/4`) whatever the
/// terms, and [`Display`](fmt::Display) writes `1/4`, or `3` for a whole
/// number.
#[repr(C)] // The generated bindings lift and lower it field by field.
#[derive(Debug, Clone, Copy)]
pub struct Fraction {
    pub numerator: u64,
    pub denominator: u64,
}

const fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Fraction {
    /// Nothing: `0/1`.
    pub const ZERO: Fraction = Fraction::whole(0);
    /// One whole: `1/1`.
    pub const ONE: Fraction = Fraction::whole(1);

    /// `numerator / denominator` in lowest terms.
    ///
    /// # Panics
    ///
    /// If `denominator` is zero.
    pub const fn new(numerator: u64, denominator: u64) -> Fraction {
        assert!(denominator != 0, "a fraction's denominator must not be zero");
        let g = gcd(numerator as u128, denominator as u128) as u64;
        Fraction {
            numerator: numerator / g,
            denominator: denominator / g,
        }
    }

    /// The whole number `n`: `n/1`.
    pub const fn whole(n: u64) -> Fraction {
        Fraction {
            numerator: n,
            denominator: 1,
        }
    }

    /// Whether it is zero.
    pub const fn is_zero(self) -> bool {
        self.numerator == 0
    }

    /// `self + other` in lowest terms, or `None` if the result does not fit
    /// in 64-bit terms (or a denominator is zero).
    pub fn checked_add(self, other: Fraction) -> Option<Fraction> {
        let (a, b) = (self.wide(), other.wide());
        let numerator = a.0 * b.1 + b.0 * a.1;
        let denominator = a.1 * b.1;
        if denominator == 0 {
            return None;
        }
        let g = gcd(numerator, denominator);
        Some(Fraction {
            numerator: u64::try_from(numerator / g).ok()?,
            denominator: u64::try_from(denominator / g).ok()?,
        })
    }

    fn wide(self) -> (u128, u128) {
        (self.numerator.into(), self.denominator.into())
    }
}

impl PartialEq for Fraction {
    fn eq(&self, other: &Fraction) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Fraction {}

impl PartialOrd for Fraction {
    fn partial_cmp(&self, other: &Fraction) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Fraction {
    fn cmp(&self, other: &Fraction) -> Ordering {
        let (a, b) = (self.wide(), other.wide());
        (a.0 * b.1).cmp(&(b.0 * a.1))
    }
}

impl Hash for Fraction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (n, d) = self.wide();
        let g = gcd(n, d).max(1);
        (n / g, d / g).hash(state);
    }
}

impl fmt::Display for Fraction {
    /// `1/4`, `3/7`, or `2` for a whole number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reduced = if self.denominator == 0 {
            *self
        } else {
            Fraction::new(self.numerator, self.denominator)
        };
        if reduced.denominator == 1 {
            write!(f, "{}", reduced.numerator)
        } else {
            write!(f, "{}/{}", reduced.numerator, reduced.denominator)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_reduces_to_lowest_terms() {
        let f = Fraction::new(2, 8);
        assert_eq!((f.numerator, f.denominator), (1, 4));
        let zero = Fraction::new(0, 5);
        assert_eq!((zero.numerator, zero.denominator), (0, 1));
    }

    #[test]
    fn equality_and_order_are_by_value() {
        let unreduced = Fraction {
            numerator: 2,
            denominator: 8,
        };
        assert_eq!(unreduced, Fraction::new(1, 4));
        assert!(Fraction::new(1, 7) < Fraction::new(1, 4));
        assert!(Fraction::new(9, 2) > Fraction::whole(4));
    }

    #[test]
    fn sums_are_exact() {
        let third = Fraction::new(1, 3);
        let sum = third.checked_add(third).and_then(|s| s.checked_add(third));
        assert_eq!(sum, Some(Fraction::ONE));
        assert_eq!(
            Fraction::new(1, 7).checked_add(Fraction::new(1, 4)),
            Some(Fraction::new(11, 28))
        );
    }

    #[test]
    fn sums_that_overflow_are_none() {
        let big = Fraction::new(u64::MAX, 1);
        assert_eq!(big.checked_add(Fraction::ONE), None);
    }

    #[test]
    fn displays_like_the_scheduler() {
        assert_eq!(Fraction::new(2, 8).to_string(), "1/4");
        assert_eq!(Fraction::whole(3).to_string(), "3");
        assert_eq!(Fraction::ZERO.to_string(), "0");
    }
}
