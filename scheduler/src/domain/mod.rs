//! The domain: ids, units, jobs, leases, MIG profiles. Plain data, no I/O.

pub mod array;
pub mod dependency;
pub mod error;
pub mod ids;
pub mod job;
pub mod lease;
pub mod mig;
pub mod money;
pub mod output;
pub mod plugin;
pub mod queue;
pub mod units;
pub mod validate;

pub use error::{ErrorCode, ServiceError};
pub use ids::{JobId, LeaseId, NodeName, PluginName, ProjectName, QosName, QueueName, TenantName};
pub use job::{
    Constraints, DeviceGrant, ExitOutcome, GpuRequest, Hold, Job, JobSpec, JobState, PartExit, Placement,
    Resources,
};
pub use lease::{EndReason, Lease, LeaseState, PluginPrices};
pub use mig::{MigFamily, MigProfile};
pub use queue::{QueueDef, QueueLimits, QueueSource};
pub use units::{MiB, MilliCpu, Millis, Share, UnixMillis};
