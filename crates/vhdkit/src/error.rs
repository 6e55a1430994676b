//! The one error type of the library.
//!
//! Every error that comes from a file's contents says which file (when known), which structure,
//! at which absolute file offset, and what rule was broken. `Display` is one lower-case line that
//! the CLI prints as it is.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

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
    #[error("{}{detail}", path_prefix(.path))]
    Chain {
        /// The child whose parent is at fault.
        path: Option<PathBuf>,
        /// Why, including which paths were tried.
        detail: String,
    },

    /// The caller asked for something impossible (bad offset, bad option).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

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
        }
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
            | Error::Refused { path, .. } => path,
            Error::InvalidArgument(_) => return self,
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
            Error::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            Error::ReadOnly { .. } => io::ErrorKind::PermissionDenied,
            Error::Refused { .. } => io::ErrorKind::Other,
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
