//! GPU discovery through NVML: whole GPUs, and MIG devices with their profile
//! and UUID when MIG is on. Where NVML is absent (`libnvidia-ml.so.1` not
//! found), `Nvml::init` fails and the agent falls back to a declared fleet.

use allot_proto::v1 as pb;
use nvml_wrapper::Nvml;
use tracing::{debug, warn};

use crate::domain::mig::canonical_model;

/// NVML, opened once for the agent's life.
pub struct Gpus {
    nvml: Nvml,
}

impl Gpus {
    /// Opens NVML; the error says why it is not available.
    pub fn open() -> Result<Gpus, String> {
        Nvml::init().map(|nvml| Gpus { nvml }).map_err(|e| e.to_string())
    }

    /// Every GPU with its MIG devices.
    pub fn discover(&self) -> Result<Vec<pb::GpuInfo>, String> {
        let count = self.nvml.device_count().map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let dev = self
                .nvml
                .device_by_index(index)
                .map_err(|e| format!("GPU {index}: {e}"))?;
            let uuid = dev.uuid().map_err(|e| format!("GPU {index}: {e}"))?;
            let name = dev.name().unwrap_or_else(|_| "unknown".into());
            let memory_mib = dev.memory_info().map(|m| m.total / (1024 * 1024)).unwrap_or(0);
            let mig_on = matches!(dev.mig_mode(), Ok(m) if m.current == 1);
            let mut mig_devices = Vec::new();
            if mig_on {
                let max = dev.mig_device_count().unwrap_or(0);
                for k in 0..max {
                    // Slots without an instance return NotFound; skip them.
                    let Ok(mig) = dev.mig_device_by_index(k) else {
                        continue;
                    };
                    let Ok(mig_uuid) = mig.uuid() else { continue };
                    let mig_name = mig.name().unwrap_or_default();
                    let Some(profile) = mig_profile_of(&mig_name) else {
                        warn!(gpu = %uuid, name = %mig_name, "MIG device with an unrecognised name skipped");
                        continue;
                    };
                    let mem = mig.memory_info().map(|m| m.total / (1024 * 1024)).unwrap_or(0);
                    mig_devices.push(pb::MigDeviceInfo {
                        uuid: mig_uuid,
                        profile,
                        start: k,
                        memory_mib: mem,
                    });
                }
            }
            debug!(index, %uuid, %name, memory_mib, mig_on, "GPU discovered");
            out.push(pb::GpuInfo {
                index,
                uuid,
                model: canonical_model(&name, memory_mib),
                memory_mib,
                mig_enabled: mig_on,
                mig_devices,
            });
        }
        Ok(out)
    }

    /// GPU utilisation percent per GPU UUID, where NVML gives it.
    pub fn utilization(&self) -> Vec<pb::GpuUtilization> {
        let Ok(count) = self.nvml.device_count() else {
            return Vec::new();
        };
        (0..count)
            .filter_map(|i| {
                let dev = self.nvml.device_by_index(i).ok()?;
                let u = dev.utilization_rates().ok()?;
                Some(pb::GpuUtilization {
                    uuid: dev.uuid().ok()?,
                    gpu_pct: u.gpu,
                    memory_pct: u.memory,
                })
            })
            .collect()
    }
}

/// The profile in a MIG device name such as `NVIDIA A100-SXM4-40GB MIG 1g.5gb`.
fn mig_profile_of(name: &str) -> Option<String> {
    let (_, profile) = name.rsplit_once("MIG ")?;
    let profile = profile.trim();
    profile
        .parse::<crate::domain::MigProfile>()
        .ok()
        .map(|p| p.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mig_names_yield_profiles() {
        assert_eq!(
            super::mig_profile_of("NVIDIA A100-SXM4-40GB MIG 1g.5gb").as_deref(),
            Some("1g.5gb")
        );
        assert_eq!(
            super::mig_profile_of("NVIDIA H100 80GB HBM3 MIG 3g.40gb").as_deref(),
            Some("3g.40gb")
        );
        assert_eq!(super::mig_profile_of("NVIDIA H100 80GB HBM3"), None);
    }
}
