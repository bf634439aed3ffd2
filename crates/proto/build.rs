//! Compiles `proto/` with protox (pure Rust, so no `protoc` is needed) and generates prost
//! messages plus, with the `grpc` feature, tonic clients and servers, and the encoded descriptor set of the API port's
//! services for gRPC server reflection (`API_FILE_DESCRIPTOR_SET`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "mvcc.proto",
        "regatta.proto",
        "replication.proto",
        "maintenance.proto",
        "armada_replication.proto",
        "etcd/etcd.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    write_api_descriptor_set(&descriptors)?;
    // Services (tonic) only with the `grpc` feature; the messages always.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(grpc)
        .build_server(grpc)
        .codec_path("crate::codec::WireCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

/// The descriptors server reflection publishes on the API port: every file but etcd's (only
/// `armada bench` speaks it, as a client), and `replication.proto` without its services
/// (they are served on the replication port; its messages stay, `maintenance.proto` uses
/// them) and `armada_replication.proto` (its one service is the replication port's too).
/// Imports (`google/protobuf/struct.proto`) are included, so reflection clients can
/// resolve every type.
fn write_api_descriptor_set(
    all: &prost_types::FileDescriptorSet,
) -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message as _;
    let mut api = all.clone();
    // armada_replication.proto holds only the replication port's MetadataFeed.
    api.file.retain(|file| {
        file.package() != "etcdserverpb" && file.name() != "armada_replication.proto"
    });
    for file in &mut api.file {
        if file.package() == "replication.v1" {
            file.service.clear();
        }
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("api_descriptor_set.bin"), api.encode_to_vec())?;
    Ok(())
}
