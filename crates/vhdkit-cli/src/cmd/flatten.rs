//! `vhdkit flatten CHILD [--dry-run]`.

use std::fmt::Write as _;

use vhdkit::flatten;
use vhdkit::{FlattenPlan, FlattenReport};

use crate::cli::FlattenArgs;
use crate::cmd::chain_options;
use crate::cmd::planned::{self, Planned};
use crate::cmd::progress::Bar;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &FlattenArgs) -> Result<Outcome, CliError> {
    let plan = FlattenPlan::new(&a.child, &chain_options(&a.resolve)?)?;
    planned::run(&plan, a.dry_run, a.json)
}

impl Planned for FlattenPlan {
    type Report = FlattenReport;
    fn refusal(&self) -> Option<vhdkit::Error> {
        flatten::predict_refusal(self)
    }
    fn apply(&self, bar: &mut Bar) -> Result<FlattenReport, vhdkit::Error> {
        FlattenPlan::apply(self, bar)
    }
    fn render_plan(&self) -> String {
        render_plan(self)
    }
    fn render_report(&self, s: &mut String, report: &FlattenReport) {
        render_report(s, self, report)
    }
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
