//! Repoint a differencing disk at another copy of its parent: plan (reads only), show every
//! field that changes, then apply crash-safely unless `--dry-run` is given.
//!
//! ```sh
//! # on a copy of the bundled exported lab: Web01's child at Web02's identical parent copy
//! cp -r testdata/exported-lab /tmp/lab
//! cargo run -p vhdkit --example repoint -- \
//!     "/tmp/lab/Web01/Virtual Hard Disks/Web01.avhdx" "/tmp/lab/Web02/Virtual Hard Disks/Base-2022.vhdx"
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vhdkit::reparent::{self, ReparentOptions};
use vhdkit::{Chain, ChainOptions};

fn main() -> ExitCode {
    let mut dry_run = false;
    let mut paths = Vec::new();
    for a in std::env::args_os().skip(1) {
        if a == "--dry-run" {
            dry_run = true;
        } else {
            paths.push(PathBuf::from(a));
        }
    }
    let [child, new_parent] = paths.as_slice() else {
        eprintln!("usage: repoint [--dry-run] CHILD NEW_PARENT");
        return ExitCode::from(2);
    };
    match run(child, new_parent, dry_run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A refusal (another identity, another size, a loop...) lands here too, with the
            // child untouched.
            eprintln!("repoint: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(child: &Path, new_parent: &Path, dry_run: bool) -> Result<(), Box<dyn std::error::Error>> {
    let opts = ReparentOptions {
        new_parent: new_parent.to_path_buf(),
        ..ReparentOptions::default()
    };
    let plan = reparent::plan(child, &opts)?;
    println!(
        "{} ({}) -> {}",
        plan.child.display(),
        plan.format,
        plan.new_parent_resolved.display()
    );
    for c in plan.changes() {
        println!(
            "  {} / {}: {:?} -> {:?}",
            c.structure, c.field, c.old, c.new
        );
    }
    for w in &plan.warnings {
        println!("  warning: {w}");
    }
    println!("  {} bytes to write", plan.bytes_written());
    if dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }

    let applied = reparent::apply(&plan)?;
    println!(
        "applied: {} bytes in {} ranges",
        applied.bytes_written, applied.writes
    );
    // Prove it: the chain now opens through the new parent.
    let chain = Chain::open(child, &ChainOptions::default())?;
    if let Some(parent) = chain.report().links.get(1) {
        println!("chain now reads through {}", parent.path.display());
    }
    Ok(())
}
