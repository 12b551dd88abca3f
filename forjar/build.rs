//! Generates the client of the Remote Workers API's Bots service (which `forjar worker` speaks
//! to BuildGrid) from `proto/`, with the vendored protoc. The Remote Execution API itself comes
//! pre-generated in the `bazel-remote-apis` crate, whose protobuf and rpc types the generated
//! code shares. Only with the `remote` feature.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "remote")]
    bots()?;
    Ok(())
}

#[cfg(feature = "remote")]
fn bots() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let includes = [
        std::path::PathBuf::from("proto"),
        protoc_bin_vendored::include_path()?,
    ];
    tonic_prost_build::configure()
        .build_server(false)
        // The well-known types are the ones bazel-remote-apis generates (an extern path below),
        // not prost-types.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::bazel_remote_apis::google::protobuf")
        .extern_path(".google.rpc", "::bazel_remote_apis::google::rpc")
        .compile_protos(
            &[std::path::PathBuf::from(
                "proto/google/devtools/remoteworkers/v1test2/bots.proto",
            )],
            &includes,
        )?;
    Ok(())
}
