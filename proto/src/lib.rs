//! The `allot.v1` gRPC contract: the generated messages, clients and servers.
//!
//! The `.proto` files next to this crate are the source of truth; the CLI, the
//! SDK and the agent all speak through these types and nothing else.

/// Messages and services of package `allot.v1`.
pub mod v1 {
    #![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("allot.v1");

    /// The encoded `FileDescriptorSet` of `allot.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/allot_v1_descriptor.bin"));
}
