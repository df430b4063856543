//! Money: currencies, amounts in integer minor units, prices per GPU-hour.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII by construction")
    }

    /// Digits after the decimal point of the minor unit (2 for USD, 0 for JPY).
    pub fn minor_digits(&self) -> u32 {
        match self.as_str() {
            "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
            _ => 2,
        }
    }
}

impl Default for Currency {
    /// USD, the currency of a ledger without a rate card.
    fn default() -> Self {
        Currency::USD
    }
}

impl FromStr for Currency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let b = s.trim().as_bytes();
        if b.len() == 3 && b.iter().all(|c| c.is_ascii_uppercase()) {
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err(format!(
                "{} is not a currency code (three capital letters, e.g. USD)",
                crate::domain::validate::quote(s)
            ))
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in integer minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i128,
    pub currency: Currency,
}

impl Money {
    /// Parses a decimal amount in major units (`"5000.00"`) into minor units,
    /// exactly: more decimals than the currency has are refused.
    pub fn parse(s: &str, currency: Currency) -> Result<i128, String> {
        let r = Rate::parse(s, currency)?;
        if r.0 % 1_000_000 != 0 {
            return Err(format!(
                "invalid amount {}: {currency} has {} decimal places",
                crate::domain::validate::quote(s.trim()),
                currency.minor_digits()
            ));
        }
        Ok((r.0 / 1_000_000) as i128)
    }

    /// The amount as a plain decimal in major units: `12.34`, `-0.05`, `1200`.
    pub fn decimal(&self) -> String {
        let s = self.to_string();
        s.rsplit_once(' ').map(|(n, _)| n.to_string()).unwrap_or(s)
    }
}

impl fmt::Display for Money {
    /// `12.34 USD`, `1200 JPY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.currency.minor_digits();
        let sign = if self.minor < 0 { "-" } else { "" };
        let v = self.minor.unsigned_abs();
        if d == 0 {
            return write!(f, "{sign}{v} {}", self.currency);
        }
        let p = 10u128.pow(d);
        write!(
            f,
            "{sign}{}.{:0w$} {}",
            v / p,
            v % p,
            self.currency,
            w = d as usize
        )
    }
}

/// A price per GPU-hour in millionths of a minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rate(pub u128);

impl Rate {
    /// Parses a decimal price in major units (`"4.50"` USD) exactly.
    pub fn parse(s: &str, currency: Currency) -> Result<Rate, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "invalid price {}: use a decimal amount such as 4.50",
                crate::domain::validate::quote(s)
            )
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = currency.minor_digits() + 6;
        if int.is_empty()
            || !int.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
            || frac.len() > digits as usize
        {
            return Err(bad());
        }
        let int: u128 = int.parse().map_err(|_| bad())?;
        let frac_v: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        let scale = 10u128.pow(digits);
        let frac_scaled = frac_v * 10u128.pow(digits - frac.len() as u32);
        int.checked_mul(scale)
            .and_then(|v| v.checked_add(frac_scaled))
            .filter(|v| *v < 10u128.pow(30))
            .map(Rate)
            .ok_or_else(bad)
    }

    /// This rate less `pct` percent, rounded down to the millionth of a minor unit.
    pub fn discounted(self, pct: u8) -> Rate {
        Rate(self.0 * (100 - pct.min(100) as u128) / 100)
    }

    /// The price in major units with the minor digits plus six, for display:
    /// `4.50000000` for USD.
    pub fn display(self, currency: Currency) -> String {
        let digits = currency.minor_digits() + 6;
        let p = 10u128.pow(digits);
        format!("{}.{:0w$}", self.0 / p, self.0 % p, w = digits as usize)
    }
}

/// The rate a lease was priced at, fixed when it was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct LeaseRate {
    pub currency: Currency,
    pub per_gpu_hour: Rate,
    /// The rate before the rate card's preemptible discount, where there
    /// was one (`None`: the same as `per_gpu_hour`, or a lease reserved
    /// before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undiscounted: Option<Rate>,
}

impl LeaseRate {
    /// The rate before the preemptible discount.
    pub fn undiscounted(&self) -> Rate {
        self.undiscounted.unwrap_or(self.per_gpu_hour)
    }
}
