//! `vhdkit relink DIR [--search FOLDER ...]`.

use std::fmt::Write as _;

use vhdkit::share::{self, RelinkPlan, RelinkReport, ShareOptions};

use crate::cli::RelinkArgs;
use crate::cmd::progress::Bar;
use crate::cmd::share::{listed, notes, show_and_apply, tree_options, TreePlan};
use crate::output::CliError;
use crate::Outcome;

pub fn run(a: &RelinkArgs) -> Result<Outcome, CliError> {
    let opts = tree_options(&a.confine);
    let mut bar = Bar::new(a.json);
    let plan = share::plan_relink(&a.dir, &a.search, &opts, &mut bar)?;
    show_and_apply(&plan, &opts, &mut bar, a.json, a.dry_run)
}

impl TreePlan for RelinkPlan {
    type Report = RelinkReport;

    fn nothing_to_do(&self) -> bool {
        self.nothing_to_do
    }

    fn has_findings(&self) -> bool {
        RelinkPlan::has_findings(self)
    }

    fn all_done_line(&self) -> &'static str {
        "nothing to do: every parent resolves through its relative path"
    }

    fn render(&self) -> String {
        render_plan(self)
    }

    fn apply(&self, opts: &ShareOptions, bar: &mut Bar) -> vhdkit::Result<RelinkReport> {
        share::apply_relink(self, opts, bar)
    }

    fn render_report(r: &RelinkReport) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "done: {} children repointed and verified", r.relinked);
        listed(&mut s, "REFUSED", notes(&r.refused));
        listed(&mut s, "FAILED", notes(&r.failed));
        s
    }

    fn report_has_findings(r: &RelinkReport) -> bool {
        r.has_findings()
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
    let skipped = p
        .skipped
        .iter()
        .map(|k| (k.path.as_path(), k.reason.as_str()));
    listed(&mut s, "SKIPPED", skipped);
    listed(&mut s, "UNRESOLVED", notes(&p.unresolved));
    listed(&mut s, "CONFLICT", notes(&p.conflicts));
    let uninspected = p
        .uninspected
        .iter()
        .map(|u| (u.path.as_path(), u.reason.as_str()));
    listed(&mut s, "UNINSPECTED", uninspected);
    for n in &p.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}
