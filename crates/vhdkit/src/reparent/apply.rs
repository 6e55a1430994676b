//! [`apply`] and [`apply_to`]: one child.

use std::fs::File;

use super::{refused, ApplyReport, FormatPlan, ReparentPlan};
use crate::chain::Chain;
use crate::disk::{Disk, Parsed};
use crate::error::{Error, Result};
use crate::lock::FileLock;
use crate::txn::journal::{self, FileJournal, JournalState, JournalStore, Recovery};
use crate::txn::Sink;

/// Apply a plan to the child file: check that the new parent is still the planned disk,
/// then (VHD) finish a pending journal first, check the file still holds every old byte of the
/// plan, and write through the redo journal beside the file; or (VHDX) check the current header
/// is the one the plan was made on, replay a dirty log, check every old byte, and commit through
/// the file's own log. Then the child's chain is followed again through the new locators (with
/// the plan's options), and the report carries it ([`ApplyReport::chain`]): a chain that does
/// not resolve here (an absolute path only a Windows host resolves, no map) is reported there,
/// not returned as an error, since the change asked for is made. The child is not parsed for
/// that when the file is provably the plan's simulated result, parsed while planning (see
/// `as_simulated`); its parents are opened again.
///
/// Everything up to the write happens under the child's exclusive lock (`crate::lock`):
/// taken first (another writer holding it is a refusal), then every range the plan read is
/// re-checked from the locked descriptor (`crate::readset::ReadSet::verify`), and the change
/// is written through it.
pub fn apply(plan: &ReparentPlan) -> Result<ApplyReport> {
    let (mut report, child) = {
        let lock = lock_child(plan)?;
        if plan.format == crate::disk::DiskFormat::Vhd {
            // As the dry run predicts (`predict_refusal`): refused before a pending journal is
            // rolled forward, not after, when the journal beside the child cannot be written.
            crate::repair::journal_writable(&plan.child)?;
        }
        let store = FileJournal::for_disk(&plan.child);
        let report = apply_to(lock.file(), &store, plan).map_err(|e| e.with_path(&plan.child))?;
        let child = as_simulated(plan, &report, lock.file());
        (report, child)
    };
    report.chain = Some(match child {
        Some(child) => Chain::inspect_parsed(child, &plan.child, &plan.chain)?,
        None => Chain::inspect(&plan.child, &plan.chain)?,
    });
    Ok(report)
}

/// The child as the plan simulated it, when that is exactly what `file` (locked, just written)
/// now holds, so that following its chain needs no third parse; `None` parses it again. VHD:
/// the journal writes the plan's bytes and nothing else, so it is when no journal was pending
/// at plan time nor found at apply (neither laid over nor finished first). VHDX: apply also
/// rewrites the headers and the log, so the headers are read back (and only them) to see that
/// a parse would find what the simulation found. Either way no journal may lie beside the file
/// now (a parse would lay it over the file, and warn).
fn as_simulated(plan: &ReparentPlan, report: &ApplyReport, file: &File) -> Option<Disk> {
    let no_journal = matches!(
        journal::inspect(file, &FileJournal::for_disk(&plan.child)),
        Ok(JournalState::Absent)
    );
    let exact = |parsed: &Parsed| match (parsed, &plan.format_plan) {
        (Parsed::Vhd(_), FormatPlan::Vhd(_)) => {
            !plan.pending_journal && report.recovery == Recovery::Clean
        }
        (Parsed::Vhdx(sim), FormatPlan::Vhdx(p)) => p.simulation_is(sim, file),
        _ => false,
    };
    let parsed = match &plan.format_plan {
        FormatPlan::Vhd(p) => p.simulated.take(),
        FormatPlan::Vhdx(p) => p.simulated.take(),
    }?;
    (no_journal && exact(&parsed)).then(|| Disk::from_parsed(parsed, &plan.child))
}

/// Lock the child, then re-validate under the lock: the new parent still holds every byte
/// its parse read, and the child still holds every byte the plan read.
pub(super) fn lock_child(plan: &ReparentPlan) -> Result<FileLock> {
    let lock = crate::lock::lock_disk(&plan.child)?;
    check_new_parent(plan)?;
    plan.reads
        .verify(lock.file())
        .map_err(|e| e.with_path(&plan.child))?;
    Ok(lock)
}

/// The new parent is still the planned disk: every byte its parse read at plan time is still
/// there (no second parse). A plan that recorded nothing (its new parent was not opened by the
/// recorded path) falls back to parsing it and comparing identities.
fn check_new_parent(plan: &ReparentPlan) -> Result<()> {
    let np_path = &plan.new_parent_resolved;
    if plan.new_parent_reads.is_empty() {
        return check_new_parent_identity(plan);
    }
    let file = crate::fsx::open_disk(np_path).map_err(|e| {
        let e = Error::io("opening the file", e).with_path(np_path);
        refused(
            &plan.child,
            format!("the new parent can no longer be opened: {e}"),
        )
    })?;
    plan.new_parent_reads.verify(&file).map_err(|e| {
        let why = match e {
            Error::Refused { reason, .. } => reason,
            e => e.to_string(),
        };
        refused(
            &plan.child,
            format!("the new parent {}: {why}", np_path.display()),
        )
    })
}

fn check_new_parent_identity(plan: &ReparentPlan) -> Result<()> {
    let np = Disk::open_with(&plan.new_parent_resolved, &plan.chain.open).map_err(|e| {
        refused(
            &plan.child,
            format!("the new parent can no longer be opened: {e}"),
        )
    })?;
    if np.identity() != plan.new_parent_id {
        return Err(refused(
            &plan.child,
            format!(
                "the new parent changed since the plan was made (id {} instead of {})",
                np.identity(),
                plan.new_parent_id
            ),
        ));
    }
    Ok(())
}

/// What a VHD plan applied through its journal did.
pub(super) fn vhd_report(recovery: Recovery, plan: &ReparentPlan) -> ApplyReport {
    let txn = plan.txn();
    ApplyReport {
        recovery,
        writes: txn.writes.len(),
        bytes_written: txn.bytes_written(),
        journal_bytes: journal::encoded_len(txn) as u64,
        old_len: txn.old_len,
        new_len: txn.new_len,
        vhdx: None,
        chain: None,
    }
}

/// A foreign journal beside a VHD child is never applied nor overwritten.
pub(super) fn refuse_foreign(store: &dyn JournalStore, reason: &str) -> Error {
    Error::refused(format!(
        "a vhdkit journal {} does not match the file ({reason})",
        store.describe()
    ))
}

/// [`apply`] on any target and journal store (fault-injection tests use
/// [`crate::txn::fault`]), without re-opening the chain. VHD: recovers a pending journal
/// first; refuses a foreign one. VHDX: the store is not used (the file's log is the journal);
/// a dirty log is replayed within the plan's limits.
pub fn apply_to(
    target: &dyn Sink,
    store: &dyn JournalStore,
    plan: &ReparentPlan,
) -> Result<ApplyReport> {
    match &plan.format_plan {
        FormatPlan::Vhdx(p) => {
            let limits = &plan.chain.open.limits;
            let a = crate::vhdx::reparent::apply(target, &p.guard, &p.plan, limits)?;
            Ok(ApplyReport {
                recovery: Recovery::Clean,
                writes: a.writes,
                bytes_written: a.total_bytes(),
                journal_bytes: 0,
                old_len: p.plan.old_len,
                new_len: p.plan.new_len,
                vhdx: Some(a),
                chain: None,
            })
        }
        FormatPlan::Vhd(p) => {
            let recovery = journal::recover(target, store)?;
            if let Recovery::Foreign { reason } = &recovery {
                return Err(refuse_foreign(store, reason));
            }
            journal::apply(target, store, &p.plan)?;
            Ok(vhd_report(recovery, plan))
        }
    }
}
