//! Open a differencing chain, print every link and how its parent was found, then hash the
//! whole virtual disk through the chain's `Read + Seek` view.
//!
//! ```sh
//! cargo run -p vhdkit --example inspect_chain -- testdata/lab/vm1/disk.vhdx
//! cargo run -p vhdkit --example inspect_chain -- CHILD [SEARCH_DIR]...
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::ExitCode;

use sha2::{Digest, Sha256};
use vhdkit::{Chain, ChainOptions};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let Some(child) = args.next() else {
        eprintln!("usage: inspect_chain CHILD [SEARCH_DIR]...");
        return ExitCode::from(2);
    };
    // Folders where a parent is looked for by file name when no locator leads to it.
    let opts = args.fold(ChainOptions::default(), |o, dir| o.search_dir(dir));
    match run(&child, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspect_chain: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(child: &std::path::Path, opts: &ChainOptions) -> Result<(), Box<dyn std::error::Error>> {
    // `Chain::open` fails unless every parent is found and has the identity its child records;
    // `Chain::inspect` would report a broken chain instead of failing.
    let chain = Chain::open(child, opts)?;
    for (depth, link) in chain.report().links.iter().enumerate() {
        println!(
            "{depth}: {} ({} {}, {} bytes, id {})",
            link.path.display(),
            link.format,
            link.disk_type,
            link.virtual_size,
            link.id
        );
        if let Some(parent) = &link.parent {
            let via = parent
                .via
                .as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string);
            println!("   parent {} found via {via}", parent.expected_id);
        }
        for w in &link.warnings {
            println!("   warning: {w}");
        }
    }

    let mut view = chain.into_view();
    let size = view.seek(SeekFrom::End(0))?;
    view.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = view.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("sha256 of {size} virtual bytes: {digest}");
    Ok(())
}
