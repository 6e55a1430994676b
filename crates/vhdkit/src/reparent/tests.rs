//! How many times a reparent parses each file (issue #11: "a reparent parses the child at
//! most twice and the new parent at most twice").
//!
//! Counted by [`crate::parse_count`]: every [`Disk::open_with`] (the new parent, chains), the
//! neutral layer's own parse of the child, and the format plan's parse of its simulated result
//! (counted for the child through [`crate::parse_count::subject`]). Apply follows the chain
//! from that simulated result when the file is provably it; the report must then be the one a
//! fresh parse gives.

use std::path::Path;

use super::*;
use crate::chain::Chain;
use crate::parse_count;
use crate::{create, CreateParams};

struct Counts {
    child_plan: usize,
    child_apply: usize,
    np_plan: usize,
    np_apply: usize,
}

/// A base, its child, and a copy of the base in `ref/` (the new parent).
struct Lab {
    _dir: tempfile::TempDir,
    base: PathBuf,
    child: PathBuf,
    np: PathBuf,
}

fn lab(ext: &str) -> Lab {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join(format!("base.{ext}"));
    let child = d.path().join(format!("child.{ext}"));
    create(&base, &CreateParams::dynamic(8 << 20)).unwrap();
    create(&child, &CreateParams::differencing(&base)).unwrap();
    std::fs::create_dir(d.path().join("ref")).unwrap();
    let np = d.path().join("ref").join(format!("base.{ext}"));
    std::fs::copy(&base, &np).unwrap();
    Lab {
        _dir: d,
        base,
        child,
        np,
    }
}

fn count(ext: &str, verify: bool) -> Counts {
    let l = lab(ext);
    let (base, child, np) = (&l.base, &l.child, &l.np);
    let opts = ReparentOptions {
        new_parent: np.clone(),
        verify_content: verify.then(|| base.clone()),
        ..ReparentOptions::default()
    };
    let of = |c: &std::collections::HashMap<PathBuf, usize>, p: &Path| parse_count::of(c, p);
    parse_count::take();
    let p = plan(child, &opts).unwrap();
    let planned = parse_count::take();
    let report = apply(&p).unwrap();
    let applied = parse_count::take();
    assert!(report.chain.is_some_and(|c| c.intact && c.links.len() == 2));
    Counts {
        child_plan: of(&planned, child),
        child_apply: of(&applied, child),
        np_plan: of(&planned, np),
        np_apply: of(&applied, np),
    }
}

#[test]
fn parses_per_file() {
    for (ext, verify) in [
        ("vhd", false),
        ("vhdx", false),
        ("vhd", true),
        ("vhdx", true),
    ] {
        let c = count(ext, verify);
        eprintln!(
            "{ext} verify_content={verify}: child {} + {}, new parent {} + {} (plan + apply)",
            c.child_plan, c.child_apply, c.np_plan, c.np_apply
        );
        // The child: parsed once by the plan (the format plan takes that parse), once more as
        // the simulated result; apply re-checks it under the lock from the bytes the plan read
        // (no parse) and follows the chain from the simulated result (no parse).
        assert!(c.child_plan + c.child_apply <= 2, "{ext}");
        assert_eq!((c.child_plan, c.child_apply), (2, 0), "{ext}");
        // The new parent: once with its chain (also for --verify-content); apply re-checks the
        // bytes its parse read (no parse), and parses it once in the re-opened chain.
        assert_eq!((c.np_plan, c.np_apply), (1, 1), "{ext}");
    }
}

/// Repoint `l`'s child at the new parent: the chain apply reports, how many times apply parsed
/// the child, and the chain a fresh parse then finds.
fn repoint(l: &Lab) -> (ChainReport, usize, ChainReport) {
    let opts = ReparentOptions {
        new_parent: l.np.clone(),
        ..ReparentOptions::default()
    };
    let p = plan(&l.child, &opts).unwrap();
    parse_count::take();
    let got = apply(&p).unwrap().chain.unwrap();
    let parses = parse_count::of(&parse_count::take(), &l.child);
    let fresh = Chain::inspect(&l.child, &opts.chain).unwrap();
    (got, parses, fresh)
}

/// The chain apply reports from the simulated child is the one a fresh parse of the file
/// finds, warnings included.
#[test]
fn the_reported_chain_is_what_a_fresh_parse_finds() {
    for ext in ["vhd", "vhdx"] {
        let l = lab(ext);
        let (got, parses, fresh) = repoint(&l);
        assert_eq!(parses, 0, "{ext}");
        assert_eq!(format!("{got:?}"), format!("{fresh:?}"), "{ext}");
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert_eq!(canon(&got.links[1].path), canon(&l.np), "{ext}");
    }
}

/// A damaged VHDX header slot: the simulation keeps the damage (and its warning) while apply
/// rewrites both slots, so the child is parsed again, and the report has no stale warning.
#[test]
fn a_vhdx_header_apply_repairs_is_parsed_again() {
    let l = lab("vhdx");
    let mut bytes = std::fs::read(&l.child).unwrap();
    // The first slot's checksum (header 2 is current in a new file).
    let at = usize::try_from(crate::vhdx::format::HEADER_OFFSETS[0]).unwrap() + 4;
    bytes[at..at + 4].copy_from_slice(&[0xA5; 4]);
    std::fs::write(&l.child, bytes).unwrap();
    let before = Chain::inspect(&l.child, &ChainOptions::default()).unwrap();
    assert!(before.links[0]
        .warnings
        .iter()
        .any(|w| w.contains("header 1")));
    let (got, parses, fresh) = repoint(&l);
    assert_eq!(parses, 1);
    assert!(got.links[0].warnings.is_empty(), "{:?}", got.links[0]);
    assert_eq!(format!("{got:?}"), format!("{fresh:?}"));
}

/// The new parent is re-checked under the lock from the bytes its parse read: a new parent
/// that changed after the plan (here: another disk copied over it) is refused, and the child
/// keeps its bytes.
#[test]
fn apply_refuses_a_new_parent_that_changed() {
    for ext in ["vhd", "vhdx"] {
        let l = lab(ext);
        let (child, np) = (&l.child, &l.np);
        let opts = ReparentOptions {
            new_parent: np.clone(),
            ..ReparentOptions::default()
        };
        let p = plan(child, &opts).unwrap();
        std::fs::remove_file(np).unwrap();
        create(np, &CreateParams::dynamic(8 << 20)).unwrap();
        let before = std::fs::read(child).unwrap();
        let e = apply(&p).unwrap_err().to_string();
        assert!(e.contains("the new parent"), "{ext}: {e}");
        assert!(e.contains("changed since the plan was made"), "{ext}: {e}");
        assert_eq!(std::fs::read(child).unwrap(), before, "{ext}");
    }
}

/// A change made as asked is not an error of `apply` when the chain does not resolve here (an
/// absolute Windows path only, no map): the report says the chain is broken, and why.
#[test]
fn apply_reports_a_chain_that_does_not_resolve_here() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.vhdx");
    let child = d.path().join("child.vhdx");
    create(&base, &CreateParams::dynamic(8 << 20)).unwrap();
    create(&child, &CreateParams::differencing(&base)).unwrap();
    std::fs::create_dir(d.path().join("ref")).unwrap();
    let np = d.path().join("ref").join("base.vhdx");
    std::fs::copy(&base, &np).unwrap();
    std::fs::remove_file(&base).unwrap();
    let opts = ReparentOptions {
        new_parent: np,
        mode: LocatorMode::AbsoluteOnly,
        windows_path: Some(r"C:\Lab\ref\base.vhdx".into()),
        ..ReparentOptions::default()
    };
    let report = apply(&plan(&child, &opts).unwrap()).unwrap();
    let chain = report.chain.unwrap();
    assert!(!chain.intact);
    assert!(chain
        .broken
        .is_some_and(|r| r.to_string().contains("not found")));
}

/// `--verify-content` compares the whole virtual disk, including a last chunk shorter than the
/// 1 MiB read (a size that is not a whole number of MiB): a new parent with another identity
/// and the same contents is accepted after exactly `size` bytes; one that differs only in its
/// last sector is refused.
#[test]
fn verify_content_reads_a_short_last_chunk() {
    let size = (3 << 20) + 4096;
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.vhdx");
    let child = d.path().join("child.vhdx");
    create(&base, &CreateParams::dynamic(size)).unwrap();
    create(&child, &CreateParams::differencing(&base)).unwrap();
    let np = d.path().join("other.vhdx");
    create(&np, &CreateParams::dynamic(size)).unwrap();
    let opts = ReparentOptions {
        new_parent: np.clone(),
        verify_content: Some(base.clone()),
        ..ReparentOptions::default()
    };
    let p = plan(&child, &opts).unwrap();
    assert!(
        matches!(
            p.identity,
            IdentityCheck::ContentVerified { bytes_compared, .. } if bytes_compared == size
        ),
        "{:?}",
        p.identity
    );
    let mut w = crate::WritableDisk::open(&np, &crate::ChainOptions::default()).unwrap();
    w.write_at(size - 512, &[1u8; 512]).unwrap();
    w.close().unwrap();
    let e = plan(&child, &opts).unwrap_err().to_string();
    assert!(
        e.contains(&format!("virtual offset {:#x}", size - 512)),
        "{e}"
    );
}
