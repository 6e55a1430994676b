//! Findings about vhdkit's own files beside a disk (see [`crate::sidefile`]): what sits at the
//! journal's name, and partial outputs left in a folder. Nothing is read beyond `fstat`.

use std::path::Path;

use super::{FileReport, Finding};
use crate::fsx::{self, Refused};
use crate::sidefile::{self, Writer};
use crate::txn::journal::MAX_JOURNAL_FILE;

/// What is wrong with the journal name beside `disk` (nothing when absent or plausible).
pub fn journal_findings(disk: &Path) -> Vec<Finding> {
    let jp = sidefile::journal(disk);
    let finding = |code, msg: String| vec![Finding::new(code, "vhdkit journal", None, msg)];
    match fsx::probe_side(&jp) {
        Ok(Some(len)) if len > MAX_JOURNAL_FILE => finding(
            "file.journal_too_large",
            format!(
                "{} is {len} bytes, more than the {MAX_JOURNAL_FILE} bytes of any vhdkit \
                 journal; not read, and every change to the disk is refused until it is removed",
                jp.display()
            ),
        ),
        Ok(_) => Vec::new(),
        Err(e) => match fsx::refusal(&e) {
            Some(Refused::NotRegular(kind)) => finding(
                "file.journal_not_regular",
                format!(
                    "{} is a {kind}, not a vhdkit journal; not read, and every change to the \
                     disk is refused until it is removed",
                    jp.display()
                ),
            ),
            _ => finding(
                "file.unreadable",
                format!("cannot inspect {}: {e}", jp.display()),
            ),
        },
    }
}

/// The report for a partial output (never opened), when `path` is one.
pub fn partial_report(path: &Path) -> Option<FileReport> {
    let part = sidefile::partial(path)?;
    let (code, msg) = match part.writer {
        Writer::Running => (
            "file.partial_output.in_progress",
            format!(
                "partial output for {}, being written by running process {}",
                part.target, part.pid
            ),
        ),
        Writer::Gone => (
            "file.partial_output.stale",
            format!(
                "partial output for {}, left by killed process {}; the next vhdkit run on \
                 that output removes it (or delete it)",
                part.target, part.pid
            ),
        ),
        Writer::Unknown => ("file.partial_output.unknown", unknown_writer(&part)),
    };
    Some(FileReport {
        path: path.to_path_buf(),
        format: None,
        findings: vec![Finding::new(code, "partial output", None, msg)],
    })
}

/// A partial output whose writer cannot be judged from here: its pid is another host's.
fn unknown_writer(part: &sidefile::Partial) -> String {
    let host = match &part.host {
        Some(h) => format!("on another host (host id {h})"),
        None => "on a host it does not record".to_string(),
    };
    format!(
        "partial output for {}, written by process {} {host}: it may still be in progress \
         (shared storage), so vhdkit never removes it; delete it once no run on that host \
         writes it",
        part.target, part.pid
    )
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    fn codes(v: &[Finding]) -> Vec<&str> {
        v.iter().map(|f| f.code).collect()
    }

    #[test]
    fn journal_name_holding_odd_things() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("a.vhd");
        assert!(journal_findings(&disk).is_empty());
        let jp = sidefile::journal(&disk);
        std::os::unix::fs::symlink("/etc/passwd", &jp).unwrap();
        assert_eq!(
            codes(&journal_findings(&disk)),
            ["file.journal_not_regular"]
        );
        std::fs::remove_file(&jp).unwrap();
        std::fs::create_dir(&jp).unwrap();
        assert_eq!(
            codes(&journal_findings(&disk)),
            ["file.journal_not_regular"]
        );
        std::fs::remove_dir(&jp).unwrap();
        let f = std::fs::File::create(&jp).unwrap();
        f.set_len(MAX_JOURNAL_FILE + 1).unwrap();
        assert_eq!(codes(&journal_findings(&disk)), ["file.journal_too_large"]);
    }

    #[test]
    fn partial_outputs_stale_or_in_progress() {
        let d = tempfile::tempdir().unwrap();
        let live = sidefile::partial_output(&d.path().join("o.vhd"));
        let r = partial_report(&live).unwrap();
        assert_eq!(codes(&r.findings), ["file.partial_output.in_progress"]);
        let dead = sidefile::partial_output_of(&d.path().join("o.vhd"), 4_999_999);
        let r = partial_report(&dead).unwrap();
        assert_eq!(codes(&r.findings), ["file.partial_output.stale"]);
        assert!(partial_report(&d.path().join("o.vhd")).is_none());
        // Another host's pid (alive or not here) and a name without a host: unknown.
        let me = sidefile::host_id().unwrap();
        let other = if me == "0123456789ab" {
            "ba9876543210"
        } else {
            "0123456789ab"
        };
        for (name, says) in [
            (format!(".o.vhd.vhdkit-partial-{other}-1"), other),
            (
                format!(".o.vhd.vhdkit-share-tmp-{other}-4999999"),
                "another host",
            ),
            (
                ".o.vhd.vhdkit-partial-4999999".to_string(),
                "does not record",
            ),
        ] {
            let r = partial_report(&d.path().join(&name)).unwrap();
            assert_eq!(
                codes(&r.findings),
                ["file.partial_output.unknown"],
                "{name}"
            );
            assert!(
                r.findings[0].message.contains(says),
                "{name}: {:?}",
                r.findings
            );
        }
    }
}
