//! `vhdkit resize DISK --size SIZE [--round-up N] [--dry-run]`.

use std::fmt::Write as _;

use vhdkit::resize;
use vhdkit::{ResizePlan, ResizeReport};

use crate::cli::ResizeArgs;
use crate::cmd::planned::{self, Planned};
use crate::cmd::progress::Bar;
use crate::cmd::{chain_options, size_arg};
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &ResizeArgs) -> Result<Outcome, CliError> {
    let mut size = size_arg(&a.size)?;
    if let Some(n) = &a.round_up {
        size = resize::round_up_size(size, size_arg(n)?)?;
    }
    let plan = ResizePlan::new(&a.disk, size, &chain_options(&a.resolve)?)?;
    planned::run(&plan, a.dry_run, a.json)
}

impl Planned for ResizePlan {
    type Report = ResizeReport;
    fn refusal(&self) -> Option<vhdkit::Error> {
        resize::predict_refusal(self)
    }
    fn apply(&self, bar: &mut Bar) -> Result<ResizeReport, vhdkit::Error> {
        ResizePlan::apply(self, bar)
    }
    fn render_plan(&self) -> String {
        render_plan(self)
    }
    fn render_report(&self, s: &mut String, report: &ResizeReport) {
        render_report(s, self, report)
    }
}

fn render_plan(p: &ResizePlan) -> String {
    let mut s = String::new();
    let format = format!("{:?}", p.format).to_lowercase();
    let kind = format!("{:?}", p.disk_type).to_lowercase();
    let _ = writeln!(s, "{} ({format}, {kind})", p.disk.display());
    let _ = writeln!(
        s,
        "  virtual size: {} -> {}",
        output::size(p.old_size),
        output::size(p.new_size),
    );
    for n in &p.notes {
        let _ = writeln!(s, "  note: {}", output::cli_words(n));
    }
    if p.old_size == p.new_size {
        return s;
    }
    if p.new_file_len != p.old_file_len {
        let _ = writeln!(
            s,
            "  file length: {} -> {} bytes",
            p.old_file_len, p.new_file_len
        );
    }
    if !p.moves.is_empty() {
        let _ = writeln!(s, "  moved out of the grown BAT's way first:");
        for m in &p.moves {
            let _ = writeln!(
                s,
                "    {}: {} bytes, {:#x} -> {:#x}",
                m.what, m.length, m.from, m.to
            );
        }
    }
    let _ = writeln!(s, "  then, in one crash-safe step:");
    for c in &p.changes {
        let _ = writeln!(s, "    {} {}: {} -> {}", c.structure, c.field, c.old, c.new);
    }
    s
}

fn render_report(s: &mut String, p: &ResizePlan, r: &ResizeReport) {
    if r.recovered {
        let _ = writeln!(s, "first finished an interrupted vhdkit change");
    }
    if r.already_done {
        let _ = writeln!(
            s,
            "{}: {} already, nothing to do",
            p.disk.display(),
            output::size(r.new_size)
        );
        return;
    }
    let _ = writeln!(
        s,
        "resized: {} -> {} ({} moved, {} bytes of metadata written); file length {} bytes",
        output::size(r.old_size),
        output::size(r.new_size),
        output::size(r.bytes_moved),
        r.metadata_bytes,
        r.new_file_len
    );
}
