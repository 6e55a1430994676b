//! The one error type of the library.
//!
//! Every error that comes from a file's contents says which file (when known), which structure,
//! at which absolute file offset, and what rule was broken. `Display` is one lower-case line that
//! the CLI prints as it is.
//!
//! A program acts on an error through [`Error::kind`]: one [`ErrorKind`] per thing a caller can
//! do something about (a file that is not a disk, a corrupt one, a parent not found, a lock held
//! by another writer, a bug...), with the typed details of each. Messages never name a command
//! line flag: the CLI adds its own hints when it reports an error.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::Attempt;

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
        /// The stable `check` finding code of the rule (see [`crate::check::CODES`]), when the
        /// rule has one.
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

    /// Another process holds the writers' lock on the file (see [`crate::lock`]). Nothing was
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
    /// A corruption error at `offset` in `structure`.
    pub fn corrupt(structure: &'static str, offset: u64, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            location: Location {
                path: None,
                structure,
                offset,
            },
            detail: detail.into(),
            code: None,
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

/// Why a differencing chain could not be followed (see [`Error::Chain`]).
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
        let any = |f: &dyn Fn(&str) -> bool| attempts.iter().any(|a| f(&a.outcome));
        if any(&|o| o.starts_with("id mismatch")) {
            "chain.identity_mismatch"
        } else if any(&|o| o.contains("sector size mismatch")) {
            "chain.sector_size_mismatch"
        } else if any(&|o| o.contains("format mismatch")) {
            "chain.format_mismatch"
        } else if any(&|o| o.starts_with("cannot open")) {
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

/// What kind of error an [`Error`] is, with the details a program acts on (from
/// [`Error::kind`]). More kinds may come: match with a `_` arm.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ErrorKind<'a> {
    /// The file is neither a VHD nor a VHDX (no `vhdxfile` signature, no `conectix` footer).
    NotADisk {
        /// The file, when known.
        path: Option<&'a Path>,
    },
    /// The file breaks a rule of its format.
    Corrupt {
        /// The stable `check` finding code of the rule, when it has one.
        code: Option<&'static str>,
        /// The file, structure and absolute offset at fault.
        location: &'a Location,
    },
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
    },
    /// A parent offered for a change does not carry the identity the child records.
    ParentMismatch {
        /// The child.
        path: Option<&'a Path>,
        /// The identity the child records.
        expected: Uuid,
        /// The identity the offered parent has.
        found: Uuid,
    },
    /// The chain loops: `parent` is already in it.
    ChainLoop {
        /// The disk that names the parent.
        child: &'a Path,
        /// The parent, already in the chain.
        parent: &'a Path,
    },
    /// The chain is deeper than [`crate::Limits::max_chain_depth`].
    ChainTooDeep {
        /// The limit in force.
        limit: usize,
    },
    /// The file to be created exists (no overwrite was asked for).
    AlreadyExists {
        /// The existing file.
        path: &'a Path,
    },
    /// Another process holds the writers' lock on the file; retry once it is done.
    Locked {
        /// The locked file.
        path: Option<&'a Path>,
    },
    /// A change was refused because a safety check failed; nothing was written.
    Refused {
        /// The file the change was for.
        path: Option<&'a Path>,
        /// Why, in one line.
        reason: &'a str,
    },
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
    },
    /// The file is valid but uses something vhdkit does not support.
    Unsupported {
        /// The file, when known.
        path: Option<&'a Path>,
    },
    /// The caller asked for something impossible (a bad option or offset).
    InvalidArgument {
        /// The option at fault, when one is (see [`Error::InvalidOption`]).
        option: Option<&'static str>,
    },
    /// A write on a disk opened read-only.
    ReadOnly {
        /// The file, when known.
        path: Option<&'a Path>,
    },
    /// An operating-system I/O error.
    Io {
        /// The file, when known.
        path: Option<&'a Path>,
        /// The error from the OS.
        source: &'a io::Error,
    },
    /// A bug in vhdkit, distinct from bad input.
    Internal,
}

impl ErrorKind<'_> {
    /// The kind's stable snake_case name (the `kind` of the CLI's `--json` errors).
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::NotADisk { .. } => "not_a_disk",
            ErrorKind::Corrupt { .. } => "corrupt",
            ErrorKind::ParentNotFound { .. } => "parent_not_found",
            ErrorKind::ParentMismatch { .. } => "parent_mismatch",
            ErrorKind::ChainLoop { .. } => "chain_loop",
            ErrorKind::ChainTooDeep { .. } => "chain_too_deep",
            ErrorKind::AlreadyExists { .. } => "already_exists",
            ErrorKind::Locked { .. } => "locked",
            ErrorKind::Refused { .. } => "refused",
            ErrorKind::LimitExceeded { .. } => "limit_exceeded",
            ErrorKind::Unsupported { .. } => "unsupported",
            ErrorKind::InvalidArgument { .. } => "invalid_argument",
            ErrorKind::ReadOnly { .. } => "read_only",
            ErrorKind::Io { .. } => "io",
            ErrorKind::Internal => "internal",
        }
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

impl ChainBroken {
    fn kind(&self) -> ErrorKind<'_> {
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
