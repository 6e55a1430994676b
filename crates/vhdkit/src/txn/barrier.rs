//! Durability barriers for batched changes (the journal's batch apply). This module knows the
//! journal only by its names ([`crate::sidefile`]), never by its code.
//!
//! A [`Barrier`] makes everything written so far to a batch's files durable: file data, the
//! journals beside them, and the folder entries (renames, removals) of those journals. A batch
//! of N files then needs a constant number of barriers instead of several `fsync`s per file.
//!
//! [`FsBarrier`] on Linux calls `syncfs(2)` once per file system involved (files grouped by
//! `st_dev`, one open handle kept per file system). `syncfs` flushes the whole file system, so
//! it also writes back other processes' dirty data there: on a busy file system a barrier can
//! take longer than a few `fsync`s would, but it stays one call per file system for any batch
//! size. Elsewhere it falls back to `sync_all` of every file and journal of the batch plus a
//! sync of every folder involved (correct, just slower).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::sidefile;

/// One durability barrier: after `barrier()` returns `Ok`, every write made before it to the
/// files it covers (and their journals and folder entries) survives a crash.
pub trait Barrier {
    /// Make everything written so far durable.
    fn barrier(&self) -> io::Result<()>;
}

/// The barrier for a batch of disk files and their `<file>.vhdkit-journal` journals.
#[derive(Debug)]
pub struct FsBarrier {
    /// Linux: one open handle per file system (`st_dev`) holding a disk or its folder.
    #[cfg(target_os = "linux")]
    roots: Vec<File>,
    /// Elsewhere: the disks, whose data and journals are synced one by one.
    #[cfg(not(target_os = "linux"))]
    disks: Vec<PathBuf>,
    /// The folders holding the disks (and so their journals).
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    dirs: Vec<PathBuf>,
}

impl FsBarrier {
    /// A barrier covering `disks`, their folders and their journals.
    pub fn for_disks(disks: &[&Path]) -> io::Result<FsBarrier> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for d in disks {
            let dir = sidefile::folder_of(d).to_path_buf();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let mut devs = Vec::new();
            let mut roots = Vec::new();
            for p in disks
                .iter()
                .copied()
                .chain(dirs.iter().map(PathBuf::as_path))
            {
                let dev = std::fs::metadata(p)?.dev();
                if !devs.contains(&dev) {
                    devs.push(dev);
                    roots.push(File::open(p)?);
                }
            }
            Ok(FsBarrier { roots, dirs })
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(FsBarrier {
                disks: disks.iter().map(|d| d.to_path_buf()).collect(),
                dirs,
            })
        }
    }

    /// How many `syncfs` calls one barrier makes (Linux), or files and folders it syncs.
    #[cfg(test)]
    pub fn width(&self) -> usize {
        #[cfg(target_os = "linux")]
        {
            self.roots.len()
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.disks.len() * 3 + self.dirs.len()
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_path_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new().read(true).write(true).open(p) {
        Ok(f) => f.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Barrier for FsBarrier {
    fn barrier(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            for r in &self.roots {
                rustix::fs::syncfs(r)?;
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            for d in &self.disks {
                sync_path_if_exists(d)?;
                sync_path_if_exists(&sidefile::journal(d))?;
                sync_path_if_exists(&sidefile::journal_tmp(d))?;
            }
            #[cfg(unix)]
            for d in &self.dirs {
                File::open(d)?.sync_all()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_root_per_file_system() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.vhd");
        let b = d.path().join("b.vhd");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let bar = FsBarrier::for_disks(&[&a, &b]).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(bar.width(), 1);
        }
        bar.barrier().unwrap();
    }

    /// A disk given through a link in a folder on another file system: its journal goes beside
    /// the link, so the barrier covers the folder's file system as well as the file's.
    #[cfg(target_os = "linux")]
    #[cfg(vhdkit_workspace)]
    #[test]
    fn a_disk_linked_from_another_file_system_covers_both() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let shm = Path::new("/dev/shm");
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        if !shm.is_dir() || dev(shm) == dev(d.path()) {
            vhdkit_testkit::skip_or_fail("/dev/shm is not a file system of its own");
            return;
        }
        let other = tempfile::tempdir_in(shm).unwrap();
        let target = other.path().join("disk.vhd");
        std::fs::write(&target, b"disk").unwrap();
        let link = d.path().join("disk.vhd");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let bar = FsBarrier::for_disks(&[&link]).unwrap();
        assert_eq!(bar.width(), 2);
        bar.barrier().unwrap();
    }
}
