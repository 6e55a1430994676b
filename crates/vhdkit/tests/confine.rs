//! `ChainOptions::confine`: a parent candidate outside the confining folders (after links are
//! resolved) is never opened, whatever the locators say, and the refusal says nothing about it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use vhdkit::AttemptOutcome;

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::{Chain, ChainOptions};
use vhdkit_testkit::through::{canon, chain_files};
use vhdkit_testkit::vhd::{Locator, VhdBuilder};

const PARENT_ID: [u8; 16] = *b"confined-parent!";
const SIZE: u64 = 4 << 20;

struct Tree {
    _d: tempfile::TempDir,
    inside: PathBuf,
    outside: PathBuf,
}

/// `inside/` (the confinement) and `outside/`, which holds a perfectly good parent.
fn tree() -> Tree {
    let d = tempfile::tempdir().unwrap();
    let inside = d.path().join("inside");
    let outside = d.path().join("outside");
    std::fs::create_dir_all(inside.join("vm")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    VhdBuilder::dynamic(SIZE)
        .unique_id(PARENT_ID)
        .build()
        .write_to(&outside.join("base.vhd"));
    Tree {
        _d: d,
        inside,
        outside,
    }
}

fn child(path: &Path, locs: Vec<Locator>) {
    let mut b = VhdBuilder::differencing(SIZE, PARENT_ID).parent_name("base.vhd");
    for l in locs {
        b = b.locator(l);
    }
    b.build().write_to(path);
}

fn confined(t: &Tree) -> ChainOptions {
    ChainOptions::default().confine(&t.inside)
}

/// The chain of `c` opened with `o` is `c` over `parent` (the file the walker took).
fn assert_parent(c: &Path, o: &ChainOptions, parent: &Path) {
    assert_eq!(chain_files(c, o), [canon(c), canon(parent)]);
}

#[test]
fn locators_leading_outside_are_refused() {
    let t = tree();
    let c = t.inside.join("vm/child.vhd");
    let shadow_rel = format!("{}\\etc\\shadow", "..\\".repeat(40));
    child(
        &c,
        vec![
            Locator::w2ru("..\\..\\outside\\base.vhd"),
            Locator::w2ku(&t.outside.join("base.vhd").display().to_string()),
            Locator::wi2r(&shadow_rel),
            Locator::wi2k("/etc/shadow"),
        ],
    );
    // Unconfined, the good parent outside is found: the refusal below is confinement's doing.
    assert_parent(&c, &ChainOptions::default(), &t.outside.join("base.vhd"));
    let e = Chain::open(&c, &confined(&t)).unwrap_err().to_string();
    assert!(e.contains("refused by confinement"), "{e}");
    let report = Chain::inspect(&c, &confined(&t)).unwrap();
    let tried = &report.links[0].parent.as_ref().unwrap().tried;
    assert!(tried.len() >= 4, "{tried:?}");
    for a in tried {
        let inside = a.path.starts_with(&t.inside);
        assert!(inside || a.outcome == AttemptOutcome::Confined, "{a:?}");
        assert!(!a.outcome.to_string().contains("bytes"), "{a:?}");
    }
}

#[test]
fn a_link_inside_to_a_file_outside_is_refused() {
    let t = tree();
    let c = t.inside.join("vm/child.vhd");
    child(&c, vec![Locator::w2ru(".\\base.vhd")]);
    std::os::unix::fs::symlink(t.outside.join("base.vhd"), t.inside.join("vm/base.vhd")).unwrap();
    assert_parent(&c, &ChainOptions::default(), &t.outside.join("base.vhd"));
    let e = Chain::open(&c, &confined(&t)).unwrap_err().to_string();
    assert!(e.contains("refused by confinement"), "{e}");
}

#[test]
fn a_parent_inside_resolves_and_missing_ones_read_not_found() {
    let t = tree();
    std::fs::rename(t.outside.join("base.vhd"), t.inside.join("base.vhd")).unwrap();
    let c = t.inside.join("vm/child.vhd");
    child(
        &c,
        vec![Locator::w2ru("..\\gone.vhd"), Locator::wi2r("..\\base.vhd")],
    );
    let chain = Chain::open(&c, &confined(&t)).unwrap();
    let tried = &chain.report().links[0].parent.as_ref().unwrap().tried;
    assert_eq!(tried[0].outcome, AttemptOutcome::NotFound, "{tried:?}");
    // Several folders confine together; a folder that does not hold the parent does not help.
    let other = t.outside.clone();
    let o = ChainOptions::default().confine(&other).confine(&t.inside);
    assert_parent(&c, &o, &t.inside.join("base.vhd"));
    let e = Chain::open(&c, &ChainOptions::default().confine(&other)).unwrap_err();
    assert!(e.to_string().contains("refused by confinement"), "{e}");
}

#[test]
fn dead_locator_analysis_is_confined_and_never_drops_what_it_could_not_look_at() {
    let t = tree();
    std::fs::copy(t.outside.join("base.vhd"), t.inside.join("base.vhd")).unwrap();
    VhdBuilder::dynamic(SIZE)
        .unique_id(*b"another-disk-id!")
        .build()
        .write_to(&t.outside.join("other.vhd"));
    let c = t.inside.join("vm/child.vhd");
    // W2ru leads to another disk outside (dead, when looked at); Wi2r to the parent inside.
    child(
        &c,
        vec![
            Locator::w2ru("..\\..\\outside\\other.vhd"),
            Locator::wi2r("..\\base.vhd"),
        ],
    );
    let free = check_file(&c, &CheckOptions::default()).unwrap().codes();
    assert!(free.contains(&"vhd.locator.dead"), "{free:?}");
    let mut o = CheckOptions::default();
    o.chain_options = confined(&t);
    let codes = check_file(&c, &o).unwrap().codes();
    assert!(!codes.contains(&"vhd.locator.dead"), "{codes:?}");
    let r = vhdkit::repair::repair(
        &c,
        &vhdkit::repair::RepairOptions::default()
            .dry_run(true)
            .confine(&t.inside),
    )
    .unwrap();
    assert!(
        r.structures.iter().all(|s| s.code != "vhd.locator.dead"),
        "{r:?}"
    );
    let report = Chain::inspect(&c, &confined(&t)).unwrap();
    assert!(report.intact, "{report:?}");
    assert!(report.links[1].path.starts_with(&t.inside), "{report:?}");
}

#[test]
fn search_folders_and_maps_outside_are_refused_too() {
    let t = tree();
    let c = t.inside.join("vm/child.vhd");
    child(&c, vec![Locator::w2ku(r"C:\Lab\base.vhd")]);
    let map = vhdkit::PathMap::parse(&format!(r"C:\Lab={}", t.outside.display())).unwrap();
    for o in [
        ChainOptions::default().search_dir(&t.outside),
        ChainOptions::default().path_map(map),
    ] {
        assert_parent(&c, &o, &t.outside.join("base.vhd"));
        let e = Chain::open(&c, &o.clone().confine(&t.inside)).unwrap_err();
        assert!(e.to_string().contains("refused by confinement"), "{e}");
        // Confining to the outside folder as well lets it in.
        let both = o.confine(&t.inside).confine(&t.outside);
        assert_parent(&c, &both, &t.outside.join("base.vhd"));
    }
}
