//! NVIDIA MIG profiles and their placement rules, from NVIDIA's MIG user guide.
//!
//! A MIG-capable GPU has 7 compute slices and 8 memory slices. A profile
//! `Ng.Mgb` takes N compute slices and a run of memory slices that may start
//! only at the listed slots. A job's GPU share for a slice is N/7.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::units::Share;

/// A GPU family with its own MIG profile table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MigFamily {
    A100_40GB,
    A100_80GB,
    H100_80GB,
    H100_94GB,
    H200_141GB,
}

/// One row of NVIDIA's profile table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileInfo {
    pub name: &'static str,
    /// Compute slices, out of 7.
    pub compute_slices: u8,
    /// Memory slices the instance spans, out of 8.
    pub memory_slices: u8,
    /// Memory slots where an instance may start.
    pub starts: &'static [u8],
    /// Memory of the instance in MiB (nominal, from the profile name).
    pub memory_mib: u64,
}

const fn p(
    name: &'static str,
    compute_slices: u8,
    memory_slices: u8,
    starts: &'static [u8],
    memory_gb: u64,
) -> ProfileInfo {
    ProfileInfo {
        name,
        compute_slices,
        memory_slices,
        starts,
        memory_mib: memory_gb * 1024,
    }
}

const ALL7: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const EVEN4: &[u8] = &[0, 2, 4, 6];
const EVEN3: &[u8] = &[0, 2, 4];
const HALVES: &[u8] = &[0, 4];
const FIRST: &[u8] = &[0];

const A100_40GB: &[ProfileInfo] = &[
    p("1g.5gb", 1, 1, ALL7, 5),
    p("1g.5gb+me", 1, 1, ALL7, 5),
    p("1g.10gb", 1, 2, EVEN4, 10),
    p("2g.10gb", 2, 2, EVEN3, 10),
    p("3g.20gb", 3, 4, HALVES, 20),
    p("4g.20gb", 4, 4, FIRST, 20),
    p("7g.40gb", 7, 8, FIRST, 40),
];

const A100_H100_80GB: &[ProfileInfo] = &[
    p("1g.10gb", 1, 1, ALL7, 10),
    p("1g.10gb+me", 1, 1, ALL7, 10),
    p("1g.20gb", 1, 2, EVEN4, 20),
    p("2g.20gb", 2, 2, EVEN3, 20),
    p("3g.40gb", 3, 4, HALVES, 40),
    p("4g.40gb", 4, 4, FIRST, 40),
    p("7g.80gb", 7, 8, FIRST, 80),
];

const H100_94GB: &[ProfileInfo] = &[
    p("1g.12gb", 1, 1, ALL7, 12),
    p("1g.12gb+me", 1, 1, ALL7, 12),
    p("1g.24gb", 1, 2, EVEN4, 24),
    p("2g.24gb", 2, 2, EVEN3, 24),
    p("3g.47gb", 3, 4, HALVES, 47),
    p("4g.47gb", 4, 4, FIRST, 47),
    p("7g.94gb", 7, 8, FIRST, 94),
];

const H200_141GB: &[ProfileInfo] = &[
    p("1g.18gb", 1, 1, ALL7, 18),
    p("1g.18gb+me", 1, 1, ALL7, 18),
    p("1g.35gb", 1, 2, EVEN4, 35),
    p("2g.35gb", 2, 2, EVEN3, 35),
    p("3g.71gb", 3, 4, HALVES, 71),
    p("4g.71gb", 4, 4, FIRST, 71),
    p("7g.141gb", 7, 8, FIRST, 141),
];

impl MigFamily {
    pub const ALL: [MigFamily; 5] = [
        MigFamily::A100_40GB,
        MigFamily::A100_80GB,
        MigFamily::H100_80GB,
        MigFamily::H100_94GB,
        MigFamily::H200_141GB,
    ];

    pub fn profiles(self) -> &'static [ProfileInfo] {
        match self {
            MigFamily::A100_40GB => A100_40GB,
            MigFamily::A100_80GB | MigFamily::H100_80GB => A100_H100_80GB,
            MigFamily::H100_94GB => H100_94GB,
            MigFamily::H200_141GB => H200_141GB,
        }
    }

    pub fn profile(self, name: &str) -> Option<&'static ProfileInfo> {
        self.profiles().iter().find(|p| p.name == name)
    }

    /// The family of a canonical model name such as `H100-80GB`.
    pub fn of_model(model: &str) -> Option<MigFamily> {
        match model {
            "A100-40GB" => Some(MigFamily::A100_40GB),
            "A100-80GB" => Some(MigFamily::A100_80GB),
            "H100-80GB" => Some(MigFamily::H100_80GB),
            "H100-94GB" => Some(MigFamily::H100_94GB),
            "H200-141GB" => Some(MigFamily::H200_141GB),
            _ => None,
        }
    }
}

/// A MIG profile name known to at least one family, e.g. `1g.10gb`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MigProfile(String);

impl MigProfile {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compute slices out of 7 (the `N` of `Ng.Mgb`).
    pub fn compute_slices(&self) -> u8 {
        known_profile(&self.0).map(|p| p.compute_slices).unwrap_or(7)
    }

    /// The share of a GPU this slice is: compute slices / 7.
    pub fn share(&self) -> Share {
        Share::new(self.compute_slices() as u64, 7).expect("non-zero denominator")
    }
}

fn known_profile(name: &str) -> Option<&'static ProfileInfo> {
    MigFamily::ALL.iter().find_map(|f| f.profile(name))
}

/// Every profile name we know, sorted, for error messages.
pub fn known_profile_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = MigFamily::ALL
        .iter()
        .flat_map(|f| f.profiles().iter().map(|p| p.name))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

impl FromStr for MigProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if known_profile(s).is_some() {
            Ok(MigProfile(s.to_string()))
        } else {
            Err(format!(
                "unknown MIG profile {}; known profiles: {}",
                super::validate::quote(s),
                known_profile_names().join(", ")
            ))
        }
    }
}

impl TryFrom<String> for MigProfile {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MigProfile> for String {
    fn from(p: MigProfile) -> String {
        p.0
    }
}

impl fmt::Display for MigProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A canonical model name from what NVML reports, e.g. `NVIDIA H100 80GB HBM3`
/// with 81,559 MiB → `H100-80GB`. Unknown boards keep NVML's name without the
/// `NVIDIA ` prefix, spaces as dashes.
pub fn canonical_model(nvml_name: &str, memory_mib: u64) -> String {
    let name = nvml_name.trim().trim_start_matches("NVIDIA").trim();
    let gib = memory_mib.div_ceil(1024);
    let upper = name.to_ascii_uppercase();
    let family = if upper.contains("H200") {
        Some("H200-141GB")
    } else if upper.contains("H100") || upper.contains("H800") {
        Some(if gib > 90 { "H100-94GB" } else { "H100-80GB" })
    } else if upper.contains("A100") || upper.contains("A800") {
        Some(if gib > 50 { "A100-80GB" } else { "A100-40GB" })
    } else {
        None
    };
    match family {
        Some(f) => f.to_string(),
        None => name.replace(' ', "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_compute_slices() {
        let p: MigProfile = "1g.10gb".parse().unwrap();
        assert_eq!(p.share(), Share::new(1, 7).unwrap());
        let p: MigProfile = "3g.40gb".parse().unwrap();
        assert_eq!(p.share(), Share::new(3, 7).unwrap());
        let p: MigProfile = "7g.80gb".parse().unwrap();
        assert_eq!(p.share(), Share::ONE);
    }

    #[test]
    fn unknown_profiles_are_rejected() {
        let err = "5g.50gb".parse::<MigProfile>().unwrap_err();
        assert!(err.contains("unknown MIG profile"), "{err}");
        assert!(err.contains("1g.10gb"), "{err}");
    }

    #[test]
    fn nvml_names_map_to_canonical_models() {
        assert_eq!(canonical_model("NVIDIA H100 80GB HBM3", 81_559), "H100-80GB");
        assert_eq!(canonical_model("NVIDIA A100-SXM4-40GB", 40_960), "A100-40GB");
        assert_eq!(canonical_model("NVIDIA A100-SXM4-80GB", 81_920), "A100-80GB");
        assert_eq!(canonical_model("NVIDIA H200", 143_771), "H200-141GB");
        assert_eq!(canonical_model("NVIDIA L4", 23_034), "L4");
    }

    #[test]
    fn every_start_slot_fits_in_eight_memory_slices() {
        for f in MigFamily::ALL {
            for p in f.profiles() {
                for s in p.starts {
                    assert!(s + p.memory_slices <= 8, "{f:?} {} at {s}", p.name);
                }
            }
        }
    }
}
