//! `vhdkit convert --to raw|vhd|vhdx [--fixed] [--from raw] SRC DST`.

use indicatif::{ProgressBar, ProgressStyle};
use vhdkit::convert::{self, ConvertOptions, RawSource, VirtualSource};
use vhdkit::Chain;

use crate::cli::{ConvertArgs, InputFormat, OutputFormat};
use crate::cmd::{block_size_arg, chain_options};
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &ConvertArgs) -> Result<Outcome, CliError> {
    let opts = chain_options(&a.resolve)?;
    if a.to == OutputFormat::Raw && (a.fixed || a.block_size.is_some()) {
        return Err(CliError::Lib(vhdkit::Error::InvalidArgument(
            "--fixed and --block-size apply to --to vhd and --to vhdx only".into(),
        )));
    }
    let block_size = block_size_arg(a.block_size.as_deref())?;
    let view: Box<dyn VirtualSource> = if a.from == Some(InputFormat::Raw) || is_raw(&a.src)? {
        Box::new(RawSource::open(&a.src)?)
    } else {
        Box::new(Chain::open(&a.src, &opts)?.into_view())
    };
    let size = view.virtual_size();
    let bar = if output::progress_shown(a.json) {
        let b = ProgressBar::new(size);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let copts = ConvertOptions::default()
        .overwrite(a.force)
        .fixed(a.fixed)
        .block_size(block_size);
    let progress = |done| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    };
    let stats = match a.to {
        OutputFormat::Raw => convert::to_raw(&*view, &a.dst, &copts, progress),
        OutputFormat::Vhd => convert::to_vhd(&*view, &a.dst, &copts, progress),
        OutputFormat::Vhdx => convert::to_vhdx(&*view, &a.dst, &copts, progress),
    };
    let format = match a.to {
        OutputFormat::Raw => "raw",
        OutputFormat::Vhd if a.fixed => "vhd (fixed)",
        OutputFormat::Vhd => "vhd (dynamic)",
        OutputFormat::Vhdx if a.fixed => "vhdx (fixed)",
        OutputFormat::Vhdx => "vhdx (dynamic)",
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let stats = stats?;
    if a.json {
        output::print_json(&serde_json::json!({
            "src": a.src,
            "dst": a.dst,
            "format": match a.to {
                OutputFormat::Raw => "raw",
                OutputFormat::Vhd => "vhd",
                OutputFormat::Vhdx => "vhdx",
            },
            "disk_type": match a.to {
                OutputFormat::Raw => None,
                OutputFormat::Vhd | OutputFormat::Vhdx if a.fixed => Some("fixed"),
                OutputFormat::Vhd | OutputFormat::Vhdx => Some("dynamic"),
            },
            "stats": stats,
        }))?;
    } else if output::text_wanted() {
        println!(
            "{} -> {} ({format}): {} virtual, {} written, {} left sparse",
            a.src.display(),
            a.dst.display(),
            output::size(stats.virtual_size),
            output::size(stats.bytes_written),
            output::size(stats.bytes_skipped)
        );
    }
    Ok(Outcome::Ok)
}

/// A source that is neither VHD nor VHDX (by signature) is a raw image.
fn is_raw(p: &std::path::Path) -> Result<bool, CliError> {
    let f = std::fs::File::open(p)
        .map_err(|e| vhdkit::Error::io("opening the source", e).with_path(p))?;
    match vhdkit::detect(&f) {
        Ok(_) => Ok(false),
        Err(vhdkit::Error::NotADisk { .. }) => Ok(true),
        Err(e) => Err(e.with_path(p).into()),
    }
}
