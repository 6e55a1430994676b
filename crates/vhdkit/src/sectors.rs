//! One rule for the sector sizes of a child and its parent, applied wherever a parent is
//! accepted: chain resolution (and so `chain`, `check --chain`, `convert`, `create --parent`),
//! `reparent` and `share`.
//!
//! The **logical** sector size must match: a differencing disk records which of its sectors it
//! holds in logical-sector units and reads the others from its parent, so a parent with another
//! logical size would be read at the wrong granularity. The **physical** sector size may differ:
//! it describes the storage the disk was laid out for, not the data. MS-VHDX copies every
//! IsVirtualDisk item (sector sizes included) from the parent when forking, but Windows changes
//! a child's physical sector size afterwards (`Set-VHD -PhysicalSectorSizeBytes`) and creates
//! children with their own (`New-VHD -Differencing -PhysicalSectorSizeBytes`), and reads such
//! chains. A difference is reported as a fact (`chain.physical_sector_size_mismatch`, info).

use crate::disk::Disk;

/// How the sector sizes of a child and a candidate parent compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Logical and physical sizes are equal.
    Same,
    /// The logical sizes are equal, the physical differ: accepted, reported as info.
    PhysicalDiffers {
        /// The child's physical sector size.
        child: u32,
        /// The parent's physical sector size.
        parent: u32,
    },
    /// The logical sizes differ: the parent cannot serve the child.
    LogicalDiffers {
        /// The child's logical sector size.
        child: u32,
        /// The parent's logical sector size.
        parent: u32,
    },
}

/// Compare sector sizes `(logical, physical)` of a child and a parent.
pub(crate) fn compare_sizes(child: (u32, u32), parent: (u32, u32)) -> Verdict {
    if child.0 != parent.0 {
        Verdict::LogicalDiffers {
            child: child.0,
            parent: parent.0,
        }
    } else if child.1 != parent.1 {
        Verdict::PhysicalDiffers {
            child: child.1,
            parent: parent.1,
        }
    } else {
        Verdict::Same
    }
}

/// Whether a parent with logical sector size `parent` can serve a child with `child` (for
/// callers that know only the logical sizes, such as `share`'s scan).
pub(crate) fn logical_matches(child: u32, parent: u32) -> bool {
    compare_sizes((child, 0), (parent, 0)).refusal().is_none()
}

/// Compare the sector sizes of two opened disks.
pub(crate) fn compare(child: &Disk, parent: &Disk) -> Verdict {
    compare_sizes(
        (child.logical_sector_size(), child.physical_sector_size()),
        (parent.logical_sector_size(), parent.physical_sector_size()),
    )
}

impl Verdict {
    /// Why the parent is refused, when it is (the text `check` maps to
    /// `chain.sector_size_mismatch`).
    pub(crate) fn refusal(self) -> Option<String> {
        match self {
            Verdict::LogicalDiffers { child, parent } => Some(format!(
                "logical sector size mismatch: parent {parent}, child {child}"
            )),
            _ => None,
        }
    }

    /// The fact to report when only the physical sizes differ.
    pub(crate) fn note(self) -> Option<String> {
        match self {
            Verdict::PhysicalDiffers { child, parent } => Some(format!(
                "physical sector size differs: parent {parent}, child {child} (allowed: only the \
                 logical sector size must match)"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_must_match_physical_may_differ() {
        assert_eq!(compare_sizes((512, 4096), (512, 4096)), Verdict::Same);
        let v = compare_sizes((512, 512), (512, 4096));
        assert_eq!(
            v,
            Verdict::PhysicalDiffers {
                child: 512,
                parent: 4096
            }
        );
        assert!(v.refusal().is_none());
        assert!(v.note().unwrap().contains("parent 4096, child 512"));
        let v = compare_sizes((4096, 4096), (512, 4096));
        assert!(v
            .refusal()
            .unwrap()
            .contains("logical sector size mismatch"));
        assert!(v.note().is_none());
    }
}
