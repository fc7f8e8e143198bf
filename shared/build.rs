//! Compiles `../proto` with protox (pure Rust: no system `protoc`), generates
//! prost messages and tonic clients/servers, and writes the encoded descriptor
//! set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "saga/events/v1/events.proto",
    "saga/order/v1/order.proto",
    "saga/inventory/v1/inventory.proto",
    "saga/payment/v1/payment.proto",
    "saga/reservation/v1/reservation.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("saga_descriptor.bin"), fds.encode_to_vec())?;
    // Type names let the codec name the message a request failed to decode
    // as, and find the field at fault (see src/codec.rs).
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::SagaCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
