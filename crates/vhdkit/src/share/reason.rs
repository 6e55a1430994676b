//! Why `share` and `relink` list a path (kept, refused, failed, relinked, left alone): typed,
//! displayed and serialised as the one line reports have always shown.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use crate::chain::Via;

/// Why a plan or report lists a path (see [`super::PathNote`]), why a planned change will be
/// refused (`CopyPlan::refused`, `ChildPlan::refused`, `GroupPlan::keeper_refused`,
/// `RelinkItem::refused`), and why `relink` repoints a child (`RelinkItem::reason`). Its
/// `Display` is the one line the reports print.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoteReason {
    /// `ShareOptions::delete_copies` is off: a disk outside DIR might use the name.
    DeleteCopiesOff,
    /// The name lies outside DIR.
    OutsideDir,
    /// The name lies in SHARED.
    InShared,
    /// Part of the tree could not be inspected; a child there could use the name.
    TreeNotInspected {
        /// Paths that could not be inspected.
        count: usize,
        /// The first of them.
        first: String,
    },
    /// The group's keeper could not be placed in SHARED.
    KeeperNotPlaced,
    /// Planned: not every child of the group can be repointed.
    ChildrenCannotAllBeRepointed,
    /// Applied: not every child of the group could be repointed.
    ChildrenNotAllRepointed,
    /// The file changed or disappeared between plan and apply.
    ChangedSincePlan,
    /// Another process holds the file.
    InUse,
    /// A deletion refused while planning (the folder's refusal).
    NotDeleted(Box<NoteReason>),
    /// A step failed: what was being done, and the error.
    Failed {
        /// The step (`deleting the copy`).
        step: &'static str,
        /// The error's text.
        error: String,
    },
    /// The file cannot be changed: opening it for writing or taking the writers' lock refused
    /// (read-only, in use by another process), with that refusal in one line.
    CannotChange(String),
    /// The kernel will refuse to hard-link the keeper into SHARED (`fs.protected_hardlinks`):
    /// it belongs to another user and this user may not both read and write it.
    HardLinkRefused {
        /// The keeper.
        path: PathBuf,
        /// Its owner (uid).
        owner: u32,
    },
    /// Its folder does not let files be created or removed in it.
    FolderRefuses {
        /// The folder.
        folder: PathBuf,
        /// What the system said.
        error: String,
    },
    /// A name in a sticky (`+t`) folder that belongs to another user: only that user, the
    /// folder's owner or root may remove or replace it.
    StickyFolder {
        /// The name.
        path: PathBuf,
        /// Its folder.
        folder: PathBuf,
        /// The name's owner (uid).
        owner: u32,
        /// The folder's owner (uid).
        folder_owner: u32,
    },
    /// The child's shared parent (its group's keeper) cannot be placed in SHARED, for the
    /// reason inside.
    SharedParentNotPlaced(Box<NoteReason>),
    /// `relink` would choose from a partial view: paths of the tree could not be inspected,
    /// and one may be another file with the parent's id and different contents.
    PartialView {
        /// Paths not inspected or skipped.
        count: usize,
    },
    /// A vhdkit journal beside the child does not match it (the journal's state, as shown).
    JournalMismatch(String),
    /// An error met on the file (the library's or the system's message, with what was being
    /// done when it says), in one line.
    Error(String),
    /// The child's parent does not resolve (`share`: its group cannot be found).
    ParentUnresolved {
        /// The parent identity the child records.
        id: Uuid,
        /// Why the lookup failed.
        failure: String,
    },
    /// `relink`: no file with the child's parent identity was found.
    ParentNotFound {
        /// The parent identity the child records.
        id: Uuid,
        /// The tree searched (besides the search folders).
        dir: PathBuf,
        /// Why the lookup failed.
        failure: String,
    },
    /// The file cannot be read through its chain (to compare contents).
    UnreadableThroughChain(String),
    /// `relink`: several files carry the parent's id and one cannot be read to compare them.
    CandidateUnreadable {
        /// The file that cannot be read.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// `relink`: two files carry the parent's id with different contents; left alone.
    ContentsDiffer {
        /// One file.
        first: PathBuf,
        /// Another, with different contents.
        second: PathBuf,
    },
    /// Relinked: the child's parent does not resolve.
    RelinkUnresolved,
    /// Relinked: the child's parent resolves through a symlink.
    RelinkViaSymlink,
    /// Relinked: only an interrupted change is pending.
    RelinkPending,
    /// Relinked: the child's parent resolves only through this locator.
    RelinkOnlyVia(Via),
    /// Relinked: the child's parent resolves only indirectly.
    RelinkIndirect,
}

impl fmt::Display for NoteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let both = "(a child could still use it)";
        match self {
            NoteReason::DeleteCopiesOff => {
                f.write_str("delete_copies is off (a disk outside DIR might use it)")
            }
            NoteReason::OutsideDir => f.write_str("outside DIR"),
            NoteReason::InShared => f.write_str("in SHARED"),
            NoteReason::TreeNotInspected { count, first } => write!(
                f,
                "{count} path(s) in the tree could not be inspected (first: {first}); a child \
                 there could use it"
            ),
            NoteReason::KeeperNotPlaced => f.write_str("its group's keeper could not be placed"),
            NoteReason::ChildrenCannotAllBeRepointed => {
                write!(f, "not every child of its group can be repointed {both}")
            }
            NoteReason::ChildrenNotAllRepointed => {
                write!(f, "not every child of its group could be repointed {both}")
            }
            NoteReason::ChangedSincePlan => {
                f.write_str("the file changed or disappeared since the plan")
            }
            NoteReason::InUse => f.write_str("not deleted: in use by another process"),
            NoteReason::NotDeleted(r) => write!(f, "not deleted: {r}"),
            NoteReason::Failed { step, error } => write!(f, "{step}: {error}"),
            _ => self.fmt_more(f),
        }
    }
}

impl NoteReason {
    /// The refusals, lookups and relink reasons (split from `fmt` to keep both short).
    fn fmt_more(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoteReason::CannotChange(s) | NoteReason::Error(s) => f.write_str(s),
            NoteReason::HardLinkRefused { path, owner } => write!(
                f,
                "{} cannot be hard-linked into SHARED: it belongs to another user (uid {owner}) \
                 and this user may not both read and write it, which the kernel requires of a \
                 link to another user's file (fs.protected_hardlinks = 1); make it this user's or \
                 writable by it, or run as its owner",
                path.display()
            ),
            NoteReason::FolderRefuses { folder, error } => write!(
                f,
                "its folder {} does not allow creating or removing files ({error})",
                folder.display()
            ),
            NoteReason::StickyFolder {
                path,
                folder,
                owner,
                folder_owner,
            } => write!(
                f,
                "{} cannot be removed or replaced: its folder {} is sticky (+t) and the file \
                 belongs to another user (uid {owner}), so only that user, the folder's owner \
                 (uid {folder_owner}) or root may",
                path.display(),
                folder.display()
            ),
            NoteReason::SharedParentNotPlaced(r) => {
                write!(f, "its shared parent cannot be placed: {r}")
            }
            NoteReason::PartialView { count } => write!(
                f,
                "not repointed: {count} path(s) in the tree could not be inspected, and one may \
                 be another file with its parent's id and different contents"
            ),
            NoteReason::JournalMismatch(state) => write!(
                f,
                "a vhdkit journal beside it does not match the file: {state}"
            ),
            _ => self.fmt_lookup(f),
        }
    }

    fn fmt_lookup(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoteReason::ParentUnresolved { id, failure } => write!(
                f,
                "its parent (id {id}) does not resolve; run `vhdkit relink`: {failure}"
            ),
            NoteReason::ParentNotFound { id, dir, failure } => write!(
                f,
                "no file with its parent's id {id} under {} or the search folders; {failure}",
                dir.display()
            ),
            NoteReason::UnreadableThroughChain(e) => {
                write!(f, "cannot be read through its chain: {e}")
            }
            NoteReason::CandidateUnreadable { path, error } => write!(
                f,
                "several files carry its parent's id and {} cannot be read to compare them: \
                 {error}",
                path.display()
            ),
            NoteReason::ContentsDiffer { first, second } => write!(
                f,
                "{} and {} both carry its parent's id but their contents differ; left alone \
                 (repoint it by hand with `vhdkit reparent`)",
                first.display(),
                second.display()
            ),
            NoteReason::RelinkUnresolved => f.write_str("its parent does not resolve"),
            NoteReason::RelinkViaSymlink => f.write_str("its parent resolves through a symlink"),
            NoteReason::RelinkPending => f.write_str("an interrupted change is pending"),
            NoteReason::RelinkOnlyVia(v) => write!(f, "its parent resolves only through {v}"),
            NoteReason::RelinkIndirect => f.write_str("its parent resolves only indirectly"),
            // Every variant is handled by `fmt` or above.
            _ => Ok(()),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for NoteReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_todays() {
        assert_eq!(
            NoteReason::InUse.to_string(),
            "not deleted: in use by another process"
        );
        assert_eq!(
            NoteReason::ChildrenNotAllRepointed.to_string(),
            "not every child of its group could be repointed (a child could still use it)"
        );
        assert_eq!(
            NoteReason::Failed {
                step: "deleting the copy",
                error: "denied".into()
            }
            .to_string(),
            "deleting the copy: denied"
        );
        assert_eq!(
            NoteReason::TreeNotInspected {
                count: 2,
                first: "/x".into()
            }
            .to_string(),
            "2 path(s) in the tree could not be inspected (first: /x); a child there could \
             use it"
        );
    }

    /// The typed refusals and relink reasons print the text reports showed as strings.
    #[test]
    fn typed_refusals_keep_their_texts() {
        let id = Uuid::from_u128(1);
        let folder = NoteReason::FolderRefuses {
            folder: "/s".into(),
            error: "Permission denied (os error 13)".into(),
        };
        let cases = [
            (
                folder.clone(),
                "its folder /s does not allow creating or removing files (Permission denied (os \
                 error 13))"
                    .to_string(),
            ),
            (
                NoteReason::SharedParentNotPlaced(Box::new(folder.clone())),
                format!("its shared parent cannot be placed: {folder}"),
            ),
            (
                NoteReason::NotDeleted(Box::new(folder.clone())),
                format!("not deleted: {folder}"),
            ),
            (
                NoteReason::StickyFolder {
                    path: "/t/f".into(),
                    folder: "/t".into(),
                    owner: 7,
                    folder_owner: 8,
                },
                "/t/f cannot be removed or replaced: its folder /t is sticky (+t) and the file \
                 belongs to another user (uid 7), so only that user, the folder's owner (uid 8) \
                 or root may"
                    .into(),
            ),
            (
                NoteReason::PartialView { count: 3 },
                "not repointed: 3 path(s) in the tree could not be inspected, and one may be \
                 another file with its parent's id and different contents"
                    .into(),
            ),
            (
                NoteReason::ParentUnresolved {
                    id,
                    failure: "not found".into(),
                },
                format!("its parent (id {id}) does not resolve; run `vhdkit relink`: not found"),
            ),
            (
                NoteReason::ParentNotFound {
                    id,
                    dir: "/d".into(),
                    failure: "x".into(),
                },
                format!("no file with its parent's id {id} under /d or the search folders; x"),
            ),
            (
                NoteReason::ContentsDiffer {
                    first: "/a".into(),
                    second: "/b".into(),
                },
                "/a and /b both carry its parent's id but their contents differ; left alone \
                 (repoint it by hand with `vhdkit reparent`)"
                    .into(),
            ),
            (
                NoteReason::CandidateUnreadable {
                    path: "/a".into(),
                    error: "e".into(),
                },
                "several files carry its parent's id and /a cannot be read to compare them: e"
                    .into(),
            ),
            (
                NoteReason::JournalMismatch("Foreign".into()),
                "a vhdkit journal beside it does not match the file: Foreign".into(),
            ),
            (
                NoteReason::UnreadableThroughChain("e".into()),
                "cannot be read through its chain: e".into(),
            ),
            (NoteReason::CannotChange("in use".into()), "in use".into()),
            (NoteReason::Error("bad".into()), "bad".into()),
            (
                NoteReason::RelinkUnresolved,
                "its parent does not resolve".into(),
            ),
            (
                NoteReason::RelinkViaSymlink,
                "its parent resolves through a symlink".into(),
            ),
            (
                NoteReason::RelinkPending,
                "an interrupted change is pending".into(),
            ),
            (
                NoteReason::RelinkIndirect,
                "its parent resolves only indirectly".into(),
            ),
        ];
        for (r, text) in cases {
            assert_eq!(r.to_string(), text, "{r:?}");
        }
    }
}
