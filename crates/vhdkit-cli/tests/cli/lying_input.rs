//! Input that lies about itself: a name that claims VHD/VHDX/AVHD/AVHDX on a file without the
//! signature (0 bytes, truncated, a text file) is an error in every command, never raw data;
//! raw input needs a neutral name (with a note on stderr) or `--from raw`. No message says
//! anything about a non-disk beyond "not a vhd or vhdx file": no size, no contents.

use std::path::{Path, PathBuf};

use crate::util::*;

/// A text file whose size and contents must never show up in a message.
const SECRET: &[u8] = b"root:$6$secretsalt$hash:19000:0:99999:7:::\n";

fn secret_len() -> String {
    SECRET.len().to_string()
}

/// A good dynamic VHD and VHDX child/parent pair made by vhdkit itself.
fn good_disks(dir: &Path, ext: &str) -> (PathBuf, PathBuf) {
    let base = p(dir, &format!("base.{ext}"));
    let child = p(dir, &format!("child.{ext}"));
    create_pair(&base, &child, "8M");
    (base, child)
}

/// Files that claim a disk format by name and are not one (or are a cut-off one).
fn liars(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for name in ["empty.vhd", "empty.VHDX"] {
        let f = p(dir, name);
        std::fs::write(&f, b"").unwrap();
        out.push(f);
    }
    for name in ["notes.avhdx", "notes.AVHD", "shadow.vhd"] {
        let f = p(dir, name);
        std::fs::write(&f, SECRET).unwrap();
        out.push(f);
    }
    for ext in ["vhd", "vhdx"] {
        let sub = dir.join(format!("src-{ext}"));
        std::fs::create_dir(&sub).unwrap();
        let (base, _) = good_disks(&sub, ext);
        let bytes = std::fs::read(&base).unwrap();
        let f = p(dir, &format!("truncated.{ext}"));
        // A download cut off after 300 bytes: the signature is there, a usable disk is not (a
        // longer cut VHD still opens from its front footer copy, by design).
        std::fs::write(&f, &bytes[..300]).unwrap();
        out.push(f);
    }
    out
}

fn assert_refused(r: &Run, what: &str) {
    assert!(
        r.code == 1 || r.code == 2,
        "{what}: expected exit 1 or 2: {r:?}"
    );
    assert!(!r.stderr.contains("panicked"), "{what}: panic: {r:?}");
    assert!(
        !r.stderr.contains("secretsalt"),
        "{what}: contents leaked: {r:?}"
    );
    assert!(
        !r.stdout.contains("secretsalt"),
        "{what}: contents leaked: {r:?}"
    );
}

fn assert_no_size_leak(r: &Run, f: &Path, what: &str) {
    if std::fs::metadata(f).unwrap().len() == SECRET.len() as u64 {
        let msg = r.stderr.replace(&f.display().to_string(), "");
        assert!(
            !msg.contains(&secret_len()),
            "{what}: the size of a non-disk leaked: {r:?}"
        );
    }
}

#[test]
fn names_that_claim_a_disk_are_errors_in_every_command() {
    let d = tmp();
    let (good_base, good_child) = good_disks(d.path(), "vhd");
    for f in liars(d.path()) {
        let before = sha256_file(&f);
        let child_before = sha256_file(&good_child);
        let out = p(d.path(), "out.raw");
        let new_child = p(d.path(), "new-child.vhd");
        let fs = f.as_os_str();
        let runs: Vec<(&str, Run)> = vec![
            ("info", run(["info".as_ref(), fs])),
            ("chain", run(["chain".as_ref(), fs])),
            ("check", run(["check".as_ref(), fs])),
            (
                "check --chain",
                run(["check".as_ref(), "--chain".as_ref(), fs]),
            ),
            ("repair", run(["repair".as_ref(), fs])),
            (
                "repair --dry-run",
                run(["repair".as_ref(), "--dry-run".as_ref(), fs]),
            ),
            (
                "convert",
                run([
                    "convert".as_ref(),
                    "--to".as_ref(),
                    "raw".as_ref(),
                    fs,
                    out.as_os_str(),
                ]),
            ),
            (
                "convert --to vhd",
                run([
                    "convert".as_ref(),
                    "--to".as_ref(),
                    "vhd".as_ref(),
                    fs,
                    new_child.as_os_str(),
                ]),
            ),
            (
                "reparent (as child)",
                run([
                    "reparent".as_ref(),
                    fs,
                    "--parent".as_ref(),
                    good_base.as_os_str(),
                ]),
            ),
            (
                "reparent (as parent)",
                run([
                    "reparent".as_ref(),
                    good_child.as_os_str(),
                    "--parent".as_ref(),
                    fs,
                    "--ignore-id-mismatch".as_ref(),
                ]),
            ),
            (
                "reparent --verify-content",
                run([
                    "reparent".as_ref(),
                    good_child.as_os_str(),
                    "--parent".as_ref(),
                    good_base.as_os_str(),
                    "--verify-content".as_ref(),
                    fs,
                    "--dry-run".as_ref(),
                ]),
            ),
            (
                "create --parent",
                run([
                    "create".as_ref(),
                    new_child.as_os_str(),
                    "--parent".as_ref(),
                    fs,
                ]),
            ),
        ];
        for (what, r) in runs {
            let what = format!("{what} {}", f.display());
            if what.starts_with("reparent --verify-content") {
                // Identity matches, so the old parent is never read: that may succeed.
                assert!(!r.stderr.contains("secretsalt"), "{what}: {r:?}");
                continue;
            }
            assert_refused(&r, &what);
            assert_no_size_leak(&r, &f, &what);
        }
        assert!(
            !out.exists(),
            "convert wrote an output from {}",
            f.display()
        );
        assert!(
            !new_child.exists(),
            "an output was made from {}",
            f.display()
        );
        assert_eq!(sha256_file(&f), before, "{} changed", f.display());
        assert_eq!(sha256_file(&good_child), child_before, "child changed");
        let c = run(["check".as_ref(), fs]);
        if !f.to_string_lossy().contains("truncated") {
            assert!(c.stdout.contains("file.not_a_disk"), "{c:?}");
        }
    }
}

#[test]
fn check_dir_reports_a_text_file_named_like_a_disk() {
    let d = tmp();
    good_disks(d.path(), "vhdx");
    let f = p(d.path(), "notes.avhdx");
    std::fs::write(&f, SECRET).unwrap();
    let r = run(["check".as_ref(), d.path().as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("notes.avhdx"), "{r:?}");
    assert!(r.stdout.contains("file.not_a_disk"), "{r:?}");
    assert!(
        !r.stdout.contains(&format!("{} bytes", secret_len())),
        "{r:?}"
    );
    // A neutral name is not a disk candidate: a folder of notes is not a finding.
    std::fs::remove_file(&f).unwrap();
    std::fs::write(p(d.path(), "notes.txt"), SECRET).unwrap();
    let r = run(["check".as_ref(), d.path().as_os_str()]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn share_and_relink_do_not_pass_over_a_fake_disk() {
    let d = tmp();
    let tree = d.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    good_disks(&tree, "vhdx");
    let f = p(&tree, "fake.vhdx");
    std::fs::write(&f, SECRET).unwrap();
    let shared = d.path().join("shared");
    for args in [
        vec![
            "share".as_ref(),
            tree.as_os_str(),
            "--into".as_ref(),
            shared.as_os_str(),
            "--dry-run".as_ref(),
        ],
        vec!["relink".as_ref(), tree.as_os_str(), "--dry-run".as_ref()],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(
            r.stdout.contains("fake.vhdx") || r.stderr.contains("fake.vhdx"),
            "{r:?}"
        );
        assert!(!r.stdout.contains("secretsalt") && !r.stderr.contains("secretsalt"));
    }
    assert_eq!(std::fs::read(&f).unwrap(), SECRET);
}

#[test]
fn raw_with_a_neutral_name_is_guessed_with_a_note() {
    let d = tmp();
    let src = p(d.path(), "disk.img");
    let mut data = vec![0u8; 1 << 20];
    data[4096..4100].copy_from_slice(b"data");
    std::fs::write(&src, &data).unwrap();
    let dst = p(d.path(), "out.vhd");
    let r = run([
        "convert".as_ref(),
        "--to".as_ref(),
        "vhd".as_ref(),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("note:") && r.stderr.contains("raw image"),
        "{r:?}"
    );
    let back = p(d.path(), "back.raw");
    let r = run([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        dst.as_os_str(),
        back.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.is_empty(), "a real disk needs no note: {r:?}");
    assert_eq!(std::fs::read(&back).unwrap(), data);
}

#[test]
fn from_raw_reads_a_disk_named_file_as_raw_without_a_note() {
    let d = tmp();
    for name in ["image.vhd", "image.AVHDX"] {
        let src = p(d.path(), name);
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dst = p(d.path(), &format!("{name}.raw"));
        let r = run([
            "convert".as_ref(),
            "--from".as_ref(),
            "raw".as_ref(),
            "--to".as_ref(),
            "raw".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(!r.stderr.contains("note:"), "{r:?}");
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }
}
