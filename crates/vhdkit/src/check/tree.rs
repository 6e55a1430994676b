//! Checking whole trees: the disks under folders, with progress and cancellation.

use std::path::{Path, PathBuf};

use super::{check_file, CheckOptions, FileReport, Finding};
use crate::error::{Error, Result};
use crate::progress::{self, Progress};

/// Check every disk in `paths` (read-only): files as given, folders recursively (sorted),
/// keeping only files that carry a disk signature or a name that claims a disk format.
/// Symbolic links to folders are not followed (no loops). Returns the report of each disk
/// checked, and one report per path in the folders that could not be inspected (a `tree.*`
/// finding with the reason): a tree is never called clean from a partial view.
///
/// Reports to `progress` one phase, `"check"`, counted in disks (its total once the folders are
/// walked), and stops between disks once `progress` is cancelled, with an error for which
/// [`Error::is_cancelled`] is true.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::check::{check_tree, CheckOptions};
///
/// vhdkit::create(&dir.path().join("a.vhdx"), &vhdkit::CreateParams::dynamic(1 << 20))?;
/// std::fs::write(dir.path().join("notes.txt"), "not a disk")?;
/// let (reports, uninspected) = check_tree(&[dir.path()], &CheckOptions::default(), ())?;
/// assert_eq!(reports.len(), 1);
/// assert_eq!(reports[0].path, dir.path().join("a.vhdx"));
/// assert!(!reports[0].has_problems());
/// assert!(uninspected.is_empty());
/// # Ok(())
/// # }
/// ```
pub fn check_tree<S: AsRef<Path>>(
    paths: &[S],
    opts: &CheckOptions,
    mut progress: impl Progress,
) -> Result<(Vec<FileReport>, Vec<FileReport>)> {
    let progress: &mut dyn Progress = &mut progress;
    progress::check(progress)?;
    let (files, blind) = collect_tree(paths)?;
    progress.start(
        "check",
        Some(u64::try_from(files.len()).unwrap_or(u64::MAX)),
    );
    let mut reports = Vec::with_capacity(files.len());
    for f in &files {
        progress::check(progress)?;
        reports.push(check_file(f, opts)?);
        progress.advance(1);
    }
    progress.finish();
    Ok((reports, blind))
}

/// The disks under `paths` and a report per path that could not be inspected (see
/// [`check_tree`]).
fn collect_tree<S: AsRef<Path>>(paths: &[S]) -> Result<(Vec<PathBuf>, Vec<FileReport>)> {
    let (mut files, mut blind) = (Vec::new(), Vec::new());
    for p in paths.iter().map(AsRef::as_ref) {
        let md = std::fs::metadata(p).map_err(|e| Error::io("reading", e).with_path(p))?;
        if !md.is_dir() {
            files.push(p.to_path_buf());
            continue;
        }
        // Links to disks are not followed, their targets are checked where they lie. vhdkit's
        // partial outputs are reported (stale or in progress); whatever lies at a journal's name
        // is reported with the disk it belongs to (file.journal_*), not as a path of the tree. A
        // name that claims a disk without the signature is checked (`file.not_a_disk`).
        let select = crate::tree::Select {
            ignore: &crate::sidefile::is_journal_name,
            also: &|p: &Path| {
                crate::sidefile::partial(p).is_some() || crate::disk::claimed_format(p).is_some()
            },
        };
        let limits = crate::tree::WalkLimits::default();
        let w = crate::tree::walk(p, &limits, &select)?;
        files.extend(w.disks.into_iter().map(|d| d.path));
        blind.extend(w.uninspected.into_iter().map(|u| FileReport {
            findings: vec![Finding::new(u.kind.code(), "tree", None, u.reason)],
            path: u.path,
            format: None,
        }));
    }
    Ok((files, blind))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Records the calls, and cancels once `stop_after` disks are done.
    #[derive(Default)]
    struct Log {
        calls: Vec<String>,
        done: u64,
        stop_after: Option<u64>,
    }

    impl Progress for Log {
        fn start(&mut self, what: &str, total: Option<u64>) {
            self.calls.push(format!("start {what} {total:?}"));
        }
        fn advance(&mut self, n: u64) {
            self.done += n;
            self.calls.push(format!("advance {n}"));
        }
        fn finish(&mut self) {
            self.calls.push("finish".into());
        }
        fn cancelled(&self) -> bool {
            self.stop_after.is_some_and(|n| self.done >= n)
        }
    }

    fn three_disks() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in ["a.vhd", "b.vhdx", "sub/c.vhd"] {
            let p = d.path().join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            crate::create(&p, &crate::CreateParams::dynamic(1 << 20)).unwrap();
        }
        std::fs::write(d.path().join("notes.txt"), "not a disk").unwrap();
        d
    }

    #[test]
    fn reports_one_phase_counted_in_disks() {
        let d = three_disks();
        let mut log = Log::default();
        let (reports, blind) = check_tree(&[d.path()], &CheckOptions::default(), &mut log).unwrap();
        let names: Vec<_> = reports
            .iter()
            .map(|r| r.path.strip_prefix(d.path()).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                Path::new("a.vhd"),
                Path::new("b.vhdx"),
                Path::new("sub/c.vhd")
            ]
        );
        assert!(blind.is_empty());
        assert_eq!(
            log.calls,
            [
                "start check Some(3)",
                "advance 1",
                "advance 1",
                "advance 1",
                "finish"
            ]
        );
    }

    #[test]
    fn cancelled_between_disks() {
        let d = three_disks();
        let mut log = Log {
            stop_after: Some(2),
            ..Log::default()
        };
        let e = check_tree(&[d.path()], &CheckOptions::default(), &mut log).unwrap_err();
        assert!(e.is_cancelled(), "{e}");
        assert_eq!(log.done, 2);
        let mut log = Log {
            stop_after: Some(0),
            ..Log::default()
        };
        let e = check_tree(&[d.path()], &CheckOptions::default(), &mut log).unwrap_err();
        assert!(e.is_cancelled(), "{e}");
        assert!(log.calls.is_empty(), "{:?}", log.calls);
    }
}
