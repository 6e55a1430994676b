//! Issue 17: differencing disks made by other writers (blktap old and new, VirtualBox 2.x and
//! 7, Xen Orchestra, DiscUtils, Windows over Disk2vhd; see `vhdkit_testkit::foreign`) read
//! byte-exact, give no false finding, and keep each writer's conventions through a reparent:
//! afterwards the writer's own lookup still finds the parent. Also the one sector-size rule for
//! VHDX: a physical sector size that differs is accepted everywhere and reported as info.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use vhdkit::check::{check_file, CheckOptions, Severity};
use vhdkit::reparent::{self, ReparentOptions};
use vhdkit::vhd::name_style::NameStyle;
use vhdkit::{Chain, ChainOptions, Disk};
use vhdkit::{LocatorKind, Via};
use vhdkit_testkit::foreign::{self, Writer};
use vhdkit_testkit::vhd::VhdBuilder;

const SIZE: u64 = 8 << 20;
const PARENT_ID: [u8; 16] = *b"foreign-parent!!";

struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    parent: PathBuf,
    child: PathBuf,
    expected: Vec<u8>,
}

/// Where each writer keeps the parent: beside the child, or in a sibling folder.
fn parent_beside_child(w: Writer) -> bool {
    matches!(
        w,
        Writer::BlktapOld | Writer::BlktapNew | Writer::VirtualBox2 | Writer::DiscUtils
    )
}

fn lab(w: Writer) -> Lab {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let vm = root.join("vm");
    let ref_dir = if parent_beside_child(w) {
        vm.clone()
    } else {
        root.join("ref")
    };
    std::fs::create_dir_all(&vm).unwrap();
    std::fs::create_dir_all(&ref_dir).unwrap();
    let parent = ref_dir.join("base.vhd");
    let mut p = foreign::parent(w, SIZE, PARENT_ID);
    p.write(0, &[0x11; 4096]);
    p.write(2 << 20, &[0x22; 8192]);
    p.write(5 << 20, &[0x33; 512]);
    p.build().write_to(&parent);
    let child = vm.join("child.vhd");
    let mut c = foreign::child(w, &child, &parent, PARENT_ID, SIZE);
    c.write(1024, &[0x44; 1024]);
    c.write((2 << 20) + 4096, &[0x55; 512]);
    c.write(7 << 20, &[0x66; 4096]);
    c.build().write_to(&child);
    let mut expected = p.model();
    for s in c.written() {
        let at = usize::try_from(s * 512).unwrap();
        expected[at..at + 512].copy_from_slice(&c.model()[at..at + 512]);
    }
    Lab {
        _tmp: tmp,
        root,
        parent,
        child,
        expected,
    }
}

fn contents(child: &Path) -> Vec<u8> {
    let view = Chain::open(child, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", child.display()))
        .into_view();
    let mut out = vec![0u8; usize::try_from(SIZE).unwrap()];
    view.read_exact_at(&mut out, 0).unwrap();
    out
}

/// Every warning and error of `check --chain` on `child`.
fn problems(child: &Path) -> Vec<String> {
    let mut o = CheckOptions::default();
    o.chain = true;
    check_file(child, &o)
        .unwrap()
        .findings
        .into_iter()
        .filter(|f| f.severity >= Severity::Warning)
        .map(|f| format!("{}: {}", f.code, f.message))
        .collect()
}

/// The writer's own lookup, where the writer reads its files back through one.
fn writer_finds(w: Writer, child: &Path) -> Option<Option<PathBuf>> {
    match w {
        Writer::BlktapOld | Writer::BlktapNew => Some(foreign::blktap_find_parent(child)),
        Writer::XenOrchestra => Some(foreign::xo_find_parent(child)),
        _ => None,
    }
}

fn expected_problems(w: Writer) -> Vec<&'static str> {
    if w.little_endian_name() {
        vec!["vhd.header.parent_name_little_endian"]
    } else {
        Vec::new()
    }
}

#[test]
fn every_writer_reads_byte_exact_without_false_findings() {
    for w in Writer::ALL {
        let lab = lab(w);
        assert!(
            contents(&lab.child) == lab.expected,
            "{}: contents",
            w.name()
        );
        let got = problems(&lab.child);
        let codes: Vec<&str> = got
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(codes, expected_problems(w), "{}: {got:?}", w.name());
        if let Some(found) = writer_finds(w, &lab.child) {
            assert_eq!(found.as_deref(), Some(lab.parent.as_path()), "{}", w.name());
        }
        // The parent is found through a locator, not by the name fallback.
        let report = Chain::inspect(&lab.child, &ChainOptions::default()).unwrap();
        let via = report.links[0]
            .parent
            .as_ref()
            .unwrap()
            .via
            .clone()
            .unwrap();
        assert!(matches!(via, Via::Locator(_)), "{}: via {via}", w.name());
        if w.little_endian_name() {
            let d = Disk::open(&lab.child).unwrap();
            assert!(
                d.warnings().iter().any(|x| x.contains("little-endian")),
                "{}: {:?}",
                w.name(),
                d.warnings()
            );
            let name = d
                .parent_locators()
                .into_iter()
                .find(|l| l.kind == "parent_name")
                .and_then(|l| l.path);
            assert_eq!(name.as_deref(), Some("base.vhd"), "{}", w.name());
        }
    }
}

/// Where the copy of the parent goes and what the child's parent name must then be.
fn target(w: Writer, lab: &Lab) -> (PathBuf, NameStyle, bool) {
    match w {
        // Bare names with the parent beside the child: a copy beside it keeps the bare name.
        Writer::BlktapOld | Writer::BlktapNew | Writer::VirtualBox2 | Writer::DiscUtils => {
            (lab.root.join("vm/base-copy.vhd"), NameStyle::Bare, true)
        }
        // A bare name with the parent elsewhere: written relative, saying why.
        Writer::VirtualBox7 => (lab.root.join("moved/base.vhd"), NameStyle::Relative, false),
        Writer::XenOrchestra => (lab.root.join("moved/base.vhd"), NameStyle::Relative, true),
        Writer::Windows => (lab.root.join("moved/base.vhd"), NameStyle::Absolute, true),
    }
}

#[test]
fn each_convention_is_kept_through_a_reparent() {
    for w in Writer::ALL {
        let lab = lab(w);
        let (np, style, kept) = target(w, &lab);
        std::fs::create_dir_all(np.parent().unwrap()).unwrap();
        std::fs::copy(&lab.parent, &np).unwrap();
        let o = ReparentOptions {
            new_parent: np.clone(),
            ..ReparentOptions::default()
        };
        let plan = reparent::plan(&lab.child, &o).unwrap();
        reparent::apply(&plan).unwrap();
        std::fs::remove_file(&lab.parent).unwrap();
        let st = plan.parent_name_style.clone().unwrap();
        assert_eq!((st.written, st.kept), (style, kept), "{}: {st:?}", w.name());
        assert_eq!(st.why.is_some(), !kept, "{}: {st:?}", w.name());
        if style == NameStyle::Relative {
            assert_eq!(plan.parent_name, "../moved/base.vhd", "{}", w.name());
        }
        assert!(
            contents(&lab.child) == lab.expected,
            "{}: contents",
            w.name()
        );
        let got = problems(&lab.child);
        assert!(got.is_empty(), "{}: {got:?}", w.name());
        if let Some(found) = writer_finds(w, &lab.child) {
            assert_eq!(found, Some(np.clone()), "{}", w.name());
        }
        // Xen Orchestra reads nothing but the name: it must lead there from the child's folder.
        let by_name = lab.child.parent().unwrap().join(&plan.parent_name);
        if style != NameStyle::Absolute {
            assert_eq!(std::fs::canonicalize(by_name).unwrap(), np, "{}", w.name());
        }
    }
}

#[test]
fn relative_only_writes_a_relative_name_vhd_lib_can_follow() {
    let lab = lab(Writer::Windows);
    let np = lab.root.join("moved/base.vhd");
    std::fs::create_dir_all(np.parent().unwrap()).unwrap();
    std::fs::copy(&lab.parent, &np).unwrap();
    let o = ReparentOptions {
        new_parent: np.clone(),
        mode: vhdkit::reparent::LocatorMode::RelativeOnly,
        ..ReparentOptions::default()
    };
    let plan = reparent::plan(&lab.child, &o).unwrap();
    reparent::apply(&plan).unwrap();
    assert_eq!(plan.parent_name, "../moved/base.vhd");
    assert_eq!(foreign::xo_find_parent(&lab.child), Some(np));
}

/// A locator that holds an absolute POSIX path in a relative slot, or a relative `MacX` URL,
/// resolves wherever the process runs; a `MacX` URL that names a missing file is still dead.
#[test]
fn content_not_slot_decides_and_dead_stays_dead() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let mut p = VhdBuilder::dynamic(SIZE).unique_id(PARENT_ID);
    p.write(0, &[0x11; 512]);
    p.build().write_to(&root.join("base.vhd"));
    let c = VhdBuilder::differencing(SIZE, PARENT_ID)
        .parent_name("base.vhd")
        .locator(vhdkit_testkit::vhd::Locator::macx("file://./base.vhd"))
        .locator(vhdkit_testkit::vhd::Locator::w2ru(r".\gone\base.vhd"));
    c.build().write_to(&root.join("child.vhd"));
    let codes = check_file(root.join("child.vhd"), &CheckOptions::default())
        .unwrap()
        .codes();
    assert_eq!(codes, ["vhd.locator.dead"], "W2ru is dead, MacX works");
    let report = Chain::inspect(root.join("child.vhd"), &ChainOptions::default()).unwrap();
    let res = report.links[0].parent.as_ref().unwrap();
    assert_eq!(res.via, Some(Via::Locator(LocatorKind::MacX)), "{res:?}");
    // A Windows path in the relative slot and a POSIX path in a MacX URL are absolute: they
    // may be right on another host, so they are kept, not dead; the relative path in the
    // absolute slot (blktap, vhd-lib) is the one that works.
    let c = VhdBuilder::differencing(SIZE, PARENT_ID)
        .parent_name("base.vhd")
        .locator(vhdkit_testkit::vhd::Locator::w2ru(r"C:\Lab\base.vhd"))
        .locator(vhdkit_testkit::vhd::Locator::w2ku("./base.vhd"))
        .locator(vhdkit_testkit::vhd::Locator::macx(
            "file:///elsewhere/base.vhd",
        ));
    c.build().write_to(&root.join("child2.vhd"));
    let r = check_file(root.join("child2.vhd"), &CheckOptions::default()).unwrap();
    assert!(r.findings.is_empty(), "{r:?}");
    let report = Chain::inspect(root.join("child2.vhd"), &ChainOptions::default()).unwrap();
    let res = report.links[0].parent.as_ref().unwrap();
    assert_eq!(res.via, Some(Via::Locator(LocatorKind::W2ku)), "{res:?}");
}

mod vhdx_sectors {
    use super::*;
    use uuid::Uuid;
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

    const PARENT_DWG: u128 = 0x5151_5151;

    fn build(dir: &Path, child_physical: u32) -> PathBuf {
        let mut p = VhdxBuilder::new(Kind::Dynamic, SIZE, 1 << 20, 512);
        p.data_write_guid = Uuid::from_u128(PARENT_DWG);
        p.physical_sector_size = 4096;
        p.write(0, &[0x77; 4096]);
        std::fs::write(dir.join("base.vhdx"), p.build().bytes).unwrap();
        // Windows: New-VHD -Differencing -PhysicalSectorSizeBytes 512 over a 512e parent.
        let mut c = VhdxBuilder::new(Kind::Differencing, SIZE, 1 << 20, 512);
        c.physical_sector_size = child_physical;
        c.parent_linkage = Uuid::from_u128(PARENT_DWG);
        c.relative_path = Some(r".\base.vhdx".into());
        c.write(512, &[0x88; 512]);
        let child = dir.join("child.avhdx");
        std::fs::write(&child, c.build().bytes).unwrap();
        child
    }

    #[test]
    fn physical_may_differ_everywhere_and_is_reported_as_info() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap();
        let child = build(&dir, 512);
        // chain (and so convert) reads it.
        let mut buf = [0u8; 1024];
        Chain::open(&child, &ChainOptions::default())
            .unwrap()
            .into_view()
            .read_exact_at(&mut buf, 0)
            .unwrap();
        assert_eq!(&buf[..512], &[0x77; 512]);
        assert_eq!(&buf[512..], &[0x88; 512]);
        // check --chain: one info finding, nothing worse.
        let mut o = CheckOptions::default();
        o.chain = true;
        let r = check_file(&child, &o).unwrap();
        assert_eq!(r.codes(), ["chain.physical_sector_size_mismatch"], "{r:?}");
        assert!(!r.has_problems());
        // reparent onto an identical copy: accepted, and the plan says so.
        std::fs::create_dir_all(dir.join("copy")).unwrap();
        std::fs::copy(dir.join("base.vhdx"), dir.join("copy/base.vhdx")).unwrap();
        let plan = reparent::plan(
            &child,
            &ReparentOptions {
                new_parent: dir.join("copy/base.vhdx"),
                ..ReparentOptions::default()
            },
        )
        .unwrap();
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("physical sector size differs: parent 4096, child 512")),
            "{:?}",
            plan.notes
        );
        reparent::apply(&plan).unwrap();
        // Same sizes: no finding at all.
        let same = build(&dir, 4096);
        assert!(check_file(&same, &o).unwrap().findings.is_empty());
    }
}
