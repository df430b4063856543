//! The state the engine owns, as types with their own invariants: the
//! active jobs with their leases, the pending queue's order, the quota book (where pending jobs stand with
//! their tenant's quota plugin), the nominations of preempting jobs with
//! the node reservations they imply, what each node's agent told, and
//! tenants' budgets with whether each is spent. New kinds of engine state (queues,
//! dependency graphs, arrays, services) are new files here.

pub mod jobs;
pub mod nodes;
pub mod nominations;
pub mod queue;
pub mod quota;
pub mod tenants;

pub use jobs::ActiveJobs;
pub use nodes::{AgentLink, NodeMeta};
pub use nominations::{Nomination, Nominations};
pub use queue::Queue;
pub use quota::{QuotaBook, QuotaStanding};
pub use tenants::{Budgets, Known};
