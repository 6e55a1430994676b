//! The shape every plan/apply command shares (flatten, merge, and the writers that follow):
//! plan, then either show the plan and the first refusal the real run would meet (dry run), or
//! apply with a progress bar and show plan and report. Written once so each new command only
//! says how to apply and how to render.

use crate::cmd::progress::Bar;
use crate::output::{self, CliError};
use crate::Outcome;

/// A planned change: what a command needs to run it, dry or for real.
pub(crate) trait Planned: serde::Serialize {
    type Report: serde::Serialize;
    /// The real run's first refusal (a read-only or locked file, a journal that cannot be
    /// written beside it), found the way the real run would meet it.
    fn refusal(&self) -> Option<vhdkit::Error>;
    fn apply(&self, bar: &mut Bar) -> Result<Self::Report, vhdkit::Error>;
    fn render_plan(&self) -> String;
    fn render_report(&self, s: &mut String, report: &Self::Report);
}

/// Runs `plan` the way every plan/apply command does; `--json` prints `applied`, `plan` and
/// (after a real run) `report`.
pub(crate) fn run<P: Planned>(plan: &P, dry_run: bool, json: bool) -> Result<Outcome, CliError> {
    if dry_run {
        if let Some(e) = plan.refusal() {
            return Err(CliError::Lib(super::dry_run_note(e)));
        }
        if json {
            output::print_json(&serde_json::json!({ "applied": false, "plan": plan }))?;
        } else if output::text_wanted() {
            print!("{}", plan.render_plan());
            println!("dry run: nothing written");
        }
        return Ok(Outcome::Ok);
    }
    let mut bar = Bar::new(json);
    let report = plan.apply(&mut bar);
    drop(bar);
    let report = report?;
    if json {
        output::print_json(&serde_json::json!({
            "applied": true,
            "plan": plan,
            "report": report,
        }))?;
    } else if output::text_wanted() {
        let mut s = plan.render_plan();
        plan.render_report(&mut s, &report);
        print!("{s}");
    }
    Ok(Outcome::Ok)
}
