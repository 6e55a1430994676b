//! `vhdkit repair FILE`: today, finish an interrupted vhdkit change (VHD journal) and replay a
//! dirty VHDX log to the file.

use vhdkit::repair::{self, JournalOutcome, LogOutcome, RepairOptions};

use crate::cli::RepairArgs;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &RepairArgs) -> Result<Outcome, CliError> {
    let mut opts = RepairOptions::default().dry_run(a.dry_run);
    for d in &a.confine {
        opts = opts.confine(d.clone());
    }
    let report = repair::repair(&a.file, &opts)?;
    if a.json {
        output::print_json(&report)?;
    } else if output::text_wanted() {
        let j = report.journal_path.display();
        let line = match &report.journal {
            JournalOutcome::None => "no interrupted vhdkit change: nothing to do".to_string(),
            JournalOutcome::Finished { writes } => {
                format!("finished the interrupted change recorded in {j} ({writes} ranges written); journal removed")
            }
            JournalOutcome::WouldFinish { writes } => {
                format!("dry run: would finish the interrupted change recorded in {j} ({writes} ranges)")
            }
            JournalOutcome::RemovedLeftover => {
                format!("the change recorded in {j} was already complete; journal removed")
            }
            JournalOutcome::WouldRemoveLeftover => {
                format!("dry run: the change recorded in {j} is complete; would remove the journal")
            }
            JournalOutcome::Foreign { reason } => format!(
                "the journal {j} does not belong to the file as it is now ({reason}); it was NOT applied and was left in place"
            ),
            other => format!("journal {j}: {other:?}"),
        };
        println!("{}: {line}", a.file.display());
        if let Some(l) = &report.vhdx_log {
            let line = match l {
                LogOutcome::Clean => "vhdx log: clean, nothing to replay".to_string(),
                LogOutcome::Replayed(r) => format!(
                    "vhdx log: replayed to the file ({} entries, sequence {}..{}); log marked clean",
                    r.entries, r.first_sequence, r.last_sequence
                ),
                LogOutcome::WouldReplay(r) => format!(
                    "dry run: vhdx log is dirty; would replay it to the file ({} entries, sequence {}..{})",
                    r.entries, r.first_sequence, r.last_sequence
                ),
                other => format!("vhdx log: {other:?}"),
            };
            println!("{}: {line}", a.file.display());
        }
        for r in &report.structures {
            println!("{}: {} ({})", a.file.display(), r.action, r.code);
        }
        for f in &report.unrepaired {
            let at = f.offset.map_or_else(String::new, |o| format!(" at {o:#x}"));
            println!(
                "{}: not repaired (not certain to lose nothing): {} {} [{}{at}] {}",
                a.file.display(),
                f.severity.as_str(),
                f.code,
                f.structure,
                f.message
            );
        }
    }
    if report.needs_attention() {
        if matches!(report.journal, JournalOutcome::Foreign { .. }) {
            eprintln!(
                "vhdkit: refused: {}: foreign journal {} not applied",
                a.file.display(),
                report.journal_path.display()
            );
        } else {
            eprintln!(
                "vhdkit: {}: {} problem(s) left that repair does not fix; see `vhdkit check`",
                a.file.display(),
                report.unrepaired.len()
            );
        }
        return Ok(Outcome::Findings);
    }
    Ok(Outcome::Ok)
}
