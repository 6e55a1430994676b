//! `vhdkit relink DIR [--search FOLDER ...]`.

use std::fmt::Write as _;

use vhdkit::share::{self, RelinkPlan, RelinkReport, ShareOptions};

use crate::cli::RelinkArgs;
use crate::cmd::progress::{abort_hook, Bar};
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &RelinkArgs) -> Result<Outcome, CliError> {
    let opts = ShareOptions {
        abort_after_steps: abort_hook(),
        ..ShareOptions::default()
    };
    let mut bar = Bar::new(a.json);
    let plan = share::plan_relink(&a.dir, &a.search, &opts, &mut bar)?;
    let findings = plan.has_findings();
    if a.dry_run || plan.nothing_to_do {
        if a.json {
            output::print_json(&serde_json::json!({
                "applied": false,
                "dry_run": a.dry_run,
                "nothing_to_do": plan.nothing_to_do,
                "plan": plan,
            }))?;
        } else if output::text_wanted() {
            print!("{}", render_plan(&plan));
            println!("{}", closing_line(&plan));
        }
        return Ok(if findings {
            Outcome::Findings
        } else {
            Outcome::Ok
        });
    }
    let report = share::apply_relink(&plan, &opts, &mut bar)?;
    if a.json {
        output::print_json(&serde_json::json!({
            "applied": true,
            "nothing_to_do": false,
            "plan": plan,
            "report": report,
        }))?;
    } else if output::text_wanted() {
        print!("{}", render_plan(&plan));
        print!("{}", render_report(&report));
    }
    Ok(
        if findings || !report.refused.is_empty() || !report.failed.is_empty() {
            Outcome::Findings
        } else {
            Outcome::Ok
        },
    )
}

/// The last line of a run that changed nothing; never "nothing to do" alone when findings were
/// listed above it.
fn closing_line(p: &RelinkPlan) -> &'static str {
    match (p.nothing_to_do, p.has_findings()) {
        (true, false) => "nothing to do: every parent resolves through its relative path",
        (true, true) => {
            "nothing to do for the disks that could be inspected; the findings above need a person"
        }
        (false, _) => "dry run: nothing written",
    }
}

fn render_plan(p: &RelinkPlan) -> String {
    let mut s = String::new();
    let refused = p.items.iter().filter(|i| i.refused.is_some()).count();
    let _ = writeln!(
        s,
        "relink {}: {} disks found, {} children to repoint{}",
        p.dir.display(),
        p.disks_found,
        p.items.len().saturating_sub(refused),
        if refused > 0 {
            format!(" ({refused} more refused)")
        } else {
            String::new()
        }
    );
    for it in &p.items {
        let _ = write!(
            s,
            "  {} -> {} ({})",
            it.child.display(),
            it.new_parent.display(),
            it.reason
        );
        if let Some(r) = &it.refused {
            let _ = write!(s, " REFUSED: {r}");
        }
        let _ = writeln!(s);
        for alt in &it.alternatives {
            let _ = writeln!(s, "    (also has the id: {})", alt.display());
        }
    }
    for k in &p.skipped {
        let _ = writeln!(s, "SKIPPED: {}: {}", k.path.display(), k.reason);
    }
    for u in &p.unresolved {
        let _ = writeln!(s, "UNRESOLVED: {}: {}", u.path.display(), u.reason);
    }
    for c in &p.conflicts {
        let _ = writeln!(s, "CONFLICT: {}: {}", c.path.display(), c.reason);
    }
    for u in &p.uninspected {
        let _ = writeln!(s, "UNINSPECTED: {}: {}", u.path.display(), u.reason);
    }
    for n in &p.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

fn render_report(r: &RelinkReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "done: {} children repointed and verified", r.relinked);
    for f in &r.refused {
        let _ = writeln!(s, "REFUSED: {}: {}", f.path.display(), f.reason);
    }
    for f in &r.failed {
        let _ = writeln!(s, "FAILED: {}: {}", f.path.display(), f.reason);
    }
    s
}
