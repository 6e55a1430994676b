//! `vhdkit convert --to raw SRC DST`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use vhdkit::convert::{self, ConvertOptions};
use vhdkit::Chain;

use crate::cli::{ConvertArgs, OutputFormat};
use crate::cmd::chain_options;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &ConvertArgs) -> Result<Outcome, CliError> {
    let opts = chain_options(&a.resolve)?;
    let chain = Chain::open(&a.src, &opts)?;
    let view = chain.into_view();
    let size = view.virtual_size();
    let bar = if !a.no_progress && !a.json && std::io::stderr().is_terminal() {
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
    let copts = ConvertOptions::default().overwrite(a.force);
    let stats = match a.to {
        OutputFormat::Raw => convert::to_raw(&view, &a.dst, &copts, |done| {
            if let Some(b) = &bar {
                b.set_position(done);
            }
        }),
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let stats = stats?;
    if a.json {
        output::print_json(&serde_json::json!({
            "src": a.src,
            "dst": a.dst,
            "format": "raw",
            "stats": stats,
        }))?;
    } else {
        println!(
            "{} -> {}: {} virtual, {} written, {} left sparse",
            a.src.display(),
            a.dst.display(),
            output::size(stats.virtual_size),
            output::size(stats.bytes_written),
            output::size(stats.bytes_skipped)
        );
    }
    Ok(Outcome::Ok)
}
