//! `vhdkit merge CHILD [--into ANCESTOR] [--dry-run]`.

use std::fmt::Write as _;

use vhdkit::merge;
use vhdkit::{MergePlan, MergeReport};

use crate::cli::MergeArgs;
use crate::cmd::chain_options;
use crate::cmd::planned::{self, Planned};
use crate::cmd::progress::Bar;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &MergeArgs) -> Result<Outcome, CliError> {
    let plan = MergePlan::new(&a.child, a.into.as_deref(), &chain_options(&a.resolve)?)?;
    planned::run(&plan, a.dry_run, a.json)
}

impl Planned for MergePlan {
    type Report = MergeReport;
    fn refusal(&self) -> Option<vhdkit::Error> {
        merge::predict_refusal(self)
    }
    fn apply(&self, bar: &mut Bar) -> Result<MergeReport, vhdkit::Error> {
        MergePlan::apply(self, bar)
    }
    fn render_plan(&self) -> String {
        render_plan(self)
    }
    fn render_report(&self, s: &mut String, report: &MergeReport) {
        render_report(s, self, report)
    }
}

fn render_plan(p: &MergePlan) -> String {
    let mut s = String::new();
    let format = format!("{:?}", p.format).to_lowercase();
    let _ = writeln!(
        s,
        "merge {} into {} ({format})",
        p.child.display(),
        p.ancestor.display()
    );
    for n in &p.notes {
        let _ = writeln!(s, "  note: {}", output::cli_words(n));
    }
    let _ = writeln!(
        s,
        "  written: {} (keeps its path and its parent)",
        p.ancestor.display()
    );
    for m in &p.merged {
        let _ = writeln!(
            s,
            "  deleted once the merged chain verifies: {}",
            m.display()
        );
    }
    let _ = writeln!(
        s,
        "  copy: {} blocks of {}, {} in all",
        p.blocks,
        output::size(p.block_size),
        output::size(p.bytes_to_copy)
    );
    for c in &p.changes {
        let _ = writeln!(s, "  {} {}: {} -> {}", c.structure, c.field, c.old, c.new);
    }
    s
}

fn render_report(s: &mut String, p: &MergePlan, r: &MergeReport) {
    if r.recovered {
        let _ = writeln!(s, "first finished an interrupted vhdkit change");
    }
    if r.resumed {
        let _ = writeln!(s, "resumed an unfinished merge of these disks");
    }
    for k in &r.kept {
        let _ = writeln!(s, "note: {}", output::cli_words(k));
    }
    let _ = writeln!(
        s,
        "merged: {} copied into {} ({} blocks); {} files deleted",
        output::size(r.bytes_copied),
        p.ancestor.display(),
        r.blocks,
        r.deleted.len()
    );
}
