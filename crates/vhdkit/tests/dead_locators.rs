//! Issue 7: `repair` drops parent locators that point nowhere when another one leads to the
//! parent, and keeps everything it cannot be certain about.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use uuid::Uuid;
use vhdkit::check::{check_file, CheckOptions};
use vhdkit::repair::{repair, RepairOptions};
use vhdkit::Disk;
use vhdkit_testkit::sha256_file;
use vhdkit_testkit::through::chain_sha;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

const PARENT_ID: [u8; 16] = *b"parent-identity!";

fn codes(p: &Path) -> Vec<&'static str> {
    check_file(p, &CheckOptions::default()).unwrap().codes()
}

fn locators(p: &Path) -> Vec<(String, Option<String>)> {
    Disk::open(p)
        .unwrap()
        .parent_locators()
        .into_iter()
        .map(|l| (l.kind.to_string(), l.path))
        .collect()
}

/// A VHD parent and a child with a working `W2ru`, an unverifiable `W2ku`, a dead `Wi2r`
/// (names a missing file) and a `MacX` whose data lies past the end of the file.
fn vhd_lab(dir: &Path, working: bool) -> (PathBuf, vhdkit_testkit::vhd::BuiltVhd) {
    let mut p = VhdBuilder::dynamic(8 << 20).unique_id(PARENT_ID);
    p.write(0, &[0x11; 8192]);
    p.write(3 << 20, &[0x22; 4096]);
    p.build().write_to(&dir.join("parent.vhd"));
    let rel = if working {
        r".\parent.vhd"
    } else {
        r".\moved\parent.vhd"
    };
    let mut c = VhdBuilder::differencing(8 << 20, PARENT_ID)
        .parent_name("parent.vhd")
        .locator(Locator::w2ru(rel))
        .locator(Locator::w2ku(r"C:\Lab\parent.vhd"))
        .locator(Locator::wi2r(r".\old\gone.vhd"))
        .locator(Locator::macx("file://localhost/Users/me/parent.vhd"));
    c.write(4096, &[0x33; 4096]);
    let mut built = c.build();
    // MacX (slot 3): data offset far past the end of the file.
    let e = built.locator_entry(3);
    built.set_u64(e + 16, 1 << 40);
    built.fix_header_checksum();
    let path = dir.join("child.vhd");
    built.write_to(&path);
    (path, built)
}

#[test]
fn vhd_dead_locators_are_dropped() {
    let t = tempfile::tempdir().unwrap();
    let (child, built) = vhd_lab(t.path(), true);
    let sha = chain_sha(&child);
    let c = codes(&child);
    assert!(c.contains(&"vhd.locator.dead"), "{c:?}");

    // Dry run: reports both, writes nothing.
    let (hash, mtime) = (
        sha256_file(&child),
        std::fs::metadata(&child).unwrap().modified().unwrap(),
    );
    let r = repair(&child, &RepairOptions::default().dry_run(true)).unwrap();
    let dropped: Vec<&String> = r
        .structures
        .iter()
        .filter(|s| s.code == "vhd.locator.dead")
        .map(|s| &s.action)
        .collect();
    assert_eq!(dropped.len(), 2, "{r:?}");
    assert!(dropped.iter().all(|a| a.starts_with("would drop")));
    assert!(dropped.iter().any(|a| a.contains("Wi2r")));
    assert!(dropped.iter().any(|a| a.contains("MacX")));
    assert!(!r.needs_attention(), "{r:?}");
    assert_eq!(sha256_file(&child), hash);
    assert_eq!(
        std::fs::metadata(&child).unwrap().modified().unwrap(),
        mtime
    );

    // The repair.
    let r = repair(&child, &RepairOptions::default()).unwrap();
    assert!(!r.needs_attention(), "{r:?}");
    assert_eq!(
        r.structures
            .iter()
            .filter(|s| s.code == "vhd.locator.dead")
            .count(),
        2
    );
    assert!(!child.with_file_name("child.vhd.vhdkit-journal").exists());
    let after = std::fs::read(&child).unwrap();
    // Entries 2 and 3 are zero; 0 (W2ru) and 1 (W2ku) byte for byte as before.
    for (slot, gone) in [(0, false), (1, false), (2, true), (3, true)] {
        let e = built.locator_entry(slot);
        if gone {
            assert!(after[e..e + 24].iter().all(|&b| b == 0), "slot {slot}");
        } else {
            assert_eq!(after[e..e + 24], built.bytes[e..e + 24], "slot {slot}");
        }
    }
    // The dead Wi2r's data is zeroed; the working W2ru's data is intact.
    let data = |slot: usize| built.locator_data.iter().find(|d| d.0 == slot).unwrap().1;
    assert!(after[data(2)..data(2) + 14].iter().all(|&b| b == 0));
    assert_eq!(
        after[data(0)..data(0) + 24],
        built.bytes[data(0)..data(0) + 24]
    );
    // Only the header and the Wi2r data changed.
    let h = built.header_offset.unwrap();
    for (i, (a, b)) in after.iter().zip(&built.bytes).enumerate() {
        if a != b {
            assert!(
                (h..h + 1024).contains(&i) || (data(2)..data(2) + 512).contains(&i),
                "byte {i:#x} changed"
            );
        }
    }
    let c = codes(&child);
    assert!(
        !c.iter().any(|x| x.starts_with("vhd.locator")),
        "{c:?}: header checksum or locators still flagged"
    );
    let l = locators(&child);
    assert!(
        l.contains(&("W2ru".into(), Some(r".\parent.vhd".into()))),
        "{l:?}"
    );
    assert!(l.contains(&("W2ku".into(), Some(r"C:\Lab\parent.vhd".into()))));
    assert!(l.contains(&("parent_name".into(), Some("parent.vhd".into()))));
    assert!(!l.iter().any(|(k, _)| k == "Wi2r" || k == "MacX"));
    assert_eq!(chain_sha(&child), sha);

    // A second repair has nothing left to do.
    let r = repair(&child, &RepairOptions::default()).unwrap();
    assert!(r.structures.is_empty(), "{r:?}");
}

#[test]
fn vhd_without_a_working_locator_is_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let (child, _) = vhd_lab(t.path(), false);
    let hash = sha256_file(&child);
    // The parent is still found by its file name, but no locator entry leads to it.
    assert!(!codes(&child).contains(&"vhd.locator.dead"));
    let r = repair(&child, &RepairOptions::default()).unwrap();
    assert!(
        !r.structures.iter().any(|s| s.code == "vhd.locator.dead"),
        "{r:?}"
    );
    assert!(r.needs_attention());
    assert!(r
        .unrepaired
        .iter()
        .any(|f| f.code == "chain.parent_missing" && f.message.contains("none is dropped")));
    assert_eq!(sha256_file(&child), hash);
}

/// VHDX: `relative_path` is dead, `absolute_win32_path` is a POSIX path that resolves.
#[test]
fn vhdx_dead_relative_path_is_dropped() {
    let t = tempfile::tempdir().unwrap();
    let dwg = Uuid::from_u128(0xabcd_0000_0000_0000_0000_0000_0000_0001);
    let mut p = VhdxBuilder::new(Kind::Dynamic, 64 << 20, 2 << 20, 512);
    p.data_write_guid = dwg;
    p.write(0, &[0x44; 8192]);
    std::fs::write(t.path().join("base.vhdx"), p.build().bytes).unwrap();
    let mut c = VhdxBuilder::new(Kind::Differencing, 64 << 20, 2 << 20, 512);
    c.data_write_guid = Uuid::from_u128(7);
    c.parent_linkage = dwg;
    c.parent_linkage2 = Some(Uuid::from_u128(9));
    c.relative_path = Some(r".\gone\base.vhdx".into());
    c.volume_path = Some(r"\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\base.vhdx".into());
    c.absolute_win32_path = Some(t.path().join("base.vhdx").display().to_string());
    c.write(4096, &[0x55; 4096]);
    let child = t.path().join("child.avhdx");
    std::fs::write(&child, c.build().bytes).unwrap();
    let sha = chain_sha(&child);
    let dwg_before = match Disk::open(&child).unwrap().info().details {
        vhdkit::FormatInfo::Vhdx(v) => v.data_write_guid,
        _ => unreachable!(),
    };
    let c0 = codes(&child);
    assert!(c0.contains(&"vhdx.locator.dead"), "{c0:?}");

    let hash = sha256_file(&child);
    let r = repair(&child, &RepairOptions::default().dry_run(true)).unwrap();
    assert!(
        r.structures.iter().any(|s| s.code == "vhdx.locator.dead"
            && s.action.starts_with("would drop key relative_path")),
        "{r:?}"
    );
    assert_eq!(sha256_file(&child), hash);

    let r = repair(&child, &RepairOptions::default()).unwrap();
    assert!(!r.needs_attention(), "{r:?}");
    let l = locators(&child);
    assert!(!l.iter().any(|(k, _)| k == "relative_path"), "{l:?}");
    assert!(l.iter().any(|(k, _)| k == "volume_path"), "{l:?}");
    assert!(l.iter().any(|(k, _)| k == "absolute_win32_path"), "{l:?}");
    let d = Disk::open(&child).unwrap();
    let link = d.parent_linkage().unwrap();
    assert_eq!(link.id, dwg);
    assert_eq!(link.alternate_id, Some(Uuid::from_u128(9)));
    let vhdkit::FormatInfo::Vhdx(v) = d.info().details else {
        unreachable!()
    };
    assert_eq!(v.data_write_guid, dwg_before);
    assert!(v.log_guid.is_nil());
    let c1 = codes(&child);
    assert!(!c1.iter().any(|x| x.starts_with("vhdx.locator")), "{c1:?}");
    assert!(
        !check_file(&child, &CheckOptions::default())
            .unwrap()
            .has_problems(),
        "{c1:?}"
    );
    assert_eq!(chain_sha(&child), sha);
}
