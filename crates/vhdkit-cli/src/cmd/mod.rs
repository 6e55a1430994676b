//! One module per subcommand: call the library, render the result.

mod chain;
mod convert;
mod info;
mod repair;
mod reparent;

use crate::cli::{Command, ResolveArgs};
use crate::output::CliError;
use crate::Outcome;

/// Whether the command asked for JSON (errors are then printed as JSON too).
pub fn wants_json(c: &Command) -> bool {
    match c {
        Command::Info(a) => a.json,
        Command::Chain(a) => a.json,
        Command::Convert(a) => a.json,
        Command::Reparent(a) => a.json,
        Command::Repair(a) => a.json,
    }
}

/// Run a command.
pub fn run(c: Command) -> Result<Outcome, CliError> {
    match c {
        Command::Info(a) => info::run(&a),
        Command::Chain(a) => chain::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Reparent(a) => reparent::run(&a),
        Command::Repair(a) => repair::run(&a),
    }
}

/// Chain options from the command line.
pub fn chain_options(r: &ResolveArgs) -> Result<vhdkit::ChainOptions, CliError> {
    let mut o = vhdkit::ChainOptions::default();
    for d in &r.search {
        o = o.search_dir(d.clone());
    }
    for m in &r.map {
        o = o.path_map(vhdkit::PathMap::parse(m)?);
    }
    Ok(o)
}
