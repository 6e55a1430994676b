//! Why a differencing chain could not be followed: typed, with the text the chain report shows.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use super::ErrorKind;
use crate::chain::{Attempt, AttemptOutcome};

/// Why a differencing chain could not be followed (see [`crate::Error::Chain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainBroken {
    /// No candidate path led to a file with the identity the child records.
    ParentNotFound {
        /// The disk whose parent is missing.
        child: PathBuf,
        /// The parent identity the child records.
        expected_id: Uuid,
        /// Every candidate tried, in order, with why it was not accepted.
        attempts: Vec<Attempt>,
    },
    /// A parent is already in the chain.
    Loop {
        /// The disk that names the parent.
        child: PathBuf,
        /// The parent, already in the chain.
        parent: PathBuf,
    },
    /// The chain is deeper than [`crate::Limits::max_chain_depth`].
    TooDeep {
        /// The limit in force.
        limit: usize,
    },
}

impl ChainBroken {
    /// The stable `check` finding code (`chain.*`) of this break.
    pub fn code(&self) -> &'static str {
        let attempts = match self {
            ChainBroken::Loop { .. } => return "chain.loop",
            ChainBroken::TooDeep { .. } => return "chain.too_deep",
            ChainBroken::ParentNotFound { attempts, .. } => attempts,
        };
        let any = |f: &dyn Fn(&AttemptOutcome) -> bool| attempts.iter().any(|a| f(&a.outcome));
        if any(&|o| matches!(o, AttemptOutcome::IdMismatch { .. })) {
            "chain.identity_mismatch"
        } else if any(&|o| matches!(o, AttemptOutcome::LogicalSectorSizeMismatch { .. })) {
            "chain.sector_size_mismatch"
        } else if any(&|o| matches!(o, AttemptOutcome::FormatMismatch { .. })) {
            "chain.format_mismatch"
        } else if any(&|o| matches!(o, AttemptOutcome::CannotOpen(_))) {
            "chain.parent_unreadable"
        } else {
            "chain.parent_missing"
        }
    }
}

impl fmt::Display for ChainBroken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBroken::TooDeep { limit } => write!(
                f,
                "chain deeper than {limit} disks (the limit); a loop or a hostile chain?"
            ),
            ChainBroken::Loop { child, parent } => write!(
                f,
                "loop: {} names {} as its parent, which is already in the chain",
                child.display(),
                parent.display()
            ),
            ChainBroken::ParentNotFound {
                child, attempts, ..
            } if attempts.is_empty() => write!(
                f,
                "parent of {} not found: no usable locator and no search folder to look in",
                child.display()
            ),
            ChainBroken::ParentNotFound {
                child,
                expected_id,
                attempts,
            } => {
                let tried: Vec<String> = attempts
                    .iter()
                    .map(|a| format!("{} ({}: {})", a.path.display(), a.via, a.outcome))
                    .collect();
                write!(
                    f,
                    "parent of {} (id {expected_id}) not found; tried {}",
                    child.display(),
                    tried.join("; ")
                )
            }
        }
    }
}

impl ChainBroken {
    pub(super) fn kind(&self) -> ErrorKind<'_> {
        match self {
            ChainBroken::ParentNotFound {
                child,
                expected_id,
                attempts,
            } => ErrorKind::ParentNotFound {
                child,
                expected_id: *expected_id,
                attempts,
            },
            ChainBroken::Loop { child, parent } => ErrorKind::ChainLoop { child, parent },
            ChainBroken::TooDeep { limit } => ErrorKind::ChainTooDeep { limit: *limit },
        }
    }
}
