//! Answers lifted under a byte budget: a string or list is refused by its
//! length, before the host allocates anything for it.
//!
//! `bindgen!` lifts an answer into owned `String`s and `Vec`s at once, and
//! only then could the host look at its size: an admission answer of five
//! million empty arguments cost the server 831 MB and a second of copying
//! before the size cap refused it. [`BStr`] and [`BList`] are the same WIT
//! types (`string`, `list<T>`), lifted the same way, except that each first
//! charges its length to the call's budget ([`lifted_within`]) from the
//! pointer and length the guest returned, and fails the lift past it.
//!
//! What is charged is what [`max_result_bytes`](crate::policy::config) has
//! always counted: a string its bytes, a list 8 bytes per item (the guest's
//! pointer and length of a string), plus what its items charge.
//!
//! These implement wasmtime's `ComponentType` and `Lift` by hand, through
//! the hidden items its derive macros use (`wasmtime::component::__internal`),
//! delegating every part of the ABI to `String` and `Vec<T>`: only the
//! charge is ours. They are checked against the WIT when a plugin is
//! instantiated (`get_typed_func` type-checks them), and by every plugin
//! test. The workspace pins wasmtime to one major version for this.

use std::cell::Cell;

use wasmtime::ValRaw;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};

/// What one list item is charged, besides what its own strings charge.
pub const LIST_ITEM_BYTES: usize = 8;

/// The latin1+utf16 encoding's tag in a string's length.
const UTF16_TAG: u32 = 1 << 31;

#[derive(Clone, Copy)]
struct Budget {
    limit: usize,
    charged: usize,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Runs `f` (a typed call) with a budget of `limit` bytes for what its
/// answer's strings and lists may hold. Returns its result, and the bytes
/// charged when the budget was exceeded (the lift then failed at the first
/// string or list past it).
pub fn lifted_within<R>(limit: usize, f: impl FnOnce() -> R) -> (R, Option<usize>) {
    struct Reset(Option<Budget>);
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let _reset = Reset(BUDGET.with(|b| b.replace(Some(Budget { limit, charged: 0 }))));
    let r = f();
    let over = BUDGET
        .with(Cell::get)
        .filter(|b| b.charged > b.limit)
        .map(|b| b.charged);
    (r, over)
}

/// Charges `bytes` to the current budget; an error past it (or outside
/// [`lifted_within`]: these types are only lifted under a budget).
fn charge(bytes: usize) -> wasmtime::Result<()> {
    BUDGET.with(|b| {
        let Some(mut budget) = b.get() else {
            return Err(wasmtime::format_err!(
                "an answer was lifted without a size budget"
            ));
        };
        budget.charged = budget.charged.saturating_add(bytes);
        b.set(Some(budget));
        if budget.charged > budget.limit {
            return Err(wasmtime::format_err!(
                "the answer holds more than {} bytes of strings and lists",
                budget.limit
            ));
        }
        Ok(())
    })
}

/// The length half of a (pointer, length) pair, as wasmtime reads it
/// (32-bit memories only: the engine refuses memory64).
fn flat_len(src: &[ValRaw; 2]) -> usize {
    src[1].get_u32() as usize
}

fn memory_len(bytes: &[u8]) -> wasmtime::Result<usize> {
    let len: [u8; 4] = bytes
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| wasmtime::format_err!("a string or list is cut short"))?;
    Ok(u32::from_le_bytes(len) as usize)
}

/// A WIT `string`, refused past the budget before it is copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BStr(pub String);

// SAFETY: every item is `String`'s, whose ABI this type shares.
unsafe impl ComponentType for BStr {
    type Lower = <String as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <String as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <String as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifts exactly as `String` does, after a charge.
unsafe impl Lift for BStr {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        charge(string_bytes(flat_len(src)))?;
        String::linear_lift_from_flat(cx, ty, src).map(BStr)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        charge(string_bytes(memory_len(bytes)?))?;
        String::linear_lift_from_memory(cx, ty, bytes).map(BStr)
    }
}

/// A string's length field in bytes: code units for UTF-8; for the
/// latin1+utf16 encoding, without its tag, at two bytes a unit.
fn string_bytes(len: usize) -> usize {
    let len = len as u32;
    if len & UTF16_TAG != 0 {
        ((len & !UTF16_TAG) as usize).saturating_mul(2)
    } else {
        len as usize
    }
}

/// A WIT `list<T>`, refused past the budget by its length before any item
/// is copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BList<T>(pub Vec<T>);

// SAFETY: every item is `Vec<T>`'s, whose ABI this type shares.
unsafe impl<T: ComponentType> ComponentType for BList<T> {
    type Lower = <Vec<T> as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <Vec<T> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<T> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lifts exactly as `Vec<T>` does, after a charge.
unsafe impl<T: Lift> Lift for BList<T> {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        charge(flat_len(src).saturating_mul(LIST_ITEM_BYTES))?;
        Vec::<T>::linear_lift_from_flat(cx, ty, src).map(BList)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        charge(memory_len(bytes)?.saturating_mul(LIST_ITEM_BYTES))?;
        Vec::<T>::linear_lift_from_memory(cx, ty, bytes).map(BList)
    }
}

impl From<BStr> for String {
    fn from(s: BStr) -> String {
        s.0
    }
}

impl BList<BStr> {
    pub fn strings(self) -> Vec<String> {
        self.0.into_iter().map(String::from).collect()
    }
}

impl BList<(BStr, BStr)> {
    pub fn pairs(self) -> Vec<(String, String)> {
        self.0.into_iter().map(|(k, v)| (k.0, v.0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_counts_what_it_is_charged_and_refuses_past_it() {
        let ((), over) = lifted_within(100, || {
            charge(60).unwrap();
            charge(40).unwrap();
        });
        assert_eq!(over, None);
        let (r, over) = lifted_within(100, || {
            charge(60)?;
            charge(41)?;
            charge(1_000_000)
        });
        assert!(r.unwrap_err().to_string().contains("more than 100 bytes"));
        assert_eq!(over, Some(101));
        // Outside a budget nothing is lifted.
        assert!(charge(0).is_err());
    }

    #[test]
    fn a_tagged_utf16_length_counts_two_bytes_a_unit() {
        assert_eq!(string_bytes(5), 5);
        assert_eq!(string_bytes(UTF16_TAG as usize | 5), 10);
    }
}
