//! [`plan`]: every check, then the format-specific writes. Reads only.
//!
//! Each file is parsed as few times as the checks allow: the child once here (the format plan
//! takes that parse and parses only its simulated result, which the plan keeps for apply to
//! follow the chain from), the new parent once, with its own chain ([`Chain::open`]), every
//! read of its file recorded so that apply re-checks it without parsing it again; the journal
//! beside the child is looked up once.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{refused, FormatPlan, IdentityCheck, LocatorMode, ReparentOptions, ReparentPlan};
use crate::chain::{Chain, ChainReport, IdMatch};
use crate::disk::{Disk, DiskFormat, ParentLinkage, Parsed, Recorded};
use crate::error::{Error, Result};
use crate::readset::ReadSet;
use crate::source::{OverlaySource, Source};
use crate::txn;
use crate::txn::journal::{self, FileJournal, JournalState, JournalStore};
use crate::vhd::name_style::{NameInputs, ParentNameStyle};
use crate::winpath::{self, canonical, AbsolutePath, AbsoluteSource};

/// Plan repointing `child` at `opts.new_parent`. Reads only.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::reparent::{self, LocatorMode, ReparentOptions};
/// use vhdkit::{create, CreateParams};
///
/// let base = dir.path().join("base.vhdx");
/// let child = dir.path().join("child.avhdx");
/// create(&base, &CreateParams::dynamic(8 << 20))?;
/// create(&child, &CreateParams::differencing(&base))?;
/// std::fs::create_dir(dir.path().join("ref"))?;
/// let copy = dir.path().join("ref").join("base.vhdx");
/// std::fs::copy(&base, &copy)?;
///
/// let opts = ReparentOptions {
///     new_parent: copy,
///     mode: LocatorMode::RelativeOnly,
///     ..ReparentOptions::default()
/// };
/// let before = std::fs::read(&child)?;
/// let plan = reparent::plan(&child, &opts)?;
/// assert_eq!(std::fs::read(&child)?, before, "planning writes nothing");
/// assert_eq!(plan.relative_path.as_deref(), Some(r".\ref\base.vhdx"));
/// let report = reparent::apply(&plan)?;
/// assert!(report.chain.is_some_and(|c| c.intact));
///
/// // Another disk (another identity) is refused, and the child keeps its bytes.
/// let other = dir.path().join("other.vhdx");
/// create(&other, &CreateParams::dynamic(8 << 20))?;
/// let opts = ReparentOptions { new_parent: other, ..ReparentOptions::default() };
/// let e = reparent::plan(&child, &opts).unwrap_err();
/// assert!(matches!(e.kind(), vhdkit::ErrorKind::ParentMismatch { .. }));
/// # Ok(())
/// # }
/// ```
pub fn plan(child: impl AsRef<Path>, opts: &ReparentOptions) -> Result<ReparentPlan> {
    let child = child.as_ref();
    let mut d = Draft {
        child,
        opts,
        notes: Vec::new(),
        warnings: Vec::new(),
    };
    let pending = d.journal_beside()?;
    // Everything read from the child from here on is what the plan is made on.
    let reads = ReadSet::new();
    let c = d.open_child(&reads, pending.as_ref())?;
    let linkage = c.parent_linkage().ok_or_else(|| {
        d.refuse(format!(
            "it is a {} disk, not a differencing disk: it has no parent to repoint",
            c.disk_type()
        ))
    })?;
    let child_canon = canonical(child);
    let np_reads = ReadSet::new();
    let np_chain = d.open_new_parent(&c, &child_canon, &np_reads)?;
    let np_id = np_chain.disks().first().map_or(Uuid::nil(), Disk::identity);
    let identity = d.identity(&linkage, np_id, np_chain)?;
    let linkage_rewritten = matches!(
        identity,
        IdentityCheck::MismatchIgnored { .. } | IdentityCheck::ContentVerified { .. }
    );
    let paths = d.paths(&child_canon, &canonical(&opts.new_parent))?;
    let change = Change {
        linkage: &linkage,
        np_id,
        identity: &identity,
        rewrite: linkage_rewritten,
        paths: &paths,
    };
    let format = c.format();
    let old_name = c
        .parent_locators()
        .into_iter()
        .find(|l| l.kind == "parent_name")
        .and_then(|l| l.path);
    // The format plan takes the child as parsed here and parses only its simulated result.
    #[cfg(test)]
    let _counted = crate::parse_count::subject(child);
    let (format_plan, name, style, pending_change) = match c.into_parsed() {
        Parsed::Vhdx(file) => {
            let p = d.vhdx_plan(*file, &change)?;
            let dirty = p.guard.log_dirty;
            (FormatPlan::Vhdx(p), String::new(), None, dirty)
        }
        Parsed::Vhd(file) => {
            let (p, name, style) = d.vhd_plan(*file, old_name.as_deref(), &change)?;
            (FormatPlan::Vhd(p), name, Some(style), pending.is_some())
        }
    };
    Ok(ReparentPlan {
        child: child.to_path_buf(),
        format,
        new_parent: opts.new_parent.clone(),
        new_parent_resolved: paths.new_parent,
        recorded_parent_id: linkage.id,
        new_parent_id: np_id,
        identity,
        linkage_rewritten,
        mode: opts.mode,
        relative_path: paths.relative,
        absolute_path: paths.absolute,
        parent_name: name,
        parent_name_style: style,
        pending_journal: pending_change,
        notes: d.notes,
        warnings: d.warnings,
        format_plan,
        reads,
        new_parent_reads: np_reads,
        chain: opts.chain.clone(),
    })
}

/// A vhdkit journal found beside the child (pending or complete).
struct Pending {
    /// A pending journal's change, laid over the file in memory while planning (the plan is
    /// made on the file as it will be once [`super::apply`] has finished it).
    overlay: Option<txn::Plan>,
}

/// The paths to write.
struct Paths {
    relative: Option<String>,
    absolute: Option<AbsolutePath>,
    /// The child's folder (canonical).
    child_dir: PathBuf,
    /// The new parent's file name.
    file_name: String,
    /// The new parent's absolute path on this machine.
    new_parent: PathBuf,
}

/// What the format plan is asked to write.
struct Change<'a> {
    linkage: &'a ParentLinkage,
    np_id: Uuid,
    identity: &'a IdentityCheck,
    rewrite: bool,
    paths: &'a Paths,
}

/// The plan being made: the inputs and what the user will be told.
struct Draft<'a> {
    child: &'a Path,
    opts: &'a ReparentOptions,
    notes: Vec<String>,
    warnings: Vec<String>,
}

/// A fresh source on the child: every read recorded in `reads`, a pending journal's change
/// laid over it.
fn child_source(
    child: &Path,
    reads: &ReadSet,
    overlay: Option<&txn::Plan>,
) -> Result<Box<dyn Source>> {
    let file = crate::fsx::open_disk(child)
        .map_err(|e| Error::io("opening the file", e).with_path(child))?;
    let raw = reads.wrap(Box::new(file));
    let Some(p) = overlay else {
        return Ok(raw);
    };
    let writes = p.write_pairs();
    // An overlay that cannot be laid (the length cannot be read) leaves the file as it is,
    // as a read-only open does; parsing it then fails or the apply-time checks refuse.
    Ok(match OverlaySource::new(raw, writes, p.new_len) {
        Ok(o) => Box::new(o),
        Err((raw, _)) => raw,
    })
}

impl Draft<'_> {
    fn refuse(&self, reason: String) -> Error {
        refused(self.child, reason)
    }

    /// Look up the journal beside the child, once: a valid pending one is finished by apply
    /// (the plan is made on the file as it will be); a foreign one stops everything.
    fn journal_beside(&mut self) -> Result<Option<Pending>> {
        let file = crate::fsx::open_disk(self.child)
            .map_err(|e| Error::io("opening the file", e).with_path(self.child))?;
        let store = FileJournal::for_disk(self.child);
        let overlay = match journal::inspect(&file, &store)? {
            JournalState::Absent => return Ok(None),
            JournalState::Pending(p) => Some(p),
            JournalState::Complete(_) => None,
            JournalState::Foreign { reason } => {
                return Err(self.refuse(format!(
                    "a vhdkit journal {} does not match the file ({reason}); move it away after \
                     checking the file",
                    store.describe()
                )))
            }
        };
        self.notes.push(format!(
            "an interrupted vhdkit change is pending in {}; it is finished before this change \
             is applied (the plan is made on the file as it will be then)",
            store.describe()
        ));
        Ok(Some(Pending { overlay }))
    }

    /// Parse the child (the one parse of the neutral layer), refusing a VHDX with a journal.
    fn open_child(&self, reads: &ReadSet, pending: Option<&Pending>) -> Result<Disk> {
        let overlay = pending.and_then(|p| p.overlay.as_ref());
        let src = child_source(self.child, reads, overlay)?;
        #[cfg(test)]
        crate::parse_count::note(self.child);
        let c =
            Disk::from_source(src, &self.opts.chain.open).map_err(|e| e.with_path(self.child))?;
        if c.format() == DiskFormat::Vhdx && pending.is_some() {
            return Err(self.refuse(format!(
                "a vhdkit journal {} lies beside a VHDX file (vhdkit writes VHDX changes through \
                 the file's own log, never a journal); move it away after checking the file",
                FileJournal::for_disk(self.child).describe()
            )));
        }
        Ok(c)
    }

    /// Open the new parent with its own chain, its reads recorded in `reads`, and check that
    /// it fits the child: same format, not the child nor a descendant of it, its chain intact,
    /// same virtual size and sectors.
    fn open_new_parent(&mut self, c: &Disk, child_canon: &Path, reads: &ReadSet) -> Result<Chain> {
        let np_path = &self.opts.new_parent;
        let mut recording = self.opts.chain.clone();
        recording.open.record = Some(Recorded {
            path: canonical(np_path),
            reads: reads.clone(),
        });
        let chain = match Chain::open(np_path, &recording) {
            Ok(chain) => chain,
            Err(e) => return Err(self.why_no_chain(c, child_canon, e)),
        };
        let np = chain
            .disks()
            .first()
            .ok_or_else(|| Error::InvalidArgument("the new parent's chain is empty".into()))?;
        self.fits(c, np, child_canon)?;
        self.not_a_descendant(c, chain.report(), child_canon)?;
        if np.virtual_size() != c.virtual_size() {
            return Err(self.refuse(format!(
                "virtual size mismatch: the new parent has {} bytes, the child {}",
                np.virtual_size(),
                c.virtual_size()
            )));
        }
        let sectors = crate::sectors::compare(c, np);
        if let Some(why) = sectors.refusal() {
            return Err(self.refuse(why));
        }
        self.notes.extend(sectors.note());
        Ok(chain)
    }

    /// The new parent's chain did not open (`e`): find the refusal the checks give, in their
    /// order, opening the new parent alone and inspecting its chain. This path only runs when
    /// the plan is refused, so the extra parses cost nothing on a reparent that proceeds.
    fn why_no_chain(&self, c: &Disk, child_canon: &Path, e: Error) -> Error {
        let np_path = &self.opts.new_parent;
        let np = match Disk::open_with(np_path, &self.opts.chain.open) {
            Ok(np) => np,
            Err(e) => {
                return self.refuse(format!(
                    "the new parent {} cannot be opened: {e}",
                    np_path.display()
                ))
            }
        };
        if let Err(refusal) = self.fits(c, &np, child_canon) {
            return refusal;
        }
        let report = match Chain::inspect(np_path, &self.opts.chain) {
            Ok(r) => r,
            Err(e) => return e,
        };
        if let Err(refusal) = self.not_a_descendant(c, &report, child_canon) {
            return refusal;
        }
        match &report.broken {
            Some(broken) => self.refuse(format!(
                "the new parent's own chain is broken: {}",
                broken.to_string().replace('\n', " ")
            )),
            None => e,
        }
    }

    /// Same format, and neither the child itself nor a copy of it.
    fn fits(&self, c: &Disk, np: &Disk, child_canon: &Path) -> Result<()> {
        let np_path = &self.opts.new_parent;
        if np.format() != c.format() {
            return Err(self.refuse(format!(
                "the new parent {} is a {} file; a {} child needs a {} parent",
                np_path.display(),
                np.format(),
                c.format(),
                c.format()
            )));
        }
        if canonical(np_path) == child_canon {
            return Err(self.refuse("the new parent is the child itself".to_string()));
        }
        if np.identity() == c.identity() {
            return Err(self.refuse(format!(
                "the new parent {} has the child's own unique id {} (a copy of the child?)",
                np_path.display(),
                c.identity()
            )));
        }
        Ok(())
    }

    /// The child must not appear in the new parent's chain: that would make a loop.
    fn not_a_descendant(&self, c: &Disk, report: &ChainReport, child_canon: &Path) -> Result<()> {
        let Some(l) = report
            .links
            .iter()
            .find(|l| canonical(&l.path) == child_canon || l.id == c.identity())
        else {
            return Ok(());
        };
        let path: Vec<String> = report
            .links
            .iter()
            .take_while(|x| !std::ptr::eq(*x, l))
            .map(|x| x.path.display().to_string())
            .collect();
        Err(self.refuse(format!(
            "the new parent {} is a descendant of the child (its chain {} -> {} leads back to it); \
             that would make a loop",
            self.opts.new_parent.display(),
            path.join(" -> "),
            l.path.display()
        )))
    }

    /// How the new parent's identity `np_id` is accepted, with what the user is told about it.
    /// `np_chain` is used (and consumed) only to compare contents (`verify_content`).
    fn identity(
        &mut self,
        linkage: &ParentLinkage,
        np_id: Uuid,
        np_chain: Chain,
    ) -> Result<IdentityCheck> {
        let id_match = if np_id == linkage.id {
            Some(IdMatch::Primary)
        } else if linkage.alternate_id == Some(np_id) {
            Some(IdMatch::Alternate)
        } else {
            None
        };
        let verified = match &self.opts.verify_content {
            Some(old) => Some(super::verify::contents(
                self.child,
                &linkage.id,
                old,
                np_chain,
                &self.opts.chain,
            )?),
            None => None,
        };
        let identity = match (id_match, verified) {
            (Some(IdMatch::Primary), v) => {
                if let Some(n) = v {
                    self.notes.push(format!(
                        "identity matches; the content check against the old parent \
                         (verify_content) also found the contents equal ({n} bytes)"
                    ));
                }
                IdentityCheck::Primary
            }
            (Some(IdMatch::Alternate), _) => IdentityCheck::Alternate,
            (None, Some(bytes_compared)) => IdentityCheck::ContentVerified {
                recorded: linkage.id,
                new_parent: np_id,
                old_parent: self.opts.verify_content.clone().unwrap_or_default(),
                bytes_compared,
            },
            (None, None) if self.opts.ignore_id_mismatch => IdentityCheck::MismatchIgnored {
                recorded: linkage.id,
                new_parent: np_id,
            },
            (None, None) => {
                return Err(Error::ParentMismatch {
                    path: Some(self.child.to_path_buf()),
                    expected: linkage.id,
                    found: np_id,
                    detail: format!(
                        "identity mismatch: the child's parent id is {}, the new parent {} has {}",
                        linkage.id,
                        self.opts.new_parent.display(),
                        np_id
                    ),
                })
            }
        };
        self.tell_identity(&identity);
        Ok(identity)
    }

    fn tell_identity(&mut self, identity: &IdentityCheck) {
        match identity {
            IdentityCheck::MismatchIgnored {
                recorded,
                new_parent,
            } => self.warnings.push(format!(
                "IDENTITY MISMATCH IGNORED: the child was made from parent {recorded}, the new \
                 parent is {new_parent}; its linkage is rewritten to the new parent. If the new \
                 parent does not hold exactly the old parent's data, the child's disk is now \
                 CORRUPT"
            )),
            IdentityCheck::ContentVerified {
                recorded,
                new_parent,
                bytes_compared,
                ..
            } => self.notes.push(format!(
                "the new parent's id {new_parent} differs from the recorded {recorded}, but its \
                 virtual contents equal the old parent's ({bytes_compared} bytes compared); the \
                 linkage is rewritten to the new parent"
            )),
            _ => {}
        }
    }

    /// The relative and absolute paths to write, as the locator mode asks.
    fn paths(&mut self, child_canon: &Path, np_canon: &Path) -> Result<Paths> {
        let mode = self.opts.mode;
        let child_dir = child_canon
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let file_name = np_canon
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| self.refuse("the new parent's file name is not valid Unicode".into()))?;
        let relative = if mode == LocatorMode::AbsoluteOnly {
            None
        } else {
            match winpath::relative_windows_path(&child_dir, np_canon) {
                Ok(r) => Some(r),
                Err(why) if mode == LocatorMode::RelativeOnly => {
                    return Err(self.refuse(format!("no relative path to the new parent: {why}")))
                }
                Err(why) => {
                    self.warnings.push(format!(
                        "no relative path to the new parent ({why}); only the absolute path is \
                         written"
                    ));
                    None
                }
            }
        };
        let absolute = if mode == LocatorMode::RelativeOnly {
            None
        } else {
            let given = self.opts.windows_path.as_deref();
            let maps = &self.opts.chain.path_maps;
            Some(
                winpath::absolute_windows_path(np_canon, &file_name, given, maps)
                    .map_err(|r| self.refuse(r))?,
            )
        };
        if let Some(a) = absolute
            .as_ref()
            .filter(|a| a.source == AbsoluteSource::LocalPosix)
        {
            self.warnings.push(format!(
                "the absolute path {} is a local POSIX path: Windows hosts will not resolve it \
                 (vhdkit does); give a Windows path (windows_path) or a path map PREFIX=DIR to \
                 record a Windows path",
                a.value
            ));
        }
        Ok(Paths {
            relative,
            absolute,
            child_dir,
            file_name,
            new_parent: np_canon.to_path_buf(),
        })
    }

    /// The VHDX part: the parent locator item, rewritten through the log.
    fn vhdx_plan(
        &mut self,
        file: crate::vhdx::VhdxFile,
        ch: &Change<'_>,
    ) -> Result<crate::vhdx::reparent::Planned> {
        let targets = crate::vhdx::reparent::Targets {
            relative: ch.paths.relative.clone(),
            absolute: ch.paths.absolute.as_ref().map(|a| a.value.clone()),
            linkage: ch.rewrite.then_some(ch.np_id),
        };
        let mut planned = crate::vhdx::reparent::plan(file, &self.opts.chain.open, &targets)
            .map_err(|e| e.with_path(self.child))?;
        let np_id = ch.np_id;
        match ch.identity {
            IdentityCheck::Alternate => self.notes.push(format!(
                "the new parent's DataWriteGuid {np_id} equals the child's parent_linkage2 (not \
                 parent_linkage {}); both are kept",
                ch.linkage.id
            )),
            _ if ch.rewrite => self.notes.push(format!(
                "parent_linkage is rewritten to the new parent's DataWriteGuid {np_id}"
            )),
            _ => {}
        }
        self.notes.push(format!(
            "written through the VHDX log as one entry (atomic); the child's DataWriteGuid {} \
             is kept (its own children link to it), its FileWriteGuid is renewed",
            planned.guard.data_write_guid
        ));
        self.notes.append(&mut planned.notes);
        self.warnings.append(&mut planned.warnings);
        Ok(planned)
    }

    /// The VHD part: locators, the parent name (in the child's style when it can be kept) and
    /// the linkage, written through the journal.
    fn vhd_plan(
        &mut self,
        file: crate::vhd::VhdFile,
        old_name: Option<&str>,
        ch: &Change<'_>,
    ) -> Result<(crate::vhd::reparent::Planned, String, ParentNameStyle)> {
        let np_id = ch.np_id;
        let link = crate::vhd::link::reparent_link(
            &NameInputs {
                old: old_name,
                mode: self.opts.mode,
                absolute: ch.paths.absolute.as_ref().map(|a| a.value.as_str()),
                child_dir: &ch.paths.child_dir,
                new_parent: &ch.paths.new_parent,
                file_name: &ch.paths.file_name,
                max_units: crate::vhd::reparent::MAX_PARENT_NAME_UNITS,
            },
            ch.rewrite.then_some(&np_id),
        )
        .map_err(|why| self.refuse(why))?;
        self.notes.extend(link.notes);
        let targets = crate::vhd::reparent::Targets {
            relative: ch.paths.relative.clone(),
            absolute: ch.paths.absolute.as_ref().map(|a| a.value.clone()),
            parent_name: link.parent_name.clone(),
            linkage: link.linkage,
        };
        let mut planned = crate::vhd::reparent::plan(file, &self.opts.chain.open, &targets)
            .map_err(|e| e.with_path(self.child))?;
        self.notes.append(&mut planned.notes);
        self.warnings.append(&mut planned.warnings);
        Ok((planned, link.parent_name, link.name_style))
    }
}
