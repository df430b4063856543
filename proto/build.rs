//! Compiles `allot/v1/*.proto` with protox (pure Rust), so no system `protoc`
//! is needed, and writes the encoded descriptor set for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "allot/v1/types.proto",
    "allot/v1/jobs.proto",
    "allot/v1/nodes.proto",
    "allot/v1/admin.proto",
    "allot/v1/agent.proto",
    "allot/v1/usage.proto",
    "allot/v1/plugins.proto",
    "allot/v1/queues.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("allot_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
