//! allot: a GPU job scheduler.
//!
//! The shape, from the inside out:
//! - [`placement`] is pure: a function of the cluster and a request.
//! - [`engine`] is the single writer: one task owns the state and makes each
//!   decision durable in the [`ledger`] before anyone hears of it.
//! - [`api`] adapts gRPC to engine commands; [`agent`] runs jobs on a node.

pub mod accounting;
pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod domain;
pub mod engine;
pub mod ledger;
pub mod placement;
pub mod policy;
pub mod server;
pub mod sim;
