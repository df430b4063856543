//! The state the engine owns, as types with their own invariants: the
//! active jobs with their leases, the pending jobs' order, the queues
//! (definitions, and what each tenant holds in them), the quota book (where
//! pending jobs stand with their tenant's quota plugin), the nominations of
//! preempting jobs with the node reservations they imply, what each node's
//! agent told, tenants' budgets with whether each is spent, the
//! dependency graph, fair share (decayed usage against weights), and the
//! arrays' split state. New kinds of engine state (services) are new
//! files here.

pub mod arrays;
pub mod dependencies;
pub mod fairshare;
pub mod jobs;
pub mod nodes;
pub mod nominations;
pub mod pending;
pub mod queues;
pub mod quota;
pub mod tenants;

pub use arrays::Arrays;
pub use dependencies::DependencyGraph;
pub use fairshare::{FairShare, FairShareConfig};
pub use jobs::ActiveJobs;
pub use nodes::{AgentLink, NodeMeta};
pub use nominations::{Nomination, Nominations};
pub use pending::Pending;
pub use queues::{QueueUsage, Queues};
pub use quota::{QuotaBook, QuotaStanding};
pub use tenants::{Budgets, Known};
