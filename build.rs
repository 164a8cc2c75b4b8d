//! Compiles the protobuf files without a system `protoc`: protox parses them
//! in pure Rust, tonic-prost-build generates the code, and the encoded
//! descriptor set is written to `OUT_DIR` for gRPC server reflection.

use std::{env, fs, path::PathBuf};

const API_PROTOS: &[&str] = &[
    "proto/syncd/v1/system.proto",
    "proto/syncd/v1/session.proto",
    "proto/syncd/v1/common.proto",
    "proto/syncd/v1/lock.proto",
    "proto/syncd/v1/semaphore.proto",
    "proto/syncd/v1/rwlock.proto",
    "proto/syncd/v1/event.proto",
    "proto/syncd/v1/condition.proto",
    "proto/syncd/v1/barrier.proto",
    "proto/syncd/v1/queue.proto",
    "proto/syncd/v1/pool.proto",
    "proto/syncd/v1/ratelimit.proto",
    "proto/syncd/v1/breaker.proto",
];
/// What syncd keeps on disk (store records, log entries): not part of the
/// API, so neither served nor in the reflection descriptor.
const DISK_PROTOS: &[&str] = &[
    "proto/syncd/store/v1/records.proto",
    "proto/syncd/log/v1/entry.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");

    let api = protox::compile(API_PROTOS, ["proto"])?;
    fs::write(
        out_dir.join("syncd_descriptor.bin"),
        prost::Message::encode_to_vec(&api),
    )?;
    tonic_prost_build::configure().compile_fds(api)?;

    let disk = protox::compile(DISK_PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(disk)?;
    Ok(())
}
