//! The `vhdkit` binary: parse, dispatch, map the outcome to an exit code. All disk logic lives
//! in the `vhdkit` library.

#![forbid(unsafe_code)]

// Every `print!`/`println!` of this binary goes through `output::out`: std's macros panic (with
// a backtrace) when stdout cannot be written (`>/dev/full`); these remember the first failure,
// skip later output, and `main` reports it as one line with exit 2.
macro_rules! print {
    ($($t:tt)*) => {
        $crate::output::out(format_args!($($t)*), false)
    };
}
macro_rules! println {
    () => {
        $crate::output::out(format_args!(""), true)
    };
    ($($t:tt)*) => {
        $crate::output::out(format_args!($($t)*), true)
    };
}

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
    let result = cmd::run(cli.command);
    let stdout_failed = output::stdout_failure();
    match (result, stdout_failed) {
        (Err(e), _) => {
            output::print_error(&e, json);
            ExitCode::from(e.exit_code())
        }
        (Ok(_), Some(e)) => {
            output::print_error(&e, false);
            ExitCode::from(e.exit_code())
        }
        (Ok(Outcome::Ok), None) => ExitCode::SUCCESS,
        (Ok(Outcome::Findings), None) => ExitCode::from(1),
    }
}
