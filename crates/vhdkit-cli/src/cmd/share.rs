//! `vhdkit share DIR --into SHARED`.

use std::fmt::Write as _;

use vhdkit::share::{self, KeeperAction, ShareOptions, SharePlan, ShareReport};

use crate::cli::ShareArgs;
use crate::cmd::progress::{abort_hook, Bar};
use crate::output::{self, size, CliError};
use crate::Outcome;

pub fn run(a: &ShareArgs) -> Result<Outcome, CliError> {
    let opts = ShareOptions {
        delete_copies: a.delete_copies,
        abort_after_steps: abort_hook(),
        ..ShareOptions::default()
    };
    let mut bar = Bar::new(a.json);
    let plan = share::plan_share(&a.dir, &a.into, &opts, &mut bar)?;
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
            println!("{}", closing_line(&plan, a.dry_run));
        }
        return Ok(if findings {
            Outcome::Findings
        } else {
            Outcome::Ok
        });
    }
    let report = share::apply_share(&plan, &opts, &mut bar)?;
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
    Ok(if findings || report.has_findings() {
        Outcome::Findings
    } else {
        Outcome::Ok
    })
}

/// The last line of a run that changed nothing; never "nothing to do" alone when findings were
/// listed above it.
fn closing_line(p: &SharePlan, dry_run: bool) -> &'static str {
    match (p.nothing_to_do, p.has_findings(), dry_run) {
        (true, false, _) => "nothing to do: every child already uses its shared parent",
        (true, true, _) => {
            "nothing to do for the disks that could be inspected; the findings above need a person"
        }
        (false, _, _) => "dry run: nothing written",
    }
}

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
        let how = match g.action {
            KeeperAction::AlreadyShared => "already shared",
            KeeperAction::InPlace => "the only file: stays in place",
            KeeperAction::Move => "moved there",
            KeeperAction::Copy => "copied there",
        };
        let _ = writeln!(
            s,
            "group {} {} ({} virtual, level {}, {} identical files{}):",
            g.format,
            g.id,
            size(g.virtual_size),
            g.level,
            g.files,
            g.content_sha256
                .as_deref()
                .map(|h| format!(", contents sha256 {}", &h[..16.min(h.len())]))
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
                c.via.as_deref().unwrap_or("?"),
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
    for c in &p.conflicts {
        let _ = writeln!(
            s,
            "CONFLICT: same id {} ({}) but different contents; left alone with their children:",
            c.id, c.format
        );
        for (f, h) in &c.files {
            let _ = writeln!(
                s,
                "  {} (contents sha256 {})",
                f.display(),
                &h[..16.min(h.len())]
            );
        }
        for k in &c.children {
            let _ = writeln!(s, "  child left alone: {}", k.display());
        }
    }
    for k in &p.skipped {
        let _ = writeln!(s, "SKIPPED: {}: {}", k.path.display(), k.reason);
    }
    for u in &p.unresolved {
        let _ = writeln!(s, "UNRESOLVED: {}: {}", u.path.display(), u.reason);
    }
    for u in &p.uninspected {
        let _ = writeln!(s, "UNINSPECTED: {}: {}", u.path.display(), u.reason);
    }
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
        "hashed {} of virtual contents ({} read); disk usage {} -> {} (frees {} on disk, {} \
         apparent)",
        size(p.bytes_hashed),
        size(p.bytes_read),
        size(p.size_before),
        size(p.size_after),
        size(p.bytes_freed),
        size(p.bytes_freed_apparent)
    );
    s
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
    for f in &r.refused {
        let _ = writeln!(s, "REFUSED: {}: {}", f.path.display(), f.reason);
    }
    for f in &r.failed {
        let _ = writeln!(s, "FAILED: {}: {}", f.path.display(), f.reason);
    }
    for f in &r.kept {
        let _ = writeln!(s, "KEPT: {}: {}", f.path.display(), f.reason);
    }
    s
}
