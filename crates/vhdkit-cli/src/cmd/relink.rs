//! `vhdkit relink DIR [--search FOLDER ...]`.

use std::fmt::Write as _;

use vhdkit::share::{self, RelinkPlan, RelinkReport};

use crate::cli::RelinkArgs;
use crate::cmd::progress::Bar;
use crate::cmd::share::{listed, notes, show_and_apply, tree_options, tree_plan, uninspected};
use crate::output::CliError;
use crate::Outcome;

pub fn run(a: &RelinkArgs) -> Result<Outcome, CliError> {
    let opts = tree_options(&a.confine);
    let mut bar = Bar::new(a.json);
    let plan = share::plan_relink(&a.dir, &a.search, &opts, &mut bar)?;
    show_and_apply(&plan, &opts, &mut bar, a.json, a.dry_run)
}

const ALL_DONE: &str = "nothing to do: every parent resolves through its relative path";
tree_plan!(RelinkPlan, RelinkReport, share::apply_relink, ALL_DONE);

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
    listed(&mut s, "SKIPPED", notes(&p.skipped));
    listed(&mut s, "UNRESOLVED", notes(&p.unresolved));
    listed(&mut s, "CONFLICT", notes(&p.conflicts));
    listed(&mut s, "UNINSPECTED", uninspected(&p.uninspected));
    for n in &p.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

fn render_report(r: &RelinkReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "done: {} children repointed and verified", r.relinked);
    listed(&mut s, "REFUSED", notes(&r.refused));
    listed(&mut s, "FAILED", notes(&r.failed));
    s
}
