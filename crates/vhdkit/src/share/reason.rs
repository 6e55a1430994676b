//! Why `share` lists a path (kept, refused, failed): typed, displayed and serialised as the
//! one line reports have always shown.

use std::fmt;

/// Why a plan or report lists a path (see [`super::PathNote`]).
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
    NotDeleted(String),
    /// A step failed: what was being done, and the error.
    Failed {
        /// The step (`deleting the copy`).
        step: &'static str,
        /// The error's text.
        error: String,
    },
    /// Any other reason, in one line.
    Other(String),
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
            NoteReason::Other(s) => f.write_str(s),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for NoteReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<String> for NoteReason {
    fn from(s: String) -> Self {
        NoteReason::Other(s)
    }
}

impl From<&str> for NoteReason {
    fn from(s: &str) -> Self {
        NoteReason::Other(s.to_string())
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
}
