//! `cargo xtask`: project automation that would otherwise live in shell scripts.
//!
//! * `cargo xtask test`: everything CI checks, in order, stopping at the first failure.
//! * `cargo xtask fuzz [--seconds N]`: every fuzz target for N seconds (needs cargo-fuzz).
//! * `cargo xtask bench-peers`: casket against its peers, side by side in one run.
//! * `cargo xtask codegen`: regenerates the committed gRPC code for casket's own protos.
#![allow(clippy::print_stdout)]

mod bench;

use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("fuzz") => match args.get(1..) {
            Some([flag, seconds]) if flag == "--seconds" => fuzz(seconds.parse()?),
            _ => fuzz(60),
        },
        Some("bench-peers") => bench::run(&args[1..]),
        Some("codegen") => codegen(),
        _ => bail!(
            "usage: cargo xtask test | fuzz [--seconds N] | bench-peers [--reps N] [--work DIR] [--large-mib N] [--only local|transfer|clients]"
        ),
    }
}

/// The fuzz targets in `fuzz/`.
const FUZZ_TARGETS: [&str; 4] = [
    "parse_digest",
    "decode_directory",
    "parse_ref_name",
    "import_rules",
];

/// The CI sequence: formatting, lints, docs, every test, a short run of every fuzz target.
fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        &[],
    )?;
    cargo(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // xtask has no tests; leaving it out spares CI compiling the proto compiler it uses.
    cargo(&["test", "--workspace", "--exclude", "xtask"], &[])?;
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_fuzz {
        fuzz(20)?;
    } else {
        println!(
            "==> SKIPPED fuzz smoke: cargo-fuzz is not installed (cargo install cargo-fuzz; .ci/run does)"
        );
    }
    Ok(())
}

/// Runs every fuzz target for `seconds`; a crash fails with the reproducer's path.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let limit = format!("-max_total_time={seconds}");
    for target in FUZZ_TARGETS {
        cargo(
            &["fuzz", "run", target, "--", &limit],
            &[("RUSTC_BOOTSTRAP", "1")],
        )?;
    }
    Ok(())
}

/// Generates Rust for `crates/casket-remote/proto` into `crates/casket-remote/src/generated`,
/// with a pure-Rust proto compiler, so building casket never needs protoc. REAPI types come from
/// the `bazel-remote-apis` crate.
fn codegen() -> anyhow::Result<()> {
    // BuildStream's ReferenceStorage (casket serve) and BuildGrid's LocalCAS (casket casd).
    for (root, proto) in [
        ("crates/casket-remote", "buildstream/v2/buildstream.proto"),
        ("crates/casket-casd", "build/buildgrid/local_cas.proto"),
    ] {
        let fds = protox::compile([proto], [format!("{root}/proto")])?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .extern_path(
                ".build.bazel.remote.execution.v2",
                "::bazel_remote_apis::build::bazel::remote::execution::v2",
            )
            .compile_well_known_types(true)
            .extern_path(".google.rpc", "::bazel_remote_apis::google::rpc")
            .extern_path(".google.protobuf", "::bazel_remote_apis::google::protobuf")
            .out_dir(format!("{root}/src/generated"))
            .compile_fds(fds)?;
        println!("==> generated {root}/src/generated");
    }
    Ok(())
}

fn cargo(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
