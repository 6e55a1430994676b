//! `vhdkit flatten CHILD [--dry-run]`.

use std::fmt::Write as _;

use vhdkit::flatten;
use vhdkit::{FlattenPlan, FlattenReport};

use crate::cli::FlattenArgs;
use crate::cmd::chain_options;
use crate::cmd::progress::Bar;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &FlattenArgs) -> Result<Outcome, CliError> {
    let plan = FlattenPlan::new(&a.child, &chain_options(&a.resolve)?)?;
    if a.dry_run {
        // The real run's first refusal (a read-only or locked child, a VHD journal that
        // cannot be written beside it), found the way it would meet it.
        if let Some(e) = flatten::predict_refusal(&plan) {
            return Err(CliError::Lib(super::dry_run_note(e)));
        }
        if a.json {
            output::print_json(&serde_json::json!({ "applied": false, "plan": plan }))?;
        } else if output::text_wanted() {
            print!("{}", render_plan(&plan));
            println!("dry run: nothing written");
        }
        return Ok(Outcome::Ok);
    }
    let mut bar = Bar::new(a.json);
    let report = plan.apply(&mut bar);
    drop(bar);
    let report = report?;
    if a.json {
        output::print_json(&serde_json::json!({
            "applied": true,
            "plan": plan,
            "report": report,
        }))?;
    } else if output::text_wanted() {
        let mut s = render_plan(&plan);
        render_report(&mut s, &plan, &report);
        print!("{s}");
    }
    Ok(Outcome::Ok)
}

fn render_plan(p: &FlattenPlan) -> String {
    let mut s = String::new();
    let format = format!("{:?}", p.format).to_lowercase();
    let _ = writeln!(s, "{} ({format})", p.child.display());
    for n in &p.notes {
        let _ = writeln!(s, "  note: {}", output::cli_words(n));
    }
    if p.already_standalone {
        return s;
    }
    for (i, parent) in p.parents.iter().enumerate() {
        let _ = writeln!(s, "  parent {}: {} (read only)", i + 1, parent.display());
    }
    let _ = writeln!(
        s,
        "  copy: {} whole blocks and {} partial blocks of {}, {} in all",
        p.whole_blocks,
        p.partial_blocks,
        output::size(p.block_size),
        output::size(p.bytes_to_copy)
    );
    let _ = writeln!(s, "  then, in one crash-safe step:");
    for c in &p.unlink {
        let _ = writeln!(s, "    {} {}: {} -> {}", c.structure, c.field, c.old, c.new);
    }
    s
}

fn render_report(s: &mut String, p: &FlattenPlan, r: &FlattenReport) {
    if r.recovered {
        let _ = writeln!(s, "first finished an interrupted vhdkit change");
    }
    if r.already_standalone {
        let _ = writeln!(
            s,
            "{}: standalone already, nothing to do",
            p.child.display()
        );
        return;
    }
    let _ = writeln!(
        s,
        "flattened: {} whole and {} partial blocks copied ({}), parent link removed ({} bytes \
         written for it); {} is now a standalone dynamic disk",
        r.whole_blocks,
        r.partial_blocks,
        output::size(r.bytes_copied),
        r.unlink_bytes,
        p.child.display()
    );
}
