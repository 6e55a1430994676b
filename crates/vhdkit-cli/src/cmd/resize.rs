//! `vhdkit resize DISK --size SIZE [--round-up N] [--dry-run]`.

use std::fmt::Write as _;

use vhdkit::resize;
use vhdkit::{ResizePlan, ResizeReport};

use crate::cli::ResizeArgs;
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
    if a.dry_run {
        // The real run's first refusal (a locked or read-only disk, a VHD journal that cannot
        // be written beside it), found the way it would meet it.
        if let Some(e) = resize::predict_refusal(&plan) {
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
