//! Local store workloads (issue 2):
//! * capture of 10,000 files of 4 KiB vs BuildStream 1.6.8's import (`client.py import`);
//! * capture of one large file vs `openssl dgst -sha256` of it;
//! * hardlink checkout of the 10,000-file tree vs `cp -r`.
//!
//! Every measurement is repeated; the table reports the minimum and the median wall time and
//! the ratios of the medians. BuildStream's time is its own in-process `import` phase, so its
//! interpreter start-up is not counted against it; casket's is the whole process.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::{Options, Row, bst_import_seconds, generate, output, render, timed, warm, write_section};

/// Runs the local-store workloads and writes their table.
pub(crate) fn run(options: &Options, casket: &Path) -> anyhow::Result<()> {
    let client = options.shared.join("peers/bst1/client.py");
    let gen_tree = options.shared.join("peers/gen_tree.py");

    let work = &options.work;
    fs::create_dir_all(work)?;
    let small = work.join("tree-10k-4k");
    let large = work.join(format!("tree-1x{}m", options.large_mib));
    generate(
        &gen_tree,
        &small,
        &["--files", "10000", "--size", "4096", "--dirs", "200"],
    )?;
    let large_arg = format!("1:{}", options.large_mib << 20);
    generate(
        &gen_tree,
        &large,
        &["--files", "0", "--dirs", "0", "--large", &large_arg],
    )?;
    let large_file = large.join("large0.bin");
    warm(&small)?;
    warm(&large)?;

    let runs = work.join(format!("runs-{}", std::process::id()));
    fs::create_dir_all(&runs)?;
    let mut capture_small = Vec::new();
    let mut bst_import = Vec::new();
    let mut capture_large = Vec::new();
    let mut openssl = Vec::new();
    let mut checkout = Vec::new();
    let mut cp = Vec::new();
    let shared_store = runs.join("checkout-store");
    let root = output(
        Command::new(casket)
            .arg("--store")
            .arg(&shared_store)
            .args(["-q", "capture"])
            .arg(&small),
    )?;
    for rep in 0..options.reps {
        let dir = runs.join(format!("rep{rep}"));
        fs::create_dir_all(&dir)?;
        capture_small.push(timed(
            Command::new(casket)
                .arg("--store")
                .arg(dir.join("s1"))
                .args(["-q", "capture"])
                .arg(&small),
        )?);
        bst_import.push(bst_import_seconds(&client, &dir.join("bst"), &small)?);
        capture_large.push(timed(
            Command::new(casket)
                .arg("--store")
                .arg(dir.join("s2"))
                .args(["-q", "capture"])
                .arg(&large),
        )?);
        openssl.push(timed(
            Command::new("openssl").args(["dgst", "-sha256"]).arg(&large_file),
        )?);
        checkout.push(timed(
            Command::new(casket)
                .arg("--store")
                .arg(&shared_store)
                .args(["-q", "checkout", root.trim()])
                .arg(dir.join("checkout")),
        )?);
        cp.push(timed(
            Command::new("cp").arg("-r").arg(&small).arg(dir.join("cp")),
        )?);
    }

    let rows = [
        Row::new(
            "capture 10,000 x 4 KiB",
            &capture_small,
            "BuildStream 1.6.8 import",
            &bst_import,
            ">= 15x",
        ),
        Row::new(
            &format!("capture 1 x {} MiB", options.large_mib),
            &capture_large,
            "openssl dgst -sha256",
            &openssl,
            ">= 0.77x (casket <= 1.3x its time)",
        ),
        Row::new(
            "checkout 10,000 x 4 KiB (hardlink)",
            &checkout,
            "cp -r",
            &cp,
            ">= 5x",
        ),
    ];
    let table = render(&rows, options, "Wall seconds");
    println!("{table}");
    write_section(Path::new("docs/benchmarks.md"), "local-store", &table)?;
    // Removing tens of thousands of files makes ext4 allocate new inodes slowly for minutes
    // after (it avoids recently deleted ones), which would distort the next measurement.
    println!(
        "left {} in place; remove it when no benchmark is about to run",
        runs.display()
    );
    Ok(())
}
