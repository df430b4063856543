//! Leases: one job's hold on one device for an interval.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ids::{JobId, LeaseId, NodeName, ProjectName, TenantName};
use super::job::{DeviceGrant, JobState};
use super::money::LeaseRate;
use super::units::{Millis, UnixMillis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeaseState {
    /// Written before the agent is told to start.
    Reserved,
    /// The agent reported the process running.
    Active,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EndReason {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Preempted,
    NodeLost,
    /// Reserved, but the job never started on the device.
    ReleasedUnstarted,
    /// Stopped to go back to the queue on request (`allot requeue`).
    Requeued,
}

impl EndReason {
    /// The end reason for a lease whose job reached `state`.
    pub fn for_final_state(state: JobState) -> Option<EndReason> {
        Some(match state {
            JobState::Succeeded => EndReason::Succeeded,
            JobState::Failed => EndReason::Failed,
            JobState::Cancelled => EndReason::Cancelled,
            JobState::TimedOut => EndReason::TimedOut,
            JobState::Preempted => EndReason::Preempted,
            JobState::NodeLost => EndReason::NodeLost,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Succeeded => "succeeded",
            EndReason::Failed => "failed",
            EndReason::Cancelled => "cancelled",
            EndReason::TimedOut => "timed-out",
            EndReason::Preempted => "preempted",
            EndReason::NodeLost => "node-lost",
            EndReason::ReleasedUnstarted => "released-unstarted",
            EndReason::Requeued => "requeued",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lease, stamped by the controller's clock only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub job_id: JobId,
    pub attempt: u32,
    pub tenant: TenantName,
    pub project: ProjectName,
    pub node: NodeName,
    pub device: DeviceGrant,
    pub state: LeaseState,
    pub reserved_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    pub end_reason: Option<EndReason>,
    /// The price of a GPU-hour on this device, fixed when it was reserved.
    #[serde(default)]
    pub rate: Option<LeaseRate>,
    /// The job's tags, for usage by tag.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// How long the job's process ran on this node, as its agent measured it
    /// (informational: leases are billed by the controller's clock).
    #[serde(default)]
    pub agent_runtime: Option<Millis>,
    /// Idle time while held, per UTC hour (ms since the epoch of the hour's
    /// start → idle ms in it), from the GPU utilisation the agent reports:
    /// an interval between two readings counts as idle when the GPU read 0 %
    /// at its end. `None`: no readings for this device (idle unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<BTreeMap<u64, u64>>,
    /// Prices a tenant's pricing plugin set for the lease's hour parts,
    /// replacing the rate card's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_prices: Option<PluginPrices>,
}

/// What a pricing plugin charged for a closed lease: minor units per UTC
/// hour part (ms since the epoch of the hour's start → price).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginPrices {
    /// The plugin, `owner/name`.
    pub plugin: String,
    /// Still being asked: until the answers are in, the parts cost the rate
    /// card's price, and the lease stays out of the roll-ups and exports.
    pub pending: bool,
    /// The operator's plugin's prices, which bill; empty when only the
    /// tenant's own plugin priced the lease (then the rate card bills).
    pub by_hour: BTreeMap<u64, i128>,
    /// The tenant's own pricing plugin (`owner/name`), empty without one:
    /// its showback prices per hour part, recorded beside the bill and
    /// never billed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub showback_plugin: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub showback_by_hour: BTreeMap<u64, i128>,
}

impl Lease {
    /// Idle milliseconds in all, when readings came.
    pub fn idle_ms(&self) -> Option<u64> {
        self.idle.as_ref().map(|m| m.values().sum())
    }

    /// How long the device was held: from reservation to the end (or `now`).
    pub fn held(&self, now: UnixMillis) -> Millis {
        self.ended_at.unwrap_or(now).since(self.reserved_at)
    }
}
