//! `vhdkit share DIR --into SHARED`, and the run shape it shares with `relink`: a plan shown
//! (and applied unless it is a dry run or there is nothing to do), as text or JSON.

use std::fmt::Write as _;
use std::path::Path;

use vhdkit::share::Uninspected;
use vhdkit::share::{
    self, GroupPlan, KeeperAction, PathNote, ShareOptions, SharePlan, ShareReport,
};

use crate::cli::ShareArgs;
use crate::cmd::progress::Bar;
use crate::output::{self, size, CliError};
use crate::Outcome;

pub fn run(a: &ShareArgs) -> Result<Outcome, CliError> {
    let opts = ShareOptions {
        delete_copies: a.delete_copies,
        ..tree_options(&a.confine)
    };
    let mut bar = Bar::new(a.json);
    let plan = share::plan_share(&a.dir, &a.into, &opts, &mut bar)?;
    show_and_apply(&plan, &opts, &mut bar, a.json, a.dry_run)
}

/// Options of a tree command (`share`, `relink`) run from the command line.
pub(super) fn tree_options(confine: &[std::path::PathBuf]) -> ShareOptions {
    ShareOptions {
        chain: crate::cmd::confined(vhdkit::ChainOptions::default(), confine),
        ..ShareOptions::default()
    }
}

/// A tree command's plan as the command line shows and applies it (see [`tree_plan`]).
pub(super) trait TreePlan: serde::Serialize {
    type Report: serde::Serialize;
    /// The closing line when nothing was to do and nothing needs a person.
    const ALL_DONE: &'static str;
    fn nothing_to_do(&self) -> bool;
    fn has_findings(&self) -> bool;
    fn render(&self) -> String;
    fn apply(&self, opts: &ShareOptions, bar: &mut Bar) -> Result<Self::Report, vhdkit::Error>;
    fn render_report(r: &Self::Report) -> String;
    fn report_has_findings(r: &Self::Report) -> bool;
}

/// `impl TreePlan` for a library plan, from its report type, its apply function and its
/// closing line; the text comes from the invoking module's `render_plan` and `render_report`
/// (the plan and report types have `has_findings`, the plan a `nothing_to_do` field).
macro_rules! tree_plan {
    ($plan:ty, $report:ty, $apply:path, $all_done:expr) => {
        impl $crate::cmd::share::TreePlan for $plan {
            type Report = $report;
            const ALL_DONE: &'static str = $all_done;
            fn nothing_to_do(&self) -> bool {
                self.nothing_to_do
            }
            fn has_findings(&self) -> bool {
                <$plan>::has_findings(self)
            }
            fn render(&self) -> String {
                render_plan(self)
            }
            fn apply(
                &self,
                opts: &vhdkit::share::ShareOptions,
                bar: &mut $crate::cmd::progress::Bar,
            ) -> Result<$report, vhdkit::Error> {
                $apply(self, opts, bar)
            }
            fn render_report(r: &$report) -> String {
                render_report(r)
            }
            fn report_has_findings(r: &$report) -> bool {
                r.has_findings()
            }
        }
    };
}
pub(super) use tree_plan;

/// Show `plan` (JSON or text) and apply it unless this is a dry run or there is nothing to do.
pub(super) fn show_and_apply<P: TreePlan>(
    plan: &P,
    opts: &ShareOptions,
    bar: &mut Bar,
    json: bool,
    dry_run: bool,
) -> Result<Outcome, CliError> {
    let findings = plan.has_findings();
    let outcome = |more: bool| {
        if findings || more {
            Outcome::Findings
        } else {
            Outcome::Ok
        }
    };
    if dry_run || plan.nothing_to_do() {
        if json {
            output::print_json(&serde_json::json!({
                "applied": false,
                "dry_run": dry_run,
                "nothing_to_do": plan.nothing_to_do(),
                "plan": plan,
            }))?;
        } else if output::text_wanted() {
            print!("{}", plan.render());
            println!("{}", closing_line(plan));
        }
        return Ok(outcome(false));
    }
    let report = plan.apply(opts, bar)?;
    if json {
        output::print_json(&serde_json::json!({
            "applied": true,
            "nothing_to_do": false,
            "plan": plan,
            "report": report,
        }))?;
    } else if output::text_wanted() {
        print!("{}", plan.render());
        print!("{}", P::render_report(&report));
    }
    Ok(outcome(P::report_has_findings(&report)))
}

/// The last line of a run that changed nothing; never "nothing to do" alone when findings were
/// listed above it.
fn closing_line<P: TreePlan>(p: &P) -> &'static str {
    match (p.nothing_to_do(), p.has_findings()) {
        (true, false) => P::ALL_DONE,
        (true, true) => {
            "nothing to do for the disks that could be inspected; the findings above need a person"
        }
        (false, _) => "dry run: nothing written",
    }
}

/// One `LABEL: path: reason` line per item.
pub(super) fn listed<'a, R: std::fmt::Display>(
    s: &mut String,
    label: &str,
    items: impl IntoIterator<Item = (&'a Path, R)>,
) {
    for (path, reason) in items {
        let _ = writeln!(s, "{label}: {}: {reason}", path.display());
    }
}

/// The items of a report list as [`listed`] takes them.
pub(super) fn notes(v: &[PathNote]) -> impl Iterator<Item = (&Path, &vhdkit::share::NoteReason)> {
    v.iter().map(|f| (f.path.as_path(), &f.reason))
}

/// Uninspected paths as [`listed`] takes them.
pub(super) fn uninspected(v: &[Uninspected]) -> impl Iterator<Item = (&Path, &str)> {
    v.iter().map(|u| (u.path.as_path(), u.reason.as_str()))
}

/// The first 16 hex digits of a digest.
fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

const ALL_DONE: &str = "nothing to do: every child already uses its shared parent";
tree_plan!(SharePlan, ShareReport, share::apply_share, ALL_DONE);

fn render_plan(p: &SharePlan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "share {} into {}: {} disks found, {} groups with work, {} children to repoint",
        p.dir.display(),
        p.into.display(),
        p.disks_found,
        p.groups.len(),
        p.children_to_repoint
    );
    for g in &p.groups {
        render_group(&mut s, g);
    }
    for c in &p.conflicts {
        let _ = writeln!(
            s,
            "CONFLICT: same id {} ({}) but different contents; left alone with their children:",
            c.id, c.format
        );
        for (f, h) in &c.files {
            let _ = writeln!(s, "  {} (contents blake3 {})", f.display(), short(h));
        }
        for k in &c.children {
            let _ = writeln!(s, "  child left alone: {}", k.display());
        }
    }
    listed(&mut s, "SKIPPED", notes(&p.skipped));
    listed(&mut s, "UNRESOLVED", notes(&p.unresolved));
    listed(&mut s, "UNINSPECTED", uninspected(&p.uninspected));
    if p.delete_copies && !(p.uninspected.is_empty() && p.skipped.is_empty()) {
        let _ = writeln!(
            s,
            "nothing is deleted in any group: a disk that could not be inspected may use a copy"
        );
    }
    for n in &p.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let _ = writeln!(
        s,
        "read {} of virtual contents; disk usage {} -> {} (frees {} on disk, {} apparent)",
        size(p.bytes_read),
        size(p.size_before),
        size(p.size_after),
        size(p.bytes_freed),
        size(p.bytes_freed_apparent)
    );
    s
}

fn render_group(s: &mut String, g: &GroupPlan) {
    let how = match g.action {
        KeeperAction::AlreadyShared => "already shared",
        KeeperAction::InPlace => "the only file: stays in place",
        KeeperAction::Move => "moved there",
        KeeperAction::Copy => "copied there",
        _ => "placed there",
    };
    let _ = writeln!(
        s,
        "group {} {} ({} virtual, level {}, {} identical files{}):",
        g.format,
        g.id,
        size(g.virtual_size),
        g.level,
        g.files,
        g.content_blake3
            .as_deref()
            .map(|h| format!(", contents blake3 {}", short(h)))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "  keeper: {} ({how})", g.keeper.display());
    if g.keeper_source != g.keeper {
        let _ = writeln!(s, "    from {}", g.keeper_source.display());
    }
    for c in &g.children {
        let what = if c.repoint {
            "repoint"
        } else {
            "finish interrupted change"
        };
        let _ = write!(
            s,
            "  {what}: {} (now via {} -> {})",
            c.path.display(),
            c.via
                .as_ref()
                .map_or_else(|| "?".to_string(), ToString::to_string),
            c.from
                .as_ref()
                .map_or_else(|| "?".into(), |f| f.display().to_string())
        );
        if let Some(r) = &c.refused {
            let _ = write!(s, " REFUSED: {r}");
        }
        let _ = writeln!(s);
    }
    for c in &g.copies {
        let fate = match (&c.kept, &c.refused) {
            (Some(k), _) => format!(" -> kept: {k}"),
            (None, Some(r)) => format!(" -> cannot be deleted: {r}"),
            (None, None) => " -> deleted once every child is repointed".into(),
        };
        let _ = writeln!(
            s,
            "  copy: {} ({} on disk, {} apparent, {} children){fate}",
            c.path.display(),
            size(c.allocated),
            size(c.file_size),
            c.children,
        );
    }
    for n in &g.old_names {
        let _ = writeln!(s, "  old name removed after the move: {}", n.display());
    }
    for l in &g.symlinks {
        let _ = writeln!(
            s,
            "  symlink to this parent: {} -> removed (children use the real file)",
            l.display()
        );
    }
    for k in &g.kept_names {
        let _ = writeln!(s, "  name kept: {} ({})", k.path.display(), k.reason);
    }
    if let Some(r) = &g.keeper_refused {
        let _ = writeln!(s, "  REFUSED: the keeper cannot be placed: {r}");
    }
}

fn render_report(r: &ShareReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "done: {} groups completed, {} keepers placed, {} children repointed and verified, {} copies \
         deleted, {} old names and {} symlinks removed",
        r.groups_done,
        r.keepers_placed,
        r.children_repointed,
        r.copies_deleted,
        r.old_names_removed,
        r.symlinks_removed
    );
    if r.journals_finished > 0 {
        let _ = writeln!(s, "finished {} interrupted changes", r.journals_finished);
    }
    let _ = writeln!(
        s,
        "freed {} on disk ({} apparent); disk usage {} -> {}",
        size(r.bytes_freed),
        size(r.bytes_freed_apparent),
        size(r.size_before),
        size(r.size_after)
    );
    listed(&mut s, "REFUSED", notes(&r.refused));
    listed(&mut s, "FAILED", notes(&r.failed));
    listed(&mut s, "KEPT", notes(&r.kept));
    s
}
