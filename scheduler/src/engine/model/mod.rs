//! The state the engine owns, as types with their own invariants: the
//! pending queue's order, the quota book (where pending jobs stand with
//! their tenant's quota plugin) and the nominations of preempting jobs with
//! the node reservations they imply. New kinds of engine state (queues,
//! dependency graphs, arrays, services) are new files here.

pub mod nominations;
pub mod queue;
pub mod quota;

pub use nominations::{Nomination, Nominations};
pub use queue::Queue;
pub use quota::{QuotaBook, QuotaStanding};
