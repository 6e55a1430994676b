//! Typed words of a chain report: which locator led to a candidate and what came of it. Each
//! displays (and serialises) as the text reports have always shown, so a program can `match`
//! while people and JSON readers see the same words as before.

use std::fmt;

use uuid::Uuid;

use crate::disk::DiskFormat;

/// Serialise as the `Display` text: these types are words in reports, not structures.
macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        #[cfg(feature = "serde")]
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

serialize_as_text!(LocatorKind, Via, AttemptOutcome, crate::error::ChainBroken);

/// A parent locator's kind: the name the format's specification gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocatorKind {
    /// VHD `W2ru`: relative Windows path, UTF-16.
    W2ru,
    /// VHD `W2ku`: absolute Windows path, UTF-16.
    W2ku,
    /// VHD `Wi2r`: relative Windows path, 8-bit (deprecated).
    Wi2r,
    /// VHD `Wi2k`: absolute Windows path, 8-bit (deprecated).
    Wi2k,
    /// VHD `MacX`: a `file://` URL.
    MacX,
    /// VHD `Mac ` (shown as `Mac`): a Mac OS alias record.
    Mac,
    /// The VHD header's parent unicode name.
    ParentName,
    /// VHDX `relative_path`.
    RelativePath,
    /// VHDX `volume_path`.
    VolumePath,
    /// VHDX `absolute_win32_path`.
    AbsoluteWin32Path,
    /// Any other name (an unknown VHD platform code, printable form).
    Other(String),
}

impl LocatorKind {
    /// The kind named `name` (`W2ru`, `relative_path`...); unknown names are kept as `Other`.
    pub fn from_name(name: &str) -> LocatorKind {
        match name {
            "W2ru" => LocatorKind::W2ru,
            "W2ku" => LocatorKind::W2ku,
            "Wi2r" => LocatorKind::Wi2r,
            "Wi2k" => LocatorKind::Wi2k,
            "MacX" => LocatorKind::MacX,
            "Mac" => LocatorKind::Mac,
            "parent_name" => LocatorKind::ParentName,
            "relative_path" => LocatorKind::RelativePath,
            "volume_path" => LocatorKind::VolumePath,
            "absolute_win32_path" => LocatorKind::AbsoluteWin32Path,
            other => LocatorKind::Other(other.to_string()),
        }
    }

    /// The name, as reports show it.
    pub fn as_str(&self) -> &str {
        match self {
            LocatorKind::W2ru => "W2ru",
            LocatorKind::W2ku => "W2ku",
            LocatorKind::Wi2r => "Wi2r",
            LocatorKind::Wi2k => "Wi2k",
            LocatorKind::MacX => "MacX",
            LocatorKind::Mac => "Mac",
            LocatorKind::ParentName => "parent_name",
            LocatorKind::RelativePath => "relative_path",
            LocatorKind::VolumePath => "volume_path",
            LocatorKind::AbsoluteWin32Path => "absolute_win32_path",
            LocatorKind::Other(s) => s,
        }
    }
}

impl fmt::Display for LocatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for LocatorKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for LocatorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What led to a candidate parent path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Via {
    /// One of the child's locators.
    Locator(LocatorKind),
    /// The parent's file name, looked for in the child's folder.
    NameInChildFolder,
    /// The parent's file name, looked for in a search folder.
    Search,
}

impl Via {
    /// The locator, when a locator led to it.
    pub fn locator(&self) -> Option<&LocatorKind> {
        match self {
            Via::Locator(k) => Some(k),
            _ => None,
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Locator(k) => f.write_str(k.as_str()),
            Via::NameInChildFolder => f.write_str("name in child folder"),
            Via::Search => f.write_str("search"),
        }
    }
}

/// What came of trying one candidate path for a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// It is the parent.
    Accepted,
    /// No file there.
    NotFound,
    /// Something other than a regular file there.
    NotRegularFile,
    /// The locator leads back to the child.
    IsChild,
    /// The file did not open as a disk (the error's text).
    CannotOpen(String),
    /// It has another identity.
    IdMismatch {
        /// The identity it has.
        found: Uuid,
    },
    /// It is of another format.
    FormatMismatch {
        /// The child's format.
        child: DiskFormat,
        /// The candidate's format.
        parent: DiskFormat,
    },
    /// Its logical sector size differs from the child's.
    LogicalSectorSizeMismatch {
        /// The child's.
        child: u32,
        /// The candidate's.
        parent: u32,
    },
    /// It lies outside the confining folders (`ChainOptions::confine`); nothing more is said
    /// about it, which may be a secret a hostile locator points at.
    Confined,
    /// An absolute Windows path with no local meaning here and no path map that covers it.
    UnmappedWindowsPath,
}

impl AttemptOutcome {
    /// True for the accepted candidate.
    pub fn is_accepted(&self) -> bool {
        matches!(self, AttemptOutcome::Accepted)
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptOutcome::Accepted => f.write_str("accepted"),
            AttemptOutcome::NotFound => f.write_str("not found"),
            AttemptOutcome::NotRegularFile => f.write_str("not a regular file"),
            AttemptOutcome::IsChild => f.write_str("is the child itself"),
            AttemptOutcome::CannotOpen(e) => write!(f, "cannot open: {e}"),
            AttemptOutcome::IdMismatch { found } => write!(f, "id mismatch: it has {found}"),
            AttemptOutcome::FormatMismatch { child, parent } => write!(
                f,
                "format mismatch: a {child} child cannot have a {parent} parent"
            ),
            AttemptOutcome::LogicalSectorSizeMismatch { child, parent } => write!(
                f,
                "logical sector size mismatch: parent {parent}, child {child}"
            ),
            AttemptOutcome::Confined => f.write_str(CONFINED_OUT),
            AttemptOutcome::UnmappedWindowsPath => f.write_str(UNMAPPED_WINDOWS_PATH),
        }
    }
}

/// The text for a candidate outside the confining folders.
pub const CONFINED_OUT: &str = "refused by confinement: outside the confining folders";

/// The text for an absolute Windows locator no path map covers.
pub const UNMAPPED_WINDOWS_PATH: &str =
    "skipped: an absolute Windows path has no local meaning here; map it with a path map \
     'PREFIX=LOCAL_FOLDER' (e.g. 'C:\\Lab=/srv/lab')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_names() {
        for n in [
            "W2ru",
            "W2ku",
            "Wi2r",
            "Wi2k",
            "MacX",
            "Mac",
            "parent_name",
            "relative_path",
            "volume_path",
            "absolute_win32_path",
            "Zz\\x01q",
        ] {
            assert_eq!(LocatorKind::from_name(n).as_str(), n);
        }
        assert_eq!(
            LocatorKind::from_name("xyz"),
            LocatorKind::Other("xyz".into())
        );
        assert_eq!(Via::Search.to_string(), "search");
        assert_eq!(Via::NameInChildFolder.to_string(), "name in child folder");
        assert_eq!(Via::Locator(LocatorKind::W2ru).to_string(), "W2ru");
    }

    #[test]
    fn outcomes_show_todays_text() {
        let id = Uuid::nil();
        assert_eq!(AttemptOutcome::Accepted.to_string(), "accepted");
        assert_eq!(
            AttemptOutcome::IdMismatch { found: id }.to_string(),
            format!("id mismatch: it has {id}")
        );
        assert_eq!(
            AttemptOutcome::FormatMismatch {
                child: DiskFormat::Vhd,
                parent: DiskFormat::Vhdx
            }
            .to_string(),
            "format mismatch: a vhd child cannot have a vhdx parent"
        );
        assert_eq!(
            AttemptOutcome::LogicalSectorSizeMismatch {
                child: 512,
                parent: 4096
            }
            .to_string(),
            "logical sector size mismatch: parent 4096, child 512"
        );
        assert!(!AttemptOutcome::Confined.to_string().contains("--"));
        assert!(!AttemptOutcome::UnmappedWindowsPath
            .to_string()
            .contains("--"));
    }
}
