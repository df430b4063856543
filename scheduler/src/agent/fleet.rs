//! A declared GPU fleet, for machines without NVML (development, CI, tests).
//!
//! Declared GPUs go through exactly the same registration, placement and
//! launch paths as discovered ones; only their UUIDs are made up (stable per
//! node and index, so a restarted agent reports the same devices).
//!
//! Two forms:
//! - a TOML file (`--fleet FILE`), see `examples/fleet.toml`;
//! - a compact flag (`--gpus SPEC`): comma-separated groups `COUNTxMODEL`,
//!   optionally `:MEMORY` and `/mig=PROFILE+PROFILE…`, e.g.
//!   `4xH100-80GB,1xH100-80GB/mig=3g.40gb+2g.20gb+1g.10gb+1g.10gb`.
//!
//! A group may also declare the GPU utilisation its GPUs report in
//! heartbeats (`utilization = 0` in the file, `@0%` in the flag), as NVML
//! would for real ones: that is how idle-time accounting runs without GPUs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use allot_proto::v1 as pb;

use crate::domain::{MiB, MigFamily, MigProfile, MilliCpu};

/// One group of identical GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuGroup {
    pub model: String,
    #[serde(default = "one")]
    pub count: u32,
    /// Needed for models allot does not know (e.g. "48GiB").
    #[serde(default)]
    pub memory: Option<String>,
    /// MIG slices each GPU of the group is split into; empty means whole GPUs.
    #[serde(default)]
    pub mig: Vec<String>,
    /// Utilisation percent (0–100) the group's GPUs report in heartbeats;
    /// none by default (like a GPU whose driver gives no reading).
    #[serde(default)]
    pub utilization: Option<u32>,
}

fn one() -> u32 {
    1
}

/// A declared node: the `--fleet` file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// CPU cores (`64`, `7.5`, `500m`); default: this machine's.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Memory (`512GiB`); default: this machine's.
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gpus: Vec<GpuGroup>,
}

/// A validated declared fleet for one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fleet {
    pub cpu: Option<MilliCpu>,
    pub memory: Option<MiB>,
    pub labels: BTreeMap<String, String>,
    pub gpus: Vec<GpuGroup>,
}

/// Nominal memory of the models allot knows, in MiB.
fn known_memory(model: &str) -> Option<MiB> {
    let gib = match model {
        "A100-40GB" => 40,
        "A100-80GB" | "H100-80GB" => 80,
        "H100-94GB" => 94,
        "H200-141GB" => 141,
        "L4" => 24,
        "L40S" => 48,
        "A10G" => 24,
        "V100M16" => 16,
        "V100M32" => 32,
        "T4" => 16,
        _ => return None,
    };
    Some(MiB(gib * 1024))
}

impl Fleet {
    pub fn from_file(path: &Path) -> Result<Fleet, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read fleet file {}: {e}", path.display()))?;
        let raw: FleetFile =
            toml::from_str(&text).map_err(|e| format!("fleet file {}: {e}", path.display()))?;
        Fleet::validate(raw)
    }

    /// Parses the compact `--gpus` form.
    pub fn from_spec(spec: &str) -> Result<Fleet, String> {
        let mut gpus = Vec::new();
        for group in spec.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let bad = || {
                format!(
                    "invalid GPU group {group:?}: use COUNTxMODEL[:MEMORY][/mig=PROFILE+PROFILE...][@PCT%], e.g. 4xH100-80GB"
                )
            };
            let (group, utilization) = match group.rsplit_once('@') {
                Some((g, pct)) => {
                    let pct = pct.trim().strip_suffix('%').ok_or_else(bad)?;
                    (g, Some(pct.parse::<u32>().map_err(|_| bad())?))
                }
                None => (group, None),
            };
            let (head, mig) = match group.split_once("/mig=") {
                Some((h, m)) => (h, m.split('+').map(|p| p.trim().to_string()).collect()),
                None => (group, Vec::new()),
            };
            let (count, rest) = head.split_once('x').ok_or_else(bad)?;
            let count: u32 = count.trim().parse().map_err(|_| bad())?;
            let (model, memory) = match rest.split_once(':') {
                Some((m, mem)) => (m.trim().to_string(), Some(mem.trim().to_string())),
                None => (rest.trim().to_string(), None),
            };
            gpus.push(GpuGroup {
                model,
                count,
                memory,
                mig,
                utilization,
            });
        }
        Fleet::validate(FleetFile {
            gpus,
            ..FleetFile::default()
        })
    }

    fn validate(raw: FleetFile) -> Result<Fleet, String> {
        let cpu = raw
            .cpu
            .as_deref()
            .map(str::parse::<MilliCpu>)
            .transpose()
            .map_err(|e| e.to_string())?;
        let memory = raw
            .memory
            .as_deref()
            .map(str::parse::<MiB>)
            .transpose()
            .map_err(|e| e.to_string())?;
        for g in &raw.gpus {
            if g.count == 0 || g.count > 64 {
                return Err(format!("GPU group {}: count must be 1 to 64", g.model));
            }
            if g.model.is_empty() || g.model.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "GPU model {:?} must be a non-empty word such as H100-80GB",
                    g.model
                ));
            }
            group_memory(g)?;
            if g.utilization.is_some_and(|u| u > 100) {
                return Err(format!(
                    "GPU group {}: utilization is a percent, 0 to 100",
                    g.model
                ));
            }
            if !g.mig.is_empty() {
                mig_layout(&g.model, &g.mig)?;
            }
        }
        Ok(Fleet {
            cpu,
            memory,
            labels: raw.labels,
            gpus: raw.gpus,
        })
    }

    /// The GPUs of this fleet as the agent registers them.
    pub fn gpu_infos(&self, node: &str) -> Vec<pb::GpuInfo> {
        let mut out = Vec::new();
        let mut index = 0u32;
        for g in &self.gpus {
            let memory = group_memory(g).expect("validated");
            for _ in 0..g.count {
                let uuid = fake_uuid("GPU", &format!("{node}/{index}"));
                let mig_devices = if g.mig.is_empty() {
                    Vec::new()
                } else {
                    mig_layout(&g.model, &g.mig)
                        .expect("validated")
                        .into_iter()
                        .map(|(profile, start, mem)| pb::MigDeviceInfo {
                            uuid: fake_uuid("MIG", &format!("{node}/{index}/{start}")),
                            profile: profile.to_string(),
                            start: start as u32,
                            memory_mib: mem.0,
                        })
                        .collect()
                };
                out.push(pb::GpuInfo {
                    index,
                    uuid,
                    model: g.model.clone(),
                    memory_mib: memory.0,
                    mig_enabled: !g.mig.is_empty(),
                    mig_devices,
                });
                index += 1;
            }
        }
        out
    }

    /// The utilisation the declared GPUs report (those that declare one).
    pub fn utilization(&self, node: &str) -> Vec<pb::GpuUtilization> {
        let mut out = Vec::new();
        let mut index = 0u32;
        for g in &self.gpus {
            for _ in 0..g.count {
                if let Some(pct) = g.utilization {
                    out.push(pb::GpuUtilization {
                        uuid: fake_uuid("GPU", &format!("{node}/{index}")),
                        gpu_pct: pct,
                        memory_pct: pct,
                    });
                }
                index += 1;
            }
        }
        out
    }

    /// One line per group, e.g. `4× H100-80GB, 1× H100-80GB (MIG 3g.40gb+2g.20gb)`.
    pub fn summary(&self) -> String {
        self.gpus
            .iter()
            .map(|g| {
                if g.mig.is_empty() {
                    format!("{}× {}", g.count, g.model)
                } else {
                    format!("{}× {} (MIG {})", g.count, g.model, g.mig.join("+"))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn group_memory(g: &GpuGroup) -> Result<MiB, String> {
    match &g.memory {
        Some(m) => m
            .parse::<MiB>()
            .map_err(|e| format!("GPU group {}: {e}", g.model)),
        None => known_memory(&g.model).ok_or_else(|| {
            format!(
                "GPU model {} is not one allot knows; give its memory (e.g. {}:48GiB or memory = \"48GiB\")",
                g.model, g.model
            )
        }),
    }
}

/// Lays out MIG slices by NVIDIA's placement rules: each profile, largest
/// first, at the lowest allowed start whose memory slots are free. Returns
/// (profile, start, memory) in the order given.
pub fn mig_layout(model: &str, profiles: &[String]) -> Result<Vec<(MigProfile, u8, MiB)>, String> {
    let family = MigFamily::of_model(model)
        .ok_or_else(|| format!("GPU model {model} does not support MIG (known: A100-40GB, A100-80GB, H100-80GB, H100-94GB, H200-141GB)"))?;
    let mut infos = Vec::new();
    for p in profiles {
        let info = family.profile(p).ok_or_else(|| {
            let names: Vec<&str> = family.profiles().iter().map(|i| i.name).collect();
            format!(
                "MIG profile {p:?} does not exist on {model} (it has {})",
                names.join(", ")
            )
        })?;
        infos.push(info);
    }
    let compute: u32 = infos.iter().map(|i| i.compute_slices as u32).sum();
    if compute > 7 {
        return Err(format!(
            "MIG layout {} on {model} needs {compute} compute slices; a GPU has 7",
            profiles.join("+")
        ));
    }
    // Exact search, big slices first (they have the fewest allowed starts),
    // trying high starts first so small slices keep the low slots.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((infos[i].memory_slices, infos[i].compute_slices)));
    fn search(
        infos: &[&crate::domain::mig::ProfileInfo],
        order: &[usize],
        used: &mut [bool; 8],
        starts: &mut [u8],
    ) -> bool {
        let Some((&i, rest)) = order.split_first() else {
            return true;
        };
        let info = infos[i];
        for &s in info.starts.iter().rev() {
            let span = s as usize..(s + info.memory_slices) as usize;
            if span.clone().all(|k| !used[k]) {
                span.clone().for_each(|k| used[k] = true);
                starts[i] = s;
                if search(infos, rest, used, starts) {
                    return true;
                }
                span.for_each(|k| used[k] = false);
            }
        }
        false
    }
    let mut starts = vec![0u8; infos.len()];
    if !search(&infos, &order, &mut [false; 8], &mut starts) {
        return Err(format!(
            "MIG layout {} does not fit on one {model} by NVIDIA's placement rules",
            profiles.join("+")
        ));
    }
    Ok(infos
        .iter()
        .zip(starts)
        .map(|(info, s)| {
            (
                info.name.parse().expect("from the table"),
                s,
                MiB(info.memory_mib),
            )
        })
        .collect())
}

/// A stable UUID-shaped id, e.g. `GPU-3f2a…`, derived from `seed`.
fn fake_uuid(prefix: &str, seed: &str) -> String {
    let h = Sha256::digest(format!("allot-declared/{seed}").as_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_spec_parses() {
        let f =
            Fleet::from_spec("4xH100-80GB, 1xH100-80GB/mig=3g.40gb+2g.20gb+1g.10gb+1g.10gb, 2xL40S").unwrap();
        let gpus = f.gpu_infos("n1");
        assert_eq!(gpus.len(), 7);
        assert_eq!(gpus[4].mig_devices.len(), 4);
        assert!(gpus[4].mig_enabled);
        assert_eq!(gpus[5].memory_mib, 48 * 1024);
        // Stable per node and index, distinct across nodes.
        assert_eq!(f.gpu_infos("n1")[0].uuid, gpus[0].uuid);
        assert_ne!(f.gpu_infos("n2")[0].uuid, gpus[0].uuid);
        assert!(gpus[0].uuid.starts_with("GPU-"));
        assert!(gpus[4].mig_devices[0].uuid.starts_with("MIG-"));
    }

    #[test]
    fn bad_specs_say_why() {
        assert!(Fleet::from_spec("H100").unwrap_err().contains("COUNTxMODEL"));
        assert!(
            Fleet::from_spec("2xMysteryGPU")
                .unwrap_err()
                .contains("give its memory")
        );
        assert!(Fleet::from_spec("2xMysteryGPU:24GiB").is_ok());
        assert!(
            Fleet::from_spec("1xH100-80GB/mig=5g.50gb")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            Fleet::from_spec("1xH100-80GB/mig=4g.40gb+4g.40gb")
                .unwrap_err()
                .contains("compute slices")
        );
        assert!(
            Fleet::from_spec("1xL4/mig=1g.10gb")
                .unwrap_err()
                .contains("does not support MIG")
        );
    }

    #[test]
    fn mig_layout_follows_start_slots() {
        let l = mig_layout(
            "H100-80GB",
            &[
                "1g.10gb".into(),
                "3g.40gb".into(),
                "2g.20gb".into(),
                "1g.10gb".into(),
            ],
        )
        .unwrap();
        let starts: Vec<u8> = l.iter().map(|(_, s, _)| *s).collect();
        // 3g.40gb at 4..8, 2g.20gb at 2..4, the 1g slices at 1 and 0.
        assert_eq!(starts, vec![1, 4, 2, 0]);
        // Seven 1g slices fill the GPU; an eighth does not fit.
        assert!(mig_layout("A100-40GB", &vec!["1g.5gb".to_string(); 7]).is_ok());
        assert!(mig_layout("A100-40GB", &vec!["1g.5gb".to_string(); 8]).is_err());
        // Two 3g slices fit at 0 and 4.
        let l = mig_layout("A100-80GB", &["3g.40gb".into(), "3g.40gb".into()]).unwrap();
        let mut s: Vec<u8> = l.iter().map(|(_, s, _)| *s).collect();
        s.sort_unstable();
        assert_eq!(s, vec![0, 4]);
        // 4g.40gb only starts at 0, so 4g + 3g must put the 3g at 4.
        let l = mig_layout("H100-80GB", &["3g.40gb".into(), "4g.40gb".into()]).unwrap();
        assert_eq!(l.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(), vec![4, 0]);
    }
}

#[cfg(test)]
mod layout_props {
    use proptest::prelude::*;

    use super::mig_layout;
    use crate::domain::MigFamily;

    fn family() -> impl Strategy<Value = (&'static str, MigFamily)> {
        prop::sample::select(vec![
            ("A100-40GB", MigFamily::A100_40GB),
            ("A100-80GB", MigFamily::A100_80GB),
            ("H100-80GB", MigFamily::H100_80GB),
            ("H200-141GB", MigFamily::H200_141GB),
        ])
    }

    proptest! {
        /// Every layout accepted obeys NVIDIA's rules: each slice starts at an
        /// allowed slot, slices never share a memory slot, and compute adds up to at most 7.
        #[test]
        fn accepted_layouts_respect_start_slots((model, fam) in family(), picks in proptest::collection::vec(0usize..7, 1..8)) {
            let names: Vec<String> = picks.iter().map(|&i| fam.profiles()[i % fam.profiles().len()].name.to_string()).collect();
            let Ok(layout) = mig_layout(model, &names) else { return Ok(()) };
            let mut used = [false; 8];
            let mut compute = 0;
            for (profile, start, _) in &layout {
                let info = fam.profile(profile.as_str()).unwrap();
                prop_assert!(info.starts.contains(start), "{} may not start at {start}", profile);
                for k in *start..*start + info.memory_slices {
                    prop_assert!(!used[k as usize], "slot {k} used twice in {names:?}");
                    used[k as usize] = true;
                }
                compute += info.compute_slices as u32;
            }
            prop_assert!(compute <= 7);
        }
    }
}
