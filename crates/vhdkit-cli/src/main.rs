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

use clap::error::ErrorKind;
use clap::Parser;

/// What a command concluded, beyond success.
pub enum Outcome {
    /// Everything fine: exit 0.
    Ok,
    /// Findings or a refusal (a broken chain): exit 1.
    Findings,
}

/// Exit status of a usage error (unknown flag, missing or malformed argument): a bad argument
/// is a refusal, as the README's exit-code table says, and as the library's own argument
/// checks (`--map`, `--size`) already exit.
const USAGE_EXIT: u8 = 1;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    output::set_verbosity(output::Verbosity {
        quiet: cli.quiet,
        no_progress: cli.no_progress,
    });
    output::set_command(&cli.command);
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

/// `--help` and `--version` succeed; anything else clap rejects is one line on stderr (and the
/// JSON error object on stdout when `--json` appears anywhere on the command line).
fn usage_error(e: &clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let line = usage_line(e);
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    output::print_usage_error(&line, USAGE_EXIT, json);
    ExitCode::from(USAGE_EXIT)
}

/// clap's message (several lines: the error, a tip, the usage) folded into one line.
fn usage_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "no command given (see `vhdkit --help`)".into();
    }
    let text = e.render().to_string();
    let mut what = Vec::new();
    let mut usage = None;
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = l.strip_prefix("Usage: ") {
            usage = Some(u);
            break;
        }
        if !l.starts_with("tip:") && !l.starts_with("For more information") {
            what.push(l.strip_prefix("error: ").unwrap_or(l));
        }
    }
    let what = if what.is_empty() {
        "bad arguments".to_string()
    } else {
        what.join(" ")
    };
    match usage {
        Some(u) => format!("{what} (usage: {u}; see --help)"),
        None => format!("{what} (see --help)"),
    }
}
