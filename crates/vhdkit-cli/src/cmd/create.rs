//! `vhdkit create OUT [--size SIZE] [--fixed] [--parent PARENT] [--block-size N]
//! [--logical-sector-size 512|4096] [--format F]`.

use vhdkit::CreateParams;
use vhdkit::DiskFormat;

use crate::cli::{CreateArgs, DiskFormatArg};
use crate::cmd::{block_size_arg, chain_options, size_arg};
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &CreateArgs) -> Result<Outcome, CliError> {
    let mut p = CreateParams::default().chain_options(chain_options(&a.resolve)?);
    p.size = a.size.as_deref().map(size_arg).transpose()?;
    p.fixed = a.fixed;
    p.parent = a.parent.clone();
    p.block_size = block_size_arg(a.block_size.as_deref())?;
    p.logical_sector_size = a
        .logical_sector_size
        .as_deref()
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| vhdkit::Error::InvalidArgument(format!("logical sector size '{s}'")))
        })
        .transpose()?;
    p.format = a.format.map(|f| match f {
        DiskFormatArg::Vhd => DiskFormat::Vhd,
        DiskFormatArg::Vhdx => DiskFormat::Vhdx,
    });
    let c = vhdkit::create(&a.out, &p)?;
    if a.json {
        output::print_json(&c)?;
    } else if output::text_wanted() {
        let block = c
            .block_size
            .map(|b| format!(", {} blocks", output::size(b)))
            .unwrap_or_default();
        let parent = c
            .parent
            .as_ref()
            .map(|p| format!(" over {}", p.display()))
            .unwrap_or_default();
        println!(
            "created {}: {} {} {}{}{}, id {}",
            c.path.display(),
            c.format,
            c.disk_type,
            output::size(c.virtual_size),
            block,
            parent,
            c.id
        );
    }
    Ok(Outcome::Ok)
}
