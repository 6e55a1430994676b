//! Repoint a differencing disk at another copy of its parent (Hyper-V's `Set-VHD -ParentPath`),
//! in two steps: [`plan`] validates everything and computes every change, touching nothing;
//! [`apply`] writes the plan crash-safely through [`crate::txn`].
//!
//! Checks, all before anything is opened for writing (a failure is [`Error::Refused`] and the
//! child keeps its bytes and its modification time):
//! - no foreign vhdkit journal lies beside the child (a valid pending one is finished by
//!   [`apply`] first; the plan is computed on the file as it will be then);
//! - the child is a differencing disk; the new parent opens and is of the same format;
//! - the new parent is neither the child nor a descendant of it (the child must not appear in
//!   the new parent's chain), and that chain resolves intact;
//! - virtual size and sector sizes are equal;
//! - identity: the new parent's identity equals the child's linkage, unless
//!   `ignore_id_mismatch` (the linkage is rewritten to the new parent, with a loud warning) or
//!   `verify_content` (accepted only when the old and new parents' virtual contents, each read
//!   through its own chain, are equal; then the linkage is rewritten too).
//!
//! The format-specific part lives in `vhd::reparent` (locators, parent name; written through a
//! redo journal beside the file) and `vhdx::reparent` (the parent locator metadata item; written
//! through the file's own log, so no journal is used for VHDX).

use std::fs;
use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

use crate::chain::{Chain, ChainOptions, IdMatch};
use crate::disk::{Disk, DiskFormat};
use crate::error::{Error, Result};
use crate::txn::barrier::{Barrier, FsBarrier};
use crate::txn::journal::{self, FileJournal, JournalState, JournalStore, Recovery};
use crate::txn::{self, Sink};
use crate::vhd::name_style::{NameInputs, NameStyle, ParentNameStyle};

/// Which locators to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LocatorMode {
    /// The relative path and the absolute path (what Hyper-V writes).
    #[default]
    Both,
    /// Only the relative path; the absolute locator is cleared.
    RelativeOnly,
    /// Only the absolute path; the relative locator is cleared.
    AbsoluteOnly,
}

/// What to repoint the child at, and how.
#[derive(Debug, Clone, Default)]
pub struct ReparentOptions {
    /// The new parent file.
    pub new_parent: PathBuf,
    /// Which locators to write.
    pub mode: LocatorMode,
    /// Accept a new parent whose identity differs from the child's linkage, and rewrite the
    /// linkage to it (Hyper-V's `-IgnoreIdMismatch`).
    pub ignore_id_mismatch: bool,
    /// The old parent: accept a mismatching new parent only when both have the same virtual
    /// contents (read through their own chains); the linkage is then rewritten.
    pub verify_content: Option<PathBuf>,
    /// The absolute Windows path to record (`C:\Lab\Ref\base.vhd`, `\\server\share\base.vhd`).
    pub windows_path: Option<String>,
    /// How to open disks and resolve the new parent's own chain; its path maps are also used
    /// in reverse to form the absolute Windows path.
    pub chain: ChainOptions,
}

/// How the new parent's identity was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "verdict", rename_all = "snake_case"))]
pub enum IdentityCheck {
    /// It equals the child's primary linkage (VHD parent unique id, VHDX `parent_linkage`).
    Primary,
    /// It equals VHDX `parent_linkage2`.
    Alternate,
    /// It differs; accepted because the caller said to ignore the mismatch. The linkage is
    /// rewritten to the new parent.
    MismatchIgnored {
        /// The identity the child recorded.
        recorded: Uuid,
        /// The new parent's identity.
        new_parent: Uuid,
    },
    /// It differs; accepted because the old and new parents' virtual contents are equal. The
    /// linkage is rewritten to the new parent.
    ContentVerified {
        /// The identity the child recorded.
        recorded: Uuid,
        /// The new parent's identity.
        new_parent: Uuid,
        /// The old parent compared with.
        old_parent: PathBuf,
        /// Bytes compared.
        bytes_compared: u64,
    },
}

/// How the absolute path was formed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "source", rename_all = "snake_case"))]
pub enum AbsoluteSource {
    /// Given by the caller (`--windows-path`).
    Given,
    /// A path map read in reverse: the new parent lies under `local`, which stands for `prefix`.
    Map {
        /// The Windows prefix.
        prefix: String,
        /// The local folder.
        local: PathBuf,
    },
    /// The real absolute path (on Windows).
    Native,
    /// The local POSIX path as it is: Windows hosts will not resolve it.
    LocalPosix,
}

/// The absolute path written, and how it was formed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AbsolutePath {
    /// The path.
    pub value: String,
    /// Where it came from.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub source: AbsoluteSource,
    /// One line for people.
    pub how: String,
}

/// Everything a reparent will do. Building it touches nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ReparentPlan {
    /// The child file.
    pub child: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// The new parent, as given.
    pub new_parent: PathBuf,
    /// The new parent's absolute path on this machine.
    pub new_parent_resolved: PathBuf,
    /// The identity the child records now.
    pub recorded_parent_id: Uuid,
    /// The new parent's identity.
    pub new_parent_id: Uuid,
    /// How the identity was accepted.
    pub identity: IdentityCheck,
    /// True when the child's linkage (parent id and time stamp) is rewritten.
    pub linkage_rewritten: bool,
    /// Which locators are written.
    pub mode: LocatorMode,
    /// The relative path written (`None` in absolute-only mode, or when there is none).
    pub relative_path: Option<String>,
    /// The absolute path written.
    pub absolute_path: Option<AbsolutePath>,
    /// The parent name written (VHD parent unicode name; empty for VHDX, which has none).
    pub parent_name: String,
    /// VHD: the parent name's style before and after (the child's style is kept when it can
    /// be, so the tool that made the child still finds its parent).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub parent_name_style: Option<ParentNameStyle>,
    /// True when an interrupted change will be finished before applying: a vhdkit journal
    /// beside a VHD, a dirty log inside a VHDX (replayed to the file).
    pub pending_journal: bool,
    /// Facts worth showing.
    pub notes: Vec<String>,
    /// Things the user must know (mismatches overridden, paths Windows will not resolve).
    pub warnings: Vec<String>,
    /// The field changes and byte writes.
    pub txn: txn::Plan,
    /// Bytes the plan writes to the child. VHD: the plan's writes (journal not counted). VHDX:
    /// everything written to the file on a clean log (header updates, the log entry and the
    /// metadata sectors applied from it); the plan's logical metadata writes are in `txn`.
    pub bytes_written: u64,
    /// VHDX: the current header the plan was made on ([`apply`] refuses a file whose header
    /// has changed since).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub vhdx: Option<crate::vhdx::reparent::HeaderGuard>,
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ApplyReport {
    /// A pending change found first, and what was done with it.
    pub recovery: Recovery,
    /// Byte ranges written to the child.
    pub writes: usize,
    /// Bytes written to the child.
    pub bytes_written: u64,
    /// Bytes of the journal written beside it (then removed).
    pub journal_bytes: u64,
    /// File length before.
    pub old_len: u64,
    /// File length after.
    pub new_len: u64,
    /// VHDX: what was written where (headers, log, metadata), and a log replayed first.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub vhdx: Option<crate::vhdx::reparent::Applied>,
}

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn refused(child: &Path, reason: impl Into<String>) -> Error {
    Error::Refused {
        path: Some(child.to_path_buf()),
        reason: reason.into(),
    }
}

/// Plan repointing `child` at `opts.new_parent`. Reads only.
pub fn plan(child: &Path, opts: &ReparentOptions) -> Result<ReparentPlan> {
    let refuse = |r: String| refused(child, r);
    let mut warnings = Vec::new();
    let mut notes = Vec::new();

    // A journal beside the child: a valid pending one is finished by apply (the plan is made on
    // the file as it will be); a foreign one stops everything.
    let pending_journal = {
        let file =
            fs::File::open(child).map_err(|e| Error::io("opening the file", e).with_path(child))?;
        let store = FileJournal::for_disk(child);
        match journal::inspect(&file, &store)? {
            JournalState::Absent => false,
            JournalState::Pending(_) | JournalState::Complete(_) => {
                notes.push(format!(
                    "an interrupted vhdkit change is pending in {}; it is finished before this \
                     change is applied (the plan is made on the file as it will be then)",
                    store.describe()
                ));
                true
            }
            JournalState::Foreign { reason } => {
                return Err(refuse(format!(
                    "a vhdkit journal {} does not match the file ({reason}); move it away after \
                     checking the file",
                    store.describe()
                )))
            }
        }
    };

    let c = Disk::open_with(child, &opts.chain.open)?;
    if c.format() == DiskFormat::Vhdx && pending_journal {
        return Err(refuse(format!(
            "a vhdkit journal {} lies beside a VHDX file (vhdkit writes VHDX changes through \
             the file's own log, never a journal); move it away after checking the file",
            FileJournal::for_disk(child).describe()
        )));
    }
    let Some(linkage) = c.parent_linkage() else {
        return Err(refuse(format!(
            "it is a {} disk, not a differencing disk: it has no parent to repoint",
            c.disk_type()
        )));
    };
    let np_path = &opts.new_parent;
    let np = Disk::open_with(np_path, &opts.chain.open).map_err(|e| {
        refuse(format!(
            "the new parent {} cannot be opened: {e}",
            np_path.display()
        ))
    })?;
    if np.format() != c.format() {
        return Err(refuse(format!(
            "the new parent {} is a {} file; a {} child needs a {} parent",
            np_path.display(),
            np.format(),
            c.format(),
            c.format()
        )));
    }
    let child_canon = canonical(child);
    let np_canon = canonical(np_path);
    if np_canon == child_canon {
        return Err(refuse("the new parent is the child itself".to_string()));
    }
    if np.identity() == c.identity() {
        return Err(refuse(format!(
            "the new parent {} has the child's own unique id {} (a copy of the child?)",
            np_path.display(),
            c.identity()
        )));
    }
    let report = Chain::inspect(np_path, &opts.chain)?;
    if let Some(l) = report
        .links
        .iter()
        .find(|l| canonical(&l.path) == child_canon || l.id == c.identity())
    {
        let path: Vec<String> = report
            .links
            .iter()
            .take_while(|x| !std::ptr::eq(*x, l))
            .map(|x| x.path.display().to_string())
            .collect();
        return Err(refuse(format!(
            "the new parent {} is a descendant of the child (its chain {} -> {} leads back to it); \
             that would make a loop",
            np_path.display(),
            path.join(" -> "),
            l.path.display()
        )));
    }
    if let Some(reason) = &report.broken_reason {
        return Err(refuse(format!(
            "the new parent's own chain is broken: {}",
            reason.replace('\n', " ")
        )));
    }
    if np.virtual_size() != c.virtual_size() {
        return Err(refuse(format!(
            "virtual size mismatch: the new parent has {} bytes, the child {}",
            np.virtual_size(),
            c.virtual_size()
        )));
    }
    let sectors = crate::sectors::compare(&c, &np);
    if let Some(why) = sectors.refusal() {
        return Err(refuse(why));
    }
    notes.extend(sectors.note());

    // Identity.
    let np_id = np.identity();
    let id_match = if np_id == linkage.id {
        Some(IdMatch::Primary)
    } else if linkage.alternate_id == Some(np_id) {
        Some(IdMatch::Alternate)
    } else {
        None
    };
    let verified = match &opts.verify_content {
        Some(old) => Some(verify_content(child, &linkage.id, old, np_path, opts)?),
        None => None,
    };
    let identity = match (id_match, verified) {
        (Some(IdMatch::Primary), v) => {
            if let Some(n) = v {
                notes.push(format!(
                    "identity matches; --verify-content also found the contents equal ({n} bytes)"
                ));
            }
            IdentityCheck::Primary
        }
        (Some(IdMatch::Alternate), _) => IdentityCheck::Alternate,
        (None, Some(bytes_compared)) => IdentityCheck::ContentVerified {
            recorded: linkage.id,
            new_parent: np_id,
            old_parent: opts.verify_content.clone().unwrap_or_default(),
            bytes_compared,
        },
        (None, None) if opts.ignore_id_mismatch => IdentityCheck::MismatchIgnored {
            recorded: linkage.id,
            new_parent: np_id,
        },
        (None, None) => {
            return Err(refuse(format!(
                "identity mismatch: the child's parent id is {}, the new parent {} has {}; \
                 if it really holds the same data, use --verify-content OLDPARENT or \
                 --ignore-id-mismatch",
                linkage.id,
                np_path.display(),
                np_id
            )))
        }
    };
    let linkage_rewritten = matches!(
        identity,
        IdentityCheck::MismatchIgnored { .. } | IdentityCheck::ContentVerified { .. }
    );
    match &identity {
        IdentityCheck::MismatchIgnored {
            recorded,
            new_parent,
        } => warnings.push(format!(
            "IDENTITY MISMATCH IGNORED: the child was made from parent {recorded}, the new parent \
             is {new_parent}; its linkage is rewritten to the new parent. If the new parent does \
             not hold exactly the old parent's data, the child's disk is now CORRUPT"
        )),
        IdentityCheck::ContentVerified {
            recorded,
            new_parent,
            bytes_compared,
            ..
        } => notes.push(format!(
            "the new parent's id {new_parent} differs from the recorded {recorded}, but its \
             virtual contents equal the old parent's ({bytes_compared} bytes compared); the \
             linkage is rewritten to the new parent"
        )),
        _ => {}
    }

    // Paths.
    let child_dir = child_canon
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let np_file_name = np_canon
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| refuse("the new parent's file name is not valid Unicode".into()))?;
    let relative_path = if opts.mode == LocatorMode::AbsoluteOnly {
        None
    } else {
        match relative_windows_path(&child_dir, &np_canon) {
            Ok(r) => Some(r),
            Err(why) if opts.mode == LocatorMode::RelativeOnly => {
                return Err(refuse(format!("no relative path to the new parent: {why}")))
            }
            Err(why) => {
                warnings.push(format!(
                    "no relative path to the new parent ({why}); only the absolute path is written"
                ));
                None
            }
        }
    };
    let absolute_path = if opts.mode == LocatorMode::RelativeOnly {
        None
    } else {
        Some(absolute_windows_path(&np_canon, &np_file_name, opts).map_err(refuse)?)
    };
    if let Some(a) = &absolute_path {
        if a.source == AbsoluteSource::LocalPosix {
            warnings.push(format!(
                "the absolute path {} is a local POSIX path: Windows hosts will not resolve it \
                 (vhdkit does); give --windows-path or --map PREFIX=DIR to record a Windows path",
                a.value
            ));
        }
    }
    let open =
        || -> Result<Box<dyn crate::Source>> { crate::disk::open_source(child).map(|(s, _)| s) };
    if c.format() == DiskFormat::Vhdx {
        let targets = crate::vhdx::reparent::Targets {
            relative: relative_path.clone(),
            absolute: absolute_path.as_ref().map(|a| a.value.clone()),
            linkage: linkage_rewritten.then_some(np_id),
        };
        let planned = crate::vhdx::reparent::plan(&open, &opts.chain.open, &targets)
            .map_err(|e| e.with_path(child))?;
        match &identity {
            IdentityCheck::Alternate => notes.push(format!(
                "the new parent's DataWriteGuid {np_id} equals the child's parent_linkage2 (not \
                 parent_linkage {}); both are kept",
                linkage.id
            )),
            _ if linkage_rewritten => notes.push(format!(
                "parent_linkage is rewritten to the new parent's DataWriteGuid {np_id}"
            )),
            _ => {}
        }
        notes.push(format!(
            "written through the VHDX log as one entry (atomic); the child's DataWriteGuid {} \
             is kept (its own children link to it), its FileWriteGuid is renewed",
            planned.guard.data_write_guid
        ));
        notes.extend(planned.notes);
        warnings.extend(planned.warnings);
        return Ok(ReparentPlan {
            child: child.to_path_buf(),
            format: c.format(),
            new_parent: np_path.clone(),
            new_parent_resolved: np_canon,
            recorded_parent_id: linkage.id,
            new_parent_id: np_id,
            identity,
            linkage_rewritten,
            mode: opts.mode,
            relative_path,
            absolute_path,
            parent_name: String::new(),
            parent_name_style: None,
            pending_journal: planned.guard.log_dirty,
            notes,
            warnings,
            txn: planned.plan,
            bytes_written: planned.predicted_bytes,
            vhdx: Some(planned.guard),
        });
    }
    let old_name = c
        .parent_locators()
        .into_iter()
        .find(|l| l.kind == "parent_name")
        .and_then(|l| l.path);
    let (parent_name, name_style) = crate::vhd::name_style::choose(&NameInputs {
        old: old_name.as_deref(),
        mode: opts.mode,
        absolute: absolute_path.as_ref().map(|a| a.value.as_str()),
        child_dir: &child_dir,
        new_parent: &np_canon,
        file_name: &np_file_name,
        max_units: crate::vhd::reparent::MAX_PARENT_NAME_UNITS,
    });
    notes.push(describe_name_style(&name_style));
    if parent_name.encode_utf16().count() > crate::vhd::reparent::MAX_PARENT_NAME_UNITS {
        return Err(refuse(format!(
            "the new parent's file name is longer than the 256 UTF-16 code units of the parent \
             name: {parent_name}"
        )));
    }

    // Format-specific plan.
    let targets = crate::vhd::reparent::Targets {
        relative: relative_path.clone(),
        absolute: absolute_path.as_ref().map(|a| a.value.clone()),
        parent_name: parent_name.clone(),
        linkage: linkage_rewritten.then(|| (crate::guid::to_vhd_bytes(&np_id), 0)),
    };
    let planned = crate::vhd::reparent::plan(&open, &opts.chain.open, &targets)
        .map_err(|e| e.with_path(child))?;
    if linkage_rewritten {
        notes.push(
            "the parent time stamp is set to 0, as Windows writes it for new links (FORMAT.md A.10)"
                .into(),
        );
    }
    notes.extend(planned.notes);
    warnings.extend(planned.warnings);
    let bytes_written = planned.plan.bytes_written();
    Ok(ReparentPlan {
        child: child.to_path_buf(),
        format: c.format(),
        new_parent: np_path.clone(),
        new_parent_resolved: np_canon,
        recorded_parent_id: linkage.id,
        new_parent_id: np_id,
        identity,
        linkage_rewritten,
        mode: opts.mode,
        relative_path,
        absolute_path,
        parent_name,
        parent_name_style: Some(name_style),
        pending_journal,
        notes,
        warnings,
        txn: planned.plan,
        bytes_written,
        vhdx: None,
    })
}

fn describe_name_style(s: &ParentNameStyle) -> String {
    let name = |n: NameStyle| match n {
        NameStyle::Absolute => "absolute path",
        NameStyle::Relative => "relative path",
        NameStyle::Bare => "bare file name",
        NameStyle::None => "nothing usable",
    };
    match (&s.why, s.kept) {
        (None, true) => format!("parent name style kept: {}", name(s.written)),
        (Some(why), true) => format!("parent name style kept: {} ({why})", name(s.written)),
        (why, false) => format!(
            "parent name style changed: {} -> {}{}",
            name(s.before),
            name(s.written),
            why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
        ),
    }
}

/// Compare the virtual contents of the old and new parents, each through its own chain, in
/// 1 MiB chunks. `Ok(bytes compared)` when equal; a refusal otherwise.
fn verify_content(
    child: &Path,
    recorded: &Uuid,
    old: &Path,
    new: &Path,
    opts: &ReparentOptions,
) -> Result<u64> {
    let refuse = |r: String| refused(child, r);
    let old_chain = Chain::open(old, &opts.chain)
        .map_err(|e| refuse(format!("--verify-content: the old parent's chain: {e}")))?;
    let old_id = old_chain.disks().first().map(Disk::identity);
    if old_id != Some(*recorded) {
        return Err(refuse(format!(
            "--verify-content: {} is not the child's recorded parent (it has id {}, the child \
             records {recorded})",
            old.display(),
            old_id.map_or_else(|| "?".to_string(), |u| u.to_string())
        )));
    }
    let new_chain = Chain::open(new, &opts.chain)
        .map_err(|e| refuse(format!("--verify-content: the new parent's chain: {e}")))?;
    let (a, b) = (old_chain.into_view(), new_chain.into_view());
    if a.virtual_size() != b.virtual_size() {
        return Err(refuse(format!(
            "--verify-content: the old parent has {} bytes, the new one {}",
            a.virtual_size(),
            b.virtual_size()
        )));
    }
    const CHUNK: u64 = 1 << 20;
    let size = a.virtual_size();
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK) as usize;
        let (xa, xb) = (&mut ba[..n], &mut bb[..n]);
        a.read_exact_at(xa, off)?;
        b.read_exact_at(xb, off)?;
        if xa != xb {
            let i = xa
                .iter()
                .zip(xb.iter())
                .position(|(p, q)| p != q)
                .unwrap_or(0);
            return Err(refuse(format!(
                "--verify-content: the new parent's contents differ from the old parent's at \
                 virtual offset {:#x}",
                off + i as u64
            )));
        }
        off += n as u64;
    }
    Ok(size)
}

/// Path components as UTF-8 strings usable in a Windows path.
fn win_parts(p: &Path) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                let s = s
                    .to_str()
                    .ok_or_else(|| format!("{} is not valid Unicode", p.display()))?;
                if s.contains('\\') {
                    return Err(format!(
                        "the name {s:?} contains a backslash, which Windows reads as a separator"
                    ));
                }
                out.push(s.to_string());
            }
            Component::CurDir => {}
            other => {
                return Err(format!(
                    "unexpected path component {:?} in {}",
                    other.as_os_str(),
                    p.display()
                ))
            }
        }
    }
    Ok(out)
}

/// Split an absolute path into its root (prefix and root dir) and the rest.
fn split_root(p: &Path) -> (PathBuf, PathBuf) {
    let mut root = PathBuf::new();
    let mut rest = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => root.push(c.as_os_str()),
            other => rest.push(other.as_os_str()),
        }
    }
    (root, rest)
}

/// The path of `target` relative to `dir` in Hyper-V's form: `.\file.vhd`, `.\sub\file.vhd`,
/// `..\ref\file.vhd`. Both must be absolute and normalised (canonical).
pub fn relative_windows_path(dir: &Path, target: &Path) -> std::result::Result<String, String> {
    let (dr, drest) = split_root(dir);
    let (tr, trest) = split_root(target);
    if dr != tr {
        return Err(format!(
            "{} and {} are on different roots",
            dir.display(),
            target.display()
        ));
    }
    let d = win_parts(&drest)?;
    let t = win_parts(&trest)?;
    let common = d.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common == t.len() {
        return Err("the new parent is a folder above the child".into());
    }
    let ups = d.len() - common;
    let mut s = if ups == 0 {
        ".\\".to_string()
    } else {
        "..\\".repeat(ups)
    };
    s.push_str(&t[common..].join("\\"));
    Ok(s)
}

fn is_windows_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with(r"\\")
        || (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\')
}

/// The absolute path to record for `np` (canonical), and how it was formed.
fn absolute_windows_path(
    np: &Path,
    file_name: &str,
    opts: &ReparentOptions,
) -> std::result::Result<AbsolutePath, String> {
    if let Some(w) = &opts.windows_path {
        if !is_windows_absolute(w) {
            return Err(format!(
                "--windows-path {w:?} is not an absolute Windows path (C:\\dir\\file.vhd or \
                 \\\\server\\share\\file.vhd)"
            ));
        }
        let mut how = "given with --windows-path".to_string();
        let last = w.rsplit('\\').next().unwrap_or_default();
        if !last.eq_ignore_ascii_case(file_name) && last.to_lowercase() != file_name.to_lowercase()
        {
            how.push_str(&format!(
                " (its file name {last:?} differs from the local {file_name:?})"
            ));
        }
        return Ok(AbsolutePath {
            value: w.clone(),
            source: AbsoluteSource::Given,
            how,
        });
    }
    // Reverse a path map whose local side contains the new parent (longest local side first).
    let mut maps: Vec<_> = opts.chain.path_maps.iter().collect();
    maps.sort_by_key(|m| std::cmp::Reverse(m.local.components().count()));
    for m in maps {
        for local in [canonical(&m.local), m.local.clone()] {
            if let Ok(rest) = np.strip_prefix(&local) {
                let parts = win_parts(rest)?;
                let prefix = m.windows_prefix.trim_end_matches(['\\', '/']);
                let value = if parts.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{prefix}\\{}", parts.join("\\"))
                };
                return Ok(AbsolutePath {
                    how: format!(
                        "from --map '{}={}' read in reverse",
                        m.windows_prefix,
                        m.local.display()
                    ),
                    value,
                    source: AbsoluteSource::Map {
                        prefix: m.windows_prefix.clone(),
                        local: m.local.clone(),
                    },
                });
            }
        }
    }
    let s = np
        .to_str()
        .ok_or_else(|| format!("{} is not valid Unicode", np.display()))?;
    if cfg!(windows) {
        let s = if let Some(unc) = s.strip_prefix(r"\\?\UNC\") {
            format!(r"\\{unc}")
        } else {
            s.strip_prefix(r"\\?\").unwrap_or(s).to_string()
        };
        return Ok(AbsolutePath {
            value: s,
            source: AbsoluteSource::Native,
            how: "the new parent's real absolute path".into(),
        });
    }
    Ok(AbsolutePath {
        value: s.to_string(),
        source: AbsoluteSource::LocalPosix,
        how: "the local absolute path as it is (no --windows-path, no --map containing it); \
              Windows hosts will not resolve it"
            .into(),
    })
}

/// Apply a plan to the child file: check that the new parent still has the planned identity,
/// then (VHD) finish a pending journal first, check the file still holds every old byte of the
/// plan, and write through the redo journal beside the file; or (VHDX) check the current header
/// is the one the plan was made on, replay a dirty log, check every old byte, and commit through
/// the file's own log.
pub fn apply(plan: &ReparentPlan) -> Result<ApplyReport> {
    check_new_parent(plan)?;
    let file = open_child(plan)?;
    let store = FileJournal::for_disk(&plan.child);
    apply_to(&file, &store, plan).map_err(|e| e.with_path(&plan.child))
}

fn check_new_parent(plan: &ReparentPlan) -> Result<()> {
    let np = Disk::open(&plan.new_parent_resolved).map_err(|e| {
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

fn open_child(plan: &ReparentPlan) -> Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&plan.child)
        .map_err(|e| Error::io("opening the child for writing", e).with_path(&plan.child))
}

/// [`apply`] for many children at once, with the same checks for each and one result per plan
/// (in order). VHD children are written as one batch through
/// [`journal::apply_batch`]: each keeps its own journal beside it (so recovery is unchanged),
/// but the batch needs four durability barriers in all (on Linux one `syncfs` per file system
/// each) instead of about four `fsync`s per child. VHDX children go one by one through their
/// own log, as with [`apply`].
///
/// The plans must be independent: no child may be the new parent (or in the new parent's
/// chain) of another plan of the same batch.
pub fn apply_batch(plans: &[&ReparentPlan]) -> Vec<Result<ApplyReport>> {
    let mut out: Vec<Option<Result<ApplyReport>>> = plans.iter().map(|_| None).collect();
    let mut opened = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        match check_new_parent(p).and_then(|()| open_child(p)) {
            Ok(f) => opened.push((i, f, FileJournal::for_disk(&p.child))),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let vhd_paths: Vec<&Path> = opened
        .iter()
        .filter(|(i, _, _)| plans[*i].format != DiskFormat::Vhdx)
        .map(|(i, _, _)| plans[*i].child.as_path())
        .collect();
    let barrier = if vhd_paths.is_empty() {
        None
    } else {
        match FsBarrier::for_disks(&vhd_paths) {
            Ok(b) => Some(b),
            Err(e) => {
                for (i, _, _) in &opened {
                    if plans[*i].format != DiskFormat::Vhdx {
                        out[*i] = Some(Err(Error::io(
                            "preparing the durability barrier",
                            std::io::Error::new(e.kind(), e.to_string()),
                        )
                        .with_path(&plans[*i].child)));
                    }
                }
                None
            }
        }
    };
    let items: Vec<BatchTarget<'_>> = opened
        .iter()
        .filter(|(i, _, _)| out[*i].is_none())
        .map(|(i, f, j)| (f as &dyn Sink, j as &(dyn JournalStore + Sync), plans[*i]))
        .collect();
    let idx: Vec<usize> = opened
        .iter()
        .filter(|(i, _, _)| out[*i].is_none())
        .map(|(i, _, _)| *i)
        .collect();
    let results = match &barrier {
        Some(b) => apply_batch_to(&items, b),
        None => apply_batch_to(&items, &NoVhdBarrier),
    };
    for (i, r) in idx.into_iter().zip(results) {
        out[i] = Some(r.map_err(|e| e.with_path(&plans[i].child)));
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::InvalidArgument("not applied".into()))))
        .collect()
}

/// One child of [`apply_batch_to`]: the file, its journal and its plan.
pub type BatchTarget<'a> = (
    &'a dyn Sink,
    &'a (dyn JournalStore + Sync),
    &'a ReparentPlan,
);

/// The barrier of a batch without VHD children: never called.
struct NoVhdBarrier;

impl Barrier for NoVhdBarrier {
    fn barrier(&self) -> std::io::Result<()> {
        Err(std::io::Error::other("no barrier for this batch"))
    }
}

/// [`apply_batch`] on any targets, journal stores and barrier (fault-injection tests use
/// [`crate::txn::fault`]). Each VHD child first has a pending journal finished (or a foreign
/// one refused), one by one; then all are written as one batch. VHDX children go through
/// [`apply_to`] one by one.
pub fn apply_batch_to(
    items: &[BatchTarget<'_>],
    barrier: &dyn Barrier,
) -> Vec<Result<ApplyReport>> {
    let mut out: Vec<Option<Result<ApplyReport>>> = items.iter().map(|_| None).collect();
    let mut batch = Vec::new();
    let mut recoveries = Vec::new();
    for (i, (target, store, plan)) in items.iter().enumerate() {
        if plan.format == DiskFormat::Vhdx {
            out[i] = Some(apply_to(*target, *store, plan));
            continue;
        }
        match journal::recover(*target, *store) {
            Ok(Recovery::Foreign { reason }) => {
                out[i] = Some(Err(Error::refused(format!(
                    "a vhdkit journal {} does not match the file ({reason})",
                    store.describe()
                ))))
            }
            Ok(r) => {
                batch.push(i);
                recoveries.push(r);
            }
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let jitems: Vec<journal::BatchItem<'_>> = batch
        .iter()
        .map(|&i| journal::BatchItem {
            target: items[i].0,
            store: items[i].1,
            plan: &items[i].2.txn,
        })
        .collect();
    let results = journal::apply_batch(&jitems, barrier);
    for ((i, recovery), r) in batch.into_iter().zip(recoveries).zip(results) {
        let plan = items[i].2;
        out[i] = Some(r.map(|()| vhd_report(recovery, plan)));
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::InvalidArgument("not applied".into()))))
        .collect()
}

fn vhd_report(recovery: Recovery, plan: &ReparentPlan) -> ApplyReport {
    ApplyReport {
        recovery,
        writes: plan.txn.writes.len(),
        bytes_written: plan.txn.bytes_written(),
        journal_bytes: journal::encoded_len(&plan.txn) as u64,
        old_len: plan.txn.old_len,
        new_len: plan.txn.new_len,
        vhdx: None,
    }
}

/// [`apply`] on any target and journal store (fault-injection tests use
/// [`crate::txn::fault`]). VHD: recovers a pending journal first; refuses a foreign one. VHDX:
/// the store is not used (the file's log is the journal).
pub fn apply_to(
    target: &dyn Sink,
    store: &dyn JournalStore,
    plan: &ReparentPlan,
) -> Result<ApplyReport> {
    if plan.format == DiskFormat::Vhdx {
        let guard = plan.vhdx.as_ref().ok_or_else(|| {
            Error::InvalidArgument("a VHDX reparent plan without its header guard".into())
        })?;
        let a = crate::vhdx::reparent::apply(target, guard, &plan.txn, &crate::Limits::default())?;
        return Ok(ApplyReport {
            recovery: Recovery::Clean,
            writes: a.writes,
            bytes_written: a.total_bytes(),
            journal_bytes: 0,
            old_len: plan.txn.old_len,
            new_len: plan.txn.new_len,
            vhdx: Some(a),
        });
    }
    let recovery = journal::recover(target, store)?;
    if let Recovery::Foreign { reason } = &recovery {
        return Err(Error::refused(format!(
            "a vhdkit journal {} does not match the file ({reason})",
            store.describe()
        )));
    }
    journal::apply(target, store, &plan.txn)?;
    Ok(vhd_report(recovery, plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_forms() {
        let r = |d: &str, t: &str| relative_windows_path(Path::new(d), Path::new(t));
        assert_eq!(r("/a/vm", "/a/vm/p.vhd").unwrap(), r".\p.vhd");
        assert_eq!(r("/a/vm", "/a/vm/sub/p.vhd").unwrap(), r".\sub\p.vhd");
        assert_eq!(r("/a/vm", "/a/ref/p.vhd").unwrap(), r"..\ref\p.vhd");
        assert_eq!(r("/a/b/c", "/x/p q.vhd").unwrap(), r"..\..\..\x\p q.vhd");
        assert!(r("/a/vm", "/a").is_err());
        assert!(r("/a/vm", "/a/vm/x\\y.vhd").is_err());
    }

    #[test]
    fn windows_absolute() {
        assert!(is_windows_absolute(r"C:\x.vhd"));
        assert!(is_windows_absolute(r"\\server\share\x.vhd"));
        assert!(!is_windows_absolute("C:x.vhd"));
        assert!(!is_windows_absolute("/srv/x.vhd"));
    }

    #[test]
    fn map_in_reverse() {
        let d = tempfile::tempdir().unwrap();
        let lab = d.path().join("lab");
        std::fs::create_dir_all(lab.join("Ref")).unwrap();
        let np = canonical(&lab).join("Ref").join("base.vhd");
        let opts = ReparentOptions {
            chain: ChainOptions::default()
                .path_map(crate::PathMap::parse(&format!(r"C:\Lab\={}", lab.display())).unwrap()),
            ..ReparentOptions::default()
        };
        let a = absolute_windows_path(&np, "base.vhd", &opts).unwrap();
        assert_eq!(a.value, r"C:\Lab\Ref\base.vhd");
        assert!(matches!(a.source, AbsoluteSource::Map { .. }));
        let none = absolute_windows_path(&np, "base.vhd", &ReparentOptions::default()).unwrap();
        if !cfg!(windows) {
            assert_eq!(none.source, AbsoluteSource::LocalPosix);
            assert_eq!(none.value, np.to_str().unwrap());
        }
    }
}
