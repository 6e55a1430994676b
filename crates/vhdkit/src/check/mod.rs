//! `vhdkit check`: validate every structural rule of a VHD or VHDX file, and optionally of its
//! differencing chain, collecting *all* findings instead of stopping at the first.
//!
//! The checkers read the raw on-disk structs of `crate::vhd::format` and
//! `crate::vhdx::format` without validating them, then judge each field themselves, so a
//! broken structure that makes the reader refuse the file still lets later, independent
//! structures be checked. Nothing here writes: files are opened read-only and only read with
//! positional reads. The repairs, and the plans for them, live in [`crate::repair`]; `deadloc`
//! only works out which locators are dead, for the findings and for [`crate::repair`].
//!
//! **Codes** are stable, dotted, lower-case names: `<format>.<structure>.<rule>`, e.g.
//! `vhd.footer.checksum`. Every code is listed in [`CODES`] with its severity and meaning (the
//! README table is generated from the same list). A code never changes meaning; new rules get
//! new codes.
//!
//! **Severity**: `error` (the file breaks a rule; readers may refuse it or return wrong data),
//! `warning` (legal or tolerated, but suspicious or needing action, such as a dirty log), `info`
//! (a fact worth knowing, such as a 511-byte footer). The CLI exits 1 when any error or warning
//! is found, 0 when there is only info.

mod chain;
pub(crate) mod deadloc;
mod disagree;
mod side;
mod tree;
pub(crate) mod vhd;
pub(crate) mod vhdx;

use std::path::{Path, PathBuf};

use crate::disk::DiskFormat;
use crate::error::{Error, Result};
use crate::source::Source;
use crate::ChainOptions;

pub(crate) use chain::check_chain;
pub use tree::check_tree;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Severity {
    /// A fact worth knowing; not a problem.
    Info,
    /// Legal or tolerated, but suspicious or needing action.
    Warning,
    /// A broken rule.
    Error,
}

impl Severity {
    /// `error`, `warning` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One problem or fact found by [`check_source`] or the chain check (`CheckOptions::chain`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// Stable code (see [`CODES`]).
    pub code: &'static str,
    /// The on-disk structure, in the spec's words.
    pub structure: String,
    /// Absolute file offset of the structure or field at fault, when there is one.
    pub offset: Option<u64>,
    /// One line for people.
    pub message: String,
}

impl Finding {
    /// A finding with the severity registered for `code` in [`CODES`].
    pub fn new(
        code: &'static str,
        structure: impl Into<String>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            severity: severity_of(code),
            code,
            structure: structure.into(),
            offset,
            // Findings are one line each (text and JSON reports); a message built from another
            // error's text may span several.
            message: {
                let m = message.into();
                if is_one_line(&m) {
                    m
                } else {
                    crate::util::one_line(&m)
                }
            },
        }
    }
}

/// Whether `s` is already what `util::one_line` makes of it: printable ASCII, single spaces
/// between words and none at the ends. Nearly every message is; checking is a byte scan, much
/// cheaper than rebuilding the string char by char for each of a hostile file's findings.
fn is_one_line(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().all(|c| (b' '..=b'~').contains(c))
        && b.first() != Some(&b' ')
        && b.last() != Some(&b' ')
        && !b.windows(2).any(|w| w == b"  ")
}

/// The severity registered for `code` (error for an unknown code).
pub(crate) fn severity_of(code: &str) -> Severity {
    CODES
        .iter()
        .find(|c| c.0 == code)
        .map_or(Severity::Error, |c| c.1)
}

use Severity::{Error as E, Info as I, Warning as W};

/// Every finding code: (code, severity, meaning).
pub const CODES: &[(&str, Severity, &str)] = &[
    // file level
    ("file.unreadable", E, "the file could not be read (I/O error)"),
    ("file.not_a_disk", E, "no `vhdxfile` signature and no `conectix` footer"),
    ("file.journal_not_regular", W, "something other than a regular file (a symbolic link, FIFO, device, socket, folder) is at the name of the vhdkit journal beside the disk; it is never read and every change to the disk is refused until it is removed"),
    ("file.journal_too_large", W, "the file at the vhdkit journal's name is larger than any vhdkit journal; it is never read and every change to the disk is refused until it is removed"),
    ("file.merge_unfinished", W, "a vhdkit merge record (`NAME.vhdkit-merge`) lies beside the disk: a merge into it was interrupted; while copying, the merged disks still read as before and a rerun of `vhdkit merge CHILD` resumes it; once the copy verified, `vhdkit repair` deletes the merged files and the record"),
    ("file.merge_record_corrupt", W, "the vhdkit merge record beside the disk cannot be read (torn, altered or not one): a merge into the disk was interrupted; look at the merged files before removing it"),
    ("file.partial_output.stale", W, "a partial output (`.NAME.vhdkit-partial-HOST-PID`, `.NAME.vhdkit-share-tmp-HOST-PID`) of a vhdkit run on this host that was killed (its process is gone); the next run on the same output removes it"),
    ("file.partial_output.in_progress", I, "a partial output that a running vhdkit process is writing"),
    ("file.partial_output.unknown", I, "a partial output written on another host (shared storage) or whose name records no host: whether its process still runs cannot be known here, so it is never removed automatically"),
    // trees (folders given to check): paths that could not be inspected
    ("tree.unreadable", E, "a file in the folder could not be opened to look for a disk signature"),
    ("tree.unlistable", E, "a folder in the tree could not be listed"),
    ("tree.link_unresolved", E, "a symlink whose target could not be examined (dangling, or behind a closed folder)"),
    ("tree.symlinked_folder", W, "a symlink to a folder: not followed, its contents not checked"),
    ("tree.too_deep", W, "a folder deeper than the depth bound: not checked"),
    ("tree.entry_limit", W, "the entry bound was reached: the rest of the tree was not checked"),
    // VHD footer
    ("vhd.file.too_small", E, "a VHD needs at least a 511/512-byte footer"),
    ("vhd.footer.missing", E, "no `conectix` footer at the end of the file (a front copy may exist)"),
    ("vhd.footer.short", I, "the end footer is the old 511-byte form"),
    ("vhd.footer.checksum", E, "end footer checksum does not match its bytes"),
    ("vhd.footer.version", W, "file format version is not 1.0"),
    ("vhd.footer.features", I, "features field has bits other than temporary/reserved, or lacks the reserved bit"),
    ("vhd.footer.disk_type", E, "disk type is not fixed (2), dynamic (3) or differencing (4)"),
    ("vhd.footer.size_zero", E, "current size is 0"),
    ("vhd.footer.size_unaligned", E, "current size is not a multiple of 512"),
    ("vhd.footer.size_too_large", W, "dynamic/differencing current size above the 2040 GiB maximum"),
    ("vhd.footer.data_offset", E, "data offset does not point at a dynamic header inside the file (or is not all ones on a fixed disk)"),
    ("vhd.footer.saved_state", I, "the saved-state flag is set"),
    ("vhd.footer.geometry", I, "CHS geometry does not cover the current size"),
    ("vhd.fixed.size_mismatch", E, "fixed disk: current size differs from the data before the footer"),
    ("vhd.footer_copy.missing", E, "dynamic/differencing disk without a footer copy at offset 0"),
    ("vhd.footer_copy.checksum", E, "footer copy at offset 0 has a bad checksum"),
    ("vhd.footer_copy.differs", E, "footer copy at offset 0 differs from the end footer"),
    // VHD dynamic header
    ("vhd.header.truncated", E, "the dynamic header runs past the end of the file"),
    ("vhd.header.cookie", E, "dynamic header cookie is not `cxsparse`"),
    ("vhd.header.checksum", E, "dynamic header checksum does not match its bytes"),
    ("vhd.header.version", W, "dynamic header version is not 1.0"),
    ("vhd.header.block_size", E, "block size is zero, not a power-of-two number of sectors, or above 256 MiB"),
    ("vhd.header.parent_name", W, "differencing disk: parent unicode name is empty or not valid UTF-16BE"),
    ("vhd.header.parent_name_little_endian", W, "differencing disk: the parent unicode name is stored little-endian (VirtualBox 2.x, tapdisk 0.1); read as such"),
    ("vhd.header.parent_id_zero", W, "differencing disk: parent unique id is all zeros"),
    // VHD BAT
    ("vhd.bat.too_small", E, "max table entries is smaller than current size / block size"),
    ("vhd.bat.excess_entries", I, "max table entries is larger than needed"),
    ("vhd.bat.unaligned", E, "table offset is not a multiple of 512"),
    ("vhd.bat.past_eof", E, "the BAT runs past the end of the file (or into the end footer)"),
    ("vhd.bat.overlaps_metadata", E, "the BAT overlaps the footer copy or the dynamic header"),
    ("vhd.bat.too_large", E, "the BAT is larger than the memory limit allows checking"),
    ("vhd.block.past_eof", E, "a BAT entry points a block (bitmap + data) past the end footer"),
    ("vhd.block.overlaps_metadata", E, "a block overlaps the footer copy, dynamic header, BAT or locator data"),
    ("vhd.block.overlap", E, "two BAT entries point at overlapping blocks"),
    // VHD locators
    ("vhd.locator.platform_code", W, "unknown platform code"),
    ("vhd.locator.out_of_bounds", E, "locator data lies (partly) outside the file or before the dynamic header's end"),
    ("vhd.locator.overlaps_metadata", E, "locator data overlaps the BAT or the dynamic header"),
    ("vhd.locator.length", W, "locator data length exceeds its data space, or data space is invalid"),
    ("vhd.locator.undecodable", E, "locator data does not decode (bad UTF-16 / UTF-8)"),
    ("vhd.locator.on_non_differencing", I, "non-empty locator slot on a disk without a parent"),
    ("vhd.locator.none", W, "differencing disk without a usable locator or parent name"),
    ("vhd.locator.disagree", W, "locators (or the parent name) lead to different files: readers that try them in another order open another parent"),
    ("vhd.locator.dead", W, "a locator points nowhere (unusable data, or a relative/`MacX` path that does not lead to the parent) while another locator leads to the parent; `vhdkit repair` drops it"),
    // VHDX file identifier and headers
    ("vhdx.file.too_small", E, "the file ends before the 1 MiB of fixed structures"),
    ("vhdx.ident.signature", E, "file type identifier signature is not `vhdxfile`"),
    ("vhdx.header.signature", E, "a header lacks the `head` signature"),
    ("vhdx.header.checksum", E, "a header's CRC-32C does not match"),
    ("vhdx.header.version", E, "a header's version is not 1"),
    ("vhdx.header.none_valid", E, "neither header is valid: the file cannot be opened"),
    ("vhdx.header.tie", E, "both headers have the same sequence number but different contents"),
    ("vhdx.header.log_version", E, "log version is not 0 with a non-zero LogGuid"),
    ("vhdx.header.sequence_exhausted", W, "a valid header's sequence number is at its maximum: once it is the current header, the file cannot be changed (every write updates the header)"),
    ("vhdx.header.log_placement", E, "log offset/length not 1 MiB aligned, inside the first MiB, or past EOF"),
    // VHDX region tables
    ("vhdx.region.signature", E, "a region table lacks the `regi` signature"),
    ("vhdx.region.checksum", E, "a region table's CRC-32C does not match"),
    ("vhdx.region.entry_count", E, "a region table has more than 2047 entries"),
    ("vhdx.region.none_valid", E, "neither region table is valid: the file cannot be opened"),
    ("vhdx.region.copies_differ", W, "the two valid region tables differ"),
    ("vhdx.region.unaligned", E, "a region's offset or length is not a multiple of 1 MiB, or is zero / inside the first MiB"),
    ("vhdx.region.past_eof", E, "a region ends past the end of the file"),
    ("vhdx.region.overlap", E, "two regions (or a region and the log) overlap"),
    ("vhdx.region.duplicate", E, "a region GUID appears twice"),
    ("vhdx.region.unknown_required", E, "an unknown region is marked required"),
    ("vhdx.region.missing", E, "the BAT or metadata region is missing"),
    // VHDX log
    ("vhdx.log.dirty", W, "the log holds changes not yet applied (replayable; `vhdkit repair` applies them)"),
    ("vhdx.log.corrupt", E, "LogGuid is set but the log has no complete valid sequence, or the file is truncated"),
    // VHDX metadata
    ("vhdx.metadata.signature", E, "the metadata table lacks the `metadata` signature"),
    ("vhdx.metadata.entry_count", E, "the metadata table has more than 2047 entries"),
    ("vhdx.metadata.item_bounds", E, "a metadata item lies outside the region, inside the table, or is over 1 MiB"),
    ("vhdx.metadata.item_overlap", E, "two metadata items overlap"),
    ("vhdx.metadata.duplicate", E, "a metadata item appears twice"),
    ("vhdx.metadata.unknown_required", E, "an unknown metadata item is marked required"),
    ("vhdx.metadata.missing_item", E, "a required metadata item is missing or has the wrong length"),
    ("vhdx.metadata.block_size", E, "block size is not a power of two between 1 and 256 MiB"),
    ("vhdx.metadata.file_parameters", W, "file parameters have reserved flag bits set"),
    ("vhdx.metadata.virtual_size", E, "virtual size is 0, above 64 TiB, or not a multiple of the logical sector size"),
    ("vhdx.metadata.sector_size", E, "logical or physical sector size is not 512 or 4096"),
    ("vhdx.locator.invalid", E, "the parent locator item does not parse (type, bounds, UTF-16, keys, parent_linkage)"),
    ("vhdx.locator.no_path", W, "the parent locator has no path key"),
    ("vhdx.locator.without_parent", W, "a parent locator item on a disk without HasParent"),
    ("vhdx.locator.disagree", W, "locator keys lead to different files: readers that try them in another order open another parent"),
    ("vhdx.locator.dead", W, "a locator key points nowhere (undecodable, or a `relative_path` that does not lead to the parent) while another key leads to the parent; `vhdkit repair` drops it"),
    // VHDX BAT
    ("vhdx.bat.too_small", E, "the BAT region is smaller than the entries the disk needs"),
    ("vhdx.bat.too_large", E, "the BAT is larger than the memory limit allows checking"),
    ("vhdx.bat.state_invalid", E, "a BAT entry has a reserved state, or a state not allowed for this disk type"),
    ("vhdx.bat.reserved_bits", W, "a BAT entry has reserved bits set"),
    ("vhdx.bat.offset_reserved", W, "an entry without data has a non-zero file offset"),
    ("vhdx.bat.offset_invalid", E, "a present block has a zero offset or one inside the first MiB"),
    ("vhdx.bat.past_eof", E, "a present block ends past the end of the file"),
    ("vhdx.bat.overlaps_metadata", E, "a block overlaps the log, a region or the first MiB"),
    ("vhdx.bat.overlap", E, "two BAT entries point at overlapping blocks"),
    ("vhdx.bat.bitmap_missing", E, "a partially present block's chunk has no sector bitmap block"),
    // chain
    ("chain.parent_missing", E, "the parent could not be found by any locator"),
    ("chain.parent_unreadable", E, "the parent file exists but could not be opened"),
    ("chain.identity_mismatch", E, "a parent was found but its identity does not match the child's record"),
    ("chain.size_mismatch", W, "child and parent virtual sizes differ"),
    ("chain.sector_size_mismatch", E, "child and parent logical sector sizes differ"),
    ("chain.physical_sector_size_mismatch", I, "child and parent physical sector sizes differ (allowed: only the logical size must match)"),
    ("chain.format_mismatch", E, "the parent found is of the other format (VHD vs VHDX)"),
    ("chain.not_followed", I, "the chain was not followed because the disk itself does not open"),
    ("chain.loop", E, "the chain loops back to a disk already in it"),
    ("chain.too_deep", E, "the chain is deeper than the configured limit"),
];

/// Findings for one file.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Its format, when detected.
    pub format: Option<DiskFormat>,
    /// Everything found, in file order of discovery.
    pub findings: Vec<Finding>,
}

impl FileReport {
    /// The worst severity found, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// True when there is an error or a warning.
    pub fn has_problems(&self) -> bool {
        self.worst().is_some_and(|s| s >= Severity::Warning)
    }

    /// The distinct codes found, in order of first appearance.
    pub fn codes(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for f in &self.findings {
            if !v.contains(&f.code) {
                v.push(f.code);
            }
        }
        v
    }
}

/// Options for checking.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckOptions {
    /// Also follow and check the differencing chain of each file.
    pub chain: bool,
    /// Parent lookup and limits (the limits bound BAT and log sizes too).
    pub chain_options: ChainOptions,
}

impl CheckOptions {
    /// Set `chain`.
    #[must_use]
    pub fn chain(mut self, v: bool) -> Self {
        self.chain = v;
        self
    }

    /// Set the chain options.
    #[must_use]
    pub fn chain_options(mut self, o: ChainOptions) -> Self {
        self.chain_options = o;
        self
    }
}

/// Per-code cap on individual findings; the rest are summarised in one finding.
pub(crate) const MAX_PER_CODE: usize = 20;

/// Collects findings with a per-code cap, so a hostile BAT cannot produce millions of lines.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub findings: Vec<Finding>,
    counts: Vec<(&'static str, usize)>,
}

impl Findings {
    /// Count one more finding with `code`; true while such findings are still listed.
    fn count(&mut self, code: &'static str) -> bool {
        let n = match self.counts.iter_mut().find(|c| c.0 == code) {
            Some(c) => {
                c.1 += 1;
                c.1
            }
            None => {
                self.counts.push((code, 1));
                1
            }
        };
        n <= MAX_PER_CODE
    }

    pub fn push(&mut self, f: Finding) {
        if self.count(f.code) {
            self.findings.push(f);
        }
    }

    /// Like `add`, but the message is built only when the finding is listed: past the cap a
    /// hostile table would otherwise format millions of messages nobody reads (the summary
    /// finding still counts them).
    pub fn add_with(
        &mut self,
        code: &'static str,
        structure: &'static str,
        offset: Option<u64>,
        message: impl FnOnce() -> String,
    ) {
        if self.count(code) {
            self.findings
                .push(Finding::new(code, structure, offset, message()));
        }
    }

    pub fn add(
        &mut self,
        code: &'static str,
        structure: impl Into<String>,
        offset: Option<u64>,
        message: impl Into<String>,
    ) {
        self.push(Finding::new(code, structure, offset, message));
    }

    pub fn finish(mut self) -> Vec<Finding> {
        for (code, n) in &self.counts {
            if *n > MAX_PER_CODE {
                let first = self.findings.iter().find(|f| f.code == *code).cloned();
                if let Some(f) = first {
                    self.findings.push(Finding {
                        severity: f.severity,
                        code,
                        structure: f.structure,
                        offset: None,
                        message: format!(
                            "{} more findings with this code not listed ({n} in all)",
                            n - MAX_PER_CODE
                        ),
                    });
                }
            }
        }
        self.findings
    }
}

/// Bounds-checked reads from a source, optionally with a replayed VHDX log laid over it.
pub(crate) struct Bytes<'a> {
    pub src: &'a dyn Source,
    /// Length seen by the checks (the base length, or more after a log replay).
    pub len: u64,
    /// Length of the file underneath.
    pub base_len: u64,
    /// A replayed VHDX log: its writes, whose sectors are read from `src` when needed.
    pub replay: Option<crate::vhdx::log::ReplayMap>,
}

impl<'a> Bytes<'a> {
    pub fn new(src: &'a dyn Source, len: u64) -> Bytes<'a> {
        Bytes {
            src,
            len,
            base_len: len,
            replay: None,
        }
    }

    /// `n` bytes at `off`, or `None` when they are not all inside the file (or I/O fails).
    pub fn get(&self, off: u64, n: usize) -> Option<Vec<u8>> {
        let end = off.checked_add(n as u64)?;
        if end > self.len {
            return None;
        }
        let mut b = vec![0u8; n];
        let base_end = end.min(self.base_len);
        if base_end > off {
            let k = usize::try_from(base_end - off).ok()?;
            self.src.read_exact_at(b.get_mut(..k)?, off).ok()?;
        }
        if let Some(r) = &self.replay {
            r.apply(self.src, &mut b, off).ok()?;
        }
        Some(b)
    }
}

/// Check the disk in `src` (format detected by signature). Never fails: what cannot be read is
/// itself a finding.
pub fn check_source(src: &dyn Source, opts: &CheckOptions) -> (Option<DiskFormat>, Vec<Finding>) {
    let len = match src.len() {
        Ok(l) => l,
        Err(e) => {
            return (
                None,
                vec![Finding::new(
                    "file.unreadable",
                    "file",
                    None,
                    format!("could not read the file length: {e}"),
                )],
            )
        }
    };
    let format = match crate::disk::detect(src) {
        Ok(f) => f,
        Err(Error::NotADisk { detail, .. }) => {
            return (
                None,
                vec![Finding::new("file.not_a_disk", "file", Some(0), detail)],
            )
        }
        Err(e) => {
            return (
                None,
                vec![Finding::new("file.unreadable", "file", None, e.to_string())],
            )
        }
    };
    let limits = &opts.chain_options.open.limits;
    let b = Bytes::new(src, len);
    let findings = match format {
        DiskFormat::Vhd => vhd::check(&b, limits),
        DiskFormat::Vhdx => vhdx::check(b, limits),
    };
    (Some(format), findings)
}

/// Check one file (read-only), and its chain when `opts.chain` is set.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::check::{check_file, CheckOptions, Severity};
///
/// let path = dir.path().join("disk.vhd");
/// vhdkit::create(&path, &vhdkit::CreateParams::dynamic(8 << 20))?;
/// let report = check_file(&path, &CheckOptions::default())?;
/// assert!(!report.has_problems());
///
/// // Damage the footer's checksum field: the finding has a stable code and the offset.
/// let mut bytes = std::fs::read(&path)?;
/// let end = bytes.len() - 512;
/// bytes[end + 64] ^= 0xff;
/// std::fs::write(&path, &bytes)?;
/// let report = check_file(&path, &CheckOptions::default())?;
/// let f = report.findings.iter().find(|f| f.code == "vhd.footer.checksum").unwrap();
/// assert_eq!((f.severity, f.offset), (Severity::Error, Some(end as u64 + 64)));
/// # Ok(())
/// # }
/// ```
pub fn check_file(path: impl AsRef<Path>, opts: &CheckOptions) -> Result<FileReport> {
    let path = path.as_ref();
    if let Some(report) = side::partial_report(path) {
        return Ok(report);
    }
    let file = crate::fsx::open_disk(path)
        .map_err(|e| Error::io("opening the file read-only", e).with_path(path))?;
    let (format, mut findings) = check_source(&file, opts);
    findings.extend(side::journal_findings(path));
    findings.extend(crate::merge::finish::findings(path));
    if format.is_some() {
        // Needs the path: whether a locator leads anywhere depends on the child's folder.
        findings.extend(deadloc::findings(path, &opts.chain_options.confine));
        findings.extend(disagree::findings(path, &opts.chain_options));
    }
    if opts.chain && format.is_some() {
        findings.extend(check_chain(path, &opts.chain_options));
    }
    Ok(FileReport {
        path: path.to_path_buf(),
        format,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for (c, _, m) in CODES {
            assert!(seen.insert(*c), "duplicate code {c}");
            assert!(c.split('.').count() >= 2, "{c}");
            assert!(!m.is_empty());
        }
    }

    // The README is outside the published package (see build.rs).
    #[cfg(vhdkit_workspace)]
    #[test]
    fn every_code_is_documented_in_the_readme() {
        let readme = include_str!("../../../../README.md");
        for (c, _, _) in CODES {
            assert!(
                readme.contains(&format!("| `{c}` |")),
                "{c} missing from README.md"
            );
        }
    }

    #[test]
    fn messages_already_on_one_line_are_kept_and_others_made_so() {
        for m in ["entry 5 (at 0x1000) overlaps entry 3", "x", "", "a b ~!"] {
            assert!(is_one_line(m), "{m:?}");
            assert_eq!(Finding::new("vhd.block.overlap", "s", None, m).message, m);
            assert_eq!(crate::util::one_line(m), m);
        }
        for m in [
            " lead",
            "trail ",
            "two  spaces",
            "line\nbreak",
            "tab\there",
            "\u{1b}[31mred",
            "é",
        ] {
            assert!(!is_one_line(m), "{m:?}");
            let f = Finding::new("vhd.block.overlap", "s", None, m);
            assert_eq!(f.message, crate::util::one_line(m));
        }
    }

    #[test]
    fn findings_cap_per_code() {
        let mut s = Findings::default();
        for i in 0..100u64 {
            s.add("vhd.block.overlap", "vhd bat", Some(i), "x");
        }
        let f = s.finish();
        assert_eq!(f.len(), MAX_PER_CODE + 1);
        assert!(f.last().unwrap().message.contains("80 more"));
    }

    #[test]
    fn findings_cap_counts_unformatted_messages() {
        let mut s = Findings::default();
        let mut built = 0u64;
        for i in 0..1000u64 {
            s.add_with("vhd.block.past_eof", "vhd bat", Some(i), || {
                built += 1;
                format!("block {i}")
            });
            // Interleaved with `add` on the same code: one count for both.
            s.add("vhd.block.past_eof", "vhd bat", Some(i), "y");
            s.add_with("vhd.block.overlap", "vhd bat", None, || "z".into());
        }
        assert_eq!(built, 10, "messages past the cap must not be built");
        let f = s.finish();
        assert_eq!(f.len(), 2 * MAX_PER_CODE + 2);
        let eof: Vec<_> = f
            .iter()
            .filter(|f| f.code == "vhd.block.past_eof")
            .collect();
        assert_eq!(eof.len(), MAX_PER_CODE + 1);
        assert_eq!(eof[0].message, "block 0");
        assert_eq!(eof[0].offset, Some(0));
        assert_eq!(eof[1].message, "y");
        assert_eq!(eof[18].message, "block 9");
        assert_eq!(eof[19].message, "y");
        let summary = eof[MAX_PER_CODE];
        assert_eq!(
            summary.message,
            "1980 more findings with this code not listed (2000 in all)"
        );
        assert_eq!(summary.structure, "vhd bat");
        assert_eq!(summary.offset, None);
        let overlap = f.last().unwrap();
        assert_eq!(overlap.code, "vhd.block.overlap");
        assert_eq!(
            overlap.message,
            "980 more findings with this code not listed (1000 in all)"
        );
    }
}
