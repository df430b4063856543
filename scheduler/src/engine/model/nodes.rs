//! What the engine knows of each node beside the placement cluster mirror:
//! the agent connected for it, and what its agent last told.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use crate::domain::UnixMillis;
use crate::engine::AgentOrder;

/// The agent session connected for a node: its connection (a message from
/// an older, replaced connection is ignored) and where its orders go.
pub struct AgentLink {
    pub conn: u64,
    pub orders: mpsc::UnboundedSender<AgentOrder>,
}

/// What a node's agent last told, and the node's lost deadline.
#[derive(Default)]
pub struct NodeMeta {
    pub last_heartbeat: Option<UnixMillis>,
    pub utilization: BTreeMap<String, u32>,
    pub discovery: String,
    pub agent_version: String,
    /// When the node's running jobs are declared lost if it has not come back.
    pub lost_deadline: Option<UnixMillis>,
    /// When its last utilisation reading came.
    pub last_reading: Option<UnixMillis>,
}
