//! Units as newtypes over integers. Human forms (`"2h"`, `"40GiB"`, `"0.25"`)
//! are parsed at the edge only; inside, everything is integer arithmetic.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A duration in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub const ZERO: Millis = Millis(0);

    pub const fn from_secs(s: u64) -> Self {
        Millis(s * 1000)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

/// Error for human-form parsing at the edges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl FromStr for Millis {
    type Err = ParseError;

    /// Accepts `90s`, `30m`, `2h`, `1d`, `500ms`, combinations such as `1h30m`,
    /// and a bare number of seconds.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            ParseError(format!(
                "invalid duration {}: use e.g. 90s, 30m, 2h, 1h30m, 1d",
                crate::domain::validate::quote(s)
            ))
        };
        if s.is_empty() {
            return Err(bad());
        }
        if let Ok(secs) = s.parse::<u64>() {
            return secs.checked_mul(1000).map(Millis).ok_or_else(bad);
        }
        let mut total: u64 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let factor = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1000,
                "m" | "min" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        Ok(Millis(total))
    }
}

impl fmt::Display for Millis {
    /// Compact human form: `1h30m`, `45s`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 1000 {
            return write!(f, "{ms}ms");
        }
        let (d, rem) = (ms / 86_400_000, ms % 86_400_000);
        let (h, rem) = (rem / 3_600_000, rem % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, frac) = (rem / 1000, rem % 1000);
        let mut out = String::new();
        if d > 0 {
            out.push_str(&format!("{d}d"));
        }
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if s > 0 || frac > 0 {
            if frac > 0 && d == 0 && h == 0 {
                out.push_str(&format!("{s}.{frac:03}s"));
            } else {
                out.push_str(&format!("{s}s"));
            }
        }
        f.write_str(&out)
    }
}

/// An instant: UTC milliseconds since the Unix epoch, from the controller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The last millisecond of year 9999: no instant the API takes is later.
    pub const MAX: UnixMillis = UnixMillis(253_402_300_799_999);

    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(d.as_millis() as u64)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: UnixMillis) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }

    pub fn plus(self, d: Millis) -> UnixMillis {
        UnixMillis(self.0.saturating_add(d.0))
    }
}

impl fmt::Display for UnixMillis {
    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T15:04:05.123Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let ms = self.0 % 1000;
        let (days, sod) = (secs / 86_400, secs % 86_400);
        let (y, mo, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod % 3600) / 60,
            sod % 60
        )
    }
}

/// (year, month, day) to days since 1970-01-01; Howard Hinnant's algorithm.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl FromStr for UnixMillis {
    type Err = ParseError;

    /// `2026-11-01`, `2026-11-01T12:00Z`, `2026-11-01T12:00:30Z`,
    /// `2026-11-01T12:00:30.250Z` (UTC; a trailing `Z` is optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || {
            ParseError(format!(
                "invalid time {}: use e.g. 2026-11-01 or 2026-11-01T12:00:00Z (UTC)",
                crate::domain::validate::quote(t)
            ))
        };
        let t2 = t.strip_suffix('Z').unwrap_or(t);
        let (date, clock) = t2.split_once('T').unwrap_or((t2, ""));
        let mut dp = date.split('-');
        let (y, m, d) = (
            dp.next().ok_or_else(bad)?,
            dp.next().ok_or_else(bad)?,
            dp.next().ok_or_else(bad)?,
        );
        if dp.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let (y, m, d): (i64, u32, u32) = (
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            d.parse().map_err(|_| bad())?,
        );
        let days_in_month = match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            _ => return Err(bad()),
        };
        if y < 1970 || d == 0 || d > days_in_month {
            return Err(bad());
        }
        let mut ms: u64 = 0;
        if !clock.is_empty() {
            let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
            let parts: Vec<&str> = hms.split(':').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
                return Err(bad());
            }
            let h: u64 = parts[0].parse().map_err(|_| bad())?;
            let mi: u64 = parts[1].parse().map_err(|_| bad())?;
            let sec: u64 = if parts.len() == 3 {
                parts[2].parse().map_err(|_| bad())?
            } else {
                0
            };
            if h > 23 || mi > 59 || sec > 59 || frac.len() > 3 || !frac.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            let frac_ms: u64 = if frac.is_empty() {
                0
            } else {
                frac.parse::<u64>().map_err(|_| bad())? * 10u64.pow(3 - frac.len() as u32)
            };
            ms = ((h * 60 + mi) * 60 + sec) * 1000 + frac_ms;
        }
        let days = days_from_civil(y, m, d) as u64;
        Ok(UnixMillis(days * 86_400_000 + ms))
    }
}

impl UnixMillis {
    /// The first instant of this instant's UTC month.
    pub fn month_start(self) -> UnixMillis {
        let (y, m, _) = civil_from_days((self.0 / 86_400_000) as i64);
        UnixMillis(days_from_civil(y, m, 1) as u64 * 86_400_000)
    }

    /// The first instant of the next UTC month.
    pub fn next_month_start(self) -> UnixMillis {
        UnixMillis(self.month_start().0 + 32 * 86_400_000).month_start()
    }

    /// RFC 3339 in UTC to the second (`2026-11-23T15:00:00Z`): the form
    /// FOCUS date-times take.
    pub fn to_rfc3339_secs(self) -> String {
        let s = self.to_string();
        format!("{}Z", &s[..19])
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// CPU in milli-cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MilliCpu(pub u64);

impl FromStr for MilliCpu {
    type Err = ParseError;

    /// `4` (cores), `1.5` (cores) or `500m` (milli-cores).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            ParseError(format!(
                "invalid CPU amount {}: use e.g. 4, 1.5 or 500m",
                crate::domain::validate::quote(s)
            ))
        };
        if let Some(m) = s.strip_suffix('m') {
            return m.parse().map(MilliCpu).map_err(|_| bad());
        }
        let share = Share::from_str(s).map_err(|_| bad())?;
        // Cores with up to three decimals, exactly.
        let milli = share.numerator().checked_mul(1000).ok_or_else(bad)?;
        if milli % share.denominator() != 0 {
            return Err(bad());
        }
        Ok(MilliCpu(milli / share.denominator()))
    }
}

impl fmt::Display for MilliCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Memory in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MiB(pub u64);

impl FromStr for MiB {
    type Err = ParseError;

    /// `512MiB`, `40GiB`, `1TiB` (also `M`, `G`, `T`, `MB`, `GB`, read as binary
    /// units), or a bare number of MiB.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            ParseError(format!(
                "invalid memory size {}: use e.g. 512MiB, 40GiB",
                crate::domain::validate::quote(s)
            ))
        };
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = (&s[..split], s[split..].trim());
        let factor: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "mi" | "mib" | "m" | "mb" => 1,
            "gi" | "gib" | "g" | "gb" => 1024,
            "ti" | "tib" | "t" | "tb" => 1024 * 1024,
            _ => return Err(bad()),
        };
        let share = Share::from_str(num).map_err(|_| bad())?;
        let scaled = share.numerator().checked_mul(factor).ok_or_else(bad)?;
        if scaled % share.denominator() != 0 {
            return Err(bad());
        }
        Ok(MiB(scaled / share.denominator()))
    }
}

impl fmt::Display for MiB {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 && self.0.is_multiple_of(1024) {
            write!(f, "{}GiB", self.0 / 1024)
        } else {
            write!(f, "{}MiB", self.0)
        }
    }
}

/// An exact non-negative fraction, always in lowest terms with a non-zero
/// denominator. Used for GPU shares: 1/4 of a GPU, 1/7 for a `1g` MIG slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "(u64, u64)", into = "(u64, u64)")]
pub struct Share {
    num: u64,
    den: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The denominator of GPU-time: 2^6 · 3^2 · 5^6 · 7. Every share whose
/// reduced denominator divides it is exact (see [`Share::is_exact_gpu_time`]).
pub const GPU_TIME_DENOMINATOR: u128 = 63_000_000;

impl Share {
    /// Whether this share × whole milliseconds is exact in GPU-time units
    /// (1/[`GPU_TIME_DENOMINATOR`] of a GPU-millisecond).
    pub fn is_exact_gpu_time(self) -> bool {
        GPU_TIME_DENOMINATOR.is_multiple_of(self.denominator() as u128)
    }

    pub const ZERO: Share = Share { num: 0, den: 1 };
    pub const ONE: Share = Share { num: 1, den: 1 };

    /// `num/den` in lowest terms; `None` if `den` is zero.
    pub fn new(num: u64, den: u64) -> Option<Share> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        Some(Share {
            num: num / g,
            den: den / g,
        })
    }

    pub const fn numerator(self) -> u64 {
        self.num
    }

    pub const fn denominator(self) -> u64 {
        self.den
    }

    pub fn is_zero(self) -> bool {
        self.num == 0
    }

    /// Exact sum. Panics only on overflow of reduced u64 terms, which GPU shares
    /// (denominators up to 10^6 and 7) never reach.
    pub fn checked_add(self, other: Share) -> Option<Share> {
        let g = gcd(self.den, other.den);
        let den = (self.den / g).checked_mul(other.den)?;
        let num = self
            .num
            .checked_mul(other.den / g)?
            .checked_add(other.num.checked_mul(self.den / g)?)?;
        Share::new(num, den)
    }

    /// Exact difference, `None` if it would be negative.
    pub fn checked_sub(self, other: Share) -> Option<Share> {
        let g = gcd(self.den, other.den);
        let den = (self.den / g).checked_mul(other.den)?;
        let a = self.num.checked_mul(other.den / g)?;
        let b = other.num.checked_mul(self.den / g)?;
        Share::new(a.checked_sub(b)?, den)
    }

    /// `floor(self * n)` for integer quantities such as MiB.
    pub fn mul_floor(self, n: u64) -> u64 {
        ((self.num as u128 * n as u128) / self.den as u128) as u64
    }
}

impl Default for Share {
    fn default() -> Self {
        Share::ZERO
    }
}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.num as u128 * other.den as u128).cmp(&(other.num as u128 * self.den as u128))
    }
}

impl TryFrom<(u64, u64)> for Share {
    type Error = String;
    fn try_from((n, d): (u64, u64)) -> Result<Self, String> {
        Share::new(n, d).ok_or_else(|| "share denominator must not be zero".to_string())
    }
}

impl From<Share> for (u64, u64) {
    fn from(s: Share) -> Self {
        (s.num, s.den)
    }
}

impl FromStr for Share {
    type Err = ParseError;

    /// `0.25`, `1/4`, `1`, up to six decimals, exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || {
            ParseError(format!(
                "invalid fraction {}: use e.g. 0.25 or 1/4",
                crate::domain::validate::quote(s)
            ))
        };
        if let Some((n, d)) = s.split_once('/') {
            let n: u64 = n.trim().parse().map_err(|_| bad())?;
            let d: u64 = d.trim().parse().map_err(|_| bad())?;
            return Share::new(n, d).ok_or_else(bad);
        }
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if (int.is_empty() && frac.is_empty())
            || frac.len() > 6
            || !int.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let den = 10u64.pow(frac.len() as u32);
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let frac_v: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        let num = int
            .checked_mul(den)
            .and_then(|v| v.checked_add(frac_v))
            .ok_or_else(bad)?;
        Share::new(num, den).ok_or_else(bad)
    }
}

impl fmt::Display for Share {
    /// `1`, `1/4`, `1/7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("2h".parse::<Millis>().unwrap(), Millis(7_200_000));
        assert_eq!("1h30m".parse::<Millis>().unwrap(), Millis(5_400_000));
        assert_eq!("90".parse::<Millis>().unwrap(), Millis(90_000));
        assert_eq!("250ms".parse::<Millis>().unwrap(), Millis(250));
        assert_eq!("1d".parse::<Millis>().unwrap(), Millis(86_400_000));
        for bad in ["", "h", "2x", "1.5h", "-1s", "2h-"] {
            assert!(bad.parse::<Millis>().is_err(), "{bad} should not parse");
        }
        assert_eq!(Millis(5_400_000).to_string(), "1h30m");
        assert_eq!(Millis(1_500).to_string(), "1.500s");
        assert_eq!(Millis(42).to_string(), "42ms");
    }

    #[test]
    fn timestamps_print_as_rfc3339() {
        assert_eq!(UnixMillis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            UnixMillis(1_795_446_245_123).to_string(),
            "2026-11-23T15:04:05.123Z"
        );
        assert_eq!(
            UnixMillis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn timestamps_parse_back() {
        for s in [
            "2026-11-23T15:04:05.123Z",
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T23:59:59.999Z",
        ] {
            assert_eq!(s.parse::<UnixMillis>().unwrap().to_string(), s);
        }
        assert_eq!(
            "2026-11-23".parse::<UnixMillis>().unwrap().to_string(),
            "2026-11-23T00:00:00.000Z"
        );
        assert_eq!(
            "2026-11-23T15:04".parse::<UnixMillis>().unwrap().to_string(),
            "2026-11-23T15:04:00.000Z"
        );
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "2026-1-1",
            "yesterday",
            "2026-11-23T25:00Z",
            "1969-12-31",
        ] {
            assert!(bad.parse::<UnixMillis>().is_err(), "{bad}");
        }
        let t: UnixMillis = "2026-11-23T15:04:05Z".parse().unwrap();
        assert_eq!(t.month_start().to_string(), "2026-11-01T00:00:00.000Z");
    }

    #[test]
    fn shares_are_exact() {
        let q: Share = "0.25".parse().unwrap();
        assert_eq!((q.numerator(), q.denominator()), (1, 4));
        assert_eq!("1/4".parse::<Share>().unwrap(), q);
        let seventh = Share::new(1, 7).unwrap();
        let sum = q.checked_add(seventh).unwrap();
        assert_eq!(sum, Share::new(11, 28).unwrap());
        assert_eq!(sum.checked_sub(seventh).unwrap(), q);
        assert!(seventh.checked_sub(q).is_none());
        assert!(Share::new(3, 4).unwrap() > Share::new(5, 7).unwrap());
        let mut total = Share::ZERO;
        for _ in 0..7 {
            total = total.checked_add(seventh).unwrap();
        }
        assert_eq!(total, Share::ONE);
        for bad in ["", ".", "abc", "1/0", "0.1234567", "-0.5"] {
            assert!(bad.parse::<Share>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn memory_and_cpu_parse() {
        assert_eq!("40GiB".parse::<MiB>().unwrap(), MiB(40 * 1024));
        assert_eq!("512".parse::<MiB>().unwrap(), MiB(512));
        assert_eq!("1.5G".parse::<MiB>().unwrap(), MiB(1536));
        assert!("12XB".parse::<MiB>().is_err());
        assert_eq!("1.5".parse::<MilliCpu>().unwrap(), MilliCpu(1500));
        assert_eq!("250m".parse::<MilliCpu>().unwrap(), MilliCpu(250));
        assert_eq!("4".parse::<MilliCpu>().unwrap(), MilliCpu(4000));
        assert!("1.0001".parse::<MilliCpu>().is_err());
    }
}
