//! The one error type of the library.
//!
//! Every error that comes from a file's contents says which file (when known), which structure,
//! at which absolute file offset, and what rule was broken. `Display` is one lower-case line that
//! the CLI prints as it is.
//!
//! A program acts on an error through [`Error::kind`]: one [`ErrorKind`] per thing a caller can
//! do something about (a file that is not a disk, a corrupt one, a parent not found, a lock held
//! by another writer, a bug...), with the typed details of each (module `kind`; a broken chain's
//! reason is [`ChainBroken`], in `broken`). Hints that name a CLI flag ("use --force") are the
//! CLI's to add, by kind. Not yet everywhere: the outcome text of a parent path tried (`--map`,
//! `--confine`), a bad Windows path given to reparent, and some plan and share report notes
//! still name flags.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

mod broken;
mod codes;
mod kind;

pub use broken::ChainBroken;
pub use kind::ErrorKind;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in a file a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, when the disk was opened from a path.
    pub path: Option<PathBuf>,
    /// The on-disk structure, in the spec's words (`"vhd footer"`, `"vhdx region table 1"`).
    pub structure: &'static str,
    /// Absolute byte offset in the file of the structure or field at fault.
    pub offset: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        write!(f, "{} at offset {:#x}", self.structure, self.offset)
    }
}

/// Everything that can go wrong in vhdkit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file breaks a rule of its format.
    #[error("{location}: {detail}")]
    Corrupt {
        /// Where.
        location: Location,
        /// The rule broken, with the bad value and what was allowed.
        detail: String,
        /// The stable `check` finding code of the rule (see [`crate::check::CODES`]): the code
        /// `check` reports for the same defect. Every corruption the readers report has one;
        /// `None` only for an error built with [`Error::corrupt`] for a structure no format has.
        code: Option<&'static str>,
    },

    /// An operating-system I/O error.
    #[error("{}{what}: {source}", path_prefix(.path))]
    Io {
        /// The file, when known.
        path: Option<PathBuf>,
        /// What was being done, with the offset when there is one.
        what: String,
        /// The error from the OS.
        #[source]
        source: io::Error,
    },

    /// The file is valid but uses something vhdkit does not support.
    #[error("{}unsupported: {detail}", path_prefix(.path))]
    Unsupported {
        /// The file, when known.
        path: Option<PathBuf>,
        /// What is not supported.
        detail: String,
    },

    /// A value is legal but larger than the configured [`crate::Limits`] allow.
    #[error("{location}: {what} is {value}, above the limit of {limit} (raise it with Limits if the file is trusted)")]
    LimitExceeded {
        /// Where.
        location: Location,
        /// Which quantity.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit in force.
        limit: u64,
    },

    /// The file is not a VHD or VHDX at all.
    #[error("{}not a vhd or vhdx file: {detail}", path_prefix(.path))]
    NotADisk {
        /// The file, when known.
        path: Option<PathBuf>,
        /// Why it was not recognised.
        detail: String,
    },

    /// A differencing chain could not be followed.
    #[error("{}{broken}", path_prefix(.path))]
    Chain {
        /// The child whose parent is at fault.
        path: Option<PathBuf>,
        /// Why, including which paths were tried.
        broken: ChainBroken,
    },

    /// The caller asked for something impossible (bad offset, bad option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// One option of the call is missing or does not fit the others (a size not given, a
    /// format that cannot be told, a block size too small for the disk).
    #[error("invalid argument: {detail}")]
    InvalidOption {
        /// The option at fault, by its field name in the library's option structs (`size`,
        /// `format`, `fixed`, `block_size`, `into`).
        option: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// The file to be created exists, and replacing it was not asked for. Nothing was written.
    #[error("{} already exists; refusing to overwrite it", .path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// A new parent does not carry the identity the child records. Nothing was written.
    #[error("{}refused: {detail}", path_prefix(.path))]
    ParentMismatch {
        /// The child.
        path: Option<PathBuf>,
        /// The parent identity the child records.
        expected: Uuid,
        /// The identity the offered parent has.
        found: Uuid,
        /// The one-line explanation.
        detail: String,
    },

    /// Another process holds the writers' lock on the file (see `crate::lock`). Nothing was
    /// written; the same change may succeed once that process is done.
    #[error("{}refused: {reason}", path_prefix(.path))]
    Locked {
        /// The locked file.
        path: Option<PathBuf>,
        /// Why, in one line.
        reason: String,
    },

    /// A bug in vhdkit (a plan that does not hold, a structure that does not encode): neither the
    /// input nor the caller is at fault. Nothing was written.
    #[error("internal: {0}")]
    Internal(String),

    /// A requested change was refused because a safety check failed (a parent that does not
    /// match, a loop, a foreign journal). Nothing was written.
    #[error("{}refused: {reason}", path_prefix(.path))]
    Refused {
        /// The file the change was for.
        path: Option<PathBuf>,
        /// Why, in one line.
        reason: String,
    },

    /// A write was attempted on a disk opened read-only.
    #[error("{}the disk is open read-only", path_prefix(.path))]
    ReadOnly {
        /// The file, when known.
        path: Option<PathBuf>,
    },
}

fn path_prefix(p: &Option<PathBuf>) -> String {
    match p {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

impl Error {
    /// A corruption error at `offset` in `structure`. Its code is the one `check` reports for a
    /// structure the file ends before or whose bytes do not parse; an error of a more specific
    /// rule replaces it with [`Error::with_code`].
    pub fn corrupt(structure: &'static str, offset: u64, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            location: Location {
                path: None,
                structure,
                offset,
            },
            detail: detail.into(),
            code: codes::default_code(structure),
        }
    }

    /// An internal error: a bug in vhdkit, not a fault of the input (see [`Error::Internal`]).
    pub fn internal(detail: impl Into<String>) -> Self {
        Error::Internal(detail.into())
    }

    /// Give a [`Error::Corrupt`] the `check` finding code of the rule it breaks (other errors
    /// are returned as they are).
    #[must_use]
    pub fn with_code(mut self, c: &'static str) -> Self {
        if let Error::Corrupt { code, .. } = &mut self {
            *code = Some(c);
        }
        self
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            path: None,
            what: what.into(),
            source,
        }
    }

    /// An unsupported feature.
    pub fn unsupported(detail: impl Into<String>) -> Self {
        Error::Unsupported {
            path: None,
            detail: detail.into(),
        }
    }

    /// A refused change (see [`Error::Refused`]).
    pub fn refused(reason: impl Into<String>) -> Self {
        Error::Refused {
            path: None,
            reason: reason.into(),
        }
    }

    /// A limit exceeded at `offset` in `structure`.
    pub fn limit(
        structure: &'static str,
        offset: u64,
        what: &'static str,
        value: u64,
        limit: u64,
    ) -> Self {
        Error::LimitExceeded {
            location: Location {
                path: None,
                structure,
                offset,
            },
            what,
            value,
            limit,
        }
    }

    /// Attach the file path, unless the error already names one.
    #[must_use]
    pub fn with_path(mut self, p: &Path) -> Self {
        let slot = match &mut self {
            Error::Corrupt { location, .. } | Error::LimitExceeded { location, .. } => {
                &mut location.path
            }
            Error::Io { path, .. }
            | Error::Unsupported { path, .. }
            | Error::NotADisk { path, .. }
            | Error::Chain { path, .. }
            | Error::ReadOnly { path }
            | Error::ParentMismatch { path, .. }
            | Error::Locked { path, .. }
            | Error::Refused { path, .. } => path,
            Error::InvalidArgument(_)
            | Error::InvalidOption { .. }
            | Error::AlreadyExists { .. }
            | Error::Internal(_) => return self,
        };
        if slot.is_none() {
            *slot = Some(p.to_path_buf());
        }
        self
    }

    /// The location, for errors that come from a file's contents.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Corrupt { location, .. } | Error::LimitExceeded { location, .. } => {
                Some(location)
            }
            _ => None,
        }
    }

    /// True when the file itself is at fault (as opposed to the OS or the caller).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::LimitExceeded { .. } | Error::NotADisk { .. }
        )
    }
}
/// Errors cross `Read`/`Seek` as `io::Error`: corruption becomes `InvalidData`, the rest keep
/// their nature, and the original error stays reachable as the source.
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            Error::Unsupported { .. } => io::ErrorKind::Unsupported,
            Error::InvalidArgument(_) | Error::InvalidOption { .. } => io::ErrorKind::InvalidInput,
            Error::ReadOnly { .. } => io::ErrorKind::PermissionDenied,
            Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            Error::Locked { .. } => io::ErrorKind::WouldBlock,
            Error::Refused { .. } | Error::ParentMismatch { .. } | Error::Internal(_) => {
                io::ErrorKind::Other
            }
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Extension for attaching a path to any `Result<T, Error>`.
pub trait ResultExt<T> {
    /// See [`Error::with_path`].
    fn with_path(self, p: &Path) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn with_path(self, p: &Path) -> Result<T> {
        self.map_err(|e| e.with_path(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_structure_and_offset() {
        let e = Error::corrupt("vhd footer", 0x1fe00, "bad checksum 0x1 (computed 0x2)")
            .with_path(Path::new("disk.vhd"));
        assert_eq!(
            e.to_string(),
            "disk.vhd: vhd footer at offset 0x1fe00: bad checksum 0x1 (computed 0x2)"
        );
    }

    #[test]
    fn with_path_keeps_first_path() {
        let e = Error::unsupported("x")
            .with_path(Path::new("a"))
            .with_path(Path::new("b"));
        assert_eq!(e.to_string(), "a: unsupported: x");
    }

    #[test]
    fn corruption_maps_to_invalid_data() {
        let e: io::Error = Error::corrupt("s", 0, "d").into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
