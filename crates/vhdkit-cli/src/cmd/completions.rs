//! `vhdkit completions SHELL`: the shell completion script, generated from the command-line
//! definition so it never lags behind it.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::cli::Cli;
use crate::output::CliError;
use crate::Outcome;

/// `vhdkit completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, powershell or elvish. Load it with, e.g.,
    /// `source <(vhdkit completions bash)`, or save it where the shell looks for completions.
    pub shell: Shell,
}

/// The script is printed even with --quiet: it is what was asked for, not a report.
pub fn run(a: &CompletionsArgs) -> Result<Outcome, CliError> {
    // clap_complete panics when its writer fails: render into memory, then write stdout
    // ourselves so a closed pipe is an ordinary (silent) error.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "vhdkit", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(Outcome::Ok)
}
