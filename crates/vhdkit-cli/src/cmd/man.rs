//! `vhdkit man [--out DIR]`: manual pages generated from the command-line definition, one per
//! command (`vhdkit.1`, `vhdkit-info.1`, ...).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};

use crate::cli::Cli;
use crate::output::{self, CliError};
use crate::Outcome;

/// `vhdkit man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write every page (`vhdkit.1` and one `vhdkit-COMMAND.1` per command) into this folder,
    /// created when missing, replacing pages of the same name; print the paths written (not with
    /// --quiet).
    /// Without it, print the `vhdkit.1` page on stdout (`vhdkit man | man -l -`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(a: &ManArgs) -> Result<Outcome, CliError> {
    let pages = pages()?;
    let mut out = std::io::stdout().lock();
    match &a.out {
        None => {
            if let Some((_, text)) = pages.first() {
                out.write_all(text)?;
            }
        }
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|e| lib_io("creating the folder", e, dir))?;
            for (name, text) in &pages {
                let path = dir.join(name);
                replace(&path, text)?;
                if output::text_wanted() {
                    writeln!(out, "{}", path.display())?;
                }
            }
        }
    }
    out.flush()?;
    Ok(Outcome::Ok)
}

/// Every page as (file name, roff text), the top-level page first.
fn pages() -> Result<Vec<(String, Vec<u8>)>, CliError> {
    let mut cmd = Cli::command();
    // Building gives each subcommand its display name (`vhdkit-info`), which names its page.
    cmd.build();
    let subcommands = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .cloned();
    std::iter::once(cmd.clone())
        .chain(subcommands)
        .map(|c| {
            // Every page's footer names the package version, not only the top-level one.
            let man =
                clap_mangen::Man::new(c).source(format!("vhdkit {}", env!("CARGO_PKG_VERSION")));
            let mut text = Vec::new();
            man.render(&mut text)?;
            Ok((man.get_filename(), text))
        })
        .collect()
}

/// Write `path` whole or not at all: a fresh temporary name beside it, then a rename, which
/// replaces a previous page (or a link of that name, never its target).
fn replace(path: &Path, text: &[u8]) -> Result<(), CliError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text).and_then(|()| f.sync_all()));
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(lib_io("writing the man page", e, path));
    }
    Ok(())
}

fn lib_io(what: &str, e: std::io::Error, path: &Path) -> CliError {
    CliError::Lib(vhdkit::Error::io(what, e).with_path(path))
}
