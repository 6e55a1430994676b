//! `vhdkit map DISK [--json]`: which file of the chain holds each run of the virtual disk, in
//! the shape of `qemu-img map --output=json`.
//!
//! Runs are printed as the library produces them (merged, one at a time): a 64 TiB sparse disk
//! is a few lines and no list is ever held, JSON included.

use std::io::{BufWriter, Write};
use std::path::Path;

use vhdkit::{Chain, ChainView, MapExtent};

use crate::cli::MapArgs;
use crate::cmd::chain_options;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &MapArgs) -> Result<Outcome, CliError> {
    let opts = chain_options(&a.resolve)?;
    let chain = Chain::open(&a.file, &opts)?;
    for link in &chain.report().links {
        for w in &link.warnings {
            eprintln!("vhdkit: warning: {}: {w}", link.path.display());
        }
    }
    let view = chain.into_view();
    if !a.json && !output::text_wanted() {
        // Still walk the chain: --quiet keeps the exit status meaningful.
        for e in view.extents(0, u64::MAX) {
            e?;
        }
        return Ok(Outcome::Ok);
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    let r = if a.json {
        write_json(&view, &mut out)
    } else {
        write_text(&view, &mut out)
    };
    out.flush()?;
    r.map(|()| Outcome::Ok)
}

/// qemu-img's `depth` (the layer that decided, the last one when none holds the run) and the
/// file of that layer.
fn depth_and_file<'v>(view: &'v ChainView, e: &MapExtent) -> (usize, Option<&'v Path>) {
    let depth = e
        .layer
        .unwrap_or_else(|| view.layers().len().saturating_sub(1));
    let file = e
        .layer
        .and_then(|l| view.layers().get(l))
        .and_then(|d| d.path());
    (depth, file)
}

/// One JSON object per run, one per line inside an array, as `qemu-img map --output=json`
/// prints them, plus `file`: the path of the disk that holds the run (absent when none does).
fn write_json(view: &ChainView, out: &mut impl Write) -> Result<(), CliError> {
    out.write_all(b"[")?;
    let mut first = true;
    let mut result = Ok(());
    for e in view.extents(0, u64::MAX) {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                result = Err(err.into());
                break;
            }
        };
        let (depth, file) = depth_and_file(view, &e);
        // Written by hand to keep qemu-img's key order (serde_json's maps sort their keys).
        let mut obj = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {depth}, \"present\": {}, \
             \"zero\": {}, \"data\": {}",
            e.start,
            e.length,
            e.layer.is_some(),
            e.zero,
            e.data
        );
        if let Some(o) = e.file_offset {
            obj.push_str(&format!(", \"offset\": {o}"));
        }
        if let Some(f) = file {
            let name = serde_json::Value::from(f.display().to_string());
            obj.push_str(&format!(", \"file\": {name}"));
        }
        obj.push('}');
        if !first {
            out.write_all(b",\n")?;
        }
        first = false;
        out.write_all(obj.as_bytes())?;
    }
    // The array is closed even after an error, so what was printed stays valid JSON.
    out.write_all(b"]\n")?;
    result
}

/// A table: one line per run.
fn write_text(view: &ChainView, out: &mut impl Write) -> Result<(), CliError> {
    writeln!(
        out,
        "{:>18} {:>18} {:>5} {:<4} {:>18}  FILE",
        "START", "LENGTH", "DEPTH", "KIND", "OFFSET"
    )?;
    for e in view.extents(0, u64::MAX) {
        let e = e?;
        let (depth, file) = depth_and_file(view, &e);
        let kind = match (e.data, e.layer) {
            (true, _) => "data",
            (false, Some(_)) => "zero",
            (false, None) => "hole",
        };
        let offset = e
            .file_offset
            .map_or_else(|| "-".to_string(), |o| format!("{o:#x}"));
        let file = file.map_or_else(|| "-".to_string(), |f| f.display().to_string());
        writeln!(
            out,
            "{:>#18x} {:>#18x} {depth:>5} {kind:<4} {offset:>18}  {file}",
            e.start, e.length
        )?;
    }
    Ok(())
}
