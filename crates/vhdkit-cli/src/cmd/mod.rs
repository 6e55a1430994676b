//! One module per subcommand: call the library, render the result.

mod chain;
mod check;
mod compact;
pub mod completions;
mod convert;
mod create;
mod flatten;
mod info;
pub mod man;
mod map;
mod merge;
mod planned;
mod progress;
mod relink;
mod repair;
mod reparent;
mod resize;
mod serve;
mod share;

use crate::cli::{Command, ResolveArgs};
use crate::output::CliError;
use crate::Outcome;

/// Whether the command asked for JSON (errors are then printed as JSON too).
pub fn wants_json(c: &Command) -> bool {
    match c {
        Command::Info(a) => a.json,
        Command::Check(a) => a.json,
        Command::Chain(a) => a.json,
        Command::Convert(a) => a.json,
        Command::Reparent(a) => a.json,
        Command::Flatten(a) => a.json,
        Command::Merge(a) => a.json,
        Command::Compact(a) => a.json,
        Command::Resize(a) => a.json,
        Command::Repair(a) => a.json,
        Command::Create(a) => a.json,
        Command::Share(a) => a.json,
        Command::Relink(a) => a.json,
        Command::Map(a) => a.json,
        Command::Serve(a) => a.json,
        Command::Completions(_) | Command::Man(_) => false,
    }
}

/// Run a command.
pub fn run(c: Command) -> Result<Outcome, CliError> {
    match c {
        Command::Info(a) => info::run(&a),
        Command::Check(a) => check::run(&a),
        Command::Chain(a) => chain::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Reparent(a) => reparent::run(&a),
        Command::Flatten(a) => flatten::run(&a),
        Command::Merge(a) => merge::run(&a),
        Command::Compact(a) => compact::run(&a),
        Command::Resize(a) => resize::run(&a),
        Command::Repair(a) => repair::run(&a),
        Command::Create(a) => create::run(&a),
        Command::Share(a) => share::run(&a),
        Command::Relink(a) => relink::run(&a),
        Command::Map(a) => map::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Completions(a) => completions::run(&a),
        Command::Man(a) => man::run(&a),
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
    Ok(confined(o, &r.confine))
}

/// Chain options with `--confine` folders added.
pub fn confined(mut o: vhdkit::ChainOptions, dirs: &[std::path::PathBuf]) -> vhdkit::ChainOptions {
    for d in dirs {
        o = o.confine(d.clone());
    }
    o
}

/// A size argument (`--size`, `--block-size`).
pub fn size_arg(s: &str) -> Result<u64, CliError> {
    Ok(vhdkit::parse_size(s)?)
}

/// A block size argument: a size that fits 32 bits.
pub fn block_size_arg(s: Option<&str>) -> Result<Option<u32>, CliError> {
    s.map(|s| {
        let v = size_arg(s)?;
        u32::try_from(v).map_err(|_| {
            CliError::Lib(vhdkit::Error::InvalidArgument(format!(
                "block size {v} is too large"
            )))
        })
    })
    .transpose()
}

/// A dry run's predicted refusal, said to be one (the real run would be refused the same way).
pub(crate) fn dry_run_note(e: vhdkit::Error) -> vhdkit::Error {
    let note = |reason: String| format!("{reason} (dry run: the real run would be refused)");
    match e {
        vhdkit::Error::Locked { path, reason } => vhdkit::Error::Locked {
            path,
            reason: note(reason),
        },
        vhdkit::Error::Refused { path, reason } => vhdkit::Error::Refused {
            path,
            reason: note(reason),
        },
        e => e,
    }
}
