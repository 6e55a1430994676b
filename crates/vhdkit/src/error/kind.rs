//! [`ErrorKind`]: what a program matches on, computed from an [`Error`].

use std::io;
use std::path::Path;

use uuid::Uuid;

use super::{Error, Location};
use crate::chain::Attempt;

/// Declares [`ErrorKind`] and its stable names ([`ErrorKind::name`]) from one list of variants.
macro_rules! error_kinds {
    (
        $(#[$meta:meta])*
        pub enum $kind:ident<$lt:lifetime> {
            $( $(#[$vmeta:meta])* $variant:ident $({ $($fields:tt)* })? => $name:literal, )*
        }
    ) => {
        $(#[$meta])*
        pub enum $kind<$lt> {
            $( $(#[$vmeta])* $variant $({ $($fields)* })?, )*
        }

        impl $kind<'_> {
            /// The kind's stable snake_case name (the `kind` of the CLI's `--json` errors).
            pub fn name(&self) -> &'static str {
                match self {
                    $( $kind::$variant { .. } => $name, )*
                }
            }
        }
    };
}

error_kinds! {
    /// What kind of error an [`Error`] is, with the details a program acts on (from
    /// [`Error::kind`]). More kinds may come: match with a `_` arm.
    #[derive(Debug, Clone, Copy)]
    #[non_exhaustive]
    pub enum ErrorKind<'a> {
        /// The file is neither a VHD nor a VHDX (no `vhdxfile` signature, no `conectix` footer).
        NotADisk {
            /// The file, when known.
            path: Option<&'a Path>,
        } => "not_a_disk",
        /// The file breaks a rule of its format.
        Corrupt {
            /// The stable `check` finding code of the rule: the code `check` reports for the same
            /// defect (see [`Error::Corrupt`]).
            code: Option<&'static str>,
            /// The file, structure and absolute offset at fault.
            location: &'a Location,
        } => "corrupt",
        /// A differencing disk's parent was not found. `attempts` holds every candidate tried:
        /// the locator (or `search`) it came from, the path, and why it was not accepted; a path
        /// rejected for any reason but "not found" is a file that exists (another disk, one that
        /// does not open, one outside the confining folders).
        ParentNotFound {
            /// The disk whose parent is missing.
            child: &'a Path,
            /// The parent identity the child records.
            expected_id: Uuid,
            /// Every candidate tried, in order.
            attempts: &'a [Attempt],
        } => "parent_not_found",
        /// A parent offered for a change does not carry the identity the child records.
        ParentMismatch {
            /// The child.
            path: Option<&'a Path>,
            /// The identity the child records.
            expected: Uuid,
            /// The identity the offered parent has.
            found: Uuid,
        } => "parent_mismatch",
        /// The chain loops: `parent` is already in it.
        ChainLoop {
            /// The disk that names the parent.
            child: &'a Path,
            /// The parent, already in the chain.
            parent: &'a Path,
        } => "chain_loop",
        /// The chain is deeper than [`crate::Limits::max_chain_depth`].
        ChainTooDeep {
            /// The limit in force.
            limit: usize,
        } => "chain_too_deep",
        /// The file to be created exists (no overwrite was asked for).
        AlreadyExists {
            /// The existing file.
            path: &'a Path,
        } => "already_exists",
        /// Another process holds the writers' lock on the file; retry once it is done.
        Locked {
            /// The locked file.
            path: Option<&'a Path>,
        } => "locked",
        /// A change was refused because a safety check failed; nothing was written.
        Refused {
            /// The file the change was for.
            path: Option<&'a Path>,
            /// Why, in one line.
            reason: &'a str,
        } => "refused",
        /// A value is legal but above the configured [`crate::Limits`].
        LimitExceeded {
            /// Where.
            location: &'a Location,
            /// Which quantity.
            what: &'static str,
            /// The value found.
            value: u64,
            /// The limit in force.
            limit: u64,
        } => "limit_exceeded",
        /// The file is valid but uses something vhdkit does not support.
        Unsupported {
            /// The file, when known.
            path: Option<&'a Path>,
        } => "unsupported",
        /// The caller asked for something impossible (a bad option or offset).
        InvalidArgument {
            /// The option at fault, when one is (see [`Error::InvalidOption`]).
            option: Option<&'static str>,
        } => "invalid_argument",
        /// A write on a disk opened read-only.
        ReadOnly {
            /// The file, when known.
            path: Option<&'a Path>,
        } => "read_only",
        /// An operating-system I/O error.
        Io {
            /// The file, when known.
            path: Option<&'a Path>,
            /// The error from the OS.
            source: &'a io::Error,
        } => "io",
        /// A bug in vhdkit, distinct from bad input.
        Internal => "internal",
    }
}

impl Error {
    /// What kind of error this is, with its typed details.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use vhdkit::{Disk, ErrorKind};
    ///
    /// let path = dir.path().join("notes.txt");
    /// std::fs::write(&path, "not a disk")?;
    /// let e = Disk::open(&path).unwrap_err();
    /// assert!(matches!(e.kind(), ErrorKind::NotADisk { .. }));
    /// assert_eq!(e.code(), Some("file.not_a_disk"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn kind(&self) -> ErrorKind<'_> {
        match self {
            Error::Corrupt { location, code, .. } => ErrorKind::Corrupt {
                code: *code,
                location,
            },
            Error::Io { path, source, .. } => ErrorKind::Io {
                path: path.as_deref(),
                source,
            },
            Error::Unsupported { path, .. } => ErrorKind::Unsupported {
                path: path.as_deref(),
            },
            Error::LimitExceeded {
                location,
                what,
                value,
                limit,
            } => ErrorKind::LimitExceeded {
                location,
                what,
                value: *value,
                limit: *limit,
            },
            Error::NotADisk { path, .. } => ErrorKind::NotADisk {
                path: path.as_deref(),
            },
            Error::Chain { broken, .. } => broken.kind(),
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument { option: None },
            Error::InvalidOption { option, .. } => ErrorKind::InvalidArgument {
                option: Some(option),
            },
            Error::AlreadyExists { path } => ErrorKind::AlreadyExists { path },
            Error::ParentMismatch {
                path,
                expected,
                found,
                ..
            } => ErrorKind::ParentMismatch {
                path: path.as_deref(),
                expected: *expected,
                found: *found,
            },
            Error::Locked { path, .. } => ErrorKind::Locked {
                path: path.as_deref(),
            },
            Error::Internal(_) => ErrorKind::Internal,
            Error::Refused { path, reason } => ErrorKind::Refused {
                path: path.as_deref(),
                reason,
            },
            Error::ReadOnly { path } => ErrorKind::ReadOnly {
                path: path.as_deref(),
            },
        }
    }

    /// The stable `check` finding code (see [`crate::check::CODES`]) of the rule this error
    /// reports, when it has one: a file that is not a disk, a corruption with a known code, a
    /// broken chain.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Error::NotADisk { .. } => Some("file.not_a_disk"),
            Error::Corrupt { code, .. } => *code,
            Error::Chain { broken, .. } => Some(broken.code()),
            Error::ParentMismatch { .. } => Some("chain.identity_mismatch"),
            _ => None,
        }
    }
}
