//! Full file systems: a small `tmpfs` is mounted (as root; a loud skip otherwise, a failure
//! with `CI=true`) and create, convert, reparent and share run into it until ENOSPC. Each
//! exits non-zero with one error line, leaves nothing behind and changes no source.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hostile::run_within;
use crate::util::*;
use vhdkit_testkit::mount::Tmpfs;

const SECS: u64 = 60;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What these tests do with their tmpfs.
trait FullFs {
    fn names(&self) -> BTreeSet<String>;
    /// Fill what is left with a file (tmpfs counts written zeros).
    fn fill(&self);
}

impl FullFs for Tmpfs {
    fn names(&self) -> BTreeSet<String> {
        list(&self.at)
    }

    fn fill(&self) {
        let mut f = std::fs::File::create(self.at.join("filler")).unwrap();
        let chunk = vec![0u8; 16 << 10];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0u8; 512]).is_ok() {}
    }
}

/// Every name under `dir`, recursively, relative to it.
fn list(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            }
        }
    }
    out
}

fn assert_failed_in_one_line(r: &Run, what: &str) {
    assert_ne!(r.code, 0, "{what}: {r:?}");
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("vhdkit: warning:"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: not one error line: {r:?}");
    assert!(!r.stderr.contains("panicked"), "{what}: {r:?}");
    assert_enospc(r, what);
}

/// The run really hit the full file system (not some other refusal).
fn assert_enospc(r: &Run, what: &str) {
    assert!(
        r.stderr.contains("No space left") || r.stdout.contains("No space left"),
        "{what}: did not hit ENOSPC: {r:?}"
    );
}

/// A base VHD holding `mib` MiB of data and a child over it, outside the tmpfs.
fn disk_with_data(dir: &Path, mib: usize) -> (PathBuf, PathBuf) {
    let raw = dir.join("data.raw");
    let mut data = vec![0u8; mib << 20];
    vhdkit_testkit::Rng::new(5).fill(&mut data);
    std::fs::write(&raw, &data).unwrap();
    let base = dir.join("base.vhd");
    run_success(["convert", "--to", "vhd", s(&raw), s(&base)]);
    std::fs::remove_file(&raw).unwrap();
    let child = dir.join("child.vhd");
    run_success(["create", s(&child), "--parent", s(&base)]);
    (base, child)
}

#[test]
fn create_and_convert_into_a_full_fs_leave_nothing() {
    let Some(fs) = Tmpfs::mount("2m", "full file systems") else {
        return;
    };
    let src_dir = tmp();
    let (base, _) = disk_with_data(src_dir.path(), 4);
    let base_before = std::fs::read(&base).unwrap();
    let before = fs.names();
    for (what, args) in [
        // A 2040 GiB VHD's table is 4 MiB of 0xFF: more than the file system holds.
        (
            "create",
            vec![
                "create".to_string(),
                format!("{}/big.vhd", s(&fs.at)),
                "--size".into(),
                "2040G".into(),
            ],
        ),
        (
            "convert raw",
            vec![
                "convert".into(),
                "--to".into(),
                "raw".into(),
                s(&base).into(),
                format!("{}/out.raw", s(&fs.at)),
            ],
        ),
        (
            "convert vhd",
            vec![
                "convert".into(),
                "--to".into(),
                "vhd".into(),
                s(&base).into(),
                format!("{}/out.vhd", s(&fs.at)),
            ],
        ),
        (
            "convert vhdx",
            vec![
                "convert".into(),
                "--to".into(),
                "vhdx".into(),
                s(&base).into(),
                format!("{}/out.vhdx", s(&fs.at)),
            ],
        ),
    ] {
        let r = run_within(SECS, &args);
        assert_failed_in_one_line(&r, what);
        assert_eq!(
            fs.names(),
            before,
            "{what}: leftovers in the full file system"
        );
        assert!(
            std::fs::read(&base).unwrap() == base_before,
            "{what}: source changed"
        );
    }
}

#[test]
fn reparent_on_a_full_fs_changes_nothing_and_leaves_no_journal() {
    let Some(fs) = Tmpfs::mount("4m", "full file systems") else {
        return;
    };
    let (base, child) = disk_with_data(&fs.at, 1);
    let base2 = fs.at.join("base2.vhd");
    std::fs::copy(&base, &base2).unwrap();
    fs.fill();
    let child_before = std::fs::read(&child).unwrap();
    let before = fs.names();
    let r = run_within(SECS, ["reparent", s(&child), "--parent", s(&base2)]);
    assert_failed_in_one_line(&r, "reparent");
    assert!(
        std::fs::read(&child).unwrap() == child_before,
        "reparent: child changed"
    );
    assert_eq!(fs.names(), before, "reparent: leftovers");
    let r = run_within(SECS, ["chain", s(&child)]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn share_copying_a_keeper_into_a_full_fs_removes_its_temp_copy() {
    let Some(fs) = Tmpfs::mount("2m", "full file systems") else {
        return;
    };
    let lab = tmp();
    let vms = lab.path().join("vms");
    for vm in ["vm1", "vm2"] {
        std::fs::create_dir_all(vms.join(vm)).unwrap();
    }
    // A 4 MiB parent in two copies: the keeper must be copied to the 2 MiB tmpfs.
    let (base1, _) = disk_with_data(&vms.join("vm1"), 4);
    let base2 = vms.join("vm2/base.vhd");
    std::fs::copy(&base1, &base2).unwrap();
    run_success([
        "create",
        s(&vms.join("vm2/child.vhd")),
        "--parent",
        s(&base2),
    ]);
    let tree_before: Vec<(String, Vec<u8>)> = list(&vms)
        .into_iter()
        .filter(|n| n.ends_with(".vhd"))
        .map(|n| {
            let b = std::fs::read(vms.join(&n)).unwrap();
            (n, b)
        })
        .collect();
    let before = fs.names();
    let r = run_within(SECS, ["share", s(&vms), "--into", s(&fs.at)]);
    assert_ne!(r.code, 0, "share: {r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert_enospc(&r, "share");
    assert_eq!(
        fs.names(),
        before,
        "share: leftovers in the full file system"
    );
    for (n, b) in tree_before {
        assert!(
            std::fs::read(vms.join(&n)).unwrap() == b,
            "share: {n} changed"
        );
    }
}

#[test]
fn share_copies_a_keeper_across_file_systems_sparsely() {
    use std::os::unix::fs::MetadataExt;
    let Some(fs) = Tmpfs::mount("256m", "full file systems") else {
        return;
    };
    let lab = tmp();
    let vms = lab.path().join("vms");
    for vm in ["vm1", "vm2"] {
        std::fs::create_dir_all(vms.join(vm)).unwrap();
    }
    // A 64 MiB fixed parent holding 16 KiB of data, in two copies, children over each.
    let raw = lab.path().join("data.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut data = vec![0u8; 16 << 10];
    vhdkit_testkit::Rng::new(9).fill(&mut data);
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 8 << 20).unwrap();
    drop(f);
    let base1 = vms.join("vm1/base.vhd");
    run_success(["convert", "--to", "vhd", "--fixed", s(&raw), s(&base1)]);
    let base2 = vms.join("vm2/base.vhd");
    // The same disk (same id), still sparse.
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&base1)
            .arg(&base2),
    );
    for vm in ["vm1", "vm2"] {
        let c = vms.join(vm).join("child.vhd");
        run_success([
            "create",
            s(&c),
            "--parent",
            s(&vms.join(vm).join("base.vhd")),
        ]);
    }
    let len = std::fs::metadata(&base2).unwrap().len();
    let r = run_within(SECS, ["share", s(&vms), "--into", s(&fs.at)]);
    assert_eq!(r.code, 0, "{r:?}");
    let keeper = fs.at.join("base.vhd");
    let md = std::fs::metadata(&keeper).unwrap();
    assert_eq!(md.len(), len);
    assert!(
        md.blocks() * 512 <= 1 << 20,
        "the keeper copy is not sparse: {} bytes allocated",
        md.blocks() * 512
    );
    for vm in ["vm1", "vm2"] {
        let r = run_within(
            SECS,
            ["check", "--chain", s(&vms.join(vm).join("child.vhd"))],
        );
        assert_eq!(r.code, 0, "{r:?}");
    }
    assert_eq!(
        fs.names(),
        ["base.vhd".to_string()].into_iter().collect(),
        "leftovers beside the keeper"
    );
}
