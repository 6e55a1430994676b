//! `vhdkit convert --to raw|vhd|vhdx [--fixed] [--from raw] SRC DST`.

use vhdkit::convert::{self, ConvertOptions, RawSource, VirtualSource};
use vhdkit::Chain;

use crate::cli::{ConvertArgs, InputFormat, OutputFormat};
use crate::cmd::progress::Bar;
use crate::cmd::{block_size_arg, chain_options, size_arg};
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
    let view: Box<dyn VirtualSource> = if a.from == Some(InputFormat::Raw) || guess_raw(&a.src)? {
        Box::new(RawSource::open(&a.src)?)
    } else {
        let chain = Chain::open(&a.src, &opts)?;
        // What the readers warn about (a pending or foreign journal) is not hidden by convert.
        for link in &chain.report().links {
            for w in &link.warnings {
                eprintln!("vhdkit: warning: {}: {w}", link.path.display());
            }
        }
        Box::new(chain.into_view())
    };
    let rounded;
    let view: &dyn VirtualSource = match &a.round_up {
        Some(n) => {
            let size = vhdkit::resize::round_up_size(view.virtual_size(), size_arg(n)?)?;
            rounded = vhdkit::resize::RoundedUp::new(&*view, size)?;
            &rounded
        }
        None => &*view,
    };
    let copts = ConvertOptions::default()
        .overwrite(a.force)
        .fixed(a.fixed)
        .block_size(block_size)
        .no_sync(a.no_sync);
    let mut bar = Bar::new(a.json);
    let stats = match a.to {
        OutputFormat::Raw => convert::to_path(view, &a.dst, convert::Target::Raw, &copts, &mut bar),
        OutputFormat::Vhd => convert::to_path(view, &a.dst, convert::Target::Vhd, &copts, &mut bar),
        OutputFormat::Vhdx => {
            convert::to_path(view, &a.dst, convert::Target::Vhdx, &copts, &mut bar)
        }
    };
    drop(bar);
    let format = match a.to {
        OutputFormat::Raw => "raw",
        OutputFormat::Vhd if a.fixed => "vhd (fixed)",
        OutputFormat::Vhd => "vhd (dynamic)",
        OutputFormat::Vhdx if a.fixed => "vhdx (fixed)",
        OutputFormat::Vhdx => "vhdx (dynamic)",
    };
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

/// A source that is neither VHD nor VHDX (by signature) is a raw image, but only when its name
/// claims nothing: a `.vhd` without a footer is a truncated download, not a raw disk, and reading
/// it as raw would hand the user garbage with exit 0. The guess is said on stderr (as qemu-img
/// does), so a script that meant a disk sees it.
/// True when the file name claims a disk format by its extension (`.vhd`, `.avhd`, `.vhdx`,
/// `.avhdx`, any case).
fn claims_a_disk(p: &std::path::Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["vhd", "avhd", "vhdx", "avhdx"]
            .iter()
            .any(|c| e.eq_ignore_ascii_case(c))
    })
}

fn guess_raw(p: &std::path::Path) -> Result<bool, CliError> {
    match vhdkit::detect_file(p) {
        Ok(_) => Ok(false),
        Err(e @ vhdkit::Error::NotADisk { .. }) => {
            if claims_a_disk(p) {
                return Err(e.into());
            }
            eprintln!(
                "vhdkit: note: {}: not a VHD/VHDX file, reading it as a raw image \
                 (--from raw says so and silences this note)",
                p.display()
            );
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}
