//! `vhdkit reparent CHILD --parent NEWPARENT`.

use std::fmt::Write as _;

use vhdkit::reparent::{
    self, ApplyReport, IdentityCheck, LocatorMode, ReparentOptions, ReparentPlan,
};
use vhdkit::ChainReport;

use crate::cli::ReparentArgs;
use crate::cmd::chain_options;
use crate::output::{self, CliError};
use crate::Outcome;

pub fn run(a: &ReparentArgs) -> Result<Outcome, CliError> {
    let plan = reparent::plan(&a.child, &options(a)?)?;
    if a.dry_run {
        dry_run(a, &plan)?;
    } else {
        let report = reparent::apply(&plan)?;
        let chain = intact_chain(a, &report)?;
        if a.json {
            output::print_json(&serde_json::json!({
                "applied": true,
                "plan": plan,
                "report": report,
                "chain": chain,
            }))?;
        } else if output::text_wanted() {
            let mut s = render_plan(&plan);
            render_applied(&mut s, &report, chain);
            print!("{s}");
        }
    }
    for w in &plan.warnings {
        eprintln!("vhdkit: warning: {}", output::cli_words(w));
    }
    Ok(Outcome::Ok)
}

fn options(a: &ReparentArgs) -> Result<ReparentOptions, CliError> {
    Ok(ReparentOptions {
        new_parent: a.parent.clone(),
        mode: if a.relative_only {
            LocatorMode::RelativeOnly
        } else if a.absolute_only {
            LocatorMode::AbsoluteOnly
        } else {
            LocatorMode::Both
        },
        ignore_id_mismatch: a.ignore_id_mismatch,
        verify_content: a.verify_content.clone(),
        windows_path: a.windows_path.clone(),
        chain: chain_options(&a.resolve)?,
    })
}

fn dry_run(a: &ReparentArgs, plan: &ReparentPlan) -> Result<(), CliError> {
    // Predict the real run's first refusal: it takes the writers' lock (a read-only or
    // locked child) and, for a VHD, writes its journal beside the child (a closed or sticky
    // folder). The lock is taken and dropped at once; a real run that tries in that instant is
    // refused politely, never harmed.
    if let Some(e) = reparent::predict_refusal(plan) {
        return Err(CliError::Lib(super::dry_run_note(e)));
    }
    if a.json {
        output::print_json(&serde_json::json!({ "applied": false, "plan": plan }))?;
    } else if output::text_wanted() {
        print!("{}", render_plan(plan));
        println!("dry run: nothing written");
    }
    Ok(())
}

/// The chain apply followed again through the new locators; here it must be intact (a broken
/// one is the error `Chain::open` gives).
fn intact_chain<'r>(
    a: &ReparentArgs,
    report: &'r ApplyReport,
) -> Result<Option<&'r ChainReport>, CliError> {
    let chain = report.chain.as_ref();
    if let Some(broken) = chain.and_then(|c| c.broken.as_ref()) {
        let at = chain.and_then(|c| c.links.last()).map(|l| l.path.clone());
        return Err(CliError::Lib(vhdkit::Error::Chain {
            path: Some(at.unwrap_or_else(|| a.child.clone())),
            broken: broken.clone(),
        }));
    }
    Ok(chain)
}

fn render_applied(s: &mut String, report: &ApplyReport, chain: Option<&ChainReport>) {
    if let Some(x) = &report.vhdx {
        if let Some(r) = &x.log_replayed {
            let _ = writeln!(
                s,
                "first replayed the dirty log to the file ({} entries, sequence {}..{})",
                r.entries, r.first_sequence, r.last_sequence
            );
        }
        let _ = writeln!(
            s,
            "applied through the VHDX log: {} bytes in {} writes ({} header, {} log, {} \
             metadata), {} flushes; file {} bytes",
            report.bytes_written,
            report.writes,
            x.header_bytes,
            x.log_bytes,
            x.metadata_bytes,
            x.syncs,
            report.new_len
        );
    } else {
        let _ = writeln!(
            s,
            "applied: {} bytes in {} ranges (journal {} bytes, removed); file {} -> {} bytes",
            report.bytes_written,
            report.writes,
            report.journal_bytes,
            report.old_len,
            report.new_len
        );
    }
    if let vhdkit::reparent::Recovery::RolledForward { writes } = report.recovery {
        let _ = writeln!(
            s,
            "first finished an interrupted earlier change ({writes} ranges)"
        );
    }
    let links = chain.map_or(&[][..], |c| &c.links[..]);
    let parent = links.first().and_then(|l| l.parent.as_ref());
    let _ = writeln!(
        s,
        "chain re-opened: intact, {} disks; parent found via {}: {}",
        links.len(),
        parent
            .and_then(|p| p.via.as_ref())
            .map_or_else(|| "?".to_string(), ToString::to_string),
        parent
            .and_then(|p| p.path.as_ref())
            .map_or_else(|| "?".to_string(), |p| p.display().to_string())
    );
}

fn render_plan(p: &ReparentPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "reparent {} ({})", p.child.display(), p.format);
    let _ = writeln!(
        s,
        "  new parent:    {} (id {})",
        p.new_parent_resolved.display(),
        p.new_parent_id
    );
    let _ = writeln!(s, "  identity:      {}", verdict(&p.identity));
    if let Some(r) = &p.relative_path {
        let _ = writeln!(s, "  relative path: {r}");
    }
    if let Some(abs) = &p.absolute_path {
        let _ = writeln!(s, "  absolute path: {} ({})", abs.value, abs.how);
    }
    if p.format == vhdkit::DiskFormat::Vhd {
        let _ = writeln!(s, "  parent name:   {}", p.parent_name);
        if let Some(st) = &p.parent_name_style {
            let how = if st.kept { "kept" } else { "changed" };
            let why = st
                .why
                .as_ref()
                .map(|w| format!(": {w}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  name style:    {how} ({:?} -> {:?}){why}",
                st.before, st.written
            );
        }
    }
    let _ = writeln!(s, "changes:");
    for c in p.changes() {
        let _ = writeln!(
            s,
            "  {} / {}:\n    {}\n    -> {}",
            c.structure, c.field, c.old, c.new
        );
    }
    render_writes(&mut s, p);
    for n in &p.notes {
        let _ = writeln!(s, "note: {n}");
    }
    for w in &p.warnings {
        let _ = writeln!(s, "WARNING: {w}");
    }
    s
}

fn verdict(identity: &IdentityCheck) -> String {
    match identity {
        IdentityCheck::Primary => "matches the child's recorded parent id".to_string(),
        IdentityCheck::Alternate => "matches the child's alternate linkage (parent_linkage2)".to_string(),
        IdentityCheck::MismatchIgnored { recorded, .. } => format!(
            "MISMATCH (child records {recorded}) ignored on request; linkage rewritten"
        ),
        IdentityCheck::ContentVerified {
            recorded,
            old_parent,
            bytes_compared,
            ..
        } => format!(
            "differs from the recorded {recorded}, but contents equal {} ({bytes_compared} bytes); linkage rewritten",
            old_parent.display()
        ),
        other => format!("{other:?}"),
    }
}

fn render_writes(s: &mut String, p: &ReparentPlan) {
    if p.format == vhdkit::DiskFormat::Vhdx {
        let _ = writeln!(
            s,
            "writes: {} metadata bytes in {} ranges, through the log: {} bytes written to the file \
             in all (headers, log entry, metadata sectors)",
            p.bytes_written(),
            p.writes().len(),
            p.bytes_written()
        );
    } else {
        let _ = writeln!(
            s,
            "writes: {} bytes in {} ranges (file {} -> {} bytes)",
            p.bytes_written(),
            p.writes().len(),
            p.old_len(),
            p.new_len()
        );
    }
    for w in p.writes() {
        let _ = writeln!(
            s,
            "  {:#010x} {:>6} bytes  {}",
            w.offset,
            w.data.len(),
            w.what
        );
    }
}
