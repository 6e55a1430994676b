//! The one rule for when `share` may remove a name: a copy, the old name of a moved keeper, a
//! symlink to a parent.
//!
//! A name is removed only when the user asked (`ShareOptions::delete_copies`), it lies under DIR and not in
//! SHARED, and the whole tree was inspected: a file that could not be read, a folder that could
//! not be listed, a link that could not be followed, a folder past the depth bound or a disk that
//! did not open may be a child of any group, and removing its parent would orphan it. While any
//! such path exists, nothing is removed in any group (which group it belongs to cannot be known).
//! Without `delete_copies` no name is removed at all, since a disk outside DIR (which the scan
//! cannot see) might use it.

use super::NoteReason;
use crate::tree::Uninspected;

/// Whether and why names are kept in this run.
#[derive(Debug, Clone)]
pub(crate) struct Removal {
    delete_copies: bool,
    blocked: Option<NoteReason>,
}

impl Removal {
    /// The rule for a run over a tree with these uninspected paths and unopenable disks.
    pub(crate) fn new(
        delete_copies: bool,
        uninspected: &[Uninspected],
        skipped: &[super::PathNote],
    ) -> Self {
        let n = uninspected.len() + skipped.len();
        let first = uninspected
            .first()
            .map(|u| u.path.display().to_string())
            .or_else(|| skipped.first().map(|s| s.path.display().to_string()));
        let blocked = first.map(|first| NoteReason::TreeNotInspected { count: n, first });
        Removal {
            delete_copies,
            blocked,
        }
    }

    /// Why a name is kept, or `None` when it may be removed. `outside`: not under DIR;
    /// `shared`: in SHARED.
    pub(crate) fn keep_reason(&self, outside: bool, shared: bool) -> Option<NoteReason> {
        if !self.delete_copies {
            Some(NoteReason::DeleteCopiesOff)
        } else if outside {
            Some(NoteReason::OutsideDir)
        } else if shared {
            Some(NoteReason::InShared)
        } else {
            self.blocked.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::UninspectedKind;

    #[test]
    fn reasons_in_order() {
        let none = Removal::new(true, &[], &[]);
        assert_eq!(none.keep_reason(false, false), None);
        assert_eq!(none.keep_reason(true, false), Some(NoteReason::OutsideDir));
        let off = Removal::new(false, &[], &[]);
        assert_eq!(
            off.keep_reason(false, false),
            Some(NoteReason::DeleteCopiesOff)
        );
        let u = Uninspected {
            path: "/x/vm2".into(),
            kind: UninspectedKind::Unlistable,
            reason: "denied".into(),
        };
        let b = Removal::new(true, &[u], &[]);
        let r = b.keep_reason(false, false).unwrap().to_string();
        assert!(
            r.contains("could not be inspected") && r.contains("/x/vm2"),
            "{r}"
        );
    }
}
