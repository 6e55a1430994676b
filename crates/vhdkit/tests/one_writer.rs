//! One writer at a time: every writer takes the same exclusive lock, re-checks under it every
//! byte its plan read, and writes through the locked descriptor. Another holder of the lock, or
//! a byte changed between planning and the lock, is a refusal with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::path::{Path, PathBuf};

use vhdkit::reparent::{self, ReparentOptions};
use vhdkit::{create, ChainOptions, CreateParams, WritableDisk};
use vhdkit_testkit::sha256_file;

/// `base.EXT`, an identical copy `copy.EXT`, and a differencing `child.EXT` over `base`.
fn lab(dir: &Path, ext: &str) -> (PathBuf, PathBuf) {
    let base = dir.join(format!("base.{ext}"));
    let copy = dir.join(format!("copy.{ext}"));
    let child = dir.join(format!("child.{ext}"));
    create(&base, &CreateParams::dynamic(8 << 20)).unwrap();
    std::fs::copy(&base, &copy).unwrap();
    create(&child, &CreateParams::differencing(&base)).unwrap();
    (child, copy)
}

fn plan(child: &Path, new_parent: &Path) -> reparent::ReparentPlan {
    let o = ReparentOptions {
        new_parent: new_parent.to_path_buf(),
        ..ReparentOptions::default()
    };
    reparent::plan(child, &o).unwrap()
}

/// Someone else's lock: another open file description (`flock` knows no processes).
fn foreign_lock(p: &Path) -> File {
    let f = File::open(p).unwrap();
    f.try_lock().unwrap();
    f
}

#[test]
fn a_held_lock_refuses_reparent_and_writable_open() {
    for ext in ["vhd", "vhdx"] {
        let d = tempfile::tempdir().unwrap();
        let (child, copy) = lab(d.path(), ext);
        let p = plan(&child, &copy);
        let before = sha256_file(&child);
        let held = foreign_lock(&child);
        let e = reparent::apply(&p).unwrap_err().to_string();
        assert!(
            e.contains("refused") && e.contains("in use by another process"),
            "{e}"
        );
        let e = WritableDisk::open(&child, &ChainOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use by another process"), "{e}");
        let e = vhdkit::repair::repair(&child, &vhdkit::repair::RepairOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use by another process"), "{e}");
        assert_eq!(sha256_file(&child), before, "{ext}: the child changed");
        drop(held);
        reparent::apply(&p).unwrap();
        assert_ne!(
            sha256_file(&child),
            before,
            "{ext}: applied once the lock is free"
        );
    }
}

#[test]
fn a_byte_the_plan_read_that_changed_refuses_the_change() {
    for ext in ["vhd", "vhdx"] {
        let d = tempfile::tempdir().unwrap();
        let (child, copy) = lab(d.path(), ext);
        let p = plan(&child, &copy);
        // A byte the plan read (the file's first sector: the VHD footer copy's cookie area, or
        // the VHDX file identifier's creator) that the plan itself does not write.
        let at = 0x20u64;
        assert!(
            p.txn()
                .writes
                .iter()
                .all(|w| !(w.offset..w.offset + w.data.len() as u64).contains(&at)),
            "{ext}: pick a byte the plan does not write"
        );
        let mut bytes = std::fs::read(&child).unwrap();
        bytes[at as usize] ^= 0x01;
        std::fs::write(&child, &bytes).unwrap();
        let before = sha256_file(&child);
        let e = reparent::apply(&p).unwrap_err().to_string();
        assert!(e.contains("changed since the plan was made"), "{ext}: {e}");
        assert_eq!(
            sha256_file(&child),
            before,
            "{ext}: written despite the change"
        );
    }
}

#[test]
fn a_longer_file_refuses_the_change() {
    let d = tempfile::tempdir().unwrap();
    let (child, copy) = lab(d.path(), "vhdx");
    let p = plan(&child, &copy);
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&child)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() + (1 << 20)).unwrap();
    let before = sha256_file(&child);
    let e = reparent::apply(&p).unwrap_err().to_string();
    assert!(e.contains("length"), "{e}");
    assert_eq!(sha256_file(&child), before);
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Rewrite the child's absolute locator (UTF-16LE, same length) from `from` to `to`, as a
/// second writer that got only half its change in would leave it.
fn swap_absolute_locator(child: &Path, from: &Path, to: &Path) {
    let (a, b) = (
        utf16le(&from.display().to_string()),
        utf16le(&to.display().to_string()),
    );
    assert_eq!(a.len(), b.len());
    let mut bytes = std::fs::read(child).unwrap();
    // The last match: a VHD's big-endian parent name, read one byte off, matches too.
    let at = bytes
        .windows(a.len())
        .rposition(|w| w == a.as_slice())
        .expect("the absolute locator");
    bytes[at..at + a.len()].copy_from_slice(&b);
    std::fs::write(child, &bytes).unwrap();
}

#[test]
fn locators_that_disagree_about_the_parent_are_flagged() {
    use vhdkit::check::{check_file, CheckOptions};
    for ext in ["vhd", "vhdx"] {
        let d = tempfile::tempdir().unwrap();
        let (child, copy) = lab(d.path(), ext);
        let code = format!("{ext}.locator.disagree");
        let codes = |p: &Path| check_file(p, &CheckOptions::default()).unwrap().codes();
        assert!(
            !codes(&child).contains(&code.as_str()),
            "{ext}: a fresh child agrees"
        );
        // `base.EXT` and `copy.EXT` differ in length: use a same-length twin name instead.
        let twin = d.path().join(format!("twin.{ext}"));
        std::fs::copy(&copy, &twin).unwrap();
        swap_absolute_locator(&child, &d.path().join(format!("base.{ext}")), &twin);
        let found = codes(&child);
        assert!(found.contains(&code.as_str()), "{ext}: {found:?}");
        let report = check_file(&child, &CheckOptions::default()).unwrap();
        let f = report.findings.iter().find(|f| f.code == code).unwrap();
        assert!(
            f.message.contains("twin") && f.message.contains("base"),
            "{f:?}"
        );
        // Once the twin is gone, every locator that leads anywhere agrees again.
        std::fs::remove_file(&twin).unwrap();
        assert!(!codes(&child).contains(&code.as_str()), "{ext}");
    }
}

#[test]
fn repair_of_a_healthy_read_only_disk_needs_no_lock() {
    let d = tempfile::tempdir().unwrap();
    let (child, _) = lab(d.path(), "vhd");
    let mut perm = std::fs::metadata(&child).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&child, perm).unwrap();
    let r = vhdkit::repair::repair(&child, &vhdkit::repair::RepairOptions::default()).unwrap();
    assert!(!r.needs_attention(), "{r:?}");
}
