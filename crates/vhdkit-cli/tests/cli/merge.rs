//! `vhdkit merge` through the real binary: round trips on chains of depth 1 to 5 built by the
//! testkit's own writer (VHD, VHDX with 512 and 4096-byte sectors), into the parent and into a
//! deeper ancestor; the dry run writes nothing; after a merge the ancestor's chain reads what
//! the leaf read (`vhdkit convert`; `qemu-img compare` and `check` for a standalone ancestor),
//! the merged files and every side file are gone and `vhdkit check` is clean. Refusals (exit 1,
//! one line, every file byte-identical with its mtime): a sibling, in a member's folder or only
//! through `--search`; a locked member (an flock held by this process, or by another process);
//! not enough free space; `--into` outside the chain; a child larger than the ancestor. A broken
//! chain fails as it does for `flatten`. Crash matrices are in `merge/crash.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use vhdkit_testkit::chains::{build_chain, sibling, BuiltChain, ChainFormat};
use vhdkit_testkit::mount::{free_bytes, Tmpfs};
use vhdkit_testkit::snapshot::Snapshot;

use crate::util::*;

mod clone;
mod crash;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 5 * MIB + 3 * 4096;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every name in `dir` (not recursive).
pub fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `merge [--into ANCESTOR] LEAF` plus `extra`.
fn merge_args(leaf: &Path, into: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["merge".to_string()];
    if let Some(i) = into {
        a.extend(["--into".to_string(), s(i).to_string()]);
    }
    a.extend(extra.iter().map(|x| x.to_string()));
    a.push(s(leaf).to_string());
    a
}

/// Exit 1, exactly one line on stderr, mentioning `needle`.
#[track_caller]
fn assert_refusal(r: &Run, needle: &str, what: &str) {
    assert_eq!(r.code, 1, "{what}: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr: {r:?}");
    assert!(
        r.stderr.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: {needle:?} not named: {r:?}"
    );
}

/// `qemu-img compare` of a standalone ancestor with the leaf's raw contents, and `qemu-img
/// check` for VHDX.
fn qemu_oracle(fmt: &str, ancestor: &Path, want_raw: &Path) {
    if !need_tool("qemu-img", "qemu-img oracle for merged standalone disks") {
        return;
    }
    if fmt == "vhdx" {
        run_ok(
            Command::new("qemu-img")
                .args(["check", "-q", "-f", "vhdx"])
                .arg(ancestor),
        );
    }
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", fmt])
            .arg(want_raw)
            .arg(ancestor),
    );
}

fn round_trip(c: &BuiltChain, into: Option<usize>, scratch: &Path) {
    let dir = c.files[0].parent().unwrap().to_path_buf();
    let depth = c.depth();
    let level = into.unwrap_or(depth - 1);
    let ctx = format!("{} depth {depth} into level {level}", c.format.label());
    let leaf = c.leaf();
    let ancestor = &c.files[level];
    let want = virtual_sha(leaf);
    let want_raw = scratch.join("want.raw");
    run_success(["convert", "--to", "raw", s(leaf), s(&want_raw)]);
    let below: Vec<String> = c.files[..level].iter().map(|p| sha256_file(p)).collect();
    let merged: Vec<&str> = c.files[level + 1..].iter().rev().map(|p| s(p)).collect();
    let into_p = into.map(|l| c.files[l].as_path());

    let snap = Snapshot::tree(&dir);
    let j = run_success(merge_args(leaf, into_p, &["--dry-run", "--json"])).json();
    snap.assert_unchanged(&format!("{ctx}: dry run"));
    assert_eq!(j["applied"], false, "{ctx}: {j}");
    assert_eq!(j["plan"]["ancestor"], s(ancestor), "{ctx}: {j}");
    assert_eq!(j["plan"]["merged"], serde_json::json!(merged), "{ctx}: {j}");
    let r = run_success(merge_args(leaf, into_p, &["--dry-run"]));
    assert!(r.stdout.contains("dry run"), "{ctx}: {r:?}");
    snap.assert_unchanged(&format!("{ctx}: dry run"));

    let j = run_success(merge_args(leaf, into_p, &["--json"])).json();
    assert_eq!(j["applied"], true, "{ctx}: {j}");
    assert_eq!(
        j["report"]["deleted"],
        serde_json::json!(merged),
        "{ctx}: {j}"
    );
    assert!(
        j["report"]["bytes_copied"].as_u64().unwrap() > 0,
        "{ctx}: {j}"
    );
    let left: BTreeSet<String> = c.files[..=level].iter().map(|p| name(p)).collect();
    assert_eq!(
        names(&dir),
        left,
        "{ctx}: files left (no merged file, no side file)"
    );
    assert_eq!(
        virtual_sha(ancestor),
        want,
        "{ctx}: the ancestor reads the leaf's contents"
    );
    run_success(["check", "--chain", s(ancestor)]);
    for (p, sha) in c.files[..level].iter().zip(&below) {
        assert_eq!(&sha256_file(p), sha, "{ctx}: {} changed", p.display());
    }
    if level == 0 {
        if let Some(fmt) = c.format.qemu() {
            qemu_oracle(fmt, ancestor, &want_raw);
        }
    }
    // The leaf is gone: a rerun fails (exit 2, the file cannot be read) and changes nothing.
    let snap = Snapshot::tree(&dir);
    let r = run(merge_args(leaf, None, &[]));
    assert_eq!(r.code, 2, "{ctx}: rerun on a merged-away leaf: {r:?}");
    snap.assert_unchanged(&format!("{ctx}: rerun"));
}

fn round_trips(format: ChainFormat, depths: &[usize]) {
    for &depth in depths {
        let mut targets = vec![None];
        if depth >= 2 {
            targets.push(Some(0));
        }
        if depth >= 3 {
            targets.push(Some(depth - 2));
        }
        for into in targets {
            let d = tmp();
            let chain_dir = d.path().join("vm");
            std::fs::create_dir(&chain_dir).unwrap();
            let seed = 100 + depth as u64 * 7 + into.map_or(0, |l| l as u64 + 1);
            let c = build_chain(&chain_dir, format, SIZE, depth, seed);
            round_trip(&c, into, d.path());
        }
    }
}

#[test]
fn vhd_round_trips_depth_1_to_5() {
    round_trips(ChainFormat::Vhd, &[1, 2, 3, 4, 5]);
}

#[test]
fn vhdx_round_trips_depth_1_to_5() {
    round_trips(ChainFormat::Vhdx(512), &[1, 2, 3, 4, 5]);
}

#[test]
fn vhdx_4k_round_trips() {
    round_trips(ChainFormat::Vhdx(4096), &[1, 3, 5]);
}

fn ext(format: ChainFormat) -> &'static str {
    if format == ChainFormat::Vhd {
        "vhd"
    } else {
        "avhdx"
    }
}

/// A sibling over the ancestor or over an intermediate disk, in their folder: exit 1 naming it
/// (the dry run too), nothing changed.
#[test]
fn a_sibling_in_a_members_folder_is_refused() {
    for format in [ChainFormat::Vhd, ChainFormat::Vhdx(512)] {
        for (over, into) in [(1usize, None), (1, Some(0usize)), (0, Some(0))] {
            let d = tmp();
            let c = build_chain(d.path(), format, SIZE, 2, 51);
            let rel = format!(r".\{}", name(&c.files[over]));
            sibling(
                d.path(),
                &format!("vm2.{}", ext(format)),
                format,
                SIZE,
                c.ids[over],
                &rel,
            );
            let what = format!("{format:?} sibling over {over}, into {into:?}");
            let snap = Snapshot::tree(d.path());
            let into_p = into.map(|l| c.files[l].as_path());
            for extra in [&["--dry-run"][..], &[]] {
                let r = run(merge_args(c.leaf(), into_p, extra));
                assert_refusal(&r, "vm2.", &what);
            }
            snap.assert_unchanged(&what);
        }
    }
}

/// A sibling in another folder: unseen without `--search` (the dry run passes), refused with it.
#[test]
fn a_sibling_found_through_search_is_refused() {
    for format in [ChainFormat::Vhd, ChainFormat::Vhdx(512)] {
        let d = tmp();
        let (vm, other) = (d.path().join("vm"), d.path().join("other"));
        std::fs::create_dir(&vm).unwrap();
        std::fs::create_dir(&other).unwrap();
        let c = build_chain(&vm, format, SIZE, 1, 52);
        let rel = format!(r"..\vm\{}", name(&c.files[0]));
        sibling(
            &other,
            &format!("clone.{}", ext(format)),
            format,
            SIZE,
            c.ids[0],
            &rel,
        );
        let snap = Snapshot::tree(d.path());
        run_success(merge_args(c.leaf(), None, &["--dry-run"]));
        let r = run(merge_args(c.leaf(), None, &["--search", s(&other)]));
        assert_refusal(&r, "clone.", &format!("{format:?} searched sibling"));
        snap.assert_unchanged(&format!("{format:?} searched sibling"));
    }
}

/// The parent missing, then replaced by another disk under its name: the same exit status and
/// error kind as `flatten` gives for the same chain, one line, nothing changed.
#[test]
fn a_broken_chain_fails_like_flatten() {
    for format in [ChainFormat::Vhd, ChainFormat::Vhdx(512)] {
        let d = tmp();
        let c = build_chain(d.path(), format, SIZE, 2, 53);
        let other_dir = d.path().join("x");
        std::fs::create_dir(&other_dir).unwrap();
        let other = build_chain(&other_dir, format, SIZE, 0, 54);
        std::fs::remove_file(&c.files[0]).unwrap();
        for case in ["missing", "wrong identity"] {
            if case == "wrong identity" {
                std::fs::rename(&other.files[0], &c.files[0]).unwrap();
            }
            let snap = Snapshot::tree(d.path());
            let r = run(merge_args(c.leaf(), None, &["--json"]));
            let f = run(["flatten", "--dry-run", "--json", s(c.leaf())]);
            assert_ne!(r.code, 0, "{case}: {r:?}");
            assert_eq!(
                r.code, f.code,
                "{format:?} {case}: merge {r:?} vs flatten {f:?}"
            );
            assert_eq!(r.json()["kind"], f.json()["kind"], "{format:?} {case}");
            assert_eq!(r.stderr.trim().lines().count(), 1, "{case}: {r:?}");
            snap.assert_unchanged(&format!("{format:?} {case}"));
        }
    }
}

/// Each member locked by another writer: an flock held by this process on its own open file
/// description, and (for the ancestor) by another process (`flock(1)`): exit 1, kind locked.
#[test]
fn a_locked_member_is_refused() {
    let d = tmp();
    let c = build_chain(d.path(), ChainFormat::Vhdx(512), SIZE, 2, 55);
    let into = Some(c.files[0].as_path());
    for locked in 0..3 {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.files[locked])
            .unwrap();
        f.try_lock().unwrap();
        let snap = Snapshot::tree(d.path());
        let r = run(merge_args(c.leaf(), into, &["--json"]));
        assert_eq!(r.code, 1, "level {locked}: {r:?}");
        assert_eq!(r.json()["kind"], "locked", "level {locked}: {r:?}");
        snap.assert_unchanged(&format!("level {locked} locked"));
        drop(f);
    }
    if !need_tool("flock", "a lock held by a second process") {
        return;
    }
    // `-o`: the lock stays with flock(1) itself, not with the command it runs.
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(&c.files[0])
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    // Wait until the other process holds it.
    let mut held = false;
    for _ in 0..200 {
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.files[0])
            .unwrap();
        if probe.try_lock().is_err() {
            held = true;
            break;
        }
        drop(probe);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(held, "flock(1) never took the lock");
    let snap = Snapshot::tree(d.path());
    let r = run(merge_args(c.leaf(), into, &["--json"]));
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["kind"], "locked", "{r:?}");
    snap.assert_unchanged("locked by another process");
    run_success(merge_args(c.leaf(), into, &[]));
}

/// `--into` not in the chain (another disk; CHILD itself), CHILD not differencing, and a child
/// larger than its parent: exit 1, one line, nothing changed.
#[test]
fn other_refusals_write_nothing() {
    let d = tmp();
    let c = build_chain(d.path(), ChainFormat::Vhd, SIZE, 1, 56);
    let o = d.path().join("o");
    std::fs::create_dir(&o).unwrap();
    let other = build_chain(&o, ChainFormat::Vhd, SIZE, 0, 57);
    // A 6 MiB child over a 4 MiB parent.
    let grown = vhdkit_testkit::chains::grown_vhd_child(d.path(), "small.vhd", "grown.vhd");
    let snap = Snapshot::tree(d.path());
    let cases: [(Vec<String>, &str, &str); 4] = [
        (
            merge_args(c.leaf(), Some(&other.files[0]), &[]),
            "--into unrelated",
            "not in the chain",
        ),
        (
            merge_args(c.leaf(), Some(c.leaf()), &[]),
            "--into CHILD",
            "child itself",
        ),
        (
            merge_args(&c.files[0], None, &[]),
            "standalone CHILD",
            "differencing",
        ),
        (merge_args(&grown, None, &[]), "larger child", "size"),
    ];
    for (args, what, needle) in cases {
        let r = run(&args);
        assert_refusal(&r, needle, what);
    }
    snap.assert_unchanged("refusals");
}

/// Not enough free space for the blocks the ancestor must gain: refused before the first write
/// (exit 1, every file byte-identical), then done once there is room. Needs a small tmpfs
/// (root); a loud skip otherwise, a failure with CI=true.
#[test]
fn not_enough_free_space_is_refused_before_writing() {
    let Some(fs) = Tmpfs::mount("64m", "merge free-space refusal") else {
        return;
    };
    let at = fs.at.clone();
    for format in [ChainFormat::Vhd, ChainFormat::Vhdx(512)] {
        let c = build_chain(&at, format, 8 * MIB, 1, 58);
        // The leaf touches every block; the base holds only some.
        let leaf_writes: Vec<(u64, Vec<u8>)> = (0..8)
            .map(|b| (b * MIB + 1024, vec![b as u8 + 1; 1536]))
            .collect();
        rewrite_leaf(&c, &leaf_writes);
        let want = virtual_sha(c.leaf());
        let filler = at.join("filler");
        let free = free_bytes(&at);
        std::fs::write(&filler, vec![1u8; (free - MIB / 2) as usize]).unwrap();
        let snap = Snapshot::files(&c.files);
        let r = run(merge_args(c.leaf(), None, &["--json"]));
        assert_eq!(r.code, 1, "{format:?}: {r:?}");
        assert!(
            r.stderr.contains("not enough free space"),
            "{format:?}: {r:?}"
        );
        snap.assert_unchanged(&format!("{format:?}: full file system"));
        std::fs::remove_file(&filler).unwrap();
        run_success(merge_args(c.leaf(), None, &[]));
        assert!(!c.leaf().exists());
        assert_eq!(virtual_sha(&c.files[0]), want, "{format:?}");
        for f in c.files.iter().filter(|f| f.exists()) {
            std::fs::remove_file(f).unwrap();
        }
    }
}

/// Replace the leaf of `c` with a differencing disk holding `writes` only (same identity
/// linkage to its parent).
fn rewrite_leaf(c: &BuiltChain, writes: &[(u64, Vec<u8>)]) {
    use vhdkit_testkit::vhd::{Locator, VhdBuilder};
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
    let parent = name(&c.files[c.depth() - 1]);
    let pid = c.ids[c.depth() - 1];
    let bytes = match c.format {
        ChainFormat::Vhd => {
            let mut b = VhdBuilder::differencing(c.size, pid)
                .block_size(MIB as u32)
                .parent_name(&parent)
                .locator(Locator::w2ru(&format!(r".\{parent}")));
            for (o, d) in writes {
                b.write(*o, d);
            }
            b.build().bytes
        }
        ChainFormat::Vhdx(sector) => {
            let mut b = VhdxBuilder::new(Kind::Differencing, c.size, MIB as u32, sector);
            b.parent_linkage = uuid_le(pid);
            b.relative_path = Some(format!(r".\{parent}"));
            for (o, d) in writes {
                b.write(*o, d);
            }
            b.build().bytes
        }
    };
    std::fs::write(c.leaf(), bytes).unwrap();
}

fn uuid_le(b: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes_le(b)
}
