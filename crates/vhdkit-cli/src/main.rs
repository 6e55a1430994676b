//! The `vhdkit` binary: parse, dispatch, map the outcome to an exit code. All disk logic lives
//! in the `vhdkit` library.

#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// What a command concluded, beyond success.
pub enum Outcome {
    /// Everything fine: exit 0.
    Ok,
    /// Findings or a refusal (a broken chain): exit 1.
    Findings,
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let json = cmd::wants_json(&cli.command);
    match cmd::run(cli.command) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Findings) => ExitCode::from(1),
        Err(e) => {
            output::print_error(&e, json);
            ExitCode::from(e.exit_code())
        }
    }
}
