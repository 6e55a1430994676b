//! `reparent` on VHD children: round trips (contents through the new chain unchanged, only
//! metadata bytes changed, oracles accept the new parent), relocation of long paths, odd names,
//! every refusal, crash safety at every write, and the bytes written for small and huge disks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use vhdkit::reparent::{self, AbsoluteSource, IdentityCheck, LocatorMode, ReparentOptions};
use vhdkit::txn::fault::{FaultPlan, FaultyFile, MemJournal};
use vhdkit::txn::journal::{self, JournalStore, Recovery};
use vhdkit::vhd::locator::LocatorSlot;
use vhdkit::{Chain, ChainOptions, ChainView, Disk, Error, OpenOptions, PathMap};
use vhdkit_testkit::lab::{IdLab, Lab};
use vhdkit_testkit::snapshot::Snapshot;
use vhdkit_testkit::through::{assert_changes_within, canon, chain_files, chain_sha_with, Length};
use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::{sha256_reader, Rng};

const SIZE: u64 = 8 << 20;
const BS: u32 = 1 << 20;

/// A lab: `old/base.vhd` (the parent the child was made from), `vm/child.vhd` (its child,
/// linked by W2ku, W2ru, Wi2r and MacX), and the parent's unique id.
type VhdLab = IdLab;

fn write_data(b: &mut VhdBuilder, rng: &mut Rng, writes: usize, size: u64) {
    for _ in 0..writes {
        let s = rng.below(size / 512 - 8);
        let n = 1 + rng.below(7) as usize;
        let mut d = vec![0u8; n * 512];
        rng.fill(&mut d);
        b.write(s * 512, &d);
    }
}

fn lab_with(size: u64, seed: u64, extra: impl FnOnce(VhdBuilder) -> VhdBuilder) -> VhdLab {
    let mut rng = Rng::new(seed);
    let mut parent = VhdBuilder::dynamic(size).block_size(BS).timestamp(1234);
    write_data(&mut parent, &mut rng, 40, size);
    let old_abs = r"C:\Lab\old\base.vhd";
    let mut child = VhdBuilder::differencing(size, parent.id())
        .block_size(BS)
        .parent_name(old_abs)
        .locator(Locator::w2ku(old_abs).data_space(4096))
        .locator(Locator::w2ru(r"..\old\base.vhd").data_space(1))
        .locator(Locator::wi2r(r"..\old\base.vhd"))
        .locator(Locator::macx("file://localhost/Lab/old/base.vhd"));
    child = extra(child);
    // Sub-byte bitmap patterns: sectors 1, 3, 6 of block 0 (bitmap byte 0x52), and others.
    for s in [1u64, 3, 6, 9, 15, 16] {
        let mut d = vec![0u8; 512];
        rng.fill(&mut d);
        child.write(s * 512, &d);
    }
    write_data(&mut child, &mut rng, 20, size);
    VhdLab {
        lab: Lab::new(
            "old/base.vhd",
            parent.build().bytes,
            "vm/child.vhd",
            &child.build().bytes,
        ),
        child_id: child.id(),
        parent_id: parent.id(),
    }
}

fn lab() -> VhdLab {
    lab_with(SIZE, 1, |c| c)
}

fn opts(np: &Path) -> ReparentOptions {
    ReparentOptions {
        new_parent: np.to_path_buf(),
        ..ReparentOptions::default()
    }
}

fn slots(p: &Path) -> Vec<LocatorSlot> {
    match Disk::open(p).unwrap().info().details {
        vhdkit::FormatInfo::Vhd(v) => v.dynamic.unwrap().locators,
        _ => panic!("not vhd"),
    }
}

fn locator(p: &Path, kind: &str) -> Option<String> {
    Disk::open(p)
        .unwrap()
        .parent_locators()
        .into_iter()
        .find(|l| l.kind == kind)
        .and_then(|l| l.path)
}

/// Footer copies, header, and every locator data space before and after.
fn metadata_areas(before: &Path, after: &Path) -> Vec<Range<usize>> {
    let mut v = vec![0..512, 512..1536];
    for p in [before, after] {
        let len = std::fs::metadata(p).unwrap().len() as usize;
        v.push(len - 512..len);
        for s in slots(p) {
            let at = s.data_offset as usize;
            v.push(at..at + s.data_space_bytes.unwrap() as usize);
        }
    }
    v
}

fn reparent_ok(child: &Path, o: &ReparentOptions) -> reparent::ReparentPlan {
    let plan = reparent::plan(child, o).unwrap();
    let report = reparent::apply(&plan).unwrap();
    assert_eq!(report.recovery, Recovery::Clean);
    assert_eq!(report.bytes_written, plan.bytes_written());
    assert!(!journal::FileJournal::for_disk(child).path().exists());
    plan
}

#[test]
fn round_trip_to_a_copy_elsewhere() {
    let lab = lab();
    let before_sha = chain_sha_with(&lab.child, &ChainOptions::default());
    let before = std::fs::read(&lab.child).unwrap();
    let np = lab.copy_parent("RefDisk/base.vhd");
    let plan = reparent_ok(&lab.child, &opts(&np));
    assert_eq!(plan.identity, IdentityCheck::Primary);
    assert!(!plan.linkage_rewritten);
    assert_eq!(plan.relative_path.as_deref(), Some(r"..\RefDisk\base.vhd"));
    let abs = plan.absolute_path.clone().unwrap();
    if cfg!(unix) {
        assert_eq!(abs.source, AbsoluteSource::LocalPosix);
        assert!(plan.warnings.iter().any(|w| w.contains("POSIX")));
    }
    // The old parent is gone: only the new locators can find the parent.
    std::fs::remove_file(&lab.old_parent).unwrap();
    let chain = Chain::open(&lab.child, &ChainOptions::default()).unwrap();
    let link = chain.report().links[0].parent.clone().unwrap();
    assert_eq!(
        link.via,
        Some(vhdkit::Via::Locator(vhdkit::LocatorKind::W2ru))
    );
    assert_eq!(
        std::fs::canonicalize(link.path.unwrap()).unwrap(),
        std::fs::canonicalize(&np).unwrap()
    );
    assert_eq!(sha256_reader(chain.into_view()), before_sha);
    // Locators: W2ku + W2ru only, stale ones cleared, parent name = absolute path.
    let s = slots(&lab.child);
    let codes: Vec<&str> = s.iter().map(|s| s.code.as_str()).collect();
    assert_eq!(codes, ["W2ku", "W2ru"]);
    assert_eq!(locator(&lab.child, "W2ku").unwrap(), abs.value);
    assert_eq!(locator(&lab.child, "parent_name").unwrap(), abs.value);
    // The child's own identity and the linkage are unchanged.
    let d = Disk::open(&lab.child).unwrap();
    assert!(d.warnings().is_empty(), "{:?}", d.warnings());
    assert_eq!(d.parent_linkage().unwrap().id.as_bytes(), &lab.parent_id);
    let after = std::fs::read(&lab.child).unwrap();
    assert_eq!(after.len(), before.len(), "no relocation expected");
    assert_eq!(&after[68..84], &before[68..84]);
    assert_changes_within(
        &before,
        &after,
        &metadata_areas(&lab.child, &lab.child)
            .into_iter()
            .chain(old_slot_areas(&before))
            .collect::<Vec<_>>(),
        Length::Same,
    );
    // Stale locator data (Wi2r, MacX) is zeroed.
    for (at, len) in old_slot_data(&before, &["Wi2r", "MacX"]) {
        assert!(after[at..at + len].iter().all(|&b| b == 0));
    }
    oracles(&lab.child, &np, &abs.value);
}

/// (offset, length) of the data of the slots with these codes in a file's bytes.
fn old_slot_data(bytes: &[u8], codes: &[&str]) -> Vec<(usize, usize)> {
    let d = Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default()).unwrap();
    match d.info().details {
        vhdkit::FormatInfo::Vhd(v) => v
            .dynamic
            .unwrap()
            .locators
            .iter()
            .filter(|s| codes.contains(&s.code.as_str()))
            .map(|s| (s.data_offset as usize, s.data_length as usize))
            .collect(),
        _ => panic!(),
    }
}

/// The reserved data space of every locator of a file's bytes.
fn old_slot_areas(bytes: &[u8]) -> Vec<Range<usize>> {
    let d = Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default()).unwrap();
    match d.info().details {
        vhdkit::FormatInfo::Vhd(v) => v
            .dynamic
            .unwrap()
            .locators
            .iter()
            .map(|s| {
                let at = s.data_offset as usize;
                at..at + s.data_space_bytes.unwrap() as usize
            })
            .collect(),
        _ => panic!(),
    }
}

/// libvhdi accepts the new parent and shows the new parent name.
fn oracles(child: &Path, parent: &Path, name: &str) {
    let Some(r) = vhdkit_testkit::oracle::pyvhdi_set_parent(child, parent) else {
        return;
    };
    assert_eq!(r, Ok(()), "pyvhdi set_parent");
    if !vhdkit_testkit::have_tool("vhdiinfo", "vhdiinfo parent name") {
        return;
    }
    let o = Command::new("vhdiinfo").arg(child).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("Parent filename"))
        .unwrap_or_else(|| panic!("no parent filename in {out}"));
    assert!(line.trim_end().ends_with(name), "{line} vs {name}");
}

#[test]
fn relocation_of_long_paths_keeps_data_in_place() {
    let lab = lab();
    let before_sha = chain_sha_with(&lab.child, &ChainOptions::default());
    let before = std::fs::read(&lab.child).unwrap();
    let long = format!("{}/base.vhd", ["a-rather-long-folder-name"; 14].join("/"));
    let np = lab.copy_parent(&format!("vm/{long}"));
    let plan = reparent_ok(&lab.child, &opts(&np));
    let rel = plan.relative_path.clone().unwrap();
    assert!(
        rel.len() * 2 > 512,
        "the test needs a W2ru longer than its space"
    );
    assert!(rel.starts_with(r".\a-rather-long"));
    assert!(
        plan.notes.iter().any(|n| n.contains("relocated")),
        "{:?}",
        plan.notes
    );
    let after = std::fs::read(&lab.child).unwrap();
    assert!(after.len() > before.len());
    let old_footer = before.len() - 512;
    // Everything before the old footer is unchanged except header, front footer and in-place
    // locator spaces; the old W2ru data region itself is unchanged.
    let w2ru_old = old_slot_data(&before, &["W2ru"])[0];
    assert_eq!(
        &after[w2ru_old.0..w2ru_old.0 + w2ru_old.1],
        &before[w2ru_old.0..w2ru_old.0 + w2ru_old.1]
    );
    let mut allowed = vec![0..512, 512..1536, old_footer..after.len()];
    allowed.extend(
        old_slot_areas(&before)
            .into_iter()
            .filter(|r| r.start != w2ru_old.0),
    );
    assert_changes_within(&before, &after, &allowed, Length::MayChange);
    // The tail: the relocated W2ru data, then the footer.
    let s = slots(&lab.child);
    let w2ru = s.iter().find(|s| s.code == "W2ru").unwrap();
    assert_eq!(w2ru.data_offset as usize, old_footer);
    assert_eq!(w2ru.path.as_deref(), Some(rel.as_str()));
    assert_eq!(
        w2ru.data_offset as usize + w2ru.data_space_bytes.unwrap() as usize,
        after.len() - 512
    );
    assert_eq!(&after[after.len() - 512..], &before[old_footer..]);
    assert_eq!(&after[..512], &before[..512]);
    std::fs::remove_file(&lab.old_parent).unwrap();
    assert_eq!(
        chain_sha_with(&lab.child, &ChainOptions::default()),
        before_sha
    );
    // Repointing again to a short path reuses the relocated space in place.
    let np2 = lab.copy_parent("vm/b.vhd");
    let p2 = reparent_ok(&lab.child, &opts(&np2));
    assert_eq!(p2.txn().new_len, p2.txn().old_len);
    assert_eq!(locator(&lab.child, "W2ru").as_deref(), Some(r".\b.vhd"));
    assert_eq!(
        chain_sha_with(&lab.child, &ChainOptions::default()),
        before_sha
    );
}

#[test]
fn odd_names_round_trip() {
    let lab = lab();
    let sha = chain_sha_with(&lab.child, &ChainOptions::default());
    let np = lab.copy_parent("Réf Disks/Basis Ünïcødé 日本 😀.vhd");
    let plan = reparent_ok(&lab.child, &opts(&np));
    assert_eq!(
        locator(&lab.child, "W2ru").as_deref(),
        Some(r"..\Réf Disks\Basis Ünïcødé 日本 😀.vhd")
    );
    assert_eq!(
        locator(&lab.child, "W2ku"),
        plan.absolute_path.map(|a| a.value)
    );
    std::fs::remove_file(&lab.old_parent).unwrap();
    assert_eq!(chain_sha_with(&lab.child, &ChainOptions::default()), sha);
    oracles(&lab.child, &np, "Basis Ünïcødé 日本 😀.vhd");

    // UNC --windows-path with spaces, absolute-only.
    let unc = r"\\file server\lab share\Ref Disks\base copy.vhd";
    let np2 = lab.copy_parent("Ref Disks/base copy.vhd");
    let o = ReparentOptions {
        windows_path: Some(unc.into()),
        mode: LocatorMode::AbsoluteOnly,
        ..opts(&np2)
    };
    let plan = reparent_ok(&lab.child, &o);
    assert_eq!(plan.absolute_path.unwrap().source, AbsoluteSource::Given);
    assert_eq!(locator(&lab.child, "W2ku").as_deref(), Some(unc));
    assert_eq!(locator(&lab.child, "W2ru"), None);
    assert_eq!(locator(&lab.child, "parent_name").as_deref(), Some(unc));
    // A UNC path is found through a map.
    let o = ChainOptions::default().path_map(
        PathMap::parse(&format!(
            r"\\file server\lab share={}",
            lab.dir.path().display()
        ))
        .unwrap(),
    );
    assert_eq!(chain_sha_with(&lab.child, &o), sha);

    // A path too long for the parent name: the name holds the file name only.
    let deep = format!("{}/p.vhd", vec!["d".repeat(60); 6].join("/"));
    let np3 = lab.copy_parent(&deep);
    let o = ReparentOptions {
        mode: LocatorMode::AbsoluteOnly,
        windows_path: Some(format!(r"C:\{}", deep.replace('/', "\\"))),
        ..opts(&np3)
    };
    let plan = reparent_ok(&lab.child, &o);
    assert_eq!(plan.parent_name, "p.vhd");
    assert_eq!(
        locator(&lab.child, "W2ku").unwrap(),
        format!(r"C:\{}", deep.replace('/', "\\"))
    );
}

#[test]
fn modes_and_map_in_reverse() {
    let lab = lab();
    let np = lab.copy_parent("srv/lab/Ref/base.vhd");
    let map = PathMap::parse(&format!(r"C:\Lab={}", lab.path("srv/lab").display())).unwrap();
    let o = ReparentOptions {
        mode: LocatorMode::RelativeOnly,
        chain: ChainOptions::default().path_map(map.clone()),
        ..opts(&np)
    };
    let plan = reparent_ok(&lab.child, &o);
    assert!(plan.absolute_path.is_none());
    // Not the bare name, which vhd-lib would look for in the child's folder (issue 17).
    assert_eq!(plan.parent_name, "../srv/lab/Ref/base.vhd");
    let style = plan.parent_name_style.unwrap();
    assert!(!style.kept && style.why.unwrap().contains("relative only"));
    let codes: Vec<String> = slots(&lab.child).into_iter().map(|s| s.code).collect();
    assert_eq!(codes, ["W2ru"]);
    let o = ReparentOptions {
        chain: ChainOptions::default().path_map(map),
        ..opts(&np)
    };
    let plan = reparent_ok(&lab.child, &o);
    let abs = plan.absolute_path.unwrap();
    assert_eq!(abs.value, r"C:\Lab\Ref\base.vhd");
    assert!(matches!(abs.source, AbsoluteSource::Map { .. }));
    // The W2ku slot was cleared by relative-only, so it comes back in a new (relocated) space.
    assert_eq!(
        locator(&lab.child, "W2ku").as_deref(),
        Some(r"C:\Lab\Ref\base.vhd")
    );
    assert_eq!(
        chain_files(&lab.child, &ChainOptions::default()),
        [canon(&lab.child), canon(&np)]
    );
}

fn assert_refused(child: &Path, o: &ReparentOptions, needle: &str) {
    // The whole lab (the child's folder's parent): child, journal, every parent copy.
    let before = Snapshot::tree(child.parent().unwrap().parent().unwrap());
    match reparent::plan(child, o) {
        Err(e @ (Error::Refused { .. } | Error::ParentMismatch { .. })) => {
            let s = e.to_string();
            assert!(s.contains(needle), "{s:?} should contain {needle:?}");
            assert_eq!(s.lines().count(), 1, "{s}");
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(p) => panic!("expected a refusal, got a plan {:?}", p.identity),
    }
    before.assert_unchanged(needle);
}

#[test]
fn refusals_touch_nothing() {
    let lab = lab();
    // Same data, another identity.
    let mut other = VhdBuilder::dynamic(SIZE).block_size(BS);
    let mut rng = Rng::new(1);
    write_data(&mut other, &mut rng, 40, SIZE);
    let impostor = lab.path("imp/base.vhd");
    std::fs::create_dir_all(impostor.parent().unwrap()).unwrap();
    other.build().write_to(&impostor);
    assert_refused(&lab.child, &opts(&impostor), "identity mismatch");
    // Wrong size.
    let small = lab.path("small.vhd");
    VhdBuilder::dynamic(SIZE / 2)
        .unique_id(lab.parent_id)
        .build()
        .write_to(&small);
    assert_refused(&lab.child, &opts(&small), "virtual size mismatch");
    // Not a disk / not the same format.
    let junk = lab.path("junk.vhd");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    assert_refused(&lab.child, &opts(&junk), "cannot be opened");
    // The child itself, and a descendant of it.
    assert_refused(&lab.child, &opts(&lab.child), "the child itself");
    let c = Disk::open(&lab.child).unwrap();
    let grandchild = lab.path("vm/grandchild.vhd");
    VhdBuilder::differencing(SIZE, *c.identity().as_bytes())
        .block_size(BS)
        .locator(Locator::w2ru(r".\child.vhd"))
        .build()
        .write_to(&grandchild);
    assert_refused(&lab.child, &opts(&grandchild), "descendant");
    // A new parent whose own parent is missing.
    let orphan = lab.path("orphan/base.vhd");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    VhdBuilder::differencing(SIZE, [0x42; 16])
        .unique_id(lab.parent_id)
        .block_size(BS)
        .locator(Locator::w2ru(r".\missing.vhd"))
        .build()
        .write_to(&orphan);
    assert_refused(&lab.child, &opts(&orphan), "own chain is broken");
    // --verify-content against the old parent: different contents are refused.
    let o = ReparentOptions {
        verify_content: Some(lab.old_parent.clone()),
        ..opts(&impostor)
    };
    let mut other2 = VhdBuilder::dynamic(SIZE).block_size(BS);
    other2.write(SIZE - 512, &[1u8; 512]);
    let differs = lab.path("differs/base.vhd");
    std::fs::create_dir_all(differs.parent().unwrap()).unwrap();
    other2.build().write_to(&differs);
    assert_refused(
        &lab.child,
        &ReparentOptions {
            verify_content: Some(lab.old_parent.clone()),
            ..opts(&differs)
        },
        "contents differ",
    );
    // Not a differencing disk.
    assert_refused(&lab.old_parent, &opts(&impostor), "not a differencing disk");
    // A foreign journal beside the child.
    let j = journal::FileJournal::for_disk(&lab.child);
    std::fs::write(j.path(), b"not a journal").unwrap();
    assert_refused(&lab.child, &opts(&lab.old_parent), "does not match");
    std::fs::remove_file(j.path()).unwrap();
    // The same data under another identity is accepted with --verify-content ...
    let sha = chain_sha_with(&lab.child, &ChainOptions::default());
    let plan = reparent_ok(&lab.child, &o);
    assert!(matches!(
        plan.identity,
        IdentityCheck::ContentVerified { .. }
    ));
    assert!(plan.linkage_rewritten);
    let d = Disk::open(&lab.child).unwrap();
    assert_eq!(
        d.parent_linkage().unwrap().id,
        uuid::Uuid::from_bytes(other.id())
    );
    assert_eq!(d.parent_linkage().unwrap().timestamp, Some(0));
    assert_eq!(chain_sha_with(&lab.child, &ChainOptions::default()), sha);
    // ... and back to the original with --ignore-id-mismatch (loud warning).
    let plan = reparent_ok(
        &lab.child,
        &ReparentOptions {
            ignore_id_mismatch: true,
            ..opts(&lab.old_parent)
        },
    );
    assert!(matches!(
        plan.identity,
        IdentityCheck::MismatchIgnored { .. }
    ));
    assert!(plan
        .warnings
        .iter()
        .any(|w| w.contains("IDENTITY MISMATCH IGNORED")));
    assert_eq!(chain_sha_with(&lab.child, &ChainOptions::default()), sha);
}

#[test]
fn broken_vhdx_stub_is_an_error_not_a_plan() {
    let d = tempfile::tempdir().unwrap();
    let mut b = vec![0u8; 1 << 20];
    b[..8].copy_from_slice(b"vhdxfile");
    let p = d.path().join("c.vhdx");
    std::fs::write(&p, &b).unwrap();
    // The VHDX reader rejects this stub (no valid header): a corruption error, never a plan.
    match reparent::plan(&p, &opts(&p)) {
        Err(e) => assert!(e.is_corruption(), "{e}"),
        Ok(_) => panic!("must be an error"),
    }
}

/// Crash at every mutating operation, for a plain and a relocating reparent.
#[test]
fn crash_at_every_operation_gives_old_or_new() {
    for relocate in [false, true] {
        let lab = lab();
        let np = if relocate {
            lab.copy_parent(&format!(
                "vm/{}/base.vhd",
                ["long-folder-name-for-relocation"; 12].join("/")
            ))
        } else {
            lab.copy_parent("RefDisk/base.vhd")
        };
        let plan = reparent::plan(&lab.child, &opts(&np)).unwrap();
        assert_eq!(plan.txn().new_len > plan.txn().old_len, relocate);
        let old = std::fs::read(&lab.child).unwrap();
        let parent_disk = || Disk::open(&lab.old_parent).unwrap();
        let contents = |bytes: &[u8]| {
            let c = Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default()).unwrap();
            assert!(c.warnings().is_empty(), "{:?}", c.warnings());
            sha256_reader(ChainView::new(vec![c, parent_disk()]))
        };
        let w2ru = |bytes: &[u8]| {
            Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default())
                .unwrap()
                .parent_locators()
                .into_iter()
                .find(|l| l.kind == "W2ru")
                .and_then(|l| l.path)
        };
        let want_sha = contents(&old);
        // The clean run, and how many operations it takes.
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(old.clone(), fp.clone());
        reparent::apply_to(&f, &MemJournal::new(fp.clone()), &plan).unwrap();
        let new = f.contents_synced();
        let total = fp.count();
        assert!(total >= 5, "{total}");
        let (old_w2ru, new_w2ru) = (w2ru(&old), w2ru(&new));
        assert_ne!(old_w2ru, new_w2ru);
        assert_eq!(new_w2ru, plan.relative_path);
        for k in 1..=total {
            let fp = FaultPlan::new(Some(k));
            let f = FaultyFile::new(old.clone(), fp.clone());
            let j = MemJournal::new(fp.clone());
            assert!(reparent::apply_to(&f, &j, &plan).is_err(), "k={k}");
            for image in [f.contents_all_written(), f.contents_synced()] {
                let fp2 = FaultPlan::new(None);
                let f2 = FaultyFile::new(image, fp2.clone());
                let j2 = MemJournal::new(fp2);
                if let Some(b) = j.load().unwrap() {
                    j2.store(&b).unwrap();
                }
                let r = journal::recover(&f2, &j2).unwrap();
                assert!(!matches!(r, Recovery::Foreign { .. }), "k={k}: {r:?}");
                let got = f2.contents_all_written();
                assert!(
                    got == old || got == new,
                    "k={k}: neither old nor new ({r:?})"
                );
                let l = w2ru(&got);
                assert!(l == old_w2ru || l == new_w2ru, "k={k}");
                assert_eq!(contents(&got), want_sha, "k={k}");
            }
        }
    }
}

/// A crash image with its journal on disk: a read-only open shows the finished change without
/// writing; `repair` finishes it; a journal that no longer matches is ignored.
#[test]
fn pending_journal_overlay_and_repair() {
    let lab = lab();
    let np = lab.copy_parent("RefDisk/base.vhd");
    let plan = reparent::plan(&lab.child, &opts(&np)).unwrap();
    let old = std::fs::read(&lab.child).unwrap();
    // Crash after the journal and the first write.
    let fp = FaultPlan::new(Some(3));
    let f = FaultyFile::new(old.clone(), fp.clone());
    let j = MemJournal::new(fp);
    assert!(reparent::apply_to(&f, &j, &plan).is_err());
    let image = f.contents_all_written();
    assert_ne!(image, old, "the crash should leave a half-written file");
    std::fs::write(&lab.child, &image).unwrap();
    let jp = journal::FileJournal::for_disk(&lab.child);
    std::fs::write(jp.path(), j.load().unwrap().unwrap()).unwrap();

    let d = Disk::open(&lab.child).unwrap();
    assert!(
        d.warnings()
            .iter()
            .any(|w| w.contains("interrupted vhdkit change is pending")),
        "{:?}",
        d.warnings()
    );
    assert_eq!(
        d.parent_locators()
            .into_iter()
            .find(|l| l.kind == "W2ru")
            .and_then(|l| l.path),
        plan.relative_path
    );
    assert_eq!(
        std::fs::read(&lab.child).unwrap(),
        image,
        "read-only open wrote"
    );
    // A dry-run repair reports; a repair finishes.
    let r = vhdkit::repair::repair(
        &lab.child,
        &vhdkit::repair::RepairOptions::default().dry_run(true),
    )
    .unwrap();
    assert!(matches!(
        r.journal,
        vhdkit::repair::JournalOutcome::WouldFinish { .. }
    ));
    assert_eq!(std::fs::read(&lab.child).unwrap(), image);
    let r = vhdkit::repair::repair(&lab.child, &vhdkit::repair::RepairOptions::default()).unwrap();
    assert!(matches!(
        r.journal,
        vhdkit::repair::JournalOutcome::Finished { .. }
    ));
    assert!(!jp.path().exists());
    let d = Disk::open(&lab.child).unwrap();
    assert!(d.warnings().is_empty(), "{:?}", d.warnings());

    // A journal that does not match the file is ignored and never applied.
    std::fs::write(&lab.child, &old).unwrap();
    let mut tampered = old.clone();
    tampered[600] ^= 0xFF; // inside the header: matches neither old nor new
    let fp = FaultPlan::new(Some(3));
    let f = FaultyFile::new(old.clone(), fp.clone());
    let j = MemJournal::new(fp);
    assert!(
        reparent::apply_to(&f, &j, &plan).is_err(),
        "the fault at 3 must stop it"
    );
    std::fs::write(jp.path(), j.load().unwrap().unwrap()).unwrap();
    std::fs::write(&lab.child, &tampered).unwrap();
    match Disk::open(&lab.child) {
        Ok(d) => assert!(d
            .warnings()
            .iter()
            .any(|w| w.contains("ignored the vhdkit journal"))),
        Err(e) => assert!(e.is_corruption(), "{e}"), // the tampered header fails its checksum
    }
    let r = vhdkit::repair::repair(&lab.child, &vhdkit::repair::RepairOptions::default()).unwrap();
    assert!(r.needs_attention());
    assert_eq!(std::fs::read(&lab.child).unwrap(), tampered);
    assert!(jp.path().exists());
}

/// The real Windows child `fat-differential.vhd` with a synthetic parent (ORACLES.md recipe).
#[test]
fn real_windows_child_fat_differential() {
    let Some(real) = vhdkit_testkit::real_data_dir("reparent of fat-differential.vhd") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let child = vhdkit_testkit::unpack_real(&real, "dfvfs/fat-differential.vhd.gz", d.path());
    let id = uuid::Uuid::parse_str("5fa21a55-f394-aa4d-9958-1951a67d5540").unwrap();
    let mut p = VhdBuilder::fixed(4 << 20).unique_id(*id.as_bytes());
    p.write(0, &vec![0xcd; 4 << 20]);
    let parent = p.build();
    parent.write_to(&d.path().join("fat-parent.vhd"));
    let sha = chain_sha_with(&child, &ChainOptions::default());
    let before = std::fs::read(&child).unwrap();
    std::fs::create_dir_all(d.path().join("RefDisk")).unwrap();
    let np = d.path().join("RefDisk/fat-parent.vhd");
    std::fs::rename(d.path().join("fat-parent.vhd"), &np).unwrap();
    assert!(Chain::open(&child, &ChainOptions::default()).is_err());
    let o = ReparentOptions {
        windows_path: Some(r"C:\Projects\RefDisk\fat-parent.vhd".into()),
        ..opts(&np)
    };
    let plan = reparent_ok(&child, &o);
    assert_eq!(plan.txn().new_len, plan.txn().old_len);
    assert_eq!(
        plan.relative_path.as_deref(),
        Some(r".\RefDisk\fat-parent.vhd")
    );
    let s = slots(&child);
    let sp: Vec<(&str, u32, u64)> = s
        .iter()
        .map(|s| (s.code.as_str(), s.data_space_raw, s.data_offset))
        .collect();
    assert_eq!(sp, [("W2ku", 4096, 0x1000), ("W2ru", 65536, 0x3000)]);
    assert_eq!(chain_sha_with(&child, &ChainOptions::default()), sha);
    let after = std::fs::read(&child).unwrap();
    assert_changes_within(
        &before,
        &after,
        &[
            0..512,
            512..1536,
            0x1000..0x2000,
            0x3000..0x13000,
            after.len() - 512..after.len(),
        ],
        Length::Same,
    );
    oracles(&child, &np, r"C:\Projects\RefDisk\fat-parent.vhd");
}

/// Bytes written by a reparent do not depend on the disk size.
#[test]
fn bytes_written_do_not_grow_with_the_disk() {
    let mut figures = Vec::new();
    for size in [64u64 << 20, 64 << 30] {
        let lab = lab_with(size, 5, |c| c.block_size(2 << 20));
        let np = lab.copy_parent("RefDisk/base.vhd");
        let plan = reparent::plan(&lab.child, &opts(&np)).unwrap();
        let report = reparent::apply(&plan).unwrap();
        figures.push((
            size,
            report.bytes_written,
            report.writes,
            report.journal_bytes,
        ));
        assert_eq!(
            chain_files(&lab.child, &ChainOptions::default()),
            [canon(&lab.child), canon(&np)]
        );
    }
    eprintln!("FIGURES (virtual size, bytes written, ranges, journal bytes): {figures:?}");
    assert_eq!(figures[0].1, figures[1].1);
    assert_eq!(figures[0].3, figures[1].3);
    assert!(figures[0].1 <= 8192, "{figures:?}");
}

/// A batch of five children (one relocating), crashed at every operation: after each, every
/// child recovers through its own journal (from any mix of its durable and fully written
/// images and of its journal's) to exactly its old or its new bytes, virtual contents unchanged.
#[test]
fn batch_crash_at_every_operation_gives_old_or_new_per_child() {
    use vhdkit::txn::fault::FaultBarrier;
    let labs: Vec<VhdLab> = (0..5).map(|s| lab_with(SIZE, 10 + s, |c| c)).collect();
    let plans: Vec<reparent::ReparentPlan> = labs
        .iter()
        .enumerate()
        .map(|(i, lab)| {
            let np = if i == 2 {
                lab.copy_parent(&format!(
                    "vm/{}/base.vhd",
                    ["long-folder-name-for-relocation"; 12].join("/")
                ))
            } else {
                lab.copy_parent("RefDisk/base.vhd")
            };
            reparent::plan(&lab.child, &opts(&np)).unwrap()
        })
        .collect();
    assert!(plans[2].txn().new_len > plans[2].txn().old_len);
    let olds: Vec<Vec<u8>> = labs
        .iter()
        .map(|l| std::fs::read(&l.child).unwrap())
        .collect();
    let contents = |lab: &Lab, bytes: &[u8]| {
        let c = Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default()).unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        sha256_reader(ChainView::new(vec![
            c,
            Disk::open(&lab.old_parent).unwrap(),
        ]))
    };
    let want: Vec<String> = labs
        .iter()
        .zip(&olds)
        .map(|(l, o)| contents(l, o))
        .collect();
    let run = |fail_at: Option<usize>| {
        let fp = FaultPlan::new(fail_at);
        let files: Vec<FaultyFile> = olds
            .iter()
            .map(|o| FaultyFile::new(o.clone(), fp.clone()))
            .collect();
        let journals: Vec<MemJournal> = olds.iter().map(|_| MemJournal::new(fp.clone())).collect();
        let barrier = FaultBarrier::new(fp.clone(), files.clone(), journals.clone());
        let items: Vec<reparent::BatchTarget<'_>> = files
            .iter()
            .zip(&journals)
            .zip(&plans)
            .map(|((f, j), p)| {
                (
                    f as &dyn vhdkit::txn::Sink,
                    j as &(dyn JournalStore + Sync),
                    p,
                )
            })
            .collect();
        let r = reparent::apply_batch_to(&items, &barrier);
        (fp.count(), files, journals, r)
    };
    let (total, files, _, r) = run(None);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    let news: Vec<Vec<u8>> = files.iter().map(|f| f.contents_synced()).collect();
    for (o, n) in olds.iter().zip(&news) {
        assert_ne!(o, n);
    }
    // Five children: their journals (stage, publish, discard), their writes, four barriers.
    let writes: usize = plans
        .iter()
        .map(|p| p.txn().writes.len() + usize::from(p.txn().new_len != p.txn().old_len))
        .sum();
    assert_eq!(total, 5 * 3 + writes + 4);
    for k in 1..=total {
        let (_, files, journals, r) = run(Some(k));
        assert!(r.iter().any(|r| r.is_err()), "k={k}");
        for (n, (f, j)) in files.iter().zip(&journals).enumerate() {
            assert!(!j.published_unsynced(), "k={k}");
            for image in [f.contents_all_written(), f.contents_synced()] {
                for jb in [j.load().unwrap(), j.load_synced().unwrap()] {
                    let fp2 = FaultPlan::new(None);
                    let f2 = FaultyFile::new(image.clone(), fp2.clone());
                    let j2 = MemJournal::new(fp2);
                    if let Some(b) = &jb {
                        j2.store(b).unwrap();
                    }
                    let r = journal::recover(&f2, &j2).unwrap();
                    assert!(!matches!(r, Recovery::Foreign { .. }), "k={k} #{n}: {r:?}");
                    let got = f2.contents_all_written();
                    assert!(
                        got == olds[n] || got == news[n],
                        "k={k} #{n}: neither old nor new ({r:?})"
                    );
                    assert_eq!(contents(&labs[n], &got), want[n], "k={k} #{n}");
                    assert_eq!(j2.load().unwrap(), None);
                }
            }
        }
    }
}

/// The real batch: five children on disk repointed at once; every chain opens through its new
/// parent with the same contents, and no journal is left.
#[test]
fn apply_batch_on_files() {
    let labs: Vec<VhdLab> = (0..5).map(|s| lab_with(SIZE, 20 + s, |c| c)).collect();
    let nps: Vec<PathBuf> = labs
        .iter()
        .map(|l| l.copy_parent("RefDisk/base.vhd"))
        .collect();
    let before: Vec<String> = labs
        .iter()
        .map(|l| chain_sha_with(&l.child, &ChainOptions::default()))
        .collect();
    let plans: Vec<reparent::ReparentPlan> = labs
        .iter()
        .zip(&nps)
        .map(|(l, np)| reparent::plan(&l.child, &opts(np)).unwrap())
        .collect();
    let refs: Vec<&reparent::ReparentPlan> = plans.iter().collect();
    let r = reparent::apply_batch(&refs);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    for ((l, np), sha) in labs.iter().zip(&nps).zip(&before) {
        assert!(!journal::FileJournal::for_disk(&l.child).path().exists());
        assert!(!journal::FileJournal::for_disk(&l.child).tmp_path().exists());
        std::fs::remove_file(&l.old_parent).unwrap();
        let c = Chain::open(&l.child, &ChainOptions::default()).unwrap();
        assert_eq!(
            std::fs::canonicalize(c.disks()[1].path().unwrap()).unwrap(),
            std::fs::canonicalize(np).unwrap()
        );
        assert_eq!(&chain_sha_with(&l.child, &ChainOptions::default()), sha);
    }
}
