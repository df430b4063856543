//! End-to-end tests: the real `allot` binary, real gRPC over loopback, real
//! sled files, real processes launched by the agent.

mod arrays;
mod backfill;
mod bad_input;
mod cluster;
mod control;
mod crash;
mod deps;
mod hardening;
mod harness;
mod jobs;
mod plugin_kit;
mod plugins;
mod preemption;
mod queues;
mod sim;
mod slurm;
mod standalone;
mod tenants;
mod usage;
