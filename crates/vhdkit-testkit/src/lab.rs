//! The reparent lab: a temporary folder holding a parent (`old_parent`, from `parent_bytes`) and
//! a differencing child over it, with helpers to place copies of the parent elsewhere. The
//! tests build the images (their builders differ per format and per test file) and hand the
//! bytes over.

use std::path::{Path, PathBuf};

/// A parent and its child in a temporary folder.
#[derive(Debug)]
pub struct Lab {
    /// The folder; removed on drop.
    pub dir: tempfile::TempDir,
    /// The child, at its place in the lab.
    pub child: PathBuf,
    /// The parent the child was made from.
    pub old_parent: PathBuf,
    /// The parent's bytes, for copies.
    pub parent_bytes: Vec<u8>,
}

impl Lab {
    /// A new lab: `parent_bytes` at `parent_rel`, `child_bytes` at `child_rel` (folders made).
    pub fn new(
        parent_rel: &str,
        parent_bytes: Vec<u8>,
        child_rel: &str,
        child_bytes: &[u8],
    ) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_parent = put(dir.path(), parent_rel, &parent_bytes);
        let child = put(dir.path(), child_rel, child_bytes);
        Lab {
            dir,
            child,
            old_parent,
            parent_bytes,
        }
    }

    /// `rel` inside the lab.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A byte-identical copy of the parent at `rel` (folders made).
    pub fn copy_parent(&self, rel: &str) -> PathBuf {
        put(self.dir.path(), rel, &self.parent_bytes)
    }

    /// `bytes` at `rel` (folders made).
    pub fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        put(self.dir.path(), rel, bytes)
    }
}

fn put(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("create lab folders");
    }
    std::fs::write(&p, bytes).expect("write a lab file");
    p
}

/// A lab with the identities its images were built with (VHD unique ids; VHDX DataWriteGuids as
/// little-endian bytes). Derefs to the [`Lab`].
#[derive(Debug)]
pub struct IdLab {
    /// The lab.
    pub lab: Lab,
    /// The child's own id.
    pub child_id: [u8; 16],
    /// The id of the parent the child was made from (what its linkage records).
    pub parent_id: [u8; 16],
}

impl std::ops::Deref for IdLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}
