//! Compiles the etcd API subset and the internal raft peer protocol with protox
//! (pure Rust, so no system `protoc` is needed) and generates tonic clients/servers.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", dir.display());
    let files = [
        "kv.proto",
        "auth.proto",
        "rpc.proto",
        "v3election.proto",
        "v3lock.proto",
        "raft.proto",
        "crawler.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    let fds = protox::compile(files, [&dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
