//! `repair` of what `check` finds: footer copies, VHDX header and region table twins, dirty
//! logs; dry runs change nothing; anything uncertain is left alone and reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::repair::{repair, RepairOptions};
use vhdkit::Disk;
use vhdkit_testkit::vhd::VhdBuilder;
use vhdkit_testkit::vhdx::{Kind, LogOptions, VhdxBuilder};
use vhdkit_testkit::{sha256_file, sha256_reader};

fn clean(p: &Path) -> bool {
    !check_file(p, &CheckOptions::default())
        .unwrap()
        .has_problems()
}

fn content(p: &Path) -> String {
    sha256_reader(Disk::open(p).unwrap().view())
}

fn vhd() -> vhdkit_testkit::vhd::BuiltVhd {
    let mut b = VhdBuilder::dynamic(8 << 20);
    b.write(0, &[0xab; 8192]);
    b.build()
}

fn vhdx() -> vhdkit_testkit::vhdx::Built {
    let mut b = VhdxBuilder::new(Kind::Dynamic, 64 << 20, 2 << 20, 512);
    b.write(0, &[0xcd; 8192]);
    b.write(9 << 20, &[0xef; 4096]);
    b.build()
}

/// Damage `bytes` with `f`, check that repair restores a clean file (and, when given, the
/// exact original bytes), and that a dry run first changes nothing.
fn round_trip(name: &str, bytes: Vec<u8>, f: impl Fn(&mut Vec<u8>), exact: bool) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join(name);
    let mut bad = bytes.clone();
    f(&mut bad);
    std::fs::write(&p, &bad).unwrap();
    assert!(!clean(&p), "{name}: damage not found");
    let before = sha256_file(&p);
    let r = repair(&p, &RepairOptions::default().dry_run(true)).unwrap();
    assert!(!r.structures.is_empty(), "{name}: nothing planned");
    assert!(r.unrepaired.is_empty(), "{name}: {:?}", r.unrepaired);
    assert_eq!(before, sha256_file(&p), "{name}: dry run wrote");
    let r = repair(&p, &RepairOptions::default()).unwrap();
    assert!(!r.structures.is_empty());
    assert!(!r.needs_attention(), "{name}: {r:?}");
    assert!(
        clean(&p),
        "{name}: still {:?}",
        check_file(&p, &CheckOptions::default()).unwrap().findings
    );
    if exact {
        assert_eq!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{name}: not the original bytes"
        );
    }
    println!("{name}: {:?}", r.structures);
}

#[test]
fn vhd_footer_either_direction() {
    let b = vhd();
    let fo = b.footer_offset;
    round_trip("end.vhd", b.bytes.clone(), |x| x[fo + 70] ^= 1, true);
    round_trip("copy.vhd", b.bytes.clone(), |x| x[70] ^= 1, true);
    round_trip(
        "copy-zeroed.vhd",
        b.bytes.clone(),
        |x| x[..512].fill(0),
        true,
    );
    round_trip(
        "end-zeroed.vhd",
        b.bytes.clone(),
        |x| {
            let l = x.len();
            x[l - 512..].fill(0)
        },
        true,
    );
}

#[test]
fn vhdx_header_and_region_twins() {
    let b = vhdx();
    let t = tempfile::tempdir().unwrap();
    let orig = t.path().join("orig.vhdx");
    std::fs::write(&orig, &b.bytes).unwrap();
    let want = content(&orig);
    for (name, f) in [
        (
            "h1.vhdx",
            Box::new(|x: &mut Vec<u8>| x[0x10000 + 200] ^= 1) as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        ("h2.vhdx", Box::new(|x: &mut Vec<u8>| x[0x20000] = 0)),
        ("r1.vhdx", Box::new(|x: &mut Vec<u8>| x[0x30000 + 4] ^= 1)),
        (
            "r2.vhdx",
            Box::new(|x: &mut Vec<u8>| x[0x40000 + 5000] ^= 1),
        ),
    ] {
        round_trip(name, b.bytes.clone(), f, false);
    }
    // Contents unchanged by a region repair.
    let p = t.path().join("r.vhdx");
    let mut bad = b.bytes.clone();
    bad[0x30000 + 4] ^= 1;
    std::fs::write(&p, &bad).unwrap();
    repair(&p, &RepairOptions::default()).unwrap();
    assert_eq!(content(&p), want);
    if vhdkit_testkit::have_tool("qemu-img", "qemu-img check after repair") {
        let o = std::process::Command::new("qemu-img")
            .args(["check", "-f", "vhdx"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
}

#[test]
fn vhdx_dirty_log_is_replayed() {
    let mut b = vhdx();
    let bo = b.layout.bat_offset;
    let mo = b.layout.metadata_offset;
    b.make_dirty(&[bo, mo], &[], &LogOptions::default());
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("dirty.vhdx");
    std::fs::write(&p, &b.bytes).unwrap();
    let want = content(&p); // the reader replays in memory
    let r = repair(&p, &RepairOptions::default()).unwrap();
    // The log step replays it first; the structural step then finds a clean log.
    assert!(
        matches!(r.vhdx_log, Some(vhdkit::repair::LogOutcome::Replayed(_))),
        "{r:?}"
    );
    assert!(
        r.structures.iter().all(|s| s.code != "vhdx.log.dirty"),
        "{r:?}"
    );
    assert!(clean(&p));
    assert_eq!(content(&p), want);
}

#[test]
fn uncertain_damage_is_left_alone() {
    let mut b = vhd();
    b.set_bat(1, 0x00F0_0000); // a block past the end: no good copy to restore from
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("bat.vhd");
    std::fs::write(&p, &b.bytes).unwrap();
    let before = sha256_file(&p);
    let r = repair(&p, &RepairOptions::default()).unwrap();
    assert!(r.structures.is_empty());
    assert!(r.needs_attention());
    assert_eq!(r.unrepaired[0].code, "vhd.block.past_eof");
    assert_eq!(before, sha256_file(&p));
    // Both footer copies damaged: nothing certain.
    let mut x = vhd();
    let fo = x.footer_offset;
    x.bytes[70] ^= 1;
    x.bytes[fo + 70] ^= 1;
    std::fs::write(&p, &x.bytes).unwrap();
    let before = sha256_file(&p);
    let r = repair(&p, &RepairOptions::default()).unwrap();
    assert!(r.structures.is_empty() && r.needs_attention());
    assert_eq!(before, sha256_file(&p));
}
