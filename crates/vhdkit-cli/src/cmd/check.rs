//! `vhdkit check [--json] [--chain] PATH...`: validate disks (and their chains) read-only.
//!
//! Exit status: 0 when no error or warning was found (info findings allowed), 1 when any error
//! or warning was found, 2 when the check could not run (a path that cannot be read).

use vhdkit::check::{self, CheckOptions, FileReport, Severity};

use super::progress::Bar;
use crate::cli::CheckArgs;
use crate::output::{self, CliError};
use crate::Outcome;

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    files: &'a [FileReport],
    /// Paths in the folders that could not be inspected (each has a `tree.*` report in `files`).
    not_inspected: usize,
    errors: usize,
    warnings: usize,
    infos: usize,
    clean: bool,
}

pub fn run(a: &CheckArgs) -> Result<Outcome, CliError> {
    let opts = CheckOptions::default()
        .chain(a.chain)
        .chain_options(super::chain_options(&a.resolve)?);
    let mut bar = Bar::new(a.json);
    let (mut reports, blind) = check::check_tree(&a.paths, &opts, &mut bar)?;
    drop(bar);
    let checked = reports.len();
    let not_inspected = blind.len();
    // Paths in the folders that could not be inspected: a tree is never clean from a partial view.
    reports.extend(blind);
    let count = |s: Severity| {
        reports
            .iter()
            .flat_map(|r| &r.findings)
            .filter(|f| f.severity == s)
            .count()
    };
    let (errors, warnings, infos) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
    );
    let clean = errors == 0 && warnings == 0;
    if a.json {
        output::print_json(&JsonOut {
            files: &reports,
            not_inspected,
            errors,
            warnings,
            infos,
            clean,
        })?;
    } else if output::text_wanted() {
        for r in &reports {
            let fmt = r.format.map_or_else(|| "?".to_string(), |f| f.to_string());
            if r.findings.is_empty() {
                println!("{}: {fmt}: ok", r.path.display());
                continue;
            }
            let status = if r.has_problems() { "problems" } else { "ok" };
            println!("{}: {fmt}: {status}", r.path.display());
            for f in &r.findings {
                let at = f.offset.map_or_else(String::new, |o| format!(" at {o:#x}"));
                println!(
                    "  {:<7} {} [{}{at}] {}",
                    f.severity.as_str(),
                    f.code,
                    f.structure,
                    f.message
                );
            }
        }
        let blind = if not_inspected > 0 {
            format!(", {not_inspected} path(s) could not be inspected")
        } else {
            String::new()
        };
        println!(
            "{} file(s) checked{blind}: {errors} error(s), {warnings} warning(s), {infos} info",
            checked
        );
    }
    Ok(if clean {
        Outcome::Ok
    } else {
        Outcome::Findings
    })
}
