//! `vhdkit chain FILE`.

use std::fmt::Write as _;

use vhdkit::Chain;

use crate::cli::ChainArgs;
use crate::cmd::chain_options;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &ChainArgs) -> Result<Outcome, CliError> {
    let opts = chain_options(&a.resolve)?;
    let report = Chain::inspect(&a.file, &opts)?;
    if a.json {
        output::print_json(&report)?;
    } else if output::text_wanted() {
        let mut s = String::new();
        let n = report.links.len();
        let _ = writeln!(
            s,
            "chain of {n} disk{}: {}",
            if n == 1 { "" } else { "s" },
            if report.intact { "intact" } else { "BROKEN" }
        );
        for (i, l) in report.links.iter().enumerate() {
            let _ = writeln!(
                s,
                "[{i}] {}\n    {} {}, {}, id {}",
                l.path.display(),
                l.format,
                l.disk_type,
                output::size(l.virtual_size),
                l.id
            );
            for w in &l.warnings {
                let _ = writeln!(s, "    warning: {w}");
            }
            if let Some(p) = &l.parent {
                match (&p.path, &p.via) {
                    (Some(path), Some(via)) => {
                        let which = match p.id_match {
                            Some(vhdkit::IdMatch::Alternate) => "alternate linkage",
                            _ => "linkage",
                        };
                        let _ = writeln!(
                            s,
                            "    parent {} found via {via}: {} ({which} ok)",
                            p.expected_id,
                            path.display()
                        );
                    }
                    _ => {
                        let _ = writeln!(s, "    parent {} NOT FOUND; tried:", p.expected_id);
                        for t in &p.tried {
                            let _ = writeln!(
                                s,
                                "      {} ({}): {}",
                                t.path.display(),
                                t.via,
                                t.outcome
                            );
                        }
                        if p.tried.is_empty() {
                            let _ = writeln!(s, "      nothing: no usable locator");
                        }
                    }
                }
                for w in &p.warnings {
                    let _ = writeln!(s, "    warning: {w}");
                }
                for n in &p.notes {
                    let _ = writeln!(s, "    note: {n}");
                }
            }
        }
        print!("{s}");
    }
    match &report.broken {
        None => Ok(Outcome::Ok),
        Some(broken) => {
            let reason = output::cli_words(&broken.to_string()).replace('\n', " ");
            eprintln!("vhdkit: chain broken: {reason}");
            Ok(Outcome::Findings)
        }
    }
}
