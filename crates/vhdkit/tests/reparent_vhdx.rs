//! `reparent` on VHDX children: round trips (contents through the new chain unchanged, only
//! header/log/metadata bytes changed, DataWriteGuid kept, oracles find and accept the new
//! parent), long and odd paths (the locator item moves when it outgrows its place), modes,
//! every refusal, a dirty log, crash safety at every operation, the real Hyper-V child, and the
//! bytes written for small and huge disks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Range;
use std::path::Path;

use uuid::Uuid;
use vhdkit::repair::{self, LogOutcome, RepairOptions};
use vhdkit::reparent::{self, AbsoluteSource, IdentityCheck, LocatorMode, ReparentOptions};
use vhdkit::txn::fault::{FaultPlan, FaultyFile, MemJournal};
use vhdkit::vhdx::VhdxInfo;
use vhdkit::FormatInfo;
use vhdkit::{Chain, ChainOptions, ChainView, Disk, Error, OpenOptions};
use vhdkit_testkit::lab::Lab;
use vhdkit_testkit::snapshot::Snapshot;
use vhdkit_testkit::through::{assert_changes_within, canon, chain_files, chain_sha, Length};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
use vhdkit_testkit::{oracle, sha256_reader, Rng};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 << 20;
const PARENT_DWG: u128 = 0xaaaa_0000_0000_4000_8000_0000_0000_0001;
const CHILD_DWG: u128 = 0xcccc_0000_0000_4000_8000_0000_0000_0002;
/// The child's `parent_linkage2`: non-zero (a zero one is dropped when read) and matching no
/// parent, so every refusal also proves the alternate linkage is not accepted blindly.
const STALE_LINKAGE2: u128 = 0x2222_0000_0000_4000_8000_0000_0000_0003;

fn parent_builder(size: u64, bs: u32, lss: u32, seed: u64) -> VhdxBuilder {
    let mut p = VhdxBuilder::new(Kind::Dynamic, size, bs, lss);
    p.data_write_guid = Uuid::from_u128(PARENT_DWG);
    let mut rng = Rng::new(seed);
    for _ in 0..30 {
        let s = rng.below(size / u64::from(lss) - 4);
        let mut d = vec![0u8; lss as usize * (1 + rng.below(3) as usize)];
        rng.fill(&mut d);
        p.write(s * u64::from(lss), &d);
    }
    p
}

fn child_builder(size: u64, bs: u32, lss: u32, seed: u64) -> VhdxBuilder {
    let mut c = VhdxBuilder::new(Kind::Differencing, size, bs, lss);
    c.data_write_guid = Uuid::from_u128(CHILD_DWG);
    c.file_write_guid = Uuid::from_u128(0xcccc_1111);
    c.parent_linkage = Uuid::from_u128(PARENT_DWG);
    c.parent_linkage2 = Some(Uuid::from_u128(STALE_LINKAGE2));
    c.absolute_win32_path = Some(r"C:\Lab\old\base.vhdx".into());
    c.relative_path = Some(r"..\old\base.vhdx".into());
    c.volume_path =
        Some(r"\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\Lab\old\base.vhdx".into());
    let l = u64::from(lss);
    let mut rng = Rng::new(seed ^ 0x55);
    // Partially present: sectors 1, 3, 6 of block 0 and a few random runs.
    for s in [1u64, 3, 6] {
        let mut d = vec![0u8; lss as usize];
        rng.fill(&mut d);
        c.write(s * l, &d);
    }
    for _ in 0..10 {
        let s = rng.below(size / l - 8);
        let mut d = vec![0u8; lss as usize * (1 + rng.below(7) as usize)];
        rng.fill(&mut d);
        c.write(s * l, &d);
    }
    // Fully present: the whole second block.
    let mut d = vec![0u8; bs as usize];
    rng.fill(&mut d);
    c.write(u64::from(bs), &d);
    c
}

fn lab_with(size: u64, bs: u32, lss: u32, seed: u64) -> Lab {
    Lab::new(
        "old/base.vhdx",
        parent_builder(size, bs, lss, seed).build().bytes,
        "vm/child.avhdx",
        &child_builder(size, bs, lss, seed).build().bytes,
    )
}

fn lab() -> Lab {
    lab_with(SIZE, 1 << 20, 512, 1)
}

fn opts(np: &Path) -> ReparentOptions {
    ReparentOptions {
        new_parent: np.to_path_buf(),
        ..ReparentOptions::default()
    }
}

fn vinfo_of(d: &Disk) -> VhdxInfo {
    match d.info().details {
        FormatInfo::Vhdx(v) => v,
        _ => panic!("not vhdx"),
    }
}

fn vinfo(p: &Path) -> VhdxInfo {
    vinfo_of(&Disk::open(p).unwrap())
}

fn keys_of(v: &VhdxInfo) -> Vec<(String, Option<String>)> {
    v.parent_locator
        .as_ref()
        .unwrap()
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

fn key_names(v: &VhdxInfo) -> Vec<String> {
    keys_of(v).into_iter().map(|(k, _)| k).collect()
}

fn value(v: &VhdxInfo, key: &str) -> Option<String> {
    keys_of(v)
        .into_iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v)
}

/// Headers, the log region and the metadata region of a testkit-built file.
fn metadata_areas() -> Vec<Range<usize>> {
    vec![
        0x10000..0x30000,
        MIB as usize..2 * MIB as usize,
        2 * MIB as usize..3 * MIB as usize,
    ]
}

fn reparent_ok(child: &Path, o: &ReparentOptions) -> reparent::ReparentPlan {
    let plan = reparent::plan(child, o).unwrap();
    let report = reparent::apply(&plan).unwrap();
    assert_eq!(report.bytes_written, plan.bytes_written(), "{report:?}");
    assert_eq!(report.journal_bytes, 0);
    assert!(!vhdkit::txn::journal::FileJournal::for_disk(child)
        .path()
        .exists());
    plan
}

/// pyvhdi must accept the parent; dissect must find it through the child's locator (the
/// absolute path given does not exist here, so only `relative_path` can lead there) and read the
/// same contents.
fn oracles(child: &Path, parent: &Path, sha: &str) {
    if let Some(r) = oracle::pyvhdi_set_parent(child, parent) {
        r.unwrap_or_else(|e| panic!("pyvhdi refused the new parent: {e}"));
    }
    if let Some((h, _)) = oracle::pyvhdi_chain_sha256(&[child, parent]) {
        assert_eq!(h, sha, "pyvhdi read different contents");
    }
    if let Some(r) = oracle::dissect_vhdx(child, 0) {
        let (p, h, _) = r.unwrap_or_else(|e| panic!("dissect failed: {e}"));
        assert_eq!(
            std::fs::canonicalize(&p).unwrap(),
            std::fs::canonicalize(parent).unwrap(),
            "dissect opened another parent"
        );
        assert_eq!(h, sha, "dissect read different contents");
    }
}

#[test]
fn round_trip_512_and_4096() {
    for (lss, bs) in [(512u32, 1u32 << 20), (4096, 2 << 20)] {
        let lab = lab_with(SIZE, bs, lss, u64::from(lss));
        let sha = chain_sha(&lab.child);
        let before = std::fs::read(&lab.child).unwrap();
        let vb = vinfo(&lab.child);
        let np = lab.copy_parent("RefDisk/base.vhdx");
        let o = ReparentOptions {
            windows_path: Some(r"C:\Lab\RefDisk\base.vhdx".into()),
            ..opts(&np)
        };
        let plan = reparent_ok(&lab.child, &o);
        assert_eq!(plan.identity, IdentityCheck::Primary);
        assert!(!plan.linkage_rewritten);
        assert_eq!(plan.relative_path.as_deref(), Some(r"..\RefDisk\base.vhdx"));
        assert_eq!(
            plan.absolute_path.as_ref().unwrap().source,
            AbsoluteSource::Given
        );
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("volume_path is removed")),
            "{:?}",
            plan.notes
        );
        let fields: Vec<&str> = plan
            .txn()
            .changes
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        assert!(
            fields.contains(&"relative_path") && fields.contains(&"volume_path"),
            "{fields:?}"
        );
        // Only the new locators can find the parent now.
        std::fs::remove_file(&lab.old_parent).unwrap();
        let chain = Chain::open(&lab.child, &ChainOptions::default()).unwrap();
        let link = chain.report().links[0].parent.clone().unwrap();
        assert_eq!(
            link.via.as_ref().map(ToString::to_string).as_deref(),
            Some("relative_path")
        );
        assert_eq!(
            std::fs::canonicalize(link.path.unwrap()).unwrap(),
            std::fs::canonicalize(&np).unwrap()
        );
        assert_eq!(sha256_reader(chain.into_view()), sha, "lss {lss}");
        let va = vinfo(&lab.child);
        assert_eq!(
            va.data_write_guid, vb.data_write_guid,
            "DataWriteGuid changed"
        );
        assert_eq!(va.data_write_guid, Uuid::from_u128(CHILD_DWG));
        assert_ne!(va.file_write_guid, vb.file_write_guid, "FileWriteGuid kept");
        assert!(va.log_guid.is_nil());
        assert_eq!(
            keys_of(&va),
            [
                (
                    "parent_linkage".to_string(),
                    Some(format!("{{{}}}", Uuid::from_u128(PARENT_DWG)))
                ),
                (
                    "absolute_win32_path".into(),
                    Some(r"C:\Lab\RefDisk\base.vhdx".into())
                ),
                ("relative_path".into(), Some(r"..\RefDisk\base.vhdx".into())),
                (
                    "parent_linkage2".into(),
                    Some(format!("{{{}}}", Uuid::from_u128(STALE_LINKAGE2)))
                ),
            ]
        );
        let d = Disk::open(&lab.child).unwrap();
        assert!(d.warnings().is_empty(), "{:?}", d.warnings());
        let after = std::fs::read(&lab.child).unwrap();
        assert_changes_within(&before, &after, &metadata_areas(), Length::Same);
        // The two headers agree and the old item was rewritten in place (it got shorter).
        assert_eq!(&after[0x10010..0x10040], &after[0x20010..0x20040]);
        oracles(&lab.child, &np, &sha);
    }
}

#[test]
fn modes_keep_one_path() {
    let lab = lab();
    let sha = chain_sha(&lab.child);
    let np = lab.copy_parent("RefDisk/base.vhdx");
    let o = ReparentOptions {
        mode: LocatorMode::RelativeOnly,
        ..opts(&np)
    };
    reparent_ok(&lab.child, &o);
    let v = vinfo(&lab.child);
    assert_eq!(
        key_names(&v),
        ["parent_linkage", "relative_path", "parent_linkage2"]
    );
    let np2 = lab.copy_parent("Other/base.vhdx");
    let o = ReparentOptions {
        mode: LocatorMode::AbsoluteOnly,
        ..opts(&np2)
    };
    let plan = reparent_ok(&lab.child, &o);
    let v = vinfo(&lab.child);
    assert_eq!(
        key_names(&v),
        ["parent_linkage", "absolute_win32_path", "parent_linkage2"]
    );
    assert_eq!(
        value(&v, "absolute_win32_path"),
        Some(plan.absolute_path.unwrap().value)
    );
    // Back to both: the relative key is added again after the absolute one.
    reparent_ok(&lab.child, &opts(&np));
    assert_eq!(
        key_names(&vinfo(&lab.child)),
        [
            "parent_linkage",
            "absolute_win32_path",
            "relative_path",
            "parent_linkage2"
        ]
    );
    std::fs::remove_file(&lab.old_parent).unwrap();
    assert_eq!(chain_sha(&lab.child), sha);
}

/// Non-ASCII names with spaces, a UNC --windows-path, and a 32 767-unit path that does not fit
/// the item's place: the item moves, the table entry follows, and everything reads back.
#[test]
fn odd_and_long_paths_round_trip() {
    let lab = lab();
    let sha = chain_sha(&lab.child);
    let np = lab.copy_parent("Réf Disk/bäse 日本 😀.vhdx");
    let unc = r"\\server\share\Réf Disk\bäse 日本 😀.vhdx";
    let o = ReparentOptions {
        windows_path: Some(unc.into()),
        ..opts(&np)
    };
    let plan = reparent_ok(&lab.child, &o);
    let v = vinfo(&lab.child);
    assert_eq!(
        value(&v, "relative_path").as_deref(),
        Some(r"..\Réf Disk\bäse 日本 😀.vhdx")
    );
    assert_eq!(value(&v, "absolute_win32_path").as_deref(), Some(unc));
    assert_eq!(
        plan.relative_path.as_deref(),
        Some(r"..\Réf Disk\bäse 日本 😀.vhdx")
    );
    std::fs::remove_file(&lab.old_parent).unwrap();
    assert_eq!(chain_sha(&lab.child), sha);
    oracles(&lab.child, &np, &sha);

    // The longest Windows path, with surrogate pairs and non-ASCII letters in it.
    let mut long = String::from(r"C:\");
    while long.encode_utf16().count() < 32_767 - 40 {
        long.push_str(r"dossier é 😀\");
    }
    while long.encode_utf16().count() < 32_767 - 6 {
        long.push('x');
    }
    long.push_str(".vhdx");
    assert_eq!(long.encode_utf16().count(), 32_767 - 1);
    long.insert(3, 'y');
    assert_eq!(long.encode_utf16().count(), 32_767);
    // Another item right after the locator: the longer item cannot grow in place.
    let loc_before = locator_item(&lab.child);
    let mut bytes = std::fs::read(&lab.child).unwrap();
    add_user_item(&mut bytes, loc_before.0 + loc_before.1, 64);
    std::fs::write(&lab.child, &bytes).unwrap();
    let before = bytes;
    let o = ReparentOptions {
        windows_path: Some(long.clone()),
        ..opts(&np)
    };
    let plan = reparent_ok(&lab.child, &o);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("does not fit in its old place")),
        "{:?}",
        plan.notes
    );
    let v = vinfo(&lab.child);
    assert_eq!(
        value(&v, "absolute_win32_path").as_deref(),
        Some(long.as_str())
    );
    let loc_after = locator_item(&lab.child);
    assert!(
        loc_after.1 > loc_before.1 && loc_after.1 > 65_534,
        "{loc_after:?}"
    );
    assert_eq!(
        loc_after.0,
        (loc_before.0 + loc_before.1 + 64).next_multiple_of(8)
    );
    let after = std::fs::read(&lab.child).unwrap();
    assert_changes_within(&before, &after, &metadata_areas(), Length::Same);
    assert_eq!(chain_sha(&lab.child), sha);
    // One code unit more is refused.
    long.push('z');
    let o = ReparentOptions {
        windows_path: Some(long),
        ..opts(&np)
    };
    let e = reparent::plan(&lab.child, &o).unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert!(e.to_string().contains("32767"), "{e}");
}

/// (offset in the metadata region, length) of the parent locator item.
fn locator_item(p: &Path) -> (u32, u32) {
    let v = vinfo(p);
    let i = v
        .metadata_items
        .iter()
        .find(|i| i.name.as_deref() == Some("parent_locator"))
        .unwrap();
    (i.offset, i.length)
}

/// Add a user metadata item (IsUser, not required) at `offset` in the metadata region, `len`
/// bytes of 0x5A, to a testkit-built file (metadata region at 2 MiB).
fn add_user_item(bytes: &mut [u8], offset: u32, len: u32) {
    let mo = 2 * MIB as usize;
    let count = u16::from_le_bytes([bytes[mo + 10], bytes[mo + 11]]);
    let e = mo + 32 + 32 * usize::from(count);
    bytes[e..e + 16].copy_from_slice(&Uuid::from_u128(0x7777).to_bytes_le());
    bytes[e + 16..e + 20].copy_from_slice(&offset.to_le_bytes());
    bytes[e + 20..e + 24].copy_from_slice(&len.to_le_bytes());
    bytes[e + 24..e + 28].copy_from_slice(&1u32.to_le_bytes());
    bytes[mo + 10..mo + 12].copy_from_slice(&(count + 1).to_le_bytes());
    let at = mo + offset as usize;
    bytes[at..at + len as usize].fill(0x5A);
}

/// An item right after the locator: a longer locator moves past it (8-byte aligned); a region
/// with no room left is refused, untouched.
#[test]
fn locator_moves_around_other_items_or_is_refused() {
    let lab = lab();
    let sha = chain_sha(&lab.child);
    let (off, len) = locator_item(&lab.child);
    let mut bytes = std::fs::read(&lab.child).unwrap();
    let user_at = off + len + 3;
    add_user_item(&mut bytes, user_at, 4000);
    std::fs::write(&lab.child, &bytes).unwrap();
    assert_eq!(chain_sha(&lab.child), sha);
    let np = lab.copy_parent(&format!(
        "{}/base.vhdx",
        ["a-long-folder-name"; 12].join("/")
    ));
    let plan = reparent_ok(&lab.child, &opts(&np));
    let (noff, nlen) = locator_item(&lab.child);
    assert_eq!(
        noff,
        (user_at + 4000).next_multiple_of(8),
        "{:?}",
        plan.notes
    );
    assert!(nlen > len);
    let after = std::fs::read(&lab.child).unwrap();
    let mo = 2 * MIB as usize;
    assert!(
        after[mo + off as usize..mo + user_at as usize]
            .iter()
            .all(|&b| b == 0),
        "old bytes zeroed"
    );
    assert!(
        after[mo + user_at as usize..][..4000]
            .iter()
            .all(|&b| b == 0x5A),
        "user item kept"
    );
    std::fs::remove_file(&lab.old_parent).unwrap();
    assert_eq!(chain_sha(&lab.child), sha);

    // A region filled to the end: no room.
    let lab = lab_with(SIZE, 1 << 20, 512, 9);
    let (off, len) = locator_item(&lab.child);
    let mut bytes = std::fs::read(&lab.child).unwrap();
    let at = off + len;
    add_user_item(&mut bytes, at, (MIB as u32) - at);
    std::fs::write(&lab.child, &bytes).unwrap();
    let np = lab.copy_parent(&format!(
        "{}/base.vhdx",
        ["a-long-folder-name"; 12].join("/")
    ));
    let e = reparent::plan(&lab.child, &opts(&np)).unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("growing the metadata region is not supported"),
        "{e}"
    );
    assert_eq!(std::fs::read(&lab.child).unwrap(), bytes);
}

/// The last item grows in place into the free space after it.
#[test]
fn last_item_grows_in_place() {
    let lab = lab();
    let (off, len) = locator_item(&lab.child);
    let np = lab.copy_parent(&format!(
        "{}/base.vhdx",
        ["a-long-folder-name"; 12].join("/")
    ));
    let plan = reparent_ok(&lab.child, &opts(&np));
    let (noff, nlen) = locator_item(&lab.child);
    assert_eq!(noff, off);
    assert!(nlen > len);
    assert!(
        !plan.notes.iter().any(|n| n.contains("does not fit")),
        "{:?}",
        plan.notes
    );
}

fn assert_refused(child: &Path, o: &ReparentOptions, needle: &str) {
    // The whole lab (the child's folder's parent): child, journal, every parent copy.
    let before = Snapshot::tree(child.parent().unwrap().parent().unwrap());
    let e = reparent::plan(child, o).unwrap_err();
    assert!(
        matches!(e, Error::Refused { .. } | Error::ParentMismatch { .. }),
        "{needle}: {e}"
    );
    assert!(e.to_string().contains(needle), "{needle:?} in {e}");
    before.assert_unchanged(needle);
}

#[test]
fn refusals_touch_nothing() {
    let lab = lab();
    // Another format: a VHD with the right size.
    let vhd = lab.path("other/base.vhd");
    std::fs::create_dir_all(vhd.parent().unwrap()).unwrap();
    vhdkit_testkit::vhd::VhdBuilder::dynamic(SIZE)
        .build()
        .write_to(&vhd);
    assert_refused(&lab.child, &opts(&vhd), "a vhdx child needs a vhdx parent");
    // Identity mismatch: same data, another DataWriteGuid.
    let mut other = parent_builder(SIZE, 1 << 20, 512, 1);
    other.data_write_guid = Uuid::from_u128(0xdead);
    let other_p = lab.path("other/base.vhdx");
    std::fs::write(&other_p, other.build().bytes).unwrap();
    assert_refused(&lab.child, &opts(&other_p), "identity mismatch");
    // --verify-content with different contents.
    let mut diff = parent_builder(SIZE, 1 << 20, 512, 1);
    diff.data_write_guid = Uuid::from_u128(0xbeef);
    diff.write(4 << 20, &[0x42; 512]);
    let diff_p = lab.path("diff/base.vhdx");
    std::fs::create_dir_all(diff_p.parent().unwrap()).unwrap();
    std::fs::write(&diff_p, diff.build().bytes).unwrap();
    let o = ReparentOptions {
        verify_content: Some(lab.old_parent.clone()),
        ..opts(&diff_p)
    };
    assert_refused(
        &lab.child,
        &o,
        "contents differ from the old parent's at virtual offset 0x400000",
    );
    // Size and sector size mismatches (same identity).
    let mut big = parent_builder(SIZE * 2, 1 << 20, 512, 1);
    big.data_write_guid = Uuid::from_u128(PARENT_DWG);
    let big_p = lab.path("big/base.vhdx");
    std::fs::create_dir_all(big_p.parent().unwrap()).unwrap();
    std::fs::write(&big_p, big.build().bytes).unwrap();
    assert_refused(&lab.child, &opts(&big_p), "virtual size mismatch");
    let s4k = parent_builder(SIZE, 1 << 20, 4096, 1);
    let s4k_p = lab.path("s4k/base.vhdx");
    std::fs::create_dir_all(s4k_p.parent().unwrap()).unwrap();
    std::fs::write(&s4k_p, s4k.build().bytes).unwrap();
    assert_refused(&lab.child, &opts(&s4k_p), "sector size mismatch");
    // The child itself; its own child.
    assert_refused(&lab.child, &opts(&lab.child), "the child itself");
    let mut gc = VhdxBuilder::new(Kind::Differencing, SIZE, 1 << 20, 512);
    gc.data_write_guid = Uuid::from_u128(0x9999);
    gc.parent_linkage = Uuid::from_u128(CHILD_DWG);
    gc.relative_path = Some(r".\child.avhdx".into());
    let gc_p = lab.path("vm/gc.avhdx");
    std::fs::write(&gc_p, gc.build().bytes).unwrap();
    assert_refused(&lab.child, &opts(&gc_p), "descendant of the child");
    // A new parent whose own parent is missing.
    let mut orphan = VhdxBuilder::new(Kind::Differencing, SIZE, 1 << 20, 512);
    orphan.data_write_guid = Uuid::from_u128(PARENT_DWG);
    orphan.parent_linkage = Uuid::from_u128(0x4444);
    orphan.relative_path = Some(r".\gone.vhdx".into());
    let orphan_p = lab.path("orphan/base.vhdx");
    std::fs::create_dir_all(orphan_p.parent().unwrap()).unwrap();
    std::fs::write(&orphan_p, orphan.build().bytes).unwrap();
    assert_refused(&lab.child, &opts(&orphan_p), "own chain is broken");
    // Not a differencing child.
    let o = opts(&lab.old_parent);
    let e = reparent::plan(&lab.old_parent, &ReparentOptions { ..o }).unwrap_err();
    assert!(e.to_string().contains("not a differencing disk"), "{e}");
}

#[test]
fn identity_overrides_rewrite_the_linkage() {
    let lab = lab();
    let sha = chain_sha(&lab.child);
    // Same contents, another DataWriteGuid: --verify-content accepts and rewrites.
    let mut same = parent_builder(SIZE, 1 << 20, 512, 1);
    same.data_write_guid = Uuid::from_u128(0xbeef);
    let same_p = lab.path("same/base.vhdx");
    std::fs::create_dir_all(same_p.parent().unwrap()).unwrap();
    std::fs::write(&same_p, same.build().bytes).unwrap();
    let o = ReparentOptions {
        verify_content: Some(lab.old_parent.clone()),
        ..opts(&same_p)
    };
    let plan = reparent_ok(&lab.child, &o);
    assert!(matches!(
        plan.identity,
        IdentityCheck::ContentVerified { .. }
    ));
    assert!(plan.linkage_rewritten);
    let v = vinfo(&lab.child);
    assert_eq!(
        key_names(&v),
        ["parent_linkage", "absolute_win32_path", "relative_path"],
        "parent_linkage2 is dropped with a rewritten linkage"
    );
    assert_eq!(
        value(&v, "parent_linkage"),
        Some(format!("{{{}}}", Uuid::from_u128(0xbeef)))
    );
    assert_eq!(v.data_write_guid, Uuid::from_u128(CHILD_DWG));
    std::fs::remove_file(&lab.old_parent).unwrap();
    assert_eq!(chain_sha(&lab.child), sha);
    if let Some(r) = oracle::pyvhdi_set_parent(&lab.child, &same_p) {
        r.unwrap();
    }
    // --ignore-id-mismatch: back to a parent with the original id, loudly.
    let np = lab.copy_parent("RefDisk/base.vhdx");
    let o = ReparentOptions {
        ignore_id_mismatch: true,
        ..opts(&np)
    };
    let plan = reparent_ok(&lab.child, &o);
    assert!(matches!(
        plan.identity,
        IdentityCheck::MismatchIgnored { .. }
    ));
    assert!(plan
        .warnings
        .iter()
        .any(|w| w.contains("IDENTITY MISMATCH IGNORED")));
    assert_eq!(
        Disk::open(&lab.child).unwrap().parent_linkage().unwrap().id,
        Uuid::from_u128(PARENT_DWG)
    );
    assert_eq!(chain_sha(&lab.child), sha);
}

/// A parent whose DataWriteGuid equals parent_linkage2 is accepted as the alternate; both
/// linkage keys stay.
#[test]
fn parent_linkage2_match_is_named_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let p = parent_builder(SIZE, 1 << 20, 512, 3);
    let np = dir.path().join("ref/base.vhdx");
    std::fs::create_dir_all(np.parent().unwrap()).unwrap();
    std::fs::write(&np, p.build().bytes).unwrap();
    let mut c = child_builder(SIZE, 1 << 20, 512, 3);
    c.parent_linkage = Uuid::from_u128(0x1234);
    c.parent_linkage2 = Some(Uuid::from_u128(PARENT_DWG));
    let child = dir.path().join("vm/c.avhdx");
    std::fs::create_dir_all(child.parent().unwrap()).unwrap();
    std::fs::write(&child, c.build().bytes).unwrap();
    let plan = reparent_ok(&child, &opts(&np));
    assert_eq!(plan.identity, IdentityCheck::Alternate);
    assert!(!plan.linkage_rewritten);
    assert!(
        plan.notes.iter().any(|n| n.contains("parent_linkage2")),
        "{:?}",
        plan.notes
    );
    let v = vinfo(&child);
    assert_eq!(
        value(&v, "parent_linkage"),
        Some(format!("{{{}}}", Uuid::from_u128(0x1234)))
    );
    assert_eq!(
        value(&v, "parent_linkage2"),
        Some(format!("{{{}}}", Uuid::from_u128(PARENT_DWG)))
    );
    // The chain walker takes the same parent, through the alternate linkage.
    assert_eq!(
        chain_files(&child, &ChainOptions::default()),
        [canon(&child), canon(&np)]
    );
}

/// A `parent_linkage2` that matches nothing accepts nothing: with a stale primary linkage, a
/// parent with neither id is refused by reparent and not taken by the chain walker.
#[test]
fn parent_linkage2_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = parent_builder(SIZE, 1 << 20, 512, 3);
    let np = dir.path().join("ref/base.vhdx");
    std::fs::create_dir_all(np.parent().unwrap()).unwrap();
    std::fs::write(&np, p.build().bytes).unwrap();
    let mut c = child_builder(SIZE, 1 << 20, 512, 3);
    c.parent_linkage = Uuid::from_u128(0x1234);
    c.relative_path = Some(r"..\ref\base.vhdx".into());
    let child = dir.path().join("vm/c.avhdx");
    std::fs::create_dir_all(child.parent().unwrap()).unwrap();
    std::fs::write(&child, c.build().bytes).unwrap();
    assert_refused(&child, &opts(&np), "identity mismatch");
    let e = Chain::open(&child, &ChainOptions::default()).unwrap_err();
    assert!(e.to_string().contains("id mismatch"), "{e}");
    // The same child with parent_linkage2 = the parent's DataWriteGuid is linked.
    c.parent_linkage2 = Some(Uuid::from_u128(PARENT_DWG));
    std::fs::write(&child, c.build().bytes).unwrap();
    assert_eq!(
        chain_files(&child, &ChainOptions::default()),
        [canon(&child), canon(&np)]
    );
}

/// A child with a dirty log: the plan is made on the replayed file; apply replays it to disk
/// first. `repair` replays a dirty log on its own, with a dry run that writes nothing.
#[test]
fn dirty_log_is_replayed_first_and_by_repair() {
    let lab = lab();
    let sha = chain_sha(&lab.child);
    let mut b = child_builder(SIZE, 1 << 20, 512, 1);
    b.write(5 << 20, &[0x77; 4096]);
    let mut built = b.build();
    let bat = built.layout.bat_offset;
    // The BAT sector and the metadata table sector go through an unapplied log entry.
    built.make_dirty(
        &[bat, built.layout.metadata_offset],
        &[],
        &Default::default(),
    );
    let dirty = built.bytes.clone();
    std::fs::write(&lab.child, &dirty).unwrap();
    let sha_dirty = chain_sha(&lab.child);
    assert_ne!(sha_dirty, sha);

    // repair --dry-run reports, writes nothing; repair replays.
    let r = repair::repair(&lab.child, &RepairOptions::default().dry_run(true)).unwrap();
    assert!(
        matches!(r.vhdx_log, Some(LogOutcome::WouldReplay(ref x)) if x.entries == 1),
        "{r:?}"
    );
    assert_eq!(std::fs::read(&lab.child).unwrap(), dirty);
    let r = repair::repair(&lab.child, &RepairOptions::default()).unwrap();
    assert!(matches!(r.vhdx_log, Some(LogOutcome::Replayed(_))), "{r:?}");
    let v = vinfo(&lab.child);
    assert!(v.log_guid.is_nil());
    assert_eq!(v.data_write_guid, Uuid::from_u128(CHILD_DWG));
    assert_eq!(chain_sha(&lab.child), sha_dirty);
    let r = repair::repair(&lab.child, &RepairOptions::default()).unwrap();
    assert_eq!(r.vhdx_log, Some(LogOutcome::Clean));

    // reparent of the dirty file.
    std::fs::write(&lab.child, &dirty).unwrap();
    let np = lab.copy_parent("RefDisk/base.vhdx");
    let plan = reparent::plan(&lab.child, &opts(&np)).unwrap();
    assert!(plan.pending_journal);
    assert!(
        plan.notes.iter().any(|n| n.contains("log is dirty")),
        "{:?}",
        plan.notes
    );
    let report = reparent::apply(&plan).unwrap();
    let x = report.vhdx.unwrap();
    assert_eq!(x.log_replayed.unwrap().entries, 1);
    let v = vinfo(&lab.child);
    assert!(v.log_guid.is_nil());
    assert_eq!(
        value(&v, "relative_path").as_deref(),
        Some(r"..\RefDisk\base.vhdx")
    );
    std::fs::remove_file(&lab.old_parent).unwrap();
    assert_eq!(chain_sha(&lab.child), sha_dirty);
}

/// A plan made before another writer changed the file is refused at apply, untouched.
#[test]
fn apply_refuses_a_file_changed_since_the_plan() {
    let lab = lab();
    let np = lab.copy_parent("RefDisk/base.vhdx");
    let plan = reparent::plan(&lab.child, &opts(&np)).unwrap();
    let np2 = lab.copy_parent("Other/base.vhdx");
    reparent_ok(&lab.child, &opts(&np2));
    let now = std::fs::read(&lab.child).unwrap();
    let e = reparent::apply(&plan).unwrap_err();
    assert!(
        e.to_string().contains("changed since the plan was made"),
        "{e}"
    );
    assert_eq!(std::fs::read(&lab.child).unwrap(), now);
}

/// Fail at every mutating operation of the whole apply (plain, moving, and dirty-log cases):
/// both crash images open (replaying their log in memory) with the old or the new locator,
/// the DataWriteGuid unchanged and the same virtual contents; replayed to disk by `repair`,
/// they open clean with the same result.
#[test]
fn crash_at_every_operation_gives_old_or_new() {
    for case in ["plain", "move", "dirty"] {
        let lab = lab();
        let np = if case == "move" {
            lab.copy_parent(&format!("{}/base.vhdx", ["long-folder-name"; 40].join("/")))
        } else {
            lab.copy_parent("RefDisk/base.vhdx")
        };
        if case == "move" {
            let (off, len) = locator_item(&lab.child);
            let mut bytes = std::fs::read(&lab.child).unwrap();
            add_user_item(&mut bytes, off + len, 16);
            std::fs::write(&lab.child, &bytes).unwrap();
        }
        if case == "dirty" {
            let mut built = child_builder(SIZE, 1 << 20, 512, 1).build();
            let bat = built.layout.bat_offset;
            built.make_dirty(&[bat], &[], &Default::default());
            std::fs::write(&lab.child, &built.bytes).unwrap();
        }
        let plan = reparent::plan(&lab.child, &opts(&np)).unwrap();
        assert_eq!(
            plan.notes
                .iter()
                .any(|n| n.contains("does not fit in its old place")),
            case == "move"
        );
        let old = std::fs::read(&lab.child).unwrap();
        let parent = || Disk::open(&lab.old_parent).unwrap();
        let look = |bytes: &[u8]| {
            let c = Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default()).unwrap();
            let v = vinfo_of(&c);
            let rel = value(&v, "relative_path");
            let sha = sha256_reader(ChainView::new(vec![c, parent()]));
            (rel, v.data_write_guid, sha)
        };
        let (old_rel, dwg, want_sha) = look(&old);
        assert_eq!(dwg, Uuid::from_u128(CHILD_DWG));
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(old.clone(), fp.clone());
        reparent::apply_to(&f, &MemJournal::new(fp.clone()), &plan).unwrap();
        let total = fp.count();
        let (new_rel, _, _) = look(&f.contents_synced());
        assert_eq!(new_rel, plan.relative_path);
        assert_ne!(new_rel, old_rel);
        assert!(total >= 10, "{total}");
        let (mut saw_old, mut saw_new) = (0, 0);
        for k in 1..=total {
            let fp = FaultPlan::new(Some(k));
            let f = FaultyFile::new(old.clone(), fp.clone());
            assert!(
                reparent::apply_to(&f, &MemJournal::new(fp), &plan).is_err(),
                "{case} k={k}"
            );
            for image in [f.contents_all_written(), f.contents_synced()] {
                let (rel, d, sha) = look(&image);
                assert!(rel == old_rel || rel == new_rel, "{case} k={k}: {rel:?}");
                if rel == old_rel {
                    saw_old += 1
                } else {
                    saw_new += 1
                }
                assert_eq!(d, dwg, "{case} k={k}: DataWriteGuid");
                assert_eq!(sha, want_sha, "{case} k={k}");
                // Replayed to disk, it opens clean with the same locator. (Beside the child, so
                // its relative path still means what it meant: repair drops relative paths that
                // lead nowhere when another locator leads to the parent.)
                let p = lab.child.with_file_name("img.avhdx");
                std::fs::write(&p, &image).unwrap();
                repair::repair(&p, &RepairOptions::default()).unwrap();
                let d = Disk::open(&p).unwrap();
                assert!(d.warnings().is_empty(), "{case} k={k}: {:?}", d.warnings());
                let v = vinfo_of(&d);
                assert!(v.log_guid.is_nil());
                assert_eq!(value(&v, "relative_path"), rel, "{case} k={k}");
            }
        }
        eprintln!("{case}: {total} operations; crash images: {saw_old} old, {saw_new} new");
        assert!(saw_old > 0 && saw_new > 0);
    }
}

/// The real Hyper-V checkpoint `differencing.avhdx` over a synthetic parent with the linked
/// DataWriteGuid (FORMAT.md B.7, ORACLES.md), moved to another folder.
#[test]
fn real_windows_child_differencing_avhdx() {
    let Some(real) = vhdkit_testkit::real_data_dir("reparent of differencing.avhdx") else {
        return;
    };
    for phys in [512u32, 4096] {
        let d = tempfile::tempdir().unwrap();
        let vm = d.path().join("Virtual Hard Disks");
        std::fs::create_dir_all(&vm).unwrap();
        let child =
            vhdkit_testkit::unpack_real(&real, "dissect.hypervisor/differencing.avhdx.gz", &vm);
        let vb = vinfo(&child);
        assert_eq!(
            key_names(&vb),
            [
                "parent_linkage",
                "absolute_win32_path",
                "relative_path",
                "volume_path",
                "parent_linkage2"
            ]
        );
        let old_rel = value(&vb, "relative_path").unwrap();
        let mut p = VhdxBuilder::new(Kind::Dynamic, 8 << 30, 2 << 20, 512);
        p.physical_sector_size = phys;
        p.data_write_guid = Uuid::parse_str("ff34003b-11ed-4cf8-a166-b2be05e20b80").unwrap();
        for b in [0u64, 5, 256, 923, 1018] {
            p.write(b << 21, &vec![u8::try_from(b % 251).unwrap() + 1; 2 << 20]);
        }
        let bytes = p.build().bytes;
        // Where Hyper-V looked for it, and where it is now.
        let old_parent = vm.join(old_rel.trim_start_matches(".\\"));
        std::fs::write(&old_parent, &bytes).unwrap();
        let child_disk = Disk::open(&child).unwrap();
        let o = ReparentOptions {
            windows_path: Some(r"D:\RefDisk\Generation 1 base.avhdx".into()),
            ..opts(&d.path().join("RefDisk/Generation 1 base.avhdx"))
        };
        std::fs::create_dir_all(d.path().join("RefDisk")).unwrap();
        std::fs::write(&o.new_parent, &bytes).unwrap();
        let sha_regions = |c: &Path| -> String {
            let v = Chain::open(c, &ChainOptions::default())
                .unwrap()
                .into_view();
            let mut all = Vec::new();
            for b in [0u64, 5, 256, 923, 1018, 2048, 4000] {
                let mut buf = vec![0u8; 2 << 20];
                v.read_exact_at(&mut buf, b << 21).unwrap();
                all.extend_from_slice(&buf);
            }
            vhdkit_testkit::sha256(&all)
        };
        let sha = sha_regions(&child);
        let before = std::fs::read(&child).unwrap();
        let plan = reparent_ok(&child, &o);
        assert_eq!(plan.identity, IdentityCheck::Primary);
        // The child is 512/4096: a 512/512 parent is accepted (only the logical size must
        // match, as Windows' Set-VHD -PhysicalSectorSizeBytes makes such chains) and the plan
        // says so.
        let says_physical = plan
            .notes
            .iter()
            .any(|n| n.contains("physical sector size differs: parent 512, child 4096"));
        assert_eq!(
            says_physical,
            child_disk.physical_sector_size() != phys,
            "{:?}",
            plan.notes
        );
        std::fs::remove_file(&old_parent).unwrap();
        assert_eq!(sha_regions(&child), sha);
        let va = vinfo(&child);
        assert_eq!(va.data_write_guid, vb.data_write_guid);
        assert_eq!(
            keys_of(&va),
            [
                ("parent_linkage".to_string(), value(&vb, "parent_linkage")),
                (
                    "absolute_win32_path".into(),
                    Some(r"D:\RefDisk\Generation 1 base.avhdx".into())
                ),
                (
                    "relative_path".into(),
                    Some(r"..\RefDisk\Generation 1 base.avhdx".into())
                ),
                ("parent_linkage2".into(), value(&vb, "parent_linkage2")),
            ]
        );
        // Only headers, log and metadata regions changed (from the file's own region table).
        let after = std::fs::read(&child).unwrap();
        let mut allowed: Vec<Range<usize>> = Vec::new();
        allowed.push(0x10000..0x30000);
        allowed.push(va.log.log_offset as usize..(va.log.log_offset + va.log.log_length) as usize);
        for r in &va.region_tables[0].entries {
            if r.name.as_deref() == Some("metadata") {
                allowed.push(r.offset as usize..(r.offset + r.length) as usize);
            }
        }
        assert_changes_within(&before, &after, &allowed, Length::Same);
        if let Some(r) = oracle::pyvhdi_set_parent(&child, &o.new_parent) {
            r.unwrap();
        }
        if let Some(r) = oracle::dissect_vhdx(&child, 4 << 20) {
            let (p, _, size) = r.unwrap();
            assert_eq!(size, 8 << 30);
            assert_eq!(
                std::fs::canonicalize(p).unwrap(),
                std::fs::canonicalize(&o.new_parent).unwrap()
            );
        }
    }
}

/// Bytes written by a reparent do not depend on the disk size.
#[test]
fn bytes_written_do_not_grow_with_the_disk() {
    let mut figures = Vec::new();
    for size in [64u64 << 20, 64 << 30] {
        let lab = lab_with(size, 2 << 20, 512, 5);
        let np = lab.copy_parent("RefDisk/base.vhdx");
        let plan = reparent::plan(&lab.child, &opts(&np)).unwrap();
        let report = reparent::apply(&plan).unwrap();
        let x = report.vhdx.clone().unwrap();
        figures.push((
            size,
            report.bytes_written,
            plan.txn().bytes_written(),
            x.header_bytes,
            x.log_bytes,
            x.metadata_bytes,
            report.writes,
            x.syncs,
        ));
        assert_eq!(
            chain_files(&lab.child, &ChainOptions::default()),
            [canon(&lab.child), canon(&np)]
        );
    }
    eprintln!(
        "FIGURES (virtual size, bytes written, metadata bytes changed, header, log, metadata \
         sectors, writes, flushes): {figures:?}"
    );
    assert_eq!(figures[0].1, figures[1].1);
    assert!(figures[0].1 <= 64 << 10, "{figures:?}");
}
