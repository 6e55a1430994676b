//! `vhdkit compact DISK [--against-parent] [--dry-run]`.

use std::fmt::Write as _;

use vhdkit::compact;
use vhdkit::{CompactPlan, CompactReport};

use crate::cli::CompactArgs;
use crate::cmd::chain_options;
use crate::cmd::planned::{self, Planned};
use crate::cmd::progress::Bar;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &CompactArgs) -> Result<Outcome, CliError> {
    let opts = chain_options(&a.resolve)?;
    let plan = if a.against_parent {
        CompactPlan::against_parent(&a.disk, &opts)?
    } else {
        CompactPlan::new(&a.disk, &opts)?
    };
    planned::run(&plan, a.dry_run, a.json)
}

impl Planned for CompactPlan {
    type Report = CompactReport;
    fn refusal(&self) -> Option<vhdkit::Error> {
        compact::predict_refusal(self)
    }
    fn apply(&self, bar: &mut Bar) -> Result<CompactReport, vhdkit::Error> {
        CompactPlan::apply(self, bar)
    }
    fn render_plan(&self) -> String {
        render_plan(self)
    }
    fn render_report(&self, s: &mut String, report: &CompactReport) {
        render_report(s, self, report)
    }
}

fn render_plan(p: &CompactPlan) -> String {
    let mut s = String::new();
    let format = format!("{:?}", p.format).to_lowercase();
    let kind = format!("{:?}", p.disk_type).to_lowercase();
    let _ = writeln!(s, "{} ({format}, {kind})", p.disk.display());
    for n in &p.notes {
        let _ = writeln!(s, "  note: {}", output::cli_words(n));
    }
    if p.nothing_to_do {
        return s;
    }
    for (i, parent) in p.parents.iter().enumerate() {
        let _ = writeln!(s, "  parent {}: {} (read only)", i + 1, parent.display());
    }
    let _ = writeln!(
        s,
        "  blocks: {} allocated of {}; drop {} reading zeros{}, move {} down ({})",
        p.allocated_blocks,
        output::size(p.block_size),
        p.zero_blocks,
        if p.against_parent || p.parent_blocks > 0 {
            format!(" and {} equal to the parent", p.parent_blocks)
        } else {
            String::new()
        },
        p.blocks_to_move,
        output::size(p.bytes_to_move)
    );
    let _ = writeln!(
        s,
        "  file: {} -> {} ({} to reclaim); {} on disk now",
        output::size(p.file_size),
        output::size(p.file_size_after),
        output::size(p.bytes_to_reclaim),
        output::size(p.allocated_size)
    );
    s
}

fn render_report(s: &mut String, p: &CompactPlan, r: &CompactReport) {
    if r.recovered {
        let _ = writeln!(s, "first finished an interrupted vhdkit change");
    }
    if r.nothing_to_do {
        let _ = writeln!(s, "{}: a fixed disk, nothing to do", p.disk.display());
        return;
    }
    let _ = writeln!(
        s,
        "compacted: {} zero and {} parent-equal blocks dropped, {} blocks moved ({}); file {} \
         -> {}, on disk {} -> {}",
        r.zero_blocks,
        r.parent_blocks,
        r.blocks_moved,
        output::size(r.bytes_moved),
        output::size(r.file_size_before),
        output::size(r.file_size_after),
        output::size(r.allocated_before),
        output::size(r.allocated_after)
    );
}
